"""Staged shards: how a remote worker hands decoded and encoded sources to the collection's one writer.

A shard is a run of consecutive sources. A worker writes it to ``DIR/staged/<key>/``:

    vectors.<encoder>.npy   (n_ok, d) float16, one row per decoded source, in the shard's source order
    records.pkl             one record per source, in order: ("ok", Source, sha256, width, height, thumbnail)
                            or ("failed", Source, reason)
    done.json               written last (fsynced, atomically renamed): key, counts, encoder names

A shard without ``done.json`` is not done, whatever else is there (a worker died in it): it is redone, and its
files are overwritten. The driver reads done shards back as the same ``Decoded`` / ``Failed`` values the local
engine makes, commits them, then removes them.

The key names what a shard holds (its sources with size and mtime, and the decode task) so that a run started
again after a crash finds the shards that are already done. Shard boundaries are cut where a source key's hash
says so, not by position, so that sources committed (or added) elsewhere in the list do not move the boundaries
of the shards that are still waiting.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil

import numpy as np

from ..retrieval.store import source_key
from .decode import DecodeTask, Decoded, Failed
from .sources import Source

STAGING = "staged"
DONE = "done.json"


def plan_shards(jobs: list[tuple[Source, int]], size: int) -> list[list[tuple[Source, int]]]:
    """Cut ``jobs`` (in source order) into shards of about ``size`` sources (never more than 4x ``size``)."""
    shards: list[list[tuple[Source, int]]] = []
    current: list[tuple[Source, int]] = []
    for job in jobs:
        cut = int.from_bytes(hashlib.sha1(source_key(job[0].key)).digest()[:8], "big") % size == 0
        if current and (cut or len(current) >= 4 * size):
            shards.append(current)
            current = []
        current.append(job)
    if current:
        shards.append(current)
    return shards


def shard_key(jobs: list[tuple[Source, int]], task: DecodeTask) -> str:
    """A name for what the shard holds: its sources (key, size, mtime, caption, offset) and the decode task."""
    h = hashlib.sha256(repr(task).encode())
    for source, _ in jobs:
        h.update(repr((source.key, source.size, source.mtime_ns, source.caption, source.offset)).encode())
    return h.hexdigest()[:24]


def start_shard(directory: str) -> None:
    """Called before a shard's sources are read: the folder shows the shard in progress (no ``done.json``)."""
    os.makedirs(directory, exist_ok=True)
    _remove(os.path.join(directory, DONE))  # a redo of a shard is not done until it is written again


def write_shard(directory: str, key: str, results: list[Decoded | Failed], encoder_names: list[str]) -> None:
    """Write one shard durably, ``done.json`` last. ``Decoded.vectors`` must be filled for every encoder."""
    start_shard(directory)
    decoded = [r for r in results if isinstance(r, Decoded)]
    for name in encoder_names:
        rows = [d.vectors[name] for d in decoded]
        vectors = np.stack(rows).astype(np.float16) if rows else np.zeros((0, 0), np.float16)
        _write_synced(os.path.join(directory, f"vectors.{name}.npy"), lambda f, v=vectors: np.save(f, v))
    records = [("ok", r.source, r.sha256, r.width, r.height, r.thumbnail) if isinstance(r, Decoded)
               else ("failed", r.source, r.reason) for r in results]
    _write_synced(os.path.join(directory, "records.pkl"), lambda f: pickle.dump(records, f, protocol=5))
    done = {"key": key, "sources": len(results), "decoded": len(decoded), "encoders": list(encoder_names)}
    _write_synced(os.path.join(directory, DONE), lambda f: f.write(json.dumps(done).encode()))
    _fsync_dir(directory)


def is_done(directory: str, key: str) -> bool:
    try:
        with open(os.path.join(directory, DONE), encoding="utf-8") as f:
            return json.load(f).get("key") == key
    except (OSError, ValueError):
        return False


def read_shard(directory: str) -> list[Decoded | Failed]:
    """A done shard as the local engine's values: ``Decoded`` with ``vectors`` ((d,) float16 per encoder), ``Failed``."""
    with open(os.path.join(directory, DONE), encoding="utf-8") as f:
        done = json.load(f)
    with open(os.path.join(directory, "records.pkl"), "rb") as f:
        records = pickle.load(f)
    vectors = {name: np.load(os.path.join(directory, f"vectors.{name}.npy")) for name in done["encoders"]}
    out: list[Decoded | Failed] = []
    row = 0
    for record in records:
        if record[0] == "failed":
            out.append(Failed(record[1], record[2]))
            continue
        _, source, sha256, width, height, thumbnail = record
        out.append(Decoded(source, sha256, width, height, thumbnail, {},
                           vectors={name: v[row] for name, v in vectors.items()}))
        row += 1
    return out


def remove_shard(directory: str) -> None:
    shutil.rmtree(directory, ignore_errors=True)


def remove_stale(staging: str, keep: set[str]) -> None:
    """Remove staged shards this run does not plan (committed ones a crash left, or sources that changed)."""
    if not os.path.isdir(staging):
        return
    for name in os.listdir(staging):
        if name not in keep:
            remove_shard(os.path.join(staging, name))


def _write_synced(path: str, write) -> None:
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
