"""The Python API: Collection.open, search by image / id / vector / weighted terms, info."""
import numpy as np
import pytest

from nearsight.retrieval.collection import Collection
from nearsight.retrieval.encoders import create_encoder, list_encoders
from nearsight.retrieval.errors import InvalidQuery, UnknownEncoder, UnknownItem, UnsupportedModality
from nearsight.retrieval.search import exact_search


def test_registry():
    names = list_encoders()
    assert {"tiny", "tiny-gray"} <= set(names)
    with pytest.raises(UnknownEncoder, match="valid names"):
        create_encoder("resnet9000")


def test_tiny_vectors_are_zero_mean_unit_norm(photo_dir):
    from PIL import Image
    enc = create_encoder("tiny")
    v = enc.embed_images([Image.open(photo_dir / "p00.jpg")])[0]
    assert v.shape == (3072,) and abs(v.mean()) < 1e-6 and abs(np.linalg.norm(v) - 1) < 1e-5
    g = create_encoder("tiny-gray").embed_images([Image.open(photo_dir / "p00.jpg")])[0]
    assert g.shape == (1024,)


def test_image_in_collection_finds_itself_first(collection, photo_dir):
    for name in ("p00.jpg", "p07.jpg", "sub/beach.png"):
        hit = collection.search(image=str(photo_dir / name), k=3)[0]
        assert hit.path == str(photo_dir / name) and hit.score > 0.99


def test_search_by_id_vector_and_paging(collection):
    by_id = collection.search(id=4, k=5)
    assert by_id[0].id == 4 and [r.score for r in by_id] == sorted([r.score for r in by_id], reverse=True)
    vec = collection.embedding_matrix("tiny").reconstruct([4])[0]
    assert [r.id for r in collection.search(vector=vec, k=5)] == [r.id for r in by_id]
    page2 = collection.search(id=4, k=2, offset=2)
    assert [r.id for r in page2] == [r.id for r in by_id[2:4]]
    assert len(collection.search(id=4, k=100)) == collection.count == 12


def test_query_arithmetic(collection):
    m = collection.embedding_matrix("tiny")
    a, b = m.reconstruct([1])[0], m.reconstruct([2])[0]
    expected = (a - 0.5 * b) / np.linalg.norm(a - 0.5 * b)
    got = collection.query_vector("tiny", query=[{"id": 1, "weight": 1}, {"id": 2, "weight": -0.5}])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    top = collection.search(query=[{"id": 1, "weight": 1}, {"id": 2, "weight": -0.5}], k=1)[0]
    assert top.id == 1


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(), InvalidQuery, "exactly one"),
    (dict(id=1, text="x"), InvalidQuery, "exactly one"),
    (dict(id=999), UnknownItem, "999"),
    (dict(id="3"), InvalidQuery, "integer"),
    (dict(vector=[1.0, 2.0]), InvalidQuery, "3072"),
    (dict(id=1, k=0), InvalidQuery, "k must"),
    (dict(id=1, encoder="gist"), UnknownEncoder, "has no encoder 'gist'"),
    (dict(text="a dog"), UnsupportedModality, "take text"),
    (dict(text="a dog", encoder="tiny"), UnsupportedModality, "no text tower"),
    (dict(query=[]), InvalidQuery, "non-empty"),
    (dict(query=[{"id": 1, "weight": 1}, {"id": 1, "weight": -1}]), InvalidQuery, "zero vector"),
    (dict(query=[{"url": "http://x"}]), InvalidQuery, "unknown query term"),
])
def test_bad_queries_raise_clear_errors(collection, kwargs, error, message):
    with pytest.raises(error, match=message):
        collection.search(**kwargs)


def test_info(collection):
    info = collection.info()
    assert info["items"] == 12 and info["failures"] == 0
    (enc,) = info["encoders"]
    assert (enc["name"], enc["dim"], enc["embedded"]) == ("tiny", 3072, 12)
    assert enc["bytes"] == 12 * 3072 * 2 + 12 * 8 + 2 * 128  # float16 vectors + int64 ids + two npy headers


def test_exact_search_matches_brute_force():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 16)).astype(np.float32)
    q = rng.normal(size=(5, 16)).astype(np.float32)
    D, I = exact_search(x, q, 7, "l2")
    brute = ((q[:, None, :] - x[None]) ** 2).sum(-1)
    np.testing.assert_array_equal(I, np.argsort(brute, 1)[:, :7])
    np.testing.assert_allclose(D, np.sort(brute, 1)[:, :7], rtol=1e-4)
    D, I = exact_search(x, q, 7, "ip")
    np.testing.assert_array_equal(I, np.argsort(-(q @ x.T), 1)[:, :7])
    D, I = exact_search(x[:3], q, 5, "ip")
    assert (I[:, 3:] == -1).all()


def test_readers_see_new_items_after_refresh(tmp_path, photo_dir, collection):
    """A reader (the server) sees what another process (nearsight index) adds, without reopening."""
    import subprocess
    import sys

    from tests.conftest import make_photo
    make_photo(500).save(photo_dir / "late.jpg")
    assert not collection.refresh()
    subprocess.run([sys.executable, "-m", "nearsight.server.cli", "index", str(photo_dir), "-c", str(tmp_path / "coll"),
                    "--workers", "0", "--quiet"], check=True)
    assert not collection.refresh(max_age=3600)      # the query path's rate limit: checked too recently
    assert collection.refresh()
    assert collection.search(image=str(photo_dir / "late.jpg"), k=1)[0].path.endswith("late.jpg")


def test_big_embedding_matrices_are_memory_mapped_from_one_merged_file(tmp_path, monkeypatch):
    """Past MAP_MIN_BYTES the parts' concatenation is a read-only memmap of .merged/<key>.npy: equal to the
    in-memory concatenation, the excluded ids left out, reused while nothing changes, replaced when a part
    changes, and in memory where it cannot be written."""
    import os

    from nearsight.retrieval import embeddings

    rng = np.random.default_rng(0)
    directory = str(tmp_path / "emb")
    records, chunks, id_chunks = [], [], []
    for i in range(3):
        x = rng.standard_normal((50, 8)).astype(np.float16)
        ids = np.arange(i * 50, i * 50 + 50, dtype=np.int64)
        records.append(embeddings.write_part(directory, i, x, ids))
        chunks.append(x)
        id_chunks.append(ids)
    want, want_ids = np.concatenate(chunks), np.concatenate(id_chunks)
    small = embeddings.load_matrix(directory, records, 8, exclude={3, 77})
    assert not isinstance(small.vectors, np.memmap)    # under the threshold: in memory, no file written
    assert not os.path.exists(os.path.join(directory, embeddings.MERGED))

    monkeypatch.setattr(embeddings, "MAP_MIN_BYTES", 1)
    m = embeddings.load_matrix(directory, records, 8, exclude={3, 77})
    keep = ~np.isin(want_ids, [3, 77])
    assert isinstance(m.vectors, np.memmap) and not m.vectors.flags.writeable
    np.testing.assert_array_equal(m.ids, want_ids[keep])
    np.testing.assert_array_equal(np.asarray(m.vectors), want[keep])
    np.testing.assert_array_equal(m.reconstruct([78]), want[78:79].astype(np.float32))
    merged = os.listdir(os.path.join(directory, embeddings.MERGED))
    assert len(merged) == 1 and merged[0].endswith(".npy")
    again = embeddings.load_matrix(directory, records, 8, exclude={3, 77})
    assert os.listdir(os.path.join(directory, embeddings.MERGED)) == merged   # reused, not rewritten
    np.testing.assert_array_equal(np.asarray(again.vectors), want[keep])

    # a part rewritten under the same name (a crash's leftover overwritten) is a new key; the old file goes
    fresh = rng.standard_normal((50, 8)).astype(np.float16)
    os.utime(os.path.join(directory, "part-00001.npy"), ns=(1, 1))   # a different mtime for sure
    records[1] = embeddings.write_part(directory, 1, fresh, id_chunks[1])
    changed = embeddings.load_matrix(directory, records, 8)
    np.testing.assert_array_equal(np.asarray(changed.vectors[50:100]), fresh)
    assert len(os.listdir(os.path.join(directory, embeddings.MERGED))) == 1
    assert os.listdir(os.path.join(directory, embeddings.MERGED)) != merged

    # nowhere to write the merged file: the concatenation is held in memory, with the same rows
    def no_space(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(embeddings.os, "replace", no_space)     # the merged file written, then not renamed
    held = embeddings.load_matrix(directory, records, 8, exclude={0})
    assert not isinstance(held.vectors, np.memmap)
    np.testing.assert_array_equal(held.ids, want_ids[1:])
    assert not [n for n in os.listdir(os.path.join(directory, embeddings.MERGED)) if n.endswith(".tmp")]
