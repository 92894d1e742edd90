"""The figures behind ``collapse.COPY_THRESHOLDS``: per encoder of a collection, how similar a photo's copies
are to it, and how similar its nearest other item is.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/calibrate_collapse.py demo/collection \
        --path-prefix data/samples/photos --same-shot opencv-doc__rubberwhale1.png,opencv-doc__rubberwhale2.png \
        --same-shot opencv-doc__basketball1.png,opencv-doc__basketball2.png \
        --same-shot opencv-doc__aero1.jpg,opencv-doc__aero3.jpg --same-shot opencv-doc__aloeL.jpg,opencv-doc__aloeR.jpg

For each item under the prefix, copies are made in memory as files (JPEG quality 60 at half size; a 5% crop
of every side at quality 85; mirrored at quality 90) and searched for exactly as an uploaded file is
(``Collection.query_vector``), then compared with the item's stored vector in the API's similarity units
(``collapse.pair_similarity``: the cosine, or exp(-squared L2 / mean random-pair distance)). The nearest other
item is the most similar item of the whole collection that is not the item itself (photos and cut-outs).

``--same-shot A,B`` names two items that are one moment (video frames, a stereo pair): folding them is no
error. Every other item is a different picture, and the suggested threshold keeps all of those apart: midway
between the most similar different picture and the weakest JPEG copy when the copies are above it, else one
step (0.01) above that different picture (some copies then stay apart: the encoder cannot tell them). Prints
per encoder the quantiles, a sweep of thresholds, the closest pairs and the suggestion, then one JSON line.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys

import numpy as np
from PIL import Image, ImageOps

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from nearsight.retrieval.collapse import copy_threshold, pair_similarity  # noqa: E402
from nearsight.retrieval.collection import Collection  # noqa: E402
from nearsight.retrieval.images import load_image  # noqa: E402


SWEEP = (0.85, 0.9, 0.92, 0.94, 0.95, 0.96, 0.97, 0.98, 0.99, 0.995)


def _jpeg(image: Image.Image, quality: int) -> bytes:
    out = io.BytesIO()
    image.convert("RGB").save(out, format="JPEG", quality=quality)
    return out.getvalue()


def copies(image: Image.Image) -> dict[str, bytes]:
    """The near-copies a collection meets: recompressed and shrunk, lightly cropped, mirrored."""
    w, h = image.size
    dx, dy = max(1, w // 20), max(1, h // 20)
    return {
        "jpeg60_half": _jpeg(image.resize((max(1, w // 2), max(1, h // 2)), Image.BILINEAR), 60),
        "crop5": _jpeg(image.crop((dx, dy, w - dx, h - dy)), 85),
        "mirror": _jpeg(ImageOps.mirror(image), 90),
    }


def quantiles(x) -> dict:
    x = np.asarray(x, np.float64)
    return {"min": round(float(x.min()), 4), "p5": round(float(np.percentile(x, 5)), 4),
            "median": round(float(np.median(x)), 4), "p95": round(float(np.percentile(x, 95)), 4),
            "max": round(float(x.max()), 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("collection")
    ap.add_argument("--path-prefix", required=True, help="the items whose copies are made (a folder of photos)")
    ap.add_argument("--encoders", help="comma-separated (default: every image encoder of the collection)")
    ap.add_argument("--top", type=int, default=6, help="distinct pairs to list per encoder")
    ap.add_argument("--same-shot", action="append", default=[], metavar="A,B",
                    help="two file names (basenames) that are one moment: frames of a video, a stereo pair")
    args = ap.parse_args()

    coll = Collection.open(args.collection)
    prefix = os.path.abspath(args.path_prefix)
    table = coll.item_table()
    items = [(int(i), p) for i, p in zip(table.ids, table.paths) if p.startswith(prefix)]
    if not items:
        sys.exit(f"no items under {prefix}")
    names = args.encoders.split(",") if args.encoders else [
        n for n in coll.encoder_names if "image" in coll.encoder_spec(n)["modalities"]]
    partners: dict[str, set[str]] = {}
    for pair in args.same_shot:
        a, _, b = pair.partition(",")
        partners.setdefault(a, set()).add(b)
        partners.setdefault(b, set()).add(a)
    base = {int(i): os.path.basename(p) for i, p in zip(table.ids, table.paths)}
    made = {}
    for item_id, path in items:
        made[item_id] = copies(load_image(path))

    report = {}
    for name in names:
        metric = coll.encoder_spec(name)["metric"]
        scale = coll.similarity_scale(name) if metric == "l2" else 1.0
        matrix = coll.embedding_matrix(name)
        all_ids = matrix.ids
        all_vectors = np.asarray(matrix.vectors, np.float32)
        by_copy: dict[str, list[float]] = {}
        weakest: dict[str, list[tuple[float, str]]] = {}
        nearest, pairs, different = [], [], []
        for item_id, path in items:
            stored = matrix.reconstruct([item_id])[0]
            for kind, data in made[item_id].items():
                v = coll.query_vector(name, image=data)
                by_copy.setdefault(kind, []).append(float(pair_similarity(v[None], stored, metric, scale)[0]))
                weakest.setdefault(kind, []).append((by_copy[kind][-1], os.path.basename(path)))
            sims = pair_similarity(all_vectors, stored, metric, scale)
            sims[all_ids == item_id] = -np.inf
            j = int(np.argmax(sims))
            nearest.append(float(sims[j]))
            pairs.append((float(sims[j]), os.path.basename(path), base[int(all_ids[j])]))
            mine = partners.get(os.path.basename(path), set())
            if mine:
                sims[np.isin(all_ids, [i for i, n in base.items() if n in mine])] = -np.inf
            k = int(np.argmax(sims))
            different.append((float(sims[k]), os.path.basename(path), base[int(all_ids[k])]))
        pairs.sort(reverse=True)
        top_different = max(different)
        weakest_jpeg = min(by_copy["jpeg60_half"])
        if weakest_jpeg > top_different[0]:
            suggested = round((weakest_jpeg + top_different[0]) / 2, 2)
        else:
            suggested = float(np.ceil(top_different[0] * 100) / 100 + 0.01)
        entry = {"metric": metric, "threshold": copy_threshold(coll.encoder_kind(name)),
                 **{f"copy_{k}": quantiles(v) for k, v in by_copy.items()}, "nearest_other": quantiles(nearest),
                 "closest_pairs": [[round(s, 4), a, b] for s, a, b in pairs[:args.top]],
                 "nearest_different": quantiles([x for x, _, _ in different]),
                 "most_similar_different": [round(top_different[0], 4), *top_different[1:]],
                 "suggested": round(suggested, 2),
                 "weakest_copies": {k: [[round(s, 4), a] for s, a in sorted(v)[:3]] for k, v in weakest.items()}}
        t = entry["threshold"]
        entry["collapsed"] = {**{k: f"{sum(x >= t for x in v)}/{len(v)}" for k, v in by_copy.items()},
                              "nearest_other": f"{sum(x >= t for x in nearest)}/{len(nearest)}",
                              "different": f"{sum(x >= t for x, _, _ in different)}/{len(different)}"}
        report[name] = entry
        print(f"\n== {name} ({metric}{f', scale {scale:.4g}' if metric == 'l2' else ''}), threshold {t}")
        for k, v in by_copy.items():
            q = entry[f"copy_{k}"]
            print(f"  copy {k:12s} min {q['min']:.4f}  p5 {q['p5']:.4f}  median {q['median']:.4f}   "
                  f"collapsed {entry['collapsed'][k]}   weakest: "
                  + ", ".join(f"{s:.3f} {a}" for s, a in entry["weakest_copies"][k]))
        q = entry["nearest_other"]
        print(f"  nearest other     median {q['median']:.4f}  p95 {q['p95']:.4f}  max {q['max']:.4f}   "
              f"collapsed {entry['collapsed']['nearest_other']}")
        q = entry["nearest_different"]
        print(f"  nearest different median {q['median']:.4f}  p95 {q['p95']:.4f}  max {q['max']:.4f}   "
              f"collapsed {entry['collapsed']['different']}")
        sweep = {}
        for t in SWEEP:  # how many copies and nearest others each candidate threshold would fold
            sweep[t] = {**{k: int(sum(x >= t for x in v)) for k, v in by_copy.items()},
                        "nearest_other": int(sum(x >= t for x in nearest)),
                        "different": int(sum(x >= t for x, _, _ in different))}
            print(f"  at {t:.3f}: " + "  ".join(f"{k} {n}/{len(items)}" for k, n in sweep[t].items()))
        entry["sweep"] = sweep
        print(f"  most similar different pictures {top_different[0]:.4f} ({top_different[1]} ~ {top_different[2]}),"
              f" weakest JPEG copy {weakest_jpeg:.4f}: suggested {suggested:.2f}")
        for s, a, b in pairs[:args.top:2]:  # each pair is listed from both ends: once
            print(f"    {s:.4f}  {a}  ~  {b}")
    print(json.dumps({"collection": args.collection, "items": len(items), "encoders": report}))


if __name__ == "__main__":
    main()
