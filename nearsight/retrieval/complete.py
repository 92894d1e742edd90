"""Scene completion from a photo collection (Hays & Efros 2007): fill a hole with another photo's pixels.

    from nearsight.retrieval.complete import complete_scene
    results = complete_scene(coll, Image.open("q.jpg"), Image.open("mask.png"), n=20)
    Image.fromarray(results[0].image).save("best.jpg")

Stages (``CompletionReport.timings`` names them):

1. ``scene``: masked GIST + colour layout distance over the whole collection, best ``candidates``
   (``scene_match``; exhaustive when the collection has ``lab-layout`` embeddings, else the colour term
   comes from a GIST shortlist's thumbnails and ``CompletionReport.scenes.note`` says so).
2. ``context``: each candidate's thumbnail, fitted to cover the query frame at ``match_side`` px, is
   searched over every translation and 3 scales for the placement that best matches the context (the
   pixels within ``context_radius`` of the hole) in L*a*b* and texture (``compose.align``).
3. ``seam``: the graph-cut seam at that small size for the ``seam_pool`` best candidates by scene,
   context and texture; then the ranking on all four terms, each standardised over the candidates
   (z-scores) and summed with ``term_weights``.
4. ``composite``: for the best ``n``, the source photo at the composite size, the seam again at that size
   in a band around the small one (``compose.seam``), and Poisson blending (``compose.poisson``).
5. ``full_size`` (photos larger than ``max_side`` only): each composite blended again at the photo's own
   size (``compose.fullres``): the source placed at full size, the seam upsampled, Poisson solved at full
   size, so the filled region is as sharp as the rest of the photo.

``progress(stage, fraction)``, when given, is called as each stage starts and after each composite (and
each full-size blend), with the fraction of the work done so far (a rough share by stage); an exception
it raises stops the run there, which is how the server cancels a job.

Matching is done at ``match_side`` whatever the photo's size; compositing at the photo's size up to
``max_side`` on the long side. A larger photo is composited reduced to that, then re-blended at its own
size (stage 5): the photo's own pixels, bit for bit, wherever the source was not used.

The query never completes itself (Hays & Efros leave it out): the item with the photo's content hash
(``query_sha256``), the ids in ``exclude``, every near-duplicate of the photo (the same photo re-encoded,
resized or lightly edited) and every crop of it (or photo it was cropped from), mirrored or not, are
skipped, and the report lists them (``query_copies``).
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace

import numpy as np
from PIL import Image
from scipy import ndimage

from .compose.align import (DEFAULT_SCALES, ContextMatcher, Placement, context_mask, resize_image, texture_map,
                            warp_candidate)
from .compose.composite import composite_candidate
from .compose.crops import DEFAULT_THRESHOLD as CROP_THRESHOLD
from .compose.fullres import DEFAULT_MAX_PIXELS as FULL_MAX_PIXELS
from .compose.fullres import reblend
from .compose.lab import rgb_to_lab, to_uint8
from .compose.seam import DEFAULT_K, graphcut_seam
from .errors import ImageError, ImageTooLarge, InvalidMask, InvalidQuery, NearsightError
from .images import DEFAULT_MAX_PIXELS, to_rgb
from .query_copies import DUPLICATE_SLACK, QueryCopies, query_items
from .scene_match import (ROUTES, SceneMatches, describe_query, layout_encoder, match_scenes, require_gist,
                          thumbnail_image)

__all__ = ["CompletionConfig", "Completion", "CompletionReport", "complete_scene", "complete_scene_report",
           "prepare_inputs", "at_input_size"]

LOG = logging.getLogger(__name__)

TERMS = ("scene", "context", "texture", "seam")
MIN_SIDE = 32
# Where each stage starts, as a share of the whole run, for ``progress``: rough shares measured at
# 1024 px with n=6 (the composites, one full-size seam and Poisson solve each, take about half).
STAGE_START = {"scene": 0.0, "context": 0.1, "seam": 0.35, "composite": 0.5}
FULL_SIZE_START = 0.8  # when the composites are blended again at the photo's size, that takes the rest


@dataclass(frozen=True)
class CompletionConfig:
    """Scene completion settings; defaults follow the paper where it gives a value.

    - ``candidates``: scenes kept by scene matching (200).
    - ``gist_weight``, ``colour_weight``: scene distance mix (GIST twice the colour layout).
    - ``shortlist``: items, by GIST alone, whose colour layout is computed on the shortlist routes.
    - ``scene_route``: ``auto``, ``exhaustive``, ``shortlist`` or ``thumbnails`` (see ``scene_match``).
    - ``match_side``: long side (px) of the frame context matching and ranking run at.
    - ``context_radius``: context ring width in px of the composite frame (80, as in the paper).
    - ``scales``, ``texture_weight``, ``offset_penalty``: the placement search (``compose.align``).
    - ``k``: the seam's unary cost factor per px of the composite frame (0.002).
    - ``seam_radius``: how far (composite px) from the hole the seam may go: the context ring, where
      the placement was judged, by default. It also bounds the graph's size.
    - ``seam_band``: at full size the seam is searched within this many px of the matching-size
      seam, upsampled (a full-size search costs ~8x more for a cut a few % cheaper).
    - ``max_side``: composites are made at the photo's size up to this long side (then blended again at the
      photo's size).
    - ``full_max_pixels``: at the photo's size, Poisson is solved over the filled region's bounding box
      up to this many pixels; past that its smooth correction is solved smaller (``compose.fullres``),
      which bounds the memory of one composite (about 0.85 KB a region pixel, so <= ~0.85 GB by default).
    - ``duplicate_check``, ``duplicate_error``: one of the ``duplicate_check`` best scenes whose thumbnail
      differs from the photo's unmasked pixels by less than ``duplicate_error`` (mean absolute 0..255
      difference at 64 px) is a copy of the query photo and is skipped (measured on synthetic scenes: a
      copy 1.1-1.9, re-encoded at JPEG q70 2.3, the same scene 8 px aside 15.9, other photos 50+;
      ``duplicate_check=0`` keeps copies).
    - ``crop_threshold``: a candidate among those best scenes or about to be composited whose masked NCC
      with the photo, as a crop of it or it as a crop of the candidate (``compose.crops``), reaches this is
      skipped; None keeps crops.
    - ``max_hole_fraction``: larger holes leave too little context to match against.
    - ``seam_pool``: candidates, best by the other three terms, whose seam is computed and which are
      ranked on all four (the seam is the costliest stage per candidate).
    - ``workers``: threads for the per-candidate stages (1: none).
    - ``term_weights``: weights of the standardised (scene, context, texture, seam) terms.
    """
    candidates: int = 200
    gist_weight: float = 2.0
    colour_weight: float = 1.0
    shortlist: int = 1000
    scene_route: str = "auto"
    match_side: int = 160
    context_radius: float = 80.0
    scales: tuple[float, ...] = DEFAULT_SCALES
    texture_weight: float = 1.0
    offset_penalty: float = 50.0
    k: float = DEFAULT_K
    seam_radius: float = 80.0
    seam_band: float = 8.0
    max_side: int = 1024
    full_max_pixels: int = FULL_MAX_PIXELS
    duplicate_check: int = 10
    duplicate_error: float = 6.0
    crop_threshold: float | None = CROP_THRESHOLD
    max_hole_fraction: float = 0.9
    seam_pool: int = 60
    workers: int = 1
    term_weights: tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)

    def __post_init__(self):
        if min(self.candidates, self.shortlist, self.seam_pool, self.workers, self.full_max_pixels) < 1:
            raise InvalidQuery(f"candidates, shortlist, seam_pool, workers and full_max_pixels must be >= 1, got "
                               f"{self.candidates}, {self.shortlist}, {self.seam_pool}, {self.workers}, "
                               f"{self.full_max_pixels}")
        if self.match_side < MIN_SIDE or self.max_side < MIN_SIDE:
            raise InvalidQuery(f"match_side and max_side must be >= {MIN_SIDE}, got {self.match_side}, {self.max_side}")
        if not 0 < self.max_hole_fraction <= 1:
            raise InvalidQuery(f"max_hole_fraction must be in (0, 1], got {self.max_hole_fraction}")
        if self.scene_route not in ROUTES:
            raise InvalidQuery(f"unknown scene_route {self.scene_route!r}; valid routes: {', '.join(ROUTES)}")
        if len(self.term_weights) != len(TERMS):
            raise InvalidQuery(f"term_weights needs {len(TERMS)} values {TERMS}, got {self.term_weights}")


@dataclass(frozen=True)
class Completion:
    """One completed photo.

    - ``image``: (H, W, 3) uint8, the composite, at the query photo's size.
    - ``score``: higher is better; minus the weighted sum of the standardised terms.
    - ``id``: the source item's id.
    - ``terms``: raw costs ``scene``, ``gist``, ``colour``, ``context``, ``texture``, ``seam`` (seam at
      the matching size), ``seam_full`` (at the composite size), and ``z_<term>`` for the four ranked terms.
    - ``placement``: where the source went, on the composite grid (the photo reduced to ``max_side``).
    - ``region``: (H, W) bool, the pixels that came from the source, at the photo's size.
    - ``solve_scale``: 1.0 when Poisson ran at the output's size, else the scale its correction was solved
      at (a region larger than ``full_max_pixels``).
    """
    image: np.ndarray
    score: float
    id: int
    terms: dict[str, float]
    placement: Placement
    region: np.ndarray
    solve_scale: float = 1.0

    def to_dict(self) -> dict:
        """JSON-friendly summary (no pixels)."""
        p = self.placement
        return {"id": self.id, "score": self.score, "terms": dict(self.terms),
                "placement": {"dy": p.dy, "dx": p.dx, "scale": p.scale}}


@dataclass(frozen=True)
class CompletionReport:
    """``completions`` best first, the scene matches they came from, seconds per stage, the frames, and the
    items left out as the query itself: ``excluded`` (asked for, or with the query's content hash),
    ``near_duplicates`` (the same frame, by pixels) and ``crops`` (crops of the photo or photos it was
    cropped from, by masked NCC)."""
    completions: list[Completion]
    scenes: SceneMatches
    timings: dict[str, float] = field(default_factory=dict)
    composite_size: tuple[int, int] = (0, 0)
    match_size: tuple[int, int] = (0, 0)
    output_size: tuple[int, int] = (0, 0)
    excluded: tuple[int, ...] = ()
    near_duplicates: tuple[int, ...] = ()
    crops: tuple[int, ...] = ()

    @property
    def skipped(self) -> dict:
        return {"excluded": list(self.excluded), "near_duplicates": list(self.near_duplicates),
                "crops": list(self.crops)}


# ---------------------------------------------------------------------------------- inputs
def _image_array(image, max_pixels: int) -> np.ndarray:
    if isinstance(image, Image.Image):
        w, h = image.size
        if w * h > max_pixels:
            raise ImageTooLarge(f"{w}x{h} = {w * h:,} pixels is over the limit of {max_pixels:,}")
        return np.asarray(to_rgb(image), dtype=np.uint8)
    a = np.asarray(image)
    if a.ndim == 3 and a.shape[2] == 4:
        a = a[:, :, :3]
    if a.ndim != 3 or a.shape[2] != 3:
        raise ImageError(f"the image must be RGB (H, W, 3), got an array of shape {a.shape}")
    if a.shape[0] * a.shape[1] > max_pixels:
        raise ImageTooLarge(f"{a.shape[1]}x{a.shape[0]} = {a.shape[0] * a.shape[1]:,} pixels is over the limit "
                            f"of {max_pixels:,}")
    if a.dtype == np.uint8:
        return a
    if np.issubdtype(a.dtype, np.floating):
        return to_uint8(a)
    raise ImageError(f"the image must be uint8 or float in 0..1, got dtype {a.dtype}")


def _mask_array(mask) -> np.ndarray:
    """PIL or array mask -> (H, W) bool, True = hole (white)."""
    if isinstance(mask, Image.Image):
        if mask.mode in ("RGBA", "LA", "PA") or (mask.mode == "P" and "transparency" in mask.info):
            mask = mask.convert("RGBA")
            rgba = np.asarray(mask)
            gray = np.asarray(mask.convert("L"), dtype=np.float32) * (rgba[:, :, 3] / 255.0)
            return gray > 127
        return np.asarray(mask.convert("L")) > 127
    m = np.asarray(mask)
    if m.ndim == 3:
        m = m[:, :, :3].mean(axis=2) if m.dtype != bool else m.any(axis=2)
    if m.ndim != 2:
        raise InvalidQuery(f"the mask must be (H, W) or an image, got an array of shape {np.shape(mask)}")
    if m.dtype == bool:
        return m
    if np.issubdtype(m.dtype, np.floating):
        return m > 0.5
    return m > 127


def prepare_inputs(image, mask, config: CompletionConfig = CompletionConfig(),
                   max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray]:
    """Validate the query and its mask; return the composite-frame (H, W, 3) uint8 image and (H, W) bool hole.

    Raises ``InvalidQuery`` for a mask of another size, an empty mask or one that covers (nearly)
    everything, ``ImageError`` for an image too small, ``ImageTooLarge`` over ``max_pixels``.
    """
    rgb = _image_array(image, max_pixels)
    hole = _mask_array(mask)
    height, width = rgb.shape[:2]
    if hole.shape != (height, width):
        raise InvalidQuery(f"the mask is {hole.shape[1]}x{hole.shape[0]} but the image is {width}x{height}; "
                           f"they must be the same size")
    if min(height, width) < MIN_SIDE:
        raise ImageError(f"the image is {width}x{height}; scene completion needs at least {MIN_SIDE} px a side")
    holes = int(hole.sum())
    if holes == 0:
        raise InvalidMask("the mask marks no pixels (white = the hole to fill); nothing to complete")
    if holes == hole.size:
        raise InvalidMask("the mask covers the whole image; leave the part of the photo to keep black")
    if holes > config.max_hole_fraction * hole.size:
        raise InvalidMask(f"the mask covers {holes / hole.size:.0%} of the image; at most "
                           f"{config.max_hole_fraction:.0%} can be filled from context")
    scale = config.max_side / max(height, width)
    if scale < 1.0:  # composite at most max_side: reduce the photo, and keep every hole pixel a hole
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        rgb = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        hole = np.asarray(Image.fromarray(hole.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)) > 0
    return rgb, hole


# ------------------------------------------------------------------------------------ frames
def _fill_hole(image: np.ndarray, hole: np.ndarray) -> np.ndarray:
    """Hole pixels take their nearest valid pixel's value, so gradients at the hole's edge stay real."""
    _, (iy, ix) = ndimage.distance_transform_edt(hole, return_indices=True)
    return image[iy, ix]


def _shrink_mask(hole: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool -> (h, w) bool where any covered source pixel makes a hole pixel (never loses hole)."""
    img = Image.fromarray(hole.astype(np.uint8) * 255)
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BOX)) > 0


def _grow_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) bool -> (H, W) bool by bilinear interpolation, thresholded at one half."""
    img = Image.fromarray(mask.astype(np.uint8) * 255)
    return np.asarray(img.resize((size[1], size[0]), Image.Resampling.BILINEAR)) > 127


def _cover_size(src: tuple[int, int], frame: tuple[int, int]) -> tuple[int, int]:
    """Size (h, w) of ``src`` resized to cover ``frame`` (h, w), aspect kept: the natural placement is centred."""
    s = max(frame[0] / src[0], frame[1] / src[1])
    return max(frame[0], round(src[0] * s)), max(frame[1], round(src[1] * s))


def _as_float_rgb(image: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """PIL RGB -> (h, w, 3) float32 in 0..1 at ``size`` (area-averaged when shrinking)."""
    a = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    return np.clip(resize_image(a, size), 0.0, 1.0)


def _standardise(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    out = np.full(v.shape, np.inf)
    if finite.any():
        mean = v[finite].mean()
        std = v[finite].std()
        out[finite] = (v[finite] - mean) / std if std > 0 else 0.0
    return out


def _clamp_to_cover(p: Placement, hole: np.ndarray, scaled: tuple[int, int]) -> Placement | None:
    """Move a placement the least so the scaled candidate covers the hole's bounding box (None if too small)."""
    rows = np.flatnonzero(hole.any(axis=1))
    cols = np.flatnonzero(hole.any(axis=0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    if scaled[0] < y1 - y0 or scaled[1] < x1 - x0:
        return None
    dy = int(np.clip(p.dy, y1 - scaled[0], y0))
    dx = int(np.clip(p.dx, x1 - scaled[1], x0))
    return replace(p, dy=dy, dx=dx)


# ---------------------------------------------------------------------------------- stages
@dataclass(frozen=True)
class _Frame:
    """The query at the matching size: what every candidate is compared with."""
    size: tuple[int, int]        # (h, w) matching frame
    scale: tuple[float, float]   # (fy, fx) matching px per composite px
    rgb: np.ndarray              # (h, w, 3) float32 0..1, hole filled from its border
    lab: np.ndarray              # (h, w, 3) float32
    hole: np.ndarray             # (h, w) bool, conservative (any hole pixel below makes a hole pixel)
    context: np.ndarray          # (h, w) bool
    texture: np.ndarray          # (h, w) float32
    distance: np.ndarray         # (h, w) float64, px to the hole (every seam at this size needs it)
    matcher: ContextMatcher      # the context's side of the placement search, shared by all candidates


@dataclass(frozen=True)
class _Candidate:
    rank: int                    # position in the scene matches
    id: int
    size: tuple[int, int]        # thumbnail (h, w)
    image: np.ndarray            # (h', w', 3) float32 0..1, covering the matching frame
    placement: Placement         # on the matching frame


def _match_frame(rgb: np.ndarray, hole: np.ndarray, config: CompletionConfig) -> _Frame:
    height, width = hole.shape
    f = min(1.0, config.match_side / max(height, width))
    size = (max(MIN_SIDE // 2, round(height * f)), max(MIN_SIDE // 2, round(width * f)))
    hole_m = _shrink_mask(hole, size)
    if hole_m.all():
        raise InvalidQuery("at the matching size the hole covers the whole image; use a smaller hole")
    rgb_m = _fill_hole(_as_float_rgb(Image.fromarray(rgb), size), hole_m)
    lab_m = rgb_to_lab(rgb_m)
    context = context_mask(hole_m, max(2.0, config.context_radius * f))
    texture = texture_map(lab_m)
    matcher = ContextMatcher(lab_m, context, scales=config.scales, texture_weight=config.texture_weight,
                             offset_penalty=config.offset_penalty, must_cover=hole_m, query_texture=texture)
    return _Frame(size=size, scale=(size[0] / height, size[1] / width), rgb=rgb_m, lab=lab_m, hole=hole_m,
                  context=context, texture=texture, distance=ndimage.distance_transform_edt(~hole_m), matcher=matcher)


def _place(frame: _Frame, config: CompletionConfig, collection, rank: int, item_id: int) -> _Candidate | None:
    try:  # one unreadable or unplaceable candidate never stops a query
        thumb = thumbnail_image(collection, item_id, None)
        cand = _as_float_rgb(thumb, _cover_size((thumb.height, thumb.width), frame.size))
        placement = frame.matcher.place(rgb_to_lab(cand))
    except NearsightError as exc:
        LOG.debug("candidate %d not placed: %s", item_id, exc)
        return None
    return _Candidate(rank, item_id, (thumb.height, thumb.width), cand, placement)


def _small_seam(frame: _Frame, config: CompletionConfig, cand: _Candidate) -> tuple[np.ndarray | None, float]:
    f = frame.scale[1]
    warped, covered = warp_candidate(cand.image, cand.placement, frame.size)
    try:
        # k per matching px = k per composite px / f: the same cost for the same distance in the photo.
        return graphcut_seam(frame.rgb, warped, frame.hole, covered, k=config.k / f,
                             max_distance=config.seam_radius * f, hole_distance=frame.distance)
    except NearsightError as exc:
        LOG.debug("candidate %d has no seam: %s", cand.id, exc)
        return None, float("inf")


def _load_source(collection, item_id: int, size: tuple[int, int]) -> Image.Image | NearsightError:
    """The candidate's photo, decoded no larger than the composite needs (JPEG draft)."""
    try:
        item = collection.item(item_id)
        cover = _cover_size((item.height, item.width), size) if item.width and item.height else size
        return collection.load_image(item_id, min_side=min(cover))
    except NearsightError as exc:
        return exc


def _composite(query: np.ndarray, hole: np.ndarray, frame: _Frame, config: CompletionConfig, cand: _Candidate,
               take_m: np.ndarray, source, hole_distance: np.ndarray | None = None) -> tuple[Placement, object] | None:
    if isinstance(source, NearsightError):
        LOG.debug("candidate %d has no source image: %s", cand.id, source)
        return None
    height, width = hole.shape
    try:
        image = _as_float_rgb(source, _cover_size((source.height, source.width), (height, width)))
        # The same placement on the composite grid; rounding may need a 1-px nudge to cover the hole.
        p = cand.placement
        p = replace(p, dy=round(p.dy / frame.scale[0]), dx=round(p.dx / frame.scale[1]))
        scaled = (max(1, round(image.shape[0] * p.scale)), max(1, round(image.shape[1] * p.scale)))
        p = _clamp_to_cover(p, hole, scaled)
        if p is None:
            raise InvalidQuery(f"item {cand.id} is too small at full size to cover the hole")
        comp = composite_candidate(query, image, hole, p, k=config.k, max_distance=config.seam_radius,
                                   guide=_grow_mask(take_m, (height, width)), band=config.seam_band,
                                   hole_distance=hole_distance)
    except NearsightError as exc:
        LOG.debug("candidate %d not composited: %s", cand.id, exc)
        return None
    return p, comp


class _Serial:
    """``map`` in the calling thread (workers=1): no pool, plain tracebacks."""

    def map(self, fn, items):
        return map(fn, items)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _pool(workers: int):
    """Threads for the per-candidate work: FFTs, sparse products and most numpy loops release the GIL."""
    if workers <= 1:
        return _Serial()
    from concurrent.futures import ThreadPoolExecutor

    return ThreadPoolExecutor(max_workers=workers, thread_name_prefix="nearsight-complete")


# ---------------------------------------------------------------------------------- output size
def _input_size(image) -> tuple[int, int]:
    if isinstance(image, Image.Image):
        return image.size[1], image.size[0]
    return tuple(np.shape(image)[:2])


def _upsampled(original: np.ndarray, hole: np.ndarray, c: Completion) -> Completion:
    """The composite upsampled into the photo, feathered across the seam: only for a source that cannot be
    placed at full size any more (its file gone or changed since it was composited)."""
    height, width = hole.shape
    scale = width / c.image.shape[1]
    up = np.asarray(Image.fromarray(c.image).resize((width, height), Image.Resampling.LANCZOS), np.float32)
    region = _grow_mask(c.region, (height, width)) | hole
    alpha = np.maximum(ndimage.gaussian_filter(region.astype(np.float32), sigma=max(1.0, scale / 2)), hole)
    rgb = original.astype(np.float32) * (1 - alpha[..., None]) + up * alpha[..., None]
    return replace(c, image=np.clip(rgb + 0.5, 0, 255).astype(np.uint8), region=region, solve_scale=1 / scale)


def _full_size(collection, original: np.ndarray, hole: np.ndarray, c: Completion,
               config: CompletionConfig) -> Completion:
    height, width = hole.shape
    grid = c.image.shape[:2]
    item = collection.item(c.id)
    cover = _cover_size((item.height, item.width), (height, width)) if item.width and item.height else (height, width)
    source = collection.load_image(c.id, min_side=max(1, round(min(cover) * c.placement.scale)))
    cover = _cover_size((source.height, source.width), (height, width))
    scaled = (max(1, round(cover[0] * c.placement.scale)), max(1, round(cover[1] * c.placement.scale)))
    # The composite's placement on this grid; rounding may need a 1-px nudge to cover the hole.
    p = replace(c.placement, dy=round(c.placement.dy * height / grid[0]), dx=round(c.placement.dx * width / grid[1]))
    p = _clamp_to_cover(p, hole, scaled)
    if p is None:
        raise InvalidQuery(f"item {c.id} is too small at full size to cover the hole")
    blend = reblend(original, hole, np.asarray(source.convert("RGB")), scaled, p.dy, p.dx, c.region,
                    max_pixels=config.full_max_pixels)
    return replace(c, image=blend.rgb, region=blend.region, solve_scale=blend.solve_scale)


def at_input_size(collection, image, mask, completions: list[Completion],
                  config: CompletionConfig = CompletionConfig(), progress=None, start: float = 0.0) -> list[Completion]:
    """Composites made on the reduced photo -> the photo's own size, blended again there (module doc,
    stage 5): its pixels bit for bit wherever the source was not used, the source at full resolution
    where it was. ``progress("full_size", fraction)`` is called after each, the fraction going from
    ``start`` to 1 (see ``complete_scene``)."""
    original = _image_array(image, DEFAULT_MAX_PIXELS)
    hole = _mask_array(mask)
    if hole.shape != original.shape[:2]:
        raise InvalidQuery(f"the mask is {hole.shape[1]}x{hole.shape[0]} but the image is "
                           f"{original.shape[1]}x{original.shape[0]}; they must be the same size")
    out = []
    for rank, c in enumerate(completions):
        try:
            out.append(_full_size(collection, original, hole, c, config))
        except NearsightError as exc:
            LOG.warning("completion from item %d upsampled, not blended at full size: %s", c.id, exc)
            out.append(_upsampled(original, hole, c))
        if progress is not None:
            progress("full_size", start + (1.0 - start) * (rank + 1) / len(completions))
    return out


# ---------------------------------------------------------------------------------- pipeline
def complete_scene(collection, image, mask, n: int = 20, config: CompletionConfig = CompletionConfig(),
                   exclude=(), progress=None, query_sha256: str | None = None) -> list[Completion]:
    """Fill the white part of ``mask`` in ``image`` from the collection's photos; best ``n`` composites first.

    ``image``: PIL image or (H, W, 3) uint8 array; ``mask``: PIL image or (H, W) array, white/True = hole,
    the same size. ``exclude``: item ids never to use; ``query_sha256``: the photo file's content hash, whose
    item is never used either (near-duplicates of the photo are skipped whatever is given).
    ``progress``: optional ``(stage, fraction done)`` callback (see the module docstring).
    """
    return complete_scene_report(collection, image, mask, n=n, config=config, exclude=exclude,
                                 progress=progress, query_sha256=query_sha256).completions


def complete_scene_report(collection, image, mask, n: int = 20, config: CompletionConfig = CompletionConfig(),
                          exclude=(), progress=None, query_sha256: str | None = None) -> CompletionReport:
    """``complete_scene`` with the scene matches, per-stage timings and frame sizes."""
    if int(n) < 1:
        raise InvalidQuery(f"n must be >= 1, got {n}")
    report = progress or (lambda stage, fraction: None)
    report("scene", 0.0)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    rgb, hole = prepare_inputs(image, mask, config)
    height, width = hole.shape
    full_size = (height, width) != _input_size(image)
    end = FULL_SIZE_START if full_size else 1.0  # of the composite stage

    # 1. Scene matching on the masked descriptors.
    t = time.perf_counter()
    require_gist(collection)  # the clear answer before any work
    encoder = collection.encoder("gist")
    query = describe_query(rgb, hole, encoder.params, encoder.device, layout=layout_encoder(collection))
    excluded = query_items(collection, exclude, query_sha256)
    # A few more than needed: the query's near-duplicates come first and are dropped.
    scenes = match_scenes(collection, query, k=config.candidates + DUPLICATE_SLACK, gist_weight=config.gist_weight,
                          colour_weight=config.colour_weight, shortlist=config.shortlist, exclude=excluded,
                          route=config.scene_route)
    copies = QueryCopies(collection, rgb, hole, config.duplicate_error, config.crop_threshold)
    scenes = copies.drop_near_duplicates(scenes, config.duplicate_check, config.candidates)
    timings["scene"] = time.perf_counter() - t

    # 2. Context matching for every candidate at the matching size.
    t = time.perf_counter()
    report("context", STAGE_START["context"])
    frame = _match_frame(rgb, hole, config)
    with _pool(config.workers) as pool:
        placed = list(pool.map(lambda job: _place(frame, config, collection, *job),
                               [(rank, int(item_id)) for rank, item_id in enumerate(scenes.ids)]))
        cands = [c for c in placed if c is not None]
        timings["context"] = time.perf_counter() - t
        if not cands:
            raise InvalidQuery(f"none of the {len(scenes.ids)} best-matching scenes could be placed over the hole")

        # 3. The seam at the matching size for the best candidates by the other three terms, then the
        # four-term ranking among those (a candidate outside that pool could not make the top n).
        t = time.perf_counter()
        report("seam", STAGE_START["seam"])
        raw = {"scene": np.array([scenes.distance[c.rank] for c in cands], dtype=np.float64),
               "context": np.array([c.placement.ssd for c in cands]),
               "texture": np.array([c.placement.texture for c in cands])}
        z = {name: _standardise(values) for name, values in raw.items()}
        partial = sum(w * z[name] for w, name in zip(config.term_weights, TERMS[:3]))
        pool_rows = np.argsort(partial, kind="stable")[:max(config.seam_pool, n)]
        seams = list(pool.map(lambda i: _small_seam(frame, config, cands[i]), pool_rows))
        raw["seam"] = np.full(len(cands), np.inf)
        takes = {}
        for i, (take_m, cost) in zip(pool_rows, seams):
            raw["seam"][i] = cost
            takes[i] = take_m
        z["seam"] = _standardise(raw["seam"])
        total = partial + config.term_weights[3] * z["seam"]
        order = [int(i) for i in np.argsort(total, kind="stable") if np.isfinite(total[i])]
        timings["seam"] = time.perf_counter() - t

        # 4. Composite the best n at full size (the next in rank order stands in for one that fails).
        t = time.perf_counter()
        report("composite", STAGE_START["composite"])
        query_full = _fill_hole(rgb.astype(np.float32) / 255.0, hole)
        hole_distance = ndimage.distance_transform_edt(~hole)  # the same for every composite's seam
        completions: list[Completion] = []
        while len(completions) < n and order:
            batch, order = order[:n - len(completions)], order[n - len(completions):]
            # A crop of the query (or the photo it was cut from) fits its context exactly: never used.
            crops = list(pool.map(lambda i: copies.is_crop(cands[i].id), batch))
            batch = [i for i, crop in zip(batch, crops) if not crop]
            sources = [_load_source(collection, cands[i].id, (height, width)) for i in batch]
            jobs = [(query_full, hole, frame, config, cands[i], takes[i], src, hole_distance)
                    for i, src in zip(batch, sources)]
            for i, result in zip(batch, pool.map(lambda job: _composite(*job), jobs)):
                if result is None:
                    continue
                placement, comp = result
                c = cands[i]
                terms = {name: float(raw[name][i]) for name in TERMS}
                terms.update(gist=float(scenes.gist[c.rank]), colour=float(scenes.colour[c.rank]),
                             seam_full=comp.seam_cost)
                terms.update({f"z_{name}": float(z[name][i]) for name in TERMS})
                completions.append(Completion(image=to_uint8(comp.rgb), score=-float(total[i]), id=c.id,
                                              terms=terms, placement=placement, region=comp.take))
                done = STAGE_START["composite"] + (end - STAGE_START["composite"]) * len(completions) / n
                report("composite", min(done, end))
    timings["composite"] = time.perf_counter() - t
    if completions and full_size:
        t = time.perf_counter()
        completions = at_input_size(collection, image, mask, completions, config, progress=progress,
                                    start=FULL_SIZE_START)
        timings["full_size"] = time.perf_counter() - t
    timings["total"] = time.perf_counter() - t0
    if not completions:
        raise InvalidQuery("no candidate scene could be composited into the hole")
    return CompletionReport(completions=completions, scenes=scenes, timings=timings,
                            composite_size=(height, width), match_size=frame.size,
                            output_size=completions[0].image.shape[:2], excluded=tuple(sorted(excluded)),
                            near_duplicates=tuple(copies.near_duplicates), crops=tuple(sorted(copies.crops)))
