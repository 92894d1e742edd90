"""The Ray engine on a real local Ray cluster: the same collection as the local engine, continuing each other's
collections, a killed driver or worker then a re-run, an unreachable address.

One Ray session (2 CPUs) serves the whole module; drivers killed on purpose run as subprocesses joined to it.
"""
import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nearsight.indexer.ingest import IngestConfig, index_paths
from nearsight.retrieval.collection import Collection
from tests.conftest import make_photo

pytestmark = pytest.mark.slow

CONFIG = IngestConfig(encoders=("tiny",), workers=0, progress=False, flush_every=8)


@pytest.fixture(scope="module")
def ray_address():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def ray_index(coll_dir, paths, shard_size=4):
    from nearsight.indexer.ray_engine import RayConfig, index_paths_ray

    return index_paths_ray(str(coll_dir), [str(p) for p in paths], CONFIG, RayConfig(shard_size=shard_size))


def local_index(coll_dir, paths):
    return index_paths(str(coll_dir), [str(p) for p in paths], CONFIG)


def make_photos(root, seeds, bad=True):
    """Photos with one duplicate, a captioned PNG and (bad=True) an unreadable file, in nested folders."""
    (root / "sub").mkdir(parents=True, exist_ok=True)
    for i in seeds:
        make_photo(i).save(root / f"p{i:03d}.jpg", quality=90)
    shutil.copy(root / f"p{seeds[1]:03d}.jpg", root / "sub" / f"copy{seeds[1]:03d}.jpg")
    make_photo(1000 + seeds[0]).save(root / "sub" / f"c{seeds[0]}.png")
    (root / "sub" / f"c{seeds[0]}.txt").write_text("a caption\n")
    if bad:
        (root / "sub" / f"bad{seeds[0]}.jpg").write_bytes(b"not a jpeg")
    return root


def snapshot(coll_dir):
    """Everything a collection holds that either engine must make the same: items with thumbnails, sources,
    failures, embeddings (float32 copies of the float16 rows, in id order)."""
    coll = Collection.open(coll_dir)
    try:
        items = sorted((i.id, i.path, tuple(i.aliases), i.sha256, i.width, i.height, i.caption, i.deleted,
                        hashlib.sha256(coll.store.thumbnail(i.id)).hexdigest()) for i in coll.store.iter_items())
        sources = sorted((p, coll.store.path_entry(p)) for i in coll.store.iter_items() for p in [i.path, *i.aliases])
        failures = sorted(coll.store.failures())
        m = coll.embedding_matrix("tiny")
        order = np.argsort(m.ids)
        return items, sources, failures, m.ids[order], m.vectors[order].astype(np.float32)
    finally:
        coll.close()


def assert_same_collection(a, b):
    sa, sb = snapshot(a), snapshot(b)
    assert sa[0] == sb[0], "items differ"
    assert sa[1] == sb[1], "sources differ"
    assert sa[2] == sb[2], "failures differ"
    np.testing.assert_array_equal(sa[3], sb[3])
    np.testing.assert_allclose(sa[4], sb[4], atol=2e-3)  # float16 rounding at most
    assert not os.path.exists(os.path.join(b, "staged")), "staged shards left behind"


def test_ray_collection_equals_local(tmp_path, ray_address):
    photos = make_photos(tmp_path / "photos", list(range(20)))
    local_index(tmp_path / "local", [photos])
    s = ray_index(tmp_path / "ray", [photos])
    assert (s.added, s.duplicates, s.failed, s.already_present) == (21, 1, 1, 0)
    assert_same_collection(tmp_path / "local", tmp_path / "ray")
    coll = Collection.open(tmp_path / "ray")
    assert coll.search(image=str(photos / "p007.jpg"), k=1)[0].path == str(photos / "p007.jpg")
    coll.close()
    s = ray_index(tmp_path / "ray", [photos])  # nothing new: skipped like the local engine skips
    assert (s.added, s.already_present, s.failed) == (0, 22, 1)


def test_engines_continue_each_other(tmp_path, ray_address):
    root = tmp_path / "photos"
    make_photos(root / "a", list(range(0, 10)))
    steps = [("ray", root / "a"), ("local", root), ("ray", root)]
    # the reference makes the same steps with the local engine only
    for i, (engine, path) in enumerate(steps):
        if i == 1:
            make_photos(root / "b", list(range(10, 18)), bad=False)
        if i == 2:
            make_photos(root / "c", list(range(18, 26)))
        local_index(tmp_path / "reference", [path])
        (ray_index if engine == "ray" else local_index)(tmp_path / "mixed", [path])
    assert_same_collection(tmp_path / "reference", tmp_path / "mixed")


DRIVER = """
import sys
from nearsight.indexer.ingest import IngestConfig
from nearsight.indexer.ray_engine import RayConfig, index_paths_ray
config = IngestConfig(encoders=("tiny",), workers=0, progress=False, flush_every=8)
print(index_paths_ray(sys.argv[1], [sys.argv[2]], config, RayConfig(address=sys.argv[3], shard_size=4)).line())
"""


def start_driver(coll, photos, address):
    env = dict(os.environ, PYTHONPATH=os.getcwd())
    return subprocess.Popen([sys.executable, "-c", DRIVER, str(coll), str(photos), address], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(condition, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting; driver output:\n{proc.stdout.read() if proc.poll() is not None else ''}")


def staged(coll, done):
    base = os.path.join(coll, "staged")
    names = os.listdir(base) if os.path.isdir(base) else []
    return [n for n in names if os.path.exists(os.path.join(base, n, "done.json")) == done]


def test_killed_driver_then_rerun(tmp_path, ray_address, caplog):
    photos = make_photos(tmp_path / "photos", list(range(40)))
    local_index(tmp_path / "local", [photos])
    coll = tmp_path / "ray"
    driver = start_driver(coll, photos, ray_address)
    killed = wait_for(lambda: staged(coll, done=True), driver)
    driver.kill()
    driver.wait()
    left = staged(coll, done=True)
    assert killed, "the driver finished before it could be killed"
    caplog.set_level(logging.INFO, logger="nearsight.indexer.ray_engine")
    s = ray_index(coll, [photos])
    assert s.added + s.already_present == 41 and s.failed == 1
    if left:  # done shards the killed driver had not committed yet are committed, not recomputed
        assert any("already done on disk" in r.getMessage() for r in caplog.records)
    assert_same_collection(tmp_path / "local", coll)


def _shard_workers():
    import psutil

    out = []
    for p in psutil.Process().children(recursive=True):  # only the processes this test session started
        try:
            if "_ShardWriter" in " ".join(p.cmdline()) or "_ShardWriter" in p.name():
                out.append(p)
        except psutil.Error:
            pass
    return out


def test_killed_worker_shard_is_redone(tmp_path, ray_address):
    photos = make_photos(tmp_path / "photos", list(range(40)))
    local_index(tmp_path / "local", [photos])
    coll = tmp_path / "ray"
    driver = start_driver(coll, photos, ray_address)
    # a worker mid-shard shows as a shard folder without its done-marker; shards are small and quick on this
    # machine, so after 3 done shards without catching one in progress, a worker is killed between shards
    assert wait_for(lambda: _shard_workers() and (staged(coll, done=False) or len(staged(coll, done=True)) >= 3),
                    driver), "the driver ended before a worker could be killed"
    victims = _shard_workers()
    for p in victims:
        p.send_signal(signal.SIGKILL)
    out, _ = driver.communicate(timeout=300)
    assert driver.returncode == 0, out
    assert "added 41" in out and "failed 1" in out
    assert_same_collection(tmp_path / "local", coll)


def test_unreachable_address_is_one_line(tmp_path):
    import socket

    (tmp_path / "photos").mkdir()
    make_photo(1).save(tmp_path / "photos" / "a.jpg")

    def index(address):
        return subprocess.run([sys.executable, "-c", "from nearsight.server.cli import main; main()", "index",
                               str(tmp_path / "photos"), "-c", str(tmp_path / "c"), "--engine", "ray",
                               "--address", address, "--no-index"], capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=os.getcwd()))

    with socket.socket() as s:  # a loopback port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = index(f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [f"error: cannot reach a Ray cluster at 127.0.0.1:{port}: Connection refused"]
    with socket.socket() as s:  # something listens, but it is not Ray (ray.init alone would hang there)
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        r = index(f"127.0.0.1:{port}")
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        f"error: 127.0.0.1:{port} answers, but not as a Ray cluster's head (its GCS port, 6379 by default)"]
    assert not (tmp_path / "c").exists()
