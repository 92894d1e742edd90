#!/usr/bin/env python
"""The Ray engine against the local engine on the same ~5k real-ish photos; 1 vs 2 Ray actors; driver memory.

The photos are made from the sample photos (data/samples/photos, fetched by scripts/fetch_sample_photos.sh):
random crops of 30-90% of each side, half of them mirrored, scaled to 480-1280 px on the long side, saved as
JPEG at quality 85-95 (seeded; cached in data/bench_ray_photos/ and reused). They are real photo content at
real photo sizes, though not 5k independent scenes.

Each run is its own driver process, indexing into a fresh collection with the `tiny` encoder (the engine's own
work, not an encoder's, is what is compared; encoders are bench_ingest's subject). The local engine uses all
cores for decode workers. The Ray runs join one Ray session this script starts on this machine (as many CPUs
as it has), so Ray's start-up is not counted in either; each run still starts its own actor pool, which is
counted. Images/s = files read / seconds inside `index_paths` (IngestSummary). Driver peak = the largest RSS of
the driver process alone (sampled every 20 ms): the local engine's decode workers are not in it, Ray's actors
are not its children.

    python scripts/bench_ray.py [--n 5000] [--encoders tiny] [--repeat 1]
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time

import psutil
from PIL import Image, ImageOps

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

RUN = """
import json, logging, sys
from nearsight.indexer.ingest import IngestConfig, index_paths
logging.basicConfig(level=logging.WARNING, format="%(message)s")
logging.getLogger("nearsight.indexer.ray_engine").setLevel(logging.INFO)  # the driver's commit rate
engine, coll, photos, encoders, address, actors = sys.argv[1:7]
config = IngestConfig(encoders=tuple(encoders.split(",")), progress=False)
if engine == "local":
    s = index_paths(coll, [photos], config)
else:
    from nearsight.indexer.ray_engine import RayConfig, index_paths_ray
    s = index_paths_ray(coll, [photos], config, RayConfig(address=address, actors=int(actors)))
print(json.dumps({"added": s.added, "duplicates": s.duplicates, "failed": s.failed, "seconds": s.seconds}))
"""


def make_photos(out: str, n: int, seed: int = 0) -> list[str]:
    """n crops/flips/rescales of the sample photos (cached: made once)."""
    paths = sorted(glob.glob(os.path.join(out, "*.jpg")))
    if len(paths) >= n:
        return paths[:n]
    samples = sorted(glob.glob(os.path.join(ROOT, "data", "samples", "photos", "*")))
    if not samples:
        raise SystemExit("no sample photos: run scripts/fetch_sample_photos.sh first")
    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    per = -(-n // len(samples))
    made = 0
    for s_index, sample in enumerate(samples):
        with Image.open(sample) as im:
            im.draft("RGB", (im.width // 2, im.height // 2))  # the largest crop is rescaled to <= 1280 anyway
            im = ImageOps.exif_transpose(im.convert("RGB"))
        for k in range(per):
            if made >= n:
                break
            fw, fh = rng.uniform(0.3, 0.9), rng.uniform(0.3, 0.9)
            w, h = int(im.width * fw), int(im.height * fh)
            x, y = rng.randint(0, im.width - w), rng.randint(0, im.height - h)
            crop = im.crop((x, y, x + w, y + h))
            if rng.random() < 0.5:
                crop = ImageOps.mirror(crop)
            side = rng.randint(480, 1280)
            scale = side / max(crop.size)
            crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))), Image.BILINEAR)
            crop.save(os.path.join(out, f"s{s_index:03d}_{k:03d}.jpg"), quality=rng.randint(85, 95))
            made += 1
    return sorted(glob.glob(os.path.join(out, "*.jpg")))[:n]


def run(engine: str, photos: str, encoders: str, address: str = "", actors: int = 0) -> dict:
    """One driver process; returns its summary plus the driver's peak RSS."""
    with tempfile.TemporaryDirectory(prefix="bench_ray_") as tmp:
        cmd = [sys.executable, "-c", RUN, engine, os.path.join(tmp, "c"), photos, encoders, address, str(actors)]
        proc = psutil.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=ROOT))
        peak = 0
        while proc.poll() is None:
            try:
                peak = max(peak, proc.memory_info().rss)
            except psutil.Error:
                pass
            time.sleep(0.02)
        out, err = proc.communicate()
        if proc.returncode != 0:
            raise SystemExit(f"{engine} run failed:\n{err[-3000:]}")
        result = json.loads(out.strip().splitlines()[-1])
        commit = re.search(r"driver: committed .* in ([0-9.]+)s of commit work", err)
        result["driver_commit_s"] = float(commit.group(1)) if commit else None
        result["driver_peak_mb"] = peak / 2**20
        result["images_per_s"] = (result["added"] + result["duplicates"] + result["failed"]) / result["seconds"]
        return result


def best(results: list[dict]) -> dict:
    """The median run by rate (the machine is shared; one run can be unlucky)."""
    return sorted(results, key=lambda r: r["images_per_s"])[len(results) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--encoders", default="tiny")
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--photos", default=os.path.join(ROOT, "data", "bench_ray_photos"))
    args = ap.parse_args()

    t = time.perf_counter()
    paths = make_photos(args.photos, args.n)
    print(f"{len(paths)} photos in {args.photos} ({sum(os.path.getsize(p) for p in paths) / 2**20:.0f} MiB; "
          f"made or checked in {time.perf_counter() - t:.0f}s)")
    folder = args.photos
    for p in paths:  # warm the page cache so no run pays the first read
        with open(p, "rb") as f:
            f.read()

    import ray

    cpus = os.cpu_count() or 1
    t = time.perf_counter()
    ray.init(num_cpus=cpus, include_dashboard=False, logging_level="WARNING")
    ray_init = time.perf_counter() - t
    address = ray.get_runtime_context().gcs_address
    try:
        local = best([run("local", folder, args.encoders) for _ in range(args.repeat)])
        ray2 = best([run("ray", folder, args.encoders, address, 2) for _ in range(args.repeat)])
        ray1 = best([run("ray", folder, args.encoders, address, 1) for _ in range(args.repeat)])
    finally:
        ray.shutdown()
    assert local["added"] == ray2["added"] == ray1["added"], (local, ray2, ray1)

    print(f"machine: {cpus} CPUs; encoders {args.encoders}; Ray session start {ray_init:.1f}s (not counted)")
    for name, r in (("local engine", local), ("ray, 2 actors", ray2), ("ray, 1 actor", ray1)):
        commit = (f", of which the driver's commit work {r['driver_commit_s']:.1f}s"
                  if r.get("driver_commit_s") is not None else "")
        print(f"{name:14s} {r['images_per_s']:7.1f} images/s  ({r['seconds']:.1f}s{commit}, {r['added']} added)  "
              f"driver peak {r['driver_peak_mb']:.0f} MiB")
    print(f"ray (2 actors) / local: {ray2['images_per_s'] / local['images_per_s']:.2f}x; "
          f"2 actors / 1 actor: {ray2['images_per_s'] / ray1['images_per_s']:.2f}x")
    print(json.dumps({
        "bench": "ray", "n": len(paths), "cpus": cpus, "encoders": args.encoders, "ray_init_s": round(ray_init, 2),
        "local_images_per_s": round(local["images_per_s"], 1),
        "ray2_images_per_s": round(ray2["images_per_s"], 1), "ray1_images_per_s": round(ray1["images_per_s"], 1),
        "ray2_over_local": round(ray2["images_per_s"] / local["images_per_s"], 3),
        "ray2_over_ray1": round(ray2["images_per_s"] / ray1["images_per_s"], 3),
        "driver_peak_mb": {"local": round(local["driver_peak_mb"]), "ray2": round(ray2["driver_peak_mb"]),
                           "ray1": round(ray1["driver_peak_mb"])},
        "seconds": {"local": round(local["seconds"], 1), "ray2": round(ray2["seconds"], 1),
                    "ray1": round(ray1["seconds"], 1)},
        "driver_commit_s": {"ray2": ray2["driver_commit_s"], "ray1": ray1["driver_commit_s"]},
    }))


if __name__ == "__main__":
    main()
