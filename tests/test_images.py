"""Decoding every odd file a photo folder holds: an upright RGB image or a clear ImageError."""
import io

import numpy as np
import pytest
from PIL import Image

from nearsight.retrieval.errors import ImageError, ImageTooLarge
from nearsight.retrieval.images import decode_image, thumbnail_jpeg, to_rgb
from tests.conftest import make_photo


def encode(image: Image.Image, fmt: str, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **kw)
    return out.getvalue()


def test_zero_byte_and_non_image():
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"")
    with pytest.raises(ImageError, match="not a recognised image"):
        decode_image(b"GIF89 this is text, not pixels" * 10)


def test_truncated_jpeg_is_an_error():
    data = encode(make_photo(1, (256, 192)), "JPEG")
    with pytest.raises(ImageError, match="truncated|corrupt"):
        decode_image(data[: len(data) // 2])


def test_decompression_bomb_is_refused_from_the_header():
    data = encode(Image.new("L", (2000, 2000)), "PNG")
    with pytest.raises(ImageTooLarge, match="4,000,000 pixels"):
        decode_image(data, max_pixels=1_000_000)
    assert decode_image(data, max_pixels=4_000_000).width == 2000


def test_one_pixel_image():
    d = decode_image(encode(Image.new("RGB", (1, 1), (10, 20, 30)), "PNG"))
    assert d.image.size == (1, 1) and d.image.getpixel((0, 0)) == (10, 20, 30)


@pytest.mark.parametrize("mode", ["CMYK", "L", "P", "RGBA", "LA", "I;16", "1"])
def test_odd_modes_become_rgb(mode):
    src = make_photo(2, (40, 30))
    if mode == "I;16":
        arr = (np.asarray(src.convert("L"), dtype=np.uint16) * 257)
        img, fmt = Image.fromarray(arr), "PNG"  # uint16 -> mode I;16
    else:
        img = src.convert(mode)
        fmt = "JPEG" if mode == "CMYK" else "PNG"
    d = decode_image(encode(img, fmt))
    assert d.image.mode == "RGB" and d.image.size == (40, 30)
    if mode == "I;16":  # 16-bit range rescaled, not clipped to white
        assert 20 < np.asarray(d.image).mean() < 235


def test_alpha_composited_on_white():
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert to_rgb(img).getpixel((0, 0)) == (255, 255, 255)


def test_exif_rotated_jpeg_is_stored_upright():
    img = make_photo(3, (80, 40))  # landscape pixels ...
    exif = Image.Exif()
    exif[0x0112] = 6  # ... that the camera says to rotate 90 degrees clockwise
    d = decode_image(encode(img, "JPEG", exif=exif.tobytes()))
    assert d.image.size == (40, 80) and (d.width, d.height) == (40, 80)


RED, BLUE = (230, 20, 20), (20, 20, 230)
# EXIF orientation -> where the stored first row's two ends (red: its first pixel, blue: its last) are seen,
# from the standard's own words ("the 0th row is the visual right-hand side, the 0th column the visual top"
# for 6, ...), not from PIL: (vertical, horizontal) of the upright image's corner.
CORNERS = {1: (("top", "left"), ("top", "right")), 2: (("top", "right"), ("top", "left")),
           3: (("bottom", "right"), ("bottom", "left")), 4: (("bottom", "left"), ("bottom", "right")),
           5: (("top", "left"), ("bottom", "left")), 6: (("top", "right"), ("bottom", "right")),
           7: (("bottom", "right"), ("top", "right")), 8: (("bottom", "left"), ("top", "left"))}


def _corner(rgb: np.ndarray, where) -> np.ndarray:
    """Mean colour of a patch well inside a corner (the marks cover an eighth of each side at any scale)."""
    h, w = rgb.shape[:2]
    ph, pw = max(2, h // 12), max(2, w // 12)
    rows = slice(1, ph) if where[0] == "top" else slice(h - ph, h - 1)
    cols = slice(1, pw) if where[1] == "left" else slice(w - pw, w - 1)
    return rgb[rows, cols].reshape(-1, 3).mean(axis=0)


@pytest.mark.parametrize("fmt, min_side", [("JPEG", None), ("JPEG", 48), ("PNG", None)])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_puts_each_marked_corner_where_it_belongs(orientation, fmt, min_side):
    """A stored 192x96 image, gray, with a red block at the start of its first row and a blue one at its end:
    decoded upright, each block is seen in the corner the orientation says (full size, JPEG draft at half
    size, PNG eXIf), and nothing coloured is seen in the two other corners."""
    stored = np.full((96, 192, 3), 128, np.uint8)
    stored[:24, :24], stored[:24, -24:] = RED, BLUE
    exif = Image.Exif()
    exif[0x0112] = orientation
    data = encode(Image.fromarray(stored), fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    d = decode_image(data, min_side=min_side)
    upright = np.asarray(d.image).astype(float)
    assert (d.width, d.height) == ((96, 192) if orientation >= 5 else (192, 96))   # the original's, upright
    scale = 2 if min_side else 1                      # 48 px: the JPEG is decoded at 1/2 (both sides stay >= 48)
    assert d.image.size == (d.width // scale, d.height // scale)
    red_at, blue_at = CORNERS[orientation]
    for where in [(v, h) for v in ("top", "bottom") for h in ("left", "right")]:
        colour = _corner(upright, where)
        if where == red_at:
            assert colour[0] > 190 and colour[2] < 60, (where, colour)
        elif where == blue_at:
            assert colour[2] > 190 and colour[0] < 60, (where, colour)
        else:
            assert np.abs(colour - 128).max() < 20, (where, colour)


def test_gif_first_frame():
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255)]]
    data = encode(frames[0], "GIF", save_all=True, append_images=frames[1:])
    r, g, b = decode_image(data).image.getpixel((4, 4))
    assert r > 200 and b < 50


def test_draft_mode_decodes_jpeg_at_reduced_size_but_reports_the_original():
    data = encode(make_photo(4, (1600, 1200)), "JPEG")
    d = decode_image(data, min_side=256)
    assert (d.width, d.height) == (1600, 1200)
    assert min(d.image.size) >= 256 and d.image.size[0] <= 800


def test_thumbnail_longer_side():
    thumb = Image.open(io.BytesIO(thumbnail_jpeg(make_photo(5, (600, 300)), 256)))
    assert thumb.size == (256, 128) and thumb.format == "JPEG"


def test_picture_under_a_transparent_alpha_keeps_its_colours():
    """Wallpapers whose alpha is (almost) all 0 would flatten to blank white: all-zero tiny vectors (issue 13)."""
    from nearsight.retrieval.encoders import create_encoder

    tiny = create_encoder("tiny")
    vectors = []
    for seed in (1, 2):
        rgba = make_photo(seed).convert("RGBA")
        rgba.putalpha(Image.new("L", rgba.size, 0))
        buf = io.BytesIO()
        rgba.save(buf, "PNG")
        rgb = decode_image(buf.getvalue()).image
        assert np.array_equal(np.asarray(rgb), np.asarray(make_photo(seed)))
        vectors.append(tiny.encode_images(np.stack([tiny.preprocess(rgb)]))[0])
    assert all(np.linalg.norm(v) > 0.5 for v in vectors) and not np.allclose(vectors[0], vectors[1])
    # a white shape drawn only by its alpha (a glow) is blank on white: it is shown on black
    glow = Image.new("RGBA", (64, 64), (255, 255, 255, 0))
    glow.paste((255, 255, 255, 200), (10, 10, 30, 50))
    shown = np.asarray(to_rgb(glow))
    assert shown[0, 0].max() == 0 and shown[20, 20].min() > 150
    # a visible shape on a transparent page is what a viewer sees: flattened on white as before
    logo = Image.new("RGBA", (64, 64), (200, 0, 0, 0))
    logo.paste((0, 0, 255, 255), (20, 20, 40, 40))
    flat = np.asarray(to_rgb(logo))
    assert tuple(flat[0, 0]) == (255, 255, 255) and tuple(flat[30, 30]) == (0, 0, 255)
