"""One candidate into one query: warp by its placement, cut a seam, blend in the gradient domain."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidQuery
from .align import Placement, warp_candidate
from .lab import to_float_rgb
from .poisson import poisson_blend
from .seam import DEFAULT_K, graphcut_seam

__all__ = ["Composite", "composite_candidate"]


@dataclass(frozen=True)
class Composite:
    """A finished composite.

    - ``rgb``: (H, W, 3) float32 in 0..1; equal to the query wherever ``take`` is False.
    - ``take``: (H, W) bool, the pixels that came from the candidate (the hole and a margin).
    - ``seam_cost``: the graph cut's cost (unary + seam), in sRGB 0..1 gradient units.
    """
    rgb: np.ndarray
    take: np.ndarray
    seam_cost: float


def composite_candidate(query_rgb: np.ndarray, candidate_rgb: np.ndarray, hole: np.ndarray,
                        placement: Placement, k: float = DEFAULT_K, max_distance: float | None = None,
                        guide: np.ndarray | None = None, band: float = 6.0, rtol: float = 1e-4,
                        hole_distance: np.ndarray | None = None) -> Composite:
    """Fill ``hole`` of the query with the candidate placed by ``placement``.

    - ``query_rgb``: (H, W, 3) uint8 or float 0..1; ``candidate_rgb``: (h, w, 3) likewise, placed as
      ``placement`` says (its ``dy, dx`` are in the query's pixels at this size).
    - ``hole``: (H, W) bool.
    - ``max_distance``: farthest px from the hole the seam may wander (None: anywhere the candidate
      covers); bounds the graph's size on large images.
    - ``guide``, ``band``: search the seam only within ``band`` px of an approximate candidate
      region (a seam found at low resolution, upsampled); see ``graphcut_seam``.
    - ``rtol``: the Poisson solve's tolerance; 1e-4 leaves errors ~0.02 of an 8-bit level.
    - ``hole_distance``: the hole's distance transform, if the caller has it (see ``graphcut_seam``).

    Seam and blend both work on sRGB in 0..1: the seam's ``k = 0.002`` balances the unary cost
    against gradient differences in those units (as in the paper); in L*a*b* (0..100) the same
    gradients cost ~100x more and the candidate would be taken wholesale.
    """
    q = to_float_rgb(query_rgb)
    c = to_float_rgb(candidate_rgb)
    hole = np.asarray(hole, dtype=bool)
    if hole.shape != q.shape[:2]:
        raise InvalidQuery(f"hole {hole.shape} must match the query's size {q.shape[:2]}")
    warped, covered = warp_candidate(c, placement, q.shape[:2])
    take, cost = graphcut_seam(q, warped, hole, covered, k=k, max_distance=max_distance, guide=guide, band=band,
                               hole_distance=hole_distance)
    blended = np.clip(poisson_blend(q, warped, take, rtol=rtol), 0.0, 1.0)
    # Outside the candidate's region the query is kept bit for bit (the blend's float32 round trip
    # of the target could otherwise differ in the last place).
    blended[~take] = q[~take]
    return Composite(rgb=blended, take=take, seam_cost=cost)
