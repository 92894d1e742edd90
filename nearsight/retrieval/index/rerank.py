"""Exact re-ranking store: float16 vectors laid out by item id, re-ranked by faiss's own ``IndexRefine``.

Lossy codes (PQ, SQ8, LSH bits) only shortlist candidates; their exact distances come from here. The store is a
faiss ``IndexScalarQuantizer(QT_fp16)`` whose row i holds the vector of item i (ids are dense, so holes are
few and stay zero). Because rows are ids, faiss's ``IndexRefine`` can take a segment's labels as rows directly:
the decode and the distances run in faiss (SIMD, parallel over queries) at the speed of ``IndexRefineFlat``,
with half its memory. Saved as ``<encoder>.vectors.faiss`` and memory-mapped on load (IO_FLAG_MMAP_IFC), so a
compact index keeps only its codes in memory and pages these rows in as queries touch them.

The store is filled by the index's own ``add`` calls, so every id a segment can return has its row.
"""
from __future__ import annotations

import faiss
import numpy as np

from ..errors import NearsightError
from .backend import faiss_metric

MAX_HOLES = 4            # a store may have at most this many rows per stored vector (plus 1M) before it is
HOLE_SLACK = 1 << 20     # considered too sparse for by-id layout (numpy re-ranking from the source instead)


def by_id_layout_ok(ids: np.ndarray) -> bool:
    """Whether ids are dense enough for a row-per-id store."""
    return len(ids) == 0 or (int(ids.min()) >= 0 and int(ids.max()) + 1 <= MAX_HOLES * len(ids) + HOLE_SLACK)


class RerankStore:
    """float16 rows by item id in a faiss IndexScalarQuantizer; ``refiner(base)`` re-ranks a base index."""

    def __init__(self, index: faiss.Index, mapped: bool = False):
        self.index = index
        self.mapped = mapped        # a memory-mapped store is read-only: ``put`` copies it first
        self.dirty = not mapped
        self.file: str | None = None   # the file it was saved to / loaded from

    @classmethod
    def empty(cls, d: int, metric: str) -> "RerankStore":
        return cls(faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss_metric(metric)))

    @property
    def d(self) -> int:
        return int(self.index.d)

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    @property
    def nbytes(self) -> int:
        return self.rows * self.d * 2

    def _view(self) -> np.ndarray:
        """(rows, d) float16 numpy view of the store's memory (owned or mapped)."""
        if self.rows == 0:
            return np.zeros((0, self.d), np.float16)
        return faiss.rev_swig_ptr(self.index.codes.data(), self.nbytes).view(np.float16).reshape(self.rows, self.d)

    def reconstruct(self, ids) -> np.ndarray:
        """Item ids (m,) -> (m, d) float32 (the VectorSource interface, for re-ranking outside faiss)."""
        return self._view()[np.asarray(ids, dtype=np.int64)].astype(np.float32)

    def covers(self, ids: np.ndarray) -> bool:
        return len(ids) == 0 or int(np.max(ids)) < self.rows

    def put(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Store vectors (n, d) under ids (n,) int64, growing the store to max(ids) + 1 rows."""
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return
        need = max(self.rows, int(ids.max()) + 1)
        if self.mapped or need > self.rows:
            self._grow(need)
        self._view()[ids] = vectors
        self.dirty = True

    def _grow(self, rows: int) -> None:
        old = self._view()
        fresh = faiss.IndexScalarQuantizer(self.d, faiss.ScalarQuantizer.QT_fp16, self.index.metric_type)
        # room for growth, so a stream of small adds does not copy the store each time
        capacity = rows if self.mapped else max(rows, int(self.rows * 1.25))
        fresh.codes.resize(capacity * self.d * 2)        # zero-filled: holes read as zero vectors
        fresh.ntotal = capacity
        view = faiss.rev_swig_ptr(fresh.codes.data(), capacity * self.d * 2).view(np.float16)
        view.reshape(capacity, self.d)[:len(old)] = old
        fresh.ntotal = rows if self.mapped else capacity
        self.index, self.mapped = fresh, False

    def refiner(self, base: faiss.Index, metric: str) -> faiss.Index:
        """A faiss IndexRefine that searches ``base`` for k * k_factor candidates and re-ranks them here."""
        if base.d != self.d:
            raise NearsightError(f"re-rank store is {self.d}-d, the index {base.d}-d")
        saved = self.index.ntotal
        # IndexRefine's constructor insists on equal sizes and metrics; search needs neither. An LSH base ranks
        # by Hamming (an L2 index) over an inner-product store: construct on a stand-in, then plug the base in.
        stand_in = base if base.metric_type == self.index.metric_type else faiss.IndexFlat(self.d, self.index.metric_type)
        self.index.ntotal = stand_in.ntotal
        try:
            refine = faiss.IndexRefine(stand_in, self.index)
        finally:
            self.index.ntotal = saved
        if stand_in is not base:
            refine.base_index = base
            refine.referenced_objects.append(base)
        refine.ntotal = saved                    # search checks labels against this: every row is valid
        refine.metric_type = faiss_metric(metric)    # LSH bases rank by Hamming; the refined order is the metric's
        return refine

    def chunk(self, start: int, stop: int) -> faiss.Index:
        """Rows [start, stop) as a stand-alone faiss index (for a file under a size limit)."""
        part = faiss.IndexScalarQuantizer(self.d, faiss.ScalarQuantizer.QT_fp16, self.index.metric_type)
        part.codes.resize((stop - start) * self.d * 2)
        part.ntotal = stop - start
        faiss.rev_swig_ptr(part.codes.data(), (stop - start) * self.d * 2).view(np.float16).reshape(
            stop - start, self.d)[:] = self._view()[start:stop]
        return part

    @classmethod
    def load(cls, paths: list[str], mmap: bool) -> "RerankStore":
        """One file: memory-mapped when asked. Several (a size limit split it): joined in memory."""
        if len(paths) == 1:
            if mmap:
                return cls(faiss.read_index(paths[0], faiss.IO_FLAG_MMAP_IFC), mapped=True)
            store = cls(faiss.read_index(paths[0]), mapped=False)
            store.dirty = False
            return store
        parts = [faiss.read_index(p) for p in paths]
        store = cls(parts[0], mapped=False)
        for part in parts[1:]:
            start = store.rows
            store._grow(start + part.ntotal)
            store.index.ntotal = start + part.ntotal
            store._view()[start:] = faiss.rev_swig_ptr(part.codes.data(), part.ntotal * store.d * 2).view(
                np.float16).reshape(part.ntotal, store.d)
        store.dirty = False
        return store
