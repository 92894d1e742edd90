"""Multi-label graph cut on a 4-connected pixel grid by alpha-expansion (Boykov, Veksler & Zabih 2001).

Energy of a labelling ``f`` (H, W) int::

    E(f) = sum_p unary[p, f_p]  +  sum_{(p,q) 4-neighbours} w_pq * [f_p != f_q]

The smoothness term is Potts with a weight per edge, so a caller can make label changes cheap
where the image has an edge and expensive where it is smooth. Each expansion move (every pixel
either keeps its label or switches to ``alpha``) is solved exactly with one max-flow (PyMaxflow);
Potts is a metric, so the move's pairwise terms are submodular and the min cut is the best move.
A move is kept only when it lowers the energy, so the energy never increases.

The graph is built from whole arrays (``add_grid_tedges`` + ``add_edges``): no per-pixel Python.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import InvalidQuery

__all__ = ["Expansion", "alpha_expansion", "alpha_expansion_trace", "edge_weights_from_pixels",
           "potts_energy"]

# Caps huge data costs (e.g. "this label has no pixel here") so max-flow capacities stay finite.
_MAX_COST = 1e12


@dataclass(frozen=True)
class Expansion:
    """Result of ``alpha_expansion_trace``.

    - ``labels``: (H, W) int64, the final labelling.
    - ``energies``: the energy after initialisation and after every accepted move, non-increasing.
    - ``cycles``: how many passes over all labels were run.
    """
    labels: np.ndarray
    energies: tuple[float, ...]
    cycles: int


def edge_weights_from_pixels(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel weights (H, W) -> per-edge (horizontal (H, W-1), vertical (H-1, W)): mean of the two ends."""
    w = np.asarray(weights, dtype=np.float64)
    return 0.5 * (w[:, :-1] + w[:, 1:]), 0.5 * (w[:-1, :] + w[1:, :])


def _edges(pairwise_weights, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Normalise the accepted pairwise forms to (horizontal (H, W-1), vertical (H-1, W)) float64."""
    h, w = shape
    if pairwise_weights is None:
        return np.zeros((h, max(w - 1, 0))), np.zeros((max(h - 1, 0), w))
    if isinstance(pairwise_weights, (tuple, list)):
        if len(pairwise_weights) != 2:
            raise InvalidQuery(f"pairwise weights as a pair (horizontal, vertical); got {len(pairwise_weights)} arrays")
        horizontal = np.asarray(pairwise_weights[0], dtype=np.float64)
        vertical = np.asarray(pairwise_weights[1], dtype=np.float64)
    else:
        pw = np.asarray(pairwise_weights, dtype=np.float64)
        if pw.ndim == 0:
            pw = np.full(shape, float(pw))
        if pw.shape != shape:
            raise InvalidQuery(f"pairwise weights of shape {pw.shape} for a label grid of shape {shape}")
        horizontal, vertical = edge_weights_from_pixels(pw)
    if horizontal.shape != (h, max(w - 1, 0)) or vertical.shape != (max(h - 1, 0), w):
        raise InvalidQuery(f"edge weights of shapes {horizontal.shape} and {vertical.shape} for a label grid "
                           f"of shape {shape}; expected {(h, w - 1)} and {(h - 1, w)}")
    if not (np.all(np.isfinite(horizontal)) and np.all(np.isfinite(vertical))):
        raise InvalidQuery("pairwise weights must be finite")
    if (horizontal < 0).any() or (vertical < 0).any():
        raise InvalidQuery("pairwise weights must be >= 0 (a Potts term with a negative weight is not a metric)")
    return horizontal, vertical


def potts_energy(labels: np.ndarray, unary: np.ndarray, horizontal: np.ndarray, vertical: np.ndarray) -> float:
    """E(labels) in float64: data costs of the chosen labels + weights of the edges whose ends differ."""
    data = np.take_along_axis(unary, labels[..., None], axis=2).sum(dtype=np.float64)
    smooth = (horizontal * (labels[:, :-1] != labels[:, 1:])).sum() + (vertical * (labels[:-1] != labels[1:])).sum()
    return float(data + smooth)


def _expansion_move(labels: np.ndarray, alpha: int, unary: np.ndarray, horizontal: np.ndarray,
                    vertical: np.ndarray) -> np.ndarray:
    """The optimal alpha-expansion of ``labels`` (H, W) int64: a new labelling from one min cut.

    Binary variable x_p = 1 (the sink side of the cut) means "p switches to alpha". For an edge (p, q)
    with weight w and current labels (a, b), the move's pairwise table is
    E00 = w[a!=b], E01 = w[a!=alpha], E10 = w[b!=alpha], E11 = 0, which is rewritten as
    E00 + (E10-E00) x_p + (E11-E10) x_q + (E01+E10-E00-E11) (1-x_p) x_q:
    two unary terms and one directed edge p->q of capacity E01+E10-E00 >= 0 (triangle inequality).
    """
    import maxflow

    h, w = labels.shape
    cost_keep = np.take_along_axis(unary, labels[..., None], axis=2)[..., 0].astype(np.float64)
    cost_alpha = unary[..., alpha].astype(np.float64)  # copy: linear terms are added below

    ids = np.arange(h * w, dtype=np.int64).reshape(h, w)
    heads, tails, caps = [], [], []
    for weight, lp, lq, idp, idq, sp, sq in (
            (horizontal, labels[:, :-1], labels[:, 1:], ids[:, :-1], ids[:, 1:],
             np.s_[:, :-1], np.s_[:, 1:]),
            (vertical, labels[:-1, :], labels[1:, :], ids[:-1, :], ids[1:, :],
             np.s_[:-1, :], np.s_[1:, :])):
        e00 = weight * (lp != lq)
        e01 = weight * (lp != alpha)
        e10 = weight * (lq != alpha)
        cost_alpha[sp] += e10 - e00
        cost_alpha[sq] -= e10
        cap = e01 + e10 - e00
        keep = cap > 0
        heads.append(idp[keep])
        tails.append(idq[keep])
        caps.append(cap[keep])

    # Terminal edges: a node on the sink side (x=1) cuts its source edge, so the source edge carries
    # the cost of x=1. Subtracting the per-node minimum keeps capacities non-negative.
    base = np.minimum(cost_keep, cost_alpha)
    graph = maxflow.Graph[float](h * w, 2 * h * w)
    nodes = graph.add_grid_nodes((h, w))
    graph.add_grid_tedges(nodes, cost_alpha - base, cost_keep - base)
    heads = np.concatenate(heads)
    if heads.size:
        caps = np.concatenate(caps)
        graph.add_edges(nodes.reshape(-1)[heads], nodes.reshape(-1)[np.concatenate(tails)], caps,
                        np.zeros_like(caps))
    graph.maxflow()
    switch = graph.get_grid_segments(nodes)
    return np.where(switch, alpha, labels)


def alpha_expansion_trace(unary: np.ndarray, pairwise_weights=None, n_iters: int = 5,
                          init: np.ndarray | None = None, seed: int | None = 0) -> Expansion:
    """Alpha-expansion with the energy recorded after every accepted move.

    - ``unary``: (H, W, L) data costs, finite (values above 1e12 are capped), any float dtype.
    - ``pairwise_weights``: ``None`` (no smoothness), a scalar, per-pixel weights (H, W) (an edge gets the
      mean of its two ends), or a pair ``(horizontal (H, W-1), vertical (H-1, W))`` of per-edge weights >= 0.
    - ``n_iters``: the most cycles over all labels; stops early after a cycle with no improvement.
    - ``init``: (H, W) starting labels; default the per-pixel argmin of ``unary``.
    - ``seed``: order in which labels are expanded each cycle (``None`` = 0..L-1 every cycle).
    """
    u = np.asarray(unary)
    if u.ndim != 3 or u.shape[2] < 1 or u.shape[0] < 1 or u.shape[1] < 1:
        raise InvalidQuery(f"unary costs must be (H, W, L) with L >= 1; got shape {u.shape}")
    if not np.all(np.isfinite(u)):
        raise InvalidQuery("unary costs must be finite (use a large cost, not inf, for forbidden labels)")
    u = np.minimum(u.astype(np.float64), _MAX_COST)
    h, w, n_labels = u.shape
    horizontal, vertical = _edges(pairwise_weights, (h, w))
    if n_iters < 1:
        raise InvalidQuery(f"n_iters must be >= 1; got {n_iters}")

    if init is None:
        labels = np.argmin(u, axis=2).astype(np.int64)
    else:
        labels = np.asarray(init).astype(np.int64)
        if labels.shape != (h, w) or labels.min() < 0 or labels.max() >= n_labels:
            raise InvalidQuery(f"init labels must be (H, W)={h, w} in [0, {n_labels}); got shape {labels.shape}")
        labels = labels.copy()
    energy = potts_energy(labels, u, horizontal, vertical)
    energies = [energy]
    if n_labels == 1:
        return Expansion(labels, tuple(energies), 0)

    rng = np.random.default_rng(seed) if seed is not None else None
    cycles = 0
    for cycles in range(1, n_iters + 1):
        improved = False
        order = rng.permutation(n_labels) if rng is not None else np.arange(n_labels)
        for alpha in order:
            proposal = _expansion_move(labels, int(alpha), u, horizontal, vertical)
            new_energy = potts_energy(proposal, u, horizontal, vertical)
            # The cut is optimal, so it never does worse than "keep everything"; the guard absorbs the
            # max-flow's rounding so that the recorded energy is monotone by construction.
            if new_energy < energy - 1e-9 * max(1.0, abs(energy)):
                labels, energy = proposal, new_energy
                energies.append(energy)
                improved = True
        if not improved:
            break
    return Expansion(labels, tuple(energies), cycles)


def alpha_expansion(unary: np.ndarray, pairwise_weights=None, n_iters: int = 5,
                    init: np.ndarray | None = None, seed: int | None = 0) -> np.ndarray:
    """Labels (H, W) int64 minimising data + weighted Potts energy; see ``alpha_expansion_trace``."""
    return alpha_expansion_trace(unary, pairwise_weights, n_iters=n_iters, init=init, seed=seed).labels
