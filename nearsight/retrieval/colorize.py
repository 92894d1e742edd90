"""Colour from nearest neighbours: data-driven colorization and colour transfer (Torralba et al. 2008;
Reinhard et al. 2001).

Colorization of a gray photo:

1. Neighbours by luminance-only descriptors (``gist-gray`` and ``tiny-gray``; their distances are each
   normalised by their median over the candidate pool and summed).
2. Each neighbour is squashed to the query's frame (as the descriptors see it) and turned gray the way gray
   photos are made (``gray_model``: Rec. 601 luma, as JPEG, PIL and OpenCV make them; Rec. 709 luma; or
   CIE L*; "auto" takes the one under which the best-matching neighbour's gray matches the query), because a gray photo's
   value is not the L* of the colour it came from (saturated greens, reds and blues differ by 10-20 L*), and
   comparing the two makes even the exact source look wrong. Its lightness is then
   remapped to the query's mean and spread (Welsh et al. 2002), and it is placed over the query by the
   same translation-and-scale search as scene completion's context matching, on L* only, with the
   whole frame as context. The scales zoom the neighbour *in* (1, 1/0.9, 1/0.81: the inverse of the
   scene-completion set) so that every placement still covers the whole frame.
3. A multi-label graph cut (alpha-expansion) picks per pixel which aligned neighbour supplies a*b*:
   data term = local L* and texture disagreement (each pixel may also take its neighbour from a
   few pixels away, for parallax), Potts smoothness strong where L* is smooth, so the source
   changes along the query's own edges.
4. Chroma whose source still disagrees locally is shrunk toward gray (``confidence``): a wrong
   colour costs more than no colour, and on the benchmark this roughly halves the loss on queries
   the collection does not really hold while keeping near-duplicates' colours.
5. The query's L* is kept exactly; the chosen a*b* is upsampled to full size, smoothed edge-aware
   (guided filter with L* as the guide) and, where L* + a*b* leaves the sRGB gamut, desaturated
   until it fits, so the output's lightness is still the query's.

Colour transfer (``recolor``): Reinhard statistics transfer in l-alpha-beta toward a reference
image, an item of the collection, or the mean statistics of the photo's nearest neighbours;
optionally per region (a grid in the photo's frame, the references aligned to it as above).

``colorize``, ``colorize_arrays`` and ``recolor`` take an optional ``progress(stage, fraction)`` callback,
called as each stage starts with the rough fraction of the work done; an exception it raises stops the
run there (how the server cancels a job).
"""
from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field

import numpy as np

from .compose.align import Placement, best_placement, resize_image, texture_map, warp_candidate
from .compose.alpha_expansion import alpha_expansion
from .compose.lab import lab_to_rgb, rgb_to_lab, to_uint8
from .compose.transfer import (LabStats, grid_regions, lab_stats, region_stats, reinhard_transfer,
                               transfer_regions)
from .errors import ImageError, ImageTooLarge, InvalidQuery, UnknownEncoder

__all__ = ["ColorizeConfig", "ColorizeResult", "Colorization", "RecolorResult", "GRAY_ENCODERS", "MIN_SIDE",
           "colorize", "colorize_arrays", "colorize_from_neighbors", "gray_neighbors", "recolor", "to_gray",
           "guided_filter"]

GRAY_ENCODERS = ("gist-gray", "tiny-gray")
# Fallbacks for recolor on a collection without luminance descriptors (the photo is in colour anyway).
COLOUR_ENCODERS = ("gist", "cnn", "clip", "tiny")
MIN_SIDE = 16
# Zoom-in factors: the inverse of scene completion's (0.81, 0.90, 1.0), so the neighbour covers the frame.
COLORIZE_SCALES = (1.0, 1.0 / 0.9, 1.0 / 0.81)
# Chroma below this (L*a*b* units, 95th percentile) is JPEG noise on a gray photo, not colour.
GRAY_CHROMA = 4.0
# A toned print's chroma all points one way: mean resultant length of the hue above this.
TONED_HUE_CONCENTRATION = 0.9
# How a colour photo becomes gray: luma weights on the gamma-encoded R'G'B', or CIE L* itself.
LUMA_WEIGHTS = {"rec601": (0.299, 0.587, 0.114), "rec709": (0.2126, 0.7152, 0.0722)}
GRAY_MODELS = ("auto", "rec601", "rec709", "lstar")
GRAY_MODEL_EVIDENCE = 0.5  # a luma model replaces L* only when it brings the best neighbour this much closer


@dataclass(frozen=True)
class ColorizeConfig:
    """Knobs of the colorization core. Sizes are in pixels of the working grid unless noted."""
    work_side: int = 256            # alignment and graph cut run with the longer side at most this
    scales: tuple[float, ...] = COLORIZE_SCALES
    offset_penalty: float = 50.0    # as in context matching: cost per query diagonal of shift
    window: int = 7                 # box window of the local L* / texture agreement
    texture_weight: float = 0.5     # texture disagreement relative to L* disagreement
    prior_weight: float = 0.05      # tie-breaker per pixel toward neighbours whose whole frame aligned better
    smoothness: float = 1.0         # Potts weight on an edge where L* is flat
    edge_sigma: float = 3.0         # L* step at which an edge's Potts weight has fallen to exp(-1/2)
    n_iters: int = 3                # alpha-expansion cycles
    local_radius: int = 4           # per-pixel search of small shifts around the global placement (px)
    local_step: int = 2             # stride of that search
    shift_penalty: float = 0.01     # data cost per px^2 of local shift
    confidence: float = 1.0         # chroma *= exp(-local cost / confidence); 0 = keep the chosen chroma as is
    smooth_radius: int = 3          # guided-filter radius on a*b* (0 = no smoothing)
    smooth_eps: float = 25.0        # guided-filter regulariser in (L*)^2: 5 L* of contrast counts as an edge
    max_pixels: int = 40_000_000    # refuse larger outputs
    gray_model: str = "auto"        # how the query's gray was made (GRAY_MODELS): neighbours are compared so

    def __post_init__(self):
        if self.gray_model not in GRAY_MODELS:
            raise InvalidQuery(f"gray_model must be one of {', '.join(GRAY_MODELS)}; got {self.gray_model!r}")
        if self.work_side < MIN_SIDE:
            raise InvalidQuery(f"work_side must be >= {MIN_SIDE}; got {self.work_side}")
        if not self.scales or min(self.scales) < 1.0:
            raise InvalidQuery(f"colorize scales must be >= 1 (zoom in, so the neighbour covers the frame); "
                               f"got {self.scales}")
        if self.local_radius < 0 or self.local_step < 1:
            raise InvalidQuery(f"local_radius >= 0 and local_step >= 1; got {self.local_radius}, {self.local_step}")
        if self.window < 1 or self.smooth_radius < 0 or self.n_iters < 1:
            raise InvalidQuery(f"window >= 1, smooth_radius >= 0, n_iters >= 1; got {self.window}, "
                               f"{self.smooth_radius}, {self.n_iters}")


@dataclass(frozen=True)
class Colorization:
    """Output of the array core ``colorize_arrays``.

    - ``rgb``: (H, W, 3) float32 sRGB in [0, 1].
    - ``lab``: (H, W, 3) float32 L*a*b*; channel 0 is the query's L* exactly.
    - ``labels``: (h, w) int64 on the working grid, index of the neighbour that gave each pixel's chroma.
    - ``placements``: one ``Placement`` per neighbour, on the working grid.
    - ``usage``: (n,) float64, share of pixels each neighbour coloured.
    """
    rgb: np.ndarray
    lab: np.ndarray
    labels: np.ndarray
    placements: tuple[Placement, ...]
    usage: np.ndarray


@dataclass(frozen=True)
class ColorizeResult:
    """``colorize``'s answer: the colour image, where its colours came from, and any notes on the input."""
    rgb: np.ndarray                       # (H, W, 3) float32 in [0, 1]
    lab: np.ndarray                       # (H, W, 3) float32; L* is the query's exactly
    neighbor_ids: tuple[int, ...]         # collection ids, best match first
    neighbor_distances: tuple[float, ...]  # combined normalised descriptor distance, ascending
    usage: tuple[float, ...]              # share of pixels each neighbour coloured
    labels: np.ndarray                    # (h, w) int64 working-grid index into neighbor_ids
    placements: tuple[Placement, ...]
    encoders: tuple[str, ...]             # the descriptors used to find the neighbours
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def image(self):
        """The result as a PIL RGB image."""
        from PIL import Image

        return Image.fromarray(to_uint8(self.rgb), "RGB")


@dataclass(frozen=True)
class RecolorResult:
    """``recolor``'s answer: the recoloured image and the statistics it was moved to."""
    rgb: np.ndarray                   # (H, W, 3) float32 in [0, 1]
    reference_ids: tuple[int, ...]    # collection items whose colours were used (empty for a reference file)
    target: LabStats                  # whole-image l-alpha-beta target statistics
    per_region: bool
    warnings: tuple[str, ...] = field(default_factory=tuple)

    def image(self):
        from PIL import Image

        return Image.fromarray(to_uint8(self.rgb), "RGB")


# -- input handling ---------------------------------------------------------------------------------

def _image_array(image, what: str = "image") -> np.ndarray:
    """PIL image, path, bytes, file object or array -> (H, W) or (H, W, 3) array (uint8 or float)."""
    from PIL import Image

    from .images import decode_image, load_image

    if isinstance(image, np.ndarray):
        a = image
        if a.ndim == 3 and a.shape[2] == 4:
            a = a[..., :3]
        if not (a.ndim == 2 or (a.ndim == 3 and a.shape[2] in (1, 3))):
            raise ImageError(f"{what} array must be (H, W), (H, W, 1) or (H, W, 3); got shape {a.shape}")
        if a.ndim == 3 and a.shape[2] == 1:
            a = a[..., 0]
        if a.dtype != np.uint8:
            if not np.issubdtype(a.dtype, np.floating) and not np.issubdtype(a.dtype, np.integer):
                raise ImageError(f"{what} array has dtype {a.dtype}; use uint8 or float in [0, 1]")
            a = a.astype(np.float32)
            if a.size and not np.isfinite(a).all():
                raise ImageError(f"{what} array holds NaN or infinite values")
        return a
    if isinstance(image, Image.Image):
        from .images import to_rgb

        return np.asarray(to_rgb(image))
    if isinstance(image, (bytes, bytearray)):
        return np.asarray(decode_image(bytes(image)).image)
    if isinstance(image, (str, os.PathLike)):
        return np.asarray(load_image(image))
    if isinstance(image, io.IOBase):
        return np.asarray(decode_image(image.read()).image)
    raise ImageError(f"{what} must be a PIL image, an array, bytes or a file path; got {type(image).__name__}")


def _float_rgb(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    return a


def _check_size(shape: tuple[int, ...], what: str, max_pixels: int | None = None) -> None:
    h, w = shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(f"{what} is {w}x{h} px; colour needs at least {MIN_SIDE} px on each side")
    if max_pixels is not None and h * w > max_pixels:
        raise ImageTooLarge(f"{what} is {w}x{h} = {w * h:,} px, over the colour limit of {max_pixels:,}")


def to_gray(image) -> tuple[np.ndarray, tuple[str, ...]]:
    """Any image -> (gray (H, W) float32 sRGB value in [0, 1], warnings).

    The gray is the neutral sRGB gray with the image's own L*, so the query's lightness is what the
    colour result keeps. A gray photo passes silently; a toned (sepia-like) or colour photo is
    converted and a warning says so.
    """
    a = _image_array(image)
    if a.ndim == 2:
        g = a.astype(np.float32) / 255.0 if a.dtype == np.uint8 else a.astype(np.float32)
        if g.size and (g.min() < -1e-6 or g.max() > 1 + 1e-6):
            raise ImageError(f"float gray image must lie in [0, 1]; got values in [{g.min():.3g}, {g.max():.3g}]")
        return np.clip(g, 0.0, 1.0), ()
    rgb = _float_rgb(a)
    if rgb.size and (rgb.min() < -1e-6 or rgb.max() > 1 + 1e-6):
        raise ImageError(f"float RGB image must lie in [0, 1]; got values in [{rgb.min():.3g}, {rgb.max():.3g}]")
    lab = rgb_to_lab(np.clip(rgb, 0.0, 1.0))
    chroma = np.hypot(lab[..., 1], lab[..., 2])
    warnings: tuple[str, ...] = ()
    if chroma.size and float(np.percentile(chroma, 95)) > GRAY_CHROMA:
        # Mean resultant length of the chroma-weighted hue: 1 when every pixel has the same hue.
        concentration = float(np.hypot(lab[..., 1].sum(), lab[..., 2].sum()) / max(chroma.sum(), 1e-9))
        if concentration > TONED_HUE_CONCENTRATION:
            hue = math.degrees(math.atan2(float(lab[..., 2].mean()), float(lab[..., 1].mean()))) % 360
            warnings = (f"the image is toned (one hue, {hue:.0f} degrees, like sepia); its tint was dropped "
                        "and it was coloured from its lightness",)
        else:
            warnings = ("the image is already in colour; it was converted to gray (its L* lightness) "
                        "and coloured from that",)
    neutral = np.stack([lab[..., 0], np.zeros_like(lab[..., 0]), np.zeros_like(lab[..., 0])], axis=-1)
    return lab_to_rgb(neutral)[..., 0], warnings


# -- the array core ---------------------------------------------------------------------------------

def _box(a: np.ndarray, size: int) -> np.ndarray:
    import cv2

    return cv2.boxFilter(np.ascontiguousarray(a, dtype=np.float32), -1, (size, size), normalize=True,
                         borderType=cv2.BORDER_REFLECT)


def guided_filter(guide: np.ndarray, src: np.ndarray, radius: int, eps: float) -> np.ndarray:
    """He et al.'s guided filter: ``src`` (H, W) or (H, W, C) smoothed where ``guide`` (H, W) is flat.

    Within each window the output is an affine function of the guide, so edges of the guide survive
    and anything in ``src`` that does not follow the guide is averaged away. float32 out.
    """
    size = 2 * int(radius) + 1
    g = np.asarray(guide, dtype=np.float32)
    p = np.asarray(src, dtype=np.float32)
    channels = p[..., None] if p.ndim == 2 else p
    mean_g = _box(g, size)
    var_g = _box(g * g, size) - mean_g * mean_g
    out = np.empty_like(channels)
    for c in range(channels.shape[2]):
        pc = channels[..., c]
        mean_p = _box(pc, size)
        cov = _box(g * pc, size) - mean_g * mean_p
        a = cov / (var_g + eps)
        b = mean_p - a * mean_g
        out[..., c] = _box(a, size) * g + _box(b, size)
    return out[..., 0] if p.ndim == 2 else out


def _fit_gamut(lightness: np.ndarray, ab: np.ndarray, steps: int = 14) -> np.ndarray:
    """Scale a*b* toward 0 per pixel, just enough for (L*, a*, b*) to be inside sRGB; L* is untouched.

    Gray (a* = b* = 0) is always inside, so a bisection on the chroma factor in [0, 1] always ends inside.
    """
    tol = 1e-4

    def inside(l_, ab_):
        rgb = lab_to_rgb(np.concatenate([l_[..., None], ab_], axis=-1), clip=False)
        return ((rgb >= -tol) & (rgb <= 1 + tol)).all(axis=-1)

    ok = inside(lightness, ab)
    if ok.all():
        return ab
    ab = ab.copy()
    l_bad, ab_bad = lightness[~ok], ab[~ok]
    lo = np.zeros(len(l_bad), np.float32)
    hi = np.ones(len(l_bad), np.float32)
    for _ in range(steps):
        mid = 0.5 * (lo + hi)
        fits = inside(l_bad, ab_bad * mid[:, None])
        lo = np.where(fits, mid, lo)
        hi = np.where(fits, hi, mid)
    ab[~ok] = ab_bad * lo[:, None]
    return ab


def _working_shape(shape: tuple[int, int], side: int) -> tuple[int, int]:
    h, w = shape
    f = min(1.0, side / max(h, w))
    return max(1, int(round(h * f))), max(1, int(round(w * f)))


def gray_lightness(rgb: np.ndarray, model: str, lab: np.ndarray | None = None) -> np.ndarray:
    """(h, w, 3) float sRGB in [0, 1] -> (h, w) float32 L* of the gray photo ``model`` makes of it: the
    neutral gray whose sRGB value is the luma (``rec601``, ``rec709``), or the colour's own L* (``lstar``)."""
    if model == "lstar":
        return (lab if lab is not None else rgb_to_lab(rgb))[..., 0]
    luma = np.clip(rgb @ np.asarray(LUMA_WEIGHTS[model], np.float32), 0.0, 1.0)
    return rgb_to_lab(np.repeat(luma[..., None], 3, axis=2))[..., 0]


def _remap_lightness(l_ref: np.ndarray, mean: float, std: float) -> np.ndarray:
    """Affine L* remap of a neighbour onto the query's mean and spread (Welsh et al. 2002), for matching."""
    s = float(l_ref.std())
    gain = float(np.clip(std / s, 0.5, 2.0)) if s > 1e-3 else 1.0
    return (l_ref - float(l_ref.mean())) * gain + mean


def _local_match(l_query: np.ndarray, t_query: np.ndarray, warped: np.ndarray,
                 config: ColorizeConfig) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel data cost (h, w) and chroma (h, w, 2) of one aligned neighbour ``warped`` (h, w, 3) L*a*b*.

    Cost in units of (10 L*)^2: a 10 L* local disagreement costs 1 per pixel, plus the texture term.
    With ``local_radius`` > 0 each pixel also tries small shifts of the neighbour around the global
    placement and keeps the best (stereo parallax, objects that moved), at ``shift_penalty`` per px^2.
    """
    h, w = l_query.shape
    r = config.local_radius
    lum_nb, tex_nb, ab_nb = warped[..., 0], texture_map(warped[..., 0]), warped[..., 1:]
    if r > 0:
        lum_nb = np.pad(lum_nb, r, mode="edge")
        tex_nb = np.pad(tex_nb, r, mode="edge")
        ab_nb = np.pad(ab_nb, ((r, r), (r, r), (0, 0)), mode="edge")
    best_cost, best_ab = None, None
    for dy in range(-r, r + 1, config.local_step):
        for dx in range(-r, r + 1, config.local_step):
            window = np.s_[r + dy:r + dy + h, r + dx:r + dx + w]
            cost = (_box((l_query - lum_nb[window]) ** 2, config.window) / 100.0
                    + config.texture_weight * _box((t_query - tex_nb[window]) ** 2, config.window) / 25.0
                    + config.shift_penalty * (dy * dy + dx * dx))
            if best_cost is None:
                best_cost, best_ab = cost, ab_nb[window].copy()
            else:
                better = cost < best_cost
                best_cost = np.where(better, cost, best_cost)
                best_ab[better] = ab_nb[window][better]
    return best_cost, best_ab


def _no_progress(stage: str, fraction: float) -> None:
    pass


def colorize_arrays(gray, neighbors, config: ColorizeConfig = ColorizeConfig(), progress=None) -> Colorization:
    """Colour a gray image from neighbour images. The array core of ``colorize``.

    - ``gray``: (H, W) float sRGB gray value in [0, 1] (or uint8); see ``to_gray`` for other inputs.
    - ``neighbors``: non-empty list of (h_i, w_i, 3) RGB arrays (uint8, or float in [0, 1]), any sizes.
    - ``progress``: optional ``(stage, fraction)`` callback; fractions here run from 0 to 1.
    """
    report = progress or _no_progress
    g = np.asarray(gray)
    if g.ndim != 2:
        raise InvalidQuery(f"gray must be an (H, W) array; got shape {g.shape} (use to_gray for colour input)")
    g = g.astype(np.float32) / 255.0 if g.dtype == np.uint8 else np.clip(g.astype(np.float32), 0.0, 1.0)
    _check_size(g.shape, "the gray image", config.max_pixels)
    if len(neighbors) == 0:
        raise InvalidQuery("no neighbour images to take colours from")
    height, width = g.shape
    lightness = rgb_to_lab(np.repeat(g[..., None], 3, axis=2))[..., 0]  # (H, W) float32, kept exactly

    h, w = _working_shape((height, width), config.work_side)
    l_work = resize_image(lightness, (h, w))[..., 0]
    t_work = texture_map(l_work)
    mean_q, std_q = float(l_work.mean()), float(l_work.std())
    ones = np.ones((h, w), bool)

    models = GRAY_MODELS[1:] if config.gray_model == "auto" else (config.gray_model,)
    prepared = []  # per neighbour: (lab on the working grid, its gray under each model)
    for i, nb in enumerate(neighbors):
        rgb = np.asarray(nb)
        if rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1:
            raise InvalidQuery(f"neighbour {i} must be an (h, w, 3) RGB array; got shape {rgb.shape}")
        # Squash to the query's frame, as the whole-frame descriptors that found it did.
        small = np.clip(resize_image(_float_rgb(rgb), (h, w)), 0.0, 1.0)
        lab = rgb_to_lab(small)
        prepared.append((lab, {m: gray_lightness(small, m, lab) for m in models}))
    # One gray model for the query (a photo was made gray one way). L* unless a luma model makes the
    # neighbour that matches best, frame to frame, at least twice as close: the evidence an exact or
    # near-exact source gives (Rec. 601 copies of sample photos: 0.03-0.1 L* against 0.9-4.3), which an unrelated
    # neighbour does not (there the choice only moved the held-out benchmark's error by about 1%).
    model = models[0]
    if len(models) > 1:
        error = {m: min(float(np.abs(grays[m] - l_work).mean()) for _, grays in prepared) for m in models}
        best = min(models, key=error.get)
        model = best if error[best] < GRAY_MODEL_EVIDENCE * error["lstar"] else "lstar"

    placements, ab_layers, unary, local = [], [], [], []
    for i, (lab, grays) in enumerate(prepared):
        report("align", 0.8 * i / len(neighbors))  # the placements are most of the core's time
        lab[..., 0] = grays[model]
        # Placement on the remapped lightness, so a darker exposure of the same layout still lines up;
        # the data term then compares the real lightness, which is what tells sky from snow from wall.
        remapped = _remap_lightness(lab[..., 0], mean_q, std_q)
        placement = best_placement(l_work[..., None], ones, remapped[..., None], scales=config.scales,
                                   offset_penalty=config.offset_penalty, query_texture=t_work)
        warped, _ = warp_candidate(lab, placement, (h, w))  # zoom-in scales: the whole frame is covered
        cost, ab = _local_match(l_work, t_work, warped, config)
        local.append(cost)
        unary.append(cost + config.prior_weight * placement.ssd / 100.0)
        placements.append(placement)
        ab_layers.append(ab)

    # Potts weight per edge: full where L* is flat, vanishing across the query's own edges.
    report("cut", 0.8)
    dh = np.diff(l_work, axis=1)
    dv = np.diff(l_work, axis=0)
    two_s2 = 2.0 * config.edge_sigma ** 2
    horizontal = config.smoothness * np.exp(-dh * dh / two_s2)
    vertical = config.smoothness * np.exp(-dv * dv / two_s2)
    labels = alpha_expansion(np.stack(unary, axis=-1).astype(np.float32), (horizontal, vertical),
                             n_iters=config.n_iters)

    report("finish", 0.9)
    ab_stack = np.stack(ab_layers, axis=0)  # (n, h, w, 2)
    ab_work = np.take_along_axis(ab_stack, labels[None, :, :, None], axis=0)[0]
    if config.confidence > 0:
        # Where even the chosen neighbour disagrees locally, its chroma is a guess: shrink it toward gray.
        cost = np.take_along_axis(np.stack(local, axis=0), labels[None], axis=0)[0]
        ab_work = ab_work * np.exp(-cost / config.confidence)[..., None]
    if (h, w) != (height, width):
        ab = resize_image(ab_work, (height, width))
        radius = int(round(config.smooth_radius * max(height / h, width / w)))
    else:
        ab = ab_work
        radius = config.smooth_radius
    if radius > 0:
        ab = guided_filter(lightness, ab, radius, config.smooth_eps)
    ab = _fit_gamut(lightness, ab.astype(np.float32))
    lab_out = np.concatenate([lightness[..., None], ab], axis=-1).astype(np.float32)
    rgb = lab_to_rgb(lab_out)  # clips only the bisection's last 1e-4 of rounding
    usage = np.bincount(labels.reshape(-1), minlength=len(neighbors)) / labels.size
    return Colorization(rgb=rgb, lab=lab_out, labels=labels, placements=tuple(placements), usage=usage)


def colorize_from_neighbors(gray, neighbors, config: ColorizeConfig = ColorizeConfig()) -> np.ndarray:
    """(H, W) gray in [0, 1] + list of RGB neighbour arrays -> (H, W, 3) float32 sRGB colour image."""
    return colorize_arrays(gray, neighbors, config).rgb


# -- the collection ---------------------------------------------------------------------------------

def _require_items(collection) -> None:
    if collection.count <= 0:
        raise InvalidQuery(f"collection {getattr(collection, 'dir', '')} is empty: there are no photos to take "
                           "colours from")


def gray_neighbors(collection, image, k: int, encoders: tuple[str, ...] | None = None,
                   exclude_ids=(), pool: int | None = None) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Nearest items of ``image`` (PIL RGB) by luminance descriptors, distances of several encoders combined.

    Each encoder proposes ``pool`` candidates; every candidate's distance under every encoder is then
    computed exactly from the stored vectors, divided by that encoder's median over the pool (so 960-d
    GIST and 1024-d tiny images weigh the same), and summed. Returns (ids (m,) int64, distances (m,)
    float64 ascending, encoders used), m <= k.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidQuery(f"number of neighbours must be a positive integer; got {k!r}")
    names = tuple(e for e in (encoders or GRAY_ENCODERS) if e in collection.encoder_names)
    if not names:
        wanted = ", ".join(encoders or GRAY_ENCODERS)
        raise UnknownEncoder(f"collection {getattr(collection, 'dir', '')} has none of the descriptors this needs "
                             f"({wanted}); it has: {', '.join(collection.encoder_names) or 'none'}. "
                             f"Index it with one of them (e.g. --encoder tiny-gray).")
    _require_items(collection)
    excluded = {int(i) for i in exclude_ids}
    pool = int(pool or max(3 * k, 30))
    queries = {name: np.asarray(collection.query_vector(name, image=image), np.float32) for name in names}
    candidates: list[int] = []
    for name in names:
        _, ids = collection.knn(name, queries[name][None, :], pool + len(excluded))
        candidates.extend(int(i) for i in ids[0] if i >= 0 and int(i) not in excluded)
    candidates = list(dict.fromkeys(candidates))
    if not candidates:
        raise InvalidQuery(f"no candidate neighbours left in collection {getattr(collection, 'dir', '')} "
                           f"after excluding {len(excluded)} item(s)")
    cand = np.asarray(candidates, np.int64)
    total = np.zeros(len(cand))
    for name in names:
        matrix = collection.embedding_matrix(name)
        metric = collection.encoder_spec(name)["metric"]
        have = np.array([matrix.has(int(i)) for i in cand])
        d = np.full(len(cand), np.nan)
        if have.any():
            vecs = matrix.reconstruct(cand[have])
            q = queries[name]
            d[have] = 1.0 - vecs @ q if metric == "ip" else ((vecs - q) ** 2).sum(axis=1)
        finite = d[np.isfinite(d)]
        scale = float(np.median(finite)) if finite.size else 1.0
        if scale <= 1e-12:
            scale = float(finite.mean()) if finite.size and finite.mean() > 1e-12 else 1.0
        normalised = np.maximum(d, 0.0) / scale
        # An item without this descriptor counts as the pool's worst under it.
        worst = float(np.nanmax(normalised)) if np.isfinite(normalised).any() else 1.0
        total += np.where(np.isfinite(normalised), normalised, worst)
    order = np.argsort(total, kind="stable")[:k]
    return cand[order], total[order], names


def colorize(collection, gray_image, n_neighbors: int = 8, config: ColorizeConfig = ColorizeConfig(),
             exclude_ids=(), progress=None) -> ColorizeResult:
    """Colour a gray (or sepia) photo from its nearest neighbours in ``collection``.

    ``gray_image``: PIL image, path, bytes or array. A colour image is converted to gray first and the
    result's ``warnings`` say so. ``exclude_ids``: items not to use (e.g. the photo itself when testing).
    Raises ``ImageError`` for an unusable or tiny image, ``UnknownEncoder`` when the collection has no
    luminance descriptor, ``InvalidQuery`` for an empty collection or a bad ``n_neighbors``.
    ``progress``: optional ``(stage, fraction done)`` callback (see the module docstring).
    """
    from PIL import Image

    report = progress or _no_progress
    report("neighbors", 0.0)

    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or not 1 <= n_neighbors <= 64:
        raise InvalidQuery(f"n_neighbors must be an integer from 1 to 64; got {n_neighbors!r}")
    gray, warnings = to_gray(gray_image)
    _check_size(gray.shape, "the image", config.max_pixels)
    query = Image.fromarray(to_uint8(np.repeat(gray[..., None], 3, axis=2)), "RGB")
    ids, distances, names = gray_neighbors(collection, query, int(n_neighbors), exclude_ids=exclude_ids)
    if len(names) < len(GRAY_ENCODERS):
        missing = [e for e in GRAY_ENCODERS if e not in names]
        warnings += (f"neighbours found with {', '.join(names)} only; the collection has no {', '.join(missing)}",)
    side = config.work_side
    report("load", 0.1)
    images = [np.asarray(collection.load_image(int(i), min_side=side).convert("RGB")) for i in ids]
    core = colorize_arrays(gray, images, config, progress=lambda stage, f: report(stage, 0.2 + 0.8 * f))
    return ColorizeResult(rgb=core.rgb, lab=core.lab, neighbor_ids=tuple(int(i) for i in ids),
                          neighbor_distances=tuple(float(d) for d in distances),
                          usage=tuple(float(u) for u in core.usage), labels=core.labels,
                          placements=core.placements, encoders=names, warnings=warnings)


def _aligned_references(photo_rgb: np.ndarray, references: list[np.ndarray], side: int,
                        scales=COLORIZE_SCALES) -> tuple[tuple[int, int], list[np.ndarray]]:
    """References placed on the photo's working grid by the L* alignment: (grid shape, warped RGB list)."""
    h, w = _working_shape(photo_rgb.shape[:2], side)
    l_work = rgb_to_lab(np.clip(resize_image(photo_rgb, (h, w)), 0.0, 1.0))[..., 0]
    t_work = texture_map(l_work)
    ones = np.ones((h, w), bool)
    warped_refs = []
    for ref in references:
        ref_rgb = np.clip(resize_image(_float_rgb(ref), (h, w)), 0.0, 1.0)
        l_ref = _remap_lightness(rgb_to_lab(ref_rgb)[..., 0], float(l_work.mean()), float(l_work.std()))
        placement = best_placement(l_work[..., None], ones, l_ref[..., None], scales=scales, query_texture=t_work)
        warped, _ = warp_candidate(ref_rgb, placement, (h, w))
        warped_refs.append(np.clip(warped, 0.0, 1.0))
    return (h, w), warped_refs


def recolor(collection, photo, like_id: int | None = None, reference=None, n_neighbors: int = 5,
            per_region: bool = False, grid: tuple[int, int] = (3, 3), exclude_ids=(), progress=None,
            reference_side: int | None = None) -> RecolorResult:
    """Reinhard colour transfer of ``photo`` toward a reference.

    The target is, in order: ``reference`` (an image: PIL, path, bytes or array), the collection item
    ``like_id``, or else the mean l-alpha-beta statistics of the photo's ``n_neighbors`` nearest items
    (near-duplicates of the photo itself are skipped, they would change nothing). ``per_region``: the
    references are aligned to the photo and each cell of a ``grid`` takes the statistics of the same
    cell in the references, feathered so that cells leave no seams. ``collection`` may be ``None`` when
    a ``reference`` image is given. ``progress``: optional ``(stage, fraction done)`` callback.
    ``reference_side``: collection references are decoded reduced (JPEG draft) to about this short side,
    which bounds the memory a call takes (their colour statistics barely change); None: full size.
    """
    report = progress or _no_progress
    report("neighbors", 0.0)
    if like_id is not None and reference is not None:
        raise InvalidQuery("give either like_id or reference, not both")
    photo_rgb = _float_rgb(_image_array(photo, "photo"))
    _check_size(photo_rgb.shape, "the photo", ColorizeConfig.max_pixels)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) or not 1 <= n_neighbors <= 64:
        raise InvalidQuery(f"n_neighbors must be an integer from 1 to 64; got {n_neighbors!r}")
    warnings: tuple[str, ...] = ()
    _, photo_alpha_std = lab_stats(photo_rgb)
    if photo_alpha_std[1:].max() < 1e-3:
        warnings += ("the photo is gray: a statistics transfer can only tint it; use colorize to colour it",)
    ids: tuple[int, ...] = ()
    if reference is not None:
        refs = [_float_rgb(_image_array(reference, "reference"))]
    else:
        if collection is None:
            raise InvalidQuery("recolor needs a collection unless a reference image is given")
        if like_id is not None:
            if isinstance(like_id, bool) or not isinstance(like_id, (int, np.integer)):
                raise InvalidQuery(f"like_id must be an item id (integer); got {like_id!r}")
            ids = (int(like_id),)
        else:
            from PIL import Image

            names = [e for e in GRAY_ENCODERS if e in collection.encoder_names] or \
                    [e for e in COLOUR_ENCODERS if e in collection.encoder_names]
            if not names:
                raise UnknownEncoder(f"collection {getattr(collection, 'dir', '')} has no image descriptor to find "
                                     f"the photo's neighbours with; it has: {', '.join(collection.encoder_names) or 'none'}")
            query = Image.fromarray(to_uint8(np.clip(photo_rgb, 0, 1)), "RGB")
            found, distances, _ = gray_neighbors(collection, query, int(n_neighbors) + 4, encoders=tuple(names),
                                                 exclude_ids=exclude_ids)
            # A distance this small (relative to the pool's median) is the photo itself or a copy.
            keep = [int(i) for i, d in zip(found, distances) if d > 1e-3 * len(names)][:n_neighbors]
            if not keep:
                raise InvalidQuery("the collection holds only copies of this photo: no other colours to move toward")
            ids = tuple(keep)
        report("load", 0.3)
        refs = [_float_rgb(np.asarray(collection.load_image(i, min_side=reference_side).convert("RGB"))) for i in ids]
    for i, ref in enumerate(refs):
        _check_size(ref.shape, f"reference {ids[i] if ids else ''}".strip())

    report("transfer", 0.6)
    stats = [lab_stats(r) for r in refs]
    target = LabStats(np.mean([m for m, _ in stats], axis=0), np.mean([s for _, s in stats], axis=0))
    if not per_region:
        rgb = reinhard_transfer(photo_rgb, target)
    else:
        rows, cols = grid
        (h, w), warped = _aligned_references(photo_rgb, refs, ColorizeConfig.work_side)
        targets = region_stats(warped, grid_regions((h, w), rows, cols))
        labels = grid_regions(photo_rgb.shape[:2], rows, cols)
        # Feather over a third of a cell, so neighbouring cells blend instead of meeting at a step.
        feather = min(photo_rgb.shape[0] / rows, photo_rgb.shape[1] / cols) / 3.0
        rgb = transfer_regions(photo_rgb, labels, targets, target, feather=feather)
    return RecolorResult(rgb=rgb, reference_ids=ids, target=target, per_region=per_region, warnings=warnings)
