"""Graph-cut seam between the query and a placed candidate (Hays & Efros 2007, section 4).

Two labels per pixel, query (source side of the cut) or candidate (sink side):

- hole pixels must take the candidate; pixels the candidate does not cover must keep the query;
- any other pixel may take the candidate at a unary cost ``(k * d)^3``, ``d`` = its Euclidean
  distance in px to the hole, so the candidate region stays near the hole but can grow to find a
  good seam;
- neighbours with different labels pay the gradient-domain difference of the two images at both
  pixels, ``D(p) + D(q)`` with ``D = |grad query - grad candidate|``. Poisson blending afterwards
  removes smooth colour offsets, so only a disagreement of *gradients* makes a visible seam; the
  cut therefore runs where the two images have the same structure.

Costs are in the units of the images passed in. ``k = 0.002`` is the paper's value for images in
0..1 (sRGB floats in the pipeline); with 0..255 or L*a*b* values the gradient terms dwarf the unary
term and the candidate would be taken almost everywhere it agrees even slightly. The graph is built from
whole arrays with ``add_grid_edges`` / ``add_grid_tedges`` and cropped to the candidate's footprint.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InvalidQuery

__all__ = ["graphcut_seam", "gradient_difference", "DEFAULT_K"]

DEFAULT_K = 0.002
# Stands in for an infinite terminal capacity; far above any finite cut (they are sums of image
# differences over at most a few million edges), so it is never part of a minimum cut that exists.
_FORCE = 1e12
# A small constant per cut edge: among equally good seams (identical images) take the shortest.
_EDGE_FLOOR = 1e-3


def gradient_difference(query: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """(H, W, C) x 2 -> (H, W) float64: |grad query - grad candidate| (central differences, summed over channels)."""
    d = np.asarray(query, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    if d.ndim == 2:
        d = d[:, :, None]
    if d.shape[0] < 2 or d.shape[1] < 2:
        return np.sqrt((d * d).sum(axis=2))
    gy, gx = np.gradient(d, axis=(0, 1))
    return np.sqrt(gx * gx + gy * gy).sum(axis=2)


def graphcut_seam(query: np.ndarray, candidate: np.ndarray, hole: np.ndarray, covered: np.ndarray,
                  k: float = DEFAULT_K, max_distance: float | None = None) -> tuple[np.ndarray, float]:
    """Which pixels take the candidate.

    - ``query``, ``candidate``: (H, W, C) or (H, W) float, same shape, on the query's grid
      (``warp_candidate`` output for the candidate).
    - ``hole``: (H, W) bool, pixels to fill; ``covered``: (H, W) bool, pixels the candidate covers.
    - ``max_distance``: if given, pixels farther than this (px) from the hole keep the query; this
      bounds the graph on large images (the cubic unary cost alone lets the region grow far where
      the two images agree).

    Returns ``take_candidate`` (H, W) bool (a superset of the hole, inside ``covered``) and the cut's
    cost (unary + seam, float). Raises ``InvalidQuery`` if the candidate does not cover the hole.
    """
    import maxflow

    q = np.asarray(query)
    c = np.asarray(candidate)
    if q.shape != c.shape or q.ndim not in (2, 3):
        raise InvalidQuery(f"query {q.shape} and candidate {c.shape} must have the same (H, W[, C]) shape")
    shape = q.shape[:2]
    hole = np.asarray(hole, dtype=bool)
    covered = np.asarray(covered, dtype=bool)
    if hole.shape != shape or covered.shape != shape:
        raise InvalidQuery(f"hole {hole.shape} and covered {covered.shape} must match the image size {shape}")
    if not hole.any():
        raise InvalidQuery("the hole is empty: nothing to fill")
    uncovered_hole = int((hole & ~covered).sum())
    if uncovered_hole:
        raise InvalidQuery(f"the candidate leaves {uncovered_hole} hole pixels uncovered")

    distance_full = ndimage.distance_transform_edt(~hole)
    free = covered if max_distance is None else covered & (distance_full <= max_distance)
    # Only the free pixels (plus a 1-px ring of forced-query pixels) can change label.
    rows = np.flatnonzero(free.any(axis=1))
    cols = np.flatnonzero(free.any(axis=0))
    y0, y1 = max(rows[0] - 1, 0), min(rows[-1] + 2, shape[0])
    x0, x1 = max(cols[0] - 1, 0), min(cols[-1] + 2, shape[1])
    crop = (slice(y0, y1), slice(x0, x1))
    h_c, free_c = hole[crop], free[crop]

    take_cost = (k * distance_full[crop]) ** 3   # paid when a pixel takes the candidate (sink side)
    take_cost[~free_c] = _FORCE
    keep_cost = np.where(h_c, _FORCE, 0.0)   # paid when a pixel keeps the query (source side)

    diff = gradient_difference(q[crop], c[crop])
    right = np.zeros(diff.shape)
    right[:, :-1] = diff[:, :-1] + diff[:, 1:] + _EDGE_FLOOR
    down = np.zeros(diff.shape)
    down[:-1, :] = diff[:-1, :] + diff[1:, :] + _EDGE_FLOOR

    g = maxflow.Graph[float]()
    nodes = g.add_grid_nodes(diff.shape)
    g.add_grid_edges(nodes, weights=right, structure=np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]]), symmetric=True)
    g.add_grid_edges(nodes, weights=down, structure=np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0]]), symmetric=True)
    g.add_grid_tedges(nodes, take_cost, keep_cost)
    cost = float(g.maxflow())
    take = np.zeros(shape, dtype=bool)
    take[crop] = g.get_grid_segments(nodes)
    return take, cost
