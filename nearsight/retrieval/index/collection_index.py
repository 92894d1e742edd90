"""The entry point ``nearsight build-index`` and the end of ``nearsight index`` call: build, update or rebuild
the index of one encoder of a collection, tune it to a target recall and save it atomically.

Decisions, in order: an explicit ``rebuild``; no index yet; a changed metric, dimension or factory; a stale
index (IVF trained on a tenth of what it holds now, or many deletions); an automatic choice whose kind has
changed as the collection grew (Flat -> HNSW -> IVF). Otherwise the saved index is updated in place: new items
are added under their ids, deleted ones removed, and it is re-tuned when anything changed.
"""
from __future__ import annotations

import json
import logging
import os
import time

import numpy as np

from ..errors import IndexFilesChanged, NearsightError
from .build import build_index
from .degree import choose_degree
from .plan import parse_factory, parse_size, plan_from_factory, plan_index
from .storage import differences, index_dir, load_index, read_meta, sync_with_source
from .tuning import tune

LOG = logging.getLogger(__name__)


def _metric_of(collection_dir: str, encoder: str, source) -> str:
    metric = getattr(source, "metric", None)
    if metric:
        return metric
    try:
        with open(os.path.join(collection_dir, "collection.json")) as f:
            encoders = json.load(f).get("encoders", {})
    except (OSError, ValueError):
        encoders = {}
    entry = encoders.get(encoder) if isinstance(encoders, dict) else next(
        (e for e in encoders if isinstance(e, dict) and e.get("name") == encoder), None)
    if isinstance(entry, dict) and entry.get("metric") in ("ip", "l2"):
        return entry["metric"]
    raise NearsightError(f"metric of encoder {encoder!r} unknown: pass metric= ('ip' or 'l2')")


def _replaced(meta: dict, factory, auto, n, d, metric, budget, mode) -> str | None:
    """Why the saved index (its JSON ``meta``) must be built afresh rather than updated, or None."""
    if meta.get("metric") != metric or meta.get("dim") != d:
        return f"the index is {meta.get('metric')}/{meta.get('dim')}-d, the embeddings {metric}/{d}-d"
    old = meta.get("factory")
    if factory:
        return f"factory changed from {old!r} to {factory!r}" if factory != old else None
    if auto and (mode != "auto" or meta.get("auto", True)):
        want = plan_index(n, d, metric, budget, mode).factory
        if _shape(want) != _shape(old):
            return (f"{mode} mode asks for {want!r}" if mode != "auto" else
                    f"the automatic choice for {n} vectors is now {want!r}") + f" (was {old!r})"
    return None


def _shape(factory: str) -> tuple:
    """What makes an automatic choice a different index (a degree chosen by measurement does not): the kind,
    and whether the graph walks PCA projections."""
    parts = parse_factory(factory)
    return parts.kind, bool(parts.pca)


def build_collection_index(collection_dir: str, encoder: str, source, factory: str | None = None,
                           auto: bool = True, target_recall: float = 0.95, k: int = 10, max_memory=None, *,
                           metric: str | None = None, mode: str = "auto", rebuild: bool = False,
                           max_file_bytes=None, n_queries: int = 500, use_gpu: bool | None = None,
                           live=None, seed: int = 0, progress=None) -> dict:
    """Build, update or rebuild the index of ``encoder`` under ``collection_dir/indexes``; returns a report.

    - ``source``: the encoder's VectorSource (ids, float16 vectors, reconstruct).
    - ``factory``: a FAISS factory key ("HNSW32", "IVF4096,PQ64x4fs", "LSHr"...); None with ``auto`` = choose
      from (n, d, metric, ``max_memory``, ``mode``); None without ``auto`` = keep the saved index's key.
    - ``max_memory``: memory budget for the index ("2G", bytes; None = half the RAM).
    - ``max_file_bytes``: split the index over files of at most this size.
    - ``live``: a loaded VectorIndex that keeps answering during the work and is swapped to the new one at the
      end (``replace_with``); files are replaced by atomic renames, so other processes are safe too.

    Report keys: encoder, action ("built", "rebuilt", "updated", "unchanged"), reason, factory, kind, metric,
    dim, ntotal, added, removed, build_seconds, tune_seconds, recall_at_k, k, target_recall, target_met,
    search_params, latency_ms, latency_ms_single, index_bytes, bytes_per_vector, files, plan_reasons,
    warnings (where the index falls short of what was asked: shown by the CLI and ``info``), needs_rebuild.
    """
    t0 = time.perf_counter()
    metric = metric or _metric_of(collection_dir, encoder, source)
    ids = np.asarray(source.ids, dtype=np.int64)
    n, d = len(ids), int(source.vectors.shape[1])
    if n == 0:
        raise NearsightError(f"encoder {encoder!r} has no embeddings in {collection_dir}; nothing to index")
    budget = parse_size(max_memory) if max_memory is not None else None

    meta = read_meta(collection_dir, encoder)
    existing, broken = None, None
    replaced = _replaced(meta, factory, auto, n, d, metric, budget, mode) if meta is not None else None
    if meta is not None and not rebuild and not replaced:
        # only an index that may be kept is loaded, and mapped: at 1M wide vectors one is many GB, which an
        # unchanged re-run need not copy. One that is to take additions or removals is read into memory
        # instead (a mapped segment takes no additions; a second segment would slow every search).
        try:
            existing = load_index(collection_dir, encoder, source=source, mmap=True, sync=False)
            if not meta.get("on_disk") and any(len(change) for change in differences(existing, source)):
                existing = load_index(collection_dir, encoder, source=source, mmap=False, sync=False)
        except IndexFilesChanged as exc:
            # the one writer (callers hold the write lock) finds files no save is renaming: a killed save's
            broken = f"the saved index files disagree with {encoder}.json (a save was interrupted)"
            LOG.warning("%s: %s; rebuilding it", broken, exc)

    want = None
    if factory:
        want = plan_from_factory(factory, n, d, metric, mode)
    elif auto or existing is None:
        want = plan_index(n, d, metric, budget, mode)

    reason = None
    if rebuild:
        reason = "rebuild requested"
    elif broken:
        reason = broken
    elif existing is None:
        reason = replaced or "no index yet"
    elif existing.needs_rebuild:
        reason = existing.rebuild_reason

    added = removed = 0
    rng = np.random.default_rng(seed)
    if reason is not None:
        plan = want or plan_from_factory(existing.factory, n, d, metric, mode)
        if not factory and plan.kind == "hnsw":
            plan = choose_degree(plan, source.vectors, ids, target_recall=target_recall, k=k,
                                 max_memory_bytes=budget, seed=seed)
        LOG.info("building %s for %s: %s", plan.factory, encoder, reason)
        # a sample stays out of the index while it is tuned: recall measured on vectors it has never seen
        holdout = rng.choice(ids, min(n_queries, n // 10), replace=False) if n >= 1000 else None
        index = build_index(source.vectors, ids, metric, plan, source=source, use_gpu=use_gpu,
                            max_file_bytes=max_file_bytes, seed=seed, progress=progress, skip_ids=holdout,
                            ondisk_prefix=os.path.join(index_dir(collection_dir), encoder))
        index.update_info(auto=factory is None, built_reason=reason)
        action = "built" if meta is None else "rebuilt"
        added = n
    else:
        index = existing
        # new items are held-out queries for free: tune before they go in, when there are enough of them
        new = differences(index, source)[0]
        holdout = rng.choice(new, min(n_queries, len(new)), replace=False) if len(new) >= 50 else None
        changes = sync_with_source(index, source, hold=holdout)
        added, removed = changes["added"] + (len(holdout) if holdout is not None else 0), changes["removed"]
        action = "updated" if (added or removed) else "unchanged"
        if index.needs_rebuild:     # the additions made it stale: build afresh now rather than next time
            return build_collection_index(collection_dir, encoder, source, factory, auto, target_recall, k,
                                          max_memory, metric=metric, mode=mode, rebuild=True,
                                          max_file_bytes=max_file_bytes, n_queries=n_queries, use_gpu=use_gpu,
                                          live=live, seed=seed, progress=progress)

    info = index.info
    retune = (action != "unchanged" or "recall_at_k" not in info or info.get("k") != k
              or info.get("target_recall") != target_recall)
    tuned = tune(index, source, target_recall=target_recall, k=k, n_queries=n_queries, seed=seed,
                 holdout_ids=holdout) if retune \
        else {key: info.get(key) for key in ("search_params", "recall_at_k", "k", "target_recall", "target_met",
                                             "latency_ms", "latency_ms_single", "tune_seconds")}
    if holdout is not None and len(holdout):
        holdout = np.sort(holdout)
        index.add(source.reconstruct(holdout), holdout)
    saved = index.save(collection_dir, encoder, max_file_bytes=max_file_bytes)
    if live is not None and live is not index:
        live.replace_with(index)
    index_bytes = int(sum(f["bytes"] for f in saved["files"]))
    report = {
        "encoder": encoder, "action": action, "reason": reason, "factory": index.factory, "kind": index.kind,
        "metric": metric, "dim": d, "ntotal": index.ntotal, "added": int(added), "removed": int(removed),
        "build_seconds": index.info.get("build_seconds") if reason else None,
        "tune_seconds": tuned.get("tune_seconds") if retune else 0.0,
        "recall_at_k": tuned.get("recall_at_k"), "k": k, "target_recall": target_recall,
        "target_met": tuned.get("target_met"), "search_params": tuned.get("search_params"),
        "latency_ms": tuned.get("latency_ms"), "latency_ms_single": tuned.get("latency_ms_single"),
        "index_bytes": index_bytes, "bytes_per_vector": round(index_bytes / max(index.ntotal, 1), 2),
        "files": [f["file"] for f in saved["files"]],
        "plan_reasons": list((index.info.get("plan") or {}).get("reasons", [])),
        "warnings": list(index.info.get("warnings") or []),
        "needs_rebuild": index.needs_rebuild, "seconds": round(time.perf_counter() - t0, 3),
    }
    LOG.info("index %s of %s: %s (%s), recall@%d %.3f", index.factory, encoder, action, reason or "in place",
             k, report["recall_at_k"] or 0.0)
    return report
