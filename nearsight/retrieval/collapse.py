"""Near-duplicate collapse of a ranked list: one result per group of copies, with the group's size.

Exact copies are one item already (ingest merges equal sha256); this groups the near copies ingest cannot
see: the same photo resized, recompressed, lightly cropped. Two results are copies when the cosine of
their embeddings (in the encoder that ranked them, L2-normalised here so "l2" encoders such as GIST
compare the same way) is at least ``threshold``. Grouping is greedy in rank order, so every group is
represented by its best-ranked member, and only the ranked candidates are grouped: copies that did not make
the candidate list are not counted.
"""
from __future__ import annotations

import numpy as np

DEFAULT_THRESHOLD = 0.97


def collapse_ranked(vectors: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> tuple[np.ndarray, np.ndarray]:
    """(m, d) embeddings of a ranked list, best first -> (representatives (g,) int64 positions in rank order,
    group (m,) int64: the representative position of every row)."""
    x = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    x = x / np.where(norms > 0, norms, 1)
    reps: list[int] = []
    group = np.empty(len(x), np.int64)
    for i in range(len(x)):
        if reps:
            sims = x[reps] @ x[i]
            best = int(np.argmax(sims))
            if sims[best] >= threshold:
                group[i] = reps[best]
                continue
        reps.append(i)
        group[i] = i
    return np.asarray(reps, np.int64), group
