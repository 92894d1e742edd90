"""Decode worker processes: results in job order, a bounded window decoded ahead, and a prompt stop.

``concurrent.futures.ProcessPoolExecutor`` rather than ``multiprocessing.Pool``: a worker that dies (killed,
out of memory, an initializer that raises) breaks the pool with an error instead of leaving its tasks
unanswered forever, and jobs are submitted here, by the consumer's thread, so no feeder thread can be left
blocked on a back-pressure window when the consumer fails. ``close`` (also on any exception or Ctrl-C in
the consumer) cancels what is queued and stops the workers within a bound, so the main process is never
held up by them: that is the one failure path ingest relies on.
"""
from __future__ import annotations

import signal
import sys
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from ..retrieval.errors import NearsightError
from ..retrieval.writelock import release_inherited
from .decode import DecodeTask, decode_job, init_worker

CHUNK = 4  # jobs per task: amortises the pickling round trip of small images
STOP_SECONDS = 5.0  # how long close() lets the workers finish the images in their hands


_stop = None  # in a worker: the pool's stop event


def _worker_start(task: DecodeTask, stop) -> None:
    global _stop
    _stop = stop
    # Ctrl-C and `kill -TERM -PGID` reach the whole process group; the main process stops the workers itself,
    # in order. A worker that died on the signal could do so halfway through writing a result, and the
    # executor thread of the main process would wait forever for the rest of that message.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _die_with_parent()
    release_inherited()  # a forked worker must not keep the collection's write lock alive after the main dies
    init_worker(task)


def _decode_chunk(jobs: list) -> list:
    # Once the pool stops, the chunks already queued to a worker are skipped rather than decoded: a stop then
    # waits for one image per worker, not for a queue of them.
    return [decode_job(job) for job in jobs if not _stop.is_set()]


def _die_with_parent() -> None:
    """Linux: kill this worker when its parent dies (kill -9), instead of leaving it orphaned."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class DecodePool:
    """``workers`` processes decoding ``(Source, item_id)`` jobs with ``task``; use as a context manager."""

    def __init__(self, task: DecodeTask, workers: int, mp_context, window: int):
        self._stop = mp_context.Event()
        self._executor = ProcessPoolExecutor(workers, mp_context=mp_context, initializer=_worker_start,
                                             initargs=(task, self._stop))
        self._window = max(2, window // CHUNK)  # tasks in flight: decoded results waiting stay bounded
        self._pending: deque = deque()

    def map(self, jobs: list):
        """Yield a ``Decoded`` or ``Failed`` per job, in job order."""
        for start in range(0, len(jobs), CHUNK):
            self._pending.append(self._executor.submit(_decode_chunk, jobs[start:start + CHUNK]))
            if len(self._pending) >= self._window:
                yield from self._next()
        while self._pending:
            yield from self._next()

    def _next(self) -> list:
        future = self._pending.popleft()
        try:
            return future.result()
        except BrokenProcessPool:
            raise NearsightError("a decode worker process died (killed, out of memory, or it could not start); "
                                 "re-run with --workers 0 to see the cause") from None

    def close(self) -> None:
        """Stop: drop queued jobs, let each worker finish the image in its hands, kill any still busy after
        ``STOP_SECONDS`` (a read stuck on a dead file system). Returns within that bound.

        Workers are not terminated at once: one killed while writing its result leaves a partial message in
        the result pipe, and the executor's own thread (which the interpreter joins at exit) then waits on it
        forever.
        """
        self._stop.set()
        for future in self._pending:
            future.cancel()
        self._pending.clear()
        processes = list((getattr(self._executor, "_processes", None) or {}).values())
        self._executor.shutdown(wait=False, cancel_futures=True)
        deadline = time.monotonic() + STOP_SECONDS
        for p in processes:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in processes:
            if p.is_alive():
                p.kill()
                p.join(1)

    def __enter__(self) -> "DecodePool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
