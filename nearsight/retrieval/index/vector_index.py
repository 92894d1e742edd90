"""A searchable index over item ids: one or more faiss segments, search parameters, exact re-ranking.

A ``VectorIndex`` is a list of *segments*, each a faiss index holding a disjoint set of item ids with the
same factory key (and, for IVF, the same trained quantizer). One segment is the usual case; more appear when
an index is split to keep each file under a size limit, or when vectors are added to an index whose segments
are memory-mapped read-only (they go into a new in-memory segment). Search runs on every segment and merges,
so for IVF the result equals that of one index (the lists probed are the same).

Re-ranking: lossy codes (PQ, SQ, LSH bits) only shortlist ``k * k_factor`` candidates; their exact distances
come from the collection's float16 embeddings (``source.reconstruct``), so the distances returned are always
faiss's: inner product (higher is closer) for "ip", squared L2 for "l2".

Concurrency: searches share a read lock; ``add``, ``remove`` and ``replace_with`` take it exclusively. A
rebuild happens on a separate object and is swapped in with ``replace_with`` once complete, so queries keep
being answered by the old index meanwhile.
"""
from __future__ import annotations

import itertools
import logging
import math
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import faiss
import numpy as np

from ..errors import InvalidQuery, NearsightError
from . import backend
from .backend import SearchParams
from .plan import STALE_GROWTH, parse_factory
from .source import iter_blocks

LOG = logging.getLogger(__name__)

FLT_MAX = float(np.finfo(np.float32).max)
TOMBSTONE_REBUILD = 0.2      # rebuild once this fraction of the stored vectors are deleted ones


_GENERATIONS = itertools.count()


class _RWLock:
    """Many readers or one writer, cheap for readers (a search must not pay more than a microsecond or so).

    A reader in flight is one entry in ``_readers``: it appends, then looks for a writer; a writer raises
    ``_writer``, then waits for ``_readers`` to empty. Under the GIL list.append / pop are atomic and the
    interpreter's order is sequential, so either the writer sees the reader's entry or the reader sees the
    writer's flag (then steps back and queues on ``_write``): two C calls a search instead of four lock
    round trips (0.15 vs 0.7 us)."""

    def __init__(self):
        self._write = threading.Lock()     # held by the writer; readers that met its flag queue here
        self._readers: list = []
        self._writer = False
        # changes whenever a writer leaves: what readers cached (VectorIndex._plain) is stale once it does.
        # One counter for all locks, so a state moved to another index (replace_with) never matches by chance.
        self.generation = next(_GENERATIONS)

    def acquire_shared(self) -> None:
        readers = self._readers
        while True:
            readers.append(None)
            if not self._writer:
                return
            readers.pop()
            with self._write:
                pass

    def release_shared(self) -> None:
        self._readers.pop()

    @contextmanager
    def shared(self):
        self.acquire_shared()
        try:
            yield
        finally:
            self.release_shared()

    @contextmanager
    def exclusive(self):
        self._write.acquire()
        try:
            self._writer = True            # new readers now queue on _write
            while self._readers:
                time.sleep(0.0002)
            yield
        finally:
            self.generation = next(_GENERATIONS)
            self._writer = False
            self._write.release()


@dataclass
class Segment:
    """One faiss index with its own ids. ``writable`` is False for memory-mapped ones (never add to those);
    ``dirty`` means it differs from its file (``file``, a name inside the indexes directory)."""
    index: faiss.Index
    writable: bool = True
    dirty: bool = True
    file: str | None = None
    refiner: object = None          # faiss IndexRefine over this segment and the store it was made for
    refiner_for: object = None
    on_gpu: bool = False
    ivfdata: str | None = None      # name of the merged on-disk lists file this segment maps (ondisk.py)

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)


@dataclass
class _State:
    segments: list
    params: SearchParams
    info: dict
    template: np.ndarray | None
    tombstones: np.ndarray
    selector: object = None        # faiss IDSelectorNot over the tombstones (kept alive here)
    selector_batch: object = None
    store: object = None           # RerankStore: float16 rows by id for exact re-ranking
    params_cache: dict = field(default_factory=dict)   # faiss SearchParameters objects, read-only once made
    plain: tuple | None = None     # (lock generation, search function): the default search, see _plain


def as_queries(queries, dim: int) -> np.ndarray:
    """Queries (nq, d) or (d,) of any numeric dtype -> (nq, d) float32 C-contiguous; finiteness is checked by
    ``check_finite`` (or, on the default search path, after it: see ``_maybe_not_finite``)."""
    if type(queries) is np.ndarray and queries.dtype == np.float32 and queries.ndim == 2 \
            and queries.shape[1] == dim and queries.flags.c_contiguous:
        return queries          # the common case, without copies
    q = np.asarray(queries)
    if q.ndim == 1:
        q = q[None, :]
    if q.ndim != 2 or q.shape[1] != dim:
        raise InvalidQuery(f"queries must be (nq, {dim}), got shape {np.shape(queries)}")
    if not np.issubdtype(q.dtype, np.number):
        raise InvalidQuery(f"queries must be numbers, got dtype {q.dtype}")
    return np.ascontiguousarray(q, dtype=np.float32)


def check_finite(q: np.ndarray) -> None:
    # one BLAS dot instead of an isfinite pass: NaN and inf propagate into it; a finite overflow (|x| ~ 1e19)
    # falls back to the exact check. The method on a flat view costs half of np.vdot's call.
    flat = q.ravel()
    if not math.isfinite(flat.dot(flat)) and not np.isfinite(q).all():
        raise InvalidQuery("queries contain NaN or infinite values")


def _maybe_not_finite(D: np.ndarray, I: np.ndarray) -> bool:
    """Whether a default search's answer could come from a query with NaN or inf in it. Every index type
    answers such a query with no item (-1) or a non-finite distance first (tested for each), so only those
    answers have their queries checked: a single query then pays two scalar reads, not a pass over it
    (which, cold between searches, cost 3-4 us of a 6 us wrapper)."""
    if len(I) == 1:
        return I[0, 0] < 0 or not math.isfinite(D[0, 0])
    return not (np.isfinite(D[:, 0]).all() and (I[:, 0] >= 0).all())


def _check_k(k) -> int:
    if type(k) is int and k >= 1:
        return k
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise InvalidQuery(f"k must be a positive int, got {k!r}")
    return int(k)


def worst(metric_ascending: bool) -> float:
    return FLT_MAX if metric_ascending else -FLT_MAX


def merge_results(Ds: list, Is: list, k: int, ascending: bool) -> tuple[np.ndarray, np.ndarray]:
    """Merge per-segment (nq, k_i) results into the best k per query; -1 ids sort last."""
    if len(Ds) == 1 and Ds[0].shape[1] >= k:
        return Ds[0][:, :k], Is[0][:, :k]
    D = np.concatenate(Ds, axis=1)
    I = np.concatenate(Is, axis=1)
    key = np.where(I < 0, np.inf, D if ascending else -D.astype(np.float64))
    order = np.argsort(key, axis=1, kind="stable")[:, :k]
    D, I = np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
    if D.shape[1] < k:
        pad = k - D.shape[1]
        D = np.pad(D, ((0, 0), (0, pad)), constant_values=worst(ascending))
        I = np.pad(I, ((0, 0), (0, pad)), constant_values=-1)
    return D, I


def exact_rerank(queries: np.ndarray, candidates: np.ndarray, k: int, source, metric: str,
                 chunk_bytes: int = 32 << 20) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k among candidate ids. queries (nq, d) float32, candidates (nq, c) int64 (-1 = none).

    Each candidate vector is fetched once (``source.reconstruct`` on the unique ids), then distances are
    computed per chunk of queries. Returns D (nq, k) float32 (faiss convention) and I (nq, k) int64.
    """
    nq, c = candidates.shape
    d = queries.shape[1]
    ascending = metric != "ip"
    valid = candidates >= 0
    uids = np.unique(candidates[valid])
    D = np.full((nq, k), worst(ascending), dtype=np.float32)
    I = np.full((nq, k), -1, dtype=np.int64)
    if not len(uids):
        return D, I
    X = source.reconstruct(uids)
    pos = np.searchsorted(uids, np.where(valid, candidates, uids[0]))
    xnorm = np.einsum("ij,ij->i", X, X) if ascending else None
    step = max(1, chunk_bytes // max(1, c * d * 4))
    for s in range(0, nq, step):
        q = queries[s:s + step]
        P = pos[s:s + step]
        ip = np.einsum("qd,qcd->qc", q, X[P])
        if ascending:
            dist = xnorm[P] - 2 * ip + np.einsum("ij,ij->i", q, q)[:, None]
            np.maximum(dist, 0, out=dist)
            key = np.where(valid[s:s + step], dist, np.inf)
        else:
            dist = ip
            key = np.where(valid[s:s + step], -dist, np.inf)
        kk = min(k, c)
        part = np.argpartition(key, kk - 1, axis=1)[:, :kk] if kk < c else np.tile(np.arange(c), (len(q), 1))
        order = np.take_along_axis(part, np.argsort(np.take_along_axis(key, part, 1), axis=1, kind="stable"), 1)
        ok = np.take_along_axis(valid[s:s + step], order, 1)
        D[s:s + step, :kk] = np.where(ok, np.take_along_axis(dist, order, 1), worst(ascending))
        I[s:s + step, :kk] = np.where(ok, np.take_along_axis(candidates[s:s + step], order, 1), -1)
    return D, I


class VectorIndex:
    """Approximate (or exact) k-NN over item ids. Made by ``build_index`` or ``load_index``.

    - ``search(queries (nq, d) float32, k) -> (D (nq, k) float32, I (nq, k) int64)``; -1 ids pad.
    - ``add(vectors (n, d), ids (n,) int64)``: incremental, no rebuild.
    - ``remove(ids)``: deleted items never come back from search.
    - ``needs_rebuild`` / ``rebuild_reason``: IVF training stale (10x growth) or many deletions.
    - ``save(collection_dir, encoder)``: ``DIR/indexes/<encoder>.faiss`` + ``<encoder>.json``.
    """

    def __init__(self, segments: list, *, factory: str, metric: str, dim: int, params: SearchParams | None = None,
                 rerank: bool = False, source=None, template: np.ndarray | None = None,
                 capacity: int | None = None, info: dict | None = None, tombstones=None,
                 ef_construction: int | None = None, store=None):
        if metric not in ("ip", "l2"):
            raise NearsightError(f"metric must be 'ip' or 'l2', got {metric!r}")
        self.factory = factory
        self.kind = parse_factory(factory).kind
        self.metric = metric
        self.dim = int(dim)
        self.rerank = bool(rerank)
        self.source = source
        self.capacity = int(capacity) if capacity else None
        self.ef_construction = ef_construction
        self._lock = _RWLock()
        self._gpu = False
        self._s = _State(list(segments), params or SearchParams(), dict(info or {}), template,
                         np.zeros(0, np.int64), store=store)
        if tombstones is not None and len(tombstones):
            self._set_tombstones(self._s, np.asarray(tombstones, dtype=np.int64))

    # -- properties -------------------------------------------------------------------------------
    @property
    def segments(self) -> list:
        return list(self._s.segments)

    @property
    def params(self) -> SearchParams:
        return self._s.params

    @property
    def info(self) -> dict:
        """Metadata saved in ``<encoder>.json``: build and tuning figures (measured recall, latency)."""
        return self._s.info

    @property
    def stored(self) -> int:
        """Vectors held in the segments, deleted (tombstoned) ones included."""
        return sum(s.ntotal for s in self._s.segments)

    @property
    def ntotal(self) -> int:
        """Live vectors: stored minus tombstoned."""
        return self.stored - len(self._s.tombstones)

    @property
    def tombstones(self) -> np.ndarray:
        return self._s.tombstones

    @property
    def max_id(self) -> int:
        return int(self._s.info.get("max_id", -1))

    @property
    def rebuild_reason(self) -> str | None:
        """Why this index should be rebuilt, or None."""
        info = self._s.info
        if self.kind == "ivf":
            base = int(info.get("trained_ntotal") or 0)
            if base and self.stored >= STALE_GROWTH * base:
                return (f"IVF training is stale: trained when the index held {base} vectors, "
                        f"it now holds {self.stored} (>= {STALE_GROWTH:g}x)")
        dead = len(self._s.tombstones)
        if self.stored and dead > TOMBSTONE_REBUILD * self.stored:
            return f"{dead} of {self.stored} stored vectors are deleted items"
        return None

    @property
    def needs_rebuild(self) -> bool:
        return self.rebuild_reason is not None

    def set_params(self, params: SearchParams) -> None:
        with self._lock.exclusive():
            self._s.params = params
            if len(self._s.params_cache) > 256:
                self._s.params_cache.clear()
            self._s.info["search_params"] = params.to_dict()

    def update_info(self, **fields) -> None:
        with self._lock.exclusive():
            self._s.info.update(fields)

    # -- search -----------------------------------------------------------------------------------
    def search(self, queries, k: int, params: SearchParams | None = None, rerank: bool | None = None
               ) -> tuple[np.ndarray, np.ndarray]:
        """k nearest items of each query. queries (nq, d) or (d,) float; returns D (nq, k) float32 and
        I (nq, k) int64 item ids, best first, -1 where fewer than k exist.

        ``params`` overrides the tuned search parameters for this call; ``rerank=False`` returns the index's
        own distances (PQ estimates; Hamming bit counts for LSH) without touching the embeddings.
        """
        q = as_queries(queries, self.dim)
        k = _check_k(k)
        lock = self._lock
        lock.acquire_shared()
        try:
            s = self._s
            if params is None and rerank is None:
                plain = s.plain
                if plain is None or plain[0] != lock.generation:
                    plain = s.plain = (lock.generation, self._plain(s))
                if plain[1] is not None:
                    D, I = plain[1](q, k)
                    if _maybe_not_finite(D, I):
                        check_finite(q)
                    return D, I
            check_finite(q)
            p = params or s.params
            do_rerank = self.rerank if rerank is None else bool(rerank)
            if do_rerank and s.store is not None and not self._gpu:
                return self._search_refined(s, q, k, p)
            rows = s.store if s.store is not None else self.source      # GPU segments re-rank on the CPU
            if do_rerank and rows is None:
                raise NearsightError(f"index {self.factory!r} re-ranks candidates from the embeddings; "
                                     "open it with the collection's vectors (source=)")
            kk = k * max(1, int(p.k_factor)) if do_rerank else k
            D, I = self._search_segments(s, q, kk, p)
            if do_rerank:
                return exact_rerank(q, I, k, rows, self.metric)
            return D[:, :k], I[:, :k]
        finally:
            lock.release_shared()

    def _plain(self, s: _State):
        """The default search (tuned parameters, default re-ranking) of a one-segment CPU index as one direct
        faiss call: no per-call parameter lookups and not faiss's own Python wrapper (shape checks and
        conversions that ``as_queries`` has done already), which is most of what a single query costs above
        raw faiss. None where the general path is needed (several segments, GPU, numpy re-ranking).
        Made by a reader, kept for as long as the lock's generation says no writer (add, remove, set_params,
        replace_with, to_gpu) has changed anything it captured."""
        if len(s.segments) != 1 or self._gpu or s.segments[0].ntotal == 0:
            return None
        seg = s.segments[0]
        if self.rerank:
            if s.store is None:
                return None       # numpy re-ranking
            if seg.refiner is None or seg.refiner_for is not s.store.index:
                seg.refiner, seg.refiner_for = s.store.refiner(seg.index, self.metric), s.store.index
            target = seg.refiner
            fp = faiss.IndexRefineSearchParameters()
            fp.k_factor = float(max(1, int(s.params.k_factor)))
            base = self._faiss_params(s, s.params)
            if base is not None:
                fp.base_index_params = base
                fp.referenced_base = base
        else:
            target, fp = seg.index, self._faiss_params(s, s.params)
            outer = faiss.downcast_index(seg.index)
            if s.selector is None and isinstance(outer, faiss.IndexIDMap):
                return self._plain_positions(outer, fp)
        search_c, ptr = target.search_c, faiss.swig_ptr
        mixed = self.rerank and self._mixed_metric(seg)

        def plain(q: np.ndarray, k: int, _keep=(target, fp)):
            n = len(q)
            D = np.empty((n, k), np.float32)
            I = np.empty((n, k), np.int64)
            search_c(n, ptr(q), k, ptr(D), ptr(I), fp)
            return self._repair_padded(s, seg, q, D, I, s.params) if mixed else (D, I)
        return plain

    def _mixed_metric(self, seg: Segment) -> bool:
        """Whether the segment's index ranks in another order than the metric (a PCA graph walks by L2)."""
        return backend.raw_ascending(seg.index) != (self.metric != "ip")

    def _repair_padded(self, s: _State, seg: Segment, q: np.ndarray, D: np.ndarray, I: np.ndarray,
                       p: SearchParams) -> tuple[np.ndarray, np.ndarray]:
        """IndexRefine over a base of the other order (an L2 PCA walk or Hamming LSH, inner-product scores) keeps
        the slots the base could not fill (fewer live vectors than k * k_factor, tombstones) with the base's
        padding distance, +FLT_MAX, which an inner-product order ranks above every real candidate. Rows with such
        a slot are re-ranked exactly here instead."""
        bad = (I < 0).any(axis=1)
        if bad.any():
            _, candidates = seg.index.search(q[bad], I.shape[1] * max(1, int(p.k_factor)),
                                             params=self._faiss_params(s, p))
            D[bad], I[bad] = exact_rerank(q[bad], candidates, I.shape[1], s.store, self.metric)
        return D, I

    @staticmethod
    def _plain_positions(outer, fp):
        """The default search of an IndexIDMap segment (HNSW, Flat, LSH) without its id translation: faiss maps
        positions to ids in an OpenMP loop, and for one query that parallel region costs more than the search
        itself on a busy machine (Fashion-MNIST at load 10 on two cores: 0.1k single queries/s through the
        IndexIDMap, 1.2k on the bare HNSW). Search the inner index; map positions with numpy. Only without
        tombstones: a selector on item ids needs the IndexIDMap's translation."""
        inner = faiss.downcast_index(outer.index)
        # a copy with -1 appended: position -1 (no result) indexes that last entry and stays -1
        ids = np.append(faiss.rev_swig_ptr(outer.id_map.data(), outer.id_map.size()), np.int64(-1)) \
            if outer.id_map.size() else np.full(1, -1, np.int64)
        search_c, ptr = inner.search_c, faiss.swig_ptr

        def plain(q: np.ndarray, k: int, _keep=(outer, inner, fp)):
            n = len(q)
            D = np.empty((n, k), np.float32)
            I = np.empty((n, k), np.int64)
            search_c(n, ptr(q), k, ptr(D), ptr(I), fp)
            return D, ids[I]
        return plain

    def _faiss_params(self, s: _State, p: SearchParams):
        key = ("base", p)
        fp = s.params_cache.get(key, False)
        if fp is False:
            fp = s.params_cache[key] = backend.faiss_params(self.kind, p, s.selector)
        return fp

    def _search_refined(self, s: _State, q: np.ndarray, k: int, p: SearchParams):
        """Each segment shortlists k * k_factor candidates and faiss re-ranks them from the float16 store."""
        Ds, Is = [], []
        for seg in s.segments:
            if seg.ntotal == 0:
                continue
            if seg.refiner is None or seg.refiner_for is not s.store.index:
                seg.refiner, seg.refiner_for = s.store.refiner(seg.index, self.metric), s.store.index
            kf = float(max(1, int(p.k_factor)))
            key = ("refine", p, kf)
            rp = s.params_cache.get(key)
            if rp is None:
                rp = faiss.IndexRefineSearchParameters()
                rp.k_factor = kf
                base = self._faiss_params(s, p)
                if base is not None:
                    rp.base_index_params = base
                    rp.referenced_base = base          # keep the base parameters alive with it
                s.params_cache[key] = rp
            D, I = seg.refiner.search(q, k, params=rp)
            if self._mixed_metric(seg):
                D, I = self._repair_padded(s, seg, q, D, I, p)
            Ds.append(D)
            Is.append(I)
        if not Ds:
            asc = self.metric != "ip"
            return np.full((len(q), k), worst(asc), np.float32), np.full((len(q), k), -1, np.int64)
        return merge_results(Ds, Is, k, self.metric != "ip")

    def _search_segments(self, s: _State, q: np.ndarray, kk: int, p: SearchParams):
        Ds, Is = [], []
        for seg in s.segments:
            if seg.on_gpu:
                D, I = self._search_gpu(seg, s, q, kk, p)
            else:
                fp = self._faiss_params(s, p)
                D, I = seg.index.search(q, kk, params=fp) if fp is not None else seg.index.search(q, kk)
            Ds.append(D)
            Is.append(I)
        if len(Ds) == 1:
            return Ds[0], Is[0]
        if not Ds:
            asc = self.metric != "ip"
            return (np.full((len(q), kk), worst(asc), np.float32), np.full((len(q), kk), -1, np.int64))
        return merge_results(Ds, Is, kk, backend.raw_ascending(s.segments[0].index))

    def _search_gpu(self, seg: Segment, s: _State, q: np.ndarray, kk: int, p: SearchParams):
        """faiss-gpu takes nprobe from SearchParametersIVF but no IDSelector: over-fetch by the tombstones
        (at most 1024 more) and filter them here."""
        extra = min(len(s.tombstones), 1024)
        fp = backend.faiss_params(self.kind, p, None) if self.kind == "ivf" else None
        D, I = seg.index.search(q, kk + extra, params=fp) if fp is not None else seg.index.search(q, kk + extra)
        if extra:
            dead = np.isin(I, s.tombstones)
            order = np.argsort(dead, axis=1, kind="stable")
            D, I = np.take_along_axis(D, order, 1), np.take_along_axis(I, order, 1)
            I[np.take_along_axis(dead, order, 1)] = -1
        return D[:, :kk], I[:, :kk]

    # -- updates ----------------------------------------------------------------------------------
    def _new_segment(self, s: _State) -> Segment:
        if s.template is not None:
            index = backend.deserialize(s.template)
        else:
            index = backend.make_index(self.factory, self.dim, self.metric, self.ef_construction)
            if not index.is_trained:
                raise NearsightError(f"index {self.factory!r} needs training and has no trained template")
        if self._gpu:
            moved = backend.to_gpu(index)
            return Segment(moved, writable=True, dirty=True, on_gpu=backend.is_gpu(moved))
        return Segment(index, writable=True, dirty=True)

    def add(self, vectors, ids, block: int = 65536) -> int:
        """Add vectors (n, d) (any float dtype, or an iterable of blocks) under item ids (n,) int64.

        Fills the last writable segment up to ``capacity`` vectors, then opens new segments; memory-mapped
        segments are never written. Returns the number of vectors added.
        """
        ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
        if hasattr(vectors, "shape") and (vectors.ndim != 2 or vectors.shape[1] != self.dim):
            raise InvalidQuery(f"vectors must be (n, {self.dim}), got shape {vectors.shape}")
        if len(ids) == 0:
            return 0
        if (ids < 0).any():
            raise InvalidQuery(f"item ids must be >= 0, got {int(ids.min())}")
        if len(np.unique(ids)) != len(ids):
            raise InvalidQuery("ids to add contain duplicates")
        added = 0
        with self._lock.exclusive():
            s = self._s
            if int(ids.min()) <= int(s.info.get("max_id", -1)):
                present = np.concatenate([backend.indexed_ids(g.index) for g in s.segments] or [np.zeros(0, np.int64)])
                clash = np.intersect1d(ids, present)
                if len(clash):
                    raise InvalidQuery(f"item id {int(clash[0])} is already in the index")
            for x, bid in iter_blocks(vectors, ids, block):
                if x.shape[1] != self.dim:
                    raise InvalidQuery(f"vectors must be (n, {self.dim}), got a block of shape {x.shape}")
                if s.store is not None:
                    s.store.put(bid, x)        # first: a segment must never return an id without its row
                start = 0
                while start < len(x):
                    seg = s.segments[-1] if s.segments else None
                    if seg is None or not seg.writable or (self.capacity and seg.ntotal >= self.capacity):
                        seg = self._new_segment(s)
                        s.segments.append(seg)
                    room = len(x) - start if not self.capacity else min(len(x) - start, self.capacity - seg.ntotal)
                    seg.index.add_with_ids(x[start:start + room], bid[start:start + room])
                    seg.dirty = True
                    start += room
                    added += room
            s.info["max_id"] = max(int(s.info.get("max_id", -1)), int(ids.max()))
            s.info["ntotal"] = self.stored - len(s.tombstones)
        return added

    def remove(self, ids) -> int:
        """Delete item ids. Writable IVF / Flat / LSH segments drop them; HNSW graphs and memory-mapped
        segments cannot, so their ids become tombstones that search filters out. Returns how many were held."""
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not len(ids):
            return 0
        with self._lock.exclusive():
            s = self._s
            held = np.concatenate([backend.indexed_ids(g.index) for g in s.segments] or [np.zeros(0, np.int64)])
            ids = np.setdiff1d(np.intersect1d(ids, held), s.tombstones)
            if not len(ids):
                return 0
            left = ids
            for seg in s.segments:
                if not seg.writable or not len(left):
                    continue
                mine = np.intersect1d(left, backend.indexed_ids(seg.index))
                if not len(mine):
                    continue
                try:
                    seg.index.remove_ids(faiss.IDSelectorBatch(mine))
                    seg.dirty = True
                    left = np.setdiff1d(left, mine)
                except RuntimeError:
                    pass   # HNSW cannot delete: tombstones
            if len(left):
                self._set_tombstones(s, np.union1d(s.tombstones, left))
            s.info["ntotal"] = self.stored - len(s.tombstones)
            return int(len(ids))

    @staticmethod
    def _set_tombstones(s: _State, tombstones: np.ndarray) -> None:
        s.tombstones = np.ascontiguousarray(tombstones, dtype=np.int64)
        s.params_cache.clear()       # cached parameters carry the old selector
        if len(s.tombstones):
            s.selector_batch = faiss.IDSelectorBatch(s.tombstones)
            s.selector = faiss.IDSelectorNot(s.selector_batch)
        else:
            s.selector_batch = s.selector = None

    def replace_with(self, other: "VectorIndex") -> None:
        """Swap in another index's content (a finished rebuild); waits only for searches in flight."""
        with self._lock.exclusive():
            for name in ("factory", "kind", "metric", "dim", "rerank", "capacity", "ef_construction", "_gpu"):
                setattr(self, name, getattr(other, name))
            if other.source is not None:
                self.source = other.source
            self._s = other._s

    def to_gpu(self) -> "VectorIndex":
        """Move the segments faiss-gpu supports to the GPU(s) for search; a no-op without a GPU."""
        if backend.gpu_count() == 0:
            return self
        with self._lock.exclusive():
            self._gpu = True
            for seg in self._s.segments:
                if not seg.on_gpu:
                    seg.index = backend.to_gpu(seg.index)
                    seg.on_gpu = backend.is_gpu(seg.index)
            self._s.params_cache.clear()
        return self

    # -- persistence ------------------------------------------------------------------------------
    def save(self, collection_dir: str, encoder: str, max_file_bytes=None) -> dict:
        """Write ``DIR/indexes/<encoder>.faiss`` (+ ``<encoder>.NNN.faiss`` segments) and ``<encoder>.json``
        atomically; returns the metadata written."""
        from .storage import save_index
        return save_index(self, collection_dir, encoder, max_file_bytes=max_file_bytes)

    def describe(self) -> dict:
        """The metadata of this index as saved in ``<encoder>.json``."""
        s = self._s
        info = dict(s.info)
        info.update(factory=self.factory, kind=self.kind, metric=self.metric, dim=self.dim, rerank=self.rerank,
                    ntotal=self.ntotal, stored=self.stored, segments=len(s.segments),
                    search_params=s.params.to_dict(), tombstones=int(len(s.tombstones)),
                    needs_rebuild=self.needs_rebuild, rebuild_reason=self.rebuild_reason)
        if self.capacity:
            info["segment_capacity"] = self.capacity
        if s.store is not None:
            info["rerank_store"] = {"rows": s.store.rows, "bytes": s.store.nbytes, "dtype": "float16"}
        return info

    def memory_bytes(self) -> int:
        """Bytes of the segments as serialized (what they take in memory when not memory-mapped)."""
        with self._lock.shared():
            return int(sum(len(backend.serialize(seg.index)) for seg in self._s.segments))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.factory!r}, metric={self.metric!r}, dim={self.dim}, "
                f"ntotal={self.ntotal}, segments={len(self._s.segments)}, params={self.params.to_dict()})")


class ExactIndex(VectorIndex):
    """Exact search (faiss IndexFlatIP / IndexFlatL2) over a source's vectors, with the VectorIndex interface;
    what a collection searches when no index has been built."""

    def __init__(self, source, metric: str, block: int = 65536):
        d = int(source.vectors.shape[1])
        index = backend.make_index("Flat", d, metric)
        t0 = time.perf_counter()
        for x, bid in iter_blocks(source.vectors, source.ids, block):
            index.add_with_ids(x, bid)
        ids = np.asarray(source.ids)
        super().__init__([Segment(index)], factory="Flat", metric=metric, dim=d, source=source,
                         info={"exact": True, "recall_at_k": 1.0, "max_id": int(ids.max()) if len(ids) else -1,
                               "build_seconds": round(time.perf_counter() - t0, 3), "ntotal": int(len(ids))})
