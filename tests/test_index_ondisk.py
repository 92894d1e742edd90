"""Index builds past the memory budget: IVF trained once, lists filled shard by shard and merged into one on-disk
file, tuned to the same recall as an in-memory build, searched memory-mapped; a budget too small for any index
is an error naming the smallest that works. Small scale with a tiny budget."""
from __future__ import annotations

import math
import os
import re

import faiss
import numpy as np
import pytest

from nearsight.retrieval.errors import NearsightError
from nearsight.retrieval.index import (ArraySource, SearchParams, build_collection_index, load_index, parse_size,
                                       plan_index)
from nearsight.retrieval.index import backend

N, D = 20_000, 32
BUDGET = 200_000      # bytes: the compact in-memory codes of 20k vectors (~220 KB) do not fit, shards do


def clustered(n: int, d: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d)).astype(np.float32)
    x = centres[rng.integers(0, 40, n)] + 0.7 * rng.standard_normal((n, d)).astype(np.float32)
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    x = clustered(N, D)
    ids = np.arange(N, dtype=np.int64) * 2 + 1
    return x, ids, ArraySource(x.astype(np.float16), ids)


@pytest.fixture(scope="module")
def built(data, tmp_path_factory):
    x, ids, source = data
    root = tmp_path_factory.mktemp("ondisk") / "c"
    report = build_collection_index(str(root), "e", source, metric="ip", max_memory=BUDGET, target_recall=0.9,
                                    n_queries=200)
    return root, report


def ivfdata_files(root) -> list[str]:
    return sorted(f for f in os.listdir(root / "indexes") if f.endswith(".ivfdata"))


def test_the_plan_goes_on_disk_within_the_budget():
    plan = plan_index(N, D, "ip", BUDGET)
    assert plan.on_disk and plan.kind == "ivf" and plan.budget_bytes == BUDGET
    assert plan.memory_bytes <= BUDGET
    assert not backend.parse_factory(plan.factory).fast_scan


def test_built_shard_by_shard_merged_and_tuned(built, data):
    root, report = built
    meta = load_index(str(root), "e", source=data[2]).info
    assert report["kind"] == "ivf" and meta["on_disk"]
    assert report["target_met"] and report["recall_at_k"] >= 0.9
    shards, capacity = meta["ondisk_shards"], meta["ondisk_shard_capacity"]
    indexed = N - min(200, N // 10)     # the held-out tuning queries are added after the merge, into a small in-memory segment
    assert shards == math.ceil(indexed / capacity) and shards >= 2
    # what the fill kept in memory at once: the trained index and one shard's lists (codes + ids, doubled)
    code = faiss.extract_index_ivf(backend.deserialize(load_index(str(root), "e", source=data[2])._s.template)).code_size
    assert capacity * 2 * (code + 8) < BUDGET
    assert len(ivfdata_files(root)) == 1
    assert not [f for f in os.listdir(root / "indexes") if f.endswith(".shards") or ".tmp-" in f]


def test_search_memory_maps_and_matches_an_in_memory_index(built, data):
    root, _ = built
    x, ids, source = data
    index = load_index(str(root), "e", source=source)
    first = index.segments[0]
    lists = faiss.downcast_InvertedLists(faiss.extract_index_ivf(first.index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and not first.writable
    assert index.ntotal == N
    # the same trained index filled in memory with every vector gives the same PQ distances
    ref = backend.deserialize(index._s.template)
    ref.add_with_ids(np.asarray(source.vectors, dtype=np.float32), ids)     # what the build read: float16 rows
    q = clustered(100, D, seed=9)
    p = SearchParams(nprobe=16)
    D0, I0 = index.search(q, 10, params=p, rerank=False)
    fp = faiss.SearchParametersIVF()
    fp.nprobe = 16
    D1, I1 = ref.search(q, 10, params=fp)
    np.testing.assert_allclose(D0, D1, rtol=1e-5, atol=1e-6)
    assert (I0 == I1).mean() > 0.99        # ties between equal PQ distances may swap places
    # with re-ranking (the default), every item finds itself first
    _, I = index.search(x[:200], 1)
    assert (I[:, 0] == ids[:200]).mean() >= 0.95


def test_a_moved_collection_still_finds_its_lists(built, data, tmp_path):
    root, _ = built
    moved = tmp_path / "moved"
    os.rename(root, moved)
    try:
        index = load_index(str(moved), "e", source=data[2])
        _, I = index.search(data[0][:50], 1)
        assert (I[:, 0] == data[1][:50]).mean() >= 0.9
    finally:
        os.rename(moved, root)


def test_a_rebuild_replaces_the_lists_file_and_removes_the_old_one(built, data):
    root, _ = built
    x, ids, source = data
    before = ivfdata_files(root)
    old = load_index(str(root), "e", source=source)      # a reader with the old lists mapped
    again = build_collection_index(str(root), "e", source, metric="ip", max_memory=BUDGET, target_recall=0.9,
                                   n_queries=100, rebuild=True)
    after = ivfdata_files(root)
    assert again["action"] == "rebuilt" and len(before) == len(after) == 1 and before != after
    _, I = old.search(x[:20], 1)                        # still answers from the unlinked file
    assert (I[:, 0] == ids[:20]).mean() >= 0.9


def test_a_budget_too_small_for_any_index_names_the_smallest_that_works():
    with pytest.raises(NearsightError, match="smallest that works is") as err:
        plan_index(N, D, "ip", 60_000)
    smallest = parse_size(re.search(r"--max-memory (\S+)\)", str(err.value)).group(1))
    assert smallest > 60_000
    plan = plan_index(N, D, "ip", smallest)
    assert plan.memory_bytes <= smallest
    with pytest.raises(NearsightError, match="too small"):
        plan_index(N, D, "ip", int(smallest * 0.9))


def test_build_index_command_says_which_budget_works(collection):
    from click.testing import CliRunner

    from nearsight.server.cli import main

    result = CliRunner().invoke(main, ["build-index", "-c", str(collection.dir), "--encoder", "tiny",
                                       "--max-memory", "10K"])
    assert result.exit_code == 1
    assert "too small for any index" in result.output and "--max-memory" in result.output
