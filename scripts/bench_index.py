"""Benchmark the ANN index layer against raw faiss and hnswlib at recall@10 targets 0.90 / 0.95 / 0.99.

Datasets:

- ``--dataset fashion-mnist``: real data the index layer was not tuned on, as ann-benchmarks uses it: the 60,000
  training images as 784 raw pixels (squared L2); 1,000 evaluation queries from the test set and 500 other test
  images on which the peers' parameters are chosen. Read from the Debian package ``dataset-fashion-mnist``
  (``apt-get download`` + ``dpkg -x`` into ``--data-dir``, done here when missing; nothing is installed).
- ``--dataset clip,gist``: seeded synthetic sets made here, ``clip`` 1M x 512 (clustered, power-law spectrum,
  rotated, L2-normalised, inner product) and ``gist`` 1M x 960 (non-negative, uneven energy, squared L2);
  ``--n`` scales them down. ``--collection DIR --encoder NAME``: a collection's float16 embeddings.

Configurations, each built once and measured at every target:

- ``ours-speed`` / ``ours-compact``: what ``build_collection_index`` does: ``plan_index(mode=...)`` (speed: the
  HNSW degree chosen by ``measure_degrees`` for each target), ``build_index`` with 500 vectors held out, ``tune``
  on them, the held-out vectors added back, saved, loaded memory-mapped.
- ``raw-faiss-speed`` / ``raw-faiss-compact``: the very faiss objects ours searches, called directly with the
  same parameters: our wrapper's overhead, as rate ratios and as ``call_overhead_us`` (per single-query call:
  the fastest of several interleaved calls of each, compared).
- peers ``faiss-HNSW32``, ``hnswlib-M16``, ``hnswlib-M32`` (efConstruction 80) and, for the compact mode, the
  like-for-like ``faiss-IVFPQfs-RFlat`` (faiss's own recipe ``IVFk,PQmx4fs,RFlat``: the same nlist and code
  size as our compact plan, re-ranked from float32 rows in RAM).

One rule for all: every configuration's parameters come from ``tune`` (fine search, recall minus one standard
error >= target, fastest passing setting with ties to the shallower); ours on its held-out collection vectors,
the peers on the separate tuning queries (through a thin adapter). Every configuration counts at the setting
its rule chose, whatever its recall on the evaluation queries (reported beside it); ``-oracle`` lines give
each HNSW peer at the smallest ef that reaches the target on the evaluation queries themselves (an upper bound
no deployment can pick).

Timing: for each target, all configurations are timed in rounds, one after the other in a rotating order
(``--repeats`` rounds, medians), so background load hits all alike; ratios to peers use the same rounds. Batched
= one call with all evaluation queries; single = ``--single`` one-query calls.

Memory as measured: ``index_bytes_per_vector`` (serialized faiss structures, what a load holds in RAM) plus, for
our re-ranking modes, ``rerank_resident_bytes_per_vector``: the float16 rows' pages resident in this process
(``/proc/self/smaps``) after the timed rounds; they are read from ``<name>.vectors.faiss`` through the page
cache. ``cold_qps_batch``: the first batched pass after the rows' pages were dropped from the page cache
(``posix_fadvise(DONTNEED)``), i.e. the rows really on disk.

One JSON line per measurement; the last line is a summary with the ratios. Ground truth: exact faiss search.
Example: ``nice python scripts/bench_index.py --dataset fashion-mnist`` (about 15 minutes on two cores).
"""
from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nearsight.retrieval.index import (ArraySource, SearchParams, build_index, exact_knn,  # noqa: E402
                                       load_index, plan_index, recall_at_k, tune)
from nearsight.retrieval.index.degree import degree_plan, measure_degrees  # noqa: E402
from nearsight.retrieval.index.tuning import bisect_lowest, hnsw_efs  # noqa: E402

TARGETS = (0.90, 0.95, 0.99)
K = 10
HNSW_PEERS = ("faiss-HNSW32", "hnswlib-M16", "hnswlib-M32")
IVF_PEER = "faiss-IVFPQfs-RFlat"


# -- data -------------------------------------------------------------------------------------------

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


def fashion_mnist(data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    """(train (60000, 784), test (10000, 784)) float32 raw pixels from the Debian package, fetched into
    ``data_dir`` with ``apt-get download`` and unpacked with ``dpkg -x`` when not there yet."""
    root = os.path.join(data_dir, "root", "usr", "share", "datasets", "fashion-mnist")
    if not os.path.exists(os.path.join(root, "t10k-images-idx3-ubyte.gz")):
        os.makedirs(data_dir, exist_ok=True)
        subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=data_dir, check=True)
        deb = sorted(glob.glob(os.path.join(data_dir, "dataset-fashion-mnist_*.deb")))[-1]
        subprocess.run(["dpkg", "-x", deb, os.path.join(data_dir, "root")], check=True)

    def images(name: str) -> np.ndarray:
        with gzip.open(os.path.join(root, name)) as f:
            raw = f.read()
        n, rows, cols = (int.from_bytes(raw[i:i + 4], "big") for i in (4, 8, 12))   # idx3 header
        return np.frombuffer(raw, np.uint8, offset=16).reshape(n, rows * cols).astype(np.float32)
    return images("train-images-idx3-ubyte.gz"), images("t10k-images-idx3-ubyte.gz")


def load_collection(directory: str, encoder: str, metric: str | None):
    parts = sorted(glob.glob(os.path.join(directory, "embeddings", encoder, "part-*[0-9].npy")))
    if not parts:
        sys.exit(f"no embedding shards under {directory}/embeddings/{encoder}")
    vectors = np.concatenate([np.load(p, mmap_mode="r") for p in parts])
    if metric is None:
        with open(os.path.join(directory, "collection.json")) as f:
            enc = json.load(f)["encoders"]
        enc = enc[encoder] if isinstance(enc, dict) else next(e for e in enc if e.get("name") == encoder)
        metric = enc["metric"]
    return vectors, metric


# -- measuring --------------------------------------------------------------------------------------

def emit(rows: list, **fields) -> None:
    # the load average says how much other work shared the cores while this line was measured
    fields["load1"] = round(os.getloadavg()[0], 2)
    line = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in fields.items()}
    rows.append(line)
    print(json.dumps(line), flush=True)


def mapped_resident_bytes(path: str) -> int:
    """Bytes of ``path``'s pages resident in this process's mappings (``/proc/self/smaps`` Rss)."""
    total, inside = 0, False
    real = os.path.realpath(path)
    try:
        with open("/proc/self/smaps") as f:
            for line in f:
                first = line.split(None, 1)[0]
                if "-" in first and not first.endswith(":"):       # a mapping's header line
                    inside = line.rstrip().endswith(real)
                elif inside and first == "Rss:":
                    total += int(line.split()[1]) * 1024
    except OSError:
        return -1
    return total


def drop_from_page_cache(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def time_rounds(searchers: dict, queries: np.ndarray, n_single: int, repeats: int,
                min_batch_s: float = 0.3) -> dict:
    """``{name: (batch_fn, single_fn)}`` -> ``{name: ([batched q/s per round], [single q/s per round])}``,
    all timed in the same rounds, each round in another order. A batched timing repeats the query batch for at
    least ``min_batch_s``: one pass of 1,000 queries at 10k q/s lasts 0.1 s, short enough for one burst of
    other work on the machine to swing a round's figure by 30%."""
    names = list(searchers)
    out = {name: ([], []) for name in names}
    one = [queries[i:i + 1] for i in range(min(n_single, len(queries)))]
    for name in names:                       # warm up: caches, lazily made search paths
        searchers[name][0](queries[:8])
        searchers[name][1](one[0])
    for r in range(repeats):
        order = names[r % len(names):] + names[:r % len(names)]
        for name in order:
            batch, single = searchers[name]
            t0, done = time.perf_counter(), 0
            while done == 0 or time.perf_counter() - t0 < min_batch_s:
                batch(queries)
                done += len(queries)
            t1 = time.perf_counter()
            for q in one:
                single(q)
            t2 = time.perf_counter()
            out[name][0].append(done / (t1 - t0))
            out[name][1].append(len(one) / (t2 - t1))
    return out


def call_overhead_us(ours, raw, queries: np.ndarray, n: int = 300, tries: int = 7) -> float:
    """Our wrapper's cost per single-query call over the same faiss object's, in microseconds: per query, the
    fastest of ``tries`` interleaved calls of each (the search itself is identical, so what the minimum leaves
    is the wrapper), median over ``n`` queries. Rate ratios cannot resolve a few microseconds in a 100 us call
    on a shared machine; the fastest of several back-to-back calls can."""
    clock, diffs = time.perf_counter_ns, []
    for i in range(min(n, len(queries))):
        q, best = queries[i:i + 1], [float("inf"), float("inf")]
        for t in range(tries):
            # each goes first in turn: whichever follows the other's call is 1-3 us faster here (faiss's
            # OpenMP threads still spinning from the previous call), which would otherwise count as overhead
            for j in ((0, 1), (1, 0))[t % 2]:
                t0 = clock()
                (ours, raw)[j](q)
                best[j] = min(best[j], clock() - t0)
        diffs.append(best[0] - best[1])
    return float(np.median(diffs)) / 1000


class Peer:
    """A peer library's index seen through the few things ``tune`` uses, so that its parameters are chosen
    by exactly our rule. ``make(params)`` -> a search function ``(q, k) -> (D, I)`` with everything it
    needs prepared (so timing it costs no more than calling the library)."""

    def __init__(self, factory: str, kind: str, metric: str, make, rerank: bool = False):
        self.factory, self.kind, self.metric, self.rerank = factory, kind, metric, rerank
        self.params, self.info, self._make = SearchParams(), {}, make
        self.segments = []

    def search(self, queries, k, params=None):
        D, I = self._make(params or self.params)(np.ascontiguousarray(queries, dtype=np.float32), k)
        return D, np.asarray(I, dtype=np.int64)

    def set_params(self, params):
        self.params = params

    def update_info(self, **fields):
        self.info.update(fields)

    ntotal = property(lambda self: 0)


# -- one dataset ------------------------------------------------------------------------------------

def bench_dataset(name: str, vectors: np.ndarray, queries: np.ndarray, peer_tuning: np.ndarray, metric: str,
                  args, rows: list, workdir: str) -> None:
    """``vectors``: (n, d) float16 memmap, the rows a collection keeps on disk. Ids are 0..n-1 here, so faiss's
    IndexRefine (which takes ids as rows) is a fair raw baseline. ``queries`` measure everything;
    ``peer_tuning`` (other vectors of the same distribution) is what the peers' parameters are chosen on."""
    import faiss
    import hnswlib

    n, d = vectors.shape
    ids = np.arange(n, dtype=np.int64)
    source = ArraySource(vectors, ids)
    _, truth = exact_knn(queries, source.vectors, ids, K, metric)
    common = dict(dataset=name, n=n, d=d, metric=metric, nq=len(queries), threads=faiss.omp_get_max_threads())
    fmetric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    holdout = np.sort(np.random.default_rng(args.seed).choice(ids, args.tune_queries, replace=False))
    # per target: {config: (batch_fn, single_fn)} and what each line reports beside its timings
    searchers: dict = {t: {} for t in TARGETS}
    extra: dict = {t: {} for t in TARGETS}
    prepare: dict = {t: [] for t in TARGETS}
    keep = []          # objects the searchers use

    def float32_blocks():
        for s in range(0, n, 65536):
            yield np.ascontiguousarray(source.vectors[s:s + 65536], dtype=np.float32)

    def ours(mode: str, plan, targets) -> None:
        t0 = time.perf_counter()
        index = build_index(source.vectors, ids, metric, plan, source=source, skip_ids=holdout)
        build_s = time.perf_counter() - t0
        tuned = {}
        for t in targets:
            t1 = time.perf_counter()
            tuned[t] = (tune(index, source, target_recall=t, k=K, holdout_ids=holdout), index.params,
                        time.perf_counter() - t1)
        index.add(source.reconstruct(holdout), holdout)      # as a collection does once tuned
        tag = f"{name.replace(':', '_')}-{mode}-{plan.factory.replace(',', '_')}"
        index.save(workdir, tag)
        del index
        rows_file = os.path.join(workdir, "indexes", f"{tag}.vectors.faiss")
        if os.path.exists(rows_file):
            drop_from_page_cache(rows_file)       # the rows really on disk for the first pass
        index = load_index(workdir, tag, source=source, mmap=True, sync=False)
        assert len(index.segments) == 1 and index.ntotal == n, "raw faiss compares against one whole segment"
        seg = index.segments[0].index
        index_bytes = len(faiss.serialize_index(seg))
        cold = None
        if index.rerank:
            index.set_params(tuned[targets[0]][1])
            t1 = time.perf_counter()
            index.search(queries, K)
            cold = len(queries) / (time.perf_counter() - t1)
        emit(rows, **common, config=f"ours-{mode}", factory=index.factory, build_s=build_s,
             index_bytes_per_vector=index_bytes / n, rerank_bytes_per_vector_on_disk=2 * d if index.rerank else 0,
             cold_qps_batch=cold, cold_target=targets[0] if cold else None, plan_reasons=list(plan.reasons),
             plan_warnings=list(plan.warnings))
        raw = seg
        if index.rerank:
            # faiss's own re-ranking: IndexRefineFlat over float32 rows in RAM (ids here are 0..n-1)
            flat = faiss.IndexFlat(d, fmetric)
            for x in float32_blocks():
                flat.add(x)
            raw = faiss.IndexRefine(seg, flat)
            keep.append(flat)
        keep.extend([index, raw])
        for t in targets:
            result, p, tune_s = tuned[t]
            prepare[t].append(lambda p=p: index.set_params(p))      # before this target's rounds
            from nearsight.retrieval.index.backend import faiss_params
            fp = faiss_params(index.kind, p)
            if index.rerank:
                fp = faiss.IndexRefineSearchParameters(k_factor=float(p.k_factor), base_index_params=fp)
            keep.append(fp)
            searchers[t][f"ours-{mode}"] = (lambda q: index.search(q, K),) * 2
            searchers[t][f"raw-faiss-{mode}"] = (lambda q, r=raw, fp=fp: r.search(q, K, params=fp),) * 2
            extra[t][f"ours-{mode}"] = dict(factory=index.factory, params=p.to_dict(), tuned_recall=result[
                "recall_at_k"], tuned_stderr=result["recall_stderr"], target_met_in_tuning=result["target_met"],
                tune_s=tune_s, rows_file=rows_file if index.rerank else None, index_bytes=index_bytes,
                exact_latency_ms=result.get("exact_latency_ms"), warnings=result.get("warnings"))
            extra[t][f"raw-faiss-{mode}"] = dict(factory=index.factory, params=p.to_dict())

    # -- ours: speed (degree and efConstruction measured per target, one build per distinct pair) and compact ---
    if "speed" in args.modes:
        speed = plan_index(n, d, metric, args.max_memory, "speed")
        t0 = time.perf_counter()
        costs = measure_degrees(speed, source.vectors, ids, TARGETS, K, seed=args.seed)
        emit(rows, **common, config="degree-measurement", seconds=time.perf_counter() - t0,
             costs={str(t): {str(m): (*c[:3], c.sample_cost) for m, c in v.items()} for t, v in costs.items()})
        by_factory: dict = {}
        for t in TARGETS:
            plan = degree_plan(speed, costs.get(t, {}), t, K)
            by_factory.setdefault((plan.factory, plan.ef_construction), (plan, []))[1].append(t)
        for plan, targets in by_factory.values():
            ours("speed", plan, targets)
    compact = plan_index(n, d, metric, args.max_memory, "compact")
    if "compact" in args.modes:
        ours("compact", compact, list(TARGETS))

    # -- peers: parameters by tune's rule on the separate tuning queries ---------------------------------
    def peer(config: str, factory: str, kind: str, make, build_s: float, nbytes: int, rerank=False,
             oracle=False) -> None:
        adapter = Peer(factory, kind, metric, make, rerank)
        emit(rows, **common, config=config, factory=factory, build_s=build_s, index_bytes_per_vector=nbytes / n)
        for t in TARGETS:
            result = tune(adapter, source, target_recall=t, k=K, queries=peer_tuning)
            p = adapter.params
            fn = make(p)
            searchers[t][config] = (lambda q, fn=fn: fn(q, K),) * 2
            extra[t][config] = dict(factory=factory, params=p.to_dict(), tuned_recall=result["recall_at_k"],
                                    index_bytes=nbytes)
            if oracle:      # the smallest ef whose recall on the evaluation queries themselves reaches t
                def reaches(ef):
                    return recall_at_k(np.asarray(make(SearchParams(efSearch=ef))(queries, K)[1]), truth, K) >= t
                grid = hnsw_efs(K)
                hi = next((e for e in grid if reaches(e)), grid[-1])
                lo = max([e for e in grid if e < hi] or [K - 1])
                op = SearchParams(efSearch=bisect_lowest(lo, hi, reaches) if hi > K else hi)
                fn = make(op)
                searchers[t][config + "-oracle"] = (lambda q, fn=fn: fn(q, K),) * 2
                extra[t][config + "-oracle"] = dict(factory=factory, params=op.to_dict())

    t0 = time.perf_counter()
    h = faiss.IndexHNSWFlat(d, 32, fmetric)
    h.hnsw.efConstruction = 80
    for x in float32_blocks():
        h.add(x)
    build_s = time.perf_counter() - t0
    keep.append(h)

    def faiss_hnsw(p, h=h):
        sp = faiss.SearchParametersHNSW()
        sp.efSearch = int(p.efSearch or 16)
        return lambda q, k: h.search(q, k, params=sp)
    peer("faiss-HNSW32", "HNSW32", "hnsw", faiss_hnsw, build_s, len(faiss.serialize_index(h)), oracle=True)

    for m in (16, 32):
        t0 = time.perf_counter()
        hl = hnswlib.Index(space="ip" if metric == "ip" else "l2", dim=d)
        hl.init_index(max_elements=n, M=m, ef_construction=80, random_seed=0)
        start = 0
        for x in float32_blocks():
            hl.add_items(x, ids[start:start + len(x)])
            start += len(x)
        build_s = time.perf_counter() - t0
        tmp = os.path.join(workdir, "hnswlib.bin")
        hl.save_index(tmp)
        size = os.path.getsize(tmp)
        os.remove(tmp)
        keep.append(hl)

        def hnswlib_search(p, hl=hl):
            ef = int(p.efSearch or 16)

            def search(q, k):
                hl.set_ef(ef)          # hnswlib's ef is index state, shared by the -oracle line: set each call
                labels, dist = hl.knn_query(q, k=k)
                return dist, labels
            return search
        peer(f"hnswlib-M{m}", f"HNSW{m}", "hnsw", hnswlib_search, build_s, size, oracle=True)

    def ivf_peer(parts, train_size: int) -> None:
        factory = f"IVF{parts.nlist},PQ{parts.pq_m}x4fs,RFlat"
        t0 = time.perf_counter()
        ivf = faiss.index_factory(d, factory, fmetric)
        rng = np.random.default_rng(args.seed)
        sample = np.sort(rng.choice(n, min(n, train_size), replace=False))
        ivf.train(np.ascontiguousarray(source.vectors[sample], dtype=np.float32))
        for x in float32_blocks():
            ivf.add(x)
        build_s = time.perf_counter() - t0
        keep.append(ivf)

        def ivfpq(p, ivf=ivf):
            base = faiss.SearchParametersIVF()
            base.nprobe = int(p.nprobe or 1)
            rp = faiss.IndexRefineSearchParameters(k_factor=float(p.k_factor), base_index_params=base)
            rp.referenced_base = base
            return lambda q, k: ivf.search(q, k, params=rp)
        peer(IVF_PEER, f"IVF{parts.nlist},PQ{parts.pq_m}x4fs", "ivf", ivfpq, build_s,
             len(faiss.serialize_index(ivf)), rerank=True)

    # the compact mode's like-for-like peer: faiss's own IVF-PQ fast-scan recipe with float32 re-ranking
    from nearsight.retrieval.index.plan import parse_factory
    parts = parse_factory(compact.factory)
    if parts.kind == "ivf" and parts.pq_m and "compact" in args.modes:
        ivf_peer(parts, compact.train_size)

    # -- the timed rounds: everything at each target, interleaved ----------------------------------------
    for t in TARGETS:
        for set_params in prepare[t]:
            set_params()
        timed = time_rounds(searchers[t], queries, args.single, args.repeats)
        overhead_us = {f"ours-{mode}": call_overhead_us(searchers[t][f"ours-{mode}"][1],
                                                         searchers[t][f"raw-faiss-{mode}"][1], queries)
                       for mode in ("speed", "compact") if f"ours-{mode}" in searchers[t]}
        for config, (batch, single) in timed.items():
            _, I = searchers[t][config][0](queries)
            info = dict(extra[t][config])
            rows_file = info.pop("rows_file", None)
            index_bytes = info.pop("index_bytes", None)
            if rows_file:
                resident = mapped_resident_bytes(rows_file)
                info.update(rerank_resident_bytes_per_vector=resident / n,
                            memory_bytes_per_vector=(index_bytes + max(resident, 0)) / n)
            elif index_bytes is not None:
                info.update(memory_bytes_per_vector=index_bytes / n)
            if config in overhead_us:
                info.update(call_overhead_us=overhead_us[config])
            emit(rows, **common, config=config, target_recall=t, recall=recall_at_k(np.asarray(I), truth, K),
                 qps_batch=float(np.median(batch)), qps_single=float(np.median(single)),
                 qps_batch_rounds=[round(v) for v in batch], qps_single_rounds=[round(v) for v in single],
                 **info)
    keep.clear()


# -- summary ----------------------------------------------------------------------------------------

def summarise(rows: list) -> dict:
    """Per dataset and target: ours / best peer, batched and single, median over rounds (and the range of the
    per-round ratios: each round timed everything once, so a round's ratio shares its background load)."""
    out = {}
    for ds in sorted({r["dataset"] for r in rows}):
        at = {(r["config"], r["target_recall"]): r for r in rows if r["dataset"] == ds and "qps_batch_rounds" in r}
        s = {}
        for t in TARGETS:
            entry = {}
            for mode, peers, label in (("speed", HNSW_PEERS, "best_peer"), ("compact", HNSW_PEERS + (IVF_PEER,),
                                                                              "best_peer"),
                                       ("compact", (IVF_PEER,), "ivf_peer")):
                mine, raw = at.get((f"ours-{mode}", t)), at.get((f"raw-faiss-{mode}", t))
                if mine is None:
                    continue
                if label == "ivf_peer":
                    e = entry.get(mode, {})
                else:
                    e = {"factory": mine["factory"], "params": mine["params"], "recall": mine["recall"],
                         "qps_batch": round(mine["qps_batch"]), "qps_single": round(mine["qps_single"])}
                if "memory_bytes_per_vector" in mine:
                    e["memory_bytes_per_vector"] = round(mine["memory_bytes_per_vector"], 1)
                if label != "ivf_peer" and "call_overhead_us" in mine:
                    e["call_overhead_us"] = round(mine["call_overhead_us"], 2)
                for kind, col in (("batch", "qps_batch_rounds"), ("single", "qps_single_rounds")):
                    present = [at[(p, t)] for p in peers if (p, t) in at]
                    if not present:
                        continue
                    best = max(present, key=lambda r: np.median(r[col]))
                    per_round = [a / max(b) for a, b in zip(mine[col], zip(*(r[col] for r in present)))]
                    e[f"vs_{label}_{kind}"] = round(float(np.median(per_round)), 3)
                    e[f"vs_{label}_{kind}_range"] = [round(min(per_round), 3), round(max(per_round), 3)]
                    e[f"{label}_{kind}"] = f"{best['config']} {best['params']} recall {best['recall']:.4f}"
                    if raw is not None and label == "best_peer":
                        e[f"overhead_{kind}"] = round(1 - float(np.median(
                            [a / b for a, b in zip(mine[col], raw[col])])), 3)
                entry[mode] = e
            for p in HNSW_PEERS + (IVF_PEER,):
                r = at.get((p, t))
                if r is not None:
                    entry[p] = {"params": r["params"], "recall": r["recall"], "qps_batch": round(r["qps_batch"]),
                                "qps_single": round(r["qps_single"])}
            s[f"recall@10>={t}"] = entry
        out[ds] = s
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", "--datasets", dest="datasets", default="clip,gist",
                    help="comma list of fashion-mnist, clip, gist")
    ap.add_argument("--data-dir", default=os.path.join(os.path.dirname(__file__), "..", "data", "fashion-mnist"),
                    help="where the dataset-fashion-mnist package is unpacked (git-ignored data/)")
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors per synthetic dataset (default 1M)")
    ap.add_argument("--nq", type=int, default=1000, help="evaluation queries with exact ground truth")
    ap.add_argument("--peer-queries", type=int, default=500, help="other queries the peers are tuned on")
    ap.add_argument("--single", type=int, default=200, help="queries timed one by one for single-query QPS")
    ap.add_argument("--repeats", type=int, default=7, help="timed rounds (medians reported)")
    ap.add_argument("--tune-queries", type=int, default=500, help="collection vectors held out to tune ours")
    ap.add_argument("--max-memory", default="8G", help="memory budget for the automatic plans")
    ap.add_argument("--modes", default="speed,compact",
                    help="our modes to run: speed, compact (and with it its IVF-PQ peer)")
    ap.add_argument("--collection", help="benchmark a collection's embeddings instead")
    ap.add_argument("--encoder", help="encoder name with --collection")
    ap.add_argument("--metric", choices=("ip", "l2"), help="with --collection, when collection.json lacks it")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--summarise", metavar="LOG", help="print the summary of an earlier run's JSON lines only")
    args = ap.parse_args(argv)
    if args.summarise:
        with open(args.summarise) as f:
            rows = [json.loads(line) for line in f if line.startswith("{") and '"summary"' not in line[:12]]
        print(json.dumps({"summary": summarise(rows), "targets": list(TARGETS), "k": K}))
        return

    import faiss
    rows: list = []
    nq, npq = args.nq, args.peer_queries
    with tempfile.TemporaryDirectory(prefix="bench_index_") as work:
        def run(name, base, queries, tuning_queries, metric):
            path = os.path.join(work, f"{name.replace(':', '_')}.f16.npy")
            np.save(path, np.asarray(base, dtype=np.float16))
            print(json.dumps({"dataset": name, "n": len(base), "threads": faiss.omp_get_max_threads(),
                              "load1": os.getloadavg()[0]}), flush=True)
            bench_dataset(name, np.load(path, mmap_mode="r"), queries, tuning_queries, metric, args, rows, work)
            os.remove(path)

        if args.collection:
            vectors, metric = load_collection(args.collection, args.encoder, args.metric)
            picked = np.random.default_rng(args.seed).choice(len(vectors), min(nq + npq, len(vectors) // 10),
                                                             replace=False)
            held = np.zeros(len(vectors), bool)
            held[picked] = True
            q = np.ascontiguousarray(vectors[picked], dtype=np.float32)
            run(f"{os.path.basename(args.collection.rstrip('/'))}:{args.encoder}", vectors[~held],
                q[:len(q) * nq // (nq + npq)], q[len(q) * nq // (nq + npq):], metric)
        for ds in [s for s in args.datasets.split(",") if s and not args.collection]:
            if ds == "fashion-mnist":
                train, test = fashion_mnist(args.data_dir)
                run(ds, train, test[:nq], test[nq:nq + npq], "l2")
                continue
            d, metric = (512, "ip") if ds == "clip" else (960, "l2")
            x = make_dataset(args.n + nq + npq, d, ds, os.path.join(work, f"{ds}.all.npy"), seed=args.seed)
            queries = np.ascontiguousarray(x[args.n:args.n + nq], dtype=np.float32)
            tuning_queries = np.ascontiguousarray(x[args.n + nq:], dtype=np.float32)
            base = x[:args.n]
            run(ds, base, queries, tuning_queries, metric)
            del x, base
            os.remove(os.path.join(work, f"{ds}.all.npy"))
    print(json.dumps({"summary": summarise(rows), "targets": list(TARGETS), "k": K,
                      "load1": os.getloadavg()[0]}), flush=True)


if __name__ == "__main__":
    main()
