"""The degree M and efConstruction of an HNSW plan, chosen by measurement on the collection's own vectors.

Which degree is cheapest at a recall target depends on the data and the target: on Fashion-MNIST (60k x 784)
hnswlib's M16 beat faiss's HNSW32 at recall@10 0.99 while HNSW32 won at 0.90. So each candidate degree that fits
the memory budget is built on a sample, tuned to the target on held-out sample vectors (the rule ``tune``
applies to the real index), and its search cost at that setting is counted: the distance computations a query
makes (faiss's own counter), plus the exact re-rank distances when the graph holds lossy codes. Counts, unlike
timings on a shared machine, come out the same from run to run, and at the dimensions where an ANN index pays
they are what a graph search spends its time on. Measured on the whole collection, within 5% the smaller degree
wins (less memory), then the larger efConstruction: a graph built with a narrow insertion search degrades more as
it grows than a sample shows (Fashion-MNIST: efConstruction 40 tied 80 on a 30k sample at recall 0.99, 329 vs 333
distances a query, then needed efSearch 56 instead of 44 on all 60k), and the build-time budget already bounds what
the wider one costs.

A sample smaller than the collection understates what a graph costs at full size, and not by the same factor for
each degree: on 1M CLIP-like vectors (512-d) HNSW16 and HNSW32 tied on a 30k sample at recall@10 0.90 (1,038 vs
1,007 distances a query), HNSW16 was chosen, and at 1M it needed efSearch 496 where faiss's HNSW32 needed 232.
The cost of a tuned graph grows about as a power of its size, the smaller degree's faster (at 7.5k / 30k / 120k:
HNSW16 520 / 1,038 / 2,234, HNSW32 528 / 1,007 / 1,816). So when the sample is smaller than the collection each
candidate is also built on a quarter of it, and its cost is projected to the collection's size by the power
measured between the two (the exponent kept within [0, 1]): there HNSW32 efConstruction 80 comes out 15% cheaper
at 1M. The projection still flatters the smaller degree: the HNSW16 efConstruction 160 graph that needed efSearch
48 on the sample needed 496 at 1M, ten times, where the power from 7.5k to 30k projected 4.4 times the distances.
So when the cost is projected, a tie within 5% goes to the larger degree (its cost grows slower, and both fit the
memory budget).

Nor does a sample rank close efConstructions at full size: on the 30k sample of the same 1M vectors, HNSW32 built
with efConstruction 80 cost 1,490 distances a query at recall 0.95 and with 160 1,560 (5% more), the projection
widened that to 9%, and at 1M the efConstruction 80 graph needed efSearch 592 where the 160 one needed 244 (0.57x
the speed). On Fashion-MNIST at 0.99, efConstruction 80 cost 5% less than 160 on the sample and needed efSearch 44
against 32 on all 60k. Where a narrow build is clearly cheaper it stays so: at 0.90 efConstruction 40 cost 13%
less than 160 on the sample (both at the least search, efSearch 10) and was 15% faster on all 60k. So when the
cost is projected each degree is built its widest within the build-time budget, unless a narrower build costs
over EFC_MARGIN less on the sample.

efConstruction (how widely each insertion searches for its neighbours) trades build time for a better graph:
each degree is built at 40, 80 and 160, and a setting whose build, projected from the sample to the whole
collection, would take more than BUILD_BUDGET times the plan's own setting (its degree at 80, what hnswlib's and
faiss's benchmarks use) is left out, unless ``max_build_seconds`` says otherwise.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import NamedTuple

import faiss
import numpy as np

from .plan import IndexPlan, estimate_size, parse_factory, plan_from_factory, with_degree

LOG = logging.getLogger(__name__)

DEGREES = (16, 32)
EF_CONSTRUCTIONS = (40, 80, 160)
BUILD_BUDGET = 2.0       # a candidate may take up to this many times the plan's own build time
SAMPLE = 30_000          # vectors a candidate graph is built on: a few seconds a build on two cores at d = 784
QUERIES = 300            # held-out sample vectors each candidate is tuned on
TIE = 0.05
EFC_MARGIN = 0.10        # projected: a narrower build must be this much cheaper on the sample than the widest
SMALL = 4                # the second, nested sample is 1/SMALL of the first: the growth of the cost with size


class Candidate(NamedTuple):
    """One (degree, efConstruction) candidate at one recall target."""
    cost: float                 # distances a query at the collection's size (projected when sampled)
    params: dict                # tuned search parameters on the sample
    recall: float               # recall@k reached on the held-out sample vectors
    build_seconds: float        # projected build time of the whole collection
    sample_cost: float | None = None   # distances a query measured on the sample, when projected


def hnsw_search_cost(index, queries: np.ndarray, k: int) -> float:
    """Distance computations a query makes at ``index``'s tuned parameters: graph distances (faiss's
    ``hnsw_stats``) plus the exact re-rank distances (k * k_factor) when the graph holds lossy codes."""
    stats = faiss.cvar.hnsw_stats
    stats.reset()
    index.search(queries, k)
    per_query = stats.ndis / max(len(queries), 1)
    if index.rerank:
        per_query += k * index.params.k_factor
    return float(per_query)


def measure_degrees(plan: IndexPlan, vectors, ids: np.ndarray, targets=(0.95,), k: int = 10,
                    max_memory_bytes: int | None = None, seed: int = 0, max_build_seconds: float | None = None
                    ) -> dict:
    """Search cost of each candidate (degree, efConstruction) at each recall target: ``{target: {(M, efC):
    Candidate}}``; empty when there is nothing to choose (no HNSW plan, or too few vectors to sample). Each
    candidate graph is built on a sample of the collection with QUERIES of it held out, and tuned to every target;
    when the sample is smaller than the collection, also on a nested quarter of it, to project its cost to the
    collection's size. Candidates over the memory budget are not built, those over the build-time budget are
    dropped."""
    parts = parse_factory(plan.factory)
    n, d = len(ids), plan.dim
    if plan.kind != "hnsw" or not parts.hnsw_m or n < 10 * QUERIES:
        return {}
    budget = max_memory_bytes if max_memory_bytes is not None else plan.memory_bytes
    fits = []
    for m in DEGREES:
        bpv, fixed = estimate_size(with_degree(plan.factory, m), d)
        if m == parts.hnsw_m or n * bpv + fixed <= budget:
            fits.append(m)
    rng = np.random.default_rng(seed)
    size = min(n, SAMPLE)
    rows = np.sort(rng.choice(n, size, replace=False)) if size < n else np.arange(n)
    x = np.ascontiguousarray(vectors[rows], dtype=np.float32)
    held = np.sort(rng.choice(size, QUERIES, replace=False))
    # the nested sample: the same held-out queries and a quarter of the rest, to see how the cost grows
    small = None
    if size < n and size // SMALL >= 10 * QUERIES:
        rest = np.setdiff1d(np.arange(size), held)
        small = np.sort(np.concatenate([held, rng.choice(rest, size // SMALL - QUERIES, replace=False)]))
    # an HNSW build costs about n log n insertions: the sample's time of adding scaled to the whole collection;
    # a trained part (a PCA) by the training sample's size, which is capped, not n
    scale = (n / size) * np.log(max(n, 2)) / np.log(max(size, 2))
    whole_train = min(n, plan.train_size or n)
    out: dict = {t: {} for t in targets}
    builds = {}
    for m in fits:
        for efc in EF_CONSTRUCTIONS:
            candidate = dataclasses.replace(plan_from_factory(with_degree(plan.factory, m), size, d, plan.metric,
                                                              plan.mode), ef_construction=efc)
            tuned, add_s, train_s, trained_on = _tuned_costs(candidate, x, held, targets, k)
            builds[m, efc] = add_s * scale + train_s * whole_train / max(trained_on, 1)
            grown = _tuned_costs(candidate, x[small], np.searchsorted(small, held), targets, k)[0] \
                if small is not None else None
            for t in targets:
                cost, params, recall = tuned[t]
                if grown is None:
                    out[t][m, efc] = Candidate(cost, params, recall, builds[m, efc])
                    continue
                # cost ~ size ** power, the power measured between the two samples' index sizes
                power = np.log(cost / grown[t][0]) / np.log((size - QUERIES) / (len(small) - QUERIES))
                projected = cost * (n / (size - QUERIES)) ** float(np.clip(power, 0.0, 1.0))
                out[t][m, efc] = Candidate(projected, params, recall, builds[m, efc], sample_cost=cost)
    own = builds.get((parts.hnsw_m, plan.ef_construction))
    limit = max_build_seconds if max_build_seconds is not None else \
        BUILD_BUDGET * own if own is not None else None
    if limit is not None:
        for costs in out.values():
            for key in [key for key, b in builds.items() if b > limit and key != (parts.hnsw_m, plan.ef_construction)]:
                costs.pop(key, None)
    return out if any(len(costs) > 1 for costs in out.values()) else {}


def _tuned_costs(plan: IndexPlan, x: np.ndarray, held: np.ndarray, targets, k: int):
    """Build ``plan`` on the rows of ``x`` but ``held`` (under row numbers as ids: a re-ranked candidate keeps
    float16 rows by id, and the collection's own ids, up to n, would make each candidate's store n rows long, 6 GB
    at 1M x 3072) and tune it to each target on the held rows -> ({target: (distances a query, params, recall)},
    seconds of adding, seconds of training, training rows)."""
    from .build import build_index
    from .source import ArraySource
    from .tuning import tune

    row_ids = np.arange(len(x), dtype=np.int64)
    source = ArraySource(x, row_ids)
    queries = source.reconstruct(held)
    t0 = time.perf_counter()
    index = build_index(x, row_ids, plan.metric, plan, source=source, skip_ids=held, use_gpu=False)
    train = index.info.get("train_seconds", 0.0)
    add = time.perf_counter() - t0 - train
    costs = {}
    for t in targets:
        tuned = tune(index, source, target_recall=t, k=k, holdout_ids=held, repeats=1)
        costs[t] = (hnsw_search_cost(index, queries, k), tuned["search_params"], tuned["recall_at_k"])
    return costs, add, train, index.info.get("trained_on", 0)


def _build_of(m: int, costs: dict) -> tuple[int, int]:
    """Degree ``m``'s efConstruction when the costs are projected: the widest, unless a narrower one costs over
    EFC_MARGIN less on the sample (not projected: the sample's own counts, without the projection's noise)."""
    widest = max(efc for d, efc in costs if d == m)
    return min(((m, efc) for d, efc in costs if d == m),
               key=lambda key: costs[key].sample_cost * (1.0 if key[1] == widest else 1.0 + EFC_MARGIN))


def degree_plan(plan: IndexPlan, costs: dict, target_recall: float, k: int = 10) -> IndexPlan:
    """``plan`` with the degree that ``costs`` (one target's entry of ``measure_degrees``) finds cheapest; the
    measurements go into its reasons."""
    if not costs:
        return plan
    # on the whole collection a tie goes to the smaller degree (less memory); projected, to the larger, and each
    # degree is built its widest unless a narrower build is clearly cheaper on the sample
    projected = any(c.sample_cost is not None for c in costs.values())
    eligible = list(costs) if not projected else [_build_of(m, costs) for m in sorted({m for m, _ in costs})]
    best = min(eligible, key=lambda key: costs[key].cost)
    chosen = min((key for key in eligible if costs[key].cost <= costs[best].cost * (1 + TIE)),
                 key=lambda key: (-key[0] if projected else key[0], -key[1]), default=best)
    factory = with_degree(plan.factory, chosen[0])

    def described(m: int, efc: int, c: Candidate) -> str:
        cost = f"{c.cost:.0f} distances a query" + ("" if c.sample_cost is None else
                                                    f" at {plan.n:,} vectors ({c.sample_cost:.0f} on the sample)")
        return (f"{with_degree(plan.factory, m)} efConstruction {efc}: {cost} at {c.params} (recall {c.recall:.3f}), "
                f"whole build about {c.build_seconds:.0f} s")
    measured = "; ".join(described(m, efc, c) for (m, efc), c in sorted(costs.items()))
    tie_rule = "larger degree" if projected else "smaller degree, then the wider build"
    reason = (f"degree and efConstruction by measurement on {SAMPLE}-vector sample (or all) tuned to recall@{k} "
              f"{target_recall:g} on {QUERIES} held out: {measured} -> {factory} efConstruction {chosen[1]}"
              + (f" (projected: each degree's widest build, unless a narrower one is {EFC_MARGIN:.0%} cheaper on the "
                 "sample)" if projected else "")
              + (f" (within 5% of the cheapest: the {tie_rule})" if chosen != best else ""))
    LOG.info(reason)
    bpv, fixed = estimate_size(factory, plan.dim)
    n = plan.n
    reasons = [r for r in plan.reasons if not r.startswith(plan.factory)]
    reasons.append(f"{factory} needs {(n * bpv + fixed) / 2**30:.2f} GiB ({bpv:.0f} B/vector)")
    return dataclasses.replace(plan, factory=factory, bytes_per_vector=float(bpv), ef_construction=chosen[1],
                               memory_bytes=int(n * bpv + fixed), reasons=tuple(reasons) + (reason,))


def choose_degree(plan: IndexPlan, vectors, ids: np.ndarray, *, target_recall: float = 0.95, k: int = 10,
                  max_memory_bytes: int | None = None, seed: int = 0, max_build_seconds: float | None = None
                  ) -> IndexPlan:
    """``plan`` with its HNSW degree and efConstruction chosen by measurement (a copy; ``plan`` itself when it
    is no HNSW plan, when the collection is too small to sample, or when only one candidate is within the
    budgets). ``vectors`` (n, d) any float dtype (a float16 memmap is fine), ``ids`` (n,) int64 aligned."""
    costs = measure_degrees(plan, vectors, ids, (target_recall,), k, max_memory_bytes, seed, max_build_seconds)
    return degree_plan(plan, costs.get(target_recall, {}), target_recall, k)
