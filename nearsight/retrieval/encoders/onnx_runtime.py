"""ONNX Runtime for a torch encoder on the CPU: the module exported to ONNX once, cached beside its weights, and
run by ORT sessions.

Export is keyed by the content of the weights file and the versions that shape the graph (torch, timm, the
export recipe), so a changed weights file or a new torch makes a new file rather than a stale one being used.
The file goes beside the weights when that folder is writable (a collection's model folder, a venv), else into
the user cache (``$XDG_CACHE_HOME/nearsight/onnx``); it is written under a temporary name and renamed, so two
processes exporting at once both end with a whole file.

Sessions run single-threaded, one whole sub-batch per calling thread, side by side (ORT's ``run`` is
thread-safe and releases the GIL): the same layout as the torch CPU path (``netutil.run_image_parallel``),
for the same reason: no per-layer barrier between threads on a shared, busy machine.
"""
from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading

import numpy as np

LOG = logging.getLogger(__name__)

# bumped whenever the exported graph changes for the same weights (inputs, normalisation, opset)
RECIPE = 1
OPSET = 17
_WARNED: set[str] = set()


def available() -> bool:
    """Whether onnxruntime imports here."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def warn_once(key: str, message: str) -> None:
    """One warning a process for ``key`` (a missing runtime is said once, not per batch)."""
    if key not in _WARNED:
        _WARNED.add(key)
        LOG.warning(message)


def file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_key(weights_path: str, name: str) -> str:
    """Name of the exported file: weights content + torch/timm versions + recipe. Versions come from the package
    metadata, so a process that finds the file cached never imports torch."""
    from importlib.metadata import PackageNotFoundError, version

    def ver(package):
        try:
            return version(package)
        except PackageNotFoundError:
            return "-"

    h = hashlib.sha256()
    h.update(file_digest(weights_path).encode())
    h.update(f"{name}|{ver('torch')}|{ver('timm')}|{RECIPE}|{OPSET}".encode())
    return f"{name}.{h.hexdigest()[:16]}.onnx"


def cache_path(weights_path: str, name: str) -> str:
    """Where the exported model of ``weights_path`` lives: beside it when writable, else the user cache."""
    key = cache_key(weights_path, name)
    beside = os.path.dirname(os.path.abspath(weights_path))
    if os.access(beside, os.W_OK):
        return os.path.join(beside, key)
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(root, "nearsight", "onnx", key)


def export(module, example, path: str, inputs: dict[str, dict] | None = None) -> str:
    """Export ``module`` to ``path``. ``example`` is one array or a tuple of them (the module's arguments);
    ``inputs`` names them with their dynamic axes (default: one uint8 ``images`` input, batch axis dynamic).
    The module returns one (n, d) float32 array, ``features``."""
    import torch
    import warnings

    examples = example if isinstance(example, tuple) else (example,)
    inputs = inputs or {"images": {0: "n"}}
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=os.path.basename(path) + ".", suffix=".tmp", dir=os.path.dirname(path))
    os.close(fd)
    try:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notices
            # the TorchScript exporter needs only torch; the dynamo one would also need onnx and onnxscript
            torch.onnx.export(module.eval(), tuple(torch.from_numpy(x) for x in examples), tmp,
                              input_names=list(inputs), output_names=["features"],
                              dynamic_axes={**inputs, "features": {0: "n"}}, opset_version=OPSET, dynamo=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    LOG.info("exported %s", path)
    return path


def session(path: str, intra_op_threads: int = 1):
    """An ORT CPU session over ``path``: ``intra_op_threads`` threads a layer, fully optimised, no spinning."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, int(intra_op_threads))
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # no spinning: a waiting thread would burn a core that the decode workers need
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


class OrtRunner:
    """One ONNX Runtime session over an exported model, run one sub-batch per thread.

    ``__call__(batch (n, ...) uint8, threads, sub_batch) -> (n, d) float32``.
    """

    def __init__(self, path: str, intra_op_threads: int = 1):
        self.intra_op_threads = max(1, int(intra_op_threads))
        self.session = session(path, self.intra_op_threads)
        self.input = self.session.get_inputs()[0].name
        self.path = path
        self._pool = None
        self._pool_lock = threading.Lock()

    def run(self, batch: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input: np.ascontiguousarray(batch)})[0]

    def __call__(self, batch: np.ndarray, threads: int, sub_batch: int) -> np.ndarray:
        from .netutil import sub_batches

        if self.intra_op_threads > 1:      # ORT splits each layer over its own threads
            return self.run(batch)
        parts = sub_batches(len(batch), sub_batch)
        if threads <= 1 or len(parts) <= 1:
            return np.concatenate([self.run(batch[p]) for p in parts]) if len(parts) > 1 else self.run(batch)
        from concurrent.futures import ThreadPoolExecutor

        with self._pool_lock:
            if self._pool is None or self._pool._max_workers != threads:
                if self._pool is not None:
                    self._pool.shutdown(wait=True)
                self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ort")
            pool = self._pool
        return np.concatenate(list(pool.map(lambda p: self.run(batch[p]), parts)))
