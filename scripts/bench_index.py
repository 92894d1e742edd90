"""Benchmark the ANN index layer against raw faiss and hnswlib at recall@10 targets 0.90 / 0.95 / 0.99.

Datasets (seeded, made here): ``clip`` 1M x 512 (CLIP-like: clustered, power-law spectrum, randomly rotated,
L2-normalised, inner product) and ``gist`` 1M x 960 (GIST-like: clustered, non-negative, uneven energy over
dimensions, squared L2); ``--n`` scales them down. ``--collection DIR --encoder NAME`` benchmarks a real
collection's float16 embeddings instead (a random held-out sample becomes the queries).

Configurations, each built once and measured at every target:

- ``ours-speed`` / ``ours-compact``: ``plan_index(mode=...)``, ``build_index``, then ``tune`` (automatic, on the
  collection's own vectors) to the target; recall and QPS measured on held-out queries.
- ``raw-faiss-speed`` / ``raw-faiss-compact``: the same faiss index searched directly with the same parameters
  (faiss ``IndexRefineFlat`` over float32 vectors in RAM for the re-ranking), i.e. our overhead.
- ``faiss-HNSW32``, ``hnswlib-M16``, ``hnswlib-M32``: efSearch / ef chosen by ``tune``'s rule (the smallest on
  its grid whose recall minus one standard error reaches the target) on separate tuning queries; the
  ``-oracle`` lines take the smallest ef that reaches it on the evaluation queries themselves (an upper bound).

Re-ranking reads float16 rows from a memmapped .npy (as from a collection's shards); ``bytes_per_vector`` counts
what the index holds in memory, ``rerank_bytes_per_vector_on_disk`` the float16 rows it reads.

One JSON line per (dataset, configuration, target); the last line is a summary with the ratios.
Ground truth: exact faiss search. Example: ``nice python scripts/bench_index.py --n 100000``.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nearsight.retrieval.index import (ArraySource, build_index, exact_knn, load_index,  # noqa: E402
                                       plan_index, recall_at_k, tune)
from nearsight.retrieval.index.tuning import EFS, recall_with_error  # noqa: E402

TARGETS = (0.90, 0.95, 0.99)
K = 10


def make_dataset(n: int, d: int, kind: str, path: str, seed: int = 0, spread: float = 0.5, block: int = 100_000):
    """Write n seeded clustered vectors to ``path`` as an (n, d) float16 .npy (a collection's shard format) and
    return it memmapped. ~sqrt(n) clusters whose spread is half the within-cluster noise on a power-law
    spectrum: nearest neighbours are neither trivial (separate clusters) nor random."""
    rng = np.random.default_rng(seed)
    nc = max(16, int(np.sqrt(n)))
    spec = (np.arange(1, d + 1) ** -0.5).astype(np.float32)
    rot = np.linalg.qr(rng.standard_normal((d, d)))[0].astype(np.float32) if kind == "clip" else None
    centres = rng.standard_normal((nc, d)).astype(np.float32) * spec * spread
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16, shape=(n, d))
    for s in range(0, n, block):
        b = min(block, n - s)
        x = centres[rng.integers(0, nc, b)] + rng.standard_normal((b, d)).astype(np.float32) * spec
        if kind == "clip":
            x = x @ rot
            x /= np.linalg.norm(x, axis=1, keepdims=True)
        else:
            x = np.abs(x) * 0.3
        out[s:s + b] = x
    out.flush()
    del out
    return np.load(path, mmap_mode="r")


def load_collection(directory: str, encoder: str, metric: str | None):
    parts = sorted(glob.glob(os.path.join(directory, "embeddings", encoder, "part-*[0-9].npy")))
    if not parts:
        sys.exit(f"no embedding shards under {directory}/embeddings/{encoder}")
    vectors = np.concatenate([np.load(p, mmap_mode="r") for p in parts])
    ids = np.concatenate([np.load(p[:-4] + ".ids.npy") for p in parts])
    if metric is None:
        with open(os.path.join(directory, "collection.json")) as f:
            enc = json.load(f)["encoders"]
        enc = enc[encoder] if isinstance(enc, dict) else next(e for e in enc if e.get("name") == encoder)
        metric = enc["metric"]
    return vectors, ids.astype(np.int64), metric


def timed(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def qps(search_batch, search_one, queries: np.ndarray, n_single: int, repeats: int) -> tuple[float, float]:
    """(single-query QPS over ``n_single`` one-by-one calls, batched QPS of one call over all queries)."""
    search_batch(queries[:8])
    one = queries[:n_single]
    t_single = timed(lambda: [search_one(one[i:i + 1]) for i in range(len(one))], repeats)
    t_batch = timed(lambda: search_batch(queries), repeats)
    return len(one) / t_single, len(queries) / t_batch


def emit(rows: list, **fields) -> None:
    # the load average says how much other work shared the cores while this line was measured
    fields["load1"] = os.getloadavg()[0]
    line = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}
    rows.append(line)
    print(json.dumps(line), flush=True)


def faiss_index_bytes(index) -> int:
    import faiss
    return int(len(faiss.serialize_index(index)))


def bench_dataset(name: str, vectors: np.ndarray, queries: np.ndarray, peer_tuning: np.ndarray, metric: str,
                  args, rows: list, workdir: str) -> None:
    """``vectors``: (n, d) float16 memmap, the rows a collection keeps on disk (the re-ranking source).
    Ids are 0..n-1 here, so faiss's IndexRefine (which takes ids as rows) is a fair raw baseline.
    ``queries`` measure everything; ``peer_tuning`` (other vectors of the same distribution) is what the peers'
    ef is chosen on, by the rule ``tune`` applies to ours."""
    import faiss
    import hnswlib

    n, d = vectors.shape
    ids = np.arange(n, dtype=np.int64)
    source = ArraySource(vectors, ids)
    _, truth = exact_knn(queries, source.vectors, ids, K, metric)
    peer_truth = exact_knn(peer_tuning, source.vectors, ids, K, metric)[1]
    evaluation, tuning = (queries, truth), (peer_tuning, peer_truth)
    common = dict(dataset=name, n=n, d=d, metric=metric, nq=len(queries))
    ns, rep = args.single, args.repeats

    def tune_all(index, holdout) -> dict:
        """Tuned parameters per target, measured as a collection tunes: on held-out vectors not in the index."""
        out = {}
        for target in TARGETS:
            t0 = time.perf_counter()
            tuned = tune(index, source, target_recall=target, k=K, holdout_ids=holdout)
            out[target] = (tuned, index.params, time.perf_counter() - t0)
        return out

    def measure_ours(config, index, tuned_by_target, raw_search_factory):
        for target, (tuned, p, tune_s) in tuned_by_target.items():
            index.set_params(p)
            _, I = index.search(queries, K)
            rec = recall_at_k(I, truth, K)
            raw_batch, raw_one = raw_search_factory(p)
            # interleave ours and raw so background load hits both alike
            s_ours, b_ours, s_raw, b_raw = 0.0, 0.0, 0.0, 0.0
            for _ in range(2):
                s, b = qps(lambda q: index.search(q, K), lambda q: index.search(q, K), queries, ns, rep)
                s_ours, b_ours = max(s_ours, s), max(b_ours, b)
                s, b = qps(raw_batch, raw_one, queries, ns, rep)
                s_raw, b_raw = max(s_raw, s), max(b_raw, b)
            emit(rows, **common, config=config, factory=index.factory, target_recall=target, recall=rec,
                 tuned_recall=tuned["recall_at_k"], tuned_stderr=tuned["recall_stderr"],
                 target_met_in_tuning=tuned["target_met"], params=p.to_dict(), qps_single=s_ours,
                 qps_batch=b_ours, tune_s=tune_s)
            _, Iraw = raw_batch(queries)
            emit(rows, **common, config="raw-faiss-" + config.split("-", 1)[1], factory=index.factory,
                 target_recall=target, recall=recall_at_k(Iraw, truth, K), params=p.to_dict(),
                 qps_single=s_raw, qps_batch=b_raw,
                 overhead_single=1 - s_ours / s_raw, overhead_batch=1 - b_ours / b_raw)

    # -- ours, speed and compact ------------------------------------------------------------------
    hnsw_faiss = None
    for mode in ("speed", "compact"):
        refine = flat = None
        plan = plan_index(n, d, metric, args.max_memory, mode)
        # as build_collection_index does: a sample stays out of the index and is what tuning measures on
        holdout = np.random.default_rng(args.seed).choice(ids, args.tune_queries, replace=False)
        t0 = time.perf_counter()
        index = build_index(source.vectors, ids, metric, plan, source=source, skip_ids=holdout)
        build_s = time.perf_counter() - t0
        tuned_by_target = tune_all(index, holdout)
        assert index.ntotal == n - len(holdout)
        holdout = np.sort(holdout)
        index.add(source.reconstruct(holdout), holdout)     # as a collection does once tuned
        mem = sum(faiss_index_bytes(s.index) for s in index.segments)
        # served as a collection serves it: saved, then loaded memory-mapped (the float16 re-rank rows stay
        # in the file and are paged in as queries touch them)
        index.save(workdir, f"{name}-{mode}")
        index = load_index(workdir, f"{name}-{mode}", source=source, mmap=True, sync=False)
        emit(rows, **common, config=f"ours-{mode}", factory=index.factory, build_s=build_s,
             bytes_per_vector=mem / n, rerank_bytes_per_vector_on_disk=2 * d if index.rerank else 0,
             plan_reasons=list(plan.reasons))
        assert len(index.segments) == 1 and index.ntotal == n, "raw faiss compares against one whole segment"
        seg = index.segments[0].index
        if index.rerank:
            # faiss's own re-ranking: IndexRefineFlat over float32 rows in memory (ids here are 0..n-1)
            flat = faiss.IndexFlatIP(d) if metric == "ip" else faiss.IndexFlatL2(d)
            for s in range(0, n, 65536):
                flat.add(np.ascontiguousarray(source.vectors[s:s + 65536], dtype=np.float32))
            refine = faiss.IndexRefine(seg, flat)

            def raw_factory(p, refine=refine):
                from nearsight.retrieval.index.backend import faiss_params
                base = faiss_params(index.kind, p)
                rp = faiss.IndexRefineSearchParameters(k_factor=float(p.k_factor), base_index_params=base)
                return (lambda q: refine.search(q, K, params=rp)), (lambda q: refine.search(q, K, params=rp))
        else:
            def raw_factory(p, seg=seg):
                from nearsight.retrieval.index.backend import faiss_params
                fp = faiss_params(index.kind, p)
                if fp is None:
                    return (lambda q: seg.search(q, K)), (lambda q: seg.search(q, K))
                return (lambda q: seg.search(q, K, params=fp)), (lambda q: seg.search(q, K, params=fp))
        measure_ours(f"ours-{mode}", index, tuned_by_target, raw_factory)
        if index.factory == "HNSW32":
            hnsw_faiss = (seg, build_s, mem)
        index = refine = flat = raw_factory = None    # free before the next build

    # -- faiss HNSW32 (reused from speed mode when that is what it built) --------------------------
    if hnsw_faiss is None:
        t0 = time.perf_counter()
        h = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2)
        h.hnsw.efConstruction = 80
        for s in range(0, n, 65536):
            h.add(np.ascontiguousarray(source.vectors[s:s + 65536], dtype=np.float32))
        hnsw_faiss = (h, time.perf_counter() - t0, faiss_index_bytes(h))
    h, build_s, mem = hnsw_faiss
    emit(rows, **common, config="faiss-HNSW32", factory="HNSW32", build_s=build_s, bytes_per_vector=mem / n)
    sweep(rows, common, "faiss-HNSW32", evaluation, tuning, ids,
          lambda ef: (lambda q: h.search(q, K, params=faiss.SearchParametersHNSW(efSearch=ef))), ns, rep)
    del hnsw_faiss, h

    # -- hnswlib --------------------------------------------------------------------------------------
    for m in (16, 32):
        t0 = time.perf_counter()
        hl = hnswlib.Index(space="ip" if metric == "ip" else "l2", dim=d)
        hl.init_index(max_elements=n, M=m, ef_construction=80, random_seed=0)
        for s in range(0, n, 65536):
            hl.add_items(np.ascontiguousarray(source.vectors[s:s + 65536], dtype=np.float32), ids[s:s + 65536])
        build_s = time.perf_counter() - t0
        tmp = os.path.join(workdir, "hnswlib.bin")
        hl.save_index(tmp)
        emit(rows, **common, config=f"hnswlib-M{m}", factory=f"hnswlib M={m} efC=80", build_s=build_s,
             bytes_per_vector=os.path.getsize(tmp) / n)
        os.remove(tmp)

        def searcher(ef, hl=hl):
            hl.set_ef(ef)
            return lambda q: hl.knn_query(q, k=K)[::-1]     # (labels, dists) -> (D, I) order
        sweep(rows, common, f"hnswlib-M{m}", evaluation, tuning, None, searcher, ns, rep)
        del hl


def sweep(rows, common, config, evaluation, tuning, ids, make_search, ns, rep) -> None:
    """Per target, the peer at the smallest ef (tune's grid) whose recall minus one standard error on the
    tuning queries reaches it: the rule ``tune`` applies to ours. Also, as ``<config>-oracle``, the smallest ef
    whose recall on the evaluation queries themselves reaches it (a choice no deployment can make: an upper
    bound for the peer)."""
    queries, truth = evaluation
    efs = [e for e in EFS if e >= K]
    cache: dict = {}

    def at(ef):     # (tuning recall, its stderr, evaluation recall) of one ef, searched once
        if ef not in cache:
            search = make_search(ef)
            found = []
            for q in (tuning[0], queries):
                I = np.asarray(search(q)[1], dtype=np.int64)
                found.append(np.where(I >= 0, ids[np.clip(I, 0, None)], -1) if ids is not None else I)
            cache[ef] = (*recall_with_error(found[0], tuning[1], K), recall_at_k(found[1], truth, K))
        return cache[ef]

    for target in TARGETS:
        tuned = next((e for e in efs if at(e)[0] - at(e)[1] >= target), efs[-1])
        oracle = next((e for e in efs if at(e)[2] >= target), efs[-1])
        for name, ef in ((config, tuned), (config + "-oracle", oracle)):
            search = make_search(ef)
            s, b = qps(search, search, queries, ns, rep)
            emit(rows, **common, config=name, target_recall=target, recall=at(ef)[2], params={"ef": ef},
                 tuning_recall=at(ef)[0], qps_single=s, qps_batch=b)


def summarise(rows: list) -> dict:
    out = {}
    for ds in sorted({r["dataset"] for r in rows}):
        mine = [r for r in rows if r["dataset"] == ds]
        build = {r["config"]: r for r in mine if "build_s" in r}
        at = {(r["config"], r["target_recall"]): r for r in mine if "target_recall" in r}
        s = {"build_s": {c: r["build_s"] for c, r in build.items()},
             "bytes_per_vector": {c: r["bytes_per_vector"] for c, r in build.items()}}
        for t in TARGETS:
            def best(suffix=""):
                qps = [at[(c + suffix, t)]["qps_batch"] for c in ("faiss-HNSW32", "hnswlib-M16", "hnswlib-M32")
                       if (c + suffix, t) in at and at[(c + suffix, t)]["recall"] >= t]
                return max(qps) if qps else None
            best_peer = best()
            entry = {}
            for mode in ("speed", "compact"):
                r = at.get((f"ours-{mode}", t))
                raw = at.get((f"raw-faiss-{mode}", t))
                if r is None:
                    continue
                entry[mode] = {"recall": r["recall"], "qps_batch": r["qps_batch"], "qps_single": r["qps_single"],
                               "vs_best_peer_batch": round(r["qps_batch"] / best_peer, 3) if best_peer else None,
                               "overhead_batch": raw and raw["overhead_batch"],
                               "overhead_single": raw and raw["overhead_single"]}
            entry["best_peer_qps_batch"] = best_peer
            entry["best_oracle_peer_qps_batch"] = best("-oracle")
            s[f"recall@10>={t}"] = entry
        out[ds] = s
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors per synthetic dataset (default 1M)")
    ap.add_argument("--datasets", default="clip,gist", help="comma list of clip, gist")
    ap.add_argument("--nq", type=int, default=500, help="held-out queries with exact ground truth")
    ap.add_argument("--single", type=int, default=200, help="queries timed one by one for single-query QPS")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--tune-queries", type=int, default=500)
    ap.add_argument("--max-memory", default="8G", help="memory budget for the automatic plans")
    ap.add_argument("--collection", help="benchmark a collection's embeddings instead")
    ap.add_argument("--encoder", help="encoder name with --collection")
    ap.add_argument("--metric", choices=("ip", "l2"), help="with --collection, when collection.json lacks it")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    import faiss
    rows: list = []
    with tempfile.TemporaryDirectory(prefix="bench_index_") as work:
        if args.collection:
            vectors, _, metric = load_collection(args.collection, args.encoder, args.metric)
            rng = np.random.default_rng(args.seed)
            held = np.zeros(len(vectors), bool)
            picked = rng.choice(len(vectors), 2 * min(args.nq, len(vectors) // 20), replace=False)
            held[picked] = True
            queries = np.ascontiguousarray(vectors[picked[:len(picked) // 2]], dtype=np.float32)
            peer_tuning = np.ascontiguousarray(vectors[picked[len(picked) // 2:]], dtype=np.float32)
            path = os.path.join(work, "collection.f16.npy")
            np.save(path, np.asarray(vectors[~held], dtype=np.float16))
            bench_dataset(f"{os.path.basename(args.collection.rstrip('/'))}:{args.encoder}",
                          np.load(path, mmap_mode="r"), queries, peer_tuning, metric, args, rows, work)
        for ds in [s for s in args.datasets.split(",") if s and not args.collection]:
            d, metric = (512, "ip") if ds == "clip" else (960, "l2")
            t0 = time.perf_counter()
            x = make_dataset(args.n + 2 * args.nq, d, ds, os.path.join(work, f"{ds}.all.npy"), seed=args.seed)
            queries = np.ascontiguousarray(x[args.n:args.n + args.nq], dtype=np.float32)
            peer_tuning = np.ascontiguousarray(x[args.n + args.nq:], dtype=np.float32)
            path = os.path.join(work, f"{ds}.f16.npy")
            np.save(path, x[:args.n])
            del x
            os.remove(os.path.join(work, f"{ds}.all.npy"))
            print(json.dumps({"dataset": ds, "generated_s": round(time.perf_counter() - t0, 2),
                              "threads": faiss.omp_get_max_threads()}), flush=True)
            bench_dataset(ds, np.load(path, mmap_mode="r"), queries, peer_tuning, metric, args, rows, work)
            os.remove(path)
    print(json.dumps({"summary": summarise(rows), "n": args.n, "targets": list(TARGETS), "k": K}), flush=True)


if __name__ == "__main__":
    main()
