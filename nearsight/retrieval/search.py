"""Exact k-nearest-neighbour search over float16 embedding matrices, block by block.

Blocks keep the float32 working set small, so a million 512-d embeddings are searched without a
float32 copy of the whole matrix.
"""
from __future__ import annotations

import numpy as np

BLOCK_ROWS = 65536


def exact_search(vectors: np.ndarray, queries: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(n, d) vectors (any float dtype), (nq, d) float32 queries -> (D (nq, k) float32, rows (nq, k) int64).

    faiss conventions: for ``"ip"`` D is the inner product (descending), for ``"l2"`` the squared distance
    (ascending). Missing results (k > n) are padded with row -1.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    nq, n = len(queries), len(vectors)
    k_eff = min(k, n)
    best_d = np.empty((nq, 0), np.float32)
    best_i = np.empty((nq, 0), np.int64)
    q_norms = (queries ** 2).sum(1, keepdims=True)
    for start in range(0, n, BLOCK_ROWS):
        block = np.asarray(vectors[start:start + BLOCK_ROWS], dtype=np.float32)
        d = queries @ block.T
        if metric == "l2":
            d = np.maximum(q_norms - 2 * d + (block ** 2).sum(1)[None, :], 0)
        rows = np.broadcast_to(np.arange(start, start + len(block)), d.shape)
        best_d = np.concatenate([best_d, d], axis=1)
        best_i = np.concatenate([best_i, rows], axis=1)
        best_d, best_i = _top(best_d, best_i, k_eff, metric)
    D = np.full((nq, k), -np.inf if metric == "ip" else np.inf, np.float32)
    I = np.full((nq, k), -1, np.int64)
    D[:, :k_eff], I[:, :k_eff] = best_d, best_i
    return D, I


def _top(d: np.ndarray, i: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    key = -d if metric == "ip" else d
    if d.shape[1] > k:
        part = np.argpartition(key, k - 1, axis=1)[:, :k]
        d, i, key = (np.take_along_axis(a, part, 1) for a in (d, i, key))
    order = np.argsort(key, axis=1, kind="stable")
    return np.take_along_axis(d, order, 1), np.take_along_axis(i, order, 1)
