"""Per-encoder embedding shards: plain ``.npy`` files other tools can read.

``DIR/embeddings/<encoder>/part-00000.npy`` (n, d) float16 and ``part-00000.ids.npy`` (n,) int64.
A part exists for the collection only once the LMDB store records it; a part file left by a crash before that
commit is simply overwritten by the next write of the same part number.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from .errors import UnknownItem


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
        return self.vectors[self.rows(ids)].astype(np.float32)


def load_ids(directory: str, records: list[dict]) -> set[int]:
    """The set of item ids that have an embedding in the recorded parts."""
    out: set[int] = set()
    for r in records:
        out.update(np.load(os.path.join(directory, r["file"] + ".ids.npy")).tolist())
    return out


def load_matrix(directory: str, records: list[dict], dim: int, exclude=()) -> EmbeddingMatrix:
    """Concatenate the recorded parts (memory-mapped reads), dropping the ids in ``exclude``."""
    if not records:
        return EmbeddingMatrix(np.zeros(0, np.int64), np.zeros((0, dim), np.float16))
    ids = np.concatenate([np.load(os.path.join(directory, r["file"] + ".ids.npy")) for r in records])
    vectors = np.concatenate([np.load(os.path.join(directory, r["file"] + ".npy"), mmap_mode="r") for r in records])
    if len(exclude):
        keep = ~np.isin(ids, np.asarray(list(exclude), dtype=np.int64))
        ids, vectors = ids[keep], vectors[keep]
    return EmbeddingMatrix(ids, vectors)
