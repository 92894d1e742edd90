#!/usr/bin/env python
"""Ingest speed: `nearsight index --encoders tiny` vs a plain single-process PIL loop, on real photos.

Baseline (measured in the same run): open each file with PIL at full size, convert to RGB, resize to 256 px on
the short side. nearsight does more (hash, thumbnail, embedding, LMDB and shard writes) but decodes JPEGs at
reduced size (draft mode) in worker processes overlapped with encoding. Peak memory is the largest summed RSS of
the indexing process tree, sampled every 20 ms. `--no-index`: the ANN index build after ingest is not
part of the ingest rate (see bench_index.py).

    python scripts/bench_ingest.py data/samples/photos [--repeat 3] [--encoders tiny]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import psutil
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from nearsight.indexer.sources import iter_sources  # noqa: E402


def baseline(paths: list[str]) -> float:
    start = time.perf_counter()
    for path in paths:
        with Image.open(path) as im:
            im = im.convert("RGB")
            w, h = im.size
            s = 256 / min(w, h)
            im.resize((max(1, round(w * s)), max(1, round(h * s))), Image.BILINEAR)
    return time.perf_counter() - start


def nearsight_index(folder: str, encoders: str, workers: int) -> tuple[float, int, str]:
    out = tempfile.mkdtemp(prefix="bench_ingest_")
    try:
        cmd = [sys.executable, "-m", "nearsight.server.cli", "index", folder, "-c", os.path.join(out, "c"),
               "--encoders", encoders, "--workers", str(workers), "--quiet", "--no-index"]
        start = time.perf_counter()
        proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        peak = 0
        while proc.poll() is None:
            try:
                tree = [proc] + proc.children(recursive=True)
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.02)
        seconds = time.perf_counter() - start
        stdout, stderr = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"nearsight index failed: {stderr}")
        return seconds, peak, stdout.strip()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--encoders", default="tiny")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs for each side")
    args = ap.parse_args()

    paths = [s.key for s in iter_sources([args.folder])]
    megapixels = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in paths) / 1e6
    base = min(baseline(paths) for _ in range(args.repeat))
    runs = [nearsight_index(args.folder, args.encoders, args.workers) for _ in range(args.repeat)]
    ours, peak, summary = min(runs)
    result = {
        "bench": "ingest", "images": len(paths), "megapixels": round(megapixels, 1), "encoders": args.encoders,
        "workers": args.workers, "cores": os.cpu_count(),
        "baseline_images_per_s": round(len(paths) / base, 2),
        "nearsight_images_per_s": round(len(paths) / ours, 2),
        "ratio_to_baseline": round(base / ours, 2),
        "nearsight_peak_rss_mb": round(peak / 2**20, 1),
        "nearsight_summary": summary,
        "note": "nearsight time includes process start-up, hashing, thumbnails, embeddings and durable writes",
    }
    print(f"baseline (PIL full decode + resize): {result['baseline_images_per_s']} images/s")
    print(f"nearsight index ({args.encoders}):     {result['nearsight_images_per_s']} images/s "
          f"= {result['ratio_to_baseline']}x, peak RSS {result['nearsight_peak_rss_mb']} MB")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
