"""schemathesis hooks for bench_serve.py's fuzz run (loaded through SCHEMATHESIS_HOOKS).

Left alone, schemathesis fills ``image``, ``mask`` and ``reference`` with random strings and bytes, which the
server rejects at decoding (a 4xx), so /api/complete, /api/colorize, /api/recolor, /api/jobs and search by
image would never reach the methods behind them. Here most generated bodies get real image files in those
fields instead: a size drawn per body (1-160 px a side, so tiny and odd shapes come up, and the mask
usually, not always, of the photo's size), a mode (RGB, L, RGBA, P, 1, I;16, CMYK), a format (PNG, JPEG,
GIF, BMP, WebP, TIFF) and content (gradients, noise, flat, a rectangular hole). Every other field keeps
what schemathesis generated; negative cases (bodies meant to break the schema) and one other body in
ten keep their random strings, so the decoder's errors stay covered. The draws are seeded by the generated body, so a run is reproducible with its ``--seed``.
"""
from __future__ import annotations

import base64
import io
import random

import numpy as np
import schemathesis
from PIL import Image

IMAGE_FIELDS = ("image", "mask", "reference")
MODES = ("RGB", "L", "RGBA", "P", "1", "I;16", "CMYK")
FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")
# What each format can store; other modes are converted first (as a person's tool would).
SAVES = {"PNG": {"RGB", "L", "RGBA", "P", "1", "I;16"}, "JPEG": {"RGB", "L", "CMYK"}, "GIF": {"P", "L", "1"},
         "BMP": {"RGB", "L", "P", "1"}, "WEBP": {"RGB", "RGBA"}, "TIFF": {"RGB", "L", "RGBA", "P", "1", "CMYK"}}
KEEP_RANDOM = 0.1


def make_image(rng: random.Random, size: tuple[int, int], mask: bool) -> bytes:
    w, h = size
    seed = rng.getrandbits(32)
    pixels = np.random.default_rng(seed)
    if mask:  # black with a white rectangle (the hole), which may be empty or cover everything
        a = np.zeros((h, w), np.uint8)
        y0, x0 = rng.randint(0, h), rng.randint(0, w)
        a[y0:y0 + rng.randint(0, h), x0:x0 + rng.randint(0, w)] = 255
        image = Image.fromarray(a, "L")
        fmt, mode = rng.choice(("PNG", "PNG", "JPEG", "BMP")), rng.choice(("L", "L", "RGB", "RGBA", "1"))
    else:
        kind = rng.choice(("gradient", "noise", "flat"))
        y, x = np.mgrid[0:h, 0:w].astype(np.float32)
        if kind == "gradient":
            a = pixels.uniform(0, 255, 3) + x[..., None] * pixels.uniform(-3, 3, 3) + y[..., None] * pixels.uniform(-3, 3, 3)
        elif kind == "noise":
            a = pixels.uniform(0, 255, (h, w, 3))
        else:
            a = np.broadcast_to(pixels.uniform(0, 255, 3), (h, w, 3))
        image = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "RGB")
        fmt, mode = rng.choice(FORMATS), rng.choice(MODES)
    image = image.convert(mode) if mode != "I;16" else image.convert("L").convert("I;16")
    if mode not in SAVES[fmt]:
        image = image.convert("RGB" if "RGB" in SAVES[fmt] else "L")
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _size(rng: random.Random) -> tuple[int, int]:
    return rng.randint(1, 160), rng.randint(1, 160)


def _replace(value, rng: random.Random, size: tuple[int, int], binary: bool):
    """``value`` with every image-like field (at any depth: query terms, batches) holding a real image."""
    if isinstance(value, list):
        return [_replace(v, rng, size, binary) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        # schemathesis's multipart files are Binary objects (often a 1-pixel PNG): replaced as well
        if key in IMAGE_FIELDS and (isinstance(v, (str, bytes, bytearray)) or type(v).__name__ == "Binary"):
            own = size if key != "reference" and rng.random() < 0.9 else _size(rng)
            data = make_image(rng, own, mask=key == "mask")
            out[key] = data if binary else base64.b64encode(data).decode("ascii")
        else:
            out[key] = _replace(v, rng, size, binary)
    return out


@schemathesis.hook
def map_case(context, case):
    body = case.body
    if not isinstance(body, (dict, list)):
        return case
    meta = case.meta
    if meta is not None and (meta.generation.mode == "negative"
                             or any(c.mode == "negative" for c in meta.components.values())):
        return case  # a case meant to break the schema stays as generated (a valid image could mend it)
    rng = random.Random(repr(body))
    if rng.random() < KEEP_RANDOM:
        return case
    binary = "multipart" in (case.media_type or "")
    new = _replace(body, rng, _size(rng), binary)
    if new != body:
        case.body = new  # assigned, not changed in place: schemathesis then re-checks the case against the schema
    return case
