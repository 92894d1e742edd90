#!/usr/bin/env python
"""Ingest speed per encoder, next to a like-for-like baseline and the two limits, all measured in this run.

For each encoder (``--encoders tiny,cnn``), on the photos of FOLDER, with W = ``--workers`` processes:

- **ingest**: ``nearsight index --encoders E --workers W --no-index`` end to end (process start-up, hashing,
  thumbnails, dedup, embeddings, fsynced shards and LMDB commits; the ANN build is bench_index's).
- **baseline**: the plain pipeline a user would write with the same parts and the same parallelism: a pool of
  W processes reads each file and decodes it in draft mode at the encoder's size, preprocesses, and the main
  process encodes batches of 64 with the same encoder, keeping the vectors in memory; run in a fresh process
  like ingest, so both pay start-up and model loading. ``ingest / baseline`` is what nearsight's bookkeeping
  and durability cost (1.0 = free; above 1 = its overlap of decoding and encoding wins).
- **decode limit**: the decode workers' whole job (read, sha256, draft decode per encoder, thumbnail,
  preprocess) on W processes, nothing encoded: the best ingest could do if encoding were free.
- **encode limit**: the encoder alone on preprocessed arrays in memory, at its best batch (16 or 64),
  torch's default threads: the best ingest could do if decoding were free.
- ``ingest / min(limits)`` is how close ingest gets to the slower of the two (target >= 0.7). Decoding and
  encoding share the same cores, so the true ceiling is lower still: ``1 / (1/decode + 1/encode)``, the rate if
  the two could not overlap at all on idle cores; ``ingest / shared`` > 1 means they overlap.
- ``cnn`` is measured once per runtime (``--cnn-runtimes torch,onnx``: ONNX Runtime on the exported model vs
  torch), side by side on the same photos in the same run, with the two runtimes' embeddings compared (min cosine).
- For ``cnn`` on torch, the encode limit of the plain timm model (unfolded, NCHW, whole batch, default heap), run in
  a subprocess so the heap setting of this process does not help it: the encoder's fast-path speedup.

Each figure is the best of ``--repeat`` runs (the machine may be shared; ratios are taken within this run).

    python scripts/bench_ingest.py data/samples/photos [--encoders tiny,cnn] [--repeat 3] [--workers N]
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from nearsight.indexer.decode import DecodeTask, Decoder, read_source  # noqa: E402
from nearsight.indexer.sources import iter_sources  # noqa: E402
from nearsight.retrieval.encoders import create_encoder  # noqa: E402
from nearsight.retrieval.encoders.cnn import RUNTIME_ENV  # noqa: E402
from nearsight.retrieval.heap import keep_freed_memory  # noqa: E402
from nearsight.retrieval.images import decode_image  # noqa: E402

from bench_scale import timed  # noqa: E402  (scripts/ is on the path when a script runs)

_state = {}


# -- decode side (worker processes) -----------------------------------------------------------------------------
def _init_decoder(encoder: str) -> None:
    _state["decoder"] = Decoder(DecodeTask(((encoder, ()),), max_pixels=100_000_000))


def _full_decode(source):
    return _state["decoder"](source).__class__.__name__  # nothing big crosses back: only the limit is measured


def _init_plain(encoder: str) -> None:
    _state["encoder"] = create_encoder(encoder, device="cpu")


def _plain_decode(source):
    """The baseline's worker: read, draft decode at the encoder's size, preprocess."""
    enc = _state["encoder"]
    return enc.preprocess(decode_image(read_source(source), min_side=enc.draft_size).image)


def decode_limit(sources, encoder: str, workers: int) -> float:
    with multiprocessing.get_context("forkserver").Pool(workers, _init_decoder, (encoder,)) as pool:
        start = time.perf_counter()
        for _ in pool.imap_unordered(_full_decode, [(s, -1) for s in sources], chunksize=4):
            pass
        return time.perf_counter() - start


def baseline(folder: str, encoder: str, workers: int) -> float:
    """Seconds of the baseline in a fresh process, timed from outside, so it pays what ``nearsight index`` pays
    before its first image (interpreter, torch and model loading, pool start)."""
    start = time.perf_counter()
    subprocess.run([sys.executable, os.path.abspath(__file__), folder, "--baseline-only", encoder,
                    "--workers", str(workers)], check=True, cwd=os.path.join(os.path.dirname(__file__), ".."))
    return time.perf_counter() - start


def run_baseline(sources, encoder: str, workers: int) -> None:
    enc = create_encoder(encoder, device="cpu")
    vectors, pending = [], []
    with multiprocessing.get_context("forkserver").Pool(workers, _init_plain, (encoder,)) as pool:
        for array in pool.imap(_plain_decode, sources, chunksize=4):
            pending.append(array)
            if len(pending) == 64:
                vectors.append(enc.encode_images(np.stack(pending)))
                pending = []
    if pending:
        vectors.append(enc.encode_images(np.stack(pending)))


# -- encode side -------------------------------------------------------------------------------------------------
def preprocessed(sources, encoder: str, n: int = 128) -> np.ndarray:
    enc = create_encoder(encoder, device="cpu")
    arrays = [enc.preprocess(decode_image(read_source(s), min_side=enc.draft_size).image) for s in sources[:n]]
    reps = -(-n // len(arrays))
    return np.stack((arrays * reps)[:n])


def encode_limit(arrays: np.ndarray, encoder: str, repeat: int) -> tuple[float, int]:
    """(images/s, batch) of the encoder alone at its best batch size."""
    enc = create_encoder(encoder, device="cpu")
    enc.encode_images(arrays[:16])  # load the model, warm up
    best = (0.0, 0)
    for batch in (16, 64):
        for _ in range(repeat):
            start = time.perf_counter()
            for i in range(0, len(arrays), batch):
                enc.encode_images(arrays[i:i + batch])
            best = max(best, (len(arrays) / (time.perf_counter() - start), batch))
    return best


PLAIN_CNN = r"""
import sys, time, numpy as np, torch
from nearsight.retrieval.encoders.cnn import MEAN, STD, load_lite0
arrays = np.load(sys.argv[1]); repeat = int(sys.argv[2])
model = load_lite0()
mean, std = torch.tensor(MEAN).view(1, -1, 1, 1), torch.tensor(STD).view(1, -1, 1, 1)
best = 0.0
with torch.inference_mode():
    for batch in (16, 64):
        for _ in range(repeat):
            start = time.perf_counter()
            for i in range(0, len(arrays), batch):
                x = (torch.from_numpy(arrays[i:i + batch]).float() / 255.0 - mean) / std
                model.forward_head(model.forward_features(x), pre_logits=True)
            best = max(best, len(arrays) / (time.perf_counter() - start))
print(best)
"""


def plain_cnn_limit(arrays: np.ndarray, repeat: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "arrays.npy")
        np.save(path, arrays)
        root = os.path.join(os.path.dirname(__file__), "..")
        out = subprocess.run([sys.executable, "-c", PLAIN_CNN, path, str(repeat)], capture_output=True, text=True,
                             cwd=root, check=True)
        return float(out.stdout.strip().splitlines()[-1])


# -- ingest ------------------------------------------------------------------------------------------------------
def nearsight_index(folder: str, encoder: str, workers: int) -> tuple[float, int, str]:
    out = tempfile.mkdtemp(prefix="bench_ingest_")
    try:
        seconds, peak, stdout = timed([sys.executable, "-m", "nearsight.server.cli", "index", os.path.abspath(folder),
                                       "-c", os.path.join(out, "c"), "--encoders", encoder, "--workers", str(workers),
                                       "--quiet", "--no-index"])
        return seconds, peak, stdout.strip()
    finally:
        shutil.rmtree(out, ignore_errors=True)


def measure(folder: str, sources, encoder: str, workers: int, repeat: int, decode: float | None = None) -> dict:
    n = len(sources)
    if decode is None:
        decode = n / min(decode_limit(sources, encoder, workers) for _ in range(repeat))
    arrays = preprocessed(sources, encoder)
    encode, best_batch = encode_limit(arrays, encoder, repeat)
    base = n / min(baseline(folder, encoder, workers) for _ in range(repeat))
    runs = [nearsight_index(folder, encoder, workers) for _ in range(repeat)]
    seconds, peak, summary = min(runs, key=lambda run: run[0])
    ingest = n / seconds
    shared = 1.0 / (1.0 / decode + 1.0 / encode)
    row = {
        "encoder": encoder,
        "ingest_images_per_s": round(ingest, 2),
        "baseline_images_per_s": round(base, 2),
        "decode_limit_images_per_s": round(decode, 2),
        "encode_limit_images_per_s": round(encode, 2), "encode_best_batch": best_batch,
        "ingest_to_baseline": round(ingest / base, 2),
        "ingest_to_min_limit": round(ingest / min(decode, encode), 2),
        "ingest_to_shared_bound": round(ingest / shared, 2),
        "ingest_peak_rss_mb": round(peak["rss"] / 2**20, 1), "ingest_peak_anonymous_mb": round(peak["anonymous"] / 2**20, 1),
        "ingest_summary": summary,
    }
    if encoder == "cnn" and os.environ.get(RUNTIME_ENV) != "onnx":
        plain = plain_cnn_limit(arrays, repeat)
        row["plain_model_encode_images_per_s"] = round(plain, 2)
        row["encode_speedup_vs_plain_model"] = round(encode / plain, 2)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--encoders", default="tiny,cnn", help="comma-separated; each measured on its own")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs for each figure")
    ap.add_argument("--cnn-runtimes", default="torch,onnx",
                    help="cnn measured once per runtime, side by side on the same photos (torch, onnx)")
    ap.add_argument("--baseline-only", metavar="ENCODER", help=argparse.SUPPRESS)  # the baseline's own process
    args = ap.parse_args()

    keep_freed_memory()  # as ingest does: the encode limit and baseline run in the same heap setting
    sources = list(iter_sources([args.folder]))
    if args.baseline_only:
        run_baseline(sources, args.baseline_only, args.workers)
        return
    rows = []
    runs = []
    for name in [e.strip() for e in args.encoders.split(",") if e.strip()]:
        for runtime in ([r.strip() for r in args.cnn_runtimes.split(",") if r.strip()] if name == "cnn" else [None]):
            runs.append((name, runtime))
    decode_limits = {}
    for name, runtime in runs:
        # the env var reaches this process's encoders, the baseline's process and `nearsight index`
        if runtime:
            os.environ[RUNTIME_ENV] = runtime
        rows.append(measure(args.folder, sources, name, args.workers, args.repeat, decode_limits.get(name)))
        os.environ.pop(RUNTIME_ENV, None)
        r = rows[-1]
        decode_limits[name] = r["decode_limit_images_per_s"] * 1.0
        if runtime:
            r["encoder"] = f"{name}[{runtime}]"
            r["runtime"] = runtime
        print(f"{r['encoder']:6s} ingest {r['ingest_images_per_s']:7.1f} images/s | baseline (same W, draft decode) "
              f"{r['baseline_images_per_s']:7.1f} = {r['ingest_to_baseline']}x | decode limit "
              f"{r['decode_limit_images_per_s']:7.1f}, encode limit {r['encode_limit_images_per_s']:7.1f} "
              f"(batch {r['encode_best_batch']}) -> {r['ingest_to_min_limit']}x of the smaller, "
              f"{r['ingest_to_shared_bound']}x of the shared-cores bound | peak RSS {r['ingest_peak_rss_mb']} MB")
        if "plain_model_encode_images_per_s" in r:
            print(f"       cnn forward alone: {r['encode_limit_images_per_s']} images/s vs the plain timm model "
                  f"{r['plain_model_encode_images_per_s']} = {r['encode_speedup_vs_plain_model']}x")
    extra = {}
    by_runtime = {r["runtime"]: r for r in rows if r.get("runtime")}
    if {"torch", "onnx"} <= set(by_runtime):
        t, o = by_runtime["torch"], by_runtime["onnx"]
        extra = runtime_agreement(sources)
        for key in ("encode_limit_images_per_s", "ingest_images_per_s"):
            extra[f"cnn_onnx_to_torch_{key.replace('_images_per_s', '')}"] = round(o[key] / t[key], 2)
        print(f"cnn onnx vs torch: encode {extra['cnn_onnx_to_torch_encode_limit']}x, ingest "
              f"{extra['cnn_onnx_to_torch_ingest']}x; embeddings: min cosine {extra['cnn_onnx_vs_torch_min_cosine']} "
              f"over {extra['cnn_compared_images']} images")
    load = os.getloadavg()[0]
    print(json.dumps({"bench": "ingest", "images": len(sources), "workers": args.workers, "cores": os.cpu_count(),
                      "load_average_1m": round(load, 2), "encoders": rows, **extra}))


def runtime_agreement(sources, n: int = 64) -> dict:
    """Cosine of each image's cnn vector from ONNX Runtime against torch's, on the first ``n`` photos."""
    arrays = preprocessed(sources, "cnn", n=min(n, len(sources)))
    a = create_encoder("cnn", device="cpu", runtime="torch").encode_images(arrays)
    b = create_encoder("cnn", device="cpu", runtime="onnx").encode_images(arrays)
    return {"cnn_onnx_vs_torch_min_cosine": round(float(np.min(np.sum(a * b, axis=1))), 6),
            "cnn_compared_images": len(arrays)}


if __name__ == "__main__":
    main()
