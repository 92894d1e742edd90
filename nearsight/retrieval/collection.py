"""A collection on disk and the queries it answers. The Python API the CLI and the server use.

    coll = Collection.open("photos.ns")
    coll.search(text="a beach at sunset", k=10)
    coll.search(id=12, encoder="gist")
    coll.search(query=[{"text": "beach", "weight": 1}, {"id": 12, "weight": -0.5}])
"""
from __future__ import annotations

import io
import json
import os
import threading
from dataclasses import dataclass

import numpy as np

from .embeddings import EmbeddingMatrix, load_matrix
from .encoders import IMAGE, TEXT, Encoder, create_encoder
from .errors import ImageError, InvalidQuery, NotACollection, UnknownEncoder, UnsupportedModality
from .images import DEFAULT_MAX_PIXELS, decode_image, load_image
from .pca import PCA, PCA_FILE, fit_pca, prefiltered_search
from .search import exact_search
from .store import Item, ItemStore
from .tar_members import is_member_key, read_member

FORMAT_VERSION = 1
MANIFEST = "collection.json"
QUERY_KINDS = ("image", "text", "id", "vector", "query")


@dataclass(frozen=True)
class SearchResult:
    id: int
    score: float  # higher is closer: inner product, or minus the squared L2 distance
    path: str
    caption: str | None
    width: int
    height: int

    def to_dict(self) -> dict:
        return {"id": self.id, "score": self.score, "path": self.path, "caption": self.caption,
                "width": self.width, "height": self.height}


class Collection:
    """An opened collection: manifest, item store, embeddings, indexes and the encoders to embed queries."""

    def __init__(self, directory: str, manifest: dict, store: ItemStore, device: str = "auto"):
        self.dir = directory
        self.manifest = manifest
        self.store = store
        self.device = device
        self._encoders: dict[str, Encoder] = {}
        self._matrices: dict[str, object] = {}  # embedding matrices, and "pca/<name>" projections
        self._indexes: dict[str, object] = {}
        self._seen = self._version()
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
            leftovers = set(os.listdir(directory)) - {"store.lmdb", ".write.lock"} if os.path.isdir(directory) else set()
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
        raise UnknownEncoder(f"collection {self.dir} has no encoder {name!r}; it has: {', '.join(self.encoder_names) or 'none'}")

    def encoder(self, name: str) -> Encoder:
        """The collection's encoder ``name``, configured as when its embeddings were made (cached)."""
        with self._lock:
            if name not in self._encoders:
                spec = self.encoder_spec(name)
                self._encoders[name] = create_encoder(name, device=self.device, **spec["config"])
            return self._encoders[name]

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

    def default_encoder(self, modality: str = IMAGE) -> str:
        for name in self.encoder_names:
            if modality in self.encoder_spec(name)["modalities"]:
                return name
        if modality == TEXT:
            from .encoders import encoder_class, list_encoders

            takes_text = [n for n in list_encoders() if TEXT in encoder_class(n).modalities]
            raise UnsupportedModality(f"no encoder of this collection takes text (it has {', '.join(self.encoder_names)}); "
                                      f"encoders that take text: {', '.join(takes_text)}")
        raise UnknownEncoder(f"collection {self.dir} has no encoders yet")

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
        self.refresh()
        with self._lock:
            if name not in self._matrices:
                spec = self.encoder_spec(name)
                self._matrices[name] = load_matrix(os.path.join(self.dir, "embeddings", name),
                                                   self.store.parts(name), spec["dim"],
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

        This process keeps answering from the old index until the new one is saved and swapped in.
        """
        from .index import build_collection_index

        spec = self.encoder_spec(name)
        report = build_collection_index(self.dir, name, self.embedding_matrix(name), factory=factory,
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
                if os.path.exists(os.path.join(self.dir, "indexes", name + ".json")):
                    from .index import load_index
                    self._indexes[name] = load_index(self.dir, name, self.embedding_matrix(name),
                                                     metric=self.encoder_spec(name)["metric"])
            return self._indexes[name]

    def refresh(self) -> bool:
        """Drop cached embeddings and indexes if another process changed the collection. True if it did."""
        version = self._version()
        if version == self._seen:
            return False
        with self._lock:
            self._seen = version
            self.manifest = read_manifest(self.dir)
            self._matrices.clear()
            self._indexes.clear()
        return True

    def _version(self):
        index_dir = os.path.join(self.dir, "indexes")
        index_mtimes = tuple(sorted((f, os.stat(os.path.join(index_dir, f)).st_mtime_ns)
                                    for f in os.listdir(index_dir))) if os.path.isdir(index_dir) else ()
        pca_mtimes = tuple(os.stat(p).st_mtime_ns for p in (os.path.join(self.dir, "embeddings", n, PCA_FILE)
                                                              for n in self.encoder_names) if os.path.exists(p))
        return self.store.generation(), os.stat(os.path.join(self.dir, MANIFEST)).st_mtime_ns, index_mtimes, pca_mtimes

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
            self.item(value)  # UnknownItem for an id the collection never had
            v = self.embedding_matrix(encoder).reconstruct([value])[0]
        elif kind == "text":
            if not isinstance(value, str) or not value.strip():
                raise InvalidQuery("text must be a non-empty string")
            if TEXT not in spec["modalities"]:
                self.encoder(encoder).encode_text([value])  # raises UnsupportedModality naming text encoders
            v = self.encoder(encoder).encode_text([value])[0]
        else:
            v = self.encoder(encoder).embed_images([_as_image(value)])[0]
        return _unit(v) if spec["metric"] == "ip" else v

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
               k: int = 10, offset: int = 0, prefilter: int | None = None) -> list[SearchResult]:
        """Ranked items for one query (see ``query_vector``), best first, ``k`` of them after ``offset``.

        ``prefilter=N``: shortlist N items in the encoder's PCA space first (see ``knn``).
        """
        if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 10000:
            raise InvalidQuery(f"k must be an integer from 1 to 10000, got {k!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise InvalidQuery(f"offset must be a non-negative integer, got {offset!r}")
        _one_query(image=image, text=text, id=id, vector=vector, query=query)
        if encoder is None:
            encoder = self.default_encoder(TEXT if text is not None else IMAGE)
        q = self.query_vector(encoder, image=image, text=text, id=id, vector=vector, query=query)
        D, I = self.knn(encoder, q[None, :], k + offset, prefilter=prefilter)
        metric = self.encoder_spec(encoder)["metric"]
        results = []
        for d, item_id in zip(D[0][offset:], I[0][offset:]):
            if item_id < 0:
                break
            item = self.item(int(item_id))
            score = float(d) if metric == "ip" else -float(d)
            results.append(SearchResult(int(item_id), score, item.path, item.caption, item.width, item.height))
        return results

    # -- reporting ------------------------------------------------------------------------
    def info(self) -> dict:
        encoders = []
        for spec in self.manifest["encoders"]:
            name = spec["name"]
            emb_dir = os.path.join(self.dir, "embeddings", name)
            index_meta = os.path.join(self.dir, "indexes", name + ".json")
            entry = {"name": name, "dim": spec["dim"], "metric": spec["metric"], "modalities": spec["modalities"],
                     "config": spec["config"], "embedded": sum(p["count"] for p in self.store.parts(name)),
                     "bytes": _dir_bytes(emb_dir)}
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


def _as_image(value):
    from PIL import Image

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, (bytes, bytearray)):
        return decode_image(bytes(value), max_pixels=DEFAULT_MAX_PIXELS).image
    if isinstance(value, (str, os.PathLike)):
        return load_image(value)
    if isinstance(value, io.IOBase):
        return decode_image(value.read()).image
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
