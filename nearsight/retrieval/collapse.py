"""Near-duplicate collapse of a ranked list: one result per group of copies, with the group's size.

Exact copies are one item already (ingest merges equal sha256); this groups the near copies ingest cannot
see: the same photo resized, recompressed, lightly cropped. Two results are copies when their similarity,
in the encoder that ranked them and in the units the API shows (``pair_similarity``), is at least the
encoder's threshold. Grouping is greedy in rank order, so every group is represented by its best-ranked
member, and only the ranked candidates are grouped: copies that did not make the candidate list are not
counted.

One threshold does not fit every encoder: their similarities spread differently. The cosine of an "l2"
descriptor's raw vectors ignores their lengths, which is what ranked the results (in the demo collection 5% of
random pairs of lab-layout vectors, where L* dominates, have a cosine of 0.97 or more); and how close a copy
comes depends on what the encoder sees (a tiny image of a mirrored photo is another picture, a CNN's is not).
So the similarity of an "l2" encoder is ``exp(-squared distance / mean squared distance of random pairs)``
(as for results), and each kind has its own threshold, measured (``COPY_THRESHOLDS``).
"""
from __future__ import annotations

import numpy as np

# Per encoder kind: the similarity at and above which two results are copies of one picture. Measured on the
# 66 sample photos of the demo collection (1,351 items with the cut-outs and Fashion-MNIST) by
# scripts/calibrate_collapse.py (its docstring has the command): each photo's copies (half size at JPEG
# quality 60; a 5% crop of every side; mirrored) against the most similar *different* picture in the
# collection (video frames and a stereo pair of one moment are not counted as different). Each threshold keeps
# every different picture apart: midway between the most similar different picture and the weakest JPEG copy
# where the copies score above it, else 0.01 above that picture (and the encoder then misses some copies).
#   kind        threshold  most similar different         weakest JPEG copy  copies folded (JPEG, crop, mirror)
#   tiny        0.96       0.930 (two green wallpapers)   0.9945             66, 12, 1 of 66 (positions: a crop
#                                                                            or mirror is another picture)
#   tiny-gray   0.92       0.844                          0.993              66, 18, 4
#   gist        0.97       0.955 (two dark wallpapers)    0.80               55, 29, 2: GIST is a layout, not a
#                                                                            copy detector
#   gist-gray   0.98       0.9625 (the same two)          0.990              66, 18, 2
#   lab-layout  0.96       0.931 (a photo, a letter)      0.9989             66, 62, 11
#   cnn         0.86       0.850 (graf1 / graf3)          0.78               57, 61, 66
#   triplet     0.90       0.886 (leuvenA / leuvenB)      0.80               55, 61, 66 (the demo's model over cnn)
# clip is not measured (no weights on this machine): it and unknown kinds use DEFAULT_THRESHOLD.
COPY_THRESHOLDS = {
    "tiny": 0.96,
    "tiny-gray": 0.92,
    "gist": 0.97,
    "gist-gray": 0.98,
    "lab-layout": 0.96,
    "cnn": 0.86,
    "triplet": 0.90,
}
DEFAULT_THRESHOLD = 0.97


def copy_threshold(kind: str) -> float:
    """The measured copy threshold of an encoder kind (``COPY_THRESHOLDS``), else ``DEFAULT_THRESHOLD``."""
    return COPY_THRESHOLDS.get(kind, DEFAULT_THRESHOLD)


def pair_similarity(a: np.ndarray, b: np.ndarray, metric: str, scale: float = 1.0) -> np.ndarray:
    """Similarity of rows of ``a`` (m, d) to ``b`` (d,) or (m, d), in the API's units: the cosine for "ip"
    encoders, exp(-squared L2 distance / ``scale``) for "l2" ones (scale: mean squared distance of random
    pairs, ``Collection.similarity_scale``). (m,) float32 in [-1, 1] or (0, 1]."""
    a = np.asarray(a, np.float32)
    b = np.asarray(b, np.float32)
    if metric == "l2":
        return np.exp(-((a - b) ** 2).sum(-1) / np.float32(scale))
    na = np.linalg.norm(a, axis=-1)
    nb = np.linalg.norm(b, axis=-1)
    return (a * b).sum(-1) / np.maximum(na * nb, np.float32(1e-12))


def collapse_ranked(vectors: np.ndarray, threshold: float = DEFAULT_THRESHOLD, metric: str = "ip",
                    scale: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(m, d) embeddings of a ranked list, best first -> (representatives (g,) int64 positions in rank order,
    group (m,) int64: the representative position of every row). ``metric`` / ``scale``: see
    ``pair_similarity``."""
    x = np.asarray(vectors, dtype=np.float32)
    if metric != "l2":
        norms = np.linalg.norm(x, axis=1, keepdims=True)
        x = x / np.where(norms > 0, norms, 1)
    reps: list[int] = []
    group = np.empty(len(x), np.int64)
    for i in range(len(x)):
        if reps:
            if metric == "l2":
                sims = np.exp(-((x[reps] - x[i]) ** 2).sum(1) / np.float32(scale))
            else:
                sims = x[reps] @ x[i]
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                group[i] = reps[best]
                continue
        reps.append(i)
        group[i] = i
    return np.asarray(reps, np.int64), group
