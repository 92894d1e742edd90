"""The thread policy for embedding a query: one intra-op thread per call, in the CLI, the Python API and the server.

A query is one image (or one text); its forward pass gains little from splitting each layer over threads,
and loses a lot when the machine is busy, because every layer ends in a barrier that waits for the slowest
thread (one cnn embed measured 439 ms at torch's default thread count on a busy machine against 46 ms on
one thread). The server runs many queries at once and already starts torch single-threaded
(``serve --blas-threads``); ``Collection`` applies the same count per call, so a query costs the same
wherever it comes from. Throughput work (ingest) keeps torch's default: there a batch has work to split.
"""
from __future__ import annotations

import contextlib
import os
import sys

QUERY_THREADS = 1


def _loaded_torch():
    """torch if this process has imported it, else None. While another thread is still importing it, sys.modules
    already holds the half-initialised module (no get_num_threads yet: a server's first text search failed with
    a 500 beside a first image search, or beside the text warm-up); ``import`` waits for that import to end."""
    if "torch" not in sys.modules:
        return None
    import torch

    return torch


@contextlib.contextmanager
def intra_op_threads(n: int | None):
    """torch's intra-op thread count set to ``n`` for the block, then put back; nothing when torch is not
    loaded (a numpy-only encoder) or ``n`` is None.

    torch keeps the count per process, so a block in one thread changes it for blocks that start in other
    threads meanwhile; every query path sets the same ``n``, so they agree.
    """
    torch = _loaded_torch()
    if torch is None or n is None or torch.get_num_threads() == n:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def call_threads() -> int:
    """Threads a CPU encoder call may use outside torch (ONNX Runtime sessions side by side): torch's intra-op
    count when torch is loaded, so the query policy above (1 per call) and ``serve --blas-threads`` apply to it
    too; else the cores this process may use."""
    torch = _loaded_torch()
    if torch is not None:
        return torch.get_num_threads()
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
