"""A collection on disk and the queries it answers. The Python API the CLI and the server use.

    coll = Collection.open("photos.ns")
    coll.search(text="a beach at sunset", k=10)
    coll.search(id=12, encoder="gist")
    coll.search(query=[{"text": "beach", "weight": 1}, {"id": 12, "weight": -0.5}])
    coll.search(id=12, filter={"path_prefix": "/photos/2019/", "min_width": 1024}, exclude=[12], collapse=True)
    coll.search_batch([{"id": 3}, {"image": "a.jpg"}], k=5)
"""
from __future__ import annotations

import io
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass

import numpy as np

from .embeddings import EmbeddingMatrix, load_matrix
from .encoders import IMAGE, TEXT, Encoder, create_encoder
from .encoders.threads import QUERY_THREADS, intra_op_threads
from .errors import ImageError, InvalidQuery, NotACollection, UnknownEncoder, UnknownItem, UnsupportedModality
from .filters import ItemTable, SearchFilter, allowed_ids, parse_filter
from .images import DEFAULT_MAX_PIXELS, decode_image, load_image
from .pca import PCA, PCA_FILE, fit_pca, prefiltered_search
from .search import exact_search
from .store import Item, ItemStore
from .tar_members import is_member_key, read_member
from .writelock import write_lock

FORMAT_VERSION = 1
MANIFEST = "collection.json"
QUERY_KINDS = ("image", "text", "id", "vector", "query")
# The default image encoder: the best the collection holds. A trained model first (it ranks with what the
# collection taught it), then CLIP, the CNN, GIST (scene layout), and tiny images (colour layout) last.
IMAGE_ENCODER_PREFERENCE = ("triplet", "clip", "cnn", "gist", "gist-gray", "lab-layout", "tiny", "tiny-gray")
# Descriptors made for the image methods rather than for people searching: luminance-only ones for
# colorization, colour layout for scene completion. The page offers them after the others.
HELPER_KINDS = ("gist-gray", "tiny-gray", "lab-layout")
MAX_BATCH = 1024
# A query sees what other processes committed up to this long before it: the change check runs at most this
# often on the query path (see ``refresh``); an explicit ``refresh()`` always checks.
CHECK_INTERVAL_S = 0.05


@dataclass(frozen=True)
class SearchResult:
    id: int
    score: float  # higher is closer: inner product, or minus the squared L2 distance
    path: str
    caption: str | None
    width: int
    height: int
    sha256: str = ""
    similarity: float = 0.0  # 0..1 for people: the cosine for "ip" encoders, exp(-d / typical d) for "l2"
    group_size: int = 1      # with collapse: how many near-copies (this one included) the result stands for

    def to_dict(self) -> dict:
        return {"id": self.id, "score": self.score, "similarity": self.similarity, "path": self.path,
                "caption": self.caption, "width": self.width, "height": self.height, "sha256": self.sha256,
                "group_size": self.group_size}


class Collection:
    """An opened collection: manifest, item store, embeddings, indexes and the encoders to embed queries."""

    def __init__(self, directory: str, manifest: dict, store: ItemStore, device: str = "auto"):
        self.dir = directory
        self.manifest = manifest
        self.store = store
        self.device = device
        self.query_threads = QUERY_THREADS  # torch threads while embedding one query (encoders.threads)
        self._encoders: dict[str, Encoder] = {}
        self._matrices: dict[str, object] = {}  # embedding matrices, and "pca/<name>" projections
        self._indexes: dict[str, object] = {}
        self._seen = self._version()
        self._checked = time.monotonic()
        self._lock = threading.RLock()

    # -- opening --------------------------------------------------------------------------
    @classmethod
    def open(cls, directory, device: str = "auto", readonly: bool = True) -> "Collection":
        """Open an existing collection; NotACollection if ``directory`` is not one."""
        directory = os.fspath(directory)
        manifest = read_manifest(directory)
        return cls(directory, manifest, ItemStore(os.path.join(directory, "store.lmdb"), readonly=readonly), device)

    @classmethod
    def create_or_open(cls, directory, device: str = "auto") -> "Collection":
        """Open for writing, creating an empty collection first if ``directory`` holds none."""
        directory = os.fspath(directory)
        if not os.path.exists(os.path.join(directory, MANIFEST)):
            # Only an empty folder, or one a killed creation left (store but no manifest yet), is taken.
            killed = {"store.lmdb", ".write.lock", MANIFEST + ".tmp"}  # what a creation killed part-way can leave
            leftovers = set(os.listdir(directory)) - killed if os.path.isdir(directory) else set()
            if leftovers:
                raise NotACollection(f"{directory} is not empty and holds no {MANIFEST}; refusing to write there")
            os.makedirs(directory, exist_ok=True)
            ItemStore(os.path.join(directory, "store.lmdb")).close()
            # The manifest is written last: its presence means the collection is whole.
            write_manifest(directory, {"format": FORMAT_VERSION, "encoders": []})
        return cls.open(directory, device=device, readonly=False)

    def close(self) -> None:
        self.store.close()

    # -- encoders -------------------------------------------------------------------------
    @property
    def encoder_names(self) -> list[str]:
        return [e["name"] for e in self.manifest["encoders"]]

    def encoder_spec(self, name: str) -> dict:
        for spec in self.manifest["encoders"]:
            if spec["name"] == name:
                return spec
        raise UnknownEncoder(f"this collection has no encoder {name!r}; it has: {', '.join(self.encoder_names) or 'none'}")

    def encoder(self, name: str) -> Encoder:
        """The collection's encoder ``name``, configured as when its embeddings were made (cached)."""
        with self._lock:
            if name not in self._encoders:
                spec = self.encoder_spec(name)
                encoder = create_encoder(spec.get("kind", name), device=self.device, **spec["config"])
                encoder.name = name  # a trained model answers to its own name ("text"), not its kind
                encoder.attach(self.dir)
                self._encoders[name] = encoder
            return self._encoders[name]

    def storage(self, name: str) -> str:
        """Where encoder ``name``'s embeddings and index live (``embeddings/<storage>/``, ``parts/<storage>``,
        ``indexes/<storage>.*``): its name, or for a trained model its name and generation ("text@g2"), so a
        retrained model is written beside the one in use and swapped in by one manifest write."""
        spec = next((s for s in self.manifest["encoders"] if s["name"] == name), {})
        return spec.get("storage", name)  # an encoder not yet recorded (its first commit) stores under its name

    def parts(self, name: str) -> list[dict]:
        """The recorded embedding shards of encoder ``name``."""
        return self.store.parts(self.storage(name))

    def embedding_dir(self, name: str) -> str:
        return os.path.join(self.dir, "embeddings", self.storage(name))

    def add_encoder(self, encoder: Encoder) -> None:
        """Record a new encoder in the manifest (its embeddings are made by the indexer)."""
        if encoder.name in self.encoder_names:
            old = self.encoder_spec(encoder.name)
            if old["config"] != encoder.config:
                raise UnknownEncoder(f"encoder {encoder.name!r} exists with config {old['config']}, not {encoder.config}")
            return
        self.manifest["encoders"].append(encoder.describe())
        write_manifest(self.dir, self.manifest)
        self._encoders[encoder.name] = encoder

    def remove_encoder(self, name: str, missing_ok: bool = False) -> None:
        """Remove encoder ``name`` with its embeddings, PCA, index and (for a trained model) weights, under the
        write lock.

        The manifest goes first, so from then on nothing reads the encoder; a crash part-way leaves only
        unreferenced files and shard records, which adding an encoder of that name clears again.
        UnknownEncoder if the collection has no trace of ``name`` (unless ``missing_ok``).
        """
        with write_lock(self.dir):
            keys = self.storage_keys(name)
            if name in self.encoder_names:
                self.manifest["encoders"] = [e for e in self.manifest["encoders"] if e["name"] != name]
                write_manifest(self.dir, self.manifest)
            elif not keys:
                if missing_ok:
                    return
                raise UnknownEncoder(f"this collection has no encoder {name!r}; it has: "
                                     f"{', '.join(self.encoder_names) or 'none'}")
            for key in keys:
                self.drop_storage(key)
            shutil.rmtree(os.path.join(self.dir, "models", name), ignore_errors=True)
            with self._lock:
                self._encoders.pop(name, None)
                self._matrices.pop(name, None)
                self._matrices.pop("pca/" + name, None)
                self._indexes.pop(name, None)

    def storage_keys(self, name: str) -> list[str]:
        """Every storage key of encoder ``name`` with something on disk: ``name``, and ``name@...`` generations."""
        emb = os.path.join(self.dir, "embeddings")
        keys = {k for k in (os.listdir(emb) if os.path.isdir(emb) else []) if k == name or k.startswith(name + "@")}
        keys |= {k for k in self.store.part_keys() if k == name or k.startswith(name + "@")}
        return sorted(keys)

    def drop_storage(self, key: str) -> None:
        """Delete one storage key's shard records, shards and index files (caller holds the write lock)."""
        from .index.storage import index_dir

        if self.store.parts(key):
            with self.store.write() as w:
                w.delete_meta(f"parts/{key}")
        shutil.rmtree(os.path.join(self.dir, "embeddings", key), ignore_errors=True)
        directory = index_dir(self.dir)
        if os.path.isdir(directory):
            meta = os.path.join(directory, key + ".json")
            if os.path.exists(meta):
                os.remove(meta)  # first: without its record, no reader opens the index files
            for f in os.listdir(directory):
                if f.startswith(key + "."):
                    os.remove(os.path.join(directory, f))

    def default_encoder(self, modality: str = IMAGE) -> str:
        """The encoder a query of ``modality`` uses when none is named. Images: the best image encoder held
        (``IMAGE_ENCODER_PREFERENCE``; an encoder of an unknown kind ranks after the known ones, in manifest
        order). Text: the first encoder that takes text."""
        names = [n for n in self.encoder_names if modality in self.encoder_spec(n)["modalities"]]
        if modality == IMAGE and names:
            rank = {name: i for i, name in enumerate(IMAGE_ENCODER_PREFERENCE)}
            return min(names, key=lambda n: (rank.get(_kind(self.encoder_spec(n)), len(rank)), names.index(n)))
        if names:
            return names[0]
        if modality == TEXT:
            from .encoders import encoder_class, list_encoders

            takes_text = [n for n in list_encoders() if TEXT in encoder_class(n).modalities]
            raise UnsupportedModality(f"no encoder of this collection takes text (it has {', '.join(self.encoder_names)}); "
                                      f"encoders that take text: {', '.join(takes_text)}")
        raise UnknownEncoder("this collection has no encoders yet")

    def encoder_kind(self, name: str) -> str:
        """What kind of encoder ``name`` is ("triplet" for a trained model named "text"; see ``_kind``)."""
        return _kind(self.encoder_spec(name))

    # -- items ----------------------------------------------------------------------------
    def item(self, item_id: int) -> Item:
        return self.store.item(int(item_id))

    def thumbnail(self, item_id: int) -> bytes:
        return self.store.thumbnail(int(item_id))

    def load_image(self, item_id: int, min_side: int | None = None):
        """The item's image as upright RGB PIL: from its source file, or its thumbnail if the file is gone."""
        item = self.item(item_id)
        for source in [item.path, *item.aliases]:
            try:
                if is_member_key(source):
                    return decode_image(read_member(source), min_side=min_side).image
                return load_image(source, min_side=min_side)
            except (ImageError, OSError, KeyError):
                continue
        return decode_image(self.thumbnail(item_id)).image

    @property
    def count(self) -> int:
        """Live items (replaced ones excluded)."""
        return self.store.count("items") - len(self.store.deleted_ids())

    # -- embeddings and indexes --------------------------------------------------------------
    def embedding_matrix(self, name: str) -> EmbeddingMatrix:
        """All live embeddings of encoder ``name`` (cached until the collection changes)."""
        self.refresh(CHECK_INTERVAL_S)
        with self._lock:
            if name not in self._matrices:
                spec = self.encoder_spec(name)
                self._matrices[name] = load_matrix(self.embedding_dir(name), self.parts(name), spec["dim"],
                                                   exclude=self.store.deleted_ids())
            return self._matrices[name]

    def knn(self, name: str, queries: np.ndarray, k: int, prefilter: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(nq, d) float32 queries -> (D, ids) with faiss conventions, over live items.

        Uses the built ANN index when there is one, else exact search; ``prefilter=N`` instead shortlists
        N items in the encoder's fitted PCA space and re-ranks them exactly.
        """
        metric = self.encoder_spec(name)["metric"]
        if prefilter:
            matrix = self.embedding_matrix(name)
            pca, projected = self.pca(name)
            D, rows = prefiltered_search(matrix.vectors, projected, pca, queries, k, metric, prefilter)
            return D, np.where(rows >= 0, matrix.ids[np.maximum(rows, 0)], -1)
        index = self._index(name)
        if index is not None:
            deleted = set(self.store.deleted_ids())
            D, I = index.search(queries, k + len(deleted))
            return _drop_ids(D, I, deleted, k)
        matrix = self.embedding_matrix(name)
        D, rows = exact_search(matrix.searchable(), queries, k, metric)
        return D, np.where(rows >= 0, matrix.ids[np.maximum(rows, 0)], -1)

    def build_index(self, name: str, factory: str | None = None, **options) -> dict:
        """Build or update the ANN index of encoder ``name`` (see ``index.build_collection_index``).

        This process keeps answering from the old index until the new one is saved and swapped in. Holds the
        write lock (CollectionBusy while another process indexes or builds).
        """
        from .index import build_collection_index

        spec = self.encoder_spec(name)
        with write_lock(self.dir):
            self.refresh()          # everything committed before the lock, not as of the last query's check
            report = build_collection_index(self.dir, self.storage(name), self.embedding_matrix(name), factory=factory,
                                            auto=factory is None, metric=spec["metric"],
                                            live=self._indexes.get(name), **options)
        self.refresh()
        return report

    def pca(self, name: str) -> tuple[PCA, np.ndarray]:
        """The encoder's fitted PCA and the projected embeddings (n, p) float32, rows as embedding_matrix."""
        path = os.path.join(self.dir, "embeddings", name, PCA_FILE)
        with self._lock:
            key = "pca/" + name
            if key not in self._matrices:
                if not os.path.exists(path):
                    raise InvalidQuery(f"encoder {name!r} has no PCA; fit one with `nearsight fit-pca -c {self.dir} --encoder {name}`")
                pca = PCA.load(path)
                self._matrices[key] = (pca, pca.project(self.embedding_matrix(name).vectors))
            return self._matrices[key]

    def fit_pca(self, name: str, dim: int) -> PCA:
        """Fit and store a PCA of the encoder's embeddings (replacing any earlier one)."""
        with write_lock(self.dir):
            self.refresh()
            pca = fit_pca(self.embedding_matrix(name).vectors, dim)
            pca.save(os.path.join(self.dir, "embeddings", name, PCA_FILE))
        with self._lock:
            self._matrices.pop("pca/" + name, None)
        return pca

    def _index(self, name: str):
        """The built ANN index of an encoder, or None when none is built (exact search then)."""
        with self._lock:
            if name not in self._indexes:
                self._indexes[name] = None
                if os.path.exists(os.path.join(self.dir, "indexes", self.storage(name) + ".json")):
                    from .index import load_index
                    self._indexes[name] = load_index(self.dir, self.storage(name), self.embedding_matrix(name),
                                                     metric=self.encoder_spec(name)["metric"])
            return self._indexes[name]

    def refresh(self, max_age: float = 0.0) -> bool:
        """Drop cached embeddings and indexes if another process changed the collection. True if it did.

        ``max_age``: skip the check when one ran less than that many seconds ago. What runs on every query
        passes ``CHECK_INTERVAL_S``: its few system calls each give up the GIL, which a busy server's other
        threads then hold for milliseconds (a third of a 1M-item server's time went there, twice a search)."""
        now = time.monotonic()
        if max_age and now - self._checked < max_age:
            return False
        self._checked = now
        version = self._version()
        if version == self._seen:
            return False
        with self._lock:
            self._seen = version
            old = {spec["name"]: spec for spec in self.manifest["encoders"]}
            self.manifest = read_manifest(self.dir)
            new = {spec["name"]: spec for spec in self.manifest["encoders"]}
            for name in [n for n in self._encoders if old.get(n) != new.get(n)]:
                del self._encoders[name]  # retrained or removed by another process: rebuild from the new spec
            self._matrices.clear()
            self._indexes.clear()
        return True

    def _version(self):
        """What another process's commit changes: the store's generation, the manifest, and which files the
        indexes and fitted PCAs are. Every writer renames a new file over the old one, so a file's inode says
        whether it changed; the index directory's inodes come with its listing, without a stat a file (this
        runs on every search)."""
        try:
            with os.scandir(os.path.join(self.dir, "indexes")) as entries:
                indexes = tuple(sorted((e.name, e.inode()) for e in entries))
        except FileNotFoundError:
            indexes = ()
        pcas = []
        for name in self.encoder_names:
            try:
                pcas.append(os.stat(os.path.join(self.dir, "embeddings", name, PCA_FILE)).st_ino)
            except FileNotFoundError:
                pcas.append(0)
        manifest = os.stat(os.path.join(self.dir, MANIFEST))
        return self.store.generation(), manifest.st_ino, manifest.st_mtime_ns, indexes, tuple(pcas)

    # -- queries --------------------------------------------------------------------------
    def query_vector(self, encoder: str, image=None, text=None, id=None, vector=None, query=None) -> np.ndarray:
        """Exactly one query -> (d,) float32 in the encoder's space (unit norm for "ip" encoders)."""
        kind, value = _one_query(image=image, text=text, id=id, vector=vector, query=query)
        spec = self.encoder_spec(encoder)
        if kind == "query":
            v = self._combine(encoder, value)
        elif kind == "vector":
            v = np.asarray(value, dtype=np.float32).reshape(-1)
            if v.shape != (spec["dim"],) or not np.isfinite(v).all():
                raise InvalidQuery(f"vector must be {spec['dim']} finite numbers for encoder {encoder!r}, got shape {np.shape(value)}")
        elif kind == "id":
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise InvalidQuery(f"id must be an integer, got {value!r}")
            try:
                v = self.embedding_matrix(encoder).reconstruct([value])[0]
            except UnknownItem:
                self.item(value)  # "no item with id" for an id the collection never had
                raise
        elif kind == "text":
            if not isinstance(value, str) or not value.strip():
                raise InvalidQuery("text must be a non-empty string")
            if TEXT not in spec["modalities"]:
                self.encoder(encoder).encode_text([value])  # raises UnsupportedModality naming text encoders
            model = self.encoder(encoder)
            with self._query_threads(model):
                v = model.encode_text([value])[0]
        else:
            model = self.encoder(encoder)
            # decoded exactly as ingest decoded it for this encoder (its draft size), so a file searched
            # by itself scores 1.0 / distance 0
            image = _as_image(value, min_side=model.draft_size)
            with self._query_threads(model):
                v = model.embed_images([image])[0]
        return _unit(v) if spec["metric"] == "ip" else v

    def _query_threads(self, model: Encoder):
        """The per-call thread policy for embedding one query (``encoders.threads``)."""
        if hasattr(model, "load"):
            model.load()  # torch is imported before the thread count is set, not by the first call itself
        return intra_op_threads(self.query_threads)

    def _combine(self, encoder: str, terms) -> np.ndarray:
        """Query arithmetic: the weighted sum of the terms' vectors."""
        if not isinstance(terms, (list, tuple)) or not terms:
            raise InvalidQuery("query must be a non-empty list of terms like {\"text\": \"beach\", \"weight\": 1}")
        total = np.zeros(self.encoder_spec(encoder)["dim"], np.float32)
        for term in terms:
            if not isinstance(term, dict):
                raise InvalidQuery(f"each query term must be an object, got {term!r}")
            term = dict(term)
            weight = term.pop("weight", 1.0)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not np.isfinite(weight):
                raise InvalidQuery(f"term weight must be a number, got {weight!r}")
            if "query" in term:
                raise InvalidQuery("query terms cannot nest")
            total += float(weight) * self.query_vector(encoder, **_term_kwargs(term))
        if not np.any(total):
            raise InvalidQuery("the weighted query terms cancel out to a zero vector")
        return total

    def search(self, image=None, text=None, id=None, vector=None, query=None, encoder: str | None = None,
               k: int = 10, offset: int = 0, prefilter: int | None = None, filter=None, exclude=(),
               min_score: float | None = None, min_similarity: float | None = None,
               collapse: bool | float = False) -> list[SearchResult]:
        """Ranked items for one query (see ``query_vector``), best first, ``k`` of them after ``offset``.

        ``prefilter=N``: shortlist N items in the encoder's PCA space first (see ``knn``).
        ``filter``: a ``SearchFilter`` or a dict of its fields, applied inside the k-NN search (k results
        come back however selective it is); ``exclude``: ids never returned; ``min_score`` /
        ``min_similarity``: drop results below; ``collapse``: one result per group of near-copies, each with
        its ``group_size`` (True: the encoder's measured copy threshold, ``collapse.COPY_THRESHOLDS``; or a
        similarity threshold in (0, 1], in the units of ``SearchResult.similarity``).
        """
        kind, value = _one_query(image=image, text=text, id=id, vector=vector, query=query)
        return self.search_batch([{kind: value}], encoder=encoder, k=k, offset=offset, prefilter=prefilter,
                                 filter=filter, exclude=exclude, min_score=min_score,
                                 min_similarity=min_similarity, collapse=collapse)[0]

    def search_batch(self, queries, encoder: str | None = None, k: int = 10, offset: int = 0,
                     prefilter: int | None = None, filter=None, exclude=(), min_score: float | None = None,
                     min_similarity: float | None = None, collapse: bool | float = False) -> list[list[SearchResult]]:
        """Many queries in one k-NN call: a list of {"image"|"text"|"id"|"vector"|"query": value} dicts, or an
        (n, d) array of vectors. Returns one ranked list per query, with the options of ``search``."""
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10000:
            raise InvalidQuery(f"k must be an integer from 1 to 10000, got {k!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidQuery(f"offset must be a non-negative integer, got {offset!r}")
        if isinstance(queries, np.ndarray):
            queries = [{"vector": row} for row in np.atleast_2d(queries)]
        if not isinstance(queries, (list, tuple)) or not 1 <= len(queries) <= MAX_BATCH:
            raise InvalidQuery(f"a batch is a list of 1 to {MAX_BATCH} queries, got {type(queries).__name__} "
                               f"of {len(queries) if hasattr(queries, '__len__') else '?'}")
        kinds = []
        for q in queries:
            if not isinstance(q, dict):
                raise InvalidQuery(f"each query of a batch must be an object like {{\"id\": 3}}, got {q!r:.100}")
            kinds.append(_one_query(**_term_kwargs(dict(q))))
        flt = parse_filter(filter)
        if exclude is not None and len(exclude):
            flt = SearchFilter(**{**flt.__dict__, "exclude": tuple(sorted(set(flt.exclude) | set(
                parse_filter({"exclude": list(exclude)}).exclude)))})
        threshold = _collapse_threshold(collapse, None)  # checked before any query is embedded
        for name, bound in (("min_score", min_score), ("min_similarity", min_similarity)):
            if bound is not None and (isinstance(bound, bool) or not isinstance(bound, (int, float))
                                      or not np.isfinite(bound)):
                raise InvalidQuery(f"{name} must be a number, got {bound!r}")
        if prefilter and not flt.empty:
            raise InvalidQuery("prefilter cannot be combined with a filter or exclude; leave one out")
        if encoder is None:
            encoder = self.default_encoder(TEXT if any(_uses_text(kind, value) for kind, value in kinds) else IMAGE)
        Q = np.stack([self.query_vector(encoder, **{kind: value}) for kind, value in kinds]).astype(np.float32)
        metric = self.encoder_spec(encoder)["metric"]
        depth = k + offset
        if threshold is not None:  # copies of a result rank next to it: fetch enough to fill k groups
            threshold = _collapse_threshold(collapse, self.encoder_kind(encoder))
            depth = min(max(4 * depth, depth + 50), 10 * 10000)
        if flt.empty:
            D, I = self.knn(encoder, Q, depth, prefilter=prefilter)
        else:
            D, I = self.filtered_knn(encoder, Q, depth, flt)
        ref = self.similarity_scale(encoder) if metric == "l2" else None
        out = []
        for d_row, i_row in zip(D, I):
            found = i_row >= 0
            ids, dists = i_row[found], d_row[found]
            groups = np.ones(len(ids), np.int64)
            if threshold is not None and len(ids):
                from .collapse import collapse_ranked

                reps, group = collapse_ranked(self.embedding_matrix(encoder).reconstruct(ids), threshold, metric,
                                              ref if ref is not None else 1.0)
                groups = np.bincount(group, minlength=len(ids))[reps]
                ids, dists = ids[reps], dists[reps]
            ranked = []
            for item_id, d, size in zip(ids[offset:offset + k], dists[offset:offset + k], groups[offset:offset + k]):
                score = float(d) if metric == "ip" else -float(d)
                similarity = max(0.0, min(1.0, score)) if ref is None else float(np.exp(-float(d) / ref))
                if (min_score is not None and score < min_score) or (
                        min_similarity is not None and similarity < min_similarity):
                    break  # ranked lists: everything after is lower still
                ranked.append((int(item_id), score, round(similarity, 6), int(size)))
            items = self.store.items([r[0] for r in ranked])
            out.append([SearchResult(item_id, score, item.path, item.caption, item.width, item.height, item.sha256,
                                     similarity, size) for (item_id, score, similarity, size), item in zip(ranked, items)])
        return out

    def filtered_knn(self, name: str, queries: np.ndarray, k: int, flt: SearchFilter) -> tuple[np.ndarray, np.ndarray]:
        """``knn`` restricted by a filter, inside the search (see ``filtered_knn``)."""
        from .filtered_knn import filtered_knn

        allowed = allowed_ids(flt, self.item_table)
        denied = set(flt.exclude) | set(self.store.deleted_ids())
        return filtered_knn(self.embedding_matrix(name), self._index(name), queries, k,
                            self.encoder_spec(name)["metric"], allowed=allowed, denied=denied)

    def item_table(self) -> ItemTable:
        """Columns of item metadata for filters (cached until the collection changes)."""
        self.refresh(CHECK_INTERVAL_S)
        with self._lock:
            if "items" not in self._matrices:
                self._matrices["items"] = ItemTable(self.store.iter_items())
            return self._matrices["items"]

    def similarity_scale(self, name: str) -> float:
        """The mean squared L2 distance between random pairs of an "l2" encoder's embeddings (cached): the
        scale of ``similarity = exp(-d / scale)``, so 1 is identical and about 0.37 a typical unrelated pair."""
        self.refresh(CHECK_INTERVAL_S)
        with self._lock:
            key = "scale/" + name
            if key not in self._matrices:
                vectors = self.embedding_matrix(name).vectors
                rng = np.random.default_rng(0)
                if len(vectors) < 2:
                    self._matrices[key] = 1.0
                else:
                    a, b = rng.integers(0, len(vectors), (2, 2000))
                    d = ((np.asarray(vectors[np.sort(a)], np.float32) - np.asarray(vectors[np.sort(b)], np.float32)) ** 2).sum(1)
                    self._matrices[key] = float(np.mean(d)) or 1.0
            return self._matrices[key]

    # -- reporting ------------------------------------------------------------------------
    def info(self) -> dict:
        encoders = []
        for spec in self.manifest["encoders"]:
            name = spec["name"]
            index_meta = os.path.join(self.dir, "indexes", self.storage(name) + ".json")
            entry = {"name": name, "dim": spec["dim"], "metric": spec["metric"], "modalities": spec["modalities"],
                     "config": spec["config"], "embedded": sum(p["count"] for p in self.parts(name)),
                     "bytes": _dir_bytes(self.embedding_dir(name))}
            if "kind" in spec:
                entry["kind"] = spec["kind"]
            training = self.encoder(name).training_report() if spec.get("kind") == "triplet" else None
            if training:
                entry["training"] = training
            if os.path.exists(index_meta):
                with open(index_meta) as f:
                    entry["index"] = json.load(f)
            encoders.append(entry)
        return {"path": os.path.abspath(self.dir), "format": self.manifest["format"], "items": self.count,
                "sources": self.store.count("paths"), "failures": self.store.count("failures"),
                "encoders": encoders,
                "bytes": {"store": self.store.disk_bytes(), "embeddings": _dir_bytes(os.path.join(self.dir, "embeddings")),
                          "indexes": _dir_bytes(os.path.join(self.dir, "indexes"))}}


def read_manifest(directory: str) -> dict:
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise NotACollection(f"no such collection directory: {directory}")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError:
        raise NotACollection(f"{directory} is not a nearsight collection (no {MANIFEST})") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise NotACollection(f"{path} is unreadable: {exc}") from None
    if manifest.get("format") != FORMAT_VERSION:
        raise NotACollection(f"{path} has format {manifest.get('format')!r}; this nearsight reads format {FORMAT_VERSION}")
    return manifest


def write_manifest(directory: str, manifest: dict) -> None:
    path = os.path.join(directory, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(manifest, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _as_image(value, min_side: int | None = None):
    """A query image: file bytes, a path or an open file are decoded with ``min_side`` (the encoder's draft size,
    as ingest does); a PIL image is taken as it is, already decoded by the caller."""
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (bytes, bytearray)):
        return decode_image(bytes(value), min_side=min_side, max_pixels=DEFAULT_MAX_PIXELS).image
    if isinstance(value, (str, os.PathLike)):
        return load_image(value, min_side=min_side)
    if isinstance(value, io.IOBase):
        return decode_image(value.read(), min_side=min_side).image
    raise InvalidQuery(f"image must be a PIL image, bytes or a file path, got {type(value).__name__}")


def _one_query(**kinds) -> tuple[str, object]:
    given = {k: v for k, v in kinds.items() if v is not None}
    if len(given) != 1:
        raise InvalidQuery(f"give exactly one of {', '.join(QUERY_KINDS)}; got {', '.join(given) or 'none'}")
    return next(iter(given.items()))


def _term_kwargs(term: dict) -> dict:
    unknown = set(term) - set(QUERY_KINDS)
    if unknown:
        raise InvalidQuery(f"unknown query term field(s) {sorted(unknown)}; use one of image, text, id, vector plus weight")
    return term


def _uses_text(kind: str, value) -> bool:
    return kind == "text" or (kind == "query" and isinstance(value, (list, tuple))
                              and any(isinstance(t, dict) and "text" in t for t in value))


def _collapse_threshold(collapse, kind: str | None) -> float | None:
    """collapse=False/None -> None; True -> the copy threshold measured for the encoder ``kind`` (None: not
    known yet, the default); a number in (0, 1] -> that similarity."""
    from .collapse import DEFAULT_THRESHOLD, copy_threshold

    if collapse is None or collapse is False:
        return None
    if collapse is True:
        return DEFAULT_THRESHOLD if kind is None else copy_threshold(kind)
    if isinstance(collapse, (int, float)) and not isinstance(collapse, bool) and 0 < collapse <= 1:
        return float(collapse)
    raise InvalidQuery(f"collapse must be true, false or a similarity threshold in (0, 1], got {collapse!r}")


def _kind(spec: dict) -> str:
    """What kind of encoder a manifest entry is: its name, an explicit "kind", or the name's first part
    ("triplet-cnn" -> "triplet"), whichever ``IMAGE_ENCODER_PREFERENCE`` knows."""
    for candidate in (spec["name"], spec.get("kind"), spec.get("config", {}).get("kind"),
                      spec["name"].replace(":", "-").split("-")[0]):
        if candidate in IMAGE_ENCODER_PREFERENCE:
            return candidate
    return spec["name"]


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


def _drop_ids(D, I, drop: set, k: int):
    if not drop:
        return D[:, :k], I[:, :k]
    outD, outI = np.full((len(D), k), np.nan, np.float32), np.full((len(D), k), -1, np.int64)
    for r in range(len(D)):
        keep = [j for j in range(I.shape[1]) if I[r, j] not in drop][:k]
        outD[r, :len(keep)], outI[r, :len(keep)] = D[r, keep], I[r, keep]
    return outD, outI


def _dir_bytes(path: str) -> int:
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total
