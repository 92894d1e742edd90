"""Per-encoder embedding shards: plain ``.npy`` files other tools can read.

``DIR/embeddings/<encoder>/part-00000.npy`` (n, d) float16 and ``part-00000.ids.npy`` (n,) int64.
A part exists for the collection only once the LMDB store records it; a part file left by a crash before that
commit is simply overwritten by the next write of the same part number.

Reading them (``load_matrix``): an encoder's vectors are the concatenation of its parts. A small one is
concatenated in memory; past ``MAP_MIN_BYTES`` (a million 3072-d tiny vectors are 6 GB of float16) the
concatenation is written once to ``.merged/<key>.npy`` beside the parts and memory-mapped, so a search or a build
holds page cache the kernel can take back rather than a private copy. The key digests the parts' names, sizes and
modification times and the ids left out, so a changed collection makes a new file (the older ones are removed; a
process that has one mapped keeps reading it). The file is derived and disposable: where it cannot be written
(a read-only collection, a full disk) the parts are concatenated in memory as before.
"""
from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from dataclasses import dataclass

import numpy as np

from .errors import UnknownItem

LOG = logging.getLogger(__name__)
MAP_MIN_BYTES = 256 << 20     # concatenations at least this big are memory-mapped from .merged/ (module doc)
MERGED = ".merged"


def part_name(index: int) -> str:
    return f"part-{index:05d}"


def _save_synced(path: str, array: np.ndarray) -> None:
    tmp = path + ".tmp"
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # disk full, Ctrl-C: leave no half-written file behind
        _remove(tmp)
        raise


def _older_than(path: str, seconds: float) -> bool:
    try:
        return os.stat(path).st_mtime < time.time() - seconds
    except OSError:
        return False


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except OSError:
        pass


def write_part(directory: str, index: int, vectors: np.ndarray, ids: np.ndarray) -> dict:
    """Write one shard durably (fsynced, atomically renamed) and return the record the store keeps."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float16)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if vectors.ndim != 2 or len(vectors) != len(ids):
        raise ValueError(f"shard needs (n, d) vectors and (n,) ids, got {vectors.shape} and {ids.shape}")
    os.makedirs(directory, exist_ok=True)
    name = part_name(index)
    try:
        _save_synced(os.path.join(directory, name + ".npy"), vectors)
        _save_synced(os.path.join(directory, name + ".ids.npy"), ids)
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # make the renames themselves durable before the store records the part
        finally:
            os.close(fd)
    except BaseException:
        # No store records this part number yet, so its files are nobody's: do not leave half a part (or a
        # whole one that will never be recorded) taking the space a full disk needs back.
        discard_part(directory, name)
        raise
    return {"file": name, "count": int(len(ids))}


def discard_part(directory: str, name: str) -> None:
    """Remove the files of part ``name`` (one the store never recorded)."""
    for ext in (".npy", ".ids.npy"):
        _remove(os.path.join(directory, name + ext))


@dataclass
class EmbeddingMatrix:
    """All embeddings of one encoder: ``ids`` (n,) int64 and ``vectors`` (n, d) float16, rows aligned."""
    ids: np.ndarray
    vectors: np.ndarray

    def __post_init__(self):
        size = int(self.ids.max()) + 1 if len(self.ids) else 0
        self._row = np.full(size, -1, dtype=np.int64)
        self._row[self.ids] = np.arange(len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    def rows(self, ids) -> np.ndarray:
        """Row positions of item ids; UnknownItem for an id without an embedding."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        ok = (ids >= 0) & (ids < len(self._row))
        rows = np.where(ok, self._row[np.where(ok, ids, 0)], -1)
        if (rows < 0).any():
            raise UnknownItem(f"no embedding for item id {int(ids[rows < 0][0])}")
        return rows

    def known_rows(self, ids) -> np.ndarray:
        """Row positions of those of ``ids`` that have an embedding (others left out, no error)."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        ids = ids[(ids >= 0) & (ids < len(self._row))]
        rows = self._row[ids]
        return rows[rows >= 0]

    def has(self, item_id: int) -> bool:
        return 0 <= item_id < len(self._row) and self._row[item_id] >= 0

    def searchable(self, max_bytes: int = 1 << 31) -> np.ndarray:
        """The vectors for exact search: a cached float32 copy when it fits ``max_bytes`` (saves converting
        float16 on every query), else the float16 rows themselves."""
        if self.vectors.nbytes * 2 > max_bytes:
            return self.vectors
        if not hasattr(self, "_float32"):
            self._float32 = np.asarray(self.vectors, dtype=np.float32)
        return self._float32

    def reconstruct(self, ids) -> np.ndarray:
        """Item ids (m,) -> their embeddings (m, d) float32."""
        rows = self.rows(ids)
        # through a plain ndarray view: np.memmap's own indexing costs more than the read, on every query by id
        vectors = self.vectors.view(np.ndarray) if isinstance(self.vectors, np.memmap) else self.vectors
        return vectors[rows].astype(np.float32)


def load_ids(directory: str, records: list[dict]) -> set[int]:
    """The set of item ids that have an embedding in the recorded parts."""
    out: set[int] = set()
    for r in records:
        out.update(np.load(os.path.join(directory, r["file"] + ".ids.npy")).tolist())
    return out


def load_matrix(directory: str, records: list[dict], dim: int, exclude=()) -> EmbeddingMatrix:
    """The recorded parts as one matrix, dropping the ids in ``exclude``: the part itself when there is one (memory-
    mapped), a memory-mapped merged copy when big (module doc), else a concatenation in memory."""
    if not records:
        return EmbeddingMatrix(np.zeros(0, np.int64), np.zeros((0, dim), np.float16))
    ids = np.concatenate([np.load(os.path.join(directory, r["file"] + ".ids.npy")) for r in records])
    parts = [np.load(os.path.join(directory, r["file"] + ".npy"), mmap_mode="r") for r in records]
    keep = ~np.isin(ids, np.asarray(list(exclude), dtype=np.int64)) if len(exclude) else None
    if keep is not None and keep.all():
        keep = None
    rows = int(keep.sum()) if keep is not None else len(ids)
    vectors = None
    if len(parts) == 1 and keep is None:
        vectors = parts[0]
    elif rows * dim * 2 >= MAP_MIN_BYTES:
        vectors = _merged(directory, records, parts, keep, rows, dim)
    if vectors is None:
        vectors = np.concatenate(parts)
        if keep is not None:
            vectors = vectors[keep]
    return EmbeddingMatrix(ids[keep] if keep is not None else ids, vectors)


def _merged(directory: str, records: list[dict], parts: list[np.ndarray], keep, rows: int, dim: int):
    """The kept rows of ``parts`` in ``.merged/<key>.npy``, memory-mapped (written first when missing); None where
    it cannot be written."""
    h = hashlib.sha256()
    for r in records:
        st = os.stat(os.path.join(directory, r["file"] + ".npy"))
        h.update(f"{r['file']}|{st.st_size}|{st.st_mtime_ns};".encode())
    if keep is not None:
        h.update(np.packbits(keep).tobytes())
    folder = os.path.join(directory, MERGED)
    path = os.path.join(folder, h.hexdigest()[:24] + ".npy")
    try:
        merged = np.load(path, mmap_mode="r")
        if merged.shape == (rows, dim):
            return merged
    except (OSError, ValueError):
        pass
    tmp = f"{path}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        os.makedirs(folder, exist_ok=True)
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(rows, dim))
        at, start = 0, 0
        for part in parts:
            chosen = part if keep is None else part[keep[start:start + len(part)]]
            out[at:at + len(chosen)] = chosen
            at, start = at + len(chosen), start + len(part)
        out.flush()
        del out
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())    # a power cut must not leave a renamed file of zeros under a valid key
        os.replace(tmp, path)
    except BaseException as exc:      # disk full, read-only, Ctrl-C: no half-written file left behind
        _remove(tmp)
        if not isinstance(exc, OSError):
            raise
        LOG.warning("cannot write the merged embeddings %s (%s); holding them in memory instead", path, exc)
        return None
    for name in os.listdir(folder):
        other = os.path.join(folder, name)
        # older merges (a process that maps one keeps its inode), and the temporaries of killed writers
        if other != path and (name.endswith(".npy") or _older_than(other, 3600)):
            _remove(other)
    return np.load(path, mmap_mode="r")
