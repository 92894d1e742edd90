"""Colour transfer between images (Reinhard, Ashikhmin, Gooch & Shirley 2001).

Each pixel goes RGB -> LMS cone space -> log10 -> l-alpha-beta (Ruderman et al.'s decorrelated
opponent space), where the three channels are nearly independent for natural images, so matching
each channel's mean and standard deviation separately moves one image's colour "mood" onto
another's. The forward matrices are the paper's; the inverses are computed from them (rather than
the paper's rounded printed inverses) so that a round trip is exact.

Images are float arrays in [0, 1] (uint8 is accepted and scaled), shape (H, W, 3).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidQuery

__all__ = ["LabStats", "grid_regions", "lab_stats", "lalphabeta_to_rgb", "region_stats", "reinhard_transfer",
           "reinhard_transfer_regions", "rgb_to_lalphabeta", "transfer_regions"]

# Reinhard et al. 2001, eq. 1 (RGB -> LMS) and eq. 4/6 (log LMS -> l alpha beta).
_RGB_TO_LMS = np.array([[0.3811, 0.5783, 0.0402],
                        [0.1967, 0.7244, 0.0782],
                        [0.0241, 0.1288, 0.8444]])
_LMS_TO_LAB = np.diag([1 / np.sqrt(3), 1 / np.sqrt(6), 1 / np.sqrt(2)]) @ np.array([[1.0, 1.0, 1.0],
                                                                                     [1.0, 1.0, -2.0],
                                                                                     [1.0, -1.0, 0.0]])
_LMS_TO_RGB = np.linalg.inv(_RGB_TO_LMS)
_LAB_TO_LMS = np.linalg.inv(_LMS_TO_LAB)
# log10(0) is -inf; black is floored at one 8-bit step, as 0..255 implementations do with max(x, 1).
_LMS_FLOOR = 1.0 / 255.0
# A channel this flat has no spread to rescale: only its mean is moved.
_MIN_STD = 1e-6


@dataclass(frozen=True)
class LabStats:
    """Per-channel statistics in l-alpha-beta: ``mean`` (3,) and ``std`` (3,) float64."""
    mean: np.ndarray
    std: np.ndarray


def _as_rgb(rgb, what: str = "image") -> np.ndarray:
    a = np.asarray(rgb)
    if a.ndim != 3 or a.shape[2] != 3:
        raise InvalidQuery(f"{what} must be an (H, W, 3) RGB array; got shape {a.shape}")
    if a.shape[0] < 1 or a.shape[1] < 1:
        raise InvalidQuery(f"{what} is empty: shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    return a.astype(np.float64)


def _as_mask(mask, shape: tuple[int, int], what: str = "mask") -> np.ndarray | None:
    if mask is None:
        return None
    m = np.asarray(mask).astype(bool)
    if m.shape != shape:
        raise InvalidQuery(f"{what} of shape {m.shape} for an image of shape {shape}")
    if not m.any():
        raise InvalidQuery(f"{what} selects no pixels")
    return m


def rgb_to_lalphabeta(rgb) -> np.ndarray:
    """(..., 3) RGB in [0, 1] (or uint8) -> (..., 3) float64 l-alpha-beta."""
    a = np.asarray(rgb)
    a = a.astype(np.float64) / 255.0 if a.dtype == np.uint8 else a.astype(np.float64)
    lms = np.maximum(a @ _RGB_TO_LMS.T, _LMS_FLOOR)
    return np.log10(lms) @ _LMS_TO_LAB.T


def lalphabeta_to_rgb(lab) -> np.ndarray:
    """(..., 3) l-alpha-beta -> (..., 3) float64 RGB, not clipped (may leave [0, 1])."""
    lms = np.power(10.0, np.asarray(lab, dtype=np.float64) @ _LAB_TO_LMS.T)
    return lms @ _LMS_TO_RGB.T


def lab_stats(rgb, mask=None) -> tuple[np.ndarray, np.ndarray]:
    """Mean (3,) and standard deviation (3,) float64 of an (H, W, 3) RGB image in l-alpha-beta, over ``mask``."""
    img = _as_rgb(rgb)
    m = _as_mask(mask, img.shape[:2])
    lab = rgb_to_lalphabeta(img)
    values = lab.reshape(-1, 3) if m is None else lab[m]
    return values.mean(axis=0), values.std(axis=0)


def _target_stats(target, reference_mask) -> tuple[np.ndarray, np.ndarray]:
    if isinstance(target, LabStats):
        return np.asarray(target.mean, np.float64), np.asarray(target.std, np.float64)
    if isinstance(target, tuple) and len(target) == 2:
        mean, std = (np.asarray(t, dtype=np.float64) for t in target)
        if mean.shape != (3,) or std.shape != (3,):
            raise InvalidQuery(f"target statistics must be (mean (3,), std (3,)); got {mean.shape}, {std.shape}")
        if (std < 0).any() or not (np.isfinite(mean).all() and np.isfinite(std).all()):
            raise InvalidQuery(f"target statistics must be finite with std >= 0; got mean {mean}, std {std}")
        return mean, std
    return lab_stats(_as_rgb(target, "reference"), reference_mask)


def _gain_offset(src_mean, src_std, tgt_mean, tgt_std) -> tuple[np.ndarray, np.ndarray]:
    """out = gain * x + offset maps the source's mean/std onto the target's (a flat channel is only shifted)."""
    gain = np.where(src_std > _MIN_STD, tgt_std / np.maximum(src_std, _MIN_STD), 1.0)
    return gain, tgt_mean - gain * src_mean


def reinhard_transfer(source_rgb, target, mask=None, reference_mask=None, clip: bool = True) -> np.ndarray:
    """Reinhard colour transfer: ``source_rgb`` (H, W, 3) -> (H, W, 3) float32 RGB.

    - ``target``: a reference RGB image (h, w, 3) (any size), a ``LabStats``, or a ``(mean, std)`` pair.
    - ``mask``: (H, W) bool; source statistics are taken over it and only those pixels change.
    - ``reference_mask``: (h, w) bool; reference statistics are taken over it.
    - ``clip``: clip the result to [0, 1]. With ``clip=False`` the result's l-alpha-beta mean and std over
      ``mask`` equal the target's exactly (up to float rounding); clipping can only move out-of-gamut pixels.
    """
    src = _as_rgb(source_rgb, "source")
    m = _as_mask(mask, src.shape[:2])
    tgt_mean, tgt_std = _target_stats(target, reference_mask)
    lab = rgb_to_lalphabeta(src)
    values = lab.reshape(-1, 3) if m is None else lab[m]
    gain, offset = _gain_offset(values.mean(axis=0), values.std(axis=0), tgt_mean, tgt_std)
    moved = lalphabeta_to_rgb(lab * gain + offset)
    out = moved if m is None else np.where(m[..., None], moved, src)
    return (np.clip(out, 0.0, 1.0) if clip else out).astype(np.float32)


def grid_regions(shape: tuple[int, int], rows: int = 3, cols: int = 3) -> np.ndarray:
    """(H, W) int64 label map cutting the frame into a ``rows`` x ``cols`` grid (sky, middle, ground...)."""
    h, w = shape
    r = np.minimum(np.arange(h) * rows // max(h, 1), rows - 1)
    c = np.minimum(np.arange(w) * cols // max(w, 1), cols - 1)
    return (r[:, None] * cols + c[None, :]).astype(np.int64)


def region_stats(references, labels, masks=None, min_pixels: int = 16) -> dict[int, LabStats]:
    """Per-region l-alpha-beta statistics pooled over references already aligned to one frame.

    - ``references``: one (H, W, 3) RGB image or a list of them, all in the frame of ``labels``.
    - ``labels``: (H, W) int region map of that frame.
    - ``masks``: matching list of (H, W) bool, the pixels each reference really covers (``None`` = all).
    A region's statistics are the mean over the references that cover at least ``min_pixels`` of it of
    their mean and standard deviation (the "mean statistics of the neighbours"); regions no reference
    covers are left out.
    """
    refs = [references] if isinstance(references, np.ndarray) and np.ndim(references) == 3 else list(references)
    label_map = np.asarray(labels)
    if masks is None:
        masks = [None] * len(refs)
    if len(masks) != len(refs):
        raise InvalidQuery(f"{len(refs)} references but {len(masks)} masks")
    per_region: dict[int, list[tuple[np.ndarray, np.ndarray]]] = {}
    for ref, mask in zip(refs, masks):
        img = _as_rgb(ref, "reference")
        if img.shape[:2] != label_map.shape:
            raise InvalidQuery(f"reference of shape {img.shape[:2]} for a region map of shape {label_map.shape}")
        lab = rgb_to_lalphabeta(img)
        usable = np.ones(label_map.shape, bool) if mask is None else np.asarray(mask, bool)
        for k in np.unique(label_map):
            values = lab[(label_map == k) & usable]
            if len(values) >= min_pixels:
                per_region.setdefault(int(k), []).append((values.mean(axis=0), values.std(axis=0)))
    return {k: LabStats(np.mean([m for m, _ in v], axis=0), np.mean([s for _, s in v], axis=0))
            for k, v in per_region.items()}


def transfer_regions(source_rgb, source_labels, targets: dict[int, LabStats], fallback: LabStats,
                     feather: float = 0.0, clip: bool = True) -> np.ndarray:
    """Per-region Reinhard transfer with given target statistics per region label.

    - ``source_rgb`` (H, W, 3); ``source_labels`` (H, W) int >= 0.
    - ``targets``: region label -> ``LabStats``; a region without an entry moves toward ``fallback``.
    - ``feather``: Gaussian sigma in pixels; the per-pixel gain and offset maps are blurred so region borders
      leave no step. 0 = hard regions (then each region's mean/std match exactly, with ``clip=False``).
    Returns (H, W, 3) float32 RGB.
    """
    src = _as_rgb(source_rgb, "source")
    label_map = np.asarray(source_labels)
    if label_map.shape != src.shape[:2] or not np.issubdtype(label_map.dtype, np.integer):
        raise InvalidQuery(f"source labels must be an integer (H, W)={src.shape[:2]} map; "
                           f"got {label_map.dtype} {label_map.shape}")
    if label_map.min() < 0:
        raise InvalidQuery(f"region labels must be >= 0; got {int(label_map.min())}")
    src_lab = rgb_to_lalphabeta(src)
    params = {}
    for k in np.unique(label_map):
        values = src_lab[label_map == k]
        target = targets.get(int(k), fallback)
        params[int(k)] = _gain_offset(values.mean(axis=0), values.std(axis=0), np.asarray(target.mean, np.float64),
                                      np.asarray(target.std, np.float64))
    # Per-pixel (gain, offset) maps, 6 channels. Blurred maps are smooth, so with feathering they are
    # built and blurred on a grid about feather/4 times coarser and upsampled: within ~2/255 of blurring
    # full-size maps, and a 1600x1200 photo with a 130 px feather takes ~1 s instead of ~10 s.
    step = max(1, int(feather // 4)) if feather > 0 else 1
    first = step // 2  # coarse sample j sits on full pixel first + j * step
    coarse = label_map[first::step, first::step]
    table = np.zeros((int(label_map.max()) + 1, 6))
    for k, (g, o) in params.items():
        table[k] = np.concatenate([g, o])
    maps = table[coarse]
    if feather > 0:
        import cv2
        from scipy.ndimage import gaussian_filter

        maps = np.stack([gaussian_filter(maps[..., c], feather / step, mode="nearest") for c in range(6)], axis=-1)
        if step > 1:
            h, w = label_map.shape
            ys = ((np.arange(h, dtype=np.float32) - first) / step)[:, None].repeat(w, axis=1)
            xs = ((np.arange(w, dtype=np.float32) - first) / step)[None, :].repeat(h, axis=0)
            maps = np.stack([cv2.remap(maps[..., c].astype(np.float32), xs, ys, cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REPLICATE) for c in range(6)], axis=-1)
    out = lalphabeta_to_rgb(src_lab * maps[..., :3] + maps[..., 3:])
    return (np.clip(out, 0.0, 1.0) if clip else out).astype(np.float32)


def reinhard_transfer_regions(source_rgb, reference_rgb, source_labels, reference_labels=None,
                              reference_mask=None, feather: float = 0.0, clip: bool = True) -> np.ndarray:
    """Per-region Reinhard transfer: region k of the source takes the statistics of region k of the reference.

    - ``source_rgb`` (H, W, 3); ``reference_rgb`` (h, w, 3).
    - ``source_labels`` (H, W) int >= 0: the regions. ``reference_labels`` (h, w) int: the matching regions
      in the reference (default: the same map, for a reference already aligned to the source's frame).
    - ``reference_mask`` (h, w) bool: reference pixels that may be used (e.g. where an aligned reference covers
      the frame). A region with fewer than 16 usable reference pixels takes the whole reference's statistics.
    - ``feather``, ``clip``: as in ``transfer_regions``.
    Returns (H, W, 3) float32 RGB.
    """
    ref = _as_rgb(reference_rgb, "reference")
    ref_labels = np.asarray(source_labels if reference_labels is None else reference_labels)
    if ref_labels.shape != ref.shape[:2] or not np.issubdtype(ref_labels.dtype, np.integer):
        raise InvalidQuery(f"reference labels must be an integer (h, w)={ref.shape[:2]} map; "
                           f"got {ref_labels.dtype} {ref_labels.shape}")
    mask = None if reference_mask is None else _as_mask(reference_mask, ref.shape[:2], "reference mask")
    mean, std = lab_stats(ref, mask)
    targets = region_stats([ref], ref_labels, [mask])
    return transfer_regions(source_rgb, source_labels, targets, LabStats(mean, std), feather=feather, clip=clip)
