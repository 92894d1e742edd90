"""Where an index gets its vectors: the collection's float16 embedding shards, seen through a small protocol.

The collection hands the index layer a ``VectorSource``: ``ids`` (n,) int64, ``vectors`` (n, d) float16 (a
concatenation or a memmap, rows aligned with ``ids``) and ``reconstruct(ids) -> (m, d) float32``. Indexes
train on a sample of it, re-rank approximate candidates with it and measure their recall against it.
"""
from __future__ import annotations

from typing import Iterator, Protocol, runtime_checkable

import numpy as np

from ..errors import InvalidQuery, UnknownItem


@runtime_checkable
class VectorSource(Protocol):
    """The embeddings of one encoder. ``EmbeddingMatrix`` in ``retrieval/embeddings.py`` satisfies it."""

    ids: np.ndarray          # (n,) int64, unique
    vectors: np.ndarray      # (n, d) float16 or float32, row i is the vector of ids[i]

    def reconstruct(self, ids) -> np.ndarray:
        """Item ids (m,) -> their vectors (m, d) float32; UnknownItem for an id it does not hold."""
        ...


class ArraySource:
    """An in-memory ``VectorSource`` over arrays (tests, benchmarks, vectors that are not a collection yet).

    ``vectors`` (n, d) any float dtype (kept as given, so a float16 memmap stays on disk),
    ``ids`` (n,) int64 unique; defaults to ``arange(n)``.
    """

    def __init__(self, vectors: np.ndarray, ids: np.ndarray | None = None):
        if vectors.ndim != 2:
            raise InvalidQuery(f"vectors must be (n, d), got shape {vectors.shape}")
        self.vectors = vectors
        self.ids = (np.arange(len(vectors), dtype=np.int64) if ids is None
                    else np.ascontiguousarray(ids, dtype=np.int64))
        if self.ids.shape != (len(vectors),):
            raise InvalidQuery(f"ids must be ({len(vectors)},), got shape {self.ids.shape}")
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]
        if len(self._sorted) > 1 and (np.diff(self._sorted) == 0).any():
            raise InvalidQuery("ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, ids) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        pos = np.searchsorted(self._sorted, ids).clip(max=max(len(self._sorted) - 1, 0))
        if len(ids) and (len(self._sorted) == 0 or (self._sorted[pos] != ids).any()):
            bad = ids if len(self._sorted) == 0 else ids[self._sorted[pos] != ids]
            raise UnknownItem(f"no embedding for item id {int(bad[0])}")
        return self._order[pos]

    def reconstruct(self, ids) -> np.ndarray:
        rows = self.rows(ids)
        # sorted reads keep a memmap's page faults sequential; the result goes back to the asked order
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), self.vectors.shape[1]), dtype=np.float32)
        out[order] = self.vectors[rows[order]]
        return out


def dim_of(vectors) -> int:
    return int(vectors.shape[1])


def iter_blocks(vectors, ids: np.ndarray, block: int = 65536) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield ``(x (b, d) float32 C-contiguous, ids (b,) int64)`` blocks.

    ``vectors`` is an (n, d) array of any float dtype (a float16 memmap is converted block by block, so
    the float32 copy never exceeds one block) or an iterable of (b, d) blocks whose concatenation is aligned
    with ``ids``.
    """
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if hasattr(vectors, "shape") and hasattr(vectors, "dtype"):
        if vectors.ndim != 2 or len(vectors) != len(ids):
            raise InvalidQuery(f"vectors {tuple(vectors.shape)} and ids {tuple(ids.shape)} do not align")
        for start in range(0, len(ids), block):
            yield (np.ascontiguousarray(vectors[start:start + block], dtype=np.float32),
                   ids[start:start + block])
        return
    start = 0
    for x in vectors:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if x.ndim != 2:
            raise InvalidQuery(f"a block of vectors must be (b, d), got shape {x.shape}")
        if start + len(x) > len(ids):
            raise InvalidQuery(f"the blocks hold more vectors than the {len(ids)} ids given")
        yield x, ids[start:start + len(x)]
        start += len(x)
    if start != len(ids):
        raise InvalidQuery(f"the blocks hold {start} vectors for {len(ids)} ids")
