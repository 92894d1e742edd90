"""Shared fixtures: images made in memory, a small collection in tmp_path. Everything seeded, nothing downloaded."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from ci_deps import pytest_configure, pytest_sessionstart  # noqa: E402,F401  (hooks: missing deps fail in CI)

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach a model hub


def make_photo(seed: int, size=(96, 72)) -> Image.Image:
    """A distinct, photo-like RGB image: smooth colour gradients plus a few random rectangles."""
    rng = np.random.default_rng(seed)
    w, h = size
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = rng.uniform(0, 255, 3)[None, None, :]
    slope = rng.uniform(-1.5, 1.5, (2, 3))
    img = base + x[..., None] * slope[0] + y[..., None] * slope[1]
    for _ in range(4):
        x0, y0 = rng.integers(0, w - 8), rng.integers(0, h - 8)
        img[y0:y0 + rng.integers(4, h // 2), x0:x0 + rng.integers(4, w // 2)] = rng.uniform(0, 255, 3)
    img += rng.normal(0, 4, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


@pytest.fixture(scope="module")
def coll_dir(tmp_path_factory):
    """Eight small photos indexed with tiny-gray (enough for colorize and recolor jobs)."""
    from nearsight.indexer.ingest import IngestConfig, index_paths

    root = tmp_path_factory.mktemp("gray")
    (root / "photos").mkdir()
    for i in range(8):
        make_photo(i, (96, 72)).save(root / "photos" / f"p{i}.png")
    index_paths(str(root / "coll"), [str(root / "photos")],
                IngestConfig(encoders=("tiny-gray",), workers=0, progress=False))
    return str(root / "coll")


@pytest.fixture
def photo_dir(tmp_path):
    """A folder of 12 distinct JPEG photos, one PNG with a sidecar caption, in a nested subfolder too."""
    root = tmp_path / "photos"
    (root / "sub").mkdir(parents=True)
    for i in range(10):
        make_photo(i).save(root / f"p{i:02d}.jpg", quality=92)
    make_photo(10).save(root / "sub" / "p10.jpg", quality=92)
    make_photo(11).save(root / "sub" / "beach.png")
    (root / "sub" / "beach.txt").write_text("a sunny beach\n")
    return root


@pytest.fixture
def ingest():
    """index_paths with test defaults: no worker processes, no progress bar."""
    from nearsight.indexer.ingest import IngestConfig, index_paths

    def run(collection_dir, paths, **overrides):
        config = dict(encoders=("tiny",), workers=0, progress=False)
        config.update(overrides)
        return index_paths(str(collection_dir), [str(p) for p in paths], IngestConfig(**config))

    return run


@pytest.fixture
def collection(tmp_path, photo_dir, ingest):
    """A small tiny-encoder collection of photo_dir, opened read-only."""
    from nearsight.retrieval.collection import Collection

    ingest(tmp_path / "coll", [photo_dir])
    coll = Collection.open(tmp_path / "coll")
    yield coll
    coll.close()
