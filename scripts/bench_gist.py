#!/usr/bin/env python
"""GIST speed: descriptors/s at 128x128 and 256x256, batch 1 and batch 256, on CPU (and CUDA when present).

Baseline: lear-gist, the C library (single-precision FFTW3, one image per call, one core), at about
61 images/s per core at 128x128 and 6 images/s per core at 256x256 on this class of machine; each CPU
figure is compared with those rates times the cores used. Targets: >= 180 images/s at 128x128 on
2 cores, >= 20,000 images/s on an H100. Wall-clock rates on a shared machine depend on what else runs,
so the CPU time per image (process time, all threads) and the load average are printed beside them.

With ``--collection-photos DIR``, also times ``nearsight index DIR -c TMP --encoders gist`` end to end
(decode, resize, GIST, store), with ``--no-index`` (the ANN build is bench_index.py's).

    python scripts/bench_gist.py [--threads 2] [--collection-photos data/samples/photos] [--min-seconds 2]

Prints one JSON line at the end.
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

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from nearsight.retrieval.gist import GistParams, gist  # noqa: E402

LEAR_GIST_PER_CORE = {128: 61.0, 256: 6.0}  # images/s, one core
TARGET_CPU_128 = 180.0
TARGET_CUDA_128 = 20000.0


def images(n: int, size: int) -> np.ndarray:
    # GIST's cost does not depend on content: seeded noise with some smooth structure is enough.
    rng = np.random.default_rng(size)
    base = rng.integers(0, 256, (min(n, 8), size, size, 3), dtype=np.uint8)
    return np.resize(base, (n, size, size, 3))


def measure(batch: np.ndarray, device: str, min_seconds: float, min_reps: int) -> dict:
    import torch

    params = GistParams(image_size=batch.shape[1])
    gist(batch[:2], params, device=device)  # builds and caches the filter bank for this size and device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    reps, cpu0, start = 0, time.process_time(), time.perf_counter()
    sync()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        gist(batch, params, device=device)  # returns numpy: the device work is finished when it returns
        reps += 1
    sync()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    n = reps * len(batch)
    return {"images_per_s": round(n / wall, 2), "cpu_ms_per_image": round(1000 * cpu / n, 3), "images": n}


def index_run(folder: str, device: str) -> dict:
    paths = [f for f in os.listdir(folder) if not f.startswith(".")]
    out = tempfile.mkdtemp(prefix="bench_gist_")
    try:
        cmd = [sys.executable, "-m", "nearsight.server.cli", "index", folder, "-c", os.path.join(out, "c"),
               "--encoders", "gist", "--quiet", "--no-index", "--device", device]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            return {"skipped": f"nearsight index failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"}
        return {"files": len(paths), "seconds": round(seconds, 2), "files_per_s": round(len(paths) / seconds, 2),
                "summary": proc.stdout.strip()[-300:]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads (default: all cores)")
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--batches", default="1,256")
    ap.add_argument("--min-seconds", type=float, default=2.0, help="time each setting for at least this long")
    ap.add_argument("--collection-photos", help="folder of photos to index with --encoders gist")
    ap.add_argument("--no-cuda", action="store_true")
    ap.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                    help="OpenMP idle threads sleep (PASSIVE) or spin; spinning wastes a shared machine's cores")
    args = ap.parse_args()
    if args.omp_wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # read once, when torch loads libgomp

    import torch

    torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() and not args.no_cuda else [])
    result = {"bench": "gist", "threads": args.threads, "cores": os.cpu_count(), "torch": torch.__version__,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"),
              "loadavg_start": round(os.getloadavg()[0], 2), "lear_gist_per_core": LEAR_GIST_PER_CORE}
    for device in devices:
        rows = {}
        for size in sizes:
            for batch in batches:
                r = measure(images(batch, size), device, args.min_seconds, min_reps=1 if batch > 1 else 5)
                if size in LEAR_GIST_PER_CORE:
                    ref = LEAR_GIST_PER_CORE[size] * args.threads
                    r["lear_gist_images_per_s"] = ref
                    r["ratio_to_lear_gist"] = round(r["images_per_s"] / ref, 2)
                rows[f"{size}px_batch{batch}"] = r
                print(f"{device:5s} {size:4d}px batch {batch:4d}: {r['images_per_s']:9.1f} images/s "
                      f"({r['cpu_ms_per_image']:.2f} CPU-ms/image)"
                      + (f", {r['ratio_to_lear_gist']:.2f}x lear-gist on {args.threads} cores"
                         if "ratio_to_lear_gist" in r else ""), flush=True)
        result[device] = rows
    best_cpu = max((r["images_per_s"] for k, r in result["cpu"].items() if k.startswith("128px")), default=None)
    result["target_cpu_128"] = {"target": TARGET_CPU_128, "best": best_cpu,
                                "met": best_cpu is not None and best_cpu >= TARGET_CPU_128}
    if "cuda" in result:
        best = max((r["images_per_s"] for k, r in result["cuda"].items() if k.startswith("128px")), default=None)
        result["target_cuda_128"] = {"target": TARGET_CUDA_128, "best": best,
                                     "met": best is not None and best >= TARGET_CUDA_128,
                                     "device": torch.cuda.get_device_name()}
    if args.collection_photos:
        result["nearsight_index"] = index_run(args.collection_photos, "cuda" if "cuda" in result else "cpu")
        print("nearsight index --encoders gist:", result["nearsight_index"], flush=True)
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
