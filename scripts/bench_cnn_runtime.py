#!/usr/bin/env python
"""cnn on the CPU, torch vs ONNX Runtime: CPU milliseconds per image on one thread, the same photos, the same run.

On a shared machine wall-clock images/s say more about the other jobs than about the encoder; the CPU time a
single-threaded forward pass takes per image barely depends on them, so ``cores * 1000 / cpu_ms`` estimates
what idle cores would do (an upper bound: it assumes no memory-bandwidth or cache contention between cores).
Each runtime is timed twice, interleaved; the better run counts.

    python scripts/bench_cnn_runtime.py [FOLDER]     (default data/samples/photos, its first 64 JPEGs)
"""
import glob
import json
import os
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)


def main() -> None:
    from nearsight.retrieval.heap import keep_freed_memory

    keep_freed_memory()          # as ingest runs
    import torch

    torch.set_num_threads(1)     # one thread: CPU time per image without any parallel overhead
    from nearsight.retrieval.encoders import create_encoder
    from nearsight.retrieval.images import decode_image

    encoders = {"torch": create_encoder("cnn", device="cpu", runtime="torch"),
                "onnx": create_encoder("cnn", device="cpu", runtime="onnx")}
    folder = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "data", "samples", "photos")
    paths = sorted(glob.glob(os.path.join(folder, "*.jpg")))[:64]
    if not paths:
        raise SystemExit(f"no .jpg files in {folder}")
    torch_enc = encoders["torch"]
    arr = np.stack([torch_enc.preprocess(decode_image(open(p, "rb").read(), min_side=torch_enc.draft_size).image)
                    for p in paths])
    for enc in encoders.values():
        enc.encode_images(arr[:8])      # load (ONNX export on first use), warm up
    best = {name: float("inf") for name in encoders}
    for _ in range(2):
        for name, enc in encoders.items():
            start = time.process_time()
            enc.encode_images(arr)
            best[name] = min(best[name], round(1000 * (time.process_time() - start) / len(arr), 1))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"cnn CPU ms per image (1 thread): torch {best['torch']}, onnx {best['onnx']} -> onnx is "
          f"{best['torch'] / best['onnx']:.2f}x; on {cores} idle cores that would be at most "
          f"{cores * 1000 / best['torch']:.1f} (torch) / {cores * 1000 / best['onnx']:.1f} (onnx) images/s")
    print(json.dumps({"bench": "cnn_runtime", "images": len(arr), "cpu_ms_per_image": best,
                      "idle_cores_images_per_s_upper_bound": {k: round(cores * 1000 / v, 1) for k, v in best.items()},
                      "cores": cores, "onnx_to_torch_cpu": round(best["torch"] / best["onnx"], 2),
                      "load_average_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
