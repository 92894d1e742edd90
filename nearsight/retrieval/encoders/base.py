"""The encoder contract and the registry every encoder joins.

An encoder is split in two so ingest can overlap decoding and encoding:
``preprocess`` is cheap, CPU-only, picklable work that runs in decode worker processes
(it must never load a model), and ``encode_images`` / ``encode_text`` run batched on the
device in the main process, loading their model lazily on first use.
"""
from __future__ import annotations

import os
import sys
from typing import Callable

import numpy as np

from ..errors import UnknownEncoder, UnsupportedModality

IMAGE = "image"
TEXT = "text"
METRICS = ("ip", "l2")

_REGISTRY: dict[str, type["Encoder"]] = {}


class Encoder:
    """Base class. Subclasses set the class attributes and implement ``preprocess`` and ``encode_images``.

    - ``dim``: length of one embedding.
    - ``metric``: ``"ip"`` (inner product on L2-normalised vectors, higher is closer) or ``"l2"``.
    - ``modalities``: which queries it embeds (``IMAGE``, ``TEXT``).
    - ``draft_size``: the smallest image side ``preprocess`` needs; decoders may decode a JPEG
      at reduced size (PIL draft mode) down to this.
    """

    name: str = ""
    dim: int = 0
    metric: str = "ip"
    modalities: frozenset[str] = frozenset({IMAGE})
    draft_size: int = 256
    derived_from: str | None = None  # set by encoders computed from another encoder's vectors (trained heads)

    def __init__(self, device: str = "auto", **config):
        self.device_request = device
        self.config = dict(config)

    # -- identity -------------------------------------------------------------------------
    def describe(self) -> dict:
        """JSON-serialisable description stored in ``collection.json`` (enough to recreate it)."""
        spec = {"name": self.name, "dim": self.dim, "metric": self.metric,
                "modalities": sorted(self.modalities), "config": self.config}
        if self.name != type(self).name:  # an instance named apart from its kind (a trained model)
            spec["kind"] = type(self).name
        return spec

    @property
    def device(self) -> str:
        """The torch device in use: ``auto`` resolves to CUDA when present, else CPU."""
        if not hasattr(self, "_device"):
            self._device = resolve_device(self.device_request)
        return self._device

    def attach(self, collection_dir: str) -> None:
        """Called by the collection that owns this encoder; a trained model finds its weights there."""

    def training_report(self) -> dict | None:
        """A trained encoder's training report (validation figures), None for a fixed one."""
        return None

    # -- work -----------------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """PIL RGB image -> one array of fixed shape and dtype, ready to be stacked. CPU only."""
        raise NotImplementedError

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """Stacked ``preprocess`` outputs (n, ...) -> (n, dim) float32 embeddings."""
        raise NotImplementedError

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, dim) float32 embeddings, for encoders with a text tower."""
        takes_text = [n for n in list_encoders() if TEXT in _REGISTRY[n].modalities]
        raise UnsupportedModality(
            f"encoder {self.name!r} has no text tower; encoders that take text: {', '.join(takes_text) or 'none'}")

    def embed_images(self, images) -> np.ndarray:
        """Convenience for queries: PIL images -> (n, dim) float32."""
        return self.encode_images(np.stack([self.preprocess(im) for im in images]))


def _gpu_driver_present() -> bool:
    """Whether this machine has an NVIDIA (or ROCm) driver's device nodes, i.e. torch could see a GPU."""
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/proc/driver/nvidia", "/dev/kfd"))


def resolve_device(device: str) -> str:
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"unknown device {device!r}; use auto, cpu or cuda")
    if device == "cpu":
        return "cpu"
    if device == "auto" and "torch" not in sys.modules and not _gpu_driver_present():
        # "auto" cannot be CUDA without a GPU driver, and importing torch only to ask costs 2-4 s of a small
        # machine's CPU, on the critical path of every CLI call whose encoders run without it (ONNX Runtime)
        return "cpu"
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm; all-zero rows stay zero. (n, d) float32."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


def register_encoder(name: str) -> Callable[[type[Encoder]], type[Encoder]]:
    """Class decorator: ``@register_encoder("gist")``."""
    def add(cls: type[Encoder]) -> type[Encoder]:
        if cls.metric not in METRICS:
            raise ValueError(f"encoder {name!r} has metric {cls.metric!r}; use one of {METRICS}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls
    return add


def list_encoders() -> list[str]:
    """Names of all registered encoders, sorted."""
    _load_builtin()
    return sorted(_REGISTRY)


def encoder_class(name: str) -> type[Encoder]:
    _load_builtin()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownEncoder(f"unknown encoder {name!r}; valid names: {', '.join(sorted(_REGISTRY))}") from None


def create_encoder(name: str, device: str = "auto", **config) -> Encoder:
    """A new encoder by registered name. Cheap: models load on first encode."""
    cls = encoder_class(name)
    import inspect

    params = inspect.signature(cls.__init__).parameters
    if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(config) - set(params))
        if unknown:
            valid = sorted(p for p in params if p not in ("self", "device"))
            raise UnknownEncoder(f"unknown option(s) {', '.join(unknown)} for encoder {name!r}; "
                                 f"valid options: {', '.join(valid) or 'none'}")
    return cls(device=device, **config)


def _load_builtin() -> None:
    # Importing the modules registers them; done lazily so `import nearsight` stays light.
    from . import builtin  # noqa: F401
