"""Build a VectorIndex from vectors and ids following an IndexPlan: sample, train, add in blocks.

Training (IVF coarse k-means, PQ / OPQ codebooks) runs on a uniform sample of ``plan.train_size`` vectors;
adding streams float32 blocks so a float16 memmap of millions of vectors is never copied whole. With a GPU
(faiss-gpu), the coarse k-means runs there and segments of GPU-capable types are filled and searched there.
"""
from __future__ import annotations

import itertools
import logging
import math
import os
import time

import faiss
import numpy as np

from ..errors import InvalidQuery, NearsightError
from . import backend
from .backend import SearchParams
from .plan import IndexPlan, estimate_size, parse_factory
from .rerank import RerankStore, by_id_layout_ok
from .source import iter_blocks
from .vector_index import Segment, VectorIndex

LOG = logging.getLogger(__name__)


def initial_params(plan: IndexPlan) -> SearchParams:
    """Reasonable parameters before tuning measures better ones."""
    parts = parse_factory(plan.factory)
    k_factor = (16 if plan.kind == "lsh" else 4) if plan.rerank else 1
    if plan.kind == "ivf":
        return SearchParams(nprobe=max(1, min(parts.nlist, 16)), k_factor=k_factor)
    if plan.kind == "hnsw":
        return SearchParams(efSearch=64, k_factor=k_factor)
    return SearchParams(k_factor=k_factor)


def training_sample(vectors, ids: np.ndarray, size: int, seed: int = 0):
    """(sample (m, d) float32, blocks already consumed). For an array (or memmap): ``size`` rows drawn uniformly
    at random (seeded). For an iterator of blocks: its first ``size`` vectors (the blocks read are returned so
    they are still added); pass an array when the stream is ordered, or the sample will be biased."""
    if hasattr(vectors, "shape"):
        n = len(vectors)
        size = min(size, n)
        rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False)) if size < n else np.arange(n)
        return np.ascontiguousarray(vectors[rows], dtype=np.float32), [], None
    blocks = iter_blocks(vectors, ids)
    taken, got = [], 0
    for x, bid in blocks:
        taken.append((x, bid))
        got += len(x)
        if got >= size:
            break
    sample = np.concatenate([x for x, _ in taken])[:size] if taken else np.zeros((0, 0), np.float32)
    return sample, taken, blocks


def segment_capacity(factory: str, d: int, trained_bytes: int, max_file_bytes: int | None) -> int | None:
    """How many vectors one segment file may hold to stay under ``max_file_bytes`` (None: no limit)."""
    if not max_file_bytes:
        return None
    bpv, _ = estimate_size(factory, d)
    parts = parse_factory(factory)
    fixed = trained_bytes + 4096
    if parts.fast_scan:   # each list is padded to a block of 32 codes
        fixed += parts.nlist * 31 * math.ceil(parts.pq_m * parts.pq_bits / 8)
    capacity = int((max_file_bytes - fixed) // (bpv * 1.1))
    if capacity < 1:
        raise NearsightError(f"a file limit of {max_file_bytes} bytes cannot hold even one vector of {factory!r} "
                             f"(the trained index alone takes {fixed} bytes)")
    return capacity


def build_index(vectors, ids, metric: str, plan: IndexPlan, *, source=None, use_gpu: bool | None = None,
                max_file_bytes=None, seed: int = 0, block: int = 65536, progress=None,
                rerank_store: bool = True, skip_ids=None, ondisk_prefix: str | None = None) -> VectorIndex:
    """Build an index of ``plan.factory`` over ``vectors`` under item ``ids``.

    - ``vectors``: (n, d) array of any float dtype (a float16 memmap is fine) or an iterable of (b, d) blocks
      whose concatenation aligns with ``ids`` (n,) int64.
    - ``source``: the collection's VectorSource; kept for re-ranking when there is no float16 store
      (``rerank_store=False``, or ids too sparse for a row-per-id layout) and for tuning.
    - ``max_file_bytes``: split the index into segments whose files stay under this size ("2G" works).
    - ``use_gpu``: None = use faiss-gpu when a GPU is present.
    - ``progress``: optional callable(done, total).
    - ``skip_ids``: ids left out of the index (held out for tuning, added afterwards with ``add``).
    - ``ondisk_prefix``: for an ``on_disk`` plan, where the merged lists go (``<prefix>.<token>.ivfdata``, in the
      collection's indexes folder): the build never holds more than ``plan.budget_bytes`` of lists (``ondisk.py``)
      and re-ranks from ``source`` rather than a float16 store filled in memory. Without it the plan is built in
      memory and only searched memory-mapped once saved.
    """
    from .plan import parse_size
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    n = len(ids)
    d = int(vectors.shape[1]) if hasattr(vectors, "shape") else plan.dim
    if d != plan.dim:
        raise InvalidQuery(f"plan is for {plan.dim}-d vectors, got {d}-d")
    if metric != plan.metric:
        raise InvalidQuery(f"plan is for metric {plan.metric!r}, got {metric!r}")
    limit = parse_size(max_file_bytes) if max_file_bytes is not None else None
    gpu = backend.want_gpu(use_gpu)
    t0 = time.perf_counter()

    first = backend.make_index(plan.factory, d, metric, plan.ef_construction)
    pending, rest, trained_on, train_seconds = [], None, 0, 0.0
    if not first.is_trained:
        size = plan.train_size or min(n, 65536)
        sample, pending, rest = training_sample(vectors, ids, size, seed)
        if len(sample) == 0:
            raise NearsightError(f"index {plan.factory!r} needs training vectors and none were given")
        clustering = backend.gpu_clustering(first) if gpu else None
        t_train = time.perf_counter()
        first.train(sample)
        del clustering
        trained_on = len(sample)
        ivf = faiss.try_extract_index_ivf(first)
        if ivf is not None:
            ivf.clustering_index = None
        train_seconds = time.perf_counter() - t_train
        LOG.info("trained %s on %d vectors in %.1f s", plan.factory, trained_on, train_seconds)
        del sample
    template = backend.serialize(first) if parse_factory(plan.factory).needs_training else None
    if plan.on_disk and ondisk_prefix is not None and plan.budget_bytes and template is not None:
        return _build_on_disk(vectors, ids, metric, plan, template, trained_on, pending, rest, source=source,
                              block=block, progress=progress, skip_ids=skip_ids, prefix=ondisk_prefix, t0=t0)
    capacity = segment_capacity(plan.factory, d, len(template if template is not None else backend.serialize(first)),
                                limit)

    info = {"plan": plan.to_dict(), "trained_on": trained_on, "train_seconds": round(train_seconds, 3),
            "trained_ntotal": n, "mode": plan.mode,
            "on_disk": plan.on_disk, "ef_construction": plan.ef_construction, "gpu": gpu, "max_id": -1,
            "built_at": time.time()}
    if limit:
        info["max_file_bytes"] = limit
    # lossy codes re-rank from a float16 store by item id, filled as vectors are added (see rerank.py);
    # ids too sparse for that layout re-rank from ``source`` instead
    store = RerankStore.empty(d, metric) if plan.rerank and rerank_store and by_id_layout_ok(ids) else None
    index = VectorIndex([Segment(first)], factory=plan.factory, metric=metric,
                        dim=d, params=initial_params(plan), rerank=plan.rerank, source=source, template=template,
                        capacity=capacity, info=info, ef_construction=plan.ef_construction, store=store)
    if gpu:
        index.to_gpu()
    # an iterator that was partly read for the training sample: the blocks read first, then the rest
    blocks = itertools.chain(pending, rest) if rest is not None else iter_blocks(vectors, ids, block)
    skip = np.unique(np.asarray(skip_ids, dtype=np.int64)) if skip_ids is not None else None
    done = 0
    for x, bid in blocks:
        done += len(x)
        if skip is not None and len(skip):
            keep = ~np.isin(bid, skip)
            x, bid = x[keep], bid[keep]
        index.add(x, bid)
        if progress is not None:
            progress(done, n)
    if done != n:
        raise InvalidQuery(f"got {done} vectors for {n} ids")
    seconds = time.perf_counter() - t0
    index.update_info(build_seconds=round(seconds, 3), ntotal=index.ntotal)
    LOG.info("built %s over %d vectors in %.1f s (%d segment(s))", plan.factory, n, seconds, len(index.segments))
    return index


def _build_on_disk(vectors, ids, metric, plan, template, trained_on, pending, rest, *, source, block, progress,
                   skip_ids, prefix, t0) -> VectorIndex:
    """The out-of-memory build: one read-only segment whose lists are a merged ``.ivfdata`` file (``ondisk.py``)."""
    from .ondisk import fill_on_disk
    from .plan import ondisk_sizes

    n, d = len(ids), plan.dim
    if source is None:
        raise NearsightError(f"an on-disk build of {plan.factory!r} re-ranks from the collection's vectors: "
                             "pass source=")
    sizes = ondisk_sizes(plan.budget_bytes, int(template.nbytes), d,
                         int(faiss.extract_index_ivf(backend.deserialize(template)).code_size))
    step = min(block, sizes[1]) if sizes else block
    blocks = itertools.chain(pending, rest) if rest is not None else iter_blocks(vectors, ids, step)
    skip = np.unique(np.asarray(skip_ids, dtype=np.int64)) if skip_ids is not None else None
    merged, path, figures = fill_on_disk(template, blocks, skip, plan, prefix, progress=progress, total=n)
    if figures["ondisk_read"] != n:
        os.remove(path)
        raise InvalidQuery(f"got {figures['ondisk_read']} vectors for {n} ids")
    kept = ids if skip is None or not len(skip) else ids[~np.isin(ids, skip)]    # held-out ids come later
    info = {"plan": plan.to_dict(), "trained_on": trained_on, "trained_ntotal": n, "mode": plan.mode,
            "on_disk": True, "ef_construction": plan.ef_construction, "gpu": False,
            "max_id": int(kept.max()) if len(kept) else -1, "built_at": time.time(), **figures}
    segment = Segment(merged, writable=False, dirty=True, ivfdata=os.path.basename(path))
    index = VectorIndex([segment], factory=plan.factory, metric=metric, dim=d, params=initial_params(plan),
                        rerank=plan.rerank, source=source, template=template, info=info,
                        ef_construction=plan.ef_construction)
    seconds = time.perf_counter() - t0
    index.update_info(build_seconds=round(seconds, 3), ntotal=index.ntotal)
    LOG.info("built %s over %d vectors out of memory in %.1f s (%d shard(s) merged into %s)", plan.factory, n,
             seconds, figures["ondisk_shards"], path)
    return index
