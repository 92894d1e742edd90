"""How well does the crop check (``compose.crops``) tell the query's crops from other photos?

Scene completion skips candidates that are crops of the query photo (or the photo it was cropped from):
they fit the hole's context exactly and would "restore" the original. This measures the check on the
sample photos (``data/samples/photos``):

- each photo is a query, reduced to 512 px on the long side, with a random hole (10-25%, as in
  ``bench_complete``), the hole's pixels zeroed;
- its crops: the photo cut to 60%, 75% and 90% of its side at a random place and aspect (3:4-4:3 of the
  photo's), straight and mirrored, with a colour jitter (gain 0.9-1.1, offset +-8 per channel), JPEG q85,
  stored as the collection stores thumbnails (256 px long side); and the reverse case, the query cut to
  75% of the side and the whole photo as the candidate;
- other photos: every other sample photo at 256 px; those of the same scene (``bench_complete.PARTNERS``:
  stereo pairs, video frames) are reported apart.

Prints the score per kind (min, quantiles, max): the smaller of the band-passed structure NCC and the
plain colour correlation at its placement (a copy needs both at or above the threshold); the share of each kind at or above the threshold
completion uses, the margin between the lowest crop and the highest other photo, and the seconds per
check (load average beside it); the last line is one JSON object.

    OMP_NUM_THREADS=1 nice python scripts/bench_crops.py
"""
from __future__ import annotations

import io
import json
import os
import sys
import time

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(__file__))

from bench_complete import PARTNERS, load_query, random_hole, sample_photos, same_scene  # noqa: E402


def thumbnail(rgb: np.ndarray, side: int = 256, quality: int = 85) -> np.ndarray:
    """As the collection stores it: reduced to ``side`` on the long side, JPEG-encoded, decoded."""
    from PIL import Image

    im = Image.fromarray(rgb)
    im.thumbnail((side, side), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def crop(rgb: np.ndarray, side: float, rng: np.random.Generator, mirrored: bool, jitter: bool = True) -> np.ndarray:
    h, w = rgb.shape[:2]
    aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
    ch, cw = min(h, round(h * side)), min(w, round(w * side * aspect))
    if cw == w and ch == h:  # keep it a crop: the aspect change may not take the whole frame
        ch = round(h * side)
    y0, x0 = int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1))
    out = rgb[y0:y0 + ch, x0:x0 + cw].astype(np.float32)
    if mirrored:
        out = out[:, ::-1]
    if jitter:
        out = out * rng.uniform(0.9, 1.1, 3) + rng.uniform(-8, 8, 3)
    return np.clip(out, 0, 255).astype(np.uint8)


def quantiles(values) -> dict:
    v = np.asarray(values, dtype=np.float64)
    q = np.quantile(v, [0.0, 0.05, 0.5, 0.95, 1.0])
    return {"n": int(v.size), "min": round(q[0], 3), "p05": round(q[1], 3), "median": round(q[2], 3),
            "p95": round(q[3], 3), "max": round(q[4], 3)}


def main():
    import argparse

    from nearsight.retrieval.compose.crops import DEFAULT_THRESHOLD, CropFinder

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--side", type=int, default=512, help="query long side (px)")
    parser.add_argument("--every", type=int, default=1, help="every k-th photo is a query (1: all)")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    photos = sample_photos()
    names = [os.path.splitext(os.path.basename(p))[0] for p in photos]
    full = [load_query(p, args.side) for p in photos]
    thumbs = [thumbnail(a) for a in full]
    queries = range(0, len(photos), max(1, args.every))
    scores = {"crop": [], "crop_mirrored": [], "query_is_crop": [], "partner": [], "other": []}
    worst = {}
    load = os.getloadavg()[0]
    checks, seconds = 0, 0.0
    for qi in queries:
        rng = np.random.default_rng(args.seed * 1000 + qi)
        query = full[qi].copy()
        hole = random_hole(query.shape[:2], rng)
        query[hole] = 0
        t = time.perf_counter()
        finder = CropFinder(query, ~hole)
        cases = []
        for side in (0.6, 0.75, 0.9):
            for mirrored in (False, True):
                cases.append(("crop_mirrored" if mirrored else "crop", f"{side}",
                              thumbnail(crop(full[qi], side, rng, mirrored))))
        scene = same_scene(photos, qi)
        for j in range(len(photos)):
            if j != qi:
                cases.append(("partner" if j in scene else "other", names[j], thumbs[j]))
        for kind, label, cand in cases:
            m = finder.match(cand)
            ncc = min(m.ncc, m.colour)  # a copy needs both at or above the threshold
            scores[kind].append(ncc)
            checks += 1
            if kind in ("partner", "other") and ncc > worst.get("other", (-1,))[0]:
                worst["other"] = (round(ncc, 3), names[qi], label)
            if kind.startswith("crop") and ncc < worst.get("crop", (2,))[0]:
                worst["crop"] = (round(ncc, 3), names[qi], label)
        # The reverse: the query is a 75% crop of the photo, and the whole photo is the candidate.
        small = crop(full[qi], 0.75, rng, False, jitter=False)
        small_hole = random_hole(small.shape[:2], rng)
        small[small_hole] = 0
        m = CropFinder(small, ~small_hole).match(thumbs[qi])
        ncc = min(m.ncc, m.colour)
        scores["query_is_crop"].append(ncc)
        checks += 1
        seconds += time.perf_counter() - t
        if ncc < worst.get("crop", (2,))[0]:
            worst["crop"] = (round(ncc, 3), names[qi], "query is a 75% crop")
        last = scores["crop"][-3:] + scores["crop_mirrored"][-3:]
        print(f"{names[qi]}: crops {', '.join(f'{v:.2f}' for v in last)}, "
              f"query inside {ncc:.2f}; ({checks} checks, {seconds:.0f}s)", file=sys.stderr, flush=True)
    crops = scores["crop"] + scores["crop_mirrored"] + scores["query_is_crop"]
    others = scores["other"] + scores["partner"]
    out = {"bench": "crops", "photos": len(photos), "queries": len(queries), "threshold": args.threshold,
           "ncc": {k: quantiles(v) for k, v in scores.items() if v},
           "at_or_above_threshold": {k: round(float(np.mean(np.asarray(v) >= args.threshold)), 4)
                                     for k, v in scores.items() if v},
           "margin": round(float(min(crops) - max(others)), 3),
           "lowest_crop": worst.get("crop"), "highest_other": worst.get("other"),
           "partners": [list(p) for p in PARTNERS],
           "s_per_check": round(seconds / max(checks, 1), 4), "load_avg": round(load, 2)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
