"""ANN index layer: automatic FAISS / LSH index choice, tuned to a measured recall, arrays in / arrays out.

Public API (faiss is imported only when a name that needs it is first used):

- ``plan_index(n, d, metric, max_memory_bytes=None, mode="auto") -> IndexPlan``; ``parse_size("2G")``
- ``build_index(vectors, ids, metric, plan, *, source=None, use_gpu=None, max_file_bytes=None) -> VectorIndex``
- ``choose_degree(plan, vectors, ids, target_recall=0.95, k=10) -> IndexPlan``: an HNSW plan's M by measurement
- ``tune(index, source, target_recall=0.95, k=10, n_queries=500) -> dict``
- ``VectorIndex.search(queries, k) -> (D, I)``, ``.add(vectors, ids)``, ``.remove(ids)``, ``.needs_rebuild``,
  ``.save(collection_dir, encoder)``, ``.replace_with(other)``
- ``load_index(collection_dir, encoder, source=None, mmap=True, *, metric=None) -> VectorIndex``
- ``ExactIndex(source, metric)``
- ``build_collection_index(collection_dir, encoder, source, factory=None, auto=True, target_recall=0.95, k=10,
  max_memory=None, ...) -> report dict``
- ``VectorSource`` (protocol), ``ArraySource``, ``SearchParams``, ``exact_knn``, ``recall_at_k``
"""
from __future__ import annotations

from importlib import import_module

from .plan import IndexPlan, parse_size, plan_from_factory, plan_index
from .source import ArraySource, VectorSource

_LAZY = {
    "build_index": ".build",
    "tune": ".tuning",
    "exact_knn": ".tuning",
    "recall_at_k": ".tuning",
    "VectorIndex": ".vector_index",
    "ExactIndex": ".vector_index",
    "SearchParams": ".backend",
    "gpu_count": ".backend",
    "load_index": ".storage",
    "save_index": ".storage",
    "read_meta": ".storage",
    "sync_with_source": ".storage",
    "build_collection_index": ".collection_index",
    "choose_degree": ".degree",
}

__all__ = ["IndexPlan", "parse_size", "plan_from_factory", "plan_index", "ArraySource", "VectorSource",
           *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
