"""Fault drills for ingest (issue 13): every fault ends the run within seconds, with one line on stderr, a
non-zero exit, the write lock free, no worker left behind, and a collection the next run completes.

Faults are injected into a real `nearsight index` subprocess (own process group, decode workers) by a
small driver that patches one function before the CLI starts; a hang fails on the subprocess timeout.
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


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_photos")
    for i in range(N_PHOTOS):
        make_photo(3000 + i, (64, 48)).save(root / f"{i:03d}.jpg")
    return root


def run_faulty(photos, coll, inject: str, *extra):
    """Run `nearsight index` with a fault injected; returns (returncode, stderr lines, seconds after start)."""
    cmd = [sys.executable, "-c", DRIVER.format(inject=inject), "index", str(photos), "-c", str(coll), "--quiet",
           "--no-index", "--workers", "2", "--flush-every", "8", "--batch-size", "4", *extra]
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
