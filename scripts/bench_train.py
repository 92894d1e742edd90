#!/usr/bin/env python
"""Text -> image retrieval of `nearsight train`, by kind of negatives, against a zero-shot bridge; training
time and text-query latency. One run, every row on the same folds of the same collection.

Data (scripts/fetch_sample_photos.sh): Tux Paint stamps with their captions and Fashion-MNIST images with
their class labels, indexed with the `cnn` encoder (built here if missing). K-fold cross-validation (5 folds):
each fold holds out from training

- stamps: a fifth of the distinct captions with all their stamps (split by stamp, so the held-out captions are
  texts the model never saw); each held-out caption ranks its fold's held-out stamps: recall@1/5/10, pooled
  over the folds, so that every caption is a query once (a single 20% split gave 134 queries, where one query
  is 0.7% of R@1 and the rows' differences were within noise);
- Fashion-MNIST: a fifth of the images; each class name ("a photo of a sneaker") ranks the held-out images:
  mean average precision over the 10 classes, averaged over the folds.

Hard against random negatives is a paired comparison on the same queries, with a bootstrap interval.

A copy-detection row: `--pairs augment` on augmented copies (crop, mirror, colour, banner, JPEG) of a sample of
items; held-out items' copies must find their original among all items, trained head against the frozen cnn.

Rows: the trained heads with random, semi-hard and hardest (after a sum warm-up) negatives, each with
collection-wide mining, and a zero-shot bridge with no training at all: a query's sentence similarity to
"a photo of a <class>" for the 1000 ImageNet classes, times the `cnn` classifier's probabilities of each
image (score = sum_c cos(q, class_c) * p(c | image)).

    .venv/bin/python scripts/bench_train.py [--collection data/bench_train.ns] [--epochs 30]
        [--timing-collection data/bench_train10k.ns] [--folds 5] [--copy-items 300]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from nearsight.indexer.pairs import collect_pairs, softmax  # noqa: E402
from nearsight.indexer.train import NEGATIVES, TrainConfig, recall_at, train_heads  # noqa: E402
from nearsight.retrieval.collection import Collection  # noqa: E402

SAMPLES = os.path.join(ROOT, "data", "samples")
FASHION_LABELS = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot")


def build(collection: str) -> None:
    from nearsight.indexer.ingest import IngestConfig, index_paths

    lists = [os.path.join(SAMPLES, "captioned.tsv"), os.path.join(SAMPLES, "fashion-mnist", "labels.tsv")]
    missing = [p for p in lists if not os.path.exists(p)]
    if missing:
        sys.exit(f"missing {missing}: run scripts/fetch_sample_photos.sh data/samples first")
    print(f"building {collection} from the stamps and Fashion-MNIST with cnn ...", flush=True)
    summary = index_paths(collection, lists, IngestConfig(encoders=("cnn",), progress=False))
    print(" ", summary.line(), flush=True)


def build_timing(collection: str, extra: int = 8000) -> None:
    """The timing collection: the bench collection's stamps and Fashion-MNIST test images plus ``extra``
    Fashion-MNIST training images with their labels (from the Debian package, as bench_index fetches it), so
    that training sees more than 10k (text, image) pairs."""
    import gzip

    from PIL import Image

    from bench_index import fashion_mnist
    from nearsight.indexer.ingest import IngestConfig, index_paths

    data_dir = os.path.join(ROOT, "data", "fashion-mnist")
    out = os.path.join(ROOT, "data", "fmnist_extra")
    if not os.path.exists(os.path.join(out, "labels.tsv")):
        train, _ = fashion_mnist(data_dir)
        with gzip.open(os.path.join(data_dir, "root", "usr", "share", "datasets", "fashion-mnist",
                                    "train-labels-idx1-ubyte.gz")) as f:
            labels = np.frombuffer(f.read(), np.uint8, offset=8)
        rows = []
        for i in range(extra):
            name = FASHION_LABELS[labels[i]]
            path = f"{name.lower().replace('/', '-').replace(' ', '-')}/train_{i:05d}.png"
            os.makedirs(os.path.dirname(os.path.join(out, path)), exist_ok=True)
            Image.fromarray(train[i].reshape(28, 28).astype(np.uint8)).save(os.path.join(out, path))
            rows.append(f"{path}\t{name}")
        with open(os.path.join(out, "labels.tsv"), "w") as f:
            f.write("\n".join(rows) + "\n")
    lists = [os.path.join(SAMPLES, "captioned.tsv"), os.path.join(SAMPLES, "fashion-mnist", "labels.tsv"),
             os.path.join(out, "labels.tsv")]
    print(f"building {collection} (stamps, Fashion-MNIST test and {extra} training images) with cnn ...", flush=True)
    print(" ", index_paths(collection, lists, IngestConfig(encoders=("cnn",), progress=False)).line(), flush=True)


def time_training(collection: str, epochs: int) -> dict:
    """One `nearsight train` (all defaults) on every caption and label pair of a collection
    of more than 10k pairs: the wall time of training itself, as the CLI runs it before installing."""
    if not os.path.exists(os.path.join(collection, "collection.json")):
        build_timing(collection)
    coll = Collection.open(collection)
    try:
        pairs = collect_pairs(coll, coll.embedding_matrix("cnn").has, sources=("captions", "labels"))
        start = time.perf_counter()
        result = train_heads(coll, TrainConfig(epochs=epochs, device="cpu", progress=False), pairs=pairs)
        seconds = time.perf_counter() - start
    finally:
        coll.close()
    return {"pairs": len(pairs), "train_pairs": result.report["train_pairs"], "seconds": round(seconds, 1),
            "negatives": result.report["config"]["negatives"],
            "epochs": len(result.report["history"]), "load_average": round(os.getloadavg()[0], 1)}


def folds(pairs, k: int, seed: int = 0):
    """k (train rows, held-out caption rows, held-out label rows): every caption group and every labelled
    image is held out in exactly one fold, so the pooled figures cover all of them."""
    rng = np.random.default_rng(seed)
    kinds = np.array(pairs.kinds)
    caption_groups = rng.permutation(np.unique(pairs.groups[kinds == "caption"]))
    label_fold = rng.integers(0, k, len(kinds))
    for fold in range(k):
        held_caption = (kinds == "caption") & np.isin(pairs.groups, caption_groups[fold::k])
        held_label = (kinds == "label") & (label_fold == fold)
        train = ~(held_caption | held_label) & np.isin(kinds, ["caption", "label"])
        yield np.flatnonzero(train), np.flatnonzero(held_caption), np.flatnonzero(held_label)


class Evaluation:
    """The two held-out tests: captions -> stamps (R@k), class names -> Fashion-MNIST images (mAP)."""

    def __init__(self, pairs, caption_rows, label_rows):
        held = pairs.subset(caption_rows)
        self.caption_queries = sorted(set(held.texts))
        self.stamps = np.unique(held.item_ids)
        col = {int(i): j for j, i in enumerate(self.stamps)}
        self.caption_relevant = np.zeros((len(self.caption_queries), len(self.stamps)), bool)
        for text, item in zip(held.texts, held.item_ids):
            self.caption_relevant[self.caption_queries.index(text), col[int(item)]] = True
        labels = pairs.subset(label_rows)
        self.class_queries = sorted(set(labels.texts))
        self.fashion = labels.item_ids
        self.class_relevant = np.array([[t == q for t in labels.texts] for q in self.class_queries])

    def run(self, score) -> dict:
        """``score(texts, item_ids) -> (q, n)`` -> per-caption rank of its first stamp (0 = first), and the
        Fashion-MNIST mAP."""
        scores = score(self.caption_queries, self.stamps)
        order = np.argsort(-scores, axis=1, kind="stable")
        ranks = np.take_along_axis(self.caption_relevant, order, axis=1).argmax(1)
        return {"ranks": ranks, "fashion_mAP": recall_at(score(self.class_queries, self.fashion),
                                                          self.class_relevant)["mAP"]}


def pooled(runs: list[dict]) -> dict:
    """The folds' runs -> R@1/5/10 over every held-out caption, Fashion mAP averaged over folds."""
    ranks = np.concatenate([r["ranks"] for r in runs])
    out = {f"R@{k}": float((ranks < k).mean()) for k in (1, 5, 10)}
    out["fashion_mAP"] = float(np.mean([r["fashion_mAP"] for r in runs]))
    return out


def paired_gain(a: np.ndarray, b: np.ndarray, seed: int = 0, rounds: int = 2000) -> tuple[float, float, float]:
    """Relative R@1 gain of ranks ``a`` over ranks ``b`` on the same queries, with a 95% bootstrap interval
    (queries resampled together, so the spread is that of the difference, not of each figure)."""
    hit_a, hit_b = (a < 1).astype(float), (b < 1).astype(float)
    gain = hit_a.mean() / max(hit_b.mean(), 1e-9) - 1
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(a), (rounds, len(a)))
    boot = hit_a[picks].mean(1) / np.maximum(hit_b[picks].mean(1), 1e-9) - 1
    return float(gain), float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))


def heads_scorer(heads, matrix):
    import torch

    from nearsight.retrieval.encoders.sentence import sentence_encoder

    def score(texts, ids):
        with torch.no_grad():
            t = heads["text"](torch.from_numpy(sentence_encoder("cpu").encode(texts)))
            v = heads["image"](torch.from_numpy(matrix.reconstruct(ids).astype(np.float16).astype(np.float32)))
        return (t @ v.T).numpy()
    return score


def bridge_scorer(coll, matrix):
    from nearsight.indexer.pairs import label_text
    from nearsight.retrieval.encoders.cnn import imagenet_class_names
    from nearsight.retrieval.encoders.sentence import sentence_encoder

    encoder = sentence_encoder("cpu")
    classes = encoder.encode([label_text(n) for n in imagenet_class_names()])  # (1000, 384)
    cnn = coll.encoder("cnn")

    def score(texts, ids):
        probs = softmax(cnn.classify_embeddings(matrix.reconstruct(ids)))  # (n, 1000)
        return (encoder.encode(texts) @ classes.T) @ probs.T
    return score


def text_latency_ms(coll, name: str, repeats: int = 50) -> dict:
    """Median wall time of one text query embedded by the installed model (warm), on one thread; and of the
    sentence tower alone under each CPU runtime (ONNX Runtime, the default, and torch), in the same run."""
    import torch

    from nearsight.retrieval.encoders.sentence import SentenceEncoder

    torch.set_num_threads(1)

    def median_ms(embed) -> float:
        embed(["warm up"])
        times = []
        for i in range(repeats):
            start = time.perf_counter()
            embed([f"a photo of a red bicycle number {i}"])
            times.append((time.perf_counter() - start) * 1000)
        return round(statistics.median(times), 2)

    out = {"query": median_ms(coll.encoder(name).encode_text)}
    for runtime in ("onnx", "torch"):
        out[f"sentence_{runtime}"] = median_ms(SentenceEncoder("cpu", runtime=runtime).encode)
    return out


def compare_negatives(coll, matrix, pairs, args, load: float) -> dict:
    """The retrieval rows: each kind of negatives trained on every fold, the zero-shot bridge, the paired gains."""
    splits = list(folds(pairs, args.folds))
    n_captions = sum(len(Evaluation(pairs, c, lab).caption_queries) for _, c, lab in splits)
    print(f"{len(pairs)} pairs ({pairs.counts()}); {args.folds} folds, each training on about "
          f"{len(splits[0][0])} pairs; held out over the folds: {n_captions} captions (each ranking its fold's "
          f"stamps), every Fashion-MNIST image once; load average {load:.1f} on {os.cpu_count()} cores", flush=True)

    rows, ranks = {}, {}
    for negatives in args.negatives.split(","):
        runs, timing = [], []
        for fold, (train_rows, caption_rows, label_rows) in enumerate(splits):
            evaluation = Evaluation(pairs, caption_rows, label_rows)
            for seed in range(args.seeds):
                config = TrainConfig(negatives=negatives, epochs=args.epochs, seed=seed, device="cpu",
                                     progress=False)
                start = time.perf_counter()
                result = train_heads(coll, config, pairs=pairs.subset(train_rows))
                seconds = time.perf_counter() - start
                epochs = len(result.report["history"])
                runs.append(evaluation.run(heads_scorer(result.heads, matrix)))
                timing.append({"train_seconds": seconds, "epochs": epochs,
                               "pairs_epochs_per_s": len(train_rows) * epochs / seconds})
                fig = pooled(runs[-1:])
                print(f"  {negatives:9s} fold {fold} seed {seed}: R@1 {fig['R@1']:.3f}, R@5 {fig['R@5']:.3f}, "
                      f"R@10 {fig['R@10']:.3f}, fashion_mAP {fig['fashion_mAP']:.3f}, {seconds:.0f} s "
                      f"({epochs} epochs)", flush=True)
        ranks[negatives] = np.concatenate([r["ranks"] for r in runs])
        rows[negatives] = {**pooled(runs), **{k: float(np.mean([t[k] for t in timing])) for k in timing[0]}}
    bridge_runs = [Evaluation(pairs, c, lab).run(bridge_scorer(coll, matrix)) for _, c, lab in splits]
    # the bridge has no seed: its ranks repeated per seed, in the trained rows' (fold, seed) order, stay paired
    ranks["zero-shot bridge"] = np.concatenate([r["ranks"] for r in bridge_runs for _ in range(args.seeds)])
    rows["zero-shot bridge"] = pooled(bridge_runs)
    print(f"  bridge    {rows['zero-shot bridge']}", flush=True)

    print(f"\n| negatives ({n_captions} held-out captions, {args.folds} folds x {args.seeds} seed(s)) | R@1 | R@5 | "
          "R@10 | Fashion mAP | train s (epochs) |\n|---|---|---|---|---|---|")
    for name, r in rows.items():
        t = f"{r['train_seconds']:.0f} ({r['epochs']:.1f})" if "train_seconds" in r else "-"
        print(f"| {name} | {r['R@1']:.3f} | {r['R@5']:.3f} | {r['R@10']:.3f} | {r['fashion_mAP']:.3f} | {t} |")
    best_hard = max([n for n in ("hardest", "semihard") if n in rows], key=lambda n: rows[n]["R@1"])
    gain, low, high = paired_gain(ranks[best_hard], ranks["random"])
    bridge_gain = paired_gain(ranks[best_hard], ranks["zero-shot bridge"])
    print(f"\n{best_hard} vs random, R@1: {100 * gain:+.1f}% relative (95% paired bootstrap {100 * low:+.1f}% .. "
          f"{100 * high:+.1f}%; target >= +10%); vs zero-shot bridge: {100 * bridge_gain[0]:+.1f}% R@1 "
          f"({100 * bridge_gain[1]:+.1f}% .. {100 * bridge_gain[2]:+.1f}%), {rows[best_hard]['fashion_mAP']:.3f} vs "
          f"{rows['zero-shot bridge']['fashion_mAP']:.3f} mAP")

    return {"folds": args.folds, "held_out_captions": n_captions, "rows": rows, "best_hard": best_hard,
            "hard_vs_random_r1_gain": round(gain, 3), "hard_vs_random_r1_gain_95": [round(low, 3), round(high, 3)],
            "hard_vs_bridge_r1_gain": round(bridge_gain[0], 3)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--collection", default=os.path.join(ROOT, "data", "bench_train.ns"))
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--timing-collection", default=os.path.join(ROOT, "data", "bench_train10k.ns"),
                    help="collection of more than 10k pairs to time one training on (built if missing; '' skips)")
    ap.add_argument("--folds", type=int, default=5,
                    help="cross-validation folds over the captions and labels (0: skip the retrieval rows)")
    ap.add_argument("--seeds", type=int, default=1, help="training seeds per fold")
    ap.add_argument("--negatives", default=",".join(NEGATIVES),
                    help="the kinds of negatives compared (random and at least one of hardest, semihard)")
    ap.add_argument("--copy-items", type=int, default=300, help="items copied for the copy-detection row (0: skip)")
    args = ap.parse_args()
    kinds = args.negatives.split(",")
    if set(kinds) - set(NEGATIVES) or "random" not in kinds or not {"hardest", "semihard"} & set(kinds):
        ap.error(f"--negatives: random and at least one of hardest, semihard (from {', '.join(NEGATIVES)})")
    if not os.path.exists(os.path.join(args.collection, "collection.json")):
        build(args.collection)
    load = os.getloadavg()[0]
    coll = Collection.open(args.collection)
    matrix = coll.embedding_matrix("cnn")
    pairs = collect_pairs(coll, matrix.has, sources=("captions", "labels"))
    comparison = compare_negatives(coll, matrix, pairs, args, load) if args.folds else None

    timing = None
    if args.timing_collection:
        timing = time_training(args.timing_collection, args.epochs)
        print(f"training on {timing['pairs']} pairs ({timing['train_pairs']} trained, the rest validation), "
              f"{timing['negatives']} negatives: {timing['seconds']:.0f} s for {timing['epochs']} epochs on "
              f"{os.cpu_count()} cores at load {timing['load_average']} (target <= 180 s for 10k pairs)", flush=True)
    copy_detection = None
    if args.copy_items:
        config = TrainConfig(pairs=("augment",), copies=3, copy_items=args.copy_items, epochs=args.epochs,
                             device="cpu", progress=False)
        start = time.perf_counter()
        copy_detection = train_heads(coll, config).report["copies"]
        copy_detection["seconds"] = round(time.perf_counter() - start, 1)
        print(f"copy detection ({copy_detection['val']} held-out copies of {args.copy_items} sampled items, against all "
              f"{len(matrix)} items): R@1 trained {copy_detection['trained']['R@1']:.3f} vs frozen cnn "
              f"{copy_detection['frozen']['R@1']:.3f}; mAP {copy_detection['trained']['mAP']:.3f} vs "
              f"{copy_detection['frozen']['mAP']:.3f}")
    latency = None
    text_models = [n for n in coll.encoder_names if coll.encoder_spec(n).get("kind") == "triplet"]
    if text_models:
        latency = text_latency_ms(coll, text_models[0])
        print(f"text query embedding ({text_models[0]}): {latency['query']:.1f} ms median, 1 thread (target <= 20 ms);"
              f" the sentence tower alone: {latency['sentence_onnx']:.1f} ms under ONNX Runtime, "
              f"{latency['sentence_torch']:.1f} ms under torch")
    else:
        print("no installed text model in the collection for the latency figure (run nearsight train on it)")
    coll.close()
    print(json.dumps({"bench": "train", "load_average": round(load, 1), **(comparison or {}),
                      "training_time": timing, "text_query_ms": latency, "copy_detection": copy_detection}))


if __name__ == "__main__":
    main()
