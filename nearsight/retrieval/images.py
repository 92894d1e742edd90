"""Safe image decoding: every odd file a photo folder holds becomes an upright 8-bit RGB image or an ImageError.

Handles zero-byte, truncated and corrupt files, non-images, decompression bombs (checked from the header,
before any pixel is decoded), 1x1 images, CMYK, 16-bit, palette and alpha images, animated GIFs (first
frame) and EXIF orientation. JPEGs are decoded at reduced size (PIL draft mode) when the caller needs
fewer pixels, which is most of what makes ingest fast.
"""
from __future__ import annotations

import io
import os
import stat
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from .errors import ImageError, ImageTooLarge

DEFAULT_MAX_PIXELS = 100_000_000
THUMBNAIL_SIDE = 256
# One image file is read whole into memory; nothing a camera or scanner makes comes near this.
MAX_FILE_BYTES = 1 << 30
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif"})

# We check the pixel count ourselves, with a clear message and a configurable limit.
Image.MAX_IMAGE_PIXELS = None


@dataclass(frozen=True)
class Decoded:
    """An upright RGB image and the size of the original (before any draft reduction)."""
    image: Image.Image
    width: int
    height: int


def decode_image(data: bytes, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Decoded:
    """Image file bytes -> upright RGB ``Decoded``.

    ``min_side``: the smallest side the caller needs; a JPEG may be decoded at 1/2, 1/4 or 1/8 scale as
    long as both sides stay at least this large. ``None`` decodes at full size.
    """
    if not data:
        raise ImageError("empty file (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise ImageError("not a recognised image format") from None
    except Exception as exc:  # PIL raises many types for corrupt headers
        raise ImageError(f"unreadable image header: {exc}") from None
    width, height = image.size
    if width < 1 or height < 1:
        raise ImageError(f"invalid image size {width}x{height}")
    if width * height > max_pixels:
        raise ImageTooLarge(f"{width}x{height} = {width * height:,} pixels is over the limit of {max_pixels:,}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # EXIF/ICC warnings from odd cameras are not our users' problem
            if min_side and image.format == "JPEG":
                # draft() keeps both sides >= the requested size; orientation may swap sides, so ask for a square.
                image.draft("RGB", (min_side, min_side))
            image.seek(0)  # first frame of animations
            orientation = image.getexif().get(0x0112, 1)
            image.load()
            image = ImageOps.exif_transpose(image)
            rgb = to_rgb(image)
    except ImageError:
        raise
    except Exception as exc:
        raise ImageError(f"corrupt or truncated image data: {exc}") from None
    if orientation in (5, 6, 7, 8):  # transposed or rotated by 90 degrees: report the upright size
        width, height = height, width
    return Decoded(rgb, width, height)


def decode_sides(data: bytes, sides, max_pixels: int = DEFAULT_MAX_PIXELS) -> dict:
    """Image file bytes -> ``{side: Decoded}``, each exactly what ``decode_image(data, min_side=side)`` returns.

    This is how an image is decoded for several consumers at once (each encoder's ``draft_size``, the
    thumbnail): every consumer sees the pixels it would see alone, so a query decoded for one encoder
    (``decode_image(data, min_side=encoder.draft_size)``) is the very image that encoder indexed, whatever
    else the collection holds. Sides that land on the same JPEG draft scale share one decode: on a photo
    with a short side of 2,048 px or more, every side up to 256 lands on 1/8 and one decode serves all.
    """
    out, by_scale = {}, {}
    for side in sorted(set(sides), key=lambda s: -(s or 1 << 30)):  # largest first; None (full size) before all
        scale = _draft_result(data, side)
        if scale not in by_scale:
            by_scale[scale] = decode_image(data, min_side=side, max_pixels=max_pixels)
        out[side] = by_scale[scale]
    return out


def _draft_result(data: bytes, side: int | None):
    """What PIL's JPEG draft would decode for ``side`` (its reduced size and mode), from the header alone;
    None for a full decode (no side, not a JPEG). Equal results mean identical decoded pixels."""
    if not side:
        return None
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format != "JPEG":
                return None
            image.draft("RGB", (side, side))
            return image.size, image.mode
    except Exception:  # a bad header: decode_image reports it with its reason
        return ("unreadable", side)


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB. Transparency is composited on white; 16/32-bit ranges are rescaled."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        a = np.asarray(image, dtype=np.float64)
        hi = a.max() if a.size else 0.0
        scale = 255.0 / 65535.0 if hi > 255 else 1.0
        a = np.clip(a * scale, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        # On white, as a page shows it. But a light shape drawn only by its alpha (a white glow on a transparent
        # page), or a picture kept in the colour channels under an almost fully transparent alpha (wallpapers,
        # layers exported from editors), flattens to a blank page that every encoder maps to the same (or a
        # zero) vector: then on black, and failing that the colours without their alpha.
        for background in ((255, 255, 255, 255), (0, 0, 0, 255)):
            flat = Image.alpha_composite(Image.new("RGBA", rgba.size, background), rgba).convert("RGB")
            if not _is_blank(flat):
                return flat
        colours = rgba.convert("RGB")
        if not _is_blank(colours):
            return colours
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _is_blank(image: Image.Image) -> bool:
    """True for an image of (nearly) one flat colour, judged on a 64 px copy (cheap at any size)."""
    small = image.convert("L")
    small.thumbnail((64, 64))
    lo, hi = small.getextrema()
    return hi - lo <= 2


def read_file(path, offset: int = 0, size: int = -1, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of a file (``size`` of them from ``offset``, e.g. a tar member); ImageError when unreadable.

    Only regular files are read, and never more than their size at open time (at most ``max_bytes``): a FIFO
    named ``x.jpg`` would block forever, and a link to /dev/zero would read without end.
    """
    try:
        # O_NONBLOCK: opening a FIFO with no writer returns at once instead of waiting for one.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise ImageError(f"no such file: {path}") from None
    except IsADirectoryError:
        raise ImageError(f"is a directory, not an image: {path}") from None
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ImageError(f"is a directory, not an image: {path}")
        if not stat.S_ISREG(st.st_mode):
            raise ImageError(f"not a regular file ({_file_kind(st.st_mode)}): {path}")
        want = st.st_size - offset if size < 0 else size
        if want > max_bytes:
            raise ImageError(f"{path} is {want:,} bytes, over the limit of {max_bytes:,} for one image")
        try:
            f.seek(offset)
            data = f.read(max(want, 0))
        except OSError as exc:
            raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size >= 0 and len(data) != size:
        raise ImageError(f"{path} is truncated: {len(data)} of {size} bytes at offset {offset}")
    return data


def _file_kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"


def load_image(path, min_side: int | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """A file path -> upright RGB PIL image (see ``decode_image``)."""
    return decode_image(read_file(path), min_side=min_side, max_pixels=max_pixels).image


def thumbnail_jpeg(image: Image.Image, side: int = THUMBNAIL_SIDE, quality: int = 85) -> bytes:
    """RGB image -> JPEG bytes with the longer side at most ``side`` px."""
    thumb = image.copy()
    thumb.thumbnail((side, side), Image.BILINEAR, reducing_gap=2.0)
    out = io.BytesIO()
    thumb.save(out, format="JPEG", quality=quality, optimize=False)
    return out.getvalue()
