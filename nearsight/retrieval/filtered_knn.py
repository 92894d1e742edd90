"""k-NN restricted to allowed item ids (a search filter), or with some ids denied, without losing results.

Two routes, chosen by how many ids the filter admits:

- few (at most ``EXACT_LIMIT``), or no ANN index: exact search over just those embeddings. Always exact,
  always min(k, allowed) results, and cheaper than the index for a selective filter.
- many: the ANN index searched with a faiss ``IDSelector`` inside every segment (ids outside the filter are
  never candidates, so a filter keeps k results where "search, then drop" would return fewer), then exact
  re-ranking of the candidates from the float16 embeddings. If the index still returns fewer than it
  should (an IVF whose probed lists hold few allowed ids, an HNSW beam that ran dry), the exact route
  answers instead.

Arrays in, arrays out: ``(nq, d)`` float32 queries -> ``(D (nq, k) float32, I (nq, k) int64)`` with faiss
conventions (inner product descending for "ip", squared L2 ascending for "l2"; -1 ids pad).
"""
from __future__ import annotations

import numpy as np

from .search import exact_search

EXACT_LIMIT = 50_000
BLOCK = 65_536


def filtered_knn(matrix, index, queries: np.ndarray, k: int, metric: str, allowed: np.ndarray | None = None,
                 denied=()) -> tuple[np.ndarray, np.ndarray]:
    """``matrix``: the encoder's ``EmbeddingMatrix`` (live items); ``index``: its ``VectorIndex`` or None.
    ``allowed``: sorted (m,) int64 ids to search among (None = all); ``denied``: ids never returned."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    denied = np.unique(np.asarray(list(denied), dtype=np.int64))
    rows = _allowed_rows(matrix, allowed, denied)
    if allowed is not None and (index is None or len(rows) <= EXACT_LIMIT or _on_gpu(index)):
        return exact_rows(matrix.vectors, matrix.ids, rows, queries, k, metric)
    if index is None or _on_gpu(index):
        return exact_rows(matrix.vectors, matrix.ids, rows, queries, k, metric)
    want = min(k, len(rows))
    try:
        D, I = _selector_search(index, matrix, queries, k, metric, allowed, denied)
    except RuntimeError:  # an index type whose search takes no selector
        return exact_rows(matrix.vectors, matrix.ids, rows, queries, k, metric)
    if ((I >= 0).sum(1) < want).any():
        return exact_rows(matrix.vectors, matrix.ids, rows, queries, k, metric)
    return D, I


def _allowed_rows(matrix, allowed, denied) -> np.ndarray:
    """Sorted row positions (into ``matrix``) of the searchable ids: allowed (or all) with an embedding,
    not denied."""
    if allowed is None:
        return np.flatnonzero(~np.isin(matrix.ids, denied)) if len(denied) else np.arange(len(matrix.ids))
    ids = np.asarray(allowed, np.int64)
    if len(denied):
        ids = np.setdiff1d(ids, denied)
    return np.sort(matrix.known_rows(ids))


def exact_rows(vectors: np.ndarray, ids: np.ndarray, rows: np.ndarray, queries: np.ndarray, k: int,
               metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN among ``vectors[rows]`` (rows sorted, for memory-mapped reads in file order), block by block
    so the float32 working set stays small."""
    ascending = metric != "ip"
    nq = len(queries)
    best_d = np.empty((nq, 0), np.float32)
    best_i = np.empty((nq, 0), np.int64)
    for start in range(0, len(rows), BLOCK):
        block_rows = rows[start:start + BLOCK]
        D, local = exact_search(np.asarray(vectors[block_rows]), queries, k, metric)
        block_ids = ids[block_rows]
        found = np.where(local >= 0, block_ids[np.maximum(local, 0)], -1)
        best_d, best_i = _merge(np.concatenate([best_d, D], 1), np.concatenate([best_i, found], 1), k, ascending)
    if best_d.shape[1] < k:
        pad = k - best_d.shape[1]
        best_d = np.pad(best_d, ((0, 0), (0, pad)), constant_values=np.inf if ascending else -np.inf)
        best_i = np.pad(best_i, ((0, 0), (0, pad)), constant_values=-1)
    return best_d.astype(np.float32), best_i


def _merge(D, I, k, ascending):
    key = np.where(I < 0, np.inf, D if ascending else -D.astype(np.float64))
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)


def _on_gpu(index) -> bool:
    return any(getattr(seg, "on_gpu", False) for seg in index.segments)


def _selector_search(index, matrix, queries, k, metric, allowed, denied):
    """Every segment searched with an IDSelector (filter AND not-deleted AND not-denied), candidates re-ranked
    exactly from the embeddings (true distances whatever the codes)."""
    import faiss

    from .index import backend
    from .index.vector_index import exact_rerank, merge_results

    keep = []  # faiss holds bare pointers: the selectors must outlive the search
    sel = None
    if allowed is not None:
        sel = faiss.IDSelectorBatch(np.ascontiguousarray(allowed, np.int64))
        keep.append(sel)
    banned = np.union1d(denied, index.tombstones)
    if len(banned):
        batch = faiss.IDSelectorBatch(np.ascontiguousarray(banned, np.int64))
        not_banned = faiss.IDSelectorNot(batch)
        keep += [batch, not_banned]
        sel = not_banned if sel is None else faiss.IDSelectorAnd(sel, not_banned)
        keep.append(sel)
    params = index.params
    kk = k * max(1, int(params.k_factor))
    Ds, Is = [], []
    for seg in index.segments:
        if seg.ntotal == 0:
            continue
        fp = backend.faiss_params(index.kind, params, sel)  # fresh per call: IndexIDMap rewrites its selector
        D, I = seg.index.search(queries, kk, params=fp)
        Ds.append(D)
        Is.append(I)
    if not Ds:
        return np.full((len(queries), k), np.nan, np.float32), np.full((len(queries), k), -1, np.int64)
    _, I = merge_results(Ds, Is, kk, backend.raw_ascending(index.segments[0].index))
    return exact_rerank(queries, I, k, matrix, metric)
