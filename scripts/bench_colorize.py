#!/usr/bin/env python
"""Colorization quality: held-out colour photos turned gray and coloured from a collection that lacks them.

For each held-out photo the gray copy is coloured by ``colorize`` (neighbours by gist-gray and/or tiny-gray,
alignment, alpha-expansion chroma choice, edge-aware smoothing) and by three baselines measured in the same run:

- zero chroma: the gray itself (a* = b* = 0);
- mean chroma: the collection's mean a*, b* on every pixel;
- Reinhard: statistics transfer of the gray toward the single best neighbour (what one retrieved photo gives).

``ours_lstar`` is colorize comparing L* to L* (``gray_model="lstar"``, what it did before the gray models):
side by side with ``ours`` (``gray_model="auto"``) in the same run.

``--copies N`` also colours Rec. 601 gray copies (PIL's "L", what most tools make) of N photos the collection
holds: the exact source is the nearest neighbour, so the colours should come back (``copies`` in the JSON).

Every method keeps the query's L*, so the error is about chroma only: mean Euclidean a*b* distance to the
truth per pixel (CIE units), and colourfulness (Hasler & Suesstrunk 2003) against the truth's. The held-out
set is one member of each near-duplicate pair in the sample set (stereo pairs, video frames: where a
collection really holds the scene) plus a seeded random draw of the rest; figures are given for both.

    python scripts/bench_colorize.py data/samples/photos [--side 256] [--random 8] [--neighbors 6]
        [--sheet out/colorize_sheet.png]

Prints one line per query, then one JSON line.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from nearsight.retrieval.colorize import GRAY_ENCODERS, ColorizeConfig, colorize, to_gray  # noqa: E402
from nearsight.retrieval.compose.lab import lab_to_rgb, rgb_to_lab, to_uint8  # noqa: E402
from nearsight.retrieval.compose.transfer import reinhard_transfer  # noqa: E402
from nearsight.retrieval.encoders import list_encoders  # noqa: E402

# Near-duplicate pairs in scripts/fetch_sample_photos.sh's set: the first of each is held out.
PAIRS = [("aloeL", "aloeR"), ("leuvenA", "leuvenB"), ("basketball1", "basketball2"), ("rubberwhale1", "rubberwhale2"),
         ("graf1", "graf3"), ("aero1", "aero3"), ("left", "right")]
METHODS = ("ours", "ours_lstar", "zero", "mean_chroma", "reinhard_best")


def colourfulness(rgb: np.ndarray) -> float:
    """Hasler & Suesstrunk 2003 colourfulness of an (H, W, 3) float RGB image in [0, 1] (0..255 scale)."""
    r, g, b = (rgb[..., i].astype(np.float64) * 255 for i in range(3))
    rg, yb = r - g, 0.5 * (r + g) - b
    return float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))


def ab_error(lab: np.ndarray, truth: np.ndarray) -> float:
    return float(np.hypot(lab[..., 1] - truth[..., 1], lab[..., 2] - truth[..., 2]).mean())


def with_lightness(rgb: np.ndarray, lightness: np.ndarray) -> np.ndarray:
    """Lab of ``rgb`` with L* replaced by ``lightness``: every method is judged on chroma alone."""
    lab = rgb_to_lab(rgb)
    lab[..., 0] = lightness
    return lab


def load_small(path: str, side: int) -> np.ndarray:
    with Image.open(path) as im:
        im = im.convert("RGB")
        im.thumbnail((side, side), Image.LANCZOS)
        return np.asarray(im)


def pick_held_out(names: list[str], n_random: int, seed: int) -> tuple[list[str], set[str]]:
    stems = {os.path.splitext(n)[0].split("__", 1)[-1]: n for n in names}
    paired = [stems[a] for a, b in PAIRS if a in stems and b in stems]
    rest = sorted(set(names) - set(paired) - {stems[b] for _, b in PAIRS if b in stems})
    rng = np.random.default_rng(seed)
    others = list(rng.choice(rest, size=min(n_random, len(rest)), replace=False)) if rest else []
    return paired + others, set(paired)


def tile(rgb: np.ndarray, height: int, caption: str) -> Image.Image:
    im = Image.fromarray(to_uint8(rgb))
    im = im.resize((max(1, round(im.width * height / im.height)), height), Image.BILINEAR)
    ImageDraw.Draw(im).text((4, 4), caption, fill=(255, 255, 0))
    return im


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("photos", help="folder of colour photos (e.g. data/samples/photos)")
    ap.add_argument("--side", type=int, default=256, help="photos are shrunk to this longer side first")
    ap.add_argument("--random", type=int, default=8, help="held-out photos drawn at random besides the pairs")
    ap.add_argument("--neighbors", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sheet", default="out/colorize_sheet.png", help="contact sheet PNG path")
    ap.add_argument("--sheet-rows", type=int, default=8)
    ap.add_argument("--copies", type=int, default=0, help="also colour Rec. 601 gray copies of N collection photos")
    args = ap.parse_args()

    from nearsight.indexer.ingest import IngestConfig, index_paths
    from nearsight.retrieval.collection import Collection

    names = sorted(n for n in os.listdir(args.photos) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    held_out, paired = pick_held_out(names, args.random, args.seed)
    encoders = tuple(e for e in GRAY_ENCODERS if e in list_encoders())
    config = ColorizeConfig()

    with tempfile.TemporaryDirectory(prefix="bench_colorize_") as tmp:
        folder = os.path.join(tmp, "photos")
        os.makedirs(folder)
        images = {}
        for n in names:
            images[n] = load_small(os.path.join(args.photos, n), args.side)
            if n not in held_out:
                Image.fromarray(images[n]).save(os.path.join(folder, os.path.splitext(n)[0] + ".png"))
        start = time.perf_counter()
        index_paths(os.path.join(tmp, "coll"), [folder], IngestConfig(encoders=encoders, workers=1, progress=False,
                                                                     device="cpu"))
        index_seconds = time.perf_counter() - start
        coll = Collection.open(os.path.join(tmp, "coll"), device="cpu")
        # The collection's mean chroma, over every pixel of every photo it holds.
        ab_sum, n_px = np.zeros(2), 0
        for n in names:
            if n not in held_out:
                lab = rgb_to_lab(images[n])
                ab_sum += lab[..., 1:].reshape(-1, 2).sum(axis=0)
                n_px += lab.shape[0] * lab.shape[1]
        mean_ab = ab_sum / n_px

        rows, per_query, seconds = [], [], []
        for n in held_out:
            truth_rgb = images[n].astype(np.float32) / 255.0
            truth = rgb_to_lab(truth_rgb)
            gray, _ = to_gray(images[n])
            lightness = truth[..., 0]
            t0 = time.perf_counter()
            result = colorize(coll, Image.fromarray(to_uint8(np.repeat(gray[..., None], 3, axis=2))),
                              n_neighbors=args.neighbors, config=config)
            seconds.append(time.perf_counter() - t0)
            before = colorize(coll, Image.fromarray(to_uint8(np.repeat(gray[..., None], 3, axis=2))),
                              n_neighbors=args.neighbors, config=ColorizeConfig(gray_model="lstar"))
            zero = np.stack([lightness, np.zeros_like(lightness), np.zeros_like(lightness)], axis=-1)
            mean_c = zero.copy()
            mean_c[..., 1:] = mean_ab
            best = np.asarray(coll.load_image(result.neighbor_ids[0]).convert("RGB"))
            reinhard = with_lightness(reinhard_transfer(np.repeat(gray[..., None], 3, axis=2), best), lightness)
            labs = {"ours": result.lab, "ours_lstar": before.lab, "zero": zero, "mean_chroma": mean_c,
                    "reinhard_best": reinhard}
            rgbs = {m: (result.rgb if m == "ours" else lab_to_rgb(labs[m])) for m in METHODS}
            entry = {"photo": n, "paired": n in paired, "seconds": seconds[-1],
                     "neighbors": [os.path.basename(coll.item(i).path) for i in result.neighbor_ids[:3]],
                     "ab_error": {m: ab_error(labs[m], truth) for m in METHODS},
                     "colourfulness": {**{m: colourfulness(rgbs[m]) for m in METHODS},
                                       "truth": colourfulness(truth_rgb)}}
            per_query.append(entry)
            print(f"{n:60s} {seconds[-1]:5.2f}s  ab error " +
                  "  ".join(f"{m} {entry['ab_error'][m]:5.2f}" for m in METHODS) +
                  f"  first neighbour {entry['neighbors'][0]}", flush=True)
            if len(rows) < args.sheet_rows:
                h = 128
                row = [tile(np.repeat(gray[..., None], 3, axis=2), h, "gray query"), tile(rgbs["ours"], h, "colorize"),
                       tile(rgbs["reinhard_best"], h, "reinhard best"), tile(rgbs["mean_chroma"], h, "mean chroma"),
                       tile(truth_rgb, h, "truth"), tile(best.astype(np.float32) / 255, h, "neighbour 1")]
                rows.append(row)
        copies = []
        in_coll = [n for n in names if n not in held_out][:args.copies]
        for n in in_coll:
            truth = rgb_to_lab(images[n].astype(np.float32) / 255.0)
            gray601 = Image.fromarray(images[n]).convert("L")   # how most tools make a gray photo
            zero_err = float(np.hypot(truth[..., 1], truth[..., 2]).mean())
            errs = {}
            for label, cfg in (("ours", config), ("ours_lstar", ColorizeConfig(gray_model="lstar"))):
                out = colorize(coll, gray601, n_neighbors=args.neighbors, config=cfg)
                errs[label] = float(np.hypot(out.lab[..., 1] - truth[..., 1], out.lab[..., 2] - truth[..., 2]).mean())
            copies.append({"photo": n, "ab_error": {**errs, "zero": zero_err}})
            print(f"copy {n:55s} ab error ours {errs['ours']:5.2f}  ours_lstar {errs['ours_lstar']:5.2f}  "
                  f"zero {zero_err:5.2f}", flush=True)
        coll.close()

    width = max(sum(t.width for t in r) for r in rows)
    sheet = Image.new("RGB", (width, sum(r[0].height for r in rows)), (0, 0, 0))
    y = 0
    for r in rows:
        x = 0
        for t in r:
            sheet.paste(t, (x, y))
            x += t.width
        y += r[0].height
    os.makedirs(os.path.dirname(os.path.abspath(args.sheet)), exist_ok=True)
    sheet.save(args.sheet)

    def summary(entries):
        if not entries:
            return None
        out = {"n": len(entries)}
        out["ab_error"] = {m: float(np.mean([e["ab_error"][m] for e in entries])) for m in METHODS}
        out["colourfulness"] = {m: float(np.mean([e["colourfulness"][m] for e in entries]))
                                for m in (*METHODS, "truth")}
        ab = out["ab_error"]
        out["ab_error_ratio"] = {m: ab["ours"] / ab[m] for m in METHODS if m != "ours" and ab[m] > 0}
        return out

    report = {"bench": "colorize", "collection_items": len(names) - len(held_out), "encoders": list(encoders),
              "side": args.side, "neighbors": args.neighbors, "index_seconds": round(index_seconds, 2),
              "seconds_per_query": float(np.mean(seconds)), "all": summary(per_query),
              "near_duplicate_pairs": summary([e for e in per_query if e["paired"]]),
              "random": summary([e for e in per_query if not e["paired"]]), "sheet": os.path.abspath(args.sheet)}
    if copies:
        mean = {m: float(np.mean([c["ab_error"][m] for c in copies])) for m in ("ours", "ours_lstar", "zero")}
        report["copies"] = {"n": len(copies), "ab_error": mean,
                            "ab_error_ratio_to_zero": {m: mean[m] / mean["zero"] for m in ("ours", "ours_lstar")}}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
