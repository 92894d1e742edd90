"""``nearsight serve --http granian``: the WSGI app served by granian's Rust HTTP stack on a socket we bound.

Why: a search by id costs the server 2.7 CPU-ms a request at 1M items under waitress, part of it waitress's own
Python (its asyncore loop, the hand-over to a request thread and back); granian parses and writes HTTP in Rust and
calls the app from its own Python threads: 2.1 ms on the same app and requests. At concurrency 16 on two cores the
searches a second were 1.18-1.28x waitress's (``scripts/bench_scale.py``).

Granian's public server binds its own socket and spawns its own worker processes, while ``serve --processes``
forks onto one socket it bound (workers.py) and each process needs its own private port for image jobs. So a
process here runs one granian worker on the socket it inherited, through granian's worker class: an internal
interface, which is why pyproject.toml pins granian's minor version. What granian does not do that waitress did:
HTTP it cannot parse gets granian's plain-text 400, not the API's JSON, and a client that goes away does not
cancel its synchronous image job (it runs to the end; waitress tells the app).
"""
from __future__ import annotations

import socket
import threading

from ..retrieval.errors import NearsightError

GRANIAN = "granian>=2.8,<2.9"


def check_installed() -> None:
    """Raise with the install line when granian (the ``fast`` extra) is missing."""
    import importlib

    try:
        importlib.import_module("granian._granian")
    except ImportError:
        raise NearsightError(f"--http granian needs granian: pip install 'nearsight[fast]' (or '{GRANIAN}')") from None


def serve(app, sock: socket.socket, threads: int, worker_id: int = 1) -> None:
    """Answer HTTP on the listening ``sock`` with ``app`` until SIGINT or SIGTERM (granian takes both), in
    ``threads`` Python threads; returns when the server has stopped."""
    from granian._futures import _new_cbscheduler
    from granian._granian import SocketHolder, WSGIWorker
    from granian._loops import loops
    from granian._signals import set_sync_signals
    from granian.wsgi import _callback_wrapper

    callback = _callback_wrapper(app, {"url_path_prefix": None}, None)
    shutdown = set_sync_signals()
    stopped = threading.Event()
    shutdown.add_cb(stopped.set)
    no_tls = (False, None, None, None, "tls1.3", None, [], False)
    worker = WSGIWorker(worker_id, (None, SocketHolder(sock.fileno(), False, 1024)), None,
                        1,              # Rust runtime threads: they only move bytes
                        512,            # Rust blocking threads (granian's default)
                        threads,        # Python threads calling the app
                        30,             # seconds an idle Python thread is kept
                        threads,        # backpressure: requests in the app at once, the rest wait in the kernel
                        "1", None, None, None, *no_tls, (None, None))
    loop = loops.get("auto")
    worker.serve_mtr(_new_cbscheduler(loop, callback, impl_asyncio=True), loop, shutdown)
    stopped.wait()
