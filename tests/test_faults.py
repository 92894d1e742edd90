"""Fault drills for ingest (issue 13): every fault ends the run within seconds, with one line on stderr, a
non-zero exit, the write lock free, no worker left behind, and a collection the next run completes.

Faults are injected into a real `nearsight index` subprocess (own process group, decode workers) by a
small driver that patches one function before the CLI starts; a hang fails on the subprocess timeout.
kill -9 lands at instrumented points (after a shard's fsync and before its LMDB commit, during a backfill,
before a new encoder is recorded, during an index save): what is committed is exactly what was meant to be,
and the next run completes the collection with the right counts and nothing twice.
"""
import errno
import fcntl
import os
import signal
import subprocess
import sys
import time

import pytest

from nearsight.retrieval.collection import Collection
from nearsight.retrieval.errors import SourceError, StorageError
from tests.conftest import make_photo
from tests.test_ingest import check_consistent

N_PHOTOS = 48

DRIVER = """
import os, signal, sys
{inject}
from nearsight.server.cli import main
sys.argv[0] = "nearsight"
main()
"""

# Signal the whole process group (as Ctrl-C in a terminal does) once the first flush is committed.
SIGNAL_AFTER_FIRST_FLUSH = """
import nearsight.indexer.ingest as ingest
# a test runner started in the background (`cmd &` without job control) passes SIGINT on ignored, and Python
# then installs no KeyboardInterrupt handler; Ctrl-C at a terminal reaches a process with the default one
signal.signal(signal.SIGINT, signal.default_int_handler)
_flush = ingest._Run._flush
def flush(self, batch):
    _flush(self, batch)
    if self.committed:
        os.killpg(0, signal.{sig})
ingest._Run._flush = flush
"""

# The encoder fails on its second batch, while the workers are busy decoding.
ENCODER_FAILS = """
import nearsight.indexer.ingest as ingest
from nearsight.retrieval.errors import WeightsUnavailable
_embed, calls = ingest.embed, []
def embed(*args):
    calls.append(1)
    if len(calls) == 2:
        raise WeightsUnavailable("checkpoint vanished")
    _embed(*args)
ingest.embed = embed
"""

# The second shard write finds the disk full, after writing part of its temporary file.
DISK_FULL = """
import numpy as np
_save, calls = np.save, []
def save(f, array, *a, **k):
    calls.append(1)
    if len(calls) == 3:
        f.write(b"\\x93NUMPY")
        raise OSError(28, "No space left on device")
    _save(f, array, *a, **k)
np.save = save
"""

# A decode worker dies outright (as the OOM killer would do it) on one image.
WORKER_DIES = """
import nearsight.indexer.pool as pool
_chunk = pool._decode_chunk
def chunk(jobs):
    if any(job[0].key.endswith("013.jpg") for job in jobs):
        os._exit(9)
    return _chunk(jobs)
pool._decode_chunk = chunk
"""


# kill -9 at instrumented points: the process kills itself (as the OOM killer or a power cut would stop it) right
# after the step named, so nothing after it runs: no finally, no cleanup. The driver patches the step in the
# child only; the code under test carries no hook.
KILL_AFTER_SHARD_FSYNC = """
import nearsight.indexer.ingest as ingest
_write, calls = ingest.write_part, []
def write_part(*args, **kwargs):
    record = _write(*args, **kwargs)   # the shard files are fsynced and renamed; their LMDB commit comes next
    calls.append(1)
    if len(calls) == {nth}:
        os.kill(os.getpid(), signal.SIGKILL)
    return record
ingest.write_part = write_part
"""

# after a new encoder's first backfill commit, before the manifest names the encoder
KILL_BEFORE_NEW_ENCODER_RECORDED = """
import nearsight.indexer.ingest as ingest
_record = ingest._Run._record
def record(self, names):
    if any(e.name in names and e.name not in self.coll.encoder_names for e in self.encoders):
        os.kill(os.getpid(), signal.SIGKILL)
    _record(self, names)
ingest._Run._record = record
"""

# during an index save: after its first index file is renamed over the old one (the JSON not yet), or after a
# temporary file is written and before any rename
KILL_IN_INDEX_SAVE = {
    "between_renames": """
_replace = os.replace
def replace(src, dst):
    _replace(src, dst)
    if os.sep + "indexes" + os.sep in str(dst) and not str(dst).endswith(".json"):
        os.kill(os.getpid(), signal.SIGKILL)
os.replace = replace
""",
    "before_renames": """
import faiss
_write = faiss.write_index
def write_index(index, path):
    _write(index, path)
    if ".tmp-" in str(path):
        os.kill(os.getpid(), signal.SIGKILL)
faiss.write_index = write_index
"""}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_photos")
    for i in range(N_PHOTOS):
        make_photo(3000 + i, (64, 48)).save(root / f"{i:03d}.jpg")
    return root


def run_faulty(photos, coll, inject: str, *extra, no_index: bool = True):
    """Run `nearsight index` with a fault injected; returns (returncode, stderr lines, seconds after start)."""
    cmd = [sys.executable, "-c", DRIVER.format(inject=inject), "index", str(photos), "-c", str(coll), "--quiet",
           *(["--no-index"] if no_index else []), "--workers", "2", "--flush-every", "8", "--batch-size", "4", *extra]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
                            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        _, err = proc.communicate(timeout=120)  # generous for a loaded CI machine; a hang never ends
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail("nearsight index hung after the fault")
    assert_group_gone(proc.pid)
    return proc.returncode, err.splitlines(), time.monotonic() - start


def assert_group_gone(pgid: int) -> None:
    """No decode worker outlives the run (they would hold memory, and with fork the lock)."""
    for _ in range(50):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail("decode workers outlived the main process")


def assert_lock_free(coll) -> None:
    fd = os.open(os.path.join(coll, ".write.lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)


def assert_next_run_completes(photos, coll, ingest) -> None:
    s = ingest(coll, [photos], workers=2, flush_every=8)
    assert s.failed == 0
    c = Collection.open(coll)
    try:
        assert len(check_consistent(c)) == N_PHOTOS  # nothing lost, nothing twice
        assert c.store.count("paths") == N_PHOTOS
    finally:
        c.close()
    leftovers = [f for _, _, files in os.walk(coll) for f in files if f.endswith(".tmp")]
    assert leftovers == []


@pytest.mark.parametrize("sig, status", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_to_the_process_group_during_ingest(tmp_path, photos, ingest, sig, status):
    coll = tmp_path / "c"
    rc, err, _ = run_faulty(photos, coll, SIGNAL_AFTER_FIRST_FLUSH.format(sig=sig))
    assert rc == status
    assert len(err) == 1 and err[0].startswith("interrupted; ") and "re-run" in err[0], err
    assert int(err[0].split()[1]) >= 8  # what the first flush committed is reported
    assert_lock_free(coll)
    assert_next_run_completes(photos, coll, ingest)


def test_encoder_failing_mid_run_stops_the_workers(tmp_path, photos, ingest):
    coll = tmp_path / "c"
    rc, err, _ = run_faulty(photos, coll, ENCODER_FAILS)
    assert rc == 1 and err == ["error: checkpoint vanished"]
    assert_lock_free(coll)
    assert_next_run_completes(photos, coll, ingest)


def test_new_encoder_that_fails_is_not_recorded(tmp_path, photos, ingest):
    coll = tmp_path / "c"
    ingest(coll, [photos])
    rc, err, _ = run_faulty(photos, coll, ENCODER_FAILS.replace("== 2", "== 1"), "--encoders", "tiny-gray")
    assert rc == 1 and err == ["error: checkpoint vanished"]
    c = Collection.open(coll)
    assert c.encoder_names == ["tiny"]  # no empty tiny-gray left to break the next runs
    c.close()
    assert_next_run_completes(photos, coll, ingest)


def test_disk_full_on_a_shard_write(tmp_path, photos, ingest):
    coll = tmp_path / "c"
    rc, err, _ = run_faulty(photos, coll, DISK_FULL)
    assert rc == 1 and len(err) == 1, err
    assert err[0].startswith("error: cannot write to ") and "No space left on device" in err[0]
    assert_lock_free(coll)
    c = Collection.open(coll)
    recorded = {p["file"] for p in c.store.parts("tiny")}
    c.close()
    on_disk = {f.split(".")[0] for f in os.listdir(coll / "embeddings" / "tiny")}
    assert on_disk == recorded  # neither the half-written .tmp nor an unrecorded part is left
    assert_next_run_completes(photos, coll, ingest)


def test_a_decode_worker_that_dies(tmp_path, photos, ingest):
    coll = tmp_path / "c"
    rc, err, _ = run_faulty(photos, coll, WORKER_DIES)
    assert rc == 1 and len(err) == 1 and err[0].startswith("error: a decode worker process died"), err
    assert_lock_free(coll)
    assert_next_run_completes(photos, coll, ingest)


def test_disk_full_without_workers_is_one_error(tmp_path, photo_dir, ingest, monkeypatch):
    import numpy as np

    save, calls = np.save, []

    def full(f, array, *a, **k):
        calls.append(1)
        if len(calls) == 1:
            f.write(b"\x93NUMPY")
            raise OSError(errno.ENOSPC, "No space left on device")
        save(f, array, *a, **k)

    monkeypatch.setattr(np, "save", full)
    with pytest.raises(StorageError, match="No space left on device; 0 new items committed"):
        ingest(tmp_path / "c", [photo_dir])
    assert os.listdir(tmp_path / "c" / "embeddings" / "tiny") == []  # no 0-byte part-00000.npy.tmp
    assert ingest(tmp_path / "c", [photo_dir]).added == 12


def committed(coll) -> tuple[set[int], dict[str, list[str]]]:
    """(live ids, every embedding checked once per item; recorded part files per encoder) of a collection."""
    c = Collection.open(coll)
    try:
        return check_consistent(c), {name: [p["file"] for p in c.parts(name)] for name in c.encoder_names}
    finally:
        c.close()


def test_kill_9_after_a_shard_fsync_before_its_commit(tmp_path, photos, ingest):
    coll = tmp_path / "c"
    rc, _, _ = run_faulty(photos, coll, KILL_AFTER_SHARD_FSYNC.format(nth=3))
    assert rc == -signal.SIGKILL
    live, parts = committed(coll)
    assert len(live) == 16 and parts == {"tiny": ["part-00000", "part-00001"]}   # two flushes of 8, whole
    assert (coll / "embeddings" / "tiny" / "part-00002.npy").exists()   # the third's shard was on disk, unrecorded
    assert_lock_free(coll)
    assert_next_run_completes(photos, coll, ingest)
    _, parts = committed(coll)
    on_disk = {f.split(".")[0] for f in os.listdir(coll / "embeddings" / "tiny")}
    assert on_disk == set(parts["tiny"])   # the orphan part was written over, not left beside


def test_kill_9_during_a_backfill(tmp_path, photos, ingest):
    coll = tmp_path / "c"
    ingest(coll, [photos])
    rc, _, _ = run_faulty(photos, coll, KILL_AFTER_SHARD_FSYNC.format(nth=3), "--encoders", "tiny-gray")
    assert rc == -signal.SIGKILL
    c = Collection.open(coll)     # mid-backfill: every item once in tiny, 16 of 48 in tiny-gray (2 commits of 8)
    assert c.encoder_names == ["tiny", "tiny-gray"] and len(c.parts("tiny-gray")) == 2
    gray = c.embedding_matrix("tiny-gray").ids.tolist()
    assert len(gray) == len(set(gray)) == 16 and set(gray) < set(c.embedding_matrix("tiny").ids.tolist())
    c.close()
    assert_next_run_completes(photos, coll, ingest)      # the re-run backfills the rest, each item once
    c = Collection.open(coll)
    assert len(c.embedding_matrix("tiny-gray")) == N_PHOTOS and c.encoder_names == ["tiny", "tiny-gray"]
    c.close()


def test_kill_9_before_a_new_encoder_is_recorded(tmp_path, photos, ingest):
    coll = tmp_path / "c"
    ingest(coll, [photos])
    rc, _, _ = run_faulty(photos, coll, KILL_BEFORE_NEW_ENCODER_RECORDED, "--encoders", "tiny-gray")
    assert rc == -signal.SIGKILL
    live, parts = committed(coll)
    assert len(live) == N_PHOTOS and list(parts) == ["tiny"]   # its committed part is not the collection's yet
    s = ingest(coll, [photos], encoders=("tiny-gray",), workers=2, flush_every=8)
    assert s.backfilled == {"tiny-gray": N_PHOTOS}
    live, parts = committed(coll)
    assert len(live) == N_PHOTOS and len(parts["tiny-gray"]) == N_PHOTOS // 8


@pytest.mark.parametrize("point", sorted(KILL_IN_INDEX_SAVE))
def test_kill_9_during_an_index_save(tmp_path, photos, ingest, point):
    from nearsight.retrieval.errors import IndexFilesChanged
    from nearsight.retrieval.index import load_index

    coll = tmp_path / "c"
    ingest(coll, sorted(photos.iterdir())[:24])
    c = Collection.open(coll, readonly=False)
    c.build_index("tiny")
    c.close()
    rc, _, _ = run_faulty(photos, coll, KILL_IN_INDEX_SAVE[point], no_index=False)   # ingests 24, then updates
    assert rc == -signal.SIGKILL
    live, _ = committed(coll)
    assert len(live) == N_PHOTOS
    leftovers = [f for f in os.listdir(coll / "indexes") if ".tmp-" in f]
    c = Collection.open(coll)
    if point == "between_renames":      # tiny.faiss is the new one, tiny.json the old: no reader takes that
        with pytest.raises(IndexFilesChanged, match="interrupted"):
            load_index(str(coll), "tiny", source=c.embedding_matrix("tiny"))
    else:                               # the old index is whole; only the killed save's temporary is left
        assert leftovers and load_index(str(coll), "tiny", source=c.embedding_matrix("tiny"), sync=False).ntotal == 24
    c.close()
    assert_next_run_completes(photos, coll, ingest)
    c = Collection.open(coll, readonly=False)
    report = c.build_index("tiny")
    assert report["ntotal"] == N_PHOTOS and report["action"] == ("rebuilt" if point == "between_renames" else "updated")
    assert [f for f in os.listdir(coll / "indexes") if ".tmp-" in f] == []
    for item_id in sorted(live)[::7]:
        assert c.search(id=item_id, k=1)[0].id == item_id
    c.close()


def test_fifo_and_device_files_named_like_images(tmp_path, photo_dir, ingest):
    os.mkfifo(photo_dir / "pipe.jpg")
    os.symlink("/dev/zero", photo_dir / "zero.jpg")
    for workers in (0, 2):
        s = ingest(tmp_path / f"c{workers}", [photo_dir], workers=workers)
        assert (s.added, s.failed) == (12, 2)
        failures = dict(Collection.open(tmp_path / f"c{workers}").store.failures())
        assert "a FIFO" in failures[str(photo_dir / "pipe.jpg")]
        assert "a character device" in failures[str(photo_dir / "zero.jpg")]
    with pytest.raises(SourceError, match="not a regular file"):
        ingest(tmp_path / "c9", [photo_dir / "pipe.jpg"])


def test_empty_folder_creates_nothing(tmp_path, ingest):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SourceError, match="no images"):
        ingest(tmp_path / "c", [tmp_path / "empty"])
    assert not (tmp_path / "c").exists()


def test_creation_killed_before_its_manifest_is_renamed(tmp_path, photo_dir, ingest):
    """kill -9 between writing collection.json.tmp and renaming it (the test_kill_9 flake)."""
    from nearsight.retrieval.store import ItemStore

    (tmp_path / "c").mkdir()
    ItemStore(str(tmp_path / "c" / "store.lmdb")).close()
    (tmp_path / "c" / "collection.json.tmp").write_text("")
    assert ingest(tmp_path / "c", [photo_dir]).added == 12


def test_recorded_encoder_whose_weights_are_gone_names_the_way_out(tmp_path, photo_dir, ingest, monkeypatch):
    """A collection made before encoders were recorded late may hold one that cannot load: the error says
    how to drop it, and dropping it lets the next run complete."""
    from nearsight.retrieval.encoders import create_encoder
    from nearsight.retrieval.errors import WeightsUnavailable

    ingest(tmp_path / "c", [photo_dir])
    coll = Collection.open(tmp_path / "c", readonly=False)
    gray = create_encoder("tiny-gray")
    coll.add_encoder(gray)  # recorded with no embeddings, as the old code did
    coll.close()

    def gone(self):
        raise WeightsUnavailable("checkpoint not found: /gone.pt")

    from nearsight.retrieval.encoders.tiny import TinyGrayEncoder

    monkeypatch.setattr(TinyGrayEncoder, "load", gone, raising=False)
    with pytest.raises(WeightsUnavailable, match="nearsight encoders remove tiny-gray -c "):
        ingest(tmp_path / "c", [photo_dir])
    Collection.open(tmp_path / "c", readonly=False).remove_encoder("tiny-gray")
    assert ingest(tmp_path / "c", [photo_dir]).already_present == 12
