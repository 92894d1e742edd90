"""One writer per collection: an exclusive ``flock`` on ``DIR/.write.lock``.

Every command that changes a collection (index, build-index, fit-pca, encoders remove) holds it for its whole
run; a second writer is refused at once with ``CollectionBusy`` rather than waiting. The kernel drops a flock
when its last holder dies, so a killed writer never leaves the collection locked.

The lock is re-entrant within one process (``index`` builds its indexes after ingesting, under the same lock),
which is why held locks are counted here: two ``flock`` calls on separate opens of one file would otherwise
refuse each other even in the same process.
"""
from __future__ import annotations

import fcntl
import os
import threading
from contextlib import contextmanager

from .errors import CollectionBusy, StorageError

LOCK_FILE = ".write.lock"

_held: dict[str, list] = {}  # realpath of the lock file -> [fd, depth]
_held_lock = threading.Lock()


@contextmanager
def write_lock(directory):
    """Hold the collection's write lock for the ``with`` block; CollectionBusy if another process holds it."""
    path = os.path.realpath(os.path.join(os.fspath(directory), LOCK_FILE))
    with _held_lock:
        entry = _held.get(path)
        if entry is None:
            # O_CLOEXEC: a decode worker started by exec (forkserver) must not inherit the lock.
            try:
                fd = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                raise StorageError(f"cannot write to {os.fspath(directory)}: {exc.strerror or exc}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise CollectionBusy(f"another nearsight process is writing to {os.fspath(directory)}; "
                                     "wait for it to finish (or stop it), then re-run") from None
            entry = _held[path] = [fd, 0]
        entry[1] += 1
    try:
        yield
    finally:
        with _held_lock:
            entry[1] -= 1
            if entry[1] == 0:
                del _held[path]
                fcntl.flock(entry[0], fcntl.LOCK_UN)
                os.close(entry[0])


def release_inherited() -> None:
    """In a process forked from a lock holder: close the inherited lock descriptors without unlocking.

    A flock belongs to the open file, shared by every descriptor that fork copied; a decode worker that kept
    its copy would keep the collection locked after its parent was killed.
    """
    with _held_lock:
        for fd, _ in _held.values():
            try:
                os.close(fd)
            except OSError:
                pass
        _held.clear()
