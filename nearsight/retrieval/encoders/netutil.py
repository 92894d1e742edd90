"""What the neural encoders (``cnn``, ``clip``) share: uint8 crops on the CPU, a lazily loaded torch
model, and normalisation + half precision on the device.

Crops stay uint8 until they reach the device so a batch crossing from a decode worker to the main
process is 4x smaller than float32, and the mean/std arithmetic runs where it is cheapest.
"""
from __future__ import annotations

import contextlib
import threading

import numpy as np
from PIL import Image

from ..errors import InvalidQuery
from .base import Encoder

RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
            "lanczos": Image.LANCZOS, "box": Image.BOX}
RESIZE_MODES = ("shortest", "squash", "longest")
# PIL first shrinks by an integer factor with a box filter, then resamples: the result is
# indistinguishable from a full-quality resize at this gap and much cheaper on large photos.
_REDUCING_GAP = 3.0


def crop_uint8(image: Image.Image, size: tuple[int, int], resize: int | None = None,
               interpolation: str = "bicubic", mode: str = "shortest", fill: int = 0) -> np.ndarray:
    """PIL image -> (3, H, W) uint8 for a network input of ``size = (H, W)``.

    ``shortest``: scale the short side to ``resize`` (default: the short side of ``size``), then take
    the centre crop (torchvision ``Resize`` + ``CenterCrop``). ``squash``: scale to exactly ``size``,
    ignoring the aspect ratio. ``longest``: scale the long side to fit, pad the rest with ``fill``.
    """
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; use one of {RESIZE_MODES}")
    if interpolation not in RESAMPLE:
        raise ValueError(f"unknown interpolation {interpolation!r}; use one of {sorted(RESAMPLE)}")
    resample = RESAMPLE[interpolation]
    image = image.convert("RGB")
    height, width = size
    w, h = image.size
    if mode == "squash":
        out = image.resize((width, height), resample, reducing_gap=_REDUCING_GAP)
    elif mode == "shortest":
        short = resize or min(height, width)
        # torchvision truncates the long side the same way, so crops line up with open_clip / timm
        new = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
        scaled = image.resize(new, resample, reducing_gap=_REDUCING_GAP)
        left, top = (new[0] - width) // 2, (new[1] - height) // 2
        # crop() pads with black if the scaled image is smaller than the crop (resize < size)
        out = scaled.crop((left, top, left + width, top + height))
    else:
        scale = min(width / w, height / h)
        new = (max(1, round(w * scale)), max(1, round(h * scale)))
        scaled = image.resize(new, resample, reducing_gap=_REDUCING_GAP)
        out = Image.new("RGB", (width, height), (fill, fill, fill))
        out.paste(scaled, ((width - new[0]) // 2, (height - new[1]) // 2))
    return np.ascontiguousarray(np.asarray(out, dtype=np.uint8).transpose(2, 0, 1))


class TorchEncoder(Encoder):
    """An encoder backed by one torch model, built on first use (once, thread-safe) on ``self.device``.

    Subclasses implement ``_build_model() -> torch.nn.Module`` (in eval mode, on ``self.device``).
    Pickling drops the model, so an encoder can be sent to worker processes without its weights.
    """

    def __init__(self, device: str = "auto", **config):
        super().__init__(device, **config)
        self._model = None
        self._lock = threading.Lock()

    def load(self):
        """The model, loading it now if needed. Call early to fail fast on missing weights."""
        if self._model is None:
            with self._lock:
                if self._model is None:
                    self._model = self._build_model()
        return self._model

    def _build_model(self):
        raise NotImplementedError

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_model"] = None
        state.pop("_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- device helpers -------------------------------------------------------------------
    def _check_batch(self, batch: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.ndim != len(shape) + 1 or batch.shape[1:] != shape:
            raise InvalidQuery(f"encoder {self.name!r} takes a batch of shape (n, {', '.join(map(str, shape))}) "
                               f"from its preprocess, got {batch.shape}")
        return batch

    def _to_device(self, batch: np.ndarray, mean, std):
        """(n, 3, H, W) uint8 -> float32 tensor on the device, (x/255 - mean) / std per channel."""
        import torch

        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device, non_blocking=True).float()
        mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
        return (x / 255.0 - mean_t) / std_t

    def _autocast(self):
        """fp16 autocast on CUDA (weights stay fp32, matmuls and convs run in half); nothing on CPU."""
        import torch

        if str(self.device).startswith("cuda"):
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()


def fold_batchnorm(model):
    """Fold every eval-mode batch norm into the convolution just before it, in place; returns ``model``.

    Inference only: each BatchNorm2d that directly follows a Conv2d among its parent's children (timm's
    conv -> BatchNormAct2d pairs) becomes part of the conv's weight and bias, and is replaced by its
    activation alone. That removes one full pass over every activation map per layer, most of what a
    batch norm costs on CPU, and the outputs agree with the unfolded model to float32 rounding.
    """
    import torch
    from torch import nn

    for parent in list(model.modules()):
        children = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(children, children[1:]):
            if not (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)) or bn.running_var is None:
                continue
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
                    1.0 / torch.sqrt(bn.running_var + bn.eps)
                shift = (bn.bias if bn.affine else 0.0) - bn.running_mean * scale
                conv.weight.mul_(scale.view(-1, 1, 1, 1))
                bias = shift if conv.bias is None else conv.bias * scale + shift
                conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
            # timm's BatchNormAct2d applies drop + act after the norm; keep those
            rest = [m for m in (getattr(bn, "drop", None), getattr(bn, "act", None)) if m is not None]
            setattr(parent, bn_name, nn.Sequential(*rest) if rest else nn.Identity())
    return model


def sub_batches(n: int, size: int):
    """``slice`` objects covering range(n) in runs of ``size``."""
    return [slice(start, min(n, start + size)) for start in range(0, n, size)]


_PARALLEL_LOCK = threading.Lock()
_POOL = None


def run_image_parallel(task, count: int, threads: int) -> None:
    """Run ``task(i)`` for i in range(count) on ``threads`` worker threads, torch single-threaded in each.

    The CPU counterpart of one big batch: whole sub-batches per thread need no synchronisation, whereas
    torch's intra-op threads meet at a barrier after every layer, and with small sub-batches (kept small so
    their activations are reused from the heap) that is hundreds of barriers per image, each waiting for
    whichever thread the scheduler parked (retrieval/gist.py measured the same for GIST). torch's thread
    count is per process, so the workers set theirs to 1 and the caller's is put back; the lock keeps
    concurrent callers from interleaving that. A task must enter ``torch.inference_mode`` itself (thread-local).
    """
    import torch
    from concurrent.futures import ThreadPoolExecutor

    global _POOL

    def run(i):
        torch.set_num_threads(1)  # this worker thread's OpenMP (and MKL) pool
        task(i)

    with _PARALLEL_LOCK:
        previous = torch.get_num_threads()
        try:
            if _POOL is None or _POOL._max_workers != threads:
                if _POOL is not None:
                    _POOL.shutdown(wait=True)
                _POOL = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="encode")
            for job in [_POOL.submit(run, i) for i in range(count)]:
                job.result()
        finally:
            torch.set_num_threads(previous)


def normalized_numpy(t) -> np.ndarray:
    """(n, d) tensor of any dtype -> (n, d) float32 numpy array with unit-L2 rows."""
    import torch.nn.functional as F

    return F.normalize(t.float(), dim=-1).cpu().numpy().astype(np.float32, copy=False)
