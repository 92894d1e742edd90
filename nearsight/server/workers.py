"""``nearsight serve --processes N``: N server processes on one port, so that searches use more than one core.

One Python process answers one request at a time under the GIL (a 1M-item collection: ~300 searches/s however
many threads it has). The supervisor binds the port once and forks the server processes, which inherit the
listening socket; the kernel hands each connection to one of them. Each opens the collection itself, after the
fork (LMDB environments and faiss indexes never cross one), and maps the same index files, so the page cache
holds them once.

An image job (scene completion, colorization) lives in the process that took it. Each process also listens on a
private loopback port, and job ids name their process (``"p2.xyz"``): a request for a job that reaches another
process is passed on to its owner (``job_routes``).

Faults: a process that fails to start (a collection that will not open) stops the server with its error; one that
dies later is started again, with one line, unless ``MAX_RESTARTS`` did within the last minute (it would only die
again). Ctrl-C or SIGTERM stop every process within seconds; SIGHUP is passed on (each reloads its collection).
"""
from __future__ import annotations

import logging
import os
import signal
import socket
import time
import traceback

from ..retrieval.errors import NearsightError

LOG = logging.getLogger(__name__)

MAX_RESTARTS = 5        # restarts within a minute past which the server stops
STOP_GRACE_S = 5.0      # after SIGTERM, how long processes get to finish before SIGKILL


def listen(host: str, port: int, backlog: int = 1024) -> socket.socket:
    """The listening socket the server processes share (what waitress would bind for ``host``)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                             flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError as exc:  # port in use, no such interface, a port below 1024 without the right
        raise NearsightError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    return sock


class Supervisor:
    """Forks ``count`` server processes, each ``run(index, ready)``: it serves until it returns (or raises), and
    calls ``ready(items)`` once it answers requests. ``start`` returns once every one is ready (or raises the
    first one's error); ``wait`` restarts those that die, until a stop signal."""

    def __init__(self, count: int):
        self.count = count
        self._private = [socket.create_server(("127.0.0.1", 0)) for _ in range(count)]
        self.private_ports = [s.getsockname()[1] for s in self._private]
        self._pids: dict[int, int] = {}                 # pid -> process index
        self._run = None

    def private_socket(self, index: int) -> socket.socket:
        return self._private[index]

    def start(self, run) -> int:
        """Fork every process; the item count the first one reported."""
        self._run = run
        return [self._fork(index) for index in range(self.count)][0]

    def _fork(self, index: int) -> int:
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:                                    # the server process
            os.close(read)
            code = 0
            try:
                for signum in (signal.SIGINT, signal.SIGTERM):
                    signal.signal(signum, _interrupt)
                for i, s in enumerate(self._private):
                    if i != index:
                        s.close()
                self._run(index, lambda items: _send(write, f"ready {items}"))
            except KeyboardInterrupt:
                pass
            except BaseException as exc:
                _send(write, str(exc) if isinstance(exc, NearsightError) else traceback.format_exc(limit=3))
                code = 1
            _exit(code)
        os.close(write)
        self._pids[pid] = index
        word, _, items = _receive(read).partition(" ")
        if word != "ready":
            os.waitpid(pid, 0)
            self._pids.pop(pid, None)
            self.stop()
            raise NearsightError(f"server process {index} failed to start: "
                                 f"{(word + ' ' + items).strip() or 'it exited without a word'}")
        return int(items)

    def wait(self) -> None:
        """Until SIGINT/SIGTERM: restart a process that dies; SIGHUP is passed on to every one."""
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
        signal.signal(signal.SIGHUP, lambda signum, frame: self._signal_all(signal.SIGHUP))
        restarts: list[float] = []
        try:
            while self._pids:
                pid, status = os.waitpid(-1, 0)
                if pid not in self._pids:
                    continue
                index = self._pids.pop(pid)
                how = (f"signal {os.WTERMSIG(status)}" if os.WIFSIGNALED(status) else
                       f"exit status {os.WEXITSTATUS(status)}")
                now = time.monotonic()
                restarts = [t for t in restarts if now - t < 60] + [now]
                if len(restarts) > MAX_RESTARTS:
                    raise NearsightError(f"server process {index} died ({how}), the {len(restarts)}th death within "
                                         "a minute; stopping the server")
                LOG.warning("server process %d (pid %d) died (%s); starting it again", index, pid, how)
                self._fork(index)
        except _Stop:
            pass
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):  # a second Ctrl-C while stopping: stop() is under way
                signal.signal(signum, signal.SIG_IGN)
            self.stop()

    def _signal_all(self, signum: int) -> None:
        for pid in list(self._pids):
            try:
                os.kill(pid, signum)
            except ProcessLookupError:
                pass

    def stop(self) -> None:
        """SIGTERM every process, SIGKILL those still there after STOP_GRACE_S; reaps them all."""
        self._signal_all(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        while self._pids and time.monotonic() < deadline:
            for pid in list(self._pids):
                if os.waitpid(pid, os.WNOHANG)[0]:
                    self._pids.pop(pid)
            time.sleep(0.05)
        self._signal_all(signal.SIGKILL)
        for pid in list(self._pids):
            os.waitpid(pid, 0)
            self._pids.pop(pid)


class _Stop(Exception):
    pass


def _stop(signum, frame):
    raise _Stop


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _exit(code: int) -> None:
    """End a forked server process. os._exit skips the interpreter's exit hooks (right for a fork: the parent's
    are not ours), and with them multiprocessing's, which unlinks the semaphores this process made (its image job
    slots' cancel events); the resource tracker then warned of "leaked semaphore objects" at every stop after an
    image job. So that one hook runs first (a private function of multiprocessing, hence the getattr)."""
    from multiprocessing import util

    getattr(util, "_exit_function", lambda: None)()
    os._exit(code)


def _send(fd: int, message: str) -> None:
    try:
        os.write(fd, message.encode()[:4000])
        os.close(fd)
    except OSError:
        pass


def _receive(fd: int) -> str:
    """A process's first word: "ready", its error, or "" when it died without one."""
    with os.fdopen(fd, "rb") as f:
        return f.read().decode(errors="replace").strip()
