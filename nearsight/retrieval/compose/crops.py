"""Is a photo a crop of the query, or the query a crop of it? Masked normalised cross-correlation over scales.

Scene completion must not fill a hole from the query photo itself, and a collection may hold it cropped,
rescaled, mirrored or re-encoded: such a copy fits the hole's context exactly and "restores" the original.
A same-framed copy is easy to see pixel by pixel; a crop is not, because its frame differs. Here each
candidate is searched for in the query (and the query in the candidate) at every scale that makes one
contain the other, mirrored and not, and every translation:

- both images become luminance with a band-pass (difference of Gaussians): a crop shares the query's
  fine structure at the right scale and offset, while another photo of a similar scene (the same sky
  gradient, the same colours) shares only its coarse layout, which the band-pass removes;
- the correlation is computed over the query's valid pixels only (the hole, grown by the filter's reach,
  is left out): Padfield's masked NCC, six sums per offset, all offsets of a scale by FFT;
- ``relative side`` ``r`` is the smaller image's side over the larger's, searched on a log grid from
  ``min_side_ratio`` to 1 (a crop keeping 50%..100% of the side), for both directions.

``CropFinder(query, valid).match(candidate)`` returns the best ``CropMatch``; its ``ncc`` near 1 means
copy. The threshold that tells copies from other photos is measured (``DEFAULT_THRESHOLD``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy import fft as sfft
from scipy import ndimage

from ..errors import InvalidQuery

__all__ = ["CropMatch", "CropFinder", "DEFAULT_SIDE", "DEFAULT_THRESHOLD"]

DEFAULT_SIDE = 128           # the query's long side (px) where the search runs
DEFAULT_THRESHOLD = 0.7      # ncc at or above: a copy (scripts/bench_crops.py, on the sample photos)
# Difference-of-Gaussians sigmas (px at DEFAULT_SIDE): fine structure only. Measured on the sample photos
# (crops at 60-90% against 21 other photos each): a coarser band (0.7-3 px at 96 px) let other photos reach
# 0.85 and two photos sharing only a smooth colour layout 0.70; this one keeps them under 0.6 and 0.15.
_BAND = (0.6, 1.5)
_STEP = 1.04                 # scale grid ratio: <= 2% scale error, under 1 px at the query's edge
_MIN_OVERLAP = 0.3           # an offset counts only where this share of the smaller image is compared


@dataclass(frozen=True)
class CropMatch:
    """The best way the candidate and the query contain one another.

    ``ncc``: masked normalised cross-correlation of the band-passed luminance, -1..1 (0 when nothing
    could be compared). ``inside``: True = the candidate lies inside the query (a crop of it), False =
    the query inside the candidate. ``side_ratio``: the smaller one's side over the larger's, 0..1.
    ``mirrored``: the candidate matched flipped left-right. ``offset``: (dy, dx) of the smaller one's
    top-left corner in the larger one, in query px at the search size. ``overlap``: pixels compared.
    ``colour``: at that placement, the mean over R, G, B of the plain (not band-passed) correlation: the
    band-pass sees only edges, and two photos of straight-edged shapes can line up an edge or two; a crop
    also has the query's colours there, up to a gain and offset per channel.
    """
    ncc: float
    inside: bool
    side_ratio: float
    mirrored: bool
    offset: tuple[int, int]
    overlap: int
    colour: float = 0.0

    def is_copy(self, threshold: float = None) -> bool:
        """Both the fine structure and the colours agree (each correlation at or above ``threshold``)."""
        t = DEFAULT_THRESHOLD if threshold is None else threshold
        return self.ncc >= t and self.colour >= t


def _luminance(rgb: np.ndarray) -> np.ndarray:
    a = np.asarray(rgb, dtype=np.float32)
    if a.ndim == 2:
        return a
    if a.ndim != 3 or a.shape[2] < 3:
        raise InvalidQuery(f"expected (H, W) or (H, W, 3) pixels, got shape {a.shape}")
    return a[:, :, 0] * 0.299 + a[:, :, 1] * 0.587 + a[:, :, 2] * 0.114


def _resize(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = gray.shape
    if (h, w) == tuple(size):
        return gray
    interp = cv2.INTER_AREA if size[0] < h and size[1] < w else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(gray, np.float32), (int(size[1]), int(size[0])), interpolation=interp)


def _resize_rgb(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = rgb.shape[:2]
    if (h, w) == tuple(size):
        return np.asarray(rgb, np.float32)
    interp = cv2.INTER_AREA if size[0] < h and size[1] < w else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(rgb, np.float32), (int(size[1]), int(size[0])), interpolation=interp)


def _band(gray: np.ndarray) -> np.ndarray:
    import cv2

    gray = np.ascontiguousarray(gray, dtype=np.float32)
    fine = cv2.GaussianBlur(gray, (0, 0), _BAND[0], borderType=cv2.BORDER_REFLECT)
    coarse = cv2.GaussianBlur(gray, (0, 0), _BAND[1], borderType=cv2.BORDER_REFLECT)
    return fine - coarse


def _corr(big_f: np.ndarray, small: np.ndarray, shape: tuple[int, int], valid: tuple[int, int]) -> np.ndarray:
    """corr[t] = sum_u small[u] big[u + t] for the valid offsets, given big's rfft2 over ``shape``
    (``big_f`` (..., fy, fx)) and ``small`` (k, hs, ws): -> (..., k, ny, nx) broadcast."""
    small_f = np.conj(sfft.rfft2(small, s=shape, axes=(-2, -1), workers=1))
    out = sfft.irfft2(big_f * small_f, s=shape, axes=(-2, -1), workers=1)
    return out[..., :valid[0], :valid[1]]


class CropFinder:
    """The query side of the search, prepared once for many candidates.

    - ``query``: (H, W, 3) or (H, W) pixels (any range; the correlation ignores gain and offset).
    - ``valid``: (H, W) bool, the pixels that are the photo's own (False in the hole), or None.
    - ``side``: the long side (px) the search runs at; ``min_side_ratio``: the smallest crop searched
      (as a share of the larger image's side).

    Every correlation runs on a grid where the larger image has about ``side`` px: the query at ``side``
    with the candidate reduced into it ("inside"), or the candidate at the size that just contains the
    query with the query reduced into it ("contains"). So the larger image's transforms are computed once
    per candidate (or once for all, the query's), and each scale costs two small forward and three inverse
    FFTs. Scales are searched coarse to fine: every other ratio first, then ever closer around the best.
    """

    def __init__(self, query: np.ndarray, valid: np.ndarray | None = None, side: int = DEFAULT_SIDE,
                 min_side_ratio: float = 0.5):
        gray = _luminance(query)
        if valid is None:
            valid = np.ones(gray.shape, bool)
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != gray.shape:
            raise InvalidQuery(f"valid {valid.shape} must match the query's size {gray.shape}")
        if not 0 < min_side_ratio <= 1:
            raise InvalidQuery(f"min_side_ratio must be in (0, 1], got {min_side_ratio}")
        if not valid.any():
            raise InvalidQuery("no valid pixel of the query is left to compare")
        f = side / max(gray.shape)
        self.size = (max(8, round(gray.shape[0] * f)), max(8, round(gray.shape[1] * f)))
        # Kept at the working size; every reduced copy is made from these (area averaging).
        self._gray = _resize(gray, self.size)
        rgb = np.asarray(query, dtype=np.float32)
        self._rgb = _resize_rgb(rgb if rgb.ndim == 3 else np.repeat(rgb[:, :, None], 3, axis=2), self.size)
        self._valid = _resize(valid.astype(np.float32), self.size)
        self.min_side_ratio = float(min_side_ratio)
        n = int(math.floor(math.log(1 / self.min_side_ratio) / math.log(_STEP) + 1e-9)) + 1
        self.ratios = tuple(float(_STEP ** -i) for i in range(n))
        self._reduced: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}
        band, mask = self._query_at(self.size)
        # The query as the big image ("inside"): its FFTs over its own size, and summed-area tables for the box
        # sums of the mask, masked values and masked squares.
        self.shape = (sfft.next_fast_len(self.size[0], real=True), sfft.next_fast_len(self.size[1], real=True))
        mb = mask * band
        self._big_f = sfft.rfft2(np.stack([mask, mb]), s=self.shape, axes=(1, 2), workers=1)
        self._sat = [np.pad(a, ((1, 0), (1, 0))).cumsum(0).cumsum(1) for a in (mask, mb, mb * band)]

    def _query_at(self, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """The band-passed query and its mask at ``size`` (cached). Only pixels the band-pass computed from
        the photo alone count: the hole (any part of a pixel), grown by the coarse Gaussian's reach, is out;
        it is filled from its border first so that the filter sees no edge there."""
        got = self._reduced.get(size)
        if got is None:
            small = _resize(self._gray, size)
            hole = _resize(self._valid, size) < 0.999
            if hole.all():
                mask = np.zeros(size)
            elif hole.any():
                _, (iy, ix) = ndimage.distance_transform_edt(hole, return_indices=True)
                small = small[iy, ix]
                mask = (ndimage.distance_transform_edt(~hole) > 2 * _BAND[1]).astype(np.float64)
            else:
                mask = np.ones(size)
            got = (_band(small).astype(np.float64), mask)
            self._reduced[size] = got
        return got

    # -- the two directions ---------------------------------------------------------------------------------
    @staticmethod
    def _box(table: np.ndarray, hs: int, ws: int) -> np.ndarray:
        return table[hs:, ws:] - table[:-hs, ws:] - table[hs:, :-ws] + table[:-hs, :-ws]

    def _inside(self, cand: np.ndarray) -> tuple[float, tuple[int, int], int]:
        """The band-passed candidate (hs, ws), fully valid, at every offset inside the masked query."""
        hs, ws = cand.shape
        height, width = self.size
        ny, nx = height - hs + 1, width - ws + 1
        n = self._box(self._sat[0], hs, ws)
        s_q = self._box(self._sat[1], hs, ws)
        s_q2 = self._box(self._sat[2], hs, ws)
        # corr(mask, c), corr(mask, c^2), corr(mask*q, c)
        small_f = np.conj(sfft.rfft2(np.stack([cand, cand * cand]), s=self.shape, axes=(1, 2), workers=1))
        products = np.stack([self._big_f[0] * small_f[0], self._big_f[0] * small_f[1], self._big_f[1] * small_f[0]])
        sums = sfft.irfft2(products, s=self.shape, axes=(1, 2), workers=1)[:, :ny, :nx]
        return self._best(n, s_q, s_q2, sums[0], sums[1], sums[2], hs * ws)

    def _contains(self, big_f: np.ndarray, shape: tuple[int, int], big_size: tuple[int, int],
                  size: tuple[int, int]) -> tuple[float, tuple[int, int], int]:
        """The masked query reduced to ``size`` at every offset inside the candidate, fully valid, whose
        band-passed values and squares have the FFTs ``big_f`` over ``shape``."""
        band, mask = self._query_at(size)
        ny, nx = big_size[0] - size[0] + 1, big_size[1] - size[1] + 1
        small_f = np.conj(sfft.rfft2(np.stack([mask, mask * band]), s=shape, axes=(1, 2), workers=1))
        # corr(c, mask), corr(c^2, mask), corr(c, mask*q)
        products = np.stack([big_f[0] * small_f[0], big_f[1] * small_f[0], big_f[0] * small_f[1]])
        sums = sfft.irfft2(products, s=shape, axes=(1, 2), workers=1)[:, :ny, :nx]
        n, s_q, s_q2 = float(mask.sum()), float((mask * band).sum()), float((mask * band * band).sum())
        full = np.full((ny, nx), 1.0)
        return self._best(full * n, full * s_q, full * s_q2, sums[0], sums[1], sums[2], max(int(n), 1))

    @staticmethod
    def _best(n, s_q, s_q2, s_c, s_c2, s_qc, area: int) -> tuple[float, tuple[int, int], int]:
        """Padfield's masked NCC from the six sums; offsets comparing under ``_MIN_OVERLAP`` of ``area`` lose."""
        enough = n >= max(_MIN_OVERLAP * area, 16)
        nn = np.maximum(n, 1.0)
        var_q = s_q2 - s_q * s_q / nn
        var_c = s_c2 - s_c * s_c / nn
        cov = s_qc - s_q * s_c / nn
        # A flat window has no structure to recognise (and its variance is rounding noise): it scores 0.
        floor = 1e-6 * nn
        ok = enough & (var_q > floor) & (var_c > floor)
        ncc = np.where(ok, cov / np.sqrt(np.maximum(var_q * var_c, 1e-30)), 0.0)
        iy, ix = np.unravel_index(int(np.argmax(ncc)), ncc.shape)
        return float(ncc[iy, ix]), (int(iy), int(ix)), int(round(float(n[iy, ix])))

    # -- the search -----------------------------------------------------------------------------------------
    def match(self, candidate: np.ndarray) -> CropMatch:
        """(h, w, 3) or (h, w) pixels of a candidate photo (any size: a thumbnail will do) -> the best match."""
        gray = _luminance(candidate)
        cand_rgb = np.asarray(candidate, dtype=np.float32)
        if cand_rgb.ndim == 2:
            cand_rgb = np.repeat(cand_rgb[:, :, None], 3, axis=2)
        if min(gray.shape) < 2:
            raise InvalidQuery(f"the candidate is too small ({gray.shape})")
        height, width = self.size
        hc, wc = gray.shape
        fit_in = min(height / hc, width / wc)       # the scale at which the candidate just fits inside the query
        contain = max(height / hc, width / wc)      # the scale at which it just contains the query
        big_size = (max(height, round(hc * contain)), max(width, round(wc * contain)))
        shape = (sfft.next_fast_len(big_size[0], real=True), sfft.next_fast_len(big_size[1], real=True))
        big = {}
        for mirrored in (False, True):
            # Reduced once to the "contains" size; the smaller "inside" sizes are made from that.
            g = _resize(gray[:, ::-1] if mirrored else gray, big_size)
            b = _band(g).astype(np.float64)
            big[mirrored] = (g, sfft.rfft2(np.stack([b, b * b]), s=shape, axes=(1, 2), workers=1))

        def score(inside: bool, mirrored: bool, r: float) -> CropMatch:
            if inside:
                size = (min(height, max(2, round(hc * fit_in * r))), min(width, max(2, round(wc * fit_in * r))))
                if size[0] * size[1] < 64:
                    return CropMatch(0.0, True, r, mirrored, (0, 0), 0)
                ncc, offset, overlap = self._inside(_band(_resize(big[mirrored][0], size)).astype(np.float64))
            else:
                # The query at r times the size at which the candidate just contains it.
                size = (min(big_size[0], max(2, round(height * r))), min(big_size[1], max(2, round(width * r))))
                ncc, offset, overlap = self._contains(big[mirrored][1], shape, big_size, size)
            return CropMatch(ncc, inside, r, mirrored, offset, overlap)

        # Every other ratio of the grid for each direction and mirroring; then, for the best of those, the
        # grid's ratios beside it, and halving steps around the best so far: the fine band needs the scale
        # within about 1% (1 px at the edge of a 128 px image).
        tried = [score(inside, mirrored, r) for inside in (True, False) for mirrored in (False, True)
                 for r in self.ratios[::2]]
        best = max(tried, key=lambda m: m.ncc)
        step = _STEP
        while step > 1.004:
            for r in (best.side_ratio * step, best.side_ratio / step):
                if self.min_side_ratio / _STEP <= r <= 1.0:
                    got = score(best.inside, best.mirrored, r)
                    if got.ncc > best.ncc:
                        best = got
            step = math.sqrt(step)
        if best.ncc <= 0:
            return CropMatch(0.0, True, 1.0, False, (0, 0), 0)
        return replace(best, colour=self._colour(best, cand_rgb, fit_in, big_size))

    def _colour(self, m: CropMatch, cand_rgb: np.ndarray, fit_in: float, big_size: tuple[int, int]) -> float:
        """Mean per-channel correlation of the plain colours over the compared pixels at ``m``'s placement."""
        rgb = _resize_rgb(cand_rgb[:, ::-1] if m.mirrored else cand_rgb, big_size)
        height, width = self.size
        oy, ox = m.offset
        if m.inside:
            hc, wc = cand_rgb.shape[:2]
            size = (min(height, max(2, round(hc * fit_in * m.side_ratio))),
                    min(width, max(2, round(wc * fit_in * m.side_ratio))))
            c = _resize_rgb(rgb, size)
            q = self._rgb[oy:oy + size[0], ox:ox + size[1]]
            valid = self._valid[oy:oy + size[0], ox:ox + size[1]] >= 0.999
        else:
            size = (min(big_size[0], max(2, round(height * m.side_ratio))),
                    min(big_size[1], max(2, round(width * m.side_ratio))))
            q = _resize_rgb(self._rgb, size)
            valid = _resize(self._valid, size) >= 0.999
            c = rgb[oy:oy + size[0], ox:ox + size[1]]
        if valid.sum() < 16:
            return 0.0
        a, b = q[valid].astype(np.float64), c[valid].astype(np.float64)
        a -= a.mean(axis=0)
        b -= b.mean(axis=0)
        va, vb = (a * a).sum(axis=0), (b * b).sum(axis=0)
        flat = 1e-3 * len(a)  # a channel flat in both agrees; flat in one only does not
        r = np.where((va > flat) & (vb > flat), (a * b).sum(axis=0) / np.sqrt(np.maximum(va * vb, 1e-30)),
                     np.where((va <= flat) & (vb <= flat), 1.0, 0.0))
        return float(r.mean())
