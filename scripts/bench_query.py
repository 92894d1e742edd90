#!/usr/bin/env python
"""Query embedding latency: one image through an encoder at the per-call thread count queries use (one thread,
``nearsight.retrieval.encoders.threads``) against torch's default thread count, measured in the same run.

On an idle machine the default may be a little faster for one image; on a busy one its per-layer barriers
wait for whichever thread the scheduler has parked, and the tail grows by an order of magnitude.

    python scripts/bench_query.py data/samples/photos/SOME.jpg [--encoder cnn] [--n 30]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from nearsight.retrieval.encoders import create_encoder  # noqa: E402
from nearsight.retrieval.encoders.threads import QUERY_THREADS, intra_op_threads  # noqa: E402
from nearsight.retrieval.images import load_image  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("image")
    ap.add_argument("--encoder", default="cnn")
    ap.add_argument("--n", type=int, default=30, help="embeds per setting, interleaved in rounds of 5")
    args = ap.parse_args()

    import torch

    default = torch.get_num_threads()
    enc = create_encoder(args.encoder, device="cpu")
    image = load_image(args.image, min_side=enc.draft_size)
    enc.embed_images([image])  # load and warm up
    times = {QUERY_THREADS: [], default: []}
    for _ in range(max(1, args.n // 5)):  # interleaved, so both settings see the same machine load
        for threads in times:
            with intra_op_threads(threads):
                for _ in range(5):
                    start = time.perf_counter()
                    enc.embed_images([image])
                    times[threads].append(time.perf_counter() - start)
    stats = {t: {"p50_ms": round(1000 * float(np.median(v)), 1), "p90_ms": round(1000 * float(np.percentile(v, 90)), 1)}
             for t, v in times.items()}
    ratio = stats[default]["p50_ms"] / stats[QUERY_THREADS]["p50_ms"]
    for t, s in stats.items():
        print(f"{args.encoder} embed of one image, {t} thread(s): p50 {s['p50_ms']} ms, p90 {s['p90_ms']} ms")
    print(f"default ({default} threads) p50 / query policy ({QUERY_THREADS}) p50 = {ratio:.2f}")
    print(json.dumps({"bench": "query", "encoder": args.encoder, "query_threads": QUERY_THREADS,
                      "default_threads": default, "query_policy": stats[QUERY_THREADS], "default": stats[default],
                      "default_to_policy_p50": round(ratio, 2), "load_average_1m": round(os.getloadavg()[0], 2)}))


if __name__ == "__main__":
    main()
