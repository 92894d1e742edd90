"""Copies for image-to-image metric learning (``nearsight train --pairs augment``).

A copy is what a photo becomes when it is shared around: cropped, mirrored, colour-shifted, recompressed,
with a caption banner across it. The image head learns from (copy, its original, another photo) triplets
so that copies rank first. Copies are embedded by the frozen base encoder once, before training; the
originals' features are the stored ones.
"""
from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

WORDS = ("SALE", "look at this", "lol", "#photo", "via @someone", "2019", "repost", "wow")


def augment_copy(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """One random copy of an RGB image: crop (55-95% of each side), maybe mirrored, colour shift, maybe a
    caption banner, JPEG at quality 25-75."""
    w, h = image.size
    cw, ch = (max(8, int(s * rng.uniform(0.55, 0.95))) for s in (w, h))
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    out = image.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        out = ImageOps.mirror(out)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        out = enhance(out).enhance(rng.uniform(0.6, 1.4))
    if rng.random() < 0.5:
        out = _banner(out, rng)
    buffer = io.BytesIO()
    out.save(buffer, "JPEG", quality=int(rng.integers(25, 76)))
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


def _banner(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """A solid bar with a word across the top or bottom eighth to fifth, as memes and reposts add."""
    image = image.copy()
    w, h = image.size
    bar = max(4, int(h * rng.uniform(0.12, 0.2)))
    top = 0 if rng.random() < 0.5 else h - bar
    shade = int(rng.choice([0, 255]))
    draw = ImageDraw.Draw(image)
    draw.rectangle((0, top, w, top + bar), fill=(shade, shade, shade))
    draw.text((max(2, w // 20), top + bar // 4), str(rng.choice(WORDS)), fill=(255 - shade,) * 3)
    return image


def copy_features(coll, encoder_name: str, item_ids, copies: int, seed: int, batch_size: int = 32,
                  progress: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """``copies`` augmented copies of each item, embedded by the collection's encoder ``encoder_name``.

    Returns (features (m, d) float32, item ids (m,) int64). Items whose image cannot be read are skipped
    (``Collection.load_image`` falls back to the stored thumbnail when the file is gone).
    """
    from tqdm import tqdm

    encoder = coll.encoder(encoder_name)
    rng = np.random.default_rng(seed)
    feats, owners, batch, batch_owners = [], [], [], []

    def flush():
        if batch:
            feats.append(np.asarray(encoder.encode_images(np.stack(batch)), np.float32))
            owners.extend(batch_owners)
            batch.clear()
            batch_owners.clear()

    for item_id in tqdm(list(item_ids), desc="embedding copies", unit="img", disable=not progress):
        try:
            image = coll.load_image(int(item_id), min_side=encoder.draft_size)
        except Exception:  # noqa: BLE001 - an unreadable item is skipped, as ingest would record it
            continue
        for _ in range(copies):
            batch.append(encoder.preprocess(augment_copy(image, rng)))
            batch_owners.append(int(item_id))
        if len(batch) >= batch_size:
            flush()
    flush()
    if not feats:
        return np.zeros((0, encoder.dim), np.float32), np.zeros(0, np.int64)
    return np.concatenate(feats), np.array(owners, np.int64)
