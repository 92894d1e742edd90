"""Search filters, exclude, min score, near-duplicate collapse, batch queries, sha256 and the default encoder."""
from __future__ import annotations

import hashlib
import os
import time

import numpy as np
import pytest

from nearsight.retrieval.collection import Collection
from nearsight.retrieval.errors import InvalidFilter, InvalidQuery
from nearsight.retrieval.filtered_knn import filtered_knn
from nearsight.retrieval.filters import SearchFilter, parse_filter

from conftest import make_photo


def _ids(results):
    return [r.id for r in results]


def test_default_image_encoder_is_the_best_held(tmp_path, photo_dir, ingest):
    ingest(tmp_path / "c", [photo_dir], encoders=("tiny", "gist"))
    coll = Collection.open(tmp_path / "c")
    try:
        assert coll.encoder_names == ["tiny", "gist"] and coll.default_encoder() == "gist"
        assert coll.search(id=0, k=1)[0].similarity == pytest.approx(1.0)  # gist: exp(-0 / scale)
    finally:
        coll.close()


def test_default_encoder_ranking_follows_the_preference(collection):
    from nearsight.retrieval import collection as collection_module

    manifest = collection.manifest
    saved = manifest["encoders"]
    spec = dict(saved[0])
    try:
        manifest["encoders"] = [{**spec, "name": n} for n in ("tiny", "gist", "cnn", "mystery")]
        assert collection.default_encoder() == "cnn"
        manifest["encoders"] = [{**spec, "name": n} for n in ("tiny", "clip", "triplet-cnn", "gist")]
        assert collection.default_encoder() == "triplet-cnn"
        manifest["encoders"] = [{**spec, "name": n} for n in ("mystery", "tiny")]
        assert collection.default_encoder() == "tiny"
        assert collection_module.IMAGE_ENCODER_PREFERENCE[:5] == ("triplet", "clip", "cnn", "gist", "gist-gray")
    finally:
        manifest["encoders"] = saved


def test_results_carry_sha256_and_similarity(collection, photo_dir):
    top = collection.search(image=str(photo_dir / "p03.jpg"), k=3)
    data = (photo_dir / "p03.jpg").read_bytes()
    assert top[0].sha256 == hashlib.sha256(data).hexdigest()
    assert 0.99 <= top[0].similarity <= 1.0 and top[0].similarity >= top[1].similarity
    assert set(top[0].to_dict()) >= {"sha256", "similarity", "group_size"}


def test_filters_restrict_inside_the_search(collection, photo_dir):
    sub = str(photo_dir / "sub") + os.sep
    hits = collection.search(id=0, k=10, filter={"path_prefix": sub})
    assert len(hits) == 2 and all(r.path.startswith(sub) for r in hits)
    assert _ids(collection.search(id=0, k=5, filter={"caption": "Sunny BEACH"})) == \
        [r.id for r in collection.search(id=0, k=12) if r.caption == "a sunny beach"]
    assert collection.search(id=0, k=5, filter={"caption": "sun"}) == []  # whole words only
    allow = [3, 5, 7]
    assert sorted(_ids(collection.search(id=0, k=10, filter={"ids": allow}))) == allow
    assert 0 not in _ids(collection.search(id=0, k=12, exclude=[0]))
    assert len(collection.search(id=0, k=12, filter={"ids": allow, "exclude": [5]})) == 2
    # sizes: the fixture photos are 96x72; nothing is 100 px wide
    assert len(collection.search(id=0, k=20, filter={"min_width": 96, "max_height": 72})) == 12
    assert collection.search(id=0, k=20, filter={"min_width": 100}) == []
    # date added: everything was added just now
    assert len(collection.search(id=0, k=20, filter={"added_after": time.time() - 3600})) == 12
    assert collection.search(id=0, k=20, filter={"added_before": "2001-01-01"}) == []


def test_a_filter_matching_nothing_is_an_empty_result(collection):
    assert collection.search(id=0, filter={"path_prefix": "/no/such/folder/"}) == []
    assert collection.search_batch([{"id": 0}, {"id": 1}], filter={"ids": []}) == [[], []]


@pytest.mark.parametrize("value, message", [
    ({"colour": "red"}, "unknown filter field(s) ['colour']; filters are: path_prefix, caption"),
    ({"min_width": -3}, "min_width must be a non-negative integer"),
    ({"added_after": "yesterday"}, "unix seconds or an ISO 8601 date"),
    ({"ids": ["x"]}, "list of item ids"),
    ("red", "filter must be an object"),
])
def test_bad_filters_name_the_fields(value, message):
    with pytest.raises(InvalidFilter, match=re_escape(message)):
        parse_filter(value)


def re_escape(text):
    import re
    return re.escape(text)


def test_min_score_and_min_similarity(collection):
    every = collection.search(id=0, k=12)
    cut = every[4].score
    assert _ids(collection.search(id=0, k=12, min_score=cut)) == _ids(every[:5])
    assert collection.search(id=0, k=12, min_similarity=1.01) == []
    with pytest.raises(InvalidQuery, match="min_score must be a number"):
        collection.search(id=0, min_score="high")


def test_collapse_groups_near_copies(tmp_path, ingest):
    root = tmp_path / "dups"
    root.mkdir()
    base = make_photo(1, size=(128, 96))
    base.save(root / "a.jpg", quality=95)
    base.save(root / "a_copy.jpg", quality=70)           # recompressed
    base.resize((120, 90)).save(root / "a_small.jpg")    # resized
    for i in range(2, 8):
        make_photo(i, size=(128, 96)).save(root / f"o{i}.jpg")
    ingest(tmp_path / "c", [root])
    with_dups = Collection.open(tmp_path / "c")
    try:
        plain = with_dups.search(image=str(root / "a.jpg"), k=4)
        assert {os.path.basename(r.path) for r in plain[:3]} == {"a.jpg", "a_copy.jpg", "a_small.jpg"}
        grouped = with_dups.search(image=str(root / "a.jpg"), k=4, collapse=True)
        assert grouped[0].group_size == 3 and os.path.basename(grouped[0].path) == "a.jpg"
        assert all(r.group_size == 1 for r in grouped[1:]) and len(grouped) == 4
        assert len({r.id for r in grouped}) == 4
        with pytest.raises(InvalidQuery, match="collapse must be"):
            with_dups.search(id=0, collapse=2)
    finally:
        with_dups.close()


def test_batch_queries_match_single_queries(collection, photo_dir):
    batch = collection.search_batch([{"id": 2}, {"image": str(photo_dir / "p05.jpg")}, {"id": 9}], k=4)
    assert [_ids(b) for b in batch] == [_ids(collection.search(id=2, k=4)),
                                        _ids(collection.search(image=str(photo_dir / "p05.jpg"), k=4)),
                                        _ids(collection.search(id=9, k=4))]
    vectors = collection.embedding_matrix("tiny").reconstruct([1, 4])
    assert [b[0].id for b in collection.search_batch(vectors, k=1)] == [1, 4]
    with pytest.raises(InvalidQuery, match="a batch is a list of 1 to"):
        collection.search_batch([])


@pytest.mark.parametrize("factory", ["IVF16,Flat", "HNSW16", "IVF16,SQ8", "LSH"])
def test_filtered_knn_uses_the_ann_index_and_keeps_k(monkeypatch, factory):
    """A filter admitting more ids than the exact route takes goes through faiss selectors in the index;
    the answer equals exact search over the allowed ids."""
    from nearsight.retrieval import filtered_knn as module
    from nearsight.retrieval.embeddings import EmbeddingMatrix
    from nearsight.retrieval.index import SearchParams, build_index, plan_from_factory

    rng = np.random.default_rng(0)
    x = rng.normal(size=(3000, 16)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    ids = np.arange(3000, dtype=np.int64)
    matrix = EmbeddingMatrix(ids, x.astype(np.float16))
    index = build_index(matrix.vectors, ids, "ip", plan_from_factory(factory, 3000, 16, "ip"), source=matrix)
    index.set_params(SearchParams(nprobe=8, efSearch=64, k_factor=4))  # what tuning would pick: recall, not speed
    q = x[:5] + 0.01
    allowed = np.arange(0, 3000, 3, dtype=np.int64)       # a third of the items
    monkeypatch.setattr(module, "EXACT_LIMIT", 10)
    calls = []
    real = module._selector_search
    monkeypatch.setattr(module, "_selector_search", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    D, I = filtered_knn(matrix, index, q, 10, "ip", allowed=allowed, denied=[0, 3])
    assert calls and (I >= 0).all() and np.isin(I, allowed).all() and not np.isin(I, [0, 3]).any()
    rows = np.setdiff1d(allowed, [0, 3])
    De, Ie = module.exact_rows(matrix.vectors, matrix.ids, rows, q, 10, "ip")
    assert (np.mean([len(set(a) & set(b)) for a, b in zip(I, Ie)]) / 10) >= 0.8
    # a filter so selective that the probed IVF lists hold too few: still k, from the exact route
    few = np.array([7, 1500, 2999], np.int64)
    D, I = filtered_knn(matrix, index, q, 3, "ip", allowed=few)
    assert sorted(I[0].tolist()) == [7, 1500, 2999]


def test_filter_dataclass_round_trip():
    f = parse_filter({"path_prefix": "/a/", "ids": [3, 1, 3], "min_width": 10.0})
    assert f == SearchFilter(path_prefix="/a/", ids=(1, 3), min_width=10)
    assert f.to_dict() == {"path_prefix": "/a/", "ids": [1, 3], "min_width": 10}
    assert SearchFilter().empty and not SearchFilter(exclude=(1,)).empty
