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
term and the candidate would be taken almost everywhere it agrees even slightly.

Only the *free* pixels (covered, not in the hole, within ``max_distance``, and within ``band`` px of
a ``guide`` seam when one is given) become graph nodes with terminal links; an edge from a free pixel
to a forced one is folded into the free pixel's unary cost, so no "infinite" capacities are needed
and the max-flow only works where a choice exists. A seam found at low resolution, upsampled, makes a
good ``guide``: the full-resolution cut is then searched in a narrow band around it.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..errors import InvalidQuery

__all__ = ["graphcut_seam", "gradient_difference", "DEFAULT_K"]

DEFAULT_K = 0.002
# A small constant per cut edge: among equally good seams (identical images) take the shortest.
_EDGE_FLOOR = 1e-3
_RIGHT = np.array([[0, 0, 0], [0, 0, 1], [0, 0, 0]])
_DOWN = np.array([[0, 0, 0], [0, 0, 0], [0, 1, 0]])


def gradient_difference(query: np.ndarray, candidate: np.ndarray) -> np.ndarray:
    """(H, W, C) x 2 -> (H, W) float64: |grad query - grad candidate| (central differences, summed over channels)."""
    d = np.asarray(query, dtype=np.float64) - np.asarray(candidate, dtype=np.float64)
    if d.ndim == 2:
        d = d[:, :, None]
    if d.shape[0] < 2 or d.shape[1] < 2:
        return np.sqrt((d * d).sum(axis=2))
    gy, gx = np.gradient(d, axis=(0, 1))
    return np.sqrt(gx * gx + gy * gy).sum(axis=2)


def _bbox_slices(mask: np.ndarray, margin: int) -> tuple[slice, slice]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + 1 + margin, mask.shape[0])),
            slice(max(cols[0] - margin, 0), min(cols[-1] + 1 + margin, mask.shape[1])))


def graphcut_seam(query: np.ndarray, candidate: np.ndarray, hole: np.ndarray, covered: np.ndarray,
                  k: float = DEFAULT_K, max_distance: float | None = None, guide: np.ndarray | None = None,
                  band: float = 6.0, hole_distance: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Which pixels take the candidate.

    - ``query``, ``candidate``: (H, W, C) or (H, W) float, same shape, on the query's grid
      (``warp_candidate`` output for the candidate).
    - ``hole``: (H, W) bool, pixels to fill; ``covered``: (H, W) bool, pixels the candidate covers.
    - ``max_distance``: if given, pixels farther than this (px) from the hole keep the query; this
      bounds the graph (the cubic unary cost alone lets the region grow far where the images agree).
    - ``guide``: (H, W) bool, an approximate candidate region (e.g. a low-resolution seam, upsampled);
      then only pixels within ``band`` px of its boundary may choose, the rest of ``guide`` takes the
      candidate (where covered) and everything else keeps the query.
    - ``hole_distance``: (H, W) ``ndimage.distance_transform_edt(~hole)``, when the caller cuts many
      seams around the same hole and has it already.

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

    if hole_distance is None:
        distance = ndimage.distance_transform_edt(~hole)
    else:
        distance = np.asarray(hole_distance)
        if distance.shape != shape:
            raise InvalidQuery(f"hole_distance {distance.shape} must match the image size {shape}")
    forced = hole.copy()  # pixels that must take the candidate
    free = covered & ~hole
    if max_distance is not None:
        free &= distance <= max_distance
    if guide is not None:
        guide = np.asarray(guide, dtype=bool)
        if guide.shape != shape:
            raise InvalidQuery(f"guide {guide.shape} must match the image size {shape}")
        inside = ndimage.distance_transform_edt(guide)      # distance to the nearest non-guide pixel
        outside = ndimage.distance_transform_edt(~guide)    # distance to the nearest guide pixel
        near = np.where(guide, inside, outside) <= band
        forced |= guide & free & ~near
        free &= near & ~forced

    # Crop to where anything can change (free pixels and their forced neighbours).
    crop = _bbox_slices(free | forced, 1)
    free_c, forced_c, kept_c = free[crop], forced[crop], ~(free | forced)[crop]
    diff = gradient_difference(q[crop], c[crop])
    take_cost = np.where(free_c, (k * distance[crop]) ** 3, 0.0)  # paid when a pixel takes the candidate
    keep_cost = np.zeros(diff.shape)                               # paid when a pixel keeps the query
    constant = float(((k * distance[forced & ~hole]) ** 3).sum())  # guide pixels taken without a choice
    g = maxflow.Graph[float]()
    nodes = g.add_grid_nodes(diff.shape)
    for axis, structure in ((1, _RIGHT), (0, _DOWN)):
        a = (slice(None), slice(None, -1)) if axis == 1 else (slice(None, -1), slice(None))
        b = (slice(None), slice(1, None)) if axis == 1 else (slice(1, None), slice(None))
        w = diff[a] + diff[b] + _EDGE_FLOOR
        # Free-free edges go in the graph; an edge to a forced pixel is a unary term of the free one.
        weights = np.zeros(diff.shape)
        weights[a] = np.where(free_c[a] & free_c[b], w, 0.0)
        g.add_grid_edges(nodes, weights=weights, structure=structure, symmetric=True)
        keep_cost[a] += np.where(free_c[a] & forced_c[b], w, 0.0)
        keep_cost[b] += np.where(free_c[b] & forced_c[a], w, 0.0)
        take_cost[a] += np.where(free_c[a] & kept_c[b], w, 0.0)
        take_cost[b] += np.where(free_c[b] & kept_c[a], w, 0.0)
        constant += float(np.where((forced_c[a] & kept_c[b]) | (kept_c[a] & forced_c[b]), w, 0.0).sum())
    g.add_grid_tedges(nodes, take_cost, keep_cost)
    cost = float(g.maxflow()) + constant
    take = forced.copy()
    take[crop] |= free_c & g.get_grid_segments(nodes)
    return take, cost
