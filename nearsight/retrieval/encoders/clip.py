"""open_clip image and text towers: any open_clip model, weights from a pretrained tag or a local file.

Config (all JSON-serialisable, stored in ``collection.json``):

- ``model``: an open_clip model name (``ViT-B-32``, ``ViT-L-14``, ``convnext_base_w``...). Default
  ``ViT-B-32``, or the file name of ``model_config`` when that is given.
- ``pretrained``: an open_clip tag (``laion2b_s34b_b79k``; open_clip downloads it when online), a
  path to a local checkpoint (``.pt``/``.pth``/``.bin``/``.safetensors``), or ``None`` / ``"random"``
  for random weights (tests only: seeded by ``seed`` so every process builds the same model).
  Default: ``laion2b_s34b_b79k`` for ``ViT-B-32``, open_clip's first listed tag for other models.
- ``model_config``: a path to an open_clip model config JSON (``embed_dim``, ``vision_cfg``,
  ``text_cfg``) for an architecture open_clip does not ship. Its contents are kept in the config so
  the collection still opens when the file is gone.
- ``mean``, ``std``, ``interpolation``, ``resize_mode``: image preprocessing; filled in from the
  tag's settings in open_clip (or open_clip's defaults) when not given.

Creating the encoder reads only JSON (the dimension and image size come from the model config), so
a collection opens and decode workers preprocess without importing torch or open_clip.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np

from ..errors import UnknownEncoder, WeightsUnavailable
from .base import IMAGE, TEXT, register_encoder
from .netutil import RESAMPLE, RESIZE_MODES, TorchEncoder, crop_uint8, normalized_numpy

DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "laion2b_s34b_b79k"  # for DEFAULT_MODEL; other models default to open_clip's first tag
RANDOM = "random"
# open_clip's defaults (OpenAI CLIP's training statistics), used when a tag does not say otherwise
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".ckpt")
HOW_TO_GIVE_WEIGHTS = ("download the checkpoint on a machine that is online and give its path: "
                       "pretrained=/path/to/checkpoint.pt in Python, or `-o clip.pretrained=/path/to/checkpoint.pt` "
                       "on the command line")


def builtin_config_dir() -> Path:
    """open_clip's ``model_configs`` folder, found without importing open_clip (which imports torch)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise WeightsUnavailable("the clip encoder needs the package 'open-clip-torch' (pip install open-clip-torch)")
    return Path(list(spec.submodule_search_locations)[0]) / "model_configs"


def builtin_models() -> list[str]:
    return sorted(p.stem for p in builtin_config_dir().glob("*.json"))


def read_model_config(model: str, model_config=None) -> tuple[str, dict]:
    """(model name, model config dict) for a built-in name, or from ``model_config`` (a path or a dict)."""
    if model_config is not None:
        if isinstance(model_config, dict):
            cfg, stem = model_config, None
        else:
            path = Path(os.path.expanduser(str(model_config)))
            if not path.is_file():
                raise UnknownEncoder(f"clip model config file not found: {model_config}")
            try:
                cfg = json.loads(path.read_text())
            except (OSError, ValueError) as e:
                raise UnknownEncoder(f"clip model config {model_config} is not readable JSON: {e}") from None
            stem = path.stem
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise UnknownEncoder(f"clip model config {model_config} lacks {', '.join(missing)}; "
                                 "an open_clip model config has embed_dim, vision_cfg and text_cfg")
        name = model or stem
        if not name:
            raise UnknownEncoder("a clip model_config given as a dict needs a model name (model=...)")
        return name, cfg

    name = model or DEFAULT_MODEL
    if ":" in name:  # hf-hub:org/repo, local-dir:/path: weights and config come from elsewhere
        raise UnknownEncoder(f"clip model {name!r}: schema-prefixed open_clip names are not supported; "
                             "give model_config=/path/to/config.json and pretrained=/path/to/checkpoint instead")
    path = builtin_config_dir() / f"{name.replace('/', '-')}.json"
    if not path.is_file():
        known = builtin_models()
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
        raise UnknownEncoder(f"unknown open_clip model {name!r}"
                             + (f"; close matches: {', '.join(close)}" if close else "")
                             + f" ({len(known)} built-in models, see open_clip.list_models()); "
                             "for a custom architecture give model_config=/path/to/config.json")
    return name, json.loads(path.read_text())


def _is_random(pretrained) -> bool:
    return pretrained is None or str(pretrained).strip().lower() in (RANDOM, "none", "")


def _looks_like_path(pretrained: str) -> bool:
    return (os.sep in pretrained or pretrained.startswith((".", "~"))
            or pretrained.lower().endswith(CHECKPOINT_SUFFIXES) or os.path.exists(pretrained))


def _default_tag(model: str) -> str:
    if model == DEFAULT_MODEL:
        return DEFAULT_PRETRAINED
    from open_clip.pretrained import list_pretrained_tags_by_model

    tags = list_pretrained_tags_by_model(model)
    if not tags:
        raise WeightsUnavailable(f"open_clip has no pretrained tag for clip model {model!r}; {HOW_TO_GIVE_WEIGHTS}")
    return tags[0]


def _image_size(cfg: dict) -> tuple[int, int]:
    size = cfg["vision_cfg"].get("image_size", 224)
    return (int(size), int(size)) if isinstance(size, (int, float)) else (int(size[0]), int(size[1]))


@register_encoder("clip")
class ClipEncoder(TorchEncoder):
    """open_clip image and text embeddings: (n, embed_dim) float32, L2-normalised, metric ``ip``."""

    metric = "ip"
    modalities = frozenset({IMAGE, TEXT})

    def __init__(self, device: str = "auto", model: str | None = None, pretrained: str | None = "default",
                 model_config=None, seed: int = 0, mean=None, std=None, interpolation: str | None = None,
                 resize_mode: str | None = None):
        model, cfg = read_model_config(model, model_config)
        if pretrained == "default":
            pretrained = _default_tag(model)
        if _is_random(pretrained):
            pretrained = RANDOM
            warnings.warn(f"clip encoder {model!r} with random weights (pretrained={RANDOM!r}): "
                          "its embeddings mean nothing; use this for tests only", stacklevel=3)
        elif _looks_like_path(str(pretrained)):
            pretrained = os.path.abspath(os.path.expanduser(str(pretrained)))
        prep = self._resolve_preprocess(model, pretrained, mean, std, interpolation, resize_mode)
        config = {"model": model, "pretrained": pretrained}
        if model_config is not None:
            config["model_config"] = cfg
        if pretrained == RANDOM:
            config["seed"] = int(seed)
        config.update(prep)
        super().__init__(device, **config)
        self.model_cfg = cfg
        self.dim = int(cfg["embed_dim"])
        self.image_size = _image_size(cfg)
        self.draft_size = max(self.image_size)

    @staticmethod
    def _resolve_preprocess(model, pretrained, mean, std, interpolation, resize_mode) -> dict:
        given = {"mean": mean, "std": std, "interpolation": interpolation, "resize_mode": resize_mode}
        out = {"mean": OPENAI_MEAN, "std": OPENAI_STD, "interpolation": "bicubic", "resize_mode": "shortest"}
        if any(v is None for v in given.values()) and pretrained != RANDOM and not os.path.isabs(pretrained):
            # A tag carries its training-time preprocessing (SigLIP: mean 0.5, squash...). Only here
            # do we import open_clip at creation; the values land in the config, so later opens don't.
            from open_clip.pretrained import get_pretrained_cfg

            tag_cfg = get_pretrained_cfg(model, pretrained)
            out.update({k: tag_cfg[k] for k in out if tag_cfg.get(k) is not None})
        out.update({k: v for k, v in given.items() if v is not None})
        for key in ("mean", "std"):
            value = out[key]
            try:
                out[key] = [float(v) for v in value]
            except (TypeError, ValueError):
                out[key] = None
            if isinstance(value, str) or out[key] is None or len(out[key]) != 3:
                raise ValueError(f"clip {key} needs 3 numbers (e.g. [0.5, 0.5, 0.5]), got {value!r}")
        if out["interpolation"] not in RESAMPLE:
            raise ValueError(f"clip interpolation {out['interpolation']!r}: use one of {sorted(RESAMPLE)}")
        if out["resize_mode"] not in RESIZE_MODES:
            raise ValueError(f"clip resize_mode {out['resize_mode']!r}: use one of {RESIZE_MODES}")
        return out

    # -- CPU side ---------------------------------------------------------------------------
    def preprocess(self, image) -> np.ndarray:
        """PIL image -> (3, S, S) uint8 at the model's image size (open_clip's resize / crop recipe)."""
        return crop_uint8(image, self.image_size, interpolation=self.config["interpolation"],
                          mode=self.config["resize_mode"])

    # -- model --------------------------------------------------------------------------------
    def _register_config(self, open_clip) -> None:
        """Make a custom model config known to open_clip under ``model`` (it looks configs up by name)."""
        if "model_config" not in self.config:
            return
        # open_clip reads the file into its registry at once (later rescans skip paths that are gone),
        # so the temporary folder need not outlive the call
        with tempfile.TemporaryDirectory(prefix="nearsight-clip-config-") as folder:
            path = os.path.join(folder, f"{self.config['model']}.json")
            with open(path, "w") as f:
                json.dump(self.config["model_config"], f)
            open_clip.add_model_config(path)

    def _build_model(self):
        import open_clip
        import torch

        self._register_config(open_clip)
        model_name, pretrained = self.config["model"], self.config["pretrained"]
        if pretrained == RANDOM:
            # fork_rng keeps the caller's RNG untouched; the seed makes every process build the same
            # random model, so an index made in one process is searchable from another.
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.config.get("seed", 0))
                model = open_clip.create_model(model_name, pretrained=None, device="cpu")
        elif os.path.isabs(pretrained):
            if not os.path.isfile(pretrained):
                raise WeightsUnavailable(f"clip checkpoint not found: {pretrained}; {HOW_TO_GIVE_WEIGHTS}")
            try:
                model = open_clip.create_model(model_name, pretrained=pretrained, device="cpu")
            except Exception as e:  # wrong architecture for the file, a truncated file, not a checkpoint
                raise WeightsUnavailable(f"cannot load clip checkpoint {pretrained} into model {model_name!r}: {e}") from e
        else:
            from open_clip.pretrained import list_pretrained_tags_by_model

            tags = list_pretrained_tags_by_model(model_name)
            if pretrained not in tags:
                raise WeightsUnavailable(
                    f"clip pretrained={pretrained!r} is neither a checkpoint file nor an open_clip tag for "
                    f"{model_name!r} (tags: {', '.join(tags) or 'none'}); {HOW_TO_GIVE_WEIGHTS}")
            try:
                model = open_clip.create_model(model_name, pretrained=pretrained, device="cpu")
            except Exception as e:  # offline, no cached copy: open_clip wraps the hub error in RuntimeError
                raise WeightsUnavailable(
                    f"clip weights {model_name!r} / {pretrained!r} could not be fetched or loaded ({e}); "
                    f"{HOW_TO_GIVE_WEIGHTS}") from e
        return model.eval().to(self.device)

    def _tokenizer(self):
        if not hasattr(self, "_tok"):
            import open_clip

            self.load()  # registers a custom config, which the tokenizer looks up for context length
            try:
                self._tok = open_clip.get_tokenizer(self.config["model"])
            except Exception as e:  # HF tokenizers (SigLIP...) download their vocabulary
                raise WeightsUnavailable(f"tokenizer for clip model {self.config['model']!r} unavailable: {e}") from e
        return self._tok

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_tok", None)
        return state

    # -- device side --------------------------------------------------------------------------
    def encode_images(self, batch: np.ndarray) -> np.ndarray:
        """(n, 3, S, S) uint8 from ``preprocess`` -> (n, embed_dim) float32, unit L2 norm."""
        import torch

        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        batch = self._check_batch(batch, (3,) + self.image_size)
        model = self.load()
        with torch.inference_mode(), self._autocast():
            x = self._to_device(batch, self.config["mean"], self.config["std"])
            return normalized_numpy(model.encode_image(x))

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Texts -> (n, embed_dim) float32, unit L2 norm (truncated to the model's context length)."""
        import torch

        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        tokenizer = self._tokenizer()
        model = self.load()
        with torch.inference_mode(), self._autocast():
            tokens = tokenizer(texts).to(self.device)
            return normalized_numpy(model.encode_text(tokens))
