"""GIST encoders: ``gist`` (colour, 960-d, lear-gist's) and ``gist-gray`` (luminance, 320-d, for colorization).

Compared with L2 distance, unnormalised, as in the GIST1M benchmark and the scene-matching papers.
The descriptor itself lives in ``nearsight.retrieval.gist``.
"""
from __future__ import annotations

import numpy as np

from ..errors import InvalidQuery
from ..gist import GistParams, gist, prepare_gist_image
from .base import Encoder, register_encoder


def _orientations(value) -> tuple[int, ...]:
    """(8, 8, 4), [8, 8, 4] or "8,8,4" (a command-line option) -> (8, 8, 4)."""
    if isinstance(value, str):
        value = [v for v in value.replace(" ", "").strip("[]()").split(",") if v]
    try:
        return tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"orientations must be a list of integers per scale, e.g. 8,8,4; got {value!r}") from None


@register_encoder("gist")
class GistEncoder(Encoder):
    """Colour GIST of lear-gist: centre square crop, bilinear resize to ``image_size``, (n, 960) float32.

    Config: ``nblocks`` (cells per side, 4), ``orientations`` (per scale, (8, 8, 4)), ``image_size`` (128).
    """

    dim = GistParams().dim(3)
    metric = "l2"
    draft_size = GistParams().image_size
    gray = False

    def __init__(self, device: str = "auto", nblocks: int = 4, orientations=(8, 8, 4), image_size: int = 128):
        self.params = GistParams(nblocks=int(nblocks), orientations=_orientations(orientations),
                                 image_size=int(image_size))
        super().__init__(device, nblocks=self.params.nblocks, orientations=list(self.params.orientations),
                         image_size=self.params.image_size)
        self.dim = self.params.dim(1 if self.gray else 3)
        self.draft_size = self.params.image_size

    def preprocess(self, image) -> np.ndarray:
        """PIL image -> (S, S, 3) uint8, or (S, S) for ``gist-gray``; S = image_size."""
        return prepare_gist_image(image, self.params.image_size, gray=self.gray)

    def encode_images(self, batch) -> np.ndarray:
        """Stacked ``preprocess`` outputs -> (n, dim) float32 GIST, on ``self.device``."""
        batch = np.asarray(batch)
        s = self.params.image_size
        shape = (s, s) if self.gray else (s, s, 3)
        if batch.ndim != len(shape) + 1 or batch.shape[1:] != shape:
            raise InvalidQuery(f"encoder {self.name!r} takes a batch of shape (n, {', '.join(map(str, shape))}) "
                               f"from its preprocess, got {batch.shape}")
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        return gist(batch, self.params, device=self.device)


@register_encoder("gist-gray")
class GistGrayEncoder(GistEncoder):
    """GIST of the luminance only (PIL "L"), (n, 320) float32: the query descriptor for colorization,
    where the query photo has no colour to match on."""

    dim = GistParams().dim(1)
    gray = True
