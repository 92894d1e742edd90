"""The Ray Data engine: the local engine's collection contract, with decoding and encoding on a Ray cluster.

The driver (this process) stays the collection's one writer and runs everything the local engine runs around
the decode-and-encode loop (``ingest.index_paths``: validation, the write lock, backfills of new encoders,
listing the sources with ``sources.iter_sources`` and skipping those the store already has). The new sources
are cut into shards (``shards.plan_shards``); the shards not already staged on disk go to Ray Data as one row
each, and an actor pool (one actor per GPU where the cluster has GPUs, else one per CPU) reads, decodes
(``decode.Decoder``), encodes (``ingest.embed``) and writes each shard with its done-marker last. The driver
reads done shards back in source order and commits them through the local engine's own commit
(``_Run.commit``), so dedup, ids and failure records are the local engine's, and a collection either engine
made is the same collection.

Faults: a worker that dies is restarted by Ray and its shard redone (Ray Data retries actor tasks); a killed
driver leaves committed items committed and done shards on disk, and the next run commits those shards
without recomputing them. The collection directory and the sources must be on storage every node sees.
"""
from __future__ import annotations

import logging
import os
import pickle
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from ..retrieval.encoders import create_encoder
from ..retrieval.errors import ClusterUnreachable, NearsightError
from .decode import DecodeTask, Decoded, Decoder, pixel_encoders
from .ingest import IngestConfig, IngestSummary, embed, index_paths
from .shards import (STAGING, is_done, plan_shards, read_shard, remove_shard, remove_stale, shard_key,
                     start_shard, write_shard)

LOG = logging.getLogger(__name__)


@dataclass(frozen=True)
class RayConfig:
    address: str | None = None  # None: start Ray on this machine; "auto": this node's cluster; "HOST:PORT"
    shard_size: int = 256  # sources per shard: the unit of work, of redo after a fault, and of resume
    actors: int = 0  # decode+encode actors; 0 = one per GPU of the cluster, or one per CPU when it has none


def index_paths_ray(collection_dir: str, paths, config: IngestConfig = IngestConfig(),
                    ray_config: RayConfig = RayConfig()) -> IngestSummary:
    """``ingest.index_paths`` with decoding and encoding on a Ray cluster (see the module docstring)."""
    if ray_config.shard_size < 1:
        raise NearsightError(f"shard size must be at least 1, not {ray_config.shard_size}")
    started = connect(ray_config.address)
    try:
        return index_paths(collection_dir, paths, config, engine=_RayEngine(ray_config))
    finally:
        if started:
            import ray

            ray.shutdown()


def connect(address: str | None) -> bool:
    """Join the cluster at ``address`` (or start Ray here when None); True when this call started Ray.

    A process that is already connected (a test session, a notebook) keeps its connection.
    ClusterUnreachable, one line naming the address, when there is no cluster there.
    """
    try:
        import ray
    except ImportError:
        raise NearsightError("the Ray engine needs Ray: pip install 'nearsight[ray]'") from None
    if ray.is_initialized():
        return False
    if address and address != "auto" and not address.startswith("ray://"):
        _check_reachable(address)
    kwargs = {"include_dashboard": False} if address is None else {}
    try:
        ray.init(address=address, logging_level=logging.ERROR, configure_logging=False, **kwargs)
    except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ClusterUnreachable(f"cannot reach a Ray cluster at {address}: {first}") from None
    return True


# An HTTP/2 client preface and an empty SETTINGS frame: a Ray head's GCS port (gRPC) answers with SETTINGS.
_H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])


def _check_reachable(address: str) -> None:
    """Fail fast on a HOST:PORT that is not a Ray head: ray.init retries for minutes where nobody listens, and
    hangs where something else (ssh, the dashboard) does. The GCS speaks gRPC, so a port that does not answer
    an HTTP/2 preface is not one."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterUnreachable(f"Ray address {address!r} is not 'auto' or HOST:PORT")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=5) as conn:
            conn.sendall(_H2_PREFACE)
            reply = conn.recv(9)
    except socket.timeout:
        reply = b""
    except OSError as exc:
        raise ClusterUnreachable(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}") from None
    if len(reply) < 4 or reply[3] != 4:  # byte 3 of a frame header is its type; 4 = SETTINGS
        raise ClusterUnreachable(f"{address} answers, but not as a Ray cluster's head (its GCS port, 6379 by default)")


class _RayEngine:
    """``engine(run, jobs, summary)`` for ``index_paths``: stage shards on Ray, commit them here in order."""

    def __init__(self, config: RayConfig):
        self.config = config

    def __call__(self, run, jobs, summary: IngestSummary) -> None:
        encoders = run.encoders
        task = DecodeTask(tuple((e.name, tuple(sorted(e.config.items()))) for e in pixel_encoders(encoders)),
                          run.config.max_pixels, run.config.thumbnail_side, True)
        staging = os.path.join(run.coll.dir, STAGING)
        shards = plan_shards(jobs, self.config.shard_size)
        keys = [shard_key(shard, task) for shard in shards]
        dirs = [os.path.join(staging, key) for key in keys]
        remove_stale(staging, set(keys))
        ready = {i for i, (d, k) in enumerate(zip(dirs, keys)) if is_done(d, k)}
        todo = [i for i in range(len(shards)) if i not in ready]
        if ready:
            LOG.info("%d of %d shards already done on disk; committing them without recomputing", len(ready), len(shards))

        with run._progress(len(jobs), "indexing (ray)") as bar:
            bar.update(sum(len(shards[i]) for i in ready))
            committer = _InOrder(run, summary, dirs, run.config.flush_every)
            committer.advance(ready)
            if todo:
                rows = [{"index": i, "dir": dirs[i], "key": keys[i], "jobs": pickle.dumps(shards[i])} for i in todo]
                for index in self._stage(rows, task, run.config):
                    bar.update(len(shards[index]))
                    committer.advance({index})
                    bar.set_postfix(items=run.store.count("items"), refresh=False)
            committer.finish()
            bar.set_postfix(items=run.store.count("items"), refresh=False)
        # the driver's own share (read back, write parts, LMDB) is the ceiling of a cluster: say what it was
        LOG.info("driver: committed %d shards (%d sources) in %.1fs of commit work (%.0f sources/s)", len(shards),
                 len(jobs), committer.seconds, len(jobs) / committer.seconds if committer.seconds else 0.0)
        if os.path.isdir(staging) and not os.listdir(staging):
            os.rmdir(staging)

    def _stage(self, rows: list[dict], task: DecodeTask, config: IngestConfig):
        """Yield shard indexes as the actors finish them (in any order)."""
        import ray

        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver shows one bar of its own
        ctx.print_on_execution_start = False
        actors, cpus, gpus = self._pool()
        device = "cuda" if gpus else ("cpu" if config.device == "auto" else config.device)
        LOG.info("ray: %d actor(s), %s CPU and %s GPU each, %d shards", actors, cpus, gpus, len(rows))
        ds = ray.data.from_items(rows, override_num_blocks=len(rows))  # one block per shard: one task each
        ds = ds.map_batches(_ShardWriter, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=min(actors, len(rows))),
                            fn_constructor_args=(task, device, config.batch_size, int(max(1, cpus))),
                            num_cpus=cpus, num_gpus=gpus)
        try:
            for row in ds.iter_rows():
                yield int(row["index"])
        except NearsightError:
            raise
        except Exception as exc:  # a shard that keeps failing (an encoder error, not a lost worker)
            lines = [line for line in str(exc).strip().splitlines() if line.strip()]
            raise NearsightError(f"the Ray run stopped: {lines[-1] if lines else type(exc).__name__}; "
                                 "committed items stay, re-run the same command to continue") from exc

    def _pool(self) -> tuple[int, float, float]:
        """(actors, CPUs per actor, GPUs per actor) from the cluster's resources."""
        import ray

        resources = ray.cluster_resources()
        total_cpus, total_gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
        if total_gpus:
            # a GPU actor decodes with threads on its share of the CPUs, so the GPU is kept fed
            actors = self.config.actors or total_gpus
            return actors, max(1, total_cpus // actors), 1
        return self.config.actors or max(1, total_cpus), 1, 0  # decoding is per process: one CPU each


class _InOrder:
    """Commits done shards in source order (so ids and which duplicate is the item match the local engine),
    about ``flush_every`` items per commit, and removes each staged shard once it is committed."""

    def __init__(self, run, summary: IngestSummary, dirs: list[str], flush_every: int):
        self.run, self.summary, self.dirs, self.flush_every = run, summary, dirs, flush_every
        self.ready: set[int] = set()
        self.next = 0
        self.pending: list = []
        self.pending_dirs: list[str] = []
        self.seconds = 0.0

    def advance(self, indexes) -> None:
        self.ready.update(indexes)
        while self.next in self.ready:
            self.ready.discard(self.next)
            start = time.perf_counter()
            self.pending.extend(read_shard(self.dirs[self.next]))
            self.seconds += time.perf_counter() - start
            self.pending_dirs.append(self.dirs[self.next])
            self.next += 1
            if len(self.pending) >= self.flush_every:
                self._commit()

    def finish(self) -> None:
        self._commit()
        if self.next != len(self.dirs):
            raise NearsightError(f"the Ray run ended with shards {self.next}.. not done; re-run to continue")

    def _commit(self) -> None:
        start = time.perf_counter()
        if self.pending:
            # trained heads are computed from their base encoder's vectors here, on the driver: their weights
            # live in the collection, which the actors never open (``embed`` skips what the actors made)
            embed([r for r in self.pending if isinstance(r, Decoded)], self.run.encoders, self.run.config.batch_size)
            self.run.commit(self.pending, self.summary)
        for directory in self.pending_dirs:  # only now: a crash before this leaves them for the next run
            remove_shard(directory)
        self.pending, self.pending_dirs = [], []
        self.seconds += time.perf_counter() - start


class _ShardWriter:
    """A Ray Data actor: reads, decodes and encodes whole shards and stages them (``shards.write_shard``)."""

    def __init__(self, task: DecodeTask, device: str, batch_size: int, threads: int):
        self.decoder = Decoder(task)
        self.encoders = [create_encoder(name, device=device, **dict(cfg)) for name, cfg in task.encoders]
        self.batch_size = batch_size
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def __call__(self, batch: dict) -> dict:
        for directory, key, jobs in zip(batch["dir"], batch["key"], batch["jobs"]):
            jobs = pickle.loads(jobs)
            start_shard(str(directory))
            results = list(self.pool.map(self.decoder, jobs) if self.pool else map(self.decoder, jobs))
            embed([r for r in results if isinstance(r, Decoded)], self.encoders, self.batch_size)
            write_shard(str(directory), str(key), results, [e.name for e in self.encoders])
        return {"index": batch["index"]}
