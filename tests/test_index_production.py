"""Every index kind the planner chooses, built as the product builds it (``build_collection_index``: plan, degree by
measurement, held-out tuning to recall@10 0.95 on the default 500 queries, save), loaded back from disk as a
search loads it, and judged on fresh queries that were never in the collection; its planned memory against
its real size; and exact search across blocks against brute force. Small dimensions keep this to seconds a kind.
"""
from __future__ import annotations

import os

import faiss
import numpy as np
import pytest

from nearsight.retrieval.index import ArraySource, build_collection_index, exact_knn, load_index, plan_index
from nearsight.retrieval.index.plan import COMPACT_BYTES, estimate_size
from nearsight.retrieval.index.tuning import recall_with_error
from nearsight.retrieval.search import BLOCK_ROWS, exact_search

N, D, K, TARGET = 50_000, 32, 10, 0.95   # 50k: where the compact plan is OPQ + IVF with its fixed parts spread thin
SMALL = 22_000      # past the exact-scan limit (20k): the other kinds are chosen at this size, in a quarter the time
N_FRESH = 1000


def clustered(n: int, d: int, seed: int = 0, nc: int = 200) -> np.ndarray:
    """(n, d) float32, unit norm: Gaussian clusters with noise comparable to their spread."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((nc, d)).astype(np.float32)
    x = centres[rng.integers(0, nc, n)] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def collection_vectors():
    x = clustered(N + N_FRESH, D)
    ids = np.arange(N, dtype=np.int64) * 2 + 7        # ids are not row numbers
    return ArraySource(x[:N].astype(np.float16), ids), x[N:]


# kind -> (vectors, build_collection_index options, what the planner must have chosen)
PLANS = {
    "flat": (15_000, dict(), lambda f: f == "Flat"),
    "hnsw": (SMALL, dict(), lambda f: f in ("HNSW16", "HNSW32")),
    "hnsw-sq8": (SMALL, dict(max_memory="8M"), lambda f: f in ("HNSW16,SQ8", "HNSW32,SQ8")),
    "compact": (N, dict(mode="compact"), lambda f: f.startswith("OPQ") and ",IVF" in f and f.endswith("x4fs")),
    "ivf-on-disk": (SMALL, dict(max_memory="200K"), lambda f: f.startswith("IVF") and not f.endswith("fs")),
    "lsh": (SMALL, dict(mode="lsh"), lambda f: f == "LSHr"),
}


@pytest.mark.parametrize("kind", list(PLANS))
def test_production_recall_and_size_of_every_planned_kind(kind, collection_vectors, tmp_path):
    source, fresh = collection_vectors
    n, options, chosen = PLANS[kind]
    if n != N:
        source = ArraySource(source.vectors[:n], source.ids[:n])
    d = str(tmp_path)
    report = build_collection_index(d, "e", source, metric="ip", **options)     # target 0.95, k 10, 500 queries
    assert chosen(report["factory"]), report["factory"]
    assert report["target_met"] and report["recall_at_k"] >= TARGET and report["ntotal"] == n
    assert report["target_recall"] == TARGET and report["k"] == K
    index = load_index(d, "e", source=source, mmap=True)                     # as a search process opens it
    assert index.factory == report["factory"] and index.params.to_dict() == report["search_params"]

    # fresh queries, at the saved setting: within two standard errors of the target
    _, truth = exact_knn(fresh, source.vectors, source.ids, K, "ip")
    _, I = index.search(fresh, K)
    recall, stderr = recall_with_error(I, truth, K)
    assert recall >= TARGET - 2 * stderr, (kind, report["factory"], report["search_params"], recall, stderr)

    # the plan's memory estimate against the real size (serialized segments: what they take in memory)
    plan, files = index.info["plan"], index.info["files"]
    real = sum(f["bytes"] for f in files)
    bpv, fixed = estimate_size(report["factory"], D)
    if any(f.get("ivfdata") for f in files):
        # built out of memory: the lists are a file of their own, memory-mapped; what stays in memory is the
        # index file without them, which is what the plan counts. (Only the built segment: the held-out tuning
        # queries, added after the build, go into a second in-memory segment with its own copy of the quantizer,
        # which the plan does not count; reported in issue 16's notes.)
        built = files[0]["bytes"]
        lists = sum(os.path.getsize(os.path.join(d, "indexes", f["ivfdata"])) for f in files if f.get("ivfdata"))
        assert plan["on_disk"] and plan["memory_bytes"] == int(fixed) and 0.9 * built <= fixed <= 1.1 * built, \
            (built, fixed)
        assert lists >= bpv * (n - 500), (lists, bpv * n)
    else:
        assert real <= bpv * n + fixed <= 1.1 * real, (report["factory"], real, bpv * n + fixed)
        if not plan["on_disk"]:
            assert plan["memory_bytes"] == int(bpv * n + fixed)
    if kind == "compact":
        assert report["bytes_per_vector"] <= COMPACT_BYTES and not plan["warnings"]
    if kind == "lsh":        # the planner's LSH rotates before taking sign bits
        inner = faiss.downcast_index(faiss.downcast_index(index.segments[0].index).index)
        assert isinstance(inner, faiss.IndexLSH) and inner.rotate_data and inner.nbits == D


def test_the_planner_chooses_these_kinds_at_these_sizes():
    """The options above lead the planner to each kind (not an explicit factory): this is what users get."""
    assert plan_index(15_000, D, "ip").factory == "Flat"
    assert plan_index(SMALL, D, "ip").factory == "HNSW32"
    assert plan_index(SMALL, D, "ip", "8M").factory == "HNSW32,SQ8"
    assert plan_index(N, D, "ip", mode="compact").factory.startswith("OPQ")
    assert plan_index(SMALL, D, "ip", "200K").on_disk
    assert plan_index(SMALL, D, "ip", mode="lsh").factory == "LSHr"


# -- exact search across blocks ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_blocks():
    """70,000 float16 vectors (two 65,536-row blocks), with queries whose neighbours straddle the boundary."""
    rng = np.random.default_rng(5)
    n, d = BLOCK_ROWS + 4_464, 8
    x = rng.standard_normal((n, d)).astype(np.float16)
    ids = rng.permutation(np.arange(3 * n, dtype=np.int64))[:n]      # shuffled, sparse ids
    rows = np.r_[0, 1, BLOCK_ROWS - 1, BLOCK_ROWS, BLOCK_ROWS + 1, n - 1, rng.integers(0, n, 34)]
    q = x[rows].astype(np.float32) + rng.normal(0, 0.05, (len(rows), d)).astype(np.float32)
    return x, ids, q


def brute_force(q: np.ndarray, x: np.ndarray, k: int, metric: str):
    """(D, rows) by float64 numpy over the whole matrix at once."""
    xf = x.astype(np.float64)
    scores = q.astype(np.float64) @ xf.T
    if metric == "l2":
        scores = (q.astype(np.float64) ** 2).sum(1)[:, None] - 2 * scores + (xf ** 2).sum(1)[None, :]
    order = np.argsort(-scores if metric == "ip" else scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, 1), order


@pytest.mark.parametrize("metric", ["ip", "l2"])
def test_exact_search_across_blocks_equals_brute_force(metric, two_blocks):
    x, ids, q = two_blocks
    k = 12
    D0, rows0 = brute_force(q, x, k, metric)
    assert (rows0 >= BLOCK_ROWS).any() and (rows0 < BLOCK_ROWS).any()     # answers come from both blocks

    D1, I1 = exact_knn(q, x, ids, k, metric)                         # tuning's ground truth (faiss, by block)
    D2, rows2 = exact_search(x, q, k, metric)                        # the search path without an index
    for D, found in ((D1, I1), (D2, ids[rows2])):
        np.testing.assert_allclose(D, D0, rtol=1e-4, atol=1e-4)
        # the same ids, except where two candidates tie in float32 (none do in this data, but be exact about it)
        gap = np.abs(np.diff(D0, axis=1)).min(axis=1) > 1e-4
        np.testing.assert_array_equal(found[gap], ids[rows0][gap])
        assert gap.mean() > 0.9
    if metric == "l2":   # a query next to a block's last row, and the next block's first, finds it
        assert I1[2, 0] == ids[BLOCK_ROWS - 1] and I1[3, 0] == ids[BLOCK_ROWS]
