"""The nearsight command line: outputs, JSON, exit codes, one-line errors."""
import json

import numpy as np
from click.testing import CliRunner

from nearsight.server.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_index_search_info(tmp_path, photo_dir):
    c = tmp_path / "c"
    r = run("index", photo_dir, "-c", c, "--workers", 0, "--quiet")
    assert r.exit_code == 0, r.output
    assert "added 12, duplicates 0, already present 0, failed 0" in r.output
    r = run("index", photo_dir, "-c", c, "--workers", 0, "--quiet")
    assert "added 0, duplicates 0, already present 12, failed 0" in r.output
    r = run("search", "-c", c, "--image", photo_dir / "p03.jpg", "-k", 3, "--json")
    results = json.loads(r.output)["results"]
    assert r.exit_code == 0 and len(results) == 3 and results[0]["path"] == str(photo_dir / "p03.jpg")
    np.save(tmp_path / "q.npy", np.ones(3072, np.float32))
    r = run("search", "-c", c, "--vector", tmp_path / "q.npy", "-k", 2)
    assert r.exit_code == 0 and len(r.output.strip().splitlines()) == 2
    r = run("info", "-c", c, "--json")
    assert json.loads(r.output)["items"] == 12


def test_failures_listed(tmp_path, photo_dir):
    (photo_dir / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    run("index", photo_dir, "-c", tmp_path / "c", "--workers", 0, "--quiet")
    r = run("info", "-c", tmp_path / "c", "--failures")
    assert "failures 1" in r.output and "broken.jpg" in r.output


def test_one_line_errors_and_nonzero_exit(tmp_path, photo_dir):
    cases = [
        (("index", tmp_path / "missing", "-c", tmp_path / "c"), "no such file or directory"),
        (("index", photo_dir, "-c", tmp_path / "c", "--encoders", "tiny,bogus"), "unknown encoder 'bogus'"),
        (("search", "-c", photo_dir, "--id", 1), "not a nearsight collection"),
        (("info", "-c", tmp_path / "nowhere"), "no such collection directory"),
    ]
    for args, message in cases:
        r = run(*args)
        assert r.exit_code != 0 and message in r.output, (args, r.output)
        assert "Traceback" not in r.output
    run("index", photo_dir, "-c", tmp_path / "c", "--workers", 0, "--quiet")
    r = run("search", "-c", tmp_path / "c", "--text", "a dog")
    assert r.exit_code == 1 and "take text" in r.output
    r = run("search", "-c", tmp_path / "c")
    assert r.exit_code == 2 and "exactly one" in r.output


def test_index_builds_ann_indexes_and_build_index(tmp_path, photo_dir):
    c = tmp_path / "c"
    r = run("index", photo_dir, "-c", c, "--workers", 0, "--quiet")
    assert "index tiny: built Flat" in r.output and "recall@10 1.000" in r.output
    assert (c / "indexes" / "tiny.faiss").exists()
    r = run("build-index", "-c", c, "--encoder", "tiny", "--factory", "HNSW16", "--json")
    report = json.loads(r.output)
    assert r.exit_code == 0 and report["factory"] == "HNSW16" and report["recall_at_k"] >= 0.95
    r = run("info", "-c", c)
    assert "index HNSW16 recall@10" in r.output
    r = run("build-index", "-c", c, "--encoder", "tiny", "--auto", "--mode", "lsh", "--json")
    assert r.exit_code == 0 and json.loads(r.output)["factory"].startswith("LSH")
    assert json.loads(r.output)["warnings"] and "warning: LSH" in run("info", "-c", c).output   # shown, not buried
    r = run("search", "-c", c, "--image", photo_dir / "p05.jpg", "-k", 1, "--json")
    assert json.loads(r.output)["results"][0]["path"] == str(photo_dir / "p05.jpg")
    r = run("index", photo_dir, "-c", tmp_path / "d", "--workers", 0, "--quiet", "--no-index")
    assert "index tiny" not in r.output and not (tmp_path / "d" / "indexes").exists()


def test_encoders_remove(tmp_path, photo_dir):
    c = tmp_path / "c"
    assert run("index", photo_dir, "-c", c, "--encoders", "tiny,tiny-gray", "--workers", 0, "--quiet").exit_code == 0
    assert (c / "indexes" / "tiny-gray.json").exists()
    r = run("encoders", "remove", "tiny-gray", "-c", c)
    assert r.exit_code == 0 and "now has: tiny" in r.output, r.output
    assert json.loads((c / "collection.json").read_text())["encoders"][0]["name"] == "tiny"
    assert not (c / "embeddings" / "tiny-gray").exists()
    assert not [f for f in (c / "indexes").iterdir() if f.name.startswith("tiny-gray.")]
    r = run("encoders", "remove", "tiny-gray", "-c", c)
    assert r.exit_code == 1 and r.output.strip() == "error: this collection has no encoder 'tiny-gray'; it has: tiny"
    assert "tiny-gray" in run("encoders").output  # the plain listing still works
    # added back, it is embedded afresh for every item
    r = run("index", photo_dir, "-c", c, "--encoders", "tiny-gray", "--workers", 0, "--quiet", "--no-index")
    assert r.exit_code == 0 and "12 embedded for tiny-gray" in r.output, r.output


def test_writers_exclude_each_other(tmp_path, photo_dir):
    """build-index and fit-pca take the write lock that index holds (issue 13)."""
    import fcntl
    import os

    c = tmp_path / "c"
    assert run("index", photo_dir, "-c", c, "--workers", 0, "--quiet", "--no-index").exit_code == 0
    fd = os.open(c / ".write.lock", os.O_RDWR)  # as another process's index run would hold it
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        for args in (("build-index", "-c", c, "--encoder", "tiny"), ("fit-pca", "-c", c, "--encoder", "tiny", "--dim", 4),
                     ("index", photo_dir, "-c", c, "--workers", 0), ("encoders", "remove", "tiny", "-c", c)):
            r = run(*args)
            assert r.exit_code == 1 and "another nearsight process is writing" in r.output, (args, r.output)
    finally:
        os.close(fd)
    assert run("build-index", "-c", c, "--encoder", "tiny").exit_code == 0
