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
    r = run("search", "-c", c, "--image", photo_dir / "p05.jpg", "-k", 1, "--json")
    assert json.loads(r.output)["results"][0]["path"] == str(photo_dir / "p05.jpg")
    r = run("index", photo_dir, "-c", tmp_path / "d", "--workers", 0, "--quiet", "--no-index")
    assert "index tiny" not in r.output and not (tmp_path / "d" / "indexes").exists()
