"""Scene matching for scene completion (Hays & Efros 2007, section 3): which photos share the query's layout?

The query is described with its hole masked out: colour GIST of the centre square whose per-cell weights
are the fraction of valid pixels (``gist.masked_gist``), and the 4x4 L*a*b* colour layout of the whole
frame over the valid pixels, its cells weighted the same way (``encoders.lab_layout``). The distance to
an item is::

    scene = gist_weight * sum w (g_q - g_i)^2 / s_g  +  colour_weight * sum w_c (c_q - c_i)^2 / s_c

GIST weighted twice the colour; ``s_g`` and ``s_c`` are each term's median over the items compared, so
that the weights mean what they say.

Routes (``route=``):

- ``exhaustive``: both terms for every item of the collection, from the float16 ``gist`` and
  ``lab-layout`` shards, in blocks of rows: ``sum w q^2 - 2 X (w q) + (X*X) w`` is two matrix-vector
  products per block, no Python loop over items (on a float32 copy of the GIST matrix, cached while it
  fits ``FLOAT32_CACHE_BYTES``: converting float16 rows is otherwise most of the cost).
- ``shortlist``: the GIST term for every item, the colour term (stored layouts) only for the
  ``shortlist`` items closest by GIST. Kept to measure that shortcut's recall against the exhaustive answer.
- ``thumbnails``: as ``shortlist``, the layouts computed from the shortlist's stored thumbnails (decoded
  at reduced size, about a millisecond each): the only way for a collection indexed without ``lab-layout``.
- ``auto`` (default): ``exhaustive`` when the collection has ``lab-layout`` embeddings for every gist
  item, else ``thumbnails`` with a warning; ``SceneMatches.route`` and ``.note`` say which ran and why.
"""
from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass

import numpy as np

from .encoders.lab_layout import LabLayoutEncoder, cell_means, lab_layout
from .errors import ImageError, InvalidQuery, UnknownEncoder, UnknownItem

__all__ = ["SceneMatches", "QueryDescriptor", "ROUTES", "LAYOUT_ENCODER", "centre_square_box", "colour_layout",
           "weighted_sq_distances", "direct_sq_distances", "describe_query", "layout_encoder", "stored_layouts", "item_colour_layouts",
           "require_gist", "match_scenes", "thumbnail_image", "float32_rows", "FLOAT32_CACHE_BYTES"]

LOG = logging.getLogger(__name__)

LAYOUT_ENCODER = "lab-layout"
ROUTES = ("auto", "exhaustive", "shortlist", "thumbnails")
_BLOCK_ROWS = 8192    # rows of the float16 matrix converted to float32 at a time (~30 MB for 960-d)

colour_layout = cell_means  # (S, S, 3) RGB, valid -> (colour, weights); kept under its old name


@dataclass(frozen=True)
class QueryDescriptor:
    """The masked query: ``gist``/``gist_weights`` (D,) float32, ``colour``/``colour_weights`` (3 nb^2,) float32."""
    gist: np.ndarray
    gist_weights: np.ndarray
    colour: np.ndarray
    colour_weights: np.ndarray


@dataclass(frozen=True)
class SceneMatches:
    """Best scenes, closest first: ``ids`` (k,) int64, ``distance`` (the combined scene distance),
    ``gist`` and ``colour`` (the raw weighted SSDs), all (k,) float32.

    ``route``: the route that ran (``exhaustive``, ``shortlist``, ``thumbnails``); ``compared``: items
    whose colour term was computed; ``scales``: the (GIST, colour) divisors used; ``note``: why a
    fallback ran ("" when none did).
    """
    ids: np.ndarray
    distance: np.ndarray
    gist: np.ndarray
    colour: np.ndarray
    route: str = "exhaustive"
    compared: int = 0
    scales: tuple[float, float] = (1.0, 1.0)
    note: str = ""


def centre_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) centre square that ``prepare_gist_image`` crops."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def weighted_sq_distances(vectors: np.ndarray, query: np.ndarray, weights: np.ndarray,
                          block_rows: int = _BLOCK_ROWS) -> np.ndarray:
    """(n, D) float16/float32 rows -> (n,) float32 ``sum_j w_j (q_j - x_ij)^2``, in blocks of rows."""
    q = np.asarray(query, dtype=np.float64)
    w = np.asarray(weights, dtype=np.float64)
    wq = (w * q).astype(np.float32)
    w32 = w.astype(np.float32)
    base = float((w * q * q).sum())
    n = vectors.shape[0]
    out = np.empty(n, dtype=np.float32)
    buf = np.empty((min(block_rows, n), vectors.shape[1]), dtype=np.float32)
    for start in range(0, n, block_rows):
        stop = min(start + block_rows, n)
        x = buf[:stop - start]
        if vectors.dtype == np.float32:
            rows = vectors[start:stop]
            cross = rows @ wq
            np.multiply(rows, rows, out=x)
        else:
            x[...] = vectors[start:stop]  # float16 -> float32 into a reused buffer: no allocation per block
            cross = x @ wq
            np.multiply(x, x, out=x)
        out[start:stop] = base - 2.0 * cross + x @ w32
    np.maximum(out, 0.0, out=out)  # rounding of the expansion; a distance is never negative
    return out


def direct_sq_distances(vectors: np.ndarray, query: np.ndarray, weights: np.ndarray,
                        block_rows: int = _BLOCK_ROWS) -> np.ndarray:
    """(n, D) rows -> (n,) float32 ``sum_j w_j (q_j - x_ij)^2`` term by term, in blocks of rows.

    For short vectors (the 48-d colour layout): no cancellation, and a row's value does not depend on
    which other rows it is computed with, so every route gets the same number for the same item.
    """
    q = np.asarray(query, dtype=np.float32)
    w = np.asarray(weights, dtype=np.float32)
    out = np.empty(vectors.shape[0], dtype=np.float32)
    for start in range(0, len(out), block_rows):
        diff = np.asarray(vectors[start:start + block_rows], dtype=np.float32) - q
        out[start:start + len(diff)] = (diff * diff * w).sum(axis=1)
    return out


def layout_encoder(collection=None) -> LabLayoutEncoder:
    """The collection's ``lab-layout`` encoder (its stored config), or one with the defaults."""
    if collection is not None and LAYOUT_ENCODER in collection.encoder_names:
        return collection.encoder(LAYOUT_ENCODER)
    return LabLayoutEncoder(device="cpu")


def describe_query(rgb: np.ndarray, hole: np.ndarray, params, device: str = "cpu",
                   layout: LabLayoutEncoder | None = None) -> QueryDescriptor:
    """(H, W, 3) uint8 query and (H, W) bool hole -> masked GIST of the centre square and masked colour
    layout of the whole frame (``layout``'s nblocks and working side; the defaults when None)."""
    from PIL import Image

    from .gist import masked_gist

    height, width = hole.shape
    box = centre_square_box(width, height)
    size = params.image_size
    square = Image.fromarray(np.asarray(rgb, dtype=np.uint8)).crop(box).resize((size, size), Image.Resampling.BILINEAR)
    valid_img = Image.fromarray(np.where(hole, 0, 255).astype(np.uint8)).crop(box)
    # A working pixel is valid only if every source pixel bilinear drew on was (no hole colour leaks in).
    valid = np.asarray(valid_img.resize((size, size), Image.Resampling.BILINEAR)) >= 250
    if not valid.any():
        raise InvalidQuery("the hole covers the whole centre square that scene matching compares; "
                           "leave some of the photo's centre unmasked")
    pixels = np.asarray(square, dtype=np.uint8)
    desc, weights = masked_gist(pixels[None], valid[None], params, device)
    colour, colour_weights = (layout or layout_encoder()).masked(np.asarray(rgb, dtype=np.uint8), hole)
    return QueryDescriptor(desc[0], weights[0], colour, colour_weights)


def thumbnail_image(collection, item_id: int, min_side: int | None):
    """An item's stored thumbnail as PIL RGB (its source file if the thumbnail is missing)."""
    from .images import decode_image

    try:
        return decode_image(collection.thumbnail(int(item_id)), min_side=min_side).image
    except (UnknownItem, ImageError, KeyError):
        return collection.load_image(int(item_id), min_side=min_side)


def item_colour_layouts(collection, ids, layout: LabLayoutEncoder | None = None) -> np.ndarray:
    """Colour layouts of items (m,) -> (m, dim) float32, computed from their stored thumbnails."""
    layout = layout or layout_encoder()
    out = np.empty((len(ids), layout.dim), dtype=np.float32)
    for row, item_id in enumerate(ids):
        out[row] = lab_layout(thumbnail_image(collection, item_id, layout.side), layout.nblocks, layout.side)
    return out


# Per gist matrix (by id, while it lives): its lab-layout rows gathered into the same order, when the two
# encoders' shards list items differently. The collection caches both matrices until it changes.
_ALIGNED: dict[int, tuple] = {}
_ALIGNED_LOCK = threading.Lock()


def _forget(key: int):
    return lambda _ref: _ALIGNED.pop(key, None)


def stored_layouts(collection, gist_matrix) -> tuple[np.ndarray | None, str]:
    """(n, dim) float16 ``lab-layout`` rows aligned with ``gist_matrix``'s rows, or ``(None, why not)``."""
    if LAYOUT_ENCODER not in collection.encoder_names:
        return None, (f"collection {collection.dir} has no '{LAYOUT_ENCODER}' embeddings, so the colour term is "
                      f"computed from the thumbnails of a GIST shortlist; index it with --encoders gist,{LAYOUT_ENCODER} "
                      f"for the exhaustive scene distance")
    layouts = collection.embedding_matrix(LAYOUT_ENCODER)
    if len(layouts.ids) == len(gist_matrix.ids) and np.array_equal(layouts.ids, gist_matrix.ids):
        return layouts.vectors, ""
    key = id(gist_matrix)
    with _ALIGNED_LOCK:
        cached = _ALIGNED.get(key)
        if cached is not None and cached[0]() is gist_matrix and cached[1] is layouts:
            return cached[2], ""
    try:
        aligned = np.asarray(layouts.vectors[layouts.rows(gist_matrix.ids)])
    except UnknownItem:
        have = int(np.isin(gist_matrix.ids, layouts.ids).sum())
        return None, (f"'{LAYOUT_ENCODER}' embeddings cover {have} of the {len(gist_matrix.ids)} gist items, so the "
                      f"colour term is computed from thumbnails; re-run `nearsight index` to fill them in")
    with _ALIGNED_LOCK:
        _ALIGNED[key] = (weakref.ref(gist_matrix, _forget(key)), layouts, aligned)
    return aligned, ""


# float32 copies of gist matrices (by id, while the float16 matrix lives). Converting float16 rows is
# most of the GIST term's cost (~0.5 s of ~0.6 s at 100k x 960 on one core); the copy removes it
# and gives the same numbers, at 4 bytes a value, so it is kept only when it fits this budget.
FLOAT32_CACHE_BYTES = 1 << 30
_FLOAT32: dict[int, tuple] = {}


def _forget_float32(key: int):
    return lambda _ref: _FLOAT32.pop(key, None)


def float32_rows(vectors: np.ndarray, budget: int | None = None) -> np.ndarray:
    """``vectors`` as float32, cached while they live, if that copy fits ``budget`` bytes (default
    ``FLOAT32_CACHE_BYTES``); otherwise ``vectors`` themselves (converted block by block when used)."""
    budget = FLOAT32_CACHE_BYTES if budget is None else budget
    if vectors.dtype == np.float32 or vectors.size * 4 > budget:
        return vectors
    key = id(vectors)
    with _ALIGNED_LOCK:
        cached = _FLOAT32.get(key)
        if cached is not None and cached[0]() is vectors:
            return cached[1]
        copy = np.asarray(vectors, dtype=np.float32)
        _FLOAT32[key] = (weakref.ref(vectors, _forget_float32(key)), copy)
        return copy


def require_gist(collection):
    """The collection's gist ``EmbeddingMatrix``; ``UnknownEncoder`` / ``InvalidQuery`` if it has none."""
    if "gist" not in collection.encoder_names:
        raise UnknownEncoder(f"scene completion needs the 'gist' encoder, and collection {collection.dir} has only "
                             f"{', '.join(collection.encoder_names) or 'no encoders'}; index it with --encoder gist")
    matrix = collection.embedding_matrix("gist")
    if len(matrix) == 0:
        raise InvalidQuery(f"collection {collection.dir} has no gist embeddings yet")
    return matrix


def _median(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return (float(np.median(finite)) if len(finite) else 0.0) or 1.0


def match_scenes(collection, query: QueryDescriptor, k: int = 200, gist_weight: float = 2.0,
                 colour_weight: float = 1.0, shortlist: int = 1000, exclude=(), route: str = "auto",
                 scales: tuple[float, float] | None = None) -> SceneMatches:
    """The ``k`` items of ``collection`` closest to the masked query (see the module doc for ``route``).

    ``scales``: the (GIST, colour) divisors; by default each term's median over the items compared.
    Passing the exhaustive route's ``scales`` to the ``shortlist`` route makes the two rank by the same
    distance, so that their overlap measures the shortlist alone.
    """
    if route not in ROUTES:
        raise InvalidQuery(f"unknown scene matching route {route!r}; valid routes: {', '.join(ROUTES)}")
    matrix = require_gist(collection)
    if matrix.vectors.shape[1] != query.gist.shape[0]:
        raise InvalidQuery(f"the collection's gist vectors are {matrix.vectors.shape[1]}-d, the query's "
                           f"{query.gist.shape[0]}-d; the encoder config differs")
    layouts, note = (None, "") if route == "thumbnails" else stored_layouts(collection, matrix)
    if layouts is None and route in ("exhaustive", "shortlist"):
        raise InvalidQuery(f"the {route} route needs stored colour layouts: {note}")
    if layouts is not None and layouts.shape[1] != query.colour.shape[0]:
        raise InvalidQuery(f"the collection's {LAYOUT_ENCODER} vectors are {layouts.shape[1]}-d, the query's "
                           f"{query.colour.shape[0]}-d; describe the query with the collection's layout encoder")
    if route == "auto":
        route = "exhaustive" if layouts is not None else "thumbnails"
        if note:
            LOG.warning("%s", note)

    gist_d = weighted_sq_distances(float32_rows(matrix.vectors), query.gist, query.gist_weights)
    if len(exclude):
        gist_d[np.isin(matrix.ids, np.asarray(list(exclude), dtype=np.int64))] = np.inf
    available = int(np.isfinite(gist_d).sum())
    if available == 0:
        raise InvalidQuery("every item of the collection is excluded; nothing to complete from")

    if route == "exhaustive":
        rows = np.arange(len(gist_d))
        colour_d = direct_sq_distances(layouts, query.colour, query.colour_weights)
        colour_d[~np.isfinite(gist_d)] = np.inf
    else:
        m = min(max(shortlist, k), available)
        rows = np.argpartition(gist_d, m - 1)[:m] if m < len(gist_d) else np.flatnonzero(np.isfinite(gist_d))
        rows = np.sort(rows)  # row order, as the exhaustive route sees them: ties break the same way
        if route == "shortlist":
            colours = layouts[rows]
        else:
            colours = item_colour_layouts(collection, matrix.ids[rows], layout_encoder(collection))
        colour_d = direct_sq_distances(colours, query.colour, query.colour_weights)
    g = gist_d[rows]
    g_scale, c_scale = scales if scales is not None else (_median(g), _median(colour_d))
    distance = (gist_weight * g / np.float32(g_scale) + colour_weight * colour_d / np.float32(c_scale)).astype(np.float32)
    kk = min(k, available)
    top = np.argpartition(distance, kk - 1)[:kk] if kk < len(distance) else np.arange(len(distance))
    top = top[np.lexsort((top, distance[top]))]  # by distance, ties by row: the same order on every route
    top = top[np.isfinite(distance[top])]
    return SceneMatches(ids=matrix.ids[rows[top]].astype(np.int64), distance=distance[top], gist=g[top],
                        colour=colour_d[top].astype(np.float32), route=route, compared=len(rows),
                        scales=(float(g_scale), float(c_scale)), note=note)
