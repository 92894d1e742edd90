"""``nearsight train``: text + image projection heads trained with a hard-negative triplet loss.

The image tower is locked (LiT): its embeddings are read from the collection (no image decoded), and only
two small heads (``retrieval/encoders/triplet.py``) learn, one over the image features and one over the
frozen sentence embedding of the text. The loss is the triplet hinge of image search, in both directions
(VSE++): for a text q, its image g and another image b, ``max(0, margin - cos(q, g) + cos(q, b))``, and
the same with the roles of texts and images swapped. Negatives:

- ``hardest``: the in-batch negative with the highest score (VSE++ max-violation), after warm-up epochs
  that sum the hinge over all in-batch negatives (max-violation from random heads does not learn);
- ``semihard``: the highest-scoring in-batch negative that still scores below the positive (FaceNet),
  or the lowest-scoring one when none does (TensorFlow's semi-hard triplet loss);
- ``random``: one uniformly random in-batch negative (kept for comparison).

On top of the batch, each text's negative is mined over the whole collection every epoch with the current
model, through the collection's own exact search: the highest-scoring image of another group (hardest),
the highest one below the positive (semihard), or a random one (random). Items of the same text group
are never negatives of each other. Search feedback adds its recorded (query, opened, passed over) triples.

A validation split of whole groups (so a held-out caption is never seen in training) measures text ->
image recall@k each epoch; training stops early when the mean average precision has not improved for ``patience`` epochs and
the best epoch's weights are kept. The model then becomes an encoder of the collection (``commit.py``).
"""
from __future__ import annotations

import logging
import re
import time
from dataclasses import asdict, dataclass

import numpy as np

from ..retrieval.collection import Collection
from ..retrieval.encoders import IMAGE, encoder_class
from ..retrieval.errors import InvalidQuery, NearsightError, UnknownEncoder
from ..retrieval.search import exact_search
from .pairs import SOURCES, Pairs, collect_pairs

LOG = logging.getLogger(__name__)
NEGATIVES = ("hardest", "semihard", "random")
MIN_PAIRS = 20
# VSE++ warms up for an epoch of a large dataset; on a small collection an epoch is a handful of steps, so the
# sum-of-hinges warm-up also lasts at least this many steps.
MIN_WARMUP_STEPS = 100
RECALL_KS = (1, 5, 10)


class NotEnoughPairs(NearsightError):
    """The collection holds too little text to train on."""


@dataclass(frozen=True)
class TrainConfig:
    name: str = "text"
    image_encoder: str = "cnn"
    dim: int = 256
    hidden: int = 512
    epochs: int = 30
    # semi-hard measured best in scripts/bench_train.py: held-out caption R@1 0.294-0.306 against hardest 0.282, Fashion
    # mAP 0.821-0.837 against 0.805; it needs no warm-up and stops earlier
    negatives: str = "semihard"
    margin: float = 0.2
    batch_size: int = 128
    lr: float = 2e-4
    warmup_epochs: int = 1
    mine_collection: bool = True
    group_cap: int | None = 32  # pairs of one text an epoch trains on at most (a fresh sample each epoch)
    bridge: bool = True  # start at the zero-shot ImageNet class bridge where the base encoder has a classifier
    sources: tuple[str, ...] = SOURCES
    pairs: tuple[str, ...] = ("text",)  # "text": (text, image) pairs; "augment": (copy, original) image pairs
    copies: int = 4  # augmented copies per item for "augment"
    copy_items: int | None = None  # copies of at most this many items (a random sample; every item gets
    # its copy decoded and embedded by the base encoder, the slow part on a CPU)
    val_fraction: float = 0.1
    patience: int = 4
    same_text: float = 0.9  # texts at least this similar (sentence cosine) are one text for the negatives
    seed: int = 0
    device: str = "auto"
    progress: bool = True

    def check(self, coll: Collection) -> None:
        if self.negatives not in NEGATIVES:
            raise InvalidQuery(f"unknown negatives {self.negatives!r}; use one of {', '.join(NEGATIVES)}")
        if self.image_encoder not in coll.encoder_names:
            images = [n for n in coll.encoder_names if IMAGE in coll.encoder_spec(n)["modalities"]
                      and coll.encoder_spec(n).get("kind", n) != "triplet"]
            raise UnknownEncoder(f"collection has no image encoder {self.image_encoder!r}; "
                                 f"its image encoders: {', '.join(images) or 'none'}")
        if coll.encoder_spec(self.image_encoder).get("kind", self.image_encoder) == "triplet":
            raise UnknownEncoder(f"{self.image_encoder!r} is itself a trained model; train over a frozen encoder")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,63}", self.name):
            raise InvalidQuery(f"model name must be a letter then letters, digits, - or _, got {self.name!r}")
        if self.name in coll.encoder_names and coll.encoder_spec(self.name).get("kind") != "triplet":
            raise InvalidQuery(f"the collection already has an encoder {self.name!r} that is not a trained model; "
                               "choose another --name")
        for field_name, low in (("dim", 2), ("hidden", 1), ("epochs", 1), ("batch_size", 2)):
            value = getattr(self, field_name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise InvalidQuery(f"{field_name} must be an integer >= {low}, got {value!r}")
        if not 0 < self.margin < 2 or not 0 < self.val_fraction < 0.5:
            raise InvalidQuery("margin must be in (0, 2) and val_fraction in (0, 0.5)")
        if not self.pairs or set(self.pairs) - {"text", "augment"}:
            raise InvalidQuery(f"pairs must be text, augment or both, got {','.join(self.pairs) or 'none'}")
        encoder_class("triplet")  # registered


@dataclass
class TrainResult:
    heads: object
    report: dict


def train_heads(coll: Collection, config: TrainConfig, pairs: Pairs | None = None) -> TrainResult:
    """Train the heads on the collection's pairs (or ``pairs``); nothing in the collection is written."""
    import torch

    from ..retrieval.encoders.base import resolve_device
    from ..retrieval.encoders.sentence import sentence_encoder
    from ..retrieval.encoders.triplet import build_heads, init_bridge

    config.check(coll)
    started = time.perf_counter()
    device = resolve_device(config.device)
    matrix = coll.embedding_matrix(config.image_encoder)
    use_text = "text" in config.pairs
    if pairs is None:
        pairs = collect_pairs(coll, matrix.has, config.sources if use_text else ())
    if "weak" in config.sources and pairs.counts().get("weak") and len(pairs.counts()) == 1:
        LOG.warning("no captions, labels or feedback in this collection: training on weak ImageNet captions only")
    train_rows, val_rows = split_groups(pairs.groups, config.val_fraction, config.seed)
    if use_text and (len(train_rows) < MIN_PAIRS or len(np.unique(pairs.groups[train_rows])) < 2):
        raise NotEnoughPairs(
            f"too few training pairs: {len(pairs)} (text, image) pairs in {len(np.unique(pairs.groups))} distinct "
            f"texts; training needs at least {MIN_PAIRS} pairs for training besides the validation split, in at "
            f"least 2 distinct texts (from: {', '.join(config.sources)}). Add captions (a file list with a caption "
            f"column, sidecar .txt files), labels, or index with the cnn encoder for weak captions")

    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    texts = sorted(set(pairs.texts) | {t for t, _, _ in pairs.triples})
    text_row = {t: i for i, t in enumerate(texts)}
    text_feats = torch.from_numpy(sentence_encoder(device).encode(texts)).to(device) if texts else None
    # All collection items (for mining and validation), as stored: float16 rounded, float32 for the heads.
    all_ids = matrix.ids
    all_feats = torch.from_numpy(np.asarray(matrix.vectors, dtype=np.float32)).to(device)
    item_row = matrix.rows
    pair_text = torch.from_numpy(np.array([text_row[t] for t in pairs.texts], np.int64)).to(device)
    pair_item = torch.from_numpy(item_row(pairs.item_ids)).to(device)
    # "1 Japanese yen." and "5 Japanese yen.": near-identical texts are never each other's negatives either
    negative_groups = merge_similar(pairs.groups, np.array([text_row[t] for t in pairs.texts], np.int64),
                                    text_feats, config.same_text) if len(pairs) else pairs.groups
    groups = torch.from_numpy(negative_groups).to(device)
    # group of every collection row (-1: no text), to keep same-group items out of the negatives
    row_group = np.full(len(all_ids), -1, np.int64)
    row_group[item_row(pairs.item_ids)] = negative_groups
    row_group_t = torch.from_numpy(row_group).to(device)
    triples = [(text_row[t], int(item_row([g])[0]), int(item_row([b])[0])) for t, g, b in pairs.triples]

    # the bridge is a start for text: an image-only model (--pairs augment) starts from the base features' own
    # geometry, which finds copies; squeezed through class names it found fewer (R@1 0.18 vs 0.31)
    bridge = class_bridge(coll, config, device) if config.bridge and use_text else None
    heads = build_heads(matrix.dim, config.dim, config.hidden, bridge is not None)
    if bridge is not None:
        init_bridge(heads, *bridge)
    heads = heads.to(device)
    optimizer = torch.optim.Adam(heads.parameters(), lr=config.lr)
    val = _Validation(pairs, val_rows, text_feats, text_row, all_feats, item_row)
    copies = _Copies(coll, config, matrix, all_feats, rng) if "augment" in config.pairs else None
    history, best, best_state, stale, steps = [], -1.0, None, 0, 0
    bar = _progress(config)
    for epoch in range(config.epochs):
        heads.train()
        # the warm-up is max-violation's (VSE++): semi-hard and random negatives learn from the start
        warm = config.negatives == "hardest" and (epoch < config.warmup_epochs or steps < MIN_WARMUP_STEPS)
        mined = None
        if config.mine_collection and not warm and use_text:
            mined = mine_negatives(heads, text_feats, pair_text[train_rows], groups[train_rows],
                                   pair_item[train_rows], all_feats, row_group_t, config.negatives, rng)
        order = capped_order(pairs.groups[train_rows], config.group_cap, rng) if use_text else np.zeros(0, np.int64)
        losses = copies.train_epoch(heads, optimizer, "sum" if warm else config.negatives) if copies else []
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) < 2:
                continue
            rows = train_rows[batch]
            t = heads["text"](text_feats[pair_text[rows]])
            v = heads["image"](all_feats[pair_item[rows]])
            loss = batch_triplet_loss(t @ v.T, groups[rows], pair_item[rows], config.margin,
                                      "sum" if warm else config.negatives, rng)
            if mined is not None:
                neg = heads["image"](all_feats[mined[batch]])
                loss = loss + hinge(config.margin - (t * v).sum(1) + (t * neg).sum(1)).mean()
            if triples:
                loss = loss + feedback_loss(heads, text_feats, all_feats, triples, config.margin, rng, len(rows))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            steps += 1
            losses.append(float(loss.detach()))
        heads.eval()
        recall = val.recall(heads) if use_text else copies.recall(heads)
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)) if losses else 0.0, **recall})
        bar.update(1)
        bar.set_postfix(loss=f"{history[-1]['loss']:.3f}", **{f"R@{k}": f"{recall[f'R@{k}']:.3f}" for k in RECALL_KS})
        score = recall["mAP"]  # smoother than R@k on a small validation split
        if score >= best:  # ties move on to the later epoch: a small validation split saturates early
            best, stale = score, 0
            best_state = {k: v.detach().clone() for k, v in heads.state_dict().items()}
            best_epoch = epoch + 1
        elif not warm:
            stale += 1
            if stale >= config.patience:
                break
    bar.close()
    heads.load_state_dict(best_state)
    heads.eval()
    report = {"config": {k: v for k, v in asdict(config).items() if k != "progress"},
              "bridge": bridge is not None, "pairs": pairs.counts(), "train_pairs": int(len(train_rows)), "val_pairs": int(len(val_rows)),
              "val_queries": val.n_queries if use_text else copies.n_val, "best_epoch": best_epoch,
              "copies": copies.report(heads) if copies else None,
              "validation": {k: v for k, v in history[best_epoch - 1].items() if k not in ("epoch", "loss")},
              "examples": example_queries(pairs), "history": history,
              "seconds": round(time.perf_counter() - started, 1),
              "trained": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return TrainResult(heads.cpu(), report)


def class_bridge(coll: Collection, config: TrainConfig, device: str):
    """(classifier weight, bias, feature scale, class-name sentence embeddings) of the base encoder's ImageNet
    classifier, or None where it has none (only ``cnn`` does)."""
    from ..retrieval.encoders.cnn import imagenet_class_names
    from ..retrieval.encoders.sentence import sentence_encoder
    from .pairs import label_text

    encoder = coll.encoder(config.image_encoder)
    if not hasattr(encoder, "classifier_parameters"):
        return None
    class_text = sentence_encoder(device).encode([label_text(n) for n in imagenet_class_names()])
    return (*encoder.classifier_parameters(), class_text)


class _Copies:
    """Image-to-image metric learning: (augmented copy, its original, another item) triplets on the image head.

    Copies of 10% of the items (``val_fraction``) are held out: each must find its original among all items.
    """

    def __init__(self, coll, config: TrainConfig, matrix, all_feats, rng):
        import torch

        from .augment import copy_features

        self.config, self.all_feats, self.rng = config, all_feats, rng
        ids = matrix.ids
        if config.copy_items is not None and config.copy_items < len(ids):
            ids = np.sort(rng.choice(ids, config.copy_items, replace=False))
        feats, owners = copy_features(coll, config.image_encoder, ids, config.copies, config.seed,
                                      progress=config.progress)
        if len(np.unique(owners)) < MIN_PAIRS:
            raise NotEnoughPairs(f"too few images for --pairs augment: {len(np.unique(owners))} readable; "
                                 f"at least {MIN_PAIRS} are needed")
        held = set(rng.permutation(np.unique(owners))[:max(1, int(len(np.unique(owners)) * config.val_fraction))])
        is_val = np.isin(owners, list(held))
        device = all_feats.device
        self.feats = torch.from_numpy(feats).to(device)
        self.rows = torch.from_numpy(matrix.rows(owners)).to(device)
        self.train, self.val = np.flatnonzero(~is_val), np.flatnonzero(is_val)
        self.n_val = int(len(self.val))

    def train_epoch(self, heads, optimizer, negatives: str) -> list[float]:
        losses = []
        order = self.rng.permutation(self.train)
        for start in range(0, len(order), self.config.batch_size):
            batch = order[start:start + self.config.batch_size]
            if len(batch) < 2:
                continue
            copies = heads["image"](self.feats[batch])
            originals = heads["image"](self.all_feats[self.rows[batch]])
            # copies of one item share its row: same row = not a negative
            loss = batch_triplet_loss(copies @ originals.T, self.rows[batch], self.rows[batch], self.config.margin,
                                      negatives, self.rng)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        return losses

    def recall(self, heads, project: bool = True) -> dict[str, float]:
        """Held-out copies against every item: R@k and mAP (= mean reciprocal rank of the original)."""
        import torch

        with torch.no_grad():
            queries, items = self.feats[self.val], self.all_feats
            if project:
                queries, items = heads["image"](queries), heads["image"](items)
            else:
                queries = torch.nn.functional.normalize(queries, dim=-1)
            scores = (queries @ items.T).cpu().numpy()
        relevant = np.zeros(scores.shape, bool)
        relevant[np.arange(len(self.val)), self.rows[self.val].cpu().numpy()] = True
        return recall_at(scores, relevant)

    def report(self, heads) -> dict:
        """Held-out copy retrieval with the trained head and with the frozen base encoder, side by side."""
        return {"train": int(len(self.train)), "val": self.n_val, "trained": self.recall(heads),
                "frozen": self.recall(heads, project=False)}


def capped_order(groups: np.ndarray, cap: int | None, rng) -> np.ndarray:
    """One epoch's rows in random order, at most ``cap`` of each group (a fresh sample every epoch): a label
    shared by hundreds of images would otherwise fill most batches, and most in-batch negatives would be
    images of other labels, where captions need the fine distinctions between captioned images."""
    order = rng.permutation(len(groups))
    if cap is None:
        return order
    _, first = np.unique(groups[order], return_inverse=True)
    seen = np.zeros(first.max() + 1 if len(first) else 0, np.int64)
    keep = np.zeros(len(order), bool)
    for i, g in enumerate(first):
        if seen[g] < cap:
            keep[i] = True
            seen[g] += 1
    return order[keep]


def example_queries(pairs: Pairs, n: int = 6) -> list[str]:
    """Texts the model learnt (the page suggests them): short ones, taken in turn from labels, captions and
    weak captions, the best-supported first in each."""
    from collections import Counter

    count = Counter(pairs.texts)
    kind = dict(zip(pairs.texts, pairs.kinds))
    lists = [sorted((t for t in count if kind[t] == k and len(t.split()) <= 6), key=lambda t: (-count[t], t))
             for k in ("label", "caption", "feedback", "weak")]
    out = []
    while len(out) < n and any(lists):
        out += [lst.pop(0) for lst in lists if lst][:n - len(out)]
    return out


def split_groups(groups: np.ndarray, fraction: float, seed: int, min_label: int = 5) -> tuple[np.ndarray, np.ndarray]:
    """Row indices (train, validation), about ``fraction`` held out.

    A text with few images (a caption) is held out whole, so validation asks for texts never trained on; a
    label with ``min_label`` images or more keeps its text in training and holds out some of its images
    (holding out a whole class would only teach the model to miss it).
    """
    rng = np.random.default_rng(seed)
    unique, sizes = np.unique(groups, return_counts=True)
    captions = unique[sizes < min_label]
    n_val = int(round(len(captions) * fraction))
    if len(captions) >= 4:
        n_val = max(1, n_val)
    held = set(rng.permutation(captions)[:n_val].tolist())
    is_val = np.array([g in held for g in groups], bool)
    labels = set(unique[sizes >= min_label].tolist())
    for row in np.flatnonzero([g in labels for g in groups]):
        is_val[row] = rng.random() < fraction
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


def merge_similar(groups: np.ndarray, text_index: np.ndarray, text_feats, threshold: float) -> np.ndarray:
    """Groups joined (union-find) where their texts' sentence cosine is at least ``threshold``; (m,) int64."""
    import torch

    unique, first = np.unique(groups, return_index=True)
    feats = text_feats[torch.from_numpy(text_index[first]).to(text_feats.device)]
    close = ((feats @ feats.T) >= threshold).cpu().numpy()
    parent = np.arange(len(unique))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in zip(*np.nonzero(np.triu(close, 1))):
        parent[root(i)] = root(j)
    merged = np.array([root(i) for i in range(len(unique))])
    return merged[np.searchsorted(unique, groups)]


def hinge(x):
    return x.clamp(min=0)


def batch_triplet_loss(scores, groups, items, margin: float, negatives: str, rng):
    """Triplet hinge over a (b, b) text x image score matrix whose diagonal holds the positives.

    Both directions (text -> images along rows, image -> texts along columns). ``negatives``: ``sum`` over
    all valid negatives, ``hardest``, ``semihard`` or ``random`` (one per anchor). Entries of the same group
    or the same item are not negatives.
    """
    import torch

    valid = (groups[:, None] != groups[None, :]) & (items[:, None] != items[None, :])
    total = 0.0
    for s, ok in ((scores, valid), (scores.T, valid.T)):
        pos = s.diagonal()[:, None]
        cost = hinge(margin - pos + s)
        if negatives == "sum":
            per = (cost * ok).sum(1)
        elif negatives == "hardest":
            per = cost.masked_fill(~ok, 0).max(1).values
        elif negatives == "semihard":
            below = ok & (s < pos)
            semi = s.masked_fill(~below, -4).max(1).values  # highest negative score under the positive
            easiest = s.masked_fill(~ok, 4).min(1).values
            chosen = torch.where(below.any(1), semi, easiest)
            per = hinge(margin - pos[:, 0] + chosen) * ok.any(1)
        else:
            weights = torch.from_numpy(rng.random(tuple(s.shape))).to(s.device).float() * ok
            pick = weights.argmax(1)
            per = cost.gather(1, pick[:, None])[:, 0] * ok.any(1)
        total = total + per.mean()
    return total


def mine_negatives(heads, text_feats, pair_text, pair_group, pair_item, all_feats, row_group, negatives: str, rng):
    """(m,) collection rows: one negative image per training pair, found over the whole collection.

    Candidates are items that have a text of another group (an item without any text may well show the
    query, so it is never taken as a negative). Searched with the collection's exact k-NN on the current
    heads' embeddings.
    """
    import torch

    depth = 64
    with torch.no_grad():
        images = heads["image"](all_feats).cpu().numpy()
        query_t = heads["text"](text_feats[pair_text])
        positive = (query_t * heads["image"](all_feats[pair_item])).sum(1).cpu().numpy()
        queries = query_t.cpu().numpy()
    groups, own = row_group.cpu().numpy(), pair_group.cpu().numpy()
    candidates = np.flatnonzero(groups >= 0)
    scores, found = exact_search(images[candidates], queries, min(depth, len(candidates)), "ip")
    found = candidates[np.maximum(found, 0)]
    wrong = groups[found] != own[:, None]
    out = np.empty(len(queries), np.int64)
    for i in range(len(queries)):
        options = np.flatnonzero(wrong[i])
        if len(options) and negatives == "hardest":
            out[i] = found[i, options[0]]
        elif len(options) and negatives == "semihard":
            below = options[scores[i, options] < positive[i]]
            out[i] = found[i, below[0] if len(below) else options[-1]]
        else:  # random, or every near item shares the text: any item of another text
            others = candidates[groups[candidates] != own[i]]
            out[i] = rng.choice(others) if len(others) else found[i, -1]
    return torch.from_numpy(out).to(all_feats.device)


def feedback_loss(heads, text_feats, all_feats, triples, margin: float, rng, batch: int):
    """The hinge on a sample of recorded (query, opened, passed over) triples: the opened image must win."""
    import torch

    pick = rng.choice(len(triples), size=min(batch, len(triples)), replace=False)
    t_idx, g_idx, b_idx = (torch.tensor([triples[i][j] for i in pick], device=all_feats.device) for j in range(3))
    q = heads["text"](text_feats[t_idx])
    good, bad = heads["image"](all_feats[g_idx]), heads["image"](all_feats[b_idx])
    return hinge(margin - (q * good).sum(1) + (q * bad).sum(1)).mean()


class _Validation:
    """Text -> image recall@k of held-out groups: each held-out text ranks the held-out images."""

    def __init__(self, pairs: Pairs, rows, text_feats, text_row, all_feats, item_row):
        import torch

        self.n_queries = 0
        if not len(rows):
            return
        val = pairs.subset(rows)
        self.items = np.unique(val.item_ids)
        self.image_feats = all_feats[torch.from_numpy(item_row(self.items)).to(all_feats.device)]
        query_texts = sorted(set(val.texts))
        self.query_feats = text_feats[torch.tensor([text_row[t] for t in query_texts], device=text_feats.device)]
        col = {item: j for j, item in enumerate(self.items)}
        self.relevant = np.zeros((len(query_texts), len(self.items)), bool)
        qrow = {t: i for i, t in enumerate(query_texts)}
        for text, item in zip(val.texts, val.item_ids):
            self.relevant[qrow[text], col[int(item)]] = True
        self.n_queries = len(query_texts)

    def recall(self, heads) -> dict[str, float]:
        import torch

        if not self.n_queries:
            return {**{f"R@{k}": 0.0 for k in RECALL_KS}, "mAP": 0.0}
        with torch.no_grad():
            scores = (heads["text"](self.query_feats) @ heads["image"](self.image_feats).T).cpu().numpy()
        return recall_at(scores, self.relevant)


def recall_at(scores: np.ndarray, relevant: np.ndarray, ks=RECALL_KS) -> dict[str, float]:
    """(q, n) scores and (q, n) bool relevance -> {"R@k": fraction of queries with a relevant item in the top k,
    "mAP": mean average precision}."""
    order = np.argsort(-scores, axis=1, kind="stable")
    hits = np.take_along_axis(relevant, order, axis=1)
    out = {f"R@{k}": float(hits[:, :k].any(1).mean()) for k in ks}
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    out["mAP"] = float(((precision * hits).sum(1) / np.maximum(hits.sum(1), 1)).mean())
    return out


def _progress(config: TrainConfig):
    from tqdm import tqdm

    return tqdm(total=config.epochs, desc="training", unit="epoch", disable=not config.progress, dynamic_ncols=True)
