#!/usr/bin/env python
"""Colorization quality: gray photos coloured from a collection, against baselines measured in the same run.

Three groups of queries, always reported apart (never averaged together: they ask different things):

- ``held_out``: photos the collection lacks, whose scene it does not hold (a seeded random draw): what
  colorization from neighbours can do for a new photo;
- ``held_out_pairs``: one member of each near-duplicate pair in the sample set (stereo pairs, video frames,
  other views) held out while its partner stays in: the collection holds the scene, not the photo;
- ``copies``: Rec. 601 gray copies (PIL's "L", what most tools make) of photos the collection holds: the
  exact source is there, so the colours should come back.

Each query is coloured by ``colorize`` (neighbours by gist-gray and/or tiny-gray, alignment, alpha-expansion
chroma choice, local shifts, confidence, edge-aware smoothing; ``ours``), by the same with L* to L* comparison
(``gray_model="lstar"``; ``ours_lstar``), and by four baselines:

- ``zero``: the gray itself (a* = b* = 0);
- ``mean_chroma``: the collection's mean a*, b* on every pixel;
- ``reinhard_best``: statistics transfer of the gray toward the single best neighbour; on a gray source
  this is only a constant shift of a*b* (the gray has no chroma spread to rescale): a weak baseline;
- ``aligned_best``: the best neighbour's chroma transferred pixel for pixel after the same global alignment
  (gray model, lightness remap, translation-and-scale placement), with none of the rest: one neighbour, so
  no graph cut, no local shifts, no confidence shrink, no smoothing (``colorize_arrays`` with
  ``local_radius=0, confidence=0, smooth_radius=0``; only the sRGB gamut fit that every output needs).
  The strong baseline: what the pipeline adds over "copy the best match's colours".

Every method keeps the query's L*, so the error is about chroma only: mean Euclidean a*b* distance to the
truth per pixel (CIE units), and colourfulness (Hasler & Suesstrunk 2003) against the truth's. Per group:
mean of each, ours / each baseline, and on how many queries ours beats ``aligned_best``.

    python scripts/bench_colorize.py data/samples/photos [--side 256] [--random 8] [--copies 6] [--neighbors 6]
        [--sheet out/colorize_sheet.png]

Prints one line per query, then one JSON line. The contact sheet has ``--sheet-rows`` rows per group:
gray query, ours, aligned best, Reinhard best, truth, neighbour 1.
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
from nearsight.retrieval.colorize import (GRAY_ENCODERS, ColorizeConfig, colorize, colorize_arrays,  # noqa: E402
                                          to_gray)
from nearsight.retrieval.compose.lab import lab_to_rgb, rgb_to_lab, to_uint8  # noqa: E402
from nearsight.retrieval.compose.transfer import reinhard_transfer  # noqa: E402
from nearsight.retrieval.encoders import list_encoders  # noqa: E402

# Near-duplicate pairs in scripts/fetch_sample_photos.sh's set: the first of each is held out.
PAIRS = [("aloeL", "aloeR"), ("leuvenA", "leuvenB"), ("basketball1", "basketball2"), ("rubberwhale1", "rubberwhale2"),
         ("graf1", "graf3"), ("aero1", "aero3"), ("left", "right")]
METHODS = ("ours", "ours_lstar", "zero", "mean_chroma", "reinhard_best", "aligned_best")
GROUPS = ("held_out", "held_out_pairs", "copies")
# The baseline: the pipeline with one neighbour and every refinement off (see the module docstring).
ALIGNED_ONLY = ColorizeConfig(local_radius=0, confidence=0.0, smooth_radius=0)


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


def colour_query(coll, query, truth_rgb: np.ndarray, mean_ab: np.ndarray, neighbors: int) -> tuple[dict, dict]:
    """Every method on one gray ``query`` (PIL) whose colour original is ``truth_rgb`` (H, W, 3) float in [0, 1].

    Returns (entry for the JSON, {method: (H, W, 3) float RGB} for the sheet, plus "gray" and "neighbour").
    """
    truth = rgb_to_lab(truth_rgb)
    t0 = time.perf_counter()
    result = colorize(coll, query, n_neighbors=neighbors)
    seconds = time.perf_counter() - t0
    lstar = colorize(coll, query, n_neighbors=neighbors, config=ColorizeConfig(gray_model="lstar"))
    lightness = result.lab[..., 0]  # the query's own L*, which every method keeps
    gray, _ = to_gray(query)
    gray3 = np.repeat(gray[..., None], 3, axis=2)
    zero = np.stack([lightness, np.zeros_like(lightness), np.zeros_like(lightness)], axis=-1)
    mean_c = zero.copy()
    mean_c[..., 1:] = mean_ab
    best_id = result.neighbor_ids[0]
    best = np.asarray(coll.load_image(best_id).convert("RGB"))
    reinhard = with_lightness(reinhard_transfer(gray3, best), lightness)
    # The neighbour as colorize itself loads it (reduced to the working side), so only the method differs.
    best_work = np.asarray(coll.load_image(best_id, min_side=ALIGNED_ONLY.work_side).convert("RGB"))
    aligned = colorize_arrays(gray, [best_work], ALIGNED_ONLY).lab
    labs = {"ours": result.lab, "ours_lstar": lstar.lab, "zero": zero, "mean_chroma": mean_c,
            "reinhard_best": reinhard, "aligned_best": aligned}
    rgbs = {m: (result.rgb if m == "ours" else lab_to_rgb(labs[m])) for m in METHODS}
    entry = {"seconds": seconds, "neighbors": [os.path.basename(coll.item(i).path) for i in result.neighbor_ids[:3]],
             "ab_error": {m: ab_error(labs[m], truth) for m in METHODS},
             "colourfulness": {**{m: colourfulness(rgbs[m]) for m in METHODS}, "truth": colourfulness(truth_rgb)}}
    return entry, {**rgbs, "gray": gray3, "truth": truth_rgb, "neighbour": best.astype(np.float32) / 255}


def summary(entries: list[dict]) -> dict | None:
    if not entries:
        return None
    out = {"n": len(entries)}
    out["ab_error"] = {m: float(np.mean([e["ab_error"][m] for e in entries])) for m in METHODS}
    out["colourfulness"] = {m: float(np.mean([e["colourfulness"][m] for e in entries])) for m in (*METHODS, "truth")}
    ab = out["ab_error"]
    out["ab_error_ratio"] = {m: ab["ours"] / ab[m] for m in METHODS if m != "ours" and ab[m] > 0}
    out["ours_beats_aligned_best"] = sum(e["ab_error"]["ours"] < e["ab_error"]["aligned_best"] for e in entries)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("photos", help="folder of colour photos (e.g. data/samples/photos)")
    ap.add_argument("--side", type=int, default=256, help="photos are shrunk to this longer side first")
    ap.add_argument("--random", type=int, default=8, help="held-out photos drawn at random besides the pairs")
    ap.add_argument("--copies", type=int, default=6, help="gray copies of N collection photos (0: none)")
    ap.add_argument("--neighbors", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--sheet", default="out/colorize_sheet.png", help="contact sheet PNG path")
    ap.add_argument("--sheet-rows", type=int, default=3, help="rows of the contact sheet per group")
    args = ap.parse_args()

    from nearsight.indexer.ingest import IngestConfig, index_paths
    from nearsight.retrieval.collection import Collection

    names = sorted(n for n in os.listdir(args.photos) if n.lower().endswith((".jpg", ".jpeg", ".png")))
    held_out, paired = pick_held_out(names, args.random, args.seed)
    encoders = tuple(e for e in GRAY_ENCODERS if e in list_encoders())

    per_group: dict[str, list[dict]] = {g: [] for g in GROUPS}
    sheet_rows: dict[str, list] = {g: [] for g in GROUPS}
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

        queries = [("held_out_pairs" if n in paired else "held_out", n) for n in held_out]
        in_collection = [n for n in names if n not in held_out]
        copies = np.random.default_rng(args.seed + 1).choice(in_collection, size=min(args.copies, len(in_collection)),
                                                             replace=False) if args.copies else []
        queries += [("copies", str(n)) for n in copies]
        for group, n in queries:
            truth_rgb = images[n].astype(np.float32) / 255.0
            if group == "copies":
                query = Image.fromarray(images[n]).convert("L")  # how most tools make a gray photo
            else:  # the neutral gray with the photo's own L*: the truth's lightness exactly
                gray, _ = to_gray(images[n])
                query = Image.fromarray(to_uint8(np.repeat(gray[..., None], 3, axis=2)))
            entry, rgbs = colour_query(coll, query, truth_rgb, mean_ab, args.neighbors)
            entry = {"photo": n, "group": group, **entry}
            per_group[group].append(entry)
            print(f"{group:14s} {n[:56]:56s} {entry['seconds']:5.2f}s  ab error " +
                  "  ".join(f"{m} {entry['ab_error'][m]:5.2f}" for m in METHODS) +
                  f"  first neighbour {entry['neighbors'][0]}", flush=True)
            if len(sheet_rows[group]) < args.sheet_rows:
                h = 128
                sheet_rows[group].append([
                    tile(rgbs["gray"], h, f"{group}: gray query"), tile(rgbs["ours"], h, "colorize"),
                    tile(rgbs["aligned_best"], h, "aligned best"), tile(rgbs["reinhard_best"], h, "reinhard best"),
                    tile(rgbs["truth"], h, "truth"), tile(rgbs["neighbour"], h, "neighbour 1")])
        coll.close()

    rows = [r for g in GROUPS for r in sheet_rows[g]]
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

    report = {"bench": "colorize", "collection_items": len(names) - len(held_out), "encoders": list(encoders),
              "side": args.side, "neighbors": args.neighbors, "index_seconds": round(index_seconds, 2),
              "seconds_per_query": float(np.mean([e["seconds"] for g in GROUPS for e in per_group[g]])),
              **{g: summary(per_group[g]) for g in GROUPS}, "loadavg": round(os.getloadavg()[0], 2),
              "sheet": os.path.abspath(args.sheet)}
    for g in GROUPS:
        s = report[g]
        if s:
            print(f"{g}: n={s['n']}  mean ab error " + "  ".join(f"{m} {s['ab_error'][m]:.2f}" for m in METHODS)
                  + f"; ours beats aligned_best on {s['ours_beats_aligned_best']}/{s['n']}", flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
