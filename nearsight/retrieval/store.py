"""The LMDB item store of a collection: item metadata, thumbnails, source paths, content hashes, failures.

Named databases (keys -> values):
  items    id (8-byte big-endian) -> JSON metadata
  thumbs   id -> JPEG bytes
  paths    source key (absolute path, or "TAR::member") -> id, size, mtime_ns (3 x 8 bytes big-endian)
  hashes   sha256 hex -> id
  failures source key -> JSON {"reason", "time"}
  meta     "next_id" -> int, "parts/<encoder>" -> JSON list of shard records, "deleted" -> JSON id list,
           "generation" -> int (bumped by every write, so readers can tell when to reload)

One write transaction is the unit of crash safety: the ingest pipeline writes and fsyncs its shard files first,
then records them, with the items they embed, in a single commit.
"""
from __future__ import annotations

import json
import os
import threading
from dataclasses import asdict, dataclass, field

import lmdb
import orjson

from .errors import CollectionBusy, UnknownItem

DB_NAMES = ("items", "thumbs", "paths", "hashes", "failures", "meta")
# A sparse upper bound, not an allocation: LMDB maps this much address space and grows the file as needed.
MAP_SIZE = 1 << 40


def id_key(item_id: int) -> bytes:
    """Fixed-width big-endian key; UnknownItem for an id no collection can hold (negative, over 64 bits)."""
    try:
        return int(item_id).to_bytes(8, "big", signed=False)
    except OverflowError:
        raise UnknownItem(f"no item with id {item_id}") from None


def key_id(key: bytes) -> int:
    return int.from_bytes(key, "big", signed=False)


def source_key(source: str) -> bytes:
    """A source's LMDB key: its UTF-8 bytes, and a file name's own bytes where it is not UTF-8 (Python holds those
    as lone surrogates, which UTF-8 cannot encode)."""
    return source.encode("utf-8", "surrogateescape")


def key_source(key: bytes) -> str:
    """The source of an LMDB key written by ``source_key``."""
    return key.decode("utf-8", "surrogateescape")


def _unpack_path(value: bytes) -> tuple[int, int, int]:
    return tuple(int.from_bytes(value[i:i + 8], "big", signed=True) for i in (0, 8, 16))


@dataclass
class Item:
    """One indexed image. ``path`` is its first source; ``aliases`` other sources with the same content."""
    id: int
    path: str
    sha256: str
    width: int
    height: int
    size: int
    mtime_ns: int
    caption: str | None = None
    aliases: list[str] = field(default_factory=list)
    deleted: bool = False
    replaced_by: int | None = None
    added: float | None = None  # unix time of the commit that added it (None: indexed before this was kept)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def from_json(cls, data: bytes) -> "Item":
        try:
            return cls(**orjson.loads(data))  # a search reads k items: 1.7 us an item against 8
        except orjson.JSONDecodeError:  # a path from a non-UTF-8 file name (a lone surrogate): only json reads it
            return cls(**json.loads(data))


# LMDB allows one environment per file per process: stores opened twice in a process share it (refcounted).
_ENVS: dict[str, list] = {}
_ENVS_LOCK = threading.Lock()


def _open_env(path: str, readonly: bool):
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        if key in _ENVS:
            entry = _ENVS[key]
            if entry[1] and not readonly:
                raise CollectionBusy(f"{path} is open read-only in this process; close it before writing")
            entry[3] += 1
            return entry[0], entry[2]
        if not readonly:
            os.makedirs(path, exist_ok=True)
        env = lmdb.open(path, max_dbs=len(DB_NAMES), map_size=MAP_SIZE, subdir=True,
                        readonly=readonly, lock=True, create=not readonly)
        if readonly:
            dbs = {name: env.open_db(name.encode(), create=False) for name in DB_NAMES}
        else:
            with env.begin(write=True) as txn:  # all databases in one commit: never half-created
                dbs = {name: env.open_db(name.encode(), txn=txn, create=True) for name in DB_NAMES}
        _ENVS[key] = [env, readonly, dbs, 1]
        return env, dbs


def _release_env(path: str) -> None:
    key = os.path.realpath(path)
    with _ENVS_LOCK:
        entry = _ENVS[key]
        entry[3] -= 1
        if entry[3] == 0:
            entry[0].close()
            del _ENVS[key]


class ItemStore:
    """An LMDB environment with the named databases above. Open read-only for serving."""

    def __init__(self, path: str, readonly: bool = False):
        self.path = path
        self.readonly = readonly
        self._closed = False
        self.env, self.db = _open_env(path, readonly)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            _release_env(self.path)

    # -- reads ----------------------------------------------------------------------------
    def _get(self, db: str, key: bytes) -> bytes | None:
        with self.env.begin(db=self.db[db]) as txn:
            value = txn.get(key)
            return bytes(value) if value is not None else None

    def meta(self, key: str, default=None):
        value = self._get("meta", key.encode())
        return json.loads(value) if value is not None else default

    def generation(self) -> int:
        return self.meta("generation", 0)

    def next_id(self) -> int:
        return self.meta("next_id", 0)

    def item(self, item_id: int) -> Item:
        value = self._get("items", id_key(item_id))
        if value is None:
            raise UnknownItem(f"no item with id {item_id}")
        return Item.from_json(value)

    def items(self, item_ids) -> list[Item]:
        """Several items from one read transaction (a search's results: one LMDB round, not k)."""
        with self.env.begin(db=self.db["items"]) as txn:
            values = [txn.get(id_key(int(i))) for i in item_ids]
        missing = [int(i) for i, v in zip(item_ids, values) if v is None]
        if missing:
            raise UnknownItem(f"no item with id {missing[0]}")
        return [Item.from_json(bytes(v)) for v in values]

    def thumbnail(self, item_id: int) -> bytes:
        value = self._get("thumbs", id_key(item_id))
        if value is None:
            raise UnknownItem(f"no item with id {item_id}")
        return value

    def path_entry(self, source: str) -> tuple[int, int, int] | None:
        """(item id, size, mtime_ns) recorded for a source key, or None."""
        value = self._get("paths", source_key(source))
        return _unpack_path(value) if value is not None else None

    def id_for_hash(self, sha256: str) -> int | None:
        value = self._get("hashes", sha256.encode())
        return key_id(value) if value is not None else None

    def parts(self, encoder: str) -> list[dict]:
        """Shard records of an encoder, in write order: [{"file": "part-00000", "count": n}, ...]."""
        return self.meta(f"parts/{encoder}", [])

    def part_keys(self) -> list[str]:
        """Every storage key with recorded shards (``parts/<key>`` entries)."""
        with self.env.begin(db=self.db["meta"]) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(b"parts/"):
                return []
            return [bytes(k)[6:].decode() for k, _ in cursor if bytes(k).startswith(b"parts/")]

    def deleted_ids(self) -> list[int]:
        return self.meta("deleted", [])

    def iter_items(self):
        """All items (deleted ones included), in id order."""
        with self.env.begin(db=self.db["items"]) as txn:
            for _, value in txn.cursor():
                yield Item.from_json(bytes(value))

    def failures(self) -> list[tuple[str, str]]:
        with self.env.begin(db=self.db["failures"]) as txn:
            return [(key_source(bytes(k)), json.loads(bytes(v))["reason"]) for k, v in txn.cursor()]

    def count(self, db: str) -> int:
        with self.env.begin() as txn:
            return txn.stat(self.db[db])["entries"]

    def disk_bytes(self) -> int:
        return sum(os.path.getsize(os.path.join(self.path, f)) for f in os.listdir(self.path))

    # -- writes ---------------------------------------------------------------------------
    def write(self) -> "StoreWriter":
        """A write transaction as a context manager; commits on success, aborts on error."""
        return StoreWriter(self)


class StoreWriter:
    """Everything one ingest flush records, committed atomically (bumps the generation)."""

    def __init__(self, store: ItemStore):
        self.store = store
        self.txn = store.env.begin(write=True)

    def __enter__(self) -> "StoreWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.txn.abort()
            return
        self.put_meta("generation", self.get_meta("generation", 0) + 1)
        self.txn.commit()

    def _db(self, name: str):
        return self.store.db[name]

    def get_meta(self, key: str, default=None):
        value = self.txn.get(key.encode(), db=self._db("meta"))
        return json.loads(bytes(value)) if value is not None else default

    def put_meta(self, key: str, value) -> None:
        self.txn.put(key.encode(), json.dumps(value).encode(), db=self._db("meta"))

    def get_item(self, item_id: int) -> Item | None:
        value = self.txn.get(id_key(item_id), db=self._db("items"))
        return Item.from_json(bytes(value)) if value is not None else None

    def put_item(self, item: Item, thumbnail: bytes | None = None) -> None:
        self.txn.put(id_key(item.id), item.to_json(), db=self._db("items"))
        if thumbnail is not None:
            self.txn.put(id_key(item.id), thumbnail, db=self._db("thumbs"))

    def put_path(self, source: str, item_id: int, size: int, mtime_ns: int) -> None:
        value = b"".join(int(x).to_bytes(8, "big", signed=True) for x in (item_id, size, mtime_ns))
        self.txn.put(source_key(source), value, db=self._db("paths"))
        self.txn.delete(source_key(source), db=self._db("failures"))

    def get_path(self, source: str) -> tuple[int, int, int] | None:
        value = self.txn.get(source_key(source), db=self._db("paths"))
        return _unpack_path(bytes(value)) if value is not None else None

    def get_hash(self, sha256: str) -> int | None:
        value = self.txn.get(sha256.encode(), db=self._db("hashes"))
        return key_id(bytes(value)) if value is not None else None

    def put_hash(self, sha256: str, item_id: int) -> None:
        self.txn.put(sha256.encode(), id_key(item_id), db=self._db("hashes"))

    def put_failure(self, source: str, reason: str, when: float) -> None:
        self.txn.put(source_key(source), json.dumps({"reason": reason, "time": when}).encode(), db=self._db("failures"))

    def mark_deleted(self, item_id: int, replaced_by: int | None = None) -> None:
        item = self.get_item(item_id)
        if item is None or item.deleted:
            return
        item.deleted, item.replaced_by = True, replaced_by
        self.put_item(item)
        self.put_meta("deleted", sorted(set(self.get_meta("deleted", [])) | {item_id}))

    def delete_meta(self, key: str) -> None:
        self.txn.delete(key.encode(), db=self._db("meta"))

    def add_part(self, encoder: str, record: dict) -> None:
        self.put_meta(f"parts/{encoder}", self.get_meta(f"parts/{encoder}", []) + [record])
