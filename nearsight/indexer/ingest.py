"""The ingest pipeline: sources -> decode workers -> dedupe -> encode -> shards + one LMDB commit per flush.

Resumable and crash-safe by ordering: a flush writes and fsyncs every encoder's shard for its new items
first, then records items, thumbnails, paths, hashes and shards in one LMDB transaction. A kill at any
moment leaves either the whole flush or none of it; re-running the same command skips what is recorded
(path, size and mtime) and redoes the rest.
"""
from __future__ import annotations

import errno
import logging
import multiprocessing
import os
import shutil
import sys
import time
from contextlib import closing, contextmanager
from dataclasses import dataclass, field

import lmdb
import numpy as np

from ..retrieval.collection import MANIFEST, Collection
from ..retrieval.embeddings import discard_part, load_ids, write_part
from ..retrieval.encoders import Encoder, create_encoder
from ..retrieval.errors import Interrupted, NearsightError, SourceError, StorageError, WeightsUnavailable
from ..retrieval.heap import keep_freed_memory
from ..retrieval.images import DEFAULT_MAX_PIXELS, IMAGE_EXTENSIONS, decode_image
from ..retrieval.store import Item, StoreWriter
from ..retrieval.writelock import write_lock
from .decode import DecodeTask, Decoded, Decoder, Failed, pixel_encoders
from .pool import DecodePool
from .sources import Source, iter_sources

LOG = logging.getLogger(__name__)
# OSErrors that mean the collection cannot be written; they become one StorageError line.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM,
                            errno.EFBIG})


@dataclass(frozen=True)
class IngestConfig:
    encoders: tuple[str, ...] = ("tiny",)
    encoder_options: tuple[tuple[str, tuple], ...] = ()  # ((encoder, ((key, value), ...)), ...)
    workers: int = max(1, (os.cpu_count() or 1))
    batch_size: int = 64
    flush_every: int = 1024
    device: str = "auto"
    max_pixels: int = DEFAULT_MAX_PIXELS
    thumbnail_side: int = 256
    progress: bool = True


@dataclass
class IngestSummary:
    added: int = 0
    duplicates: int = 0
    already_present: int = 0
    failed: int = 0
    backfilled: dict = field(default_factory=dict)
    seconds: float = 0.0

    def line(self) -> str:
        extra = "".join(f", {n} embedded for {enc}" for enc, n in self.backfilled.items() if n)
        # the rate counts files read, so a run that only backfills or finds nothing new does not show 0/s
        read = self.added + self.duplicates + self.failed
        rate = f" ({read / self.seconds:.1f} images/s)" if read and self.seconds else ""
        return (f"added {self.added}, duplicates {self.duplicates}, already present {self.already_present}, "
                f"failed {self.failed}{extra} in {self.seconds:.1f}s{rate}")


def index_paths(collection_dir: str, paths, config: IngestConfig = IngestConfig(), engine=None) -> IngestSummary:
    """Index PATHs into the collection at ``collection_dir`` (created if missing). See the module docstring.

    ``engine(run, jobs, summary)`` replaces the local decode-and-encode loop (``_Run.ingest``) for the new
    sources; the Ray engine passes its own. Everything around it is shared by both engines: validation, the
    write lock, backfills, skipping known sources, and (through ``_Run.commit``) dedup, ids and failures.
    """
    start = time.perf_counter()
    keep_freed_memory()  # this process owns the run: batch after batch reuses the same heap pages (heap.py)
    options = dict(config.encoder_options)
    # Validate everything a user typed before touching the disk.
    requested = [create_encoder(name, device=config.device, **dict(options.get(name, ()))) for name in config.encoders]
    sources = iter_sources(paths)
    if not sources and not os.path.exists(os.path.join(collection_dir, MANIFEST)):
        raise SourceError(f"no images in {', '.join(map(str, paths))} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))}); "
                          "no collection created")
    coll = Collection.create_or_open(collection_dir, device=config.device)
    summary = IngestSummary()
    try:
        with write_lock(collection_dir):
            run = _Run(coll, _run_encoders(coll, requested), config)
            # One failure path: whatever stops the run (Ctrl-C, SIGTERM turned into KeyboardInterrupt by the
            # CLI, a full disk, an encoder that cannot load, a dead worker) has already stopped the decode
            # workers by the time it gets here; what was committed is whole, and a re-run finishes the job.
            try:
                summary.backfilled = run.backfill()
                todo = []
                for source in sources:
                    entry = coll.store.path_entry(source.key)
                    if entry is not None and entry[1:] == (source.size, source.mtime_ns):
                        summary.already_present += 1
                    else:
                        todo.append((source, -1))
                (engine or _Run.ingest)(run, todo, summary)
            except KeyboardInterrupt:
                raise Interrupted(f"interrupted; {run.committed} new items committed, "
                                  "re-run the same command to continue") from None
            except (OSError, lmdb.Error) as exc:
                if isinstance(exc, OSError) and exc.errno not in STORAGE_ERRNOS:
                    raise  # not the collection's disk (a lost connection to a Ray cluster, say)
                raise StorageError(f"cannot write to {collection_dir}: {_reason(exc, collection_dir)}; "
                                   f"{run.committed} new items committed, re-run once fixed to continue") from None
    finally:
        coll.close()
    summary.seconds = time.perf_counter() - start
    return summary


def _run_encoders(coll: Collection, requested: list[Encoder]) -> list[Encoder]:
    """The collection's encoders plus the requested new ones.

    A new encoder enters the manifest only once its first embeddings are committed (``_Run._record``), so a
    run that fails before (weights that do not load, Ctrl-C) leaves no empty encoder behind. Leftovers of such
    a run killed between its commit and its manifest write are cleared first: the config may differ now.
    """
    for encoder in requested:
        if encoder.name in coll.encoder_names:
            coll.add_encoder(encoder)  # only checks that the config is the recorded one
    new = [e for e in requested if e.name not in coll.encoder_names]
    for encoder in new:
        coll.remove_encoder(encoder.name, missing_ok=True)
    return [coll.encoder(name) for name in coll.encoder_names] + new


class _Run:
    def __init__(self, coll: Collection, encoders: list[Encoder], config: IngestConfig):
        self.coll, self.store, self.encoders, self.config = coll, coll.store, encoders, config
        self.committed = 0  # new items committed by this run

    def _record(self, names) -> None:
        """Add the run's new encoders among ``names`` to the manifest: their first embeddings are durable."""
        for encoder in self.encoders:
            if encoder.name in names and encoder.name not in self.coll.encoder_names:
                self.coll.add_encoder(encoder)

    # -- decoding ---------------------------------------------------------------------------
    def _decoded(self, jobs, encoders: list[Encoder], thumbnails: bool):
        """Yield decode results in order; worker processes decode ahead of the consumer, bounded."""
        for encoder in encoders:  # weights that do not load fail here, before any worker starts
            if hasattr(encoder, "load"):
                try:
                    encoder.load()
                except WeightsUnavailable as exc:
                    if encoder.name not in self.coll.encoder_names:
                        raise  # a new encoder: nothing of it was recorded
                    raise WeightsUnavailable(f"{exc} (or drop encoder {encoder.name!r} from this collection: "
                                             f"nearsight encoders remove {encoder.name} -c {self.coll.dir})") from None
        task = DecodeTask(tuple((e.name, tuple(sorted(e.config.items()))) for e in pixel_encoders(encoders)),
                          self.config.max_pixels, self.config.thumbnail_side, thumbnails)
        if self.config.workers <= 0 or len(jobs) < 8:
            decoder = Decoder(task)
            yield from (decoder(job) for job in jobs)
            return
        # fork is instant and workers inherit our imports, but forking a process whose torch runtime has
        # started threads can deadlock the child: then workers start from a clean forkserver instead.
        ctx = multiprocessing.get_context("forkserver" if "torch" in sys.modules else "fork")
        # Closing this generator (callers use ``closing``) terminates the workers, whatever stopped the run.
        with DecodePool(task, self.config.workers, ctx, window=max(64, 16 * self.config.workers)) as pool:
            yield from pool.map(jobs)

    @contextmanager
    def _progress(self, total: int, desc: str):
        from tqdm import tqdm

        bar = tqdm(total=total, desc=desc, unit="img", disable=not self.config.progress or total == 0,
                   dynamic_ncols=True, smoothing=0.1)
        try:
            yield bar
        except BaseException:
            bar.leave = False  # a failed run ends with its one error line, not a half-drawn bar above it
            raise
        finally:
            bar.close()

    # -- new items --------------------------------------------------------------------------
    def ingest(self, jobs: list[tuple[Source, int]], summary: IngestSummary) -> None:
        batch, unencoded = _Flush(), []
        with self._progress(len(jobs), "indexing") as bar, \
                closing(self._decoded(jobs, self.encoders, thumbnails=True)) as results:
            for result in results:
                bar.update(1)
                if self._classify(result, batch, summary):
                    unencoded.append(result)
                    if len(unencoded) >= self.config.batch_size:
                        self._embed(unencoded, self.encoders)
                        unencoded = []
                if len(batch.by_hash) >= self.config.flush_every or len(batch) >= 8 * self.config.flush_every:
                    self._flush(batch)
                    batch, unencoded = _Flush(), []
                    bar.set_postfix(items=self.coll.count, refresh=False)
            self._flush(batch)

    def _classify(self, result: Decoded | Failed, batch: "_Flush", summary: IngestSummary) -> bool:
        """File one decode result into ``batch``: a failure, a duplicate (of the batch or the store), or new
        content (True: it needs embedding). The one dedup rule of both engines."""
        if isinstance(result, Failed):
            batch.failures.append(result)
            summary.failed += 1
            return False
        if result.sha256 in batch.by_hash or self.store.id_for_hash(result.sha256) is not None:
            batch.aliases.append(result)
            summary.duplicates += 1
            return False
        batch.by_hash[result.sha256] = result
        summary.added += 1
        return True

    def commit(self, results: list, summary: IngestSummary) -> None:
        """Commit results whose vectors another engine already made (``Decoded.vectors`` filled, ``arrays``
        empty), in source order, as one flush: the same dedup, id assignment and failure records as ``ingest``."""
        batch = _Flush()
        for result in results:
            self._classify(result, batch, summary)
        self._flush(batch)

    def _flush(self, batch: "_Flush") -> None:
        if not len(batch):
            return
        new = list(batch.by_hash.values())
        first_id = self.store.next_id()
        ids = np.arange(first_id, first_id + len(new), dtype=np.int64)
        parts = self._write_shards(new, ids, self.encoders)
        now = time.time()
        with self._recording(parts), self.store.write() as w:
            for item_id, d in zip(ids, new):
                s = d.source
                _detach(w, s.key, int(item_id))
                w.put_item(Item(int(item_id), s.key, d.sha256, d.width, d.height, s.size, s.mtime_ns, s.caption,
                                added=now), d.thumbnail)
                w.put_path(s.key, int(item_id), s.size, s.mtime_ns)
                w.put_hash(d.sha256, int(item_id))
            w.put_meta("next_id", first_id + len(new))
            for name, record in parts.items():
                w.add_part(self.coll.storage(name), record)
            for d in batch.aliases:
                target = w.get_hash(d.sha256)
                s = d.source
                if w.get_path(s.key) is not None and w.get_path(s.key)[0] == target:
                    w.put_path(s.key, target, s.size, s.mtime_ns)  # touched, same content
                    continue
                _detach(w, s.key, target)
                item = w.get_item(target)
                if s.key != item.path and s.key not in item.aliases:
                    item.aliases.append(s.key)
                    w.put_item(item)
                w.put_path(s.key, target, s.size, s.mtime_ns)
            for f in batch.failures:
                w.put_failure(f.source.key, f.reason, now)
        self.committed += len(new)
        self._record(parts)

    def _write_shards(self, decoded: list[Decoded], ids: np.ndarray, encoders: list[Encoder]) -> dict[str, dict]:
        parts = {}
        if not len(ids):
            return parts
        self._embed([d for d in decoded if d.arrays], encoders)
        with self._recording(parts):
            for encoder in encoders:
                vectors = np.stack([d.vectors[encoder.name] for d in decoded])
                parts[encoder.name] = write_part(self.coll.embedding_dir(encoder.name),
                                                 len(self.coll.parts(encoder.name)), vectors, ids)
        return parts

    @contextmanager
    def _recording(self, parts: dict[str, dict]):
        """Around the writes that lead to recording ``parts``: when one fails (a full disk, Ctrl-C), remove the
        shard files that no commit recorded, so that they do not hold the space a full disk needs back."""
        try:
            yield
        except BaseException:
            for name, record in parts.items():
                try:
                    if any(p["file"] == record["file"] for p in self.coll.parts(name)):
                        continue  # the commit did happen (the signal came after it): the files are the collection's
                except lmdb.Error:
                    continue  # cannot tell: keep them; the next write of this part number replaces them
                discard_part(self.coll.embedding_dir(name), record["file"])
            raise

    def _embed(self, decoded: list[Decoded], encoders: list[Encoder]) -> None:
        """Encode decoded items in batches, as they arrive, so encoding overlaps the workers' decoding."""
        embed(decoded, encoders, self.config.batch_size)

    # -- new encoders on existing items -------------------------------------------------------
    def backfill(self) -> dict[str, int]:
        """Embed existing items for encoders that lack them (an encoder added to the collection later)."""
        total = self.store.count("items")
        lacking = [e for e in self.encoders if sum(p["count"] for p in self.coll.parts(e.name)) < total]
        live = [item for item in self.store.iter_items() if not item.deleted] if lacking else []
        done = {}
        for encoder in lacking:
            have = load_ids(self.coll.embedding_dir(encoder.name), self.coll.parts(encoder.name))
            missing = [item for item in live if item.id not in have]
            done[encoder.name] = len(missing)
            if missing and encoder.derived_from in self.coll.encoder_names:
                self._backfill_derived(encoder, [item.id for item in missing])
            elif missing:
                self._backfill(encoder, missing)
        return done

    def _backfill(self, encoder: Encoder, items: list[Item]) -> None:
        jobs = [(Source(item.path, item.size, item.mtime_ns, item.caption), item.id) for item in items]
        pending: list[Decoded] = []
        with self._progress(len(jobs), f"embedding {encoder.name}") as bar, \
                closing(self._decoded(jobs, [encoder], thumbnails=False)) as results:
            for result in results:
                bar.update(1)
                if isinstance(result, Failed):  # the source is gone: embed what we kept, the thumbnail
                    result = self._from_thumbnail(encoder, result)
                pending.append(result)
                if len(pending) % self.config.batch_size == 0:
                    self._embed(pending[-self.config.batch_size:], [encoder])
                if len(pending) >= self.config.flush_every:
                    self._commit_backfill(encoder, pending)
                    pending = []
            self._commit_backfill(encoder, pending)

    def _backfill_derived(self, encoder: Encoder, ids: list[int]) -> None:
        """A trained encoder's missing embeddings, from its base encoder's stored ones (no image decoded)."""
        base = self.coll.embedding_matrix(encoder.derived_from)  # backfilled before it: manifest order
        ids = [i for i in ids if base.has(i)]
        for start in range(0, len(ids), self.config.flush_every):
            chunk = np.array(ids[start:start + self.config.flush_every], np.int64)
            vectors = encoder.encode_features(base.reconstruct(chunk))
            decoded = [Decoded(None, "", 0, 0, None, {}, int(i), vectors={encoder.name: v}) for i, v in zip(chunk, vectors)]
            self._commit_backfill(encoder, decoded)

    def _from_thumbnail(self, encoder: Encoder, failed: Failed) -> Decoded:
        LOG.warning("%s: %s; embedding its stored thumbnail for %s", failed.source.key, failed.reason, encoder.name)
        image = decode_image(self.store.thumbnail(failed.item_id)).image
        return Decoded(failed.source, "", image.width, image.height, None,
                       {encoder.name: encoder.preprocess(image)}, failed.item_id)

    def _commit_backfill(self, encoder: Encoder, decoded: list[Decoded]) -> None:
        if not decoded:
            return
        ids = np.array([d.item_id for d in decoded], dtype=np.int64)
        parts = self._write_shards(decoded, ids, [encoder])
        with self._recording(parts), self.store.write() as w:
            w.add_part(self.coll.storage(encoder.name), parts[encoder.name])
        self._record(parts)
        self.coll.refresh()


def embed(decoded: list[Decoded], encoders: list[Encoder], batch_size: int) -> None:
    """Fill each ``Decoded.vectors`` ((dim,) float32 per encoder) in batches of ``batch_size`` (both engines).

    The vectors replace the preprocessed arrays (much smaller), until a flush writes them.
    """
    names = {e.name for e in encoders}
    # a trained encoder is computed from its base encoder's vectors (see ``pixel_encoders``): bases go first
    ordered = sorted(encoders, key=lambda e: e.derived_from in names)
    for start in range(0, len(decoded), batch_size):
        chunk = decoded[start:start + batch_size]
        for encoder in ordered:
            if all(encoder.name in d.vectors for d in chunk):
                continue  # made elsewhere: a Ray worker embeds pixels, the driver then adds the trained heads
            if encoder.derived_from in names:
                vectors = encoder.encode_features(np.stack([d.vectors[encoder.derived_from] for d in chunk]))
            else:
                vectors = encoder.encode_images(np.stack([d.arrays[encoder.name] for d in chunk]))
            vectors = np.asarray(vectors, dtype=np.float32)
            if vectors.shape != (len(chunk), encoder.dim) or not np.isfinite(vectors).all():
                raise NearsightError(f"encoder {encoder.name!r} returned {vectors.shape} (or non-finite values), "
                                     f"expected ({len(chunk)}, {encoder.dim})")
            for d, v in zip(chunk, vectors):
                d.vectors[encoder.name] = v
        for d in chunk:
            d.arrays = {}


class _Flush:
    """What one flush commits: new items by content hash, duplicate sources, failures."""

    def __init__(self):
        self.by_hash: dict[str, Decoded] = {}
        self.aliases: list[Decoded] = []
        self.failures: list[Failed] = []

    def __len__(self) -> int:
        return len(self.by_hash) + len(self.aliases) + len(self.failures)


def _detach(w: StoreWriter, key: str, new_id: int) -> None:
    """A source whose content changed leaves its old item; an item left with no source is deleted."""
    entry = w.get_path(key)
    if entry is None or entry[0] == new_id:
        return
    old = w.get_item(entry[0])
    if old is None:
        return
    if old.path == key:
        if not old.aliases:
            w.mark_deleted(old.id, replaced_by=new_id)
            return
        old.path = old.aliases.pop(0)
    elif key in old.aliases:
        old.aliases.remove(key)
    w.put_item(old)


def _reason(exc: BaseException, directory: str) -> str:
    """What went wrong with a write, in words ("No space left on device", not a stack), with the free space
    when it is low: LMDB reports a full disk as an I/O error."""
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
    try:
        free = shutil.disk_usage(directory).free
    except OSError:
        return reason
    if free < 64 << 20:
        reason += f" (only {free / 1024:.0f} KB free on that disk)"
    return reason
