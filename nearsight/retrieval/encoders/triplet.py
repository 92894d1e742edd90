"""A text + image encoder trained inside a collection (``nearsight train``): two small projection heads into
one shared space, over frozen towers.

- image side: a head over the embeddings of another encoder of the collection (``base``, ``cnn`` by default).
  Images are embedded by the base encoder and projected, so ingest and queries need nothing new; training
  and re-embedding read the stored base embeddings and decode no image.
- text side: a head over the frozen all-MiniLM-L6-v2 sentence embedding (``sentence.py``).

The weights live in the collection (``DIR/models/<name>/<generation>/``: ``heads.safetensors``,
``model.json``, ``report.json``); the manifest's config names that folder relative to the collection, so a
collection can be moved. Base features are rounded to float16 before projection, as they are stored, so an
item embedded at ingest time and one re-embedded from its stored features get the same vector.
"""
from __future__ import annotations

import json
import os
import threading

import numpy as np

from ..errors import WeightsUnavailable
from .base import IMAGE, TEXT, Encoder, create_encoder, register_encoder
from .sentence import DIM as TEXT_DIM
from .sentence import sentence_encoder

WEIGHTS_FILE = "heads.safetensors"
MODEL_FILE = "model.json"
REPORT_FILE = "report.json"


N_CLASSES = 1000  # ImageNet classes of the bridge


def build_heads(base_dim: int, dim: int, hidden: int, bridge: bool = False):
    """The trainable part: {"image": head, "text": head}, each in_dim -> dim (a linear map plus a GELU MLP).

    ``bridge``: each head also has a skip path through the ImageNet classes, which ``init_bridge`` fills in
    (see there); its classifier and class-name embeddings are buffers, saved with the weights.
    """
    import torch
    from torch import nn

    class ClassBridge(nn.Module):
        """Base features -> the classifier's class probabilities -> their mean class-name sentence embedding:
        an image's classes said in the text tower's own space (frozen)."""

        def __init__(self):
            super().__init__()
            self.register_buffer("weight", torch.zeros(N_CLASSES, base_dim))
            self.register_buffer("bias", torch.zeros(N_CLASSES))
            self.register_buffer("scale", torch.ones(()))
            self.register_buffer("class_text", torch.zeros(N_CLASSES, TEXT_DIM))

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            probs = torch.softmax((x * self.scale) @ self.weight.T + self.bias, dim=-1)
            return probs @ self.class_text

    class ProjectionHead(nn.Module):
        # A linear path keeps the frozen geometry available from the first step; the MLP adds what it lacks.
        def __init__(self, in_dim: int, bridge_in: nn.Module | None = None):
            super().__init__()
            self.linear = nn.Linear(in_dim, dim)
            self.mlp = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
            self.bridge_in = bridge_in
            self.skip = nn.Linear(TEXT_DIM, dim, bias=False) if bridge_in is not None else None

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            out = self.linear(x) + self.mlp(x)
            if self.skip is not None:
                out = out + self.skip(self.bridge_in(x))
            return nn.functional.normalize(out, dim=-1)

    if not bridge:
        return nn.ModuleDict({"image": ProjectionHead(base_dim), "text": ProjectionHead(TEXT_DIM)})
    return nn.ModuleDict({"image": ProjectionHead(base_dim, ClassBridge()),
                          "text": ProjectionHead(TEXT_DIM, nn.Identity())})


def init_bridge(heads, classifier_weight, classifier_bias, feature_scale: float, class_text) -> None:
    """Start the heads at the zero-shot bridge (score = sum over classes of cos(text, class name) x p(class |
    image)), so that training refines a model that already knows the 1000 ImageNet concepts instead of
    learning only the few hundred of the collection's captions (LiT's locked tower with a text side that starts
    aligned). Both skip paths get the same map (the class names' top principal directions: the bridge's
    inner product survives a projection to ``dim`` < 384); the other paths' outputs start at zero and learn.
    """
    import torch

    bridge = heads["image"].bridge_in
    with torch.no_grad():
        bridge.weight.copy_(torch.as_tensor(classifier_weight))
        bridge.bias.copy_(torch.as_tensor(classifier_bias))
        bridge.scale.fill_(float(feature_scale))
        bridge.class_text.copy_(torch.as_tensor(class_text))
        _, _, vt = torch.linalg.svd(bridge.class_text, full_matrices=False)  # (384, 384)
        shared = torch.zeros_like(heads["image"].skip.weight)               # (dim, 384)
        rows = min(shared.shape[0], vt.shape[0])
        shared[:rows] = vt[:rows]
        for head in (heads["image"], heads["text"]):
            head.skip.weight.copy_(shared)
            for layer in (head.linear, head.mlp[-1]):
                layer.weight.zero_()
                layer.bias.zero_()


def save_model(directory: str, heads, meta: dict, report: dict) -> None:
    """Write a trained model folder, its files fsynced (it is used once the manifest names it)."""
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in heads.state_dict().items()}
    save_file(state, os.path.join(directory, WEIGHTS_FILE))
    for name, payload in ((MODEL_FILE, meta), (REPORT_FILE, report)):
        with open(os.path.join(directory, name), "w") as f:
            json.dump(payload, f, indent=1)
    for name in (WEIGHTS_FILE, MODEL_FILE, REPORT_FILE):
        fd = os.open(os.path.join(directory, name), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def load_heads(directory: str, device: str = "cpu"):
    """(heads in eval mode on ``device``, model.json dict) from a model folder; WeightsUnavailable if unreadable."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        with open(os.path.join(directory, MODEL_FILE)) as f:
            meta = json.load(f)
        state = load_file(os.path.join(directory, WEIGHTS_FILE), device="cpu")
        heads = build_heads(meta["base_dim"], meta["dim"], meta["hidden"], bool(meta.get("bridge")))
        heads.load_state_dict(state, strict=True)
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:  # SafetensorError: a damaged file
        raise WeightsUnavailable(f"cannot load the trained model in {directory}: {e}") from e
    return heads.eval().to(device), meta


@register_encoder("triplet")
class TripletEncoder(Encoder):
    """Trained heads over a base image encoder and the sentence encoder: (n, dim) float32, unit norm.

    Config: ``base`` and ``base_config`` (the image encoder it projects), ``dim``, ``hidden``, ``model``
    (the model folder, relative to the collection). Created cheaply; weights load on first encode.
    """

    metric = "ip"
    modalities = frozenset({IMAGE, TEXT})

    def __init__(self, device: str = "auto", base: str = "cnn", base_config: dict | None = None,
                 dim: int = 256, hidden: int = 512, model: str | None = None, text: bool = True):
        super().__init__(device, base=base, base_config=dict(base_config or {}), dim=int(dim),
                         hidden=int(hidden), model=model, text=bool(text))
        # a model trained on image copies only (--pairs augment) has an untrained text head: image only
        self.modalities = frozenset({IMAGE, TEXT}) if text else frozenset({IMAGE})
        self.dim = int(dim)
        self.base = create_encoder(base, device=device, **dict(base_config or {}))
        self.derived_from = base  # ingest feeds it the base encoder's vectors instead of pixels
        self.draft_size = self.base.draft_size
        self.root = None  # the collection folder, set by ``attach``
        self._heads = None
        self._load_lock = threading.Lock()

    def attach(self, collection_dir: str) -> None:
        self.root = collection_dir

    @property
    def model_dir(self) -> str:
        model = self.config.get("model")
        if not model:
            raise WeightsUnavailable("this triplet encoder has no trained model; train one with `nearsight train`")
        return model if os.path.isabs(model) or self.root is None else os.path.join(self.root, model)

    def heads(self):
        if self._heads is None:
            with self._load_lock:
                if self._heads is None:
                    self._heads, _ = load_heads(self.model_dir, self.device)
        return self._heads

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_heads"] = None
        state.pop("_load_lock", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._load_lock = threading.Lock()

    # -- work -----------------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        return self.base.preprocess(image)

    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """Stacked base ``preprocess`` outputs -> (n, dim) float32 through the base encoder and the image head."""
        return self.encode_features(self.base.encode_images(batch))

    def encode_features(self, features: np.ndarray) -> np.ndarray:
        """(n, base_dim) base embeddings -> (n, dim) float32 unit vectors (inputs rounded to float16 as stored)."""
        return self._project("image", np.asarray(features, dtype=np.float16))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, dim) float32 unit vectors through the sentence encoder and the text head."""
        if TEXT not in self.modalities:
            return super().encode_text(texts)
        return self._project("text", sentence_encoder(self.device).encode(list(texts)))

    def _project(self, side: str, x: np.ndarray) -> np.ndarray:
        import torch

        heads = self.heads()
        if len(x) == 0:
            return np.zeros((0, self.dim), np.float32)
        with torch.inference_mode():
            out = heads[side](torch.from_numpy(np.asarray(x, dtype=np.float32)).to(self.device))
        return out.float().cpu().numpy()

    def training_report(self) -> dict | None:
        """The report saved with the model: pairs used, validation recall@k, epochs, time."""
        try:
            with open(os.path.join(self.model_dir, REPORT_FILE)) as f:
                report = json.load(f)
        except (OSError, ValueError, WeightsUnavailable):
            return None
        return {k: report[k] for k in ("pairs", "train_pairs", "val_pairs", "val_queries", "best_epoch", "examples",
                                       "validation", "seconds", "trained") if k in report} | \
            {"negatives": report.get("config", {}).get("negatives")}
