#!/usr/bin/env python
"""The GPU checks of issue 12, one run: encoders on CUDA in fp16, GIST against its target, faiss on the GPU at 1M
vectors, and the index layer on the GPU. Prints each figure as it comes, then one JSON line.

- **encoders**: images/s of each image encoder's ``encode_images`` on CUDA (fp16 autocast for the torch ones),
  on preprocessed synthetic photos already in memory, best batch of 64 / 256, best of ``--repeat``; ``clip`` with
  random weights (same cost as trained ones), ``triplet`` left out (it is trained inside a collection).
- **gist**: the same for ``gist`` against the 20,000 images/s target.
- **faiss**: exact search on the GPU (``GpuIndexFlatIP``) and an ``IVF,PQ`` index built and searched on the GPU
  over ``--n`` synthetic clustered vectors (default 1,000,000 x 256), recall@10 against exact CPU search on a
  sample of queries; filling the same trained index on the CPU (100k vectors, scaled) as the baseline.
- **index layer**: ``build_index`` with ``use_gpu=True``: tuned search, removed ids never returned (tombstones on
  the GPU segments), saved from the GPU and loaded back on the CPU with the same answers.

- **ingest** (``--ingest FOLDER``): ``nearsight index`` end to end over the folder's photos with ``--device cuda``
  and, as the baseline in the same run, ``--device cpu``: images/s of each, and the two collections' embeddings
  compared item by item (cosine for the networks, relative error for the descriptors).

Without CUDA it prints one line and exits 0. Run it through ``scripts/gpu_check.sh``.

    python scripts/gpu_check.py [--n 1000000] [--dim 256] [--repeat 3] [--skip-faiss] [--ingest FOLDER]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

GIST_TARGET = 20_000      # images/s (issue 12, item 5)
ENCODERS = ("tiny", "tiny-gray", "lab-layout", "gist", "gist-gray", "cnn", "clip")


def photos(count: int, size=(320, 240)):
    """Synthetic photo-like PIL images (gradients, blocks, noise), seeded."""
    from PIL import Image

    rng = np.random.default_rng(0)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    out = []
    for _ in range(count):
        img = rng.uniform(0, 255, 3) + x[..., None] * rng.uniform(-1, 1, 3) + y[..., None] * rng.uniform(-1, 1, 3)
        for _ in range(4):
            x0, y0 = rng.integers(0, w - 16), rng.integers(0, h - 16)
            img[y0:y0 + rng.integers(8, h // 2), x0:x0 + rng.integers(8, w // 2)] = rng.uniform(0, 255, 3)
        img += rng.normal(0, 4, img.shape)
        out.append(Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)))
    return out


def encoder_speed(name: str, images, repeat: int, count: int, device: str = "cuda") -> dict:
    import torch
    from nearsight.retrieval.encoders import create_encoder

    options = {"pretrained": None} if name == "clip" else {}
    enc = create_encoder(name, device=device, **options)
    arrays = np.stack([enc.preprocess(im) for im in images])
    arrays = np.concatenate([arrays] * -(-count // len(arrays)))[:count]
    enc.encode_images(arrays[:64])       # load, cuDNN autotune, warm-up
    best = (0.0, 0)
    for batch in (64, 256):
        for _ in range(repeat):
            if device == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            for i in range(0, len(arrays), batch):
                enc.encode_images(arrays[i:i + batch])    # returns numpy: synchronised
            best = max(best, (len(arrays) / (time.perf_counter() - start), batch))
    row = {"encoder": name, "images_per_s": round(best[0], 1), "batch": best[1],
           "fp16": hasattr(enc, "_autocast"), "dim": enc.dim}
    if name == "gist":
        row["target_images_per_s"] = GIST_TARGET
        row["target_met"] = best[0] >= GIST_TARGET
    del enc
    if device == "cuda":
        torch.cuda.empty_cache()
    return row


def clustered(n: int, d: int, seed: int = 0, block: int = 100_000) -> np.ndarray:
    """(n, d) float32 unit vectors around 1000 centres, made block by block."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((1000, d)).astype(np.float32)
    x = np.empty((n, d), np.float32)
    for s in range(0, n, block):
        b = min(block, n - s)
        x[s:s + b] = centres[rng.integers(0, 1000, b)] + 0.8 * rng.standard_normal((b, d)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x


def recall(I: np.ndarray, truth: np.ndarray, k: int) -> float:
    return float(np.mean([len(set(a[:k]) & set(b[:k])) / k for a, b in zip(I, truth)]))


def faiss_checks(n: int, d: int, nq: int = 10_000, n_truth: int = 1000, k: int = 10) -> dict:
    import faiss

    x = clustered(n, d)
    q = clustered(nq, d, seed=1)
    t = time.perf_counter()
    cpu_flat = faiss.IndexFlatIP(d)
    cpu_flat.add(x)
    _, truth = cpu_flat.search(q[:n_truth], k)
    cpu_exact_s = time.perf_counter() - t
    del cpu_flat

    res = faiss.StandardGpuResources()
    out = {"n": n, "d": d, "queries": nq, "k": k, "cpu_exact_seconds_for_truth": round(cpu_exact_s, 2)}
    flat = faiss.GpuIndexFlatIP(res, d)
    flat.add(x)
    flat.search(q[:100], k)
    t = time.perf_counter()
    _, I = flat.search(q, k)
    out["gpu_exact_queries_per_s"] = round(nq / (time.perf_counter() - t), 1)
    out["gpu_exact_recall_at_10"] = round(recall(I[:n_truth], truth, k), 4)
    del flat

    factory, nlist = "IVF4096,PQ64", 4096
    sample = x[np.random.default_rng(2).choice(n, min(n, 64 * nlist), replace=False)]
    co = faiss.GpuClonerOptions()
    co.useFloat16LookupTables = True
    gpu_index = faiss.index_cpu_to_gpu(res, 0, faiss.index_factory(d, factory, faiss.METRIC_INNER_PRODUCT), co)
    t = time.perf_counter()
    gpu_index.train(sample)
    out["gpu_ivfpq_train_seconds"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    gpu_index.add(x)
    out["gpu_ivfpq_add_seconds"] = round(time.perf_counter() - t, 2)
    out["gpu_ivfpq_build_seconds"] = round(out["gpu_ivfpq_train_seconds"] + out["gpu_ivfpq_add_seconds"], 2)
    for nprobe in (16, 64):
        faiss.GpuParameterSpace().set_index_parameter(gpu_index, "nprobe", nprobe)
        gpu_index.search(q[:100], k)
        t = time.perf_counter()
        _, I = gpu_index.search(q, k)
        out[f"gpu_ivfpq_nprobe{nprobe}_queries_per_s"] = round(nq / (time.perf_counter() - t), 1)
        out[f"gpu_ivfpq_nprobe{nprobe}_recall_at_10"] = round(recall(I[:n_truth], truth, k), 4)
    # the CPU baseline in this run: the same trained index, emptied, filled on the CPU with 100k vectors
    cpu_index = faiss.index_gpu_to_cpu(gpu_index)
    cpu_index.reset()
    sub = min(n, 100_000)
    t = time.perf_counter()
    cpu_index.add(x[:sub])
    cpu_add = (time.perf_counter() - t) * n / sub
    out["cpu_ivfpq_add_seconds_scaled"] = round(cpu_add, 2)
    out["gpu_add_speedup_vs_cpu"] = round(cpu_add / max(out["gpu_ivfpq_add_seconds"], 1e-9), 1)
    return out


def index_layer_checks(d: int = 128, n: int = 200_000, k: int = 10, require_gpu: bool = True) -> dict:
    """build_index on the GPU: search, tombstones, save from the GPU, load on the CPU."""
    from nearsight.retrieval.index import ArraySource, build_index, load_index, plan_from_factory, tune
    from nearsight.retrieval.index.backend import gpu_count

    if gpu_count() == 0 and require_gpu:
        return {"skipped": "faiss has no GPU support here (install the gpu extra: pip install -e '.[gpu]')"}
    x = clustered(n, d, seed=3)
    ids = np.arange(n, dtype=np.int64) * 2 + 7
    source = ArraySource(x.astype(np.float16), ids)
    plan = plan_from_factory("IVF1024,PQ32", n, d, "ip")
    t = time.perf_counter()
    index = build_index(x, ids, "ip", plan, source=source, use_gpu=True)
    out = {"factory": plan.factory, "n": n, "build_seconds": round(time.perf_counter() - t, 2),
           "segments_on_gpu": sum(bool(s.on_gpu) for s in index.segments)}
    tuned = tune(index, source, target_recall=0.95, k=k, n_queries=300)
    out.update(recall_at_10=tuned.get("recall_at_k"), target_met=tuned.get("target_met"),
               search_params=tuned.get("search_params"), latency_ms=tuned.get("latency_ms"))
    gone = ids[:1000]
    index.remove(gone)
    _, I = index.search(x[:1000], k)
    out["removed_ids_returned"] = int(np.isin(I, gone).sum())
    with tempfile.TemporaryDirectory() as tmp:
        index.save(tmp, "e")
        q = x[1000:1500]
        D0, I0 = index.search(q, k)
        # sync=False: the source still holds the removed ids, which a sync would add back as new items
        loaded = load_index(tmp, "e", source=source, use_gpu=False, sync=False)
        D1, I1 = loaded.search(q, k)
        out["saved_from_gpu_loaded_on_cpu_same_ids"] = round(float((I0 == I1).mean()), 4)
        out["loaded_removed_ids_returned"] = int(np.isin(loaded.search(x[:1000], k)[1], gone).sum())
    return out


def ingest_check(folder: str, encoders: str = "cnn,gist,tiny", devices=("cuda", "cpu")) -> dict:
    """``nearsight index`` over ``folder`` on each device (CUDA, then the CPU as the baseline): images/s, and how
    the two collections' embeddings agree."""
    import subprocess

    from nearsight.retrieval.collection import Collection

    out = {"folder": folder, "encoders": encoders}
    with tempfile.TemporaryDirectory() as tmp:
        for device in devices:
            coll = os.path.join(tmp, device)
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "nearsight.server.cli", "index", folder, "-c", coll, "--encoders",
                            encoders, "--device", device, "--no-index", "--quiet"], check=True,
                           cwd=os.path.join(os.path.dirname(__file__), ".."))
            seconds = time.perf_counter() - start
            c = Collection.open(coll)
            out[device] = {"items": c.count, "seconds": round(seconds, 1), "images_per_s": round(c.count / seconds, 1)}
            c.close()
            print(f"  ingest on {device}: {out[device]['items']} items in {seconds:.1f} s "
                  f"({out[device]['images_per_s']} images/s)", flush=True)
        first, second = devices
        out[f"{first}_over_{second}"] = round(out[first]["images_per_s"] / out[second]["images_per_s"], 2)
        a, b = Collection.open(os.path.join(tmp, first)), Collection.open(os.path.join(tmp, second))
        try:
            for name in encoders.split(","):
                ma, mb = a.embedding_matrix(name), b.embedding_matrix(name)
                # ids follow completion order, which differs between runs: match items by their source path
                pa = {a.item(int(i)).path: r for r, i in enumerate(ma.ids)}
                pairs = [(pa[b.item(int(i)).path], r) for r, i in enumerate(mb.ids) if b.item(int(i)).path in pa]
                x = np.asarray(ma.vectors, np.float32)[[p for p, _ in pairs]]
                y = np.asarray(mb.vectors, np.float32)[[q for _, q in pairs]]
                cos = (x * y).sum(1) / np.maximum(np.linalg.norm(x, axis=1) * np.linalg.norm(y, axis=1), 1e-12)
                rel = np.linalg.norm(x - y, axis=1) / np.maximum(np.linalg.norm(y, axis=1), 1e-12)
                out[f"{name}_agreement"] = {"items": len(pairs), "min_cosine": round(float(cos.min()), 5),
                                            "max_relative_error": round(float(rel.max()), 5)}
                print(f"  {name}: {first} vs {second} embeddings over {len(pairs)} items: min cosine {cos.min():.5f}, "
                      f"max relative error {rel.max():.5f}", flush=True)
        finally:
            a.close()
            b.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors for the faiss checks")
    ap.add_argument("--dim", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--images", type=int, default=2048, help="images per encoder timing")
    ap.add_argument("--encoders", default=",".join(ENCODERS))
    ap.add_argument("--skip-faiss", action="store_true")
    ap.add_argument("--ingest", metavar="FOLDER", help="also index FOLDER on CUDA and on the CPU (ingest check)")
    ap.add_argument("--cpu-dry-run", action="store_true",
                    help="run the encoder and index-layer code on the CPU at small sizes (checks the script itself)")
    args = ap.parse_args()

    import torch

    if args.cpu_dry_run:
        images = photos(8)
        rows = [encoder_speed(e, images, 1, 16, device="cpu") for e in args.encoders.split(",")]
        print(json.dumps({"bench": "gpu_check_cpu_dry_run", "encoders": rows,
                          "index_layer": index_layer_checks(n=20_000, require_gpu=False)}))
        return
    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device on this machine (torch.cuda.is_available() is False); nothing to measure")
        return
    name = torch.cuda.get_device_name(0)
    print(f"gpu_check on {name}, torch {torch.__version__}, CUDA {torch.version.cuda}")
    result = {"bench": "gpu_check", "device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
              "encoders": [], "errors": {}}
    images = photos(64)
    for enc in [e.strip() for e in args.encoders.split(",") if e.strip()]:
        try:
            row = encoder_speed(enc, images, args.repeat, args.images)
        except Exception as exc:   # noqa: BLE001 - one broken encoder must not hide the others' figures
            result["errors"][enc] = f"{type(exc).__name__}: {exc}"
            print(f"  {enc:10s} FAILED: {exc}")
            continue
        result["encoders"].append(row)
        extra = f" (target {GIST_TARGET}: {'met' if row['target_met'] else 'NOT met'})" if enc == "gist" else ""
        print(f"  {enc:10s} {row['images_per_s']:10.1f} images/s on CUDA, batch {row['batch']}{extra}")

    if args.ingest:
        try:
            result["ingest"] = ingest_check(args.ingest)
        except Exception as exc:   # noqa: BLE001
            result["errors"]["ingest"] = f"{type(exc).__name__}: {exc}"
            print(f"  ingest FAILED: {exc}")

    import faiss

    result["faiss"] = faiss.__version__
    result["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    if args.skip_faiss:
        pass
    elif not hasattr(faiss, "StandardGpuResources"):
        result["faiss_gpu"] = {"skipped": "faiss-cpu is installed: pip install -e '.[gpu]' for faiss-gpu"}
        print("  faiss: no GPU support in this faiss build (install the gpu extra); faiss checks skipped")
    else:
        for key, fn in (("faiss_gpu", lambda: faiss_checks(args.n, args.dim)), ("index_layer_gpu", index_layer_checks)):
            try:
                result[key] = fn()
            except Exception as exc:   # noqa: BLE001
                result["errors"][key] = f"{type(exc).__name__}: {exc}"
                print(f"  {key} FAILED: {exc}")
                continue
            print(f"  {key}: " + ", ".join(f"{k}={v}" for k, v in result[key].items()))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
