"""Where training pairs (text, image) come from: captions, labels, weak ImageNet captions, search feedback.

- **captions** the collection holds (file-list captions, sidecar ``.txt``, webdataset ``.txt``/``.json``),
- **labels**: a short caption many items share (a file list's class column, e.g. Fashion-MNIST's
  "Sneaker") is a label, and becomes the text "a photo of a sneaker",
- **weak captions** for items with no text, from the ``cnn`` encoder's ImageNet classifier applied to its
  stored embeddings (no image decoded): "a photo of a daisy",
- **feedback** recorded by ``nearsight serve --feedback``: per text query, the result the user opened
  (good) and the results ranked above it that were passed over (bad).

Pairs with the same normalised text form a *group*: two items of one group are never each other's negative.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

FEEDBACK_FILE = "feedback.jsonl"
SOURCES = ("captions", "labels", "weak", "feedback")
LABEL_MIN_ITEMS = 5  # a caption shared by this many items is a class label ...
LABEL_MAX_WORDS = 4  # ... if it is this short
WEAK_MIN_PROB = 0.15  # weak captions only where the classifier is this sure of its top class


@dataclass
class Pairs:
    """Aligned (m,) arrays: item ids, texts, text groups and each pair's source kind."""
    item_ids: np.ndarray
    texts: list[str]
    groups: np.ndarray
    kinds: list[str]
    triples: list[tuple[str, int, int]] = field(default_factory=list)  # feedback (text, good id, bad id)

    def __len__(self) -> int:
        return len(self.texts)

    def counts(self) -> dict[str, int]:
        out = dict(Counter(self.kinds))
        if self.triples:
            out["feedback triples"] = len(self.triples)
        return out

    def subset(self, rows: np.ndarray) -> "Pairs":
        return Pairs(self.item_ids[rows], [self.texts[i] for i in rows], self.groups[rows],
                     [self.kinds[i] for i in rows])


def normalize_text(text: str) -> str:
    """Lowercase, punctuation and spacing collapsed: "A frog." and "a frog" are one group."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def label_text(label: str) -> str:
    label = normalize_text(label).replace("_", " ").replace("-", " ")
    label = re.sub(r"^(a|an|the) ", "", label)
    return f"a photo of {'an' if label[:1] in 'aeiou' else 'a'} {label}"


def collect_pairs(coll, has_embedding, sources=SOURCES) -> Pairs:
    """All (item, text) pairs of live items for which ``has_embedding(id)`` is true, from ``sources``."""
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        raise ValueError(f"unknown pair source(s) {', '.join(unknown)}; use {', '.join(SOURCES)}")
    items = [it for it in coll.store.iter_items() if not it.deleted and has_embedding(it.id)]
    captions = {it.id: it.caption.strip() for it in items if it.caption and it.caption.strip()}
    shared = Counter(normalize_text(c) for c in captions.values())
    rows: list[tuple[int, str, str]] = []
    for item_id, caption in captions.items():
        key = normalize_text(caption)
        if shared[key] >= LABEL_MIN_ITEMS and len(key.split()) <= LABEL_MAX_WORDS:
            if "labels" in sources:
                rows.append((item_id, label_text(caption), "label"))
        elif "captions" in sources:
            rows.append((item_id, caption, "caption"))
    if "weak" in sources:
        uncaptioned = [it.id for it in items if it.id not in captions]
        rows += [(i, t, "weak") for i, t in weak_captions(coll, uncaptioned)]
    known = {it.id for it in items}
    events = [e for e in read_feedback(coll.dir) if e[1] in known] if "feedback" in sources else []
    triples = [(text, good, bad) for text, good, bads in events for bad in bads if bad in known and bad != good]
    rows += [(good, text, "feedback") for text, good in sorted({(t, g) for t, g, _ in events})]
    group_of: dict[str, int] = {}
    groups = [group_of.setdefault(normalize_text(text), len(group_of)) for _, text, _ in rows]
    return Pairs(np.array([r[0] for r in rows], np.int64), [r[1] for r in rows], np.array(groups, np.int64),
                 [r[2] for r in rows], triples)


def weak_captions(coll, item_ids: list[int]) -> list[tuple[int, str]]:
    """(id, "a photo of a <top ImageNet class>") from the collection's stored ``cnn`` embeddings.

    Items whose classifier is unsure (top probability under WEAK_MIN_PROB) get none; without a ``cnn``
    encoder in the collection there are none at all.
    """
    if not item_ids or "cnn" not in coll.encoder_names:
        return []
    from ..retrieval.encoders.cnn import imagenet_class_names

    matrix = coll.embedding_matrix("cnn")
    ids = np.array([i for i in item_ids if matrix.has(i)], np.int64)
    if not len(ids):
        return []
    cnn, names, out = coll.encoder("cnn"), imagenet_class_names(), []
    for start in range(0, len(ids), 4096):
        chunk = ids[start:start + 4096]
        probs = softmax(cnn.classify_embeddings(matrix.reconstruct(chunk)))
        top = probs.argmax(1)
        out += [(int(i), label_text(names[c])) for i, c, p in zip(chunk, top, probs.max(1)) if p >= WEAK_MIN_PROB]
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def read_feedback(collection_dir: str) -> list[tuple[str, int, list[int]]]:
    """Feedback events (text query, opened id, passed-over ids) from ``DIR/feedback.jsonl``; bad lines skipped."""
    path = os.path.join(collection_dir, FEEDBACK_FILE)
    if not os.path.exists(path):
        return []
    events = []
    with open(path) as f:
        for line in f:
            try:
                event = json.loads(line)
                text, good = event["text"].strip(), int(event["opened"])
                bads = [int(bad) for bad in event.get("passed_over", [])]
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut by a crash mid-write, or written by something else
            if text:
                events.append((text, good, bads))
    return events


def record_feedback(collection_dir: str, text: str, opened: int, passed_over: list[int]) -> None:
    """Append one feedback event; one ``write`` of one line with O_APPEND, so concurrent writers never interleave."""
    line = json.dumps({"text": text, "opened": int(opened), "passed_over": [int(i) for i in passed_over]}) + "\n"
    fd = os.open(os.path.join(collection_dir, FEEDBACK_FILE), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line.encode())
    finally:
        os.close(fd)
