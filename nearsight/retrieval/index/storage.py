"""Index files: ``DIR/indexes/<encoder>.faiss`` (+ ``<encoder>.001.faiss``... when split), the trained empty
index new segments start from (``<encoder>.trained.faiss``, IVF only), the float16 re-ranking rows by id
(``<encoder>.vectors.faiss``, lossy codes only; see rerank.py) and ``<encoder>.json``.

Writes are atomic: every file goes to a temporary name, is fsynced, then renamed over the old one, and the JSON
(which lists the files and their sizes) is renamed last; a reader that catches the renames half-way sees sizes
that disagree with the JSON and reads again. Files of segments that have not changed are not rewritten.
A process that has the old files memory-mapped keeps its mapping (the old inode) until it swaps indexes.

A reader opens every file once, checks the size of the *open* file and reads from that descriptor: a name
checked and then reopened could be a file a concurrent save renamed over it in between (of the same ntotal
after a rebuild into another kind, which no size or count check would then catch). A save killed between its
renames leaves files that disagree with the JSON for good: ``IndexFilesChanged``, which the next build (under
the write lock, so no save can be running) answers by rebuilding; its temporary files are removed then too.
"""
from __future__ import annotations

import json
import logging
import os
import re
import time
import uuid
from contextlib import ExitStack

import faiss
import numpy as np

from ..errors import IndexFilesChanged, NearsightError
from . import backend
from .backend import SearchParams
from .rerank import RerankStore
from .vector_index import ExactIndex, Segment, VectorIndex

LOG = logging.getLogger(__name__)

FORMAT = 1


def index_dir(collection_dir: str) -> str:
    return os.path.join(collection_dir, "indexes")


def segment_name(encoder: str, i: int) -> str:
    return f"{encoder}.faiss" if i == 0 else f"{encoder}.{i:03d}.faiss"


def vectors_name(encoder: str, i: int) -> str:
    return f"{encoder}.vectors.faiss" if i == 0 else f"{encoder}.vectors.{i:03d}.faiss"


def meta_path(collection_dir: str, encoder: str) -> str:
    return os.path.join(index_dir(collection_dir), f"{encoder}.json")


def read_meta(collection_dir: str, encoder: str) -> dict | None:
    """The saved ``<encoder>.json`` (what ``nearsight info`` shows), or None when no index is saved."""
    try:
        with open(meta_path(collection_dir, encoder)) as f:
            return json.load(f)
    except FileNotFoundError:
        return None


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    try:
        _fsync_file(path)
    except OSError:
        pass   # some filesystems refuse fsync on directories


def _tmp(path: str) -> str:
    return f"{path}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def remove_stale_temporaries(collection_dir: str, encoder: str) -> list[str]:
    """Remove the temporary files of ``encoder``'s index that a killed save left behind (each can be the size of
    the index). The pid in a temporary's name tells: files of a process that is gone; never a running save's."""
    pattern = re.compile(re.escape(encoder) + r"(\.(\d{3}|vectors(\.\d{3})?|trained))?\.(faiss|json)\.tmp-(\d+)-[0-9a-f]{8}")
    directory = index_dir(collection_dir)
    removed = []
    for name in os.listdir(directory) if os.path.isdir(directory) else ():
        m = pattern.fullmatch(name)
        if m is None or _alive(int(m.group(5))):
            continue
        try:
            os.remove(os.path.join(directory, name))
            removed.append(name)
        except FileNotFoundError:
            pass
    if removed:
        LOG.info("removed %d temporary index file(s) of an interrupted save: %s", len(removed), ", ".join(removed))
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True     # another user's process
    return True


def save_index(index: VectorIndex, collection_dir: str, encoder: str, max_file_bytes=None) -> dict:
    """Write the index of ``encoder`` under ``collection_dir/indexes`` atomically; returns the JSON written.

    ``max_file_bytes``: the size limit a file was planned for (``build_index(max_file_bytes=)`` splits the
    index into segments that fit); a file over it is reported in the log, not silently accepted.
    """
    from .plan import parse_size
    limit = parse_size(max_file_bytes) if max_file_bytes is not None else index.info.get("max_file_bytes")
    directory = index_dir(collection_dir)
    os.makedirs(directory, exist_ok=True)
    remove_stale_temporaries(collection_dir, encoder)
    renames: list[tuple[str, str]] = []
    try:
        with index._lock.shared():     # a consistent snapshot: adds wait, searches go on
            s = index._s
            files = []
            for i, seg in enumerate(s.segments):
                final = os.path.join(directory, segment_name(encoder, i))
                if seg.dirty or seg.file != os.path.abspath(final) or not os.path.exists(final):
                    tmp = _tmp(final)
                    faiss.write_index(backend.to_cpu(seg.index), tmp)
                    _fsync_file(tmp)
                    renames.append((tmp, final))
                    size = os.path.getsize(tmp)
                else:
                    size = os.path.getsize(final)
                if limit and size > limit:
                    LOG.warning("%s is %d bytes, over the %d-byte file limit", final, size, limit)
                files.append({"file": segment_name(encoder, i), "bytes": size, "ntotal": seg.ntotal})
                if seg.ivfdata:     # an out-of-memory build's merged lists (ondisk.py), never rewritten
                    files[-1].update(ivfdata=seg.ivfdata,
                                     ivfdata_bytes=os.path.getsize(os.path.join(directory, seg.ivfdata)))
            vectors_rec = []
            if s.store is not None:
                # one file, memory-mapped on load; split by rows when a file limit is set and it is over it
                per_file = s.store.rows if not limit else max(1, (limit - 4096) // (2 * s.store.d))
                chunks = [(a, min(a + per_file, s.store.rows)) for a in range(0, max(s.store.rows, 1), per_file)]
                for j, (a, b) in enumerate(chunks):
                    final = os.path.join(directory, vectors_name(encoder, j))
                    if len(chunks) == 1 and not s.store.dirty and s.store.file == os.path.abspath(final) \
                            and os.path.exists(final):
                        size = os.path.getsize(final)
                    else:
                        tmp = _tmp(final)
                        faiss.write_index(s.store.index if len(chunks) == 1 else s.store.chunk(a, b), tmp)
                        _fsync_file(tmp)
                        renames.append((tmp, final))
                        size = os.path.getsize(tmp)
                    vectors_rec.append({"file": os.path.basename(final), "bytes": size, "rows": b - a})
            trained = None
            if s.template is not None:
                trained = os.path.join(directory, f"{encoder}.trained.faiss")
                tmp = _tmp(trained)
                s.template.tofile(tmp)
                _fsync_file(tmp)
                renames.append((tmp, trained))
            meta = index.describe()
            meta.update(format=FORMAT, encoder=encoder, files=files, saved_at=time.time(), vectors_files=vectors_rec,
                        trained_file=os.path.basename(trained) if trained else None,
                        trained_bytes=int(s.template.nbytes) if trained else None,
                        tombstone_ids=[int(t) for t in s.tombstones])
            if limit:
                meta["max_file_bytes"] = int(limit)
            final_meta = meta_path(collection_dir, encoder)
            tmp = _tmp(final_meta)
            with open(tmp, "w") as f:
                json.dump(meta, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            renames.append((tmp, final_meta))
            for tmp, final in renames:
                os.replace(tmp, final)
            renames = []
            _fsync_dir(directory)
            for i, seg in enumerate(s.segments):
                seg.file = os.path.abspath(os.path.join(directory, segment_name(encoder, i)))
                seg.dirty = False
            if s.store is not None:
                s.store.file = os.path.abspath(os.path.join(directory, vectors_rec[0]["file"])) \
                    if len(vectors_rec) == 1 else None
                s.store.dirty = False
            # segments beyond the count (a rebuild into fewer files) and a template no longer needed
            i = len(s.segments) or 1
            while os.path.exists(os.path.join(directory, segment_name(encoder, i))):
                os.remove(os.path.join(directory, segment_name(encoder, i)))
                i += 1
            _remove_unused_ivfdata(directory, encoder, {f["ivfdata"] for f in files if f.get("ivfdata")})
            if trained is None and os.path.exists(os.path.join(directory, f"{encoder}.trained.faiss")):
                os.remove(os.path.join(directory, f"{encoder}.trained.faiss"))
            j = len(vectors_rec)
            while os.path.exists(os.path.join(directory, vectors_name(encoder, j))):
                os.remove(os.path.join(directory, vectors_name(encoder, j)))
                j += 1
            index._s.info.update({k: meta[k] for k in ("files", "saved_at")})
        _map_saved_store(index, s)
        return meta
    finally:
        for tmp, _ in renames:
            if os.path.exists(tmp):
                os.remove(tmp)


def _remove_unused_ivfdata(directory: str, encoder: str, keep: set) -> None:
    """Remove merged lists files of ``encoder`` that no saved segment names (a rebuild's predecessor, a build that
    died before its save). A process still searching an old one keeps its mapping (the inode) until it swaps."""
    from .ondisk import ivfdata_pattern

    pattern = ivfdata_pattern(encoder)
    for name in os.listdir(directory):
        if pattern.fullmatch(name) and name not in keep:
            try:
                os.remove(os.path.join(directory, name))
            except FileNotFoundError:
                pass


def _map_saved_store(index: VectorIndex, s) -> None:
    """Once saved, serve the float16 re-rank rows from their file, memory-mapped, as a freshly loaded index does:
    a new compact index would otherwise keep 2d bytes a vector in RAM until it is reopened."""
    store = s.store
    if store is None or store.mapped or store.file is None:
        return
    mapped = RerankStore.load([store.file], mmap=True)
    mapped.file = store.file
    with index._lock.exclusive():
        if index._s is s and s.store is store and not store.dirty:      # nothing was added meanwhile
            s.store = mapped


def load_index(collection_dir: str, encoder: str, source=None, mmap: bool = True, *, metric: str | None = None,
               use_gpu: bool | None = None, sync: bool = True) -> VectorIndex:
    """Open the saved index of ``encoder``; ``mmap`` keeps on-disk IVF lists and flat codes in the file.

    ``source`` (the collection's ``VectorSource``) is needed to re-rank lossy codes. With ``sync`` the index
    is brought in line with it: vectors the index lacks (added with ``--no-index``) are added in memory and
    ids it holds that the source no longer has (deleted items) are removed or tombstoned; ``save`` persists
    that. Without a saved index, returns an ``ExactIndex`` over ``source`` (``metric`` needed then).
    """
    meta = None
    for attempt in range(READ_ATTEMPTS):
        meta = read_meta(collection_dir, encoder)
        if meta is None:
            break
        try:
            index = _open(collection_dir, encoder, meta, source, mmap)
            break
        except _Changed as exc:
            changed = str(exc)
            time.sleep(0.05 * (attempt + 1))   # a save is renaming files right now
    else:
        raise IndexFilesChanged(
            f"the index files of {encoder!r} in {index_dir(collection_dir)} disagree with {encoder}.json "
            f"({os.path.basename(changed)}): a build is still running, or one was interrupted; "
            f"`nearsight build-index -c {collection_dir}` rebuilds it")
    if meta is None:
        if source is None or metric is None:
            raise NearsightError(f"no index for encoder {encoder!r} in {index_dir(collection_dir)}, and no "
                                 "vectors (source=, metric=) to search exactly")
        return ExactIndex(source, metric)
    if metric is not None and metric != index.metric:
        raise NearsightError(f"index of {encoder!r} uses metric {index.metric!r}, asked for {metric!r}")
    if source is not None and sync:
        sync_with_source(index, source)
    if backend.want_gpu(use_gpu):
        index.to_gpu()
    return index


class _Changed(Exception):
    pass


READ_ATTEMPTS = 5


def _fd_name(fd: int, path: str) -> str:
    """A name that reads the file open as ``fd``, whatever has been renamed over ``path`` since (faiss and
    numpy take names; /dev/fd/N opens the open file itself on Linux and macOS)."""
    return f"/dev/fd/{fd}" if os.path.isdir("/dev/fd") else path


def _open_recorded(files: ExitStack, directory: str, name: str, size: int | None) -> str:
    """Open a file the metadata records, once; _Changed when it is missing or the open file is not ``size``
    bytes. Returns the name to read it by: that of the open file, never the path again."""
    path = os.path.join(directory, name)
    try:
        f = files.enter_context(open(path, "rb"))
    except FileNotFoundError:
        raise _Changed(path) from None
    if size is not None and os.fstat(f.fileno()).st_size != size:
        raise _Changed(path)
    return _fd_name(f.fileno(), path)


def _open(collection_dir: str, encoder: str, meta: dict, source, mmap: bool) -> VectorIndex:
    directory = index_dir(collection_dir)
    with ExitStack() as files:
        # every file opened and checked before any is read: the set read is the one the JSON describes
        seg_names = [_open_recorded(files, directory, rec["file"], rec["bytes"]) for rec in meta["files"]]
        ivf_names = [_open_recorded(files, directory, rec["ivfdata"], rec.get("ivfdata_bytes"))
                     if rec.get("ivfdata") else None for rec in meta["files"]]
        store_names = [_open_recorded(files, directory, rec["file"], rec["bytes"])
                       for rec in meta.get("vectors_files") or []]
        trained_name = _open_recorded(files, directory, meta["trained_file"], meta.get("trained_bytes")) \
            if meta.get("trained_file") else None
        if read_meta(collection_dir, encoder) != meta:
            raise _Changed(meta_path(collection_dir, encoder))   # a whole save landed meanwhile
        segments = []
        for rec, name in zip(meta["files"], seg_names):
            ivfdata = ivf_names[len(segments)]
            idx, mapped = backend.read_index(name, mmap, meta["factory"], ivfdata=ivfdata)
            if idx.ntotal != rec["ntotal"]:
                raise _Changed(os.path.join(directory, rec["file"]))
            segments.append(Segment(idx, writable=not mapped, dirty=False,
                                    file=os.path.abspath(os.path.join(directory, rec["file"])),
                                    ivfdata=rec.get("ivfdata")))
        store = None
        if store_names:
            store = RerankStore.load(store_names, mmap)
            store.file = os.path.abspath(os.path.join(directory, meta["vectors_files"][0]["file"])) \
                if len(store_names) == 1 else None
        template = np.fromfile(trained_name, dtype=np.uint8) if trained_name else None
    info = {k: v for k, v in meta.items() if k not in ("tombstone_ids",)}
    return VectorIndex(segments, factory=meta["factory"], metric=meta["metric"], dim=int(meta["dim"]),
                       params=SearchParams.from_dict(meta.get("search_params")), rerank=bool(meta.get("rerank")),
                       source=source, template=template, capacity=meta.get("segment_capacity"), info=info,
                       tombstones=meta.get("tombstone_ids"), ef_construction=meta.get("ef_construction"),
                       store=store)


def differences(index: VectorIndex, source) -> tuple[np.ndarray, np.ndarray]:
    """(ids the source holds that the index lacks, ids the index holds that the source no longer has)."""
    src = np.unique(np.asarray(source.ids, dtype=np.int64))
    held = np.concatenate([backend.indexed_ids(s.index) for s in index.segments] or [np.zeros(0, np.int64)])
    held = np.setdiff1d(held, index.tombstones)
    return np.setdiff1d(src, held, assume_unique=True), np.setdiff1d(held, src)


def sync_with_source(index: VectorIndex, source, block: int = 65536, hold=None) -> dict:
    """Add the source's vectors the index lacks and remove ids the source no longer holds; ids in ``hold``
    are not added yet (held out for tuning). Returns ``{"added": n, "removed": m, "new": ids not yet indexed}``
    where ``new`` lists every id the index lacked before this call."""
    new, gone = differences(index, source)
    missing = new
    if hold is not None and len(hold):
        new = np.setdiff1d(new, np.asarray(hold, dtype=np.int64))
    removed = index.remove(gone) if len(gone) else 0
    added = 0
    for start in range(0, len(new), block):
        chunk = new[start:start + block]
        added += index.add(source.reconstruct(chunk), chunk)
    if added or removed:
        LOG.info("index synced with the collection: %d added, %d removed", added, removed)
    return {"added": int(added), "removed": int(removed), "new": missing}
