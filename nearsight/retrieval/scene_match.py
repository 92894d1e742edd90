"""Scene matching for scene completion (Hays & Efros 2007, section 3): which photos share the query's layout?

The query is described with its hole masked out: colour GIST whose per-cell weights are the fraction
of valid pixels (``gist.masked_gist``), and a 4x4 L*a*b* colour layout of the valid pixels, both over
the centre square that the ``gist`` encoder sees. The distance to an item is::

    scene = gist_weight * sum w (g_q - g_i)^2 / median_g  +  colour_weight * sum w_c (c_q - c_i)^2 / median_c

(GIST weighted twice the colour, each term divided by its median over the shortlist so that the
weights mean what they say). The GIST term is computed for every item from the float16 shards in
blocks of rows, as ``sum w q^2 - 2 X (w q) + (X*X) w``: two matrix-vector products per block, no
Python loop over items. The collection stores no colour layouts, so the colour term is computed for
the ``shortlist`` items with the smallest GIST distance, from their stored thumbnails (decoded at
1/8 scale, about a millisecond each); GIST carries twice the weight, so an item outside that
shortlist would need a colour match better than any in it to make the final cut.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from .compose.lab import rgb_to_lab
from .errors import ImageError, InvalidQuery, UnknownEncoder, UnknownItem

__all__ = ["SceneMatches", "QueryDescriptor", "centre_square_box", "colour_layout", "weighted_sq_distances",
           "describe_query", "item_colour_layouts", "require_gist", "match_scenes", "thumbnail_image"]

COLOUR_SIDE = 32      # candidates' colour layouts are taken from a 32x32 centre square
_BLOCK_ROWS = 16384   # rows of the float16 matrix converted to float32 at a time (~60 MB for 960-d)


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
    ``gist`` and ``colour`` (the raw weighted SSDs), all (k,) float32."""
    ids: np.ndarray
    distance: np.ndarray
    gist: np.ndarray
    colour: np.ndarray


def centre_square_box(width: int, height: int) -> tuple[int, int, int, int]:
    """The (left, top, right, bottom) centre square that ``prepare_gist_image`` crops."""
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def _cell_edges(size: int, nblocks: int) -> np.ndarray:
    return np.floor(np.arange(nblocks + 1) * size / nblocks).astype(np.int64)


def colour_layout(rgb: np.ndarray, valid: np.ndarray | None = None, nblocks: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(S, S, 3) RGB (uint8 or float 0..1) -> mean L*a*b* per cell over valid pixels.

    Returns ``(colour, weights)``, both (nblocks * nblocks * 3,) float32, cell-major (row, col, channel);
    a cell's weight is its fraction of valid pixels (a cell with none has weight 0 and colour 0).
    """
    lab = rgb_to_lab(rgb).astype(np.float64)
    h, w = lab.shape[:2]
    v = np.ones((h, w)) if valid is None else np.asarray(valid, dtype=np.float64)
    ys, xs = _cell_edges(h, nblocks), _cell_edges(w, nblocks)

    def cell_sums(a):  # sums over the cells, no Python loop over pixels
        return np.add.reduceat(np.add.reduceat(a, ys[:-1], axis=0), xs[:-1], axis=1)

    count = cell_sums(v)
    area = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    total = cell_sums(lab * v[:, :, None])
    mean = np.where(count[..., None] > 0, total / np.maximum(count, 1e-12)[..., None], 0.0)
    weights = np.repeat((count / area)[..., None], 3, axis=2)
    return mean.astype(np.float32).reshape(-1), weights.astype(np.float32).reshape(-1)


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
    for start in range(0, n, block_rows):
        x = np.asarray(vectors[start:start + block_rows], dtype=np.float32)
        out[start:start + len(x)] = base - 2.0 * (x @ wq) + (x * x) @ w32
    np.maximum(out, 0.0, out=out)  # rounding of the expansion; a distance is never negative
    return out


def describe_query(rgb: np.ndarray, hole: np.ndarray, params, device: str = "cpu") -> QueryDescriptor:
    """(H, W, 3) uint8 query and (H, W) bool hole -> masked GIST and colour layout of the centre square."""
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
    colour, colour_weights = colour_layout(pixels, valid, params.nblocks)
    return QueryDescriptor(desc[0], weights[0], colour, colour_weights)


def thumbnail_image(collection, item_id: int, min_side: int | None) -> Image.Image:
    """An item's stored thumbnail as PIL RGB (its source file if the thumbnail is missing)."""
    from .images import decode_image

    try:
        return decode_image(collection.thumbnail(int(item_id)), min_side=min_side).image
    except (UnknownItem, ImageError, KeyError):
        return collection.load_image(int(item_id), min_side=min_side)


def item_colour_layouts(collection, ids, nblocks: int = 4) -> np.ndarray:
    """Colour layouts of items (m,) -> (m, 3 nblocks^2) float32, from their thumbnails' centre squares."""
    out = np.empty((len(ids), 3 * nblocks * nblocks), dtype=np.float32)
    for row, item_id in enumerate(ids):
        image = thumbnail_image(collection, item_id, COLOUR_SIDE)
        square = image.crop(centre_square_box(*image.size)).resize((COLOUR_SIDE, COLOUR_SIDE),
                                                                   Image.Resampling.BILINEAR)
        out[row] = colour_layout(np.asarray(square), None, nblocks)[0]
    return out


def require_gist(collection):
    """The collection's gist ``EmbeddingMatrix``; ``UnknownEncoder`` / ``InvalidQuery`` if it has none."""
    if "gist" not in collection.encoder_names:
        raise UnknownEncoder(f"scene completion needs the 'gist' encoder, and collection {collection.dir} has only "
                             f"{', '.join(collection.encoder_names) or 'no encoders'}; index it with --encoder gist")
    matrix = collection.embedding_matrix("gist")
    if len(matrix) == 0:
        raise InvalidQuery(f"collection {collection.dir} has no gist embeddings yet")
    return matrix


def match_scenes(collection, query: QueryDescriptor, k: int = 200, gist_weight: float = 2.0,
                 colour_weight: float = 1.0, shortlist: int = 1000, exclude=()) -> SceneMatches:
    """The ``k`` items of ``collection`` closest to the masked query (see the module doc)."""
    matrix = require_gist(collection)
    if matrix.vectors.shape[1] != query.gist.shape[0]:
        raise InvalidQuery(f"the collection's gist vectors are {matrix.vectors.shape[1]}-d, the query's "
                           f"{query.gist.shape[0]}-d; the encoder config differs")
    gist_d = weighted_sq_distances(matrix.vectors, query.gist, query.gist_weights)
    excluded = np.isin(matrix.ids, np.asarray(list(exclude), dtype=np.int64)) if len(exclude) else None
    if excluded is not None:
        gist_d[excluded] = np.inf
    available = int(np.isfinite(gist_d).sum())
    if available == 0:
        raise InvalidQuery("every item of the collection is excluded; nothing to complete from")
    m = min(max(shortlist, k), available)
    rows = np.argpartition(gist_d, m - 1)[:m] if m < len(gist_d) else np.flatnonzero(np.isfinite(gist_d))
    ids = matrix.ids[rows]
    g = gist_d[rows]
    colours = item_colour_layouts(collection, ids, nblocks=int(np.sqrt(query.colour.size // 3)))
    c = ((colours - query.colour) ** 2 * query.colour_weights).sum(axis=1).astype(np.float32)
    g_scale = float(np.median(g)) or 1.0
    c_scale = float(np.median(c)) or 1.0
    distance = (gist_weight * g / g_scale + colour_weight * c / c_scale).astype(np.float32)
    order = np.argsort(distance, kind="stable")[:k]
    return SceneMatches(ids=ids[order].astype(np.int64), distance=distance[order], gist=g[order], colour=c[order])
