"""Measure recall@k against exact search and pick the fastest search parameters that reach a target.

Queries are held-out vectors of the collection itself: each query's own item is removed from both the exact
ground truth and the index's answer, so what is measured is finding the *other* nearest items, not the
trivial self-match. The ground truth is an exact faiss scan over the float16 embeddings in float32 blocks.

Recall grows with every knob (nprobe, efSearch, re-rank depth k_factor), so for each re-rank depth the primary
knob walks a coarse grid until the target is met, then bisects the integers down to the last failing grid point
(a coarse grid alone overshoots: efSearch 48 where 30 is enough costs 1.5x); the re-rank depth is bisected the
same way. Of the settings found, the fastest by median batched latency over interleaved repeats wins, ties
(within 10%) going to the shallower setting so that two runs on the same data choose the same. The whole curve
is kept in the index metadata, so the recall actually served is on record, beside the time of an exact scan
of the same queries: an index that is no faster than that says so in ``warnings``.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import faiss
import numpy as np

from ..errors import NearsightError
from .backend import SearchParams, indexed_ids
from .plan import parse_factory
from .source import iter_blocks

LOG = logging.getLogger(__name__)

NPROBES = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048,
           3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768, 49152, 65536)
EFS = (12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
K_FACTORS = (1, 2, 4, 8, 16, 32, 64, 128)
LSH_K_FACTORS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


def exact_knn(queries: np.ndarray, vectors, ids: np.ndarray, k: int, metric: str, block: int = 65536,
              seconds: list | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Exact k-NN by a blockwise faiss scan. queries (nq, d) float32; vectors (n, d) any float dtype (a
    float16 memmap is read block by block); ids (n,) int64. Returns D (nq, k) float32, I (nq, k) item ids.
    ``seconds``: a list that gets the time of the scans themselves (what an exact float32 index would take,
    without reading and converting the blocks)."""
    nq = len(queries)
    heap = faiss.ResultHeap(nq, k, keep_max=(metric == "ip"))
    start = 0
    positions = np.asarray(ids, dtype=np.int64)
    for x, _ in iter_blocks(vectors, positions, block):
        t0 = time.perf_counter()
        D, I = faiss.knn(queries, x, min(k, len(x)),
                         metric=faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
        if seconds is not None:
            seconds.append(time.perf_counter() - t0)
        heap.add_result(np.ascontiguousarray(D, dtype=np.float32), np.where(I >= 0, I + start, -1))
        start += len(x)
    heap.finalize()
    I = np.where(heap.I >= 0, positions[np.clip(heap.I, 0, None)], -1) if len(positions) else heap.I
    return heap.D, I


def drop_self(I: np.ndarray, self_ids: np.ndarray, k: int) -> np.ndarray:
    """(nq, k+1) ids -> (nq, k): each row without its own query id (or without its last entry)."""
    mine = I == self_ids[:, None]
    keep = ~mine
    # rows that do not contain their own id drop their last column instead
    keep[~mine.any(axis=1), -1] = False
    return I[keep].reshape(len(I), I.shape[1] - 1)[:, :k]


def recall_at_k(I: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found ∩ true top-k| / |true top-k| (true -1 entries do not count)."""
    return recall_with_error(I, truth, k)[0]


def recall_with_error(I: np.ndarray, truth: np.ndarray, k: int) -> tuple[float, float]:
    """(recall@k, its standard error over queries): how far another sample of queries may land."""
    I, truth = I[:, :k], truth[:, :k]
    valid = truth >= 0
    hits = ((I[:, :, None] == truth[:, None, :]) & valid[:, None, :]).any(axis=1)
    denom = valid.sum()
    if not denom:
        return 1.0, 0.0
    per_query = hits.sum(axis=1) / np.maximum(valid.sum(axis=1), 1)
    stderr = float(per_query.std(ddof=1) / np.sqrt(len(per_query))) if len(per_query) > 1 else 0.0
    return float(hits.sum() / denom), stderr


def _grid(index, n: int, k: int):
    """Per re-rank depth, the primary knob's name and its coarse ascending values:
    [(k_factor, knob, [SearchParams...]), ...]. The fine search bisects between neighbours of this grid."""
    parts = parse_factory(index.factory)
    kfs = K_FACTORS if index.rerank else (1,)
    if index.kind == "ivf":
        nlist = parts.nlist or 1
        probes = [p for p in NPROBES if p < nlist] + [nlist]
        return [(f, "nprobe", [SearchParams(nprobe=p, k_factor=f) for p in probes]) for f in kfs]
    if index.kind == "hnsw":
        # faiss searches with max(efSearch, k * k_factor): smaller values are the same search
        return [(f, "efSearch", [SearchParams(efSearch=e, k_factor=f) for e in hnsw_efs(k * f)]) for f in kfs]
    if index.kind == "lsh":
        fs = [f for f in LSH_K_FACTORS if f * k <= max(n, k)] or [1]
        return [(0, "k_factor", [SearchParams(k_factor=f) for f in fs])]
    return [(1, None, [SearchParams(k_factor=1)])]


def hnsw_efs(floor: int) -> list[int]:
    """The coarse efSearch grid from ``floor`` (= k * k_factor, below which efSearch changes nothing) up."""
    return [floor] + [e for e in EFS if e > floor]


def bisect_lowest(lo: int, hi: int, passes) -> int:
    """The smallest integer in (lo, hi] for which ``passes`` holds, given that it fails at ``lo`` and holds at
    ``hi`` and grows with the value (recall does with efSearch, nprobe and re-rank depth). Stops within 1/32
    of the value: beyond that the next setting costs the same to within timing noise."""
    while hi - lo > max(1, lo // 32):
        mid = (lo + hi) // 2
        if passes(mid):
            hi = mid
        else:
            lo = mid
    return hi


def pick_cheapest(feasible: list, timer, repeats: int = 3, tie: float = 0.10):
    """The fastest of ``feasible`` (settings that all meet the target, cheapest knobs first), stable from run
    to run: each is timed ``repeats`` times interleaved with the others (background load hits all alike),
    medians compared, and one within ``tie`` of the fastest that comes earlier in the list wins. Returns
    (setting, median ms)."""
    if len(feasible) == 1:
        return feasible[0], None
    times = {i: [] for i in range(len(feasible))}
    for r in range(max(1, repeats)):
        order = list(range(len(feasible)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            times[i].append(timer(feasible[i]))
    med = [float(np.median(times[i])) for i in range(len(feasible))]
    fastest = min(med)
    i = next(i for i, m in enumerate(med) if m <= fastest * (1 + tie))
    return feasible[i], med[i]


def tune(index, source, target_recall: float = 0.95, k: int = 10, n_queries: int = 500, seed: int = 0,
         repeats: int = 3, queries: np.ndarray | None = None, holdout_ids: np.ndarray | None = None) -> dict:
    """Set ``index``'s search parameters to the lowest-latency setting whose recall@k reaches ``target_recall``
    on ``n_queries`` held-out vectors of ``source``; records recall and latency in ``index.info``.
    "Reaches" means recall minus one standard error (over queries) >= target: the setting should hold on
    other queries too, not just on this sample.

    ``queries`` (nq, d): tune on these instead (e.g. embedded text queries for a CLIP collection, which sit
    apart from the image embeddings and can need deeper search than held-out images suggest).
    ``holdout_ids``: ids of ``source`` that are *not in the index* (kept out while tuning, added after): their
    vectors are the queries and they are left out of the ground truth. The best measure: a vector that is in
    an HNSW graph is easier to search from than a new one, so in-collection queries (the default, each
    query's own item dropped from both answers) overstate recall a little at low efSearch.

    Returns ``{"search_params", "recall_at_k", "k", "target_recall", "target_met", "latency_ms" (batched, per
    query), "latency_ms_single", "qps_batch", "qps_single", "tuned_on_queries", "curve": [...]}``. When no
    setting reaches the target, the highest-recall one is kept and ``target_met`` is False.
    """
    if not 0 < target_recall <= 1:
        raise NearsightError(f"target recall must be in (0, 1], got {target_recall!r}")
    ids = np.asarray(source.ids, dtype=np.int64)
    n = len(ids)
    if n == 0:
        raise NearsightError("cannot tune an index on an empty collection")
    t_start = time.perf_counter()
    rng = np.random.default_rng(seed)
    scan: list = []      # seconds of the exact ground-truth scans: the cost an index has to beat
    if holdout_ids is not None:
        holdout_ids = np.asarray(holdout_ids, dtype=np.int64)
        inside = np.intersect1d(holdout_ids, np.concatenate(
            [indexed_ids(s.index) for s in index.segments] or [np.zeros(0, np.int64)]))
        if len(inside):
            raise NearsightError(f"{len(inside)} held-out ids (e.g. {int(inside[0])}) are in the index; "
                                 "tuning on them would overstate recall")
        rows = source.rows(holdout_ids) if hasattr(source, "rows") else np.searchsorted(ids, holdout_ids)
        queries = np.ascontiguousarray(source.vectors[np.sort(rows)], dtype=np.float32)
        nq, qids, kq = len(queries), None, k
        extra = min(len(holdout_ids), 32)
        _, deep = exact_knn(queries, source.vectors, ids, k + extra, index.metric, seconds=scan)
        deep = np.where(np.isin(deep, holdout_ids), -1, deep)       # held-out items are not in the index
        order = np.argsort(deep < 0, axis=1, kind="stable")
        truth = np.take_along_axis(deep, order, 1)[:, :k]
        tuned_on = "held-out"
    elif queries is None:
        tuned_on = "in-collection"
        nq = min(int(n_queries), n)
        rows = np.sort(rng.choice(n, nq, replace=False))
        qids = ids[rows]
        queries = np.ascontiguousarray(source.vectors[rows], dtype=np.float32)
        _, truth = exact_knn(queries, source.vectors, ids, k + 1, index.metric, seconds=scan)
        truth = drop_self(truth, qids, k)
        kq = k + 1
    else:   # external queries: nothing of theirs is in the collection, no self-match to drop
        tuned_on = "given"
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        nq, qids, kq = len(queries), None, k
        _, truth = exact_knn(queries, source.vectors, ids, k, index.metric, seconds=scan)

    errors = {}

    def run(p: SearchParams) -> tuple[float, float]:
        t0 = time.perf_counter()
        _, I = index.search(queries, kq, params=p)
        ms = (time.perf_counter() - t0) * 1000 / nq
        rec, err = recall_with_error(I if qids is None else drop_self(I, qids, k), truth, k)
        errors[p] = err
        return rec, ms

    def passes(p: SearchParams) -> bool:
        return p in measured and (measured[p][0] - errors[p] >= target_recall or measured[p][0] >= 1.0)

    measured: dict = {}
    curve, feasible, best = [], [], None

    def measure(p: SearchParams) -> float:
        nonlocal best
        if p not in measured:
            rec, ms = measured[p] = run(p)
            curve.append({"params": p.to_dict(), "recall": round(rec, 4), "stderr": round(errors[p], 4),
                          "latency_ms": round(ms, 4)})
            if best is None or rec > best[1] + 1e-9:
                best = (p, rec, ms)
        return measured[p][0]

    def ok(p: SearchParams) -> bool:
        measure(p)
        return passes(p)

    for _, knob, settings in _grid(index, n, k):
        seen, last_fail = [], None
        for p in settings:
            seen.append(measure(p))
            if passes(p):
                if knob and last_fail is not None:
                    # the coarse grid overshoots: the cheapest passing value lies between the two grid points
                    v = bisect_lowest(getattr(last_fail, knob), getattr(p, knob),
                                      lambda v, p=p: ok(replace(p, **{knob: v})))
                    p = replace(p, **{knob: v})
                feasible.append(p)
                if knob != "k_factor" and p.k_factor > 2 and index.rerank:
                    # and the re-rank depth, doubled per grid step, may be more than this knob needs
                    f = bisect_lowest(p.k_factor // 2, p.k_factor, lambda f, p=p: ok(replace(p, k_factor=f)))
                    if f < p.k_factor:
                        feasible.append(replace(p, k_factor=f))
                break
            last_fail = p
            if len(seen) >= 4 and seen[-1] - seen[-4] < 0.002:
                break   # a plateau: the codes, not the knob, limit recall at this re-rank depth
        if passes(settings[0]) and index.kind != "lsh":
            break   # the cheapest setting already meets the target; deeper re-ranking only costs more
    if feasible:
        def batch_ms(p: SearchParams) -> float:
            return run(p)[1]
        chosen, ms = pick_cheapest(feasible, batch_ms, repeats)
        rec = measured[chosen][0]
        if ms is None:
            ms = float(np.median([batch_ms(chosen) for _ in range(max(1, repeats))]))
    else:
        chosen, rec, ms = best
        LOG.warning("no setting of %s reaches recall@%d %.2f; best is %.3f with %s", index.factory, k,
                    target_recall, rec, chosen.to_dict())
    index.set_params(chosen)
    single = _single_query_ms(index, queries[: min(nq, 100)], k)
    exact_ms = sum(scan) * 1000 / max(nq, 1)
    warnings = [str(w) for w in (index.info.get("plan") or {}).get("warnings", [])]
    if index.kind != "flat" and ms >= exact_ms:
        depth = ""
        if index.rerank:
            depth = f", re-ranking {min(1.0, k * chosen.k_factor / n):.0%} of the collection a query"
        warnings.append(f"{index.factory} at recall@{k} {rec:.3f} takes {ms:.3f} ms a query (batched){depth}: "
                        f"no faster than an exact scan ({exact_ms:.3f} ms); exact search (--factory Flat) "
                        "gives recall 1.0 for the same time")
    result = {"search_params": chosen.to_dict(), "recall_at_k": round(float(rec), 4),
              "recall_stderr": round(errors.get(chosen, 0.0), 4), "k": int(k),
              "target_recall": float(target_recall), "target_met": bool(rec >= target_recall),
              "latency_ms": round(float(ms), 4), "latency_ms_single": round(single, 4),
              "qps_batch": round(1000.0 / ms, 1) if ms > 0 else None,
              "qps_single": round(1000.0 / single, 1) if single > 0 else None,
              "tuned_on_queries": int(nq), "tuned_on": tuned_on, "tuned_ntotal": int(index.ntotal),
              "tuned_at": time.time(), "exact_latency_ms": round(exact_ms, 4), "warnings": warnings,
              "tune_seconds": round(time.perf_counter() - t_start, 3), "curve": curve}
    index.update_info(**result)
    return result


def _single_query_ms(index, queries: np.ndarray, k: int) -> float:
    """Mean latency of one-query searches (what an interactive user waits for)."""
    if not len(queries):
        return 0.0
    index.search(queries[:1], k)   # warm caches
    t0 = time.perf_counter()
    for i in range(len(queries)):
        index.search(queries[i:i + 1], k)
    return (time.perf_counter() - t0) * 1000 / len(queries)
