"""Poisson (gradient-domain) blending, Perez et al. 2003, with our own sparse solver.

Inside ``region`` the result ``f`` has the source's gradients; on the region's outer boundary it
equals the target. Writing ``f = source + m``, the correction ``m`` is the harmonic membrane that
matches ``target - source`` on the boundary::

    for p in region:  n_p m_p - sum_{q in N_p, q in region} m_q = sum_{q in N_p, q not in region} (t_q - s_q)

``N_p`` = the 4-neighbours of ``p`` inside the image (the image border is a free, Neumann edge).
The matrix is the graph Laplacian of the region plus the Dirichlet couplings: sparse, symmetric and
positive definite whenever the region is not the whole image.

Solver: conjugate gradients preconditioned by one V-cycle of
smoothed-aggregation multigrid whose aggregates are 2x2 pixel blocks; coarse operators are the
Galerkin products ``P^T A P``. Plain CG needs several hundred iterations on a 512 px hole (the
membrane is smooth, the slowest thing for CG to find); with the V-cycle it needs a dozen or two,
and the cost grows linearly with the hole's area rather than with a factorisation's fill-in.
All channels are solved together (``block_pcg``) so each sparse product serves every channel.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from ..errors import InvalidQuery

__all__ = ["poisson_blend", "region_laplacian", "block_pcg", "MultigridPreconditioner"]

LOG = logging.getLogger(__name__)

_OFFSETS = ((0, 1), (0, -1), (1, 0), (-1, 0))
_COARSEST = 1500       # unknowns at which the hierarchy stops and a direct factorisation takes over
_JACOBI_OMEGA = 2.0 / 3.0


def region_laplacian(region: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """(H, W) bool region -> (A (N, N) CSR float64, ys (N,), xs (N,)), unknowns in row-major order.

    ``A[p, p]`` = number of in-image 4-neighbours, ``A[p, q] = -1`` for neighbours inside the region.
    """
    height, width = region.shape
    ys, xs = np.nonzero(region)
    n = ys.size
    index = np.full(region.shape, -1, dtype=np.int64)
    index[ys, xs] = np.arange(n)
    diag = np.zeros(n)
    rows, cols = [], []
    for dy, dx in _OFFSETS:
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
        diag += inside
        qy, qx, p = qy[inside], qx[inside], np.flatnonzero(inside)
        q = index[qy, qx]
        keep = q >= 0
        rows.append(p[keep])
        cols.append(q[keep])
    rows.append(np.arange(n))
    cols.append(np.arange(n))
    off = sum(r.size for r in rows[:-1])
    values = np.concatenate([-np.ones(off), diag])
    a = sp.csr_matrix((values, (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    return a, ys, xs


def _boundary_rhs(region: np.ndarray, ys: np.ndarray, xs: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of ``values`` (H, W, C) over each unknown's in-image neighbours outside the region -> (N, C)."""
    height, width = region.shape
    b = np.zeros((ys.size, values.shape[2]))
    for dy, dx in _OFFSETS:
        qy, qx = ys + dy, xs + dx
        inside = (qy >= 0) & (qy < height) & (qx >= 0) & (qx < width)
        p = np.flatnonzero(inside)
        qy, qx = qy[inside], qx[inside]
        outside = ~region[qy, qx]
        np.add.at(b, p[outside], values[qy[outside], qx[outside]])
    return b


@dataclass(frozen=True)
class _Level:
    a: sp.csr_matrix
    inv_diag: np.ndarray          # (N, 1) for broadcasting over channels
    p: sp.csr_matrix | None       # prolongation to this level from the next coarser one
    r: sp.csr_matrix | None       # restriction = p.T


class MultigridPreconditioner:
    """Smoothed-aggregation V-cycle for a region Laplacian, usable as CG's ``M``.

    Built from ``A`` and the unknowns' pixel coordinates; ``apply(r)`` maps (N, C) residuals to
    (N, C) corrections. The cycle is symmetric (Jacobi before and after, restriction = P^T), so it is
    a valid preconditioner for CG.
    """

    def __init__(self, a: sp.csr_matrix, ys: np.ndarray, xs: np.ndarray, sweeps: int = 2):
        self.sweeps = sweeps
        self.levels: list[_Level] = []
        while True:
            inv_diag = (1.0 / a.diagonal())[:, None]
            if a.shape[0] <= _COARSEST:
                self.levels.append(_Level(a, inv_diag, None, None))
                break
            ys, xs = ys // 2, xs // 2
            key = ys * (int(xs.max()) + 1) + xs
            uniq, agg = np.unique(key, return_inverse=True)
            if uniq.size >= a.shape[0]:  # cannot coarsen (should not happen on a grid); stop here
                self.levels.append(_Level(a, inv_diag, None, None))
                break
            n, nc = a.shape[0], uniq.size
            tentative = sp.csr_matrix((np.ones(n), (np.arange(n), agg.ravel())), shape=(n, nc))
            # Smoothing the tentative prolongator with one damped Jacobi step (rho(D^-1 A) <= 2).
            smoother = sp.identity(n, format="csr") - _JACOBI_OMEGA * sp.diags(inv_diag[:, 0]) @ a
            p = (smoother @ tentative).tocsr()
            r = p.T.tocsr()
            self.levels.append(_Level(a, inv_diag, p, r))
            a = (r @ a @ p).tocsr()
            first = np.zeros(nc, dtype=np.int64)
            first[agg.ravel()] = np.arange(n)  # any member's coordinates identify the aggregate
            ys, xs = ys[first], xs[first]
        # The Galerkin products densify the coarse stencils (~80 entries a row by the coarsest level),
        # where a dense Cholesky factorisation is several times faster than a sparse LU.
        self._coarse = scipy.linalg.cho_factor(self.levels[-1].a.toarray())

    def apply(self, residual: np.ndarray) -> np.ndarray:
        return self._cycle(0, residual)

    def _cycle(self, depth: int, b: np.ndarray) -> np.ndarray:
        level = self.levels[depth]
        if level.p is None:
            return scipy.linalg.cho_solve(self._coarse, b)
        a, inv_diag = level.a, level.inv_diag
        x = _JACOBI_OMEGA * inv_diag * b
        for _ in range(self.sweeps - 1):
            x += _JACOBI_OMEGA * inv_diag * (b - a @ x)
        x += level.p @ self._cycle(depth + 1, level.r @ (b - a @ x))
        for _ in range(self.sweeps):
            x += _JACOBI_OMEGA * inv_diag * (b - a @ x)
        return x


def poisson_blend(target: np.ndarray, source: np.ndarray, region: np.ndarray,
                  rtol: float = 1e-6, maxiter: int = 300) -> np.ndarray:
    """Blend ``source`` into ``target`` inside ``region``.

    - ``target``, ``source``: (H, W, C) or (H, W) float, same shape, same units (result has them too).
    - ``region``: (H, W) bool, pixels whose values come from the solve; all others are the target's.

    Returns float32 of the target's shape. A region that is the whole image has no boundary to
    match, so the source is shifted to the target's mean per channel. ``rtol`` is the CG tolerance
    relative to the right-hand side's norm.
    """
    t = np.asarray(target, dtype=np.float64)
    s = np.asarray(source, dtype=np.float64)
    if t.shape != s.shape or t.ndim not in (2, 3):
        raise InvalidQuery(f"target {t.shape} and source {s.shape} must have the same (H, W[, C]) shape")
    squeeze = t.ndim == 2
    if squeeze:
        t, s = t[:, :, None], s[:, :, None]
    region = np.asarray(region, dtype=bool)
    if region.shape != t.shape[:2]:
        raise InvalidQuery(f"region {region.shape} must match the image size {t.shape[:2]}")
    out = t.copy()
    if region.any():
        if region.all():
            out = s + (t.mean(axis=(0, 1)) - s.mean(axis=(0, 1)))
        else:
            out[region] = s[region] + _solve_membrane(region, t - s, rtol, maxiter)
    out = out.astype(np.float32)
    return out[:, :, 0] if squeeze else out


def _solve_membrane(region: np.ndarray, difference: np.ndarray, rtol: float, maxiter: int) -> np.ndarray:
    """Harmonic m over ``region`` with m = ``difference`` on its boundary -> (N, C) float64."""
    a, ys, xs = region_laplacian(region)
    b = _boundary_rhs(region, ys, xs, difference)
    n, channels = b.shape
    if n <= _COARSEST:
        return spla.splu(a.tocsc()).solve(b)
    mg = MultigridPreconditioner(a, ys, xs)
    # Initial guess: the mean boundary difference per channel, the membrane's average level.
    # A's row sums count each unknown's Dirichlet neighbours, b sums their values.
    links = float(np.asarray(a.sum(axis=1)).sum())
    x0 = np.repeat((b.sum(axis=0) / max(links, 1.0))[None, :], n, axis=0)
    x, iterations, converged = block_pcg(a, b, mg.apply, x0, rtol=rtol, maxiter=maxiter)
    if not converged:
        LOG.warning("Poisson CG stopped after %d iterations above rtol %g (%d unknowns)", iterations, rtol, n)
    return x


def block_pcg(a: sp.csr_matrix, b: np.ndarray, precondition, x0: np.ndarray, rtol: float = 1e-6,
              maxiter: int = 300) -> tuple[np.ndarray, int, bool]:
    """Preconditioned conjugate gradients on every column of ``b`` (N, C) at once.

    The columns are independent systems with the same SPD matrix; each has its own step sizes, and
    they share the sparse products (one CSR pass serves all C columns, which is why this is not
    ``scipy.sparse.linalg.cg`` called C times). Stops when every column's residual is below
    ``rtol * |b_col|``. Returns (x (N, C), iterations, converged).
    """
    x = np.array(x0, dtype=np.float64, order="C")
    r = b - a @ x
    threshold = rtol * np.linalg.norm(b, axis=0)
    z = precondition(r)
    p = z.copy()
    rz = np.einsum("ij,ij->j", r, z)
    for iteration in range(1, maxiter + 1):
        if np.all(np.linalg.norm(r, axis=0) <= threshold):
            return x, iteration - 1, True
        ap = a @ p
        pap = np.einsum("ij,ij->j", p, ap)
        alpha = np.divide(rz, pap, out=np.zeros_like(rz), where=pap > 0)
        x += alpha * p
        r -= alpha * ap
        z = precondition(r)
        rz_new = np.einsum("ij,ij->j", r, z)
        beta = np.divide(rz_new, rz, out=np.zeros_like(rz), where=rz > 0)
        p = z + beta * p
        rz = rz_new
    return x, maxiter, bool(np.all(np.linalg.norm(r, axis=0) <= threshold))
