"""Scene matching: the lab-layout encoder's values, and the exhaustive scene distance against brute force."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from PIL import Image

from conftest import make_photo
from nearsight.retrieval.compose.lab import rgb_to_lab
from nearsight.retrieval.embeddings import EmbeddingMatrix
from nearsight.retrieval.encoders import create_encoder
from nearsight.retrieval.encoders.lab_layout import lab_layout, lab_layout_masked
from nearsight.retrieval.errors import InvalidQuery
from nearsight.retrieval.scene_match import (describe_query, float32_rows, layout_encoder, match_scenes, stored_layouts,
                                             weighted_sq_distances)

PHOTO = (120, 160)  # (H, W)


def grid_image(colours: np.ndarray, cell=(24, 32)) -> np.ndarray:
    """(4, 4, 3) uint8 cell colours -> (4 ch, 4 cw, 3) uint8 image of flat cells."""
    return np.repeat(np.repeat(colours, cell[0], axis=0), cell[1], axis=1)


def test_lab_layout_encoder_gives_each_cells_lab_colour():
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = grid_image(colours)  # 96 x 128: not square, the whole frame is described
    encoder = create_encoder("lab-layout")
    assert (encoder.dim, encoder.metric) == (48, "l2")
    got = encoder.encode_images(np.stack([encoder.preprocess(Image.fromarray(image))]))
    assert got.shape == (1, 48) and got.dtype == np.float32
    expected = rgb_to_lab(colours).reshape(-1)  # cell-major (row, col, channel)
    assert np.allclose(got[0], expected, atol=1e-3)
    # Other grids follow their config, and the config is kept to recreate the encoder.
    two = create_encoder("lab-layout", nblocks=2, side=32)
    assert two.dim == 12 and two.describe()["config"] == {"nblocks": 2, "side": 32}
    halves = grid_image(np.repeat(np.repeat(colours[:2, :2], 2, axis=0), 2, axis=1))
    assert np.allclose(two.preprocess(Image.fromarray(halves)), rgb_to_lab(colours[:2, :2]).reshape(-1), atol=1e-3)
    with pytest.raises(InvalidQuery, match="nblocks"):
        create_encoder("lab-layout", nblocks=0)


def test_masked_layout_weights_cells_by_their_valid_fraction():
    rng = np.random.default_rng(1)
    colours = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    image = grid_image(colours)
    hole = np.zeros(image.shape[:2], bool)
    hole[:24, :32] = True           # all of cell (0, 0)
    hole[24:48, 32:48] = True       # the left half of cell (1, 1)
    painted = image.copy()
    painted[hole] = (255, 0, 255)   # the hole's content must not leak into any cell
    colour, weights = lab_layout_masked(painted, hole)
    colour, weights = colour.reshape(4, 4, 3), weights.reshape(4, 4, 3)
    assert np.all(weights[0, 0] == 0) and np.all(colour[0, 0] == 0)
    assert np.allclose(weights[1, 1], 0.5) and np.allclose(colour[1, 1], rgb_to_lab(colours[1, 1]), atol=1e-3)
    others = np.ones((4, 4), bool)
    others[0, 0] = others[1, 1] = False
    assert np.all(weights[others] == 1)
    assert np.allclose(colour[others], rgb_to_lab(colours)[others], atol=1e-3)
    # With no hole it is exactly the encoder's descriptor.
    full, ones = lab_layout_masked(image, np.zeros_like(hole))
    assert np.array_equal(full, lab_layout(image)) and np.all(ones == 1)


@pytest.fixture(scope="module")
def layout_collection(tmp_path_factory):
    """14 photos indexed with gist and lab-layout, and the same photos with gist only."""
    from nearsight.indexer.ingest import IngestConfig, index_paths
    from nearsight.retrieval.collection import Collection

    root = tmp_path_factory.mktemp("scene_match")
    photos = root / "photos"
    photos.mkdir()
    for i in range(14):
        make_photo(100 + i, size=(PHOTO[1], PHOTO[0])).save(photos / f"p{i:02d}.png")
    index_paths(str(root / "both"), [str(photos)],
                IngestConfig(encoders=("gist", "lab-layout"), workers=0, progress=False))
    index_paths(str(root / "gist"), [str(photos)], IngestConfig(encoders=("gist",), workers=0, progress=False))
    both, gist_only = Collection.open(root / "both"), Collection.open(root / "gist")
    yield both, gist_only
    both.close()
    gist_only.close()


def query_and_hole():
    query = np.asarray(make_photo(200, size=(PHOTO[1], PHOTO[0])))
    yy, xx = np.mgrid[:PHOTO[0], :PHOTO[1]]
    hole = ((yy - 50) / 30.0) ** 2 + ((xx - 100) / 35.0) ** 2 <= 1.0
    return query, hole


def describe(coll, query, hole):
    gist = coll.encoder("gist")
    return describe_query(query, hole, gist.params, "cpu", layout=layout_encoder(coll))


def test_exhaustive_scene_distance_equals_brute_force(layout_collection):
    coll, _ = layout_collection
    query, hole = query_and_hole()
    q = describe(coll, query, hole)
    assert q.colour_weights.min() < 1  # the hole takes part of some cells
    gist = coll.embedding_matrix("gist")
    n = len(gist)
    exclude = [int(gist.ids[3])]
    got = match_scenes(coll, q, k=n, exclude=exclude)
    assert got.route == "exhaustive" and got.note == "" and got.compared == n

    # Brute force, one item at a time in float64: layouts recomputed from each photo, GIST from the shards.
    ids = [int(i) for i in gist.ids if int(i) not in exclude]
    layouts = np.stack([lab_layout(coll.load_image(i)) for i in ids]).astype(np.float64)
    c = ((layouts - q.colour) ** 2 * q.colour_weights).sum(axis=1)
    g = ((gist.reconstruct(ids).astype(np.float64) - q.gist) ** 2 * q.gist_weights).sum(axis=1)
    d = 2.0 * g / np.median(g) + c / np.median(c)
    order = np.argsort(d)
    assert exclude[0] not in got.ids and len(got.ids) == n - 1
    assert list(got.ids) == [ids[i] for i in order]
    # The stored layouts are float16: within their rounding of the recomputed ones.
    assert np.allclose(got.colour, c[order], rtol=2e-3, atol=0.05)
    assert np.allclose(got.gist, g[order], rtol=1e-3, atol=1e-4)
    assert np.allclose(got.distance, d[order], rtol=2e-3)
    assert np.allclose(got.scales, (np.median(g), np.median(c)), rtol=2e-3)


def test_shortlist_routes_and_their_recall(layout_collection):
    coll, gist_only = layout_collection
    query, hole = query_and_hole()
    q = describe(coll, query, hole)
    full = match_scenes(coll, q, k=5)
    # A shortlist holding everything, with the exhaustive scales, is the exhaustive answer exactly.
    same = match_scenes(coll, q, k=5, shortlist=100, route="shortlist", scales=full.scales)
    assert same.route == "shortlist" and np.array_equal(same.ids, full.ids)
    assert np.array_equal(same.distance, full.distance)
    # A shortlist of 5 by GIST keeps only the exhaustive top 5 that are also GIST's top 5.
    short = match_scenes(coll, q, k=5, shortlist=5, route="shortlist", scales=full.scales)
    gist_top = match_scenes(coll, q, k=5, colour_weight=0.0, scales=full.scales).ids
    assert set(short.ids) == set(gist_top)
    assert set(full.ids) & set(gist_top) <= set(short.ids)
    # The thumbnail route: stored 256-px thumbnails of the same photos give nearly the same colour term.
    thumbs = match_scenes(coll, q, k=5, shortlist=100, route="thumbnails", scales=full.scales)
    assert thumbs.route == "thumbnails" and list(thumbs.ids[:3]) == list(full.ids[:3])
    assert np.allclose(thumbs.colour, full.colour, rtol=0.05, atol=2.0)


def test_collection_without_layouts_falls_back_and_says_so(layout_collection, caplog):
    _, gist_only = layout_collection
    query, hole = query_and_hole()
    q = describe(gist_only, query, hole)
    with caplog.at_level(logging.WARNING, logger="nearsight.retrieval.scene_match"):
        got = match_scenes(gist_only, q, k=4)
    assert got.route == "thumbnails" and "lab-layout" in got.note and "lab-layout" in caplog.text
    assert len(got.ids) == 4
    with pytest.raises(InvalidQuery, match="needs stored colour layouts"):
        match_scenes(gist_only, q, k=4, route="exhaustive")
    with pytest.raises(InvalidQuery, match="unknown scene matching route"):
        match_scenes(gist_only, q, route="fast")


class _FakeCollection:
    """Just what ``stored_layouts`` reads: encoder names and matrices."""

    def __init__(self, matrices):
        self.matrices, self.dir = matrices, "fake"
        self.encoder_names = list(matrices)

    def embedding_matrix(self, name):
        return self.matrices[name]


def test_stored_layouts_are_aligned_by_item_id():
    rng = np.random.default_rng(2)
    ids = np.arange(10, 30, dtype=np.int64)
    gist = EmbeddingMatrix(ids, rng.normal(size=(20, 8)).astype(np.float16))
    perm = rng.permutation(20)
    lab = EmbeddingMatrix(ids[perm], rng.normal(size=(20, 48)).astype(np.float16))
    aligned, note = stored_layouts(_FakeCollection({"gist": gist, "lab-layout": lab}), gist)
    assert note == "" and np.array_equal(aligned, lab.vectors[np.argsort(perm)])
    partial = EmbeddingMatrix(ids[:15], lab.vectors[:15])
    none, note = stored_layouts(_FakeCollection({"gist": gist, "lab-layout": partial}), gist)
    assert none is None and "cover 15 of the 20" in note


def test_float32_copy_gives_the_same_distances():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(1000, 96)).astype(np.float16)
    q = rng.normal(size=96).astype(np.float32)
    w = rng.uniform(size=96).astype(np.float32)
    copy = float32_rows(x)
    assert copy.dtype == np.float32 and float32_rows(x) is copy  # cached while x lives
    assert np.array_equal(weighted_sq_distances(copy, q, w, block_rows=300), weighted_sq_distances(x, q, w, block_rows=300))
    assert float32_rows(x, budget=100) is x  # over the budget: used as float16, converted block by block
