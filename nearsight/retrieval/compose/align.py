"""Local context matching (Hays & Efros 2007, section 4): where does a candidate scene fit the hole?

The context is the ring of query pixels within ``radius`` px of the hole. A placement puts the
candidate, resized by ``scale``, with its top-left corner at ``(dy, dx)`` on the query's pixel grid:
query pixel ``(y, x)`` is compared with scaled-candidate pixel ``(y - dy, x - dx)``. For every scale
and every translation that keeps the context (and optionally the hole) inside the scaled candidate,
the cost is::

    cost = ssd + texture_weight * texture + offset_penalty * offset / diagonal

- ``ssd``: sum over channels of the squared difference, averaged over context pixels.
- ``texture``: squared difference of the texture maps (5x5 median of gradient magnitude), averaged
  over context pixels; it tells a smooth sky from a noisy bush of the same mean colour.
- ``offset``: distance in query pixels between the scaled candidate's centre and the query's
  centre. Scene matching already found candidates whose layout agrees with the query, so a large
  shift is suspicious; normalised by the query's diagonal so the weight does not depend on size.

All translations of one scale come from one FFT cross-correlation per channel:
``sum m (q - c)^2 = sum m q^2 - 2 corr(m q, c) + corr(m, c^2)``. Sums are taken in float64 after
subtracting the context's mean colour from both images, which keeps the cancellation error of that
expansion far below one grey level.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from ..errors import InvalidQuery

__all__ = ["Placement", "ContextMatcher", "context_mask", "texture_map", "best_placement", "resize_image", "warp_candidate",
           "DEFAULT_SCALES"]

DEFAULT_SCALES = (0.81, 0.90, 1.0)


@dataclass(frozen=True)
class Placement:
    """Where a candidate goes on the query grid and what it cost.

    ``dy, dx``: top-left corner of the scaled candidate in query pixels (may be negative).
    ``scale``: resize factor applied to the candidate before placing it.
    ``ssd``, ``texture``: mean squared colour / texture difference per context pixel.
    ``cost``: ``ssd + texture_weight * texture + offset_penalty * offset / diagonal``.
    """
    dy: int
    dx: int
    scale: float
    ssd: float
    texture: float
    cost: float

    def rescaled(self, factor: float) -> "Placement":
        """The same placement on a grid ``factor`` times larger (matched small, composited large)."""
        return replace(self, dy=int(round(self.dy * factor)), dx=int(round(self.dx * factor)))


def _as_hwc(image: np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(image)
    if a.ndim == 2:
        a = a[:, :, None]
    if a.ndim != 3 or a.shape[0] < 1 or a.shape[1] < 1 or a.shape[2] < 1:
        raise InvalidQuery(f"{name} must be (H, W) or (H, W, C), got shape {np.shape(image)}")
    return a.astype(np.float32, copy=False)


def _as_mask(mask: np.ndarray, shape: tuple[int, int], name: str) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != tuple(shape):
        raise InvalidQuery(f"{name} has shape {m.shape}, expected {tuple(shape)}")
    return m.astype(bool, copy=False)


def context_mask(hole: np.ndarray, radius: float = 80) -> np.ndarray:
    """(H, W) bool hole -> (H, W) bool: pixels outside the hole within ``radius`` px (Euclidean) of it."""
    hole = np.asarray(hole, dtype=bool)
    if hole.ndim != 2:
        raise InvalidQuery(f"hole must be a 2-D mask, got shape {hole.shape}")
    if not hole.any():
        return np.zeros_like(hole)
    distance = ndimage.distance_transform_edt(~hole)
    return (distance <= radius) & ~hole


def texture_map(lab_or_gray: np.ndarray) -> np.ndarray:
    """(H, W) gray or (H, W, C) image whose channel 0 is lightness -> (H, W) float32 texture.

    Gradient magnitude of the lightness (central differences), then a 5x5 median filter so that
    single edges count less than sustained texture.
    """
    a = np.asarray(lab_or_gray, dtype=np.float32)
    if a.ndim == 3:
        a = a[:, :, 0]
    if a.ndim != 2:
        raise InvalidQuery(f"texture_map needs (H, W) or (H, W, C), got shape {np.shape(lab_or_gray)}")
    if min(a.shape) < 2:
        return np.zeros(a.shape, dtype=np.float32)
    gy, gx = np.gradient(a)
    magnitude = np.sqrt(gx * gx + gy * gy).astype(np.float32)
    import cv2  # medianBlur handles float32 for ksize 5 and is ~20x faster than ndimage.median_filter

    return cv2.medianBlur(magnitude, 5)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w, C) float32 -> (H, W, C) float32 at ``size = (H, W)``; area averaging when shrinking."""
    import cv2

    a = _as_hwc(image, "image")
    h, w, c = a.shape
    height, width = int(size[0]), int(size[1])
    if (height, width) == (h, w):
        return a
    if height < 1 or width < 1:
        raise InvalidQuery(f"cannot resize to {height}x{width}")
    interp = cv2.INTER_AREA if height < h and width < w else cv2.INTER_LINEAR
    if c <= 4:
        out = cv2.resize(np.ascontiguousarray(a), (width, height), interpolation=interp)
    else:  # cv2 limits channel counts for some paths; resize in groups of 4
        out = np.concatenate([cv2.resize(np.ascontiguousarray(a[:, :, i:i + 4]), (width, height),
                                         interpolation=interp).reshape(height, width, -1)
                              for i in range(0, c, 4)], axis=2)
    return out.reshape(height, width, c)


def _scaled_size(shape: tuple[int, int], scale: float) -> tuple[int, int]:
    return max(1, int(round(shape[0] * scale))), max(1, int(round(shape[1] * scale)))


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


class ContextMatcher:
    """The query side of ``best_placement``, prepared once and reused for many candidates.

    Holds the context's bounding box, the mean-centred kernels and their sums, and the kernels' FFTs
    per FFT shape (candidates resized to cover the same frame mostly share a few shapes), so that each
    candidate costs only its own transforms. Thread-safe: the FFT cache only ever gains entries, and
    two threads computing the same entry compute the same array. Arguments as ``best_placement``.
    """

    def __init__(self, query: np.ndarray, context: np.ndarray, scales: tuple[float, ...] = DEFAULT_SCALES,
                 texture_weight: float = 1.0, offset_penalty: float = 50.0, must_cover: np.ndarray | None = None,
                 query_texture: np.ndarray | None = None):
        q = _as_hwc(query, "query")
        self.height, self.width, self.channels = q.shape
        ctx = _as_mask(context, (self.height, self.width), "context")
        self.n_ctx = int(ctx.sum())
        if self.n_ctx == 0:
            raise InvalidQuery("the context mask is empty: nothing to match the candidate against")
        region = ctx if must_cover is None else ctx | _as_mask(must_cover, (self.height, self.width), "must_cover")
        self.y0, y1, self.x0, x1 = _bbox(region)
        self.bh, self.bw = y1 - self.y0, x1 - self.x0
        self.scales = tuple(scales)
        self.texture_weight, self.offset_penalty = texture_weight, offset_penalty
        tq = texture_map(q) if query_texture is None else np.asarray(query_texture, dtype=np.float32)

        # Kernels over the bounding box, centred on the context means (SSD is shift-invariant).
        m = ctx[self.y0:y1, self.x0:x1].astype(np.float64)
        qb = q[self.y0:y1, self.x0:x1].astype(np.float64)
        tb = tq[self.y0:y1, self.x0:x1].astype(np.float64)
        self.q_mean = (qb * m[:, :, None]).sum(axis=(0, 1)) / self.n_ctx
        self.t_mean = float((tb * m).sum() / self.n_ctx)
        qb -= self.q_mean
        tb -= self.t_mean
        self.sum_mq2 = float((m[:, :, None] * qb * qb).sum())
        self.sum_mt2 = float((m * tb * tb).sum())
        self.kernels = np.concatenate([(m[:, :, None] * qb).transpose(2, 0, 1), (m * tb)[None], m[None]])  # (C+2, bh, bw)
        self._kernel_ffts: dict[tuple[int, int], np.ndarray] = {}

    def _kernel_fft(self, shape: tuple[int, int]) -> np.ndarray:
        f_ker = self._kernel_ffts.get(shape)
        if f_ker is None:
            f_ker = np.conj(sfft.rfft2(self.kernels, s=shape, axes=(1, 2), workers=1))
            self._kernel_ffts[shape] = f_ker
        return f_ker

    def place(self, candidate: np.ndarray) -> Placement:
        """(h, w, C) float32 candidate -> its least-cost ``Placement``; ``InvalidQuery`` if it cannot
        contain the context at any scale."""
        c_img = _as_hwc(candidate, "candidate")
        channels, height, width = self.channels, self.height, self.width
        if c_img.shape[2] != channels:
            raise InvalidQuery(f"candidate has {c_img.shape[2]} channels, the query {channels}")
        y0, x0, bh, bw, n_ctx = self.y0, self.x0, self.bh, self.bw, self.n_ctx
        diagonal = math.hypot(height, width)
        best: Placement | None = None
        for scale in self.scales:
            hs, ws = _scaled_size(c_img.shape[:2], scale)
            if hs < bh or ws < bw:
                continue
            cs = resize_image(c_img, (hs, ws)).astype(np.float64)
            cs -= self.q_mean
            tc = texture_map(cs).astype(np.float64) - self.t_mean  # gradients ignore the mean shift
            # Signals whose correlations we need: each channel with m*q, texture with m*t, and the
            # squared sums (colour and texture together, both against m). Filled plane by plane: the
            # same values as summing over the channel axis, without its slow short-axis reduction.
            signals = np.empty((channels + 3, hs, ws))
            signals[:channels] = cs.transpose(2, 0, 1)
            signals[channels] = tc
            squares_sum = signals[channels + 1]
            np.multiply(signals[0], signals[0], out=squares_sum)
            for ch in range(1, channels):
                squares_sum += signals[ch] * signals[ch]
            np.multiply(tc, tc, out=signals[channels + 2])
            shape = (sfft.next_fast_len(hs, real=True), sfft.next_fast_len(ws, real=True))
            f_sig = sfft.rfft2(signals, s=shape, axes=(1, 2), workers=1)
            f_ker = self._kernel_fft(shape)
            # corr(k, s)[t] = sum_u k[u] s[u + t]; valid for t in [0, hs-bh] x [0, ws-bw] (no wrap-around).
            cross = f_sig[:channels] * f_ker[:channels]
            colour_cross = sfft.irfft2(cross.sum(axis=0), s=shape, workers=1)
            texture_cross = sfft.irfft2(f_sig[channels] * f_ker[channels], s=shape, workers=1)
            squares = sfft.irfft2(f_sig[channels + 1:] * f_ker[channels + 1][None], s=shape, axes=(1, 2), workers=1)
            ny, nx = hs - bh + 1, ws - bw + 1
            ssd = (self.sum_mq2 - 2.0 * colour_cross[:ny, :nx] + squares[0, :ny, :nx]) / n_ctx
            tex = (self.sum_mt2 - 2.0 * texture_cross[:ny, :nx] + squares[1, :ny, :nx]) / n_ctx
            np.maximum(ssd, 0.0, out=ssd)
            np.maximum(tex, 0.0, out=tex)
            # t = (ty, tx) is where the bbox's corner falls in the scaled candidate: dy = y0 - ty.
            ty = np.arange(ny)[:, None]
            tx = np.arange(nx)[None, :]
            off_y = (y0 - ty) + hs / 2.0 - height / 2.0
            off_x = (x0 - tx) + ws / 2.0 - width / 2.0
            cost = ssd + self.texture_weight * tex + self.offset_penalty * np.hypot(off_y, off_x) / diagonal
            iy, ix = np.unravel_index(int(np.argmin(cost)), cost.shape)
            if best is None or cost[iy, ix] < best.cost:
                best = Placement(dy=int(y0 - iy), dx=int(x0 - ix), scale=float(scale), ssd=float(ssd[iy, ix]),
                                 texture=float(tex[iy, ix]), cost=float(cost[iy, ix]))
        if best is None:
            raise InvalidQuery(f"candidate of size {c_img.shape[0]}x{c_img.shape[1]} cannot contain the "
                               f"{bh}x{bw} context at any scale in {self.scales}")
        return best


def best_placement(query: np.ndarray, context: np.ndarray, candidate: np.ndarray,
                   scales: tuple[float, ...] = DEFAULT_SCALES, texture_weight: float = 1.0,
                   offset_penalty: float = 50.0, must_cover: np.ndarray | None = None,
                   query_texture: np.ndarray | None = None) -> Placement:
    """Least-cost placement of ``candidate`` over the query's ``context``.

    - ``query``: (H, W, C) float32 (L*a*b*, or C=1 lightness for colorization).
    - ``context``: (H, W) bool, the pixels to compare (see ``context_mask``); must be non-empty.
    - ``candidate``: (h, w, C) float32, same channels as the query (usually resized to (H, W)).
    - ``must_cover``: (H, W) bool pixels that must also lie inside the scaled candidate (the hole).
    - ``query_texture``: precomputed ``texture_map(query)`` to save work over many candidates.

    Raises ``InvalidQuery`` when no scale lets the candidate contain the context. For many candidates
    against one query, build one ``ContextMatcher`` and call its ``place``: the same answers, less work.
    """
    return ContextMatcher(query, context, scales, texture_weight, offset_penalty, must_cover,
                          query_texture).place(candidate)


def warp_candidate(candidate: np.ndarray, placement: Placement,
                   out_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Put ``candidate`` (h, w, C) on an ``out_shape = (H, W)`` grid as ``placement`` says.

    Returns the warped (H, W, C) float32 image and ``covered`` (H, W) bool. Pixels the candidate does
    not cover repeat its nearest edge pixel, so gradients taken across the border stay small
    (the seam and the blend never take those pixels, but they do look at their neighbours).
    """
    c_img = _as_hwc(candidate, "candidate")
    height, width = int(out_shape[0]), int(out_shape[1])
    hs, ws = _scaled_size(c_img.shape[:2], placement.scale)
    scaled = resize_image(c_img, (hs, ws))
    ys = np.arange(height) - placement.dy
    xs = np.arange(width) - placement.dx
    inside_y = (ys >= 0) & (ys < hs)
    inside_x = (xs >= 0) & (xs < ws)
    warped = scaled[np.clip(ys, 0, hs - 1)[:, None], np.clip(xs, 0, ws - 1)[None, :]]
    covered = inside_y[:, None] & inside_x[None, :]
    return warped, covered
