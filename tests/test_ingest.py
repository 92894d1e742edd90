"""The ingest pipeline: sources, dedupe, incremental runs, bad files, new encoders, crash safety."""
import io
import os
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest

from nearsight.retrieval.collection import Collection
from nearsight.retrieval.errors import NotACollection, SourceError, UnknownEncoder
from tests.conftest import make_photo


def check_consistent(coll: Collection) -> set[int]:
    """Every live item exactly once, with one embedding per encoder; returns the live ids."""
    items = [i for i in coll.store.iter_items() if not i.deleted]
    live = {i.id for i in items}
    assert len(live) == len(items)
    for name in coll.encoder_names:
        m = coll.embedding_matrix(name)
        assert len(set(m.ids.tolist())) == len(m.ids), f"{name}: an item embedded twice"
        assert set(m.ids.tolist()) == live, f"{name}: embeddings do not match the items"
        assert np.isfinite(m.vectors.astype(np.float32)).all()
    return live


def test_folder_index_then_incremental(tmp_path, photo_dir, ingest):
    s = ingest(tmp_path / "c", [photo_dir])
    assert (s.added, s.duplicates, s.already_present, s.failed) == (12, 0, 0, 0)
    s = ingest(tmp_path / "c", [photo_dir])
    assert (s.added, s.already_present) == (0, 12)
    make_photo(99).save(photo_dir / "new.jpg")
    s = ingest(tmp_path / "c", [photo_dir])
    assert (s.added, s.already_present) == (1, 12)
    coll = Collection.open(tmp_path / "c")
    assert coll.count == 13
    check_consistent(coll)
    beach = [i for i in coll.store.iter_items() if i.path.endswith("beach.png")][0]
    assert beach.caption == "a sunny beach"


def test_duplicate_content_becomes_an_alias(tmp_path, photo_dir, ingest):
    (photo_dir / "copy_of_p03.jpg").write_bytes((photo_dir / "p03.jpg").read_bytes())
    s = ingest(tmp_path / "c", [photo_dir])
    assert (s.added, s.duplicates) == (12, 1)
    coll = Collection.open(tmp_path / "c")
    item = coll.item(coll.store.path_entry(str(photo_dir / "p03.jpg"))[0])
    assert sorted([item.path, *item.aliases]) == [str(photo_dir / "copy_of_p03.jpg"), str(photo_dir / "p03.jpg")]
    assert coll.store.path_entry(str(photo_dir / "copy_of_p03.jpg"))[0] == item.id
    check_consistent(coll)


def test_changed_file_replaces_its_item(tmp_path, photo_dir, ingest):
    ingest(tmp_path / "c", [photo_dir])
    path = photo_dir / "p01.jpg"
    make_photo(1234).save(path)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    s = ingest(tmp_path / "c", [photo_dir])
    assert s.added == 1
    coll = Collection.open(tmp_path / "c")
    assert coll.count == 12
    new_id = coll.store.path_entry(str(path))[0]
    old = [i for i in coll.store.iter_items() if i.deleted]
    assert len(old) == 1 and old[0].replaced_by == new_id
    assert coll.search(image=str(path), k=1)[0].id == new_id
    check_consistent(coll)


def test_bad_files_are_recorded_and_skipped(tmp_path, photo_dir, ingest):
    (photo_dir / "zero.jpg").write_bytes(b"")
    (photo_dir / "text.png").write_text("not an image at all")
    good = (photo_dir / "p00.jpg").read_bytes()
    (photo_dir / "truncated.jpg").write_bytes(good[: len(good) // 3])
    buf = io.BytesIO()
    from PIL import Image
    Image.new("L", (3000, 3000)).save(buf, "PNG")
    (photo_dir / "bomb.png").write_bytes(buf.getvalue())
    s = ingest(tmp_path / "c", [photo_dir], max_pixels=4_000_000)
    assert (s.added, s.failed) == (12, 4)
    failures = dict(Collection.open(tmp_path / "c").store.failures())
    assert "empty" in failures[str(photo_dir / "zero.jpg")]
    assert "not a recognised" in failures[str(photo_dir / "text.png")]
    assert "truncated" in failures[str(photo_dir / "truncated.jpg")] or "corrupt" in failures[str(photo_dir / "truncated.jpg")]
    assert "over the limit" in failures[str(photo_dir / "bomb.png")]


def test_file_list_with_captions_and_missing_entries(tmp_path, photo_dir, ingest):
    listing = tmp_path / "list.txt"
    listing.write_text(f"# my photos\n{photo_dir}/p00.jpg\tred car\nphotos/p01.jpg\n\n{photo_dir}/gone.jpg\n")
    s = ingest(tmp_path / "c", [listing])
    assert (s.added, s.failed) == (2, 1)
    coll = Collection.open(tmp_path / "c")
    captions = {i.path: i.caption for i in coll.store.iter_items()}
    assert captions[str(photo_dir / "p00.jpg")] == "red car"
    assert str(photo_dir / "p01.jpg") in captions


def test_webdataset_tar(tmp_path, ingest):
    shard = tmp_path / "shard-000.tar"
    with tarfile.open(shard, "w") as tar:
        for i in range(5):
            for name, data in ((f"s/{i:04d}.jpg", _jpeg(i)), (f"s/{i:04d}.txt", f"caption {i}".encode())):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    s = ingest(tmp_path / "c", [shard])
    assert s.added == 5
    coll = Collection.open(tmp_path / "c")
    item = coll.item(3)
    assert item.caption == "caption 3" and item.path.endswith("::s/0003.jpg")
    assert coll.load_image(3).size == (96, 72)
    assert coll.search(id=3, k=1)[0].id == 3


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    make_photo(seed).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_adding_an_encoder_embeds_existing_items(tmp_path, photo_dir, ingest):
    ingest(tmp_path / "c", [photo_dir])
    os.remove(photo_dir / "p05.jpg")  # gone since: its stored thumbnail stands in
    s = ingest(tmp_path / "c", [photo_dir], encoders=("tiny-gray",))
    assert s.backfilled == {"tiny-gray": 12}
    coll = Collection.open(tmp_path / "c")
    assert coll.encoder_names == ["tiny", "tiny-gray"]
    check_consistent(coll)
    hit = coll.search(image=str(photo_dir / "p02.jpg"), encoder="tiny-gray", k=1)[0]
    assert hit.path == str(photo_dir / "p02.jpg")


def test_worker_processes_give_the_same_collection(tmp_path, photo_dir, ingest):
    ingest(tmp_path / "a", [photo_dir], workers=0)
    ingest(tmp_path / "b", [photo_dir], workers=2)
    a, b = Collection.open(tmp_path / "a"), Collection.open(tmp_path / "b")
    pa = {i.path: i.sha256 for i in a.store.iter_items()}
    pb = {i.path: i.sha256 for i in b.store.iter_items()}
    assert pa == pb
    np.testing.assert_array_equal(a.embedding_matrix("tiny").vectors, b.embedding_matrix("tiny").vectors)


def test_clear_errors(tmp_path, photo_dir, ingest):
    with pytest.raises(SourceError, match="no such file"):
        ingest(tmp_path / "c", [tmp_path / "missing"])
    with pytest.raises(UnknownEncoder, match="valid names: .*tiny"):
        ingest(tmp_path / "c", [photo_dir], encoders=("nope",))
    assert not (tmp_path / "c").exists()  # nothing written on bad input
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.txt").write_text("not a collection")
    with pytest.raises(NotACollection):
        ingest(tmp_path / "d", [photo_dir])
    with pytest.raises(NotACollection):
        Collection.open(tmp_path / "d")


def test_kill_9_mid_write_then_rerun(tmp_path):
    """SIGKILL the real CLI while it writes, at moments seen from outside (its 3rd, 7th, 12th shard file appearing),
    never after a guessed delay: every kill lands mid-run (strictly between nothing and everything committed), the
    collection opens whole after each, and the last run finishes it with every photo once."""
    photos = tmp_path / "many"
    photos.mkdir()
    total = 160
    for i in range(total):
        make_photo(1000 + i, (64, 48)).save(photos / f"{i:03d}.jpg")
    cmd = [sys.executable, "-m", "nearsight.server.cli", "index", str(photos), "-c", str(tmp_path / "c"),
           "--encoders", "tiny,tiny-gray", "--flush-every", "8", "--workers", "1", "--quiet"]
    parts = tmp_path / "c" / "embeddings" / "tiny"
    for nth in (2, 6, 11):
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        # part N is written only once parts 0..N-1 are committed (its number is the count of recorded parts)
        while not (parts / f"part-{nth:05d}.npy").exists():
            assert proc.poll() is None, "the run ended before the kill"
            assert time.monotonic() < deadline, "no progress"
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        coll = Collection.open(tmp_path / "c")
        live = check_consistent(coll)
        coll.close()
        assert 8 * nth <= len(live) < total, (nth, len(live))
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    coll = Collection.open(tmp_path / "c")
    assert coll.count == total
    assert len(check_consistent(coll)) == total
    assert {i.path for i in coll.store.iter_items()} == {str(p) for p in photos.iterdir()}
    assert coll.store.count("paths") == total


def test_a_file_name_that_is_not_utf8_is_indexed_and_searchable(tmp_path, ingest):
    folder = tmp_path / "photos"
    folder.mkdir()
    make_photo(1).save(folder / "plain.jpg")
    raw = os.path.join(os.fsencode(folder), b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    make_photo(2).save(raw, format="JPEG")
    s = ingest(tmp_path / "c", [folder])
    assert (s.added, s.failed) == (2, 0)
    coll = Collection.open(tmp_path / "c")
    try:
        odd = [i for i in coll.store.iter_items() if i.path.endswith("caf\udce9.jpg")]
        assert len(odd) == 1 and os.fsencode(odd[0].path) == raw
        results = coll.search(id=odd[0].id, k=2)  # a search reads its results' items back
        assert results[0].id == odd[0].id and results[0].path == odd[0].path
    finally:
        coll.close()
    from nearsight.server.app import ServerConfig, create_app

    client = create_app(ServerConfig(str(tmp_path / "c"))).test_client()
    answer = client.get(f"/api/items/{odd[0].id}", headers={"Host": "localhost"})
    assert answer.status_code == 200 and answer.get_json()["filename"] == "caf\udce9.jpg"
