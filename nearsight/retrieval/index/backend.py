"""The few places that talk to faiss directly: making, wrapping, reading, moving to GPU and searching one index.

Everything above this module deals in numpy arrays, factory keys and ``SearchParams``.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import faiss
import numpy as np

from .plan import parse_factory

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class SearchParams:
    """Search-time knobs. ``nprobe`` (IVF lists visited), ``efSearch`` (HNSW beam), ``k_factor`` (re-rank
    depth: k * k_factor candidates get exact distances; 1 = no extra depth). None = the index's own value."""
    nprobe: int | None = None
    efSearch: int | None = None
    k_factor: int = 1

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict | None) -> "SearchParams":
        d = d or {}
        return cls(nprobe=d.get("nprobe"), efSearch=d.get("efSearch"), k_factor=int(d.get("k_factor", 1)))


def faiss_metric(metric: str) -> int:
    return faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2


def make_index(factory: str, d: int, metric: str, ef_construction: int | None = None) -> faiss.Index:
    """An empty (maybe untrained) faiss index for ``factory`` that accepts ``add_with_ids``.

    LSH ranks by Hamming distance whatever the metric (faiss only builds it as an L2 index); the exact metric
    comes back with re-ranking.
    """
    parts = parse_factory(factory)
    # a PCA-reduced graph walks by L2: faiss's PCA centres the vectors, which keeps L2 distances (and so the
    # inner-product order of unit vectors) but not inner products; re-ranking restores the metric's own scores
    l2 = parts.kind == "lsh" or parts.pca
    index = faiss.index_factory(d, factory, faiss.METRIC_L2 if l2 else faiss_metric(metric))
    hnsw = _hnsw_of(index)
    if hnsw is not None and ef_construction:
        hnsw.hnsw.efConstruction = int(ef_construction)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.cp.niter = 10            # faiss's IVF default; more iterations barely move recall after re-ranking
    outer = faiss.downcast_index(index)
    if isinstance(outer, faiss.IndexPreTransform):
        for i in range(outer.chain.size()):
            vt = faiss.downcast_VectorTransform(outer.chain.at(i))
            if isinstance(vt, faiss.OPQMatrix):
                # faiss's 50 iterations on 65k points take minutes at d=512 on two cores; 20 on 32k keep
                # most of the gain
                vt.niter = 20
                vt.max_train_points = 32768
    for part in (ivf, faiss.downcast_index(index)):
        if part is not None and hasattr(part, "do_polysemous_training"):
            # the factory turns on polysemous training for 8-bit PQ: slow (annealing), unused by our search
            part.do_polysemous_training = False
    if ivf is None:
        index = faiss.IndexIDMap(index)   # ids of the collection, not insertion order
    return index


def _hnsw_of(index):
    index = faiss.downcast_index(index)
    for wrapper in (faiss.IndexIDMap, faiss.IndexPreTransform):
        if isinstance(index, wrapper):
            index = faiss.downcast_index(index.index)
    return index if hasattr(index, "hnsw") else None


def raw_ascending(index: faiss.Index) -> bool:
    """Whether smaller raw distances are closer (L2, Hamming) for this faiss index."""
    return index.metric_type != faiss.METRIC_INNER_PRODUCT


def faiss_params(kind: str, params: SearchParams, selector=None):
    """A faiss SearchParameters object (or None) for one search call; thread-safe, unlike setting attributes."""
    if kind == "ivf":
        p = faiss.SearchParametersIVF()
        if params.nprobe:
            p.nprobe = int(params.nprobe)
    elif kind == "hnsw":
        p = faiss.SearchParametersHNSW()
        if params.efSearch:
            p.efSearch = int(params.efSearch)
    elif selector is not None:
        p = faiss.SearchParameters()
    else:
        return None
    if selector is not None:
        p.sel = selector
    return p


def indexed_ids(index: faiss.Index) -> np.ndarray:
    """All ids an index holds, (ntotal,) int64, unordered; reads an IVF's lists (memory-mapped ones too)."""
    index = faiss.downcast_index(index)
    if isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        return faiss.vector_to_array(index.id_map).astype(np.int64, copy=False)
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return np.arange(index.ntotal, dtype=np.int64)
    invlists = ivf.invlists
    out = []
    for lst in range(invlists.nlist):
        size = invlists.list_size(lst)
        if size:
            ids_ptr = invlists.get_ids(lst)
            out.append(faiss.rev_swig_ptr(ids_ptr, size).copy())
            invlists.release_ids(lst, ids_ptr)
    return np.concatenate(out).astype(np.int64, copy=False) if out else np.zeros(0, np.int64)


def nlist_of(index: faiss.Index) -> int:
    ivf = faiss.try_extract_index_ivf(index)
    return int(ivf.nlist) if ivf is not None else 0


def serialize(index: faiss.Index) -> np.ndarray:
    return faiss.serialize_index(to_cpu(index))


def deserialize(blob: np.ndarray) -> faiss.Index:
    return faiss.deserialize_index(blob)


def read_index(path: str, mmap: bool, factory: str, ivfdata: str | None = None) -> tuple[faiss.Index, bool]:
    """Read an index file; with ``mmap`` the big arrays stay in the file. Returns (index, memory_mapped).

    faiss has two mappings: IO_FLAG_MMAP turns IVF array inverted lists into read-only on-disk lists (IVF-PQ,
    IVF-SQ, IVF-Flat; the IVF-PQ precomputed table is skipped too, it would cost nlist x 256 x m floats);
    IO_FLAG_MMAP_IFC maps flat code arrays in place (Flat, LSH, HNSW storage). Fast-scan lists have no mapped
    form and are read into memory. A mapped index must never be added to or removed from (faiss aborts the
    process on a mapped vector), so the caller marks it read-only.

    ``ivfdata``: the name to read an out-of-memory build's merged lists by (``ondisk.py``); such an index is
    always mapped, whatever ``mmap`` says, since its lists need not fit in memory.
    """
    if ivfdata is not None:
        from .ondisk import map_lists

        index = faiss.read_index(path, faiss.IO_FLAG_SKIP_IVF_DATA | faiss.IO_FLAG_READ_ONLY
                                 | faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE)
        map_lists(index, ivfdata)
        return index, True
    if not mmap:
        return faiss.read_index(path), False
    parts = parse_factory(factory)
    if parts.kind == "ivf":
        if parts.fast_scan:
            return faiss.read_index(path), False
        index = faiss.read_index(path, faiss.IO_FLAG_MMAP | faiss.IO_FLAG_SKIP_PRECOMPUTE_TABLE)
        lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(index).invlists)
        return index, "OnDisk" in type(lists).__name__
    try:
        return faiss.read_index(path, faiss.IO_FLAG_MMAP_IFC), True
    except RuntimeError:
        return faiss.read_index(path), False


# -- GPU ------------------------------------------------------------------------------------------

def gpu_count() -> int:
    """GPUs faiss can use: 0 with faiss-cpu (which lacks the GPU symbols)."""
    if not hasattr(faiss, "StandardGpuResources"):
        return 0
    try:
        return int(faiss.get_num_gpus())
    except Exception:  # noqa: BLE001 - a broken CUDA install reads as "no GPU"
        return 0


def want_gpu(use_gpu: bool | None) -> bool:
    return gpu_count() > 0 if use_gpu is None else bool(use_gpu) and gpu_count() > 0


def to_gpu(index: faiss.Index) -> faiss.Index:
    """A GPU copy of ``index`` on all GPUs, or ``index`` itself where faiss-gpu lacks the type (HNSW,
    fast-scan PQ, LSH); float16 lookup tables keep large PQ codes within shared memory."""
    try:
        co = faiss.GpuMultipleClonerOptions()
        co.useFloat16 = True
        co.useFloat16LookupTables = True
        return faiss.index_cpu_to_all_gpus(index, co)
    except (RuntimeError, AttributeError) as exc:
        LOG.info("index type %s stays on the CPU: %s", type(faiss.downcast_index(index)).__name__, exc)
        return index


def is_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(faiss.downcast_index(index)).__name__ or "IndexReplicas" in type(
        faiss.downcast_index(index)).__name__


def to_cpu(index: faiss.Index) -> faiss.Index:
    if gpu_count() and is_gpu(index):
        return faiss.index_gpu_to_cpu(index)
    return index


def gpu_clustering(index: faiss.Index):
    """Train an IVF's coarse k-means on the GPU (the index itself may be a CPU-only type like fast-scan).
    Returns the GPU clustering index: the caller keeps it alive until training is done (faiss holds a bare
    pointer), then clears ``clustering_index``."""
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        return None
    flat = faiss.IndexFlatL2(ivf.d) if ivf.metric_type == faiss.METRIC_L2 else faiss.IndexFlatIP(ivf.d)
    gpu = faiss.index_cpu_to_all_gpus(flat)
    ivf.clustering_index = gpu
    return gpu
