"""Tiny images (Torralba et al. 2008): the whole photo squashed to 32x32, zero-mean, unit-norm."""
from __future__ import annotations

import numpy as np
from PIL import Image

from .base import Encoder, register_encoder

TINY_SIDE = 32


def tiny_vector(image: Image.Image, gray: bool = False) -> np.ndarray:
    """PIL image -> (3072,) or, gray, (1024,) float32, zero-mean and unit L2 norm.

    The aspect ratio is not kept (as in the tiny-images paper): the descriptor is of the whole frame.
    """
    mode = "L" if gray else "RGB"
    small = image.convert(mode).resize((TINY_SIDE, TINY_SIDE), Image.BILINEAR, reducing_gap=2.0)
    v = np.asarray(small, dtype=np.float32).reshape(-1)
    v = v - v.mean()
    n = np.linalg.norm(v)
    return v / n if n > 0 else v


@register_encoder("tiny")
class TinyEncoder(Encoder):
    dim = TINY_SIDE * TINY_SIDE * 3
    metric = "ip"
    draft_size = 64

    def __init__(self, device: str = "auto"):  # no options: the descriptor is fixed
        super().__init__(device)

    def preprocess(self, image):
        return tiny_vector(image)

    def encode_images(self, batch):
        return np.asarray(batch, dtype=np.float32).reshape(len(batch), self.dim)


@register_encoder("tiny-gray")
class TinyGrayEncoder(TinyEncoder):
    """Luminance-only tiny image, 1024-d: the query descriptor for colorization."""
    dim = TINY_SIDE * TINY_SIDE

    def preprocess(self, image):
        return tiny_vector(image, gray=True)
