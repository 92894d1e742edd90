#!/usr/bin/env python
"""GIST speed against lear-gist, the C library, built and timed in the same run on the same images.

The reference is lear-gist's own C (``color_gist_scaletab``, single-precision FFTW3, one image per call),
built by ``scripts/lear_gist.py`` from the ``pyleargist`` sdist against Debian's FFTW (cached under
``out/lear_gist``; the first run downloads and compiles, and stops with one line if it cannot). Both sides
describe the same images: sample photos centre-cropped and resized as the encoder does
(``prepare_gist_image``), or seeded noise when the folder is missing. Before any timing, the reference's
descriptors are checked against ours on those images and against the golden files (lear-gist's output
kept in tests/data/golden_gist): the two must agree to 1e-4 relative L2, as tests/test_gist.py demands.

Per image size, in ``--rounds`` interleaved rounds (a shared machine's load then falls on both sides alike):

- one core: ours with 1 torch thread at batch 1 and at ``--batch`` (64), against one lear-gist process;
- every core: ours with ``--threads`` torch threads at ``--batch``, against ``--threads`` lear-gist processes
  (one per core, each going over the same images).

Reported: images/s and CPU-ms/image of each, and the ratio ours / lear-gist per round (median and range).
Wall-clock rates on a shared machine depend on what else runs, so the load average is printed beside
them; the CPU-time ratio is the steadier one. With CUDA present, ours on the GPU against lear-gist on
every core as well.

With ``--collection-photos DIR``, also times ``nearsight index DIR -c TMP --encoders gist --no-index`` end
to end (decode, resize, GIST, store).

    python scripts/bench_gist.py [--photos data/samples/photos] [--threads 2] [--rounds 3] [--min-seconds 2]

Prints one line per measurement, then one JSON line.
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
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))
from nearsight.retrieval.gist import GistParams, gist, prepare_gist_image  # noqa: E402

import lear_gist  # noqa: E402

GOLDEN = ROOT / "tests" / "data" / "golden_gist"
TOL = 1e-4  # tests/test_gist.py's agreement with lear-gist, relative L2 per descriptor
TARGET_CPU_128 = 180.0
TARGET_CUDA_128 = 20000.0


def sample_images(folder: str, n: int, size: int) -> tuple[np.ndarray, str]:
    """(n, size, size, 3) uint8: photos prepared as the gist encoder does, or seeded noise without them."""
    from PIL import Image

    names = sorted(f for f in os.listdir(folder) if f.lower().endswith((".jpg", ".jpeg", ".png"))) \
        if os.path.isdir(folder) else []
    if names:
        out = []
        for name in names[:n]:
            with Image.open(os.path.join(folder, name)) as im:
                im.draft("RGB", (2 * size, 2 * size))  # JPEG draft decoding: the source stays well above size
                out.append(prepare_gist_image(im, size))
        return np.stack(out), f"{len(out)} photos of {folder}"
    rng = np.random.default_rng(size)
    return rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8), f"{n} seeded noise images"


def rel_errors(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return np.linalg.norm(a - b, axis=1) / np.linalg.norm(b, axis=1)


def check_golden(binary) -> dict:
    """The built reference against the golden files (lear-gist's own output): is it the same library?"""
    from PIL import Image

    cases = json.loads((GOLDEN / "cases.json").read_text())
    worst = 0.0
    for name, case in sorted(cases.items()):
        image = np.asarray(Image.open(GOLDEN / case["input"]).convert("RGB"))[None]
        ref = lear_gist.run(binary, image, case["nblocks"], tuple(case["orientations"]))["descriptors"]
        worst = max(worst, float(rel_errors(ref, np.load(GOLDEN / f"{name}.gist.npy")[None])[0]))
    return {"cases": len(cases), "max_rel_err": worst, "match": worst < TOL}


def ours(images: np.ndarray, batch: int, threads: int, device: str, min_seconds: float) -> dict:
    """Our images/s and CPU-ms/image at ``batch`` with ``threads`` torch threads (the batch tiles ``images``)."""
    import torch

    torch.set_num_threads(threads)
    batch_images = np.resize(images, (batch, *images.shape[1:]))
    params = GistParams(image_size=images.shape[1])
    gist(batch_images[:2], params, device=device)  # builds and caches the filter bank for this size and device
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    reps, cpu0 = 0, time.process_time()
    sync()
    start = time.perf_counter()
    while reps < (5 if batch == 1 else 1) or time.perf_counter() - start < min_seconds:
        gist(batch_images, params, device=device)  # returns numpy: the device work is finished when it returns
        reps += 1
    sync()
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    n = reps * batch
    return {"images_per_s": n / wall, "cpu_ms_per_image": 1000 * cpu / n, "images": n}


def reference(binary, images: np.ndarray, processes: int, min_seconds: float) -> dict:
    r = lear_gist.run(binary, images, min_seconds=min_seconds, processes=processes, descriptors=False)
    return {"images_per_s": r["images_per_s"], "cpu_ms_per_image": r["cpu_ms_per_image"], "images": r["calls"]}


def summarise(rounds: list[dict], ours_key: str, ref_key: str) -> dict:
    speed = [r[ours_key]["images_per_s"] / r[ref_key]["images_per_s"] for r in rounds]
    cpu = [r[ref_key]["cpu_ms_per_image"] / r[ours_key]["cpu_ms_per_image"] for r in rounds]
    med = lambda key, field: float(np.median([r[key][field] for r in rounds]))  # noqa: E731
    return {"ours_images_per_s": round(med(ours_key, "images_per_s"), 2),
            "lear_gist_images_per_s": round(med(ref_key, "images_per_s"), 2),
            "ours_cpu_ms_per_image": round(med(ours_key, "cpu_ms_per_image"), 3),
            "lear_gist_cpu_ms_per_image": round(med(ref_key, "cpu_ms_per_image"), 3),
            "ratio": round(float(np.median(speed)), 2), "ratio_range": [round(min(speed), 2), round(max(speed), 2)],
            "cpu_time_ratio": round(float(np.median(cpu)), 2)}


def index_run(folder: str, device: str) -> dict:
    paths = [f for f in os.listdir(folder) if not f.startswith(".")]
    out = tempfile.mkdtemp(prefix="bench_gist_")
    try:
        cmd = [sys.executable, "-m", "nearsight.server.cli", "index", folder, "-c", os.path.join(out, "c"),
               "--encoders", "gist", "--quiet", "--no-index", "--device", device]
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        seconds = time.perf_counter() - start
        if proc.returncode != 0:
            return {"skipped": f"nearsight index failed (exit {proc.returncode}): {proc.stderr.strip()[-300:]}"}
        return {"files": len(paths), "seconds": round(seconds, 2), "files_per_s": round(len(paths) / seconds, 2),
                "summary": proc.stdout.strip()[-300:]}
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--photos", default=str(ROOT / "data" / "samples" / "photos"),
                    help="photos both sides describe (seeded noise when missing)")
    ap.add_argument("--images", type=int, default=16, help="distinct images per size")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="torch threads and lear-gist processes of the every-core runs (default: all cores)")
    ap.add_argument("--sizes", default="128,256")
    ap.add_argument("--batch", type=int, default=64, help="our batch (images per call)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--min-seconds", type=float, default=2.0, help="time each setting for at least this long")
    ap.add_argument("--collection-photos", help="folder of photos to index with --encoders gist")
    ap.add_argument("--no-cuda", action="store_true")
    ap.add_argument("--omp-wait-policy", default="PASSIVE", choices=["PASSIVE", "ACTIVE", "default"],
                    help="OpenMP idle threads sleep (PASSIVE) or spin; spinning wastes a shared machine's cores")
    args = ap.parse_args()
    if args.omp_wait_policy != "default":
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy  # read once, when torch loads libgomp

    try:
        binary = lear_gist.build()
    except lear_gist.ReferenceUnavailable as exc:
        raise SystemExit(f"bench_gist: {exc}")

    import torch

    cuda = torch.cuda.is_available() and not args.no_cuda
    result = {"bench": "gist", "threads": args.threads, "cores": os.cpu_count(), "torch": torch.__version__,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default"), "rounds": args.rounds,
              "batch": args.batch, "reference": f"lear-gist from {'-'.join(lear_gist.SDIST)} sdist, gcc "
                                                 f"{' '.join(lear_gist.CFLAGS)}, Debian FFTW3 (single)",
              "loadavg_start": round(os.getloadavg()[0], 2)}
    golden = check_golden(binary)
    result["reference_vs_golden"] = golden
    print(f"lear-gist built here vs the golden files: {golden['cases']} cases, max rel. error "
          f"{golden['max_rel_err']:.2e}", flush=True)
    if not golden["match"]:
        raise SystemExit("bench_gist: the lear-gist built here does not reproduce the golden files")

    for size in [int(s) for s in args.sizes.split(",")]:
        images, what = sample_images(args.photos, args.images, size)
        ref_desc = lear_gist.run(binary, images)["descriptors"]
        err = rel_errors(gist(images, GistParams(image_size=size)), ref_desc)
        check = {"images": what, "max_rel_err": float(err.max()), "match": bool(err.max() < TOL)}
        print(f"{size}px: ours vs lear-gist on {what}: max rel. error {check['max_rel_err']:.2e}", flush=True)
        rounds = []
        for r in range(args.rounds):
            row = {"ours_1t_b1": ours(images, 1, 1, "cpu", args.min_seconds),
                   "lear_1p": reference(binary, images, 1, args.min_seconds),
                   "ours_1t_batch": ours(images, args.batch, 1, "cpu", args.min_seconds),
                   f"ours_{args.threads}t_batch": ours(images, args.batch, args.threads, "cpu", args.min_seconds),
                   f"lear_{args.threads}p": reference(binary, images, args.threads, args.min_seconds)}
            if cuda:
                row["ours_cuda_batch"] = ours(images, args.batch, args.threads, "cuda", args.min_seconds)
            rounds.append(row)
            print(f"{size}px round {r + 1}: " + ", ".join(f"{k} {v['images_per_s']:.1f}/s ({v['cpu_ms_per_image']:.2f}"
                                                          f" CPU-ms)" for k, v in row.items())
                  + f"; load {os.getloadavg()[0]:.1f}", flush=True)
        entry = {"descriptors_vs_lear_gist": check,
                 "one_core_batch": summarise(rounds, "ours_1t_batch", "lear_1p"),
                 "one_core_batch1": summarise(rounds, "ours_1t_b1", "lear_1p"),
                 "every_core_batch": summarise(rounds, f"ours_{args.threads}t_batch", f"lear_{args.threads}p")}
        if cuda:
            entry["cuda_batch_vs_every_core"] = summarise(rounds, "ours_cuda_batch", f"lear_{args.threads}p")
            entry["cuda_batch_vs_every_core"]["device"] = torch.cuda.get_device_name()
        for key, s in entry.items():
            if key != "descriptors_vs_lear_gist":
                print(f"{size}px {key}: ours {s['ours_images_per_s']}/s vs lear-gist {s['lear_gist_images_per_s']}/s"
                      f" = {s['ratio']}x (rounds {s['ratio_range'][0]}-{s['ratio_range'][1]}); CPU time "
                      f"{s['lear_gist_cpu_ms_per_image']} vs {s['ours_cpu_ms_per_image']} ms/image = "
                      f"{s['cpu_time_ratio']}x", flush=True)
        result[f"{size}px"] = entry

    if "128px" in result:
        best = result["128px"]["every_core_batch"]["ours_images_per_s"]
        result["target_cpu_128"] = {"target": TARGET_CPU_128, "best": best, "met": best >= TARGET_CPU_128}
        if cuda:
            best = result["128px"]["cuda_batch_vs_every_core"]["ours_images_per_s"]
            result["target_cuda_128"] = {"target": TARGET_CUDA_128, "best": best, "met": best >= TARGET_CUDA_128}
    if args.collection_photos:
        result["nearsight_index"] = index_run(args.collection_photos, "cuda" if cuda else "cpu")
        print("nearsight index --encoders gist:", result["nearsight_index"], flush=True)
    result["loadavg_end"] = round(os.getloadavg()[0], 2)
    mismatched = [k for k, v in result.items() if isinstance(v, dict) and "descriptors_vs_lear_gist" in v
                  and not v["descriptors_vs_lear_gist"]["match"]]
    print(json.dumps(result))
    if mismatched:
        raise SystemExit(f"bench_gist: our descriptors differ from lear-gist's at {', '.join(mismatched)}")


if __name__ == "__main__":
    main()
