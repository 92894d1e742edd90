"""PCA projections fitted on a collection's embeddings, for fast pre-filtering.

A 3072-d tiny image projected to 64 dimensions keeps most of its variance; searching the projection for a
shortlist and re-ranking the shortlist with the full vectors answers ~50x less arithmetic per item.
Stored beside the shards as ``embeddings/<encoder>/pca.npz`` (mean (d,), components (p, d), explained (p,)).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import InvalidQuery
from .search import exact_search

PCA_FILE = "pca.npz"


@dataclass(frozen=True)
class PCA:
    mean: np.ndarray        # (d,) float32
    components: np.ndarray  # (p, d) float32, orthonormal rows, by decreasing variance
    explained: np.ndarray   # (p,) float32, fraction of the total variance each component keeps

    def project(self, x: np.ndarray) -> np.ndarray:
        """(n, d) -> (n, p) float32. Blocks keep a float16 matrix from being copied whole to float32."""
        out = np.empty((len(x), len(self.components)), np.float32)
        for start in range(0, len(x), 65536):
            block = np.asarray(x[start:start + 65536], dtype=np.float32)
            out[start:start + len(block)] = (block - self.mean) @ self.components.T
        return out

    def save(self, path: str) -> None:
        tmp = path + ".tmp.npz"
        np.savez(tmp, mean=self.mean, components=self.components, explained=self.explained)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str) -> "PCA":
        with np.load(path) as f:
            return cls(f["mean"], f["components"], f["explained"])


def fit_pca(vectors: np.ndarray, dim: int, sample: int = 100_000, seed: int = 0) -> PCA:
    """Fit on (n, d) vectors (a seeded sample of at most ``sample`` rows) -> PCA with ``dim`` components."""
    n, d = vectors.shape
    if not 1 <= dim <= min(d, n):
        raise InvalidQuery(f"PCA dim must be from 1 to min(d={d}, n={n}), got {dim}")
    rows = np.sort(np.random.default_rng(seed).choice(n, size=min(n, sample), replace=False))
    x = np.asarray(vectors[rows], dtype=np.float64)
    mean = x.mean(0)
    x -= mean
    if len(x) < d:  # few samples: the thin SVD of the data is cheaper than a d x d eigenproblem
        _, sing, vt = np.linalg.svd(x, full_matrices=False)
        values, vecs = sing ** 2 / len(x), vt.T
    else:  # many samples: the d x d covariance is small next to the data
        values, vecs = np.linalg.eigh(x.T @ x / len(x))
    order = np.argsort(values)[::-1][:dim]
    total = values.sum()
    explained = values[order] / total if total > 0 else np.zeros(dim)
    return PCA(mean.astype(np.float32), vecs[:, order].T.astype(np.float32), explained.astype(np.float32))


def prefiltered_search(vectors: np.ndarray, projected: np.ndarray, pca: PCA, queries: np.ndarray, k: int,
                       metric: str, shortlist: int) -> tuple[np.ndarray, np.ndarray]:
    """Shortlist by L2 in the PCA space, then exact re-ranking with the full vectors -> (D, rows) like exact_search.

    L2 in the projection approximates L2 in the full space; for unit vectors that ranks as inner product does.
    """
    queries = np.asarray(queries, dtype=np.float32)
    _, cand = exact_search(projected, pca.project(queries), max(k, shortlist), "l2")
    D = np.full((len(queries), k), -np.inf if metric == "ip" else np.inf, np.float32)
    I = np.full((len(queries), k), -1, np.int64)
    for r, rows in enumerate(cand):
        rows = rows[rows >= 0]
        d, sub = exact_search(vectors[rows], queries[r:r + 1], k, metric)
        keep = sub[0] >= 0
        D[r, :keep.sum()], I[r, :keep.sum()] = d[0][keep], rows[sub[0][keep]]
    return D, I


def prefilter_recall(collection, encoder: str, k: int = 10, shortlist: int = 100, n_queries: int = 200, seed: int = 0) -> float:
    """Measured recall@k of the PCA pre-filter against exact search, with stored items as queries."""
    matrix = collection.embedding_matrix(encoder)
    rows = np.random.default_rng(seed).choice(len(matrix), size=min(n_queries, len(matrix)), replace=False)
    queries = matrix.vectors[np.sort(rows)].astype(np.float32)
    _, exact = collection.knn(encoder, queries, k)
    _, approx = collection.knn(encoder, queries, k, prefilter=shortlist)
    hits = sum(len(set(a[a >= 0]) & set(e[e >= 0])) for a, e in zip(approx, exact))
    return hits / max(1, int((exact >= 0).sum()))
