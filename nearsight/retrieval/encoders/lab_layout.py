"""``lab-layout``: the 4x4 L*a*b* colour layout of a whole photo (Hays & Efros 2007's colour term), 48-d.

The photo is squashed (aspect not kept, like tiny images) to ``side`` x ``side`` by area averaging,
converted to L*a*b* per pixel, and averaged over an ``nblocks`` x ``nblocks`` grid of cells. Stored in
the collection, it lets scene matching compare the query's colour layout with every item's instead of
decoding thumbnails of a GIST shortlist. Compared with (weighted) L2, unnormalised.

The same functions describe the query with its hole masked out (``lab_layout_masked``): a working
pixel is valid only if every photo pixel it averages is, a cell's mean is over its valid pixels and
its weight is their fraction (as the masked GIST weights its cells).
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..compose.lab import rgb_to_lab
from ..errors import InvalidQuery
from .base import Encoder, register_encoder

__all__ = ["LAYOUT_SIDE", "cell_means", "layout_pixels", "lab_layout", "lab_layout_masked", "LabLayoutEncoder"]

LAYOUT_SIDE = 64  # working square: 16x16 px per cell of a 4x4 grid, enough to weigh a hole's share of a cell


def _cell_edges(size: int, nblocks: int) -> np.ndarray:
    return np.floor(np.arange(nblocks + 1) * size / nblocks).astype(np.int64)


def cell_means(rgb: np.ndarray, valid: np.ndarray | None = None, nblocks: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) RGB (uint8 or float 0..1) -> mean L*a*b* per cell over valid pixels.

    Returns ``(colour, weights)``, both (nblocks * nblocks * 3,) float32, cell-major (row, col, channel);
    a cell's weight is its fraction of valid pixels (a cell with none has weight 0 and colour 0).
    """
    lab = rgb_to_lab(rgb).astype(np.float64)
    h, w = lab.shape[:2]
    if h < nblocks or w < nblocks:
        raise InvalidQuery(f"a {w}x{h} image cannot be split into {nblocks}x{nblocks} colour cells")
    v = np.ones((h, w)) if valid is None else np.asarray(valid, dtype=np.float64)
    ys, xs = _cell_edges(h, nblocks), _cell_edges(w, nblocks)

    def cell_sums(a):  # sums over the cells, no Python loop over pixels
        return np.add.reduceat(np.add.reduceat(a, ys[:-1], axis=0), xs[:-1], axis=1)

    count = cell_sums(v)
    area = np.diff(ys)[:, None] * np.diff(xs)[None, :]
    total = cell_sums(lab * v[:, :, None])
    mean = np.where(count[..., None] > 0, total / np.maximum(count, 1e-12)[..., None], 0.0)
    weights = np.repeat((count / area)[..., None], 3, axis=2)
    return mean.astype(np.float32).reshape(-1), weights.astype(np.float32).reshape(-1)


def layout_pixels(image, side: int = LAYOUT_SIDE) -> np.ndarray:
    """PIL image or (H, W, 3) uint8 -> the whole frame squashed to (side, side, 3) uint8 by area averaging."""
    if not isinstance(image, Image.Image):
        image = Image.fromarray(np.asarray(image, dtype=np.uint8))
    return np.asarray(image.convert("RGB").resize((side, side), Image.Resampling.BOX), dtype=np.uint8)


def lab_layout(image, nblocks: int = 4, side: int = LAYOUT_SIDE) -> np.ndarray:
    """PIL image or (H, W, 3) uint8 -> (3 nblocks^2,) float32 L*a*b* cell means of the whole frame."""
    return cell_means(layout_pixels(image, side), None, nblocks)[0]


def lab_layout_masked(rgb: np.ndarray, hole: np.ndarray, nblocks: int = 4,
                      side: int = LAYOUT_SIDE) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 query and (H, W) bool hole -> ``(colour, weights)`` (3 nblocks^2,) float32.

    Unmasked (no hole) this is exactly ``lab_layout``: the same working square, the same pixels.
    """
    hole = np.asarray(hole, dtype=bool)
    pixels = layout_pixels(rgb, side)
    # BOX averaging of the valid mask: 255 only where every photo pixel under a working pixel is valid.
    valid = layout_pixels(np.repeat(np.where(hole, 0, 255).astype(np.uint8)[:, :, None], 3, axis=2), side)[:, :, 0]
    return cell_means(pixels, valid >= 255, nblocks)


@register_encoder("lab-layout")
class LabLayoutEncoder(Encoder):
    """4x4 (``nblocks``) L*a*b* cell means of the whole frame, (n, 48) float32, compared with L2.

    Config: ``nblocks`` (4), ``side`` (the working square, 64). The whole descriptor is computed in
    ``preprocess`` (a 64x64 colour conversion, well under a millisecond); ``encode_images`` only stacks.
    """

    metric = "l2"
    dim = 48
    draft_size = LAYOUT_SIDE

    def __init__(self, device: str = "auto", nblocks: int = 4, side: int = LAYOUT_SIDE):
        nblocks, side = int(nblocks), int(side)
        if nblocks < 1 or side < nblocks:
            raise InvalidQuery(f"lab-layout needs nblocks >= 1 and side >= nblocks, got nblocks={nblocks}, side={side}")
        super().__init__(device, nblocks=nblocks, side=side)
        self.nblocks, self.side = nblocks, side
        self.dim = 3 * nblocks * nblocks
        self.draft_size = side

    def preprocess(self, image) -> np.ndarray:
        """PIL image -> (dim,) float32 layout."""
        return lab_layout(image, self.nblocks, self.side)

    def encode_images(self, batch) -> np.ndarray:
        """Stacked ``preprocess`` outputs (n, dim) -> (n, dim) float32."""
        batch = np.asarray(batch, dtype=np.float32)
        if batch.ndim != 2 or batch.shape[1] != self.dim:
            raise InvalidQuery(f"encoder 'lab-layout' takes a batch of shape (n, {self.dim}) from its preprocess, "
                               f"got {batch.shape}")
        return batch

    def masked(self, rgb: np.ndarray, hole: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The query's layout with its hole masked out: ``(colour, weights)`` (dim,) float32."""
        return lab_layout_masked(rgb, hole, self.nblocks, self.side)
