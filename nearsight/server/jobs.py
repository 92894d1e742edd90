"""Heavy image jobs (complete, colorize, recolor) on a bounded pool of worker processes: ``JobExecutor``.

Why processes and not threads: the methods are seconds of numpy, scipy and PyMaxflow with Python in
between; run on the server's threads they would contend for the GIL with every search, and they would
share its memory. A worker's memory is its own: the server's RSS stays the searches', and each worker's
peaks at its own base plus one job: the method at the capped working size (``JobConfig.max_side``), and for a
completion of a larger photo the photo itself and its full-size blend, which ``CompletionConfig.full_max_pixels``
bounds (about 0.85 GB at its default).

CPU: closed-loop searches saturate every core they may use, so a worker that merely shares the cores gets
a thread's share (niced, next to nothing: measured 0 completions a minute under 8 concurrent searches on
2 cores). With ``partition`` (what ``nearsight serve`` does; Linux), the workers run on the last
``workers`` cores and, while any job runs, the server's threads on the others; with no job running the
searches have every core again. Without it the workers are only niced, searches first.

Bounds: at most ``workers`` jobs run at once and at most ``queue`` wait behind them; past that ``submit``
raises ``QueueFull`` with a retry estimate (the server answers 503 with ``Retry-After``). Finished jobs
(done, failed, cancelled) are kept ``ttl`` seconds and at most ``keep`` of them, then forgotten.

Cancelling: a queued job leaves the queue at once. A running job has its worker's cancel flag set; the
method's progress callback (``retrieval.complete`` / ``colorize``) raises at the next stage, so the work
stops there and the worker takes the next job.

Workers start on the first job (an app that never runs one never spawns a process); each opens the
collection read-only itself and picks up new commits before every job.
"""
from __future__ import annotations

import importlib
import logging
import math
import os
import pickle
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from ..retrieval.errors import NearsightError

LOG = logging.getLogger(__name__)

QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
FINISHED = frozenset({DONE, FAILED, CANCELLED})
DEFAULT_RUNNER = "nearsight.server.methods:run"
FIRST_GUESS_S = 5.0  # a job's run time before one has been measured (a 1024-px completion, n=6, on one core)


def _default_workers() -> int:
    """All cores but one, which is left to the searches; at least one."""
    return max(1, (os.cpu_count() or 2) - 1)


@dataclass(frozen=True)
class JobConfig:
    """Bounds of the heavy-job executor.

    - ``workers``: jobs run at once, one process each (default: all cores but one).
    - ``queue``: jobs that may wait behind the running ones; one more is refused (503).
    - ``ttl``: seconds a finished job and its result are kept.
    - ``keep``: finished jobs kept at most (the oldest go first).
    - ``max_side``: the working size cap: photos are reduced to this long side at submit, so one job's
      memory is bounded whatever was uploaded; colorize and recolor results have that size at most, while
      completions are blended again at the photo's own size (within ``full_max_pixels``).
    - ``nice``: how much lower than the server a worker's CPU priority is.
    - ``partition``: split the cores between the workers and the server while jobs run (see above);
      ignored where the cores cannot be set or there are not more cores than workers.
    """
    workers: int = field(default_factory=_default_workers)
    queue: int = 8
    ttl: float = 600.0
    keep: int = 32
    max_side: int = 1024
    nice: int = 10
    partition: bool = False

    def __post_init__(self):
        if self.workers < 1 or self.queue < 0 or self.keep < 1 or self.ttl <= 0 or self.max_side < 64:
            raise ValueError(f"need workers >= 1, queue >= 0, keep >= 1, ttl > 0, max_side >= 64; got {self}")


class QueueFull(NearsightError):
    """Every worker is busy and the queue is full; ``retry_after`` is a guess in whole seconds."""

    def __init__(self, message: str, retry_after: int = 1):
        super().__init__(message)
        self.retry_after = retry_after


class JobCancelled(Exception):
    """Raised inside a worker by the progress callback once its job is cancelled (not a NearsightError, so
    the library's per-candidate error handling never swallows it)."""


class WorkerDied(NearsightError):
    """The worker process running a job exited (killed for memory, most likely)."""


class Job:
    """One job. Mutable fields change under the executor's lock; read them through ``JobExecutor.status``."""

    def __init__(self, method: str, inputs: dict, now: float, prefix: str = ""):
        self.id = prefix + secrets.token_urlsafe(12)  # not guessable: every token holder shares one job space
        self.method = method
        self.inputs: dict | None = inputs  # dropped once the worker has them
        self.state = QUEUED
        self.stage: str | None = None
        self.fraction = 0.0
        self.result: dict | None = None
        self.error: NearsightError | None = None
        self.cancel_requested = False
        self.submitted, self.started, self.finished = now, None, None
        self._done = threading.Event()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the job has finished (done, failed or cancelled)."""
        return self._done.wait(timeout)


class JobExecutor:
    """The bounded queue and the worker processes. ``runner`` ("module:function") is what a worker calls:
    ``run(collection, method, inputs, progress) -> dict`` (JSON-ready)."""

    def __init__(self, config: JobConfig, collection: str, device: str = "auto", runner: str = DEFAULT_RUNNER,
                 clock=time.monotonic, id_prefix: str = ""):
        self.config, self.collection, self.device, self.runner = config, collection, device, runner
        self.id_prefix = id_prefix      # names the server process that owns a job (serve --processes)
        self._clock = clock
        self._lock = threading.Condition()
        self._queue: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}  # submit order, which eviction relies on
        self._slots: list[_Slot] = []
        self._closed = False
        self._mean_run_s: float | None = None
        cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        self._cores = cores if config.partition and len(cores) > config.workers else []
        self._worker_cores = self._cores[-config.workers:]

    # -- the server's side ------------------------------------------------------------------------
    def submit(self, method: str, inputs: dict) -> Job:
        """Queue a job; raises ``QueueFull`` when ``workers`` run and ``queue`` wait already."""
        with self._lock:
            if self._closed:
                raise QueueFull("the server is shutting down", retry_after=5)
            self._evict()
            running = sum(1 for job in self._jobs.values() if job.state == RUNNING)
            if len(self._queue) >= self.config.queue + max(0, self.config.workers - running):
                raise QueueFull(f"{running} image jobs are running and {len(self._queue)} are waiting, the most "
                                f"this server queues; try again later", retry_after=self._retry_after())
            job = Job(method, inputs, self._clock(), self.id_prefix)
            self._jobs[job.id] = job
            self._queue.append(job)
            if not self._slots:
                self._slots = [_Slot(self, i) for i in range(self.config.workers)]
            self._lock.notify()
            return job

    def get(self, job_id: str) -> Job | None:
        """The job, or None when unknown or forgotten (past its TTL or the retention count)."""
        with self._lock:
            self._evict()
            return self._jobs.get(job_id)

    def cancel(self, job: Job) -> bool:
        """Cancel a queued job now, or ask a running one to stop at its next stage. False if already finished."""
        with self._lock:
            if job.state in FINISHED:
                return False
            job.cancel_requested = True
            if job.state == QUEUED:
                self._queue.remove(job)
                self._finish(job, CANCELLED)
            else:
                for slot in self._slots:
                    if slot.job is job:
                        slot.cancel.set()
            return True

    def status(self, job: Job) -> dict:
        """A JSON-ready snapshot: state, stage, fraction, queue position (1 = next; 0 = not waiting), times."""
        with self._lock:
            now = self._clock()
            started = job.started if job.started is not None else (job.finished or now)
            answer = {"id": job.id, "method": job.method, "state": job.state, "stage": job.stage,
                      "fraction": round(job.fraction, 4),
                      "queue_position": self._queue.index(job) + 1 if job.state == QUEUED else 0,
                      "cancel_requested": job.cancel_requested,
                      "queued_s": round(started - job.submitted, 3),
                      "run_s": None if job.started is None else round((job.finished or now) - job.started, 3)}
            if job.state in FINISHED:
                answer["expires_in_s"] = round(max(0.0, job.finished + self.config.ttl - now), 3)
            return answer

    def counts(self) -> dict[str, int]:
        """How many known jobs are in each state."""
        with self._lock:
            self._evict()
            counts = dict.fromkeys((QUEUED, RUNNING, DONE, FAILED, CANCELLED), 0)
            for job in self._jobs.values():
                counts[job.state] += 1
            return counts

    def close(self, timeout: float = 10.0) -> None:
        """Cancel everything, stop the workers (a running job stops at its next stage, or is terminated)."""
        with self._lock:
            self._closed = True
            while self._queue:
                job = self._queue.popleft()
                job.cancel_requested = True
                self._finish(job, CANCELLED)
            for slot in self._slots:
                slot.cancel.set()
            self._lock.notify_all()
        deadline = time.monotonic() + timeout
        for slot in self._slots:
            slot.join(max(0.0, deadline - time.monotonic()))

    # -- the slots' side (all under the lock) -----------------------------------------------------
    def _next(self, slot: _Slot) -> Job | None:
        with self._lock:
            while not self._queue and not self._closed:
                self._lock.wait()
            if self._closed:
                return None
            job = self._queue.popleft()
            slot.cancel.clear()  # before the job counts as running, so a cancel from now on reaches it
            if self._cores and not any(s.job for s in self._slots):
                _pin_threads(self._cores[:-self.config.workers])  # the first job: searches leave the workers' cores
            slot.job, job.state, job.started = job, RUNNING, self._clock()
            return job

    def _progress(self, job: Job, stage: str, fraction: float) -> None:
        with self._lock:
            if job.state == RUNNING:
                job.stage, job.fraction = stage, max(job.fraction, min(1.0, fraction))

    def _done(self, slot: _Slot, job: Job, state: str, result: dict | None = None,
              error: NearsightError | None = None) -> None:
        with self._lock:
            slot.job = None
            if self._cores and not any(s.job for s in self._slots):
                _pin_threads(self._cores)  # no job running: every core is the searches' again
            if state == DONE:
                run = self._clock() - job.started
                self._mean_run_s = run if self._mean_run_s is None else 0.7 * self._mean_run_s + 0.3 * run
            self._finish(job, state, result, error)

    def _finish(self, job: Job, state: str, result: dict | None = None, error: NearsightError | None = None) -> None:
        job.state, job.result, job.error, job.inputs = state, result, error, None
        if state == DONE:
            job.fraction = 1.0
        job.finished = self._clock()
        job._done.set()
        self._evict()

    def _evict(self) -> None:
        now = self._clock()
        finished = [job for job in self._jobs.values() if job.state in FINISHED]
        expired = [job for job in finished if now - job.finished > self.config.ttl]
        for job in expired + finished[len(expired):][:max(0, len(finished) - len(expired) - self.config.keep)]:
            del self._jobs[job.id]

    def _retry_after(self) -> int:
        """Seconds until a worker is likely free: the measured mean run time over the worker count."""
        mean = self._mean_run_s if self._mean_run_s is not None else FIRST_GUESS_S
        return max(1, math.ceil(mean / self.config.workers))


class _Slot:
    """One worker: a thread here that feeds a process there, one job at a time, and replaces a dead process."""

    def __init__(self, executor: JobExecutor, index: int):
        import multiprocessing

        # spawn, not fork: the server has threads (waitress, torch) that a fork would copy mid-state.
        self._ctx = multiprocessing.get_context("spawn")
        self.executor, self.index = executor, index
        self.cancel = self._ctx.Event()
        self.job: Job | None = None
        self._process = self._conn = None
        self._thread = threading.Thread(target=self._loop, name=f"nearsight-jobs-{index}", daemon=True)
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        if self._thread.is_alive() and self._process is not None:
            self._process.terminate()  # a job between stages for longer than the timeout

    def _loop(self) -> None:
        try:
            while (job := self.executor._next(self)) is not None:
                self._run(job)
        finally:
            self._stop_process()

    def _run(self, job: Job) -> None:
        try:
            if self._process is None or not self._process.is_alive():
                self._start_process()
            self._conn.send((job.method, job.inputs))
            job.inputs = None
            while True:
                message = self._conn.recv()
                if message[0] == "progress":
                    self.executor._progress(job, message[1], message[2])
                    continue
                kind, payload = message
                if kind == DONE:
                    self.executor._done(self, job, DONE, result=payload)
                elif kind == CANCELLED:
                    self.executor._done(self, job, CANCELLED)
                else:
                    self.executor._done(self, job, FAILED, error=payload)
                return
        except (EOFError, OSError) as exc:  # the process died mid-job: this job fails, a fresh process takes the next
            code = self._process.exitcode if self._process is not None else None
            LOG.error("image job worker %d exited (%s, exit code %s) while running a %s job",
                      self.index, exc, code, job.method)
            self._stop_process()
            self.executor._done(self, job, FAILED, error=WorkerDied(
                f"the worker running this {job.method} job exited (exit code {code}); it was probably out of memory"))
        except Exception as exc:  # noqa: BLE001 - one job's odd input must not stop the slot
            LOG.exception("image job %s could not be run", job.id)
            self.executor._done(self, job, FAILED, error=WorkerDied(f"the job could not be run: {type(exc).__name__}"))

    def _start_process(self) -> None:
        ex = self.executor
        here, there = self._ctx.Pipe()
        args = (there, self.cancel, ex.collection, ex.device, ex.runner, ex.config.nice, ex._worker_cores)
        self._process = self._ctx.Process(target=worker_main, name=f"nearsight-job-worker-{self.index}", daemon=True,
                                          args=args)
        self._process.start()
        there.close()  # so that the worker's death reads as EOF here
        self._conn = here

    def _stop_process(self) -> None:
        if self._process is None:
            return
        try:
            self._conn.send(None)
        except OSError:
            pass
        self._process.join(5)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(5)
        self._conn.close()
        self._process = self._conn = None


# -- the worker process -------------------------------------------------------------------------------

def _pin_threads(cores: list[int]) -> None:
    """Move every thread of this process onto ``cores`` (Linux sets affinity per thread)."""
    for tid in os.listdir("/proc/self/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # the thread has just exited
            pass


def worker_main(conn, cancel, collection_dir: str, device: str, runner: str, nice: int,
                cores: list[int] | None = None) -> None:
    """A worker's loop: (method, inputs) in; progress, then ("done", answer) / ("failed", error) /
    ("cancelled", None) out. Exits on None or when the server's end of the pipe closes."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C on `nearsight serve` is for the server, which stops us
    try:
        os.nice(nice)
        if cores:
            os.sched_setaffinity(0, cores)  # before any thread pool starts, so they all inherit it
    except OSError:
        pass
    module, _, name = runner.partition(":")
    run = getattr(importlib.import_module(module), name)
    opened: list = [None, None]  # (collection, store identity): reopened when the store is replaced on disk

    def progress(stage: str, fraction: float) -> None:
        if cancel.is_set():
            raise JobCancelled()
        conn.send(("progress", stage, float(fraction)))

    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message is None:
            return
        method, inputs = message
        try:
            progress("start", 0.0)
            answer = (DONE, run(_collection(opened, collection_dir, device), method, inputs, progress))
        except JobCancelled:
            answer = (CANCELLED, None)
        except NearsightError as exc:
            answer = (FAILED, _portable(exc))
        except Exception:  # noqa: BLE001 - reported as an internal error; the worker goes on
            LOG.exception("%s job failed", method)
            answer = (FAILED, None)
        try:
            conn.send(answer)
        except (OSError, pickle.PicklingError):
            return


def _collection(opened: list, directory: str, device: str):
    """The worker's opened collection, refreshed; reopened when the store file was replaced (a rebuild)."""
    from ..retrieval.collection import Collection

    st = os.stat(os.path.join(directory, "store.lmdb", "data.mdb"))
    identity = (st.st_dev, st.st_ino)
    if opened[0] is None or opened[1] != identity:
        if opened[0] is not None:
            opened[0].close()
        opened[0], opened[1] = Collection.open(directory, device=device, readonly=True), identity
    opened[0].refresh()
    return opened[0]


def _portable(exc: NearsightError) -> NearsightError | None:
    """The error itself if it survives pickling (it crosses the pipe), else None (an internal error)."""
    try:
        pickle.loads(pickle.dumps(exc))
        return exc
    except Exception:  # noqa: BLE001
        return None
