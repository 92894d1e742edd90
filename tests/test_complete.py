"""Scene completion end to end on a small gist collection whose right answer is known, and its bad inputs."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from nearsight.retrieval.complete import CompletionConfig, complete_scene, complete_scene_report, prepare_inputs
from nearsight.retrieval.errors import ImageError, ImageTooLarge, InvalidQuery, UnknownEncoder
from nearsight.retrieval.scene_match import colour_layout, weighted_sq_distances

SCENE = (180, 240)   # (H, W) of the big scene the source photo and the query are cut from
PHOTO = (150, 200)   # (H, W) of every photo
SHIFT = (8, 10)      # the query is the scene at this offset; the source photo at (0, 0)


def scene(seed: int, shape=SCENE) -> np.ndarray:
    """A photo-like uint8 scene: a smooth colour field, a few soft-edged blobs and fine texture."""
    rng = np.random.default_rng(seed)
    h, w = shape
    field = ndimage.gaussian_filter(rng.normal(size=(h, w, 3)), (18, 18, 0))
    field = field / field.std() * 45 + rng.uniform(60, 190, 3)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(5):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(10, 35)
        blob = 1 / (1 + np.exp(np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) - r))
        field += blob[..., None] * rng.uniform(-80, 80, 3)
    field += ndimage.gaussian_filter(rng.normal(size=(h, w, 3)), (1, 1, 0)) * 12
    return np.clip(field, 0, 255).astype(np.uint8)


def central_hole(shape=PHOTO) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]]
    return ((yy - 70) / 24.0) ** 2 + ((xx - 105) / 30.0) ** 2 <= 1.0


@pytest.fixture(scope="module")
def gist_collection(tmp_path_factory):
    """10 unrelated photos plus the source photo (item of interest), indexed with gist."""
    from nearsight.indexer.ingest import IngestConfig, index_paths
    from nearsight.retrieval.collection import Collection

    root = tmp_path_factory.mktemp("complete")
    photos = root / "photos"
    photos.mkdir()
    big = scene(100)
    Image.fromarray(big[:PHOTO[0], :PHOTO[1]]).save(photos / "source.png")
    for i in range(10):
        Image.fromarray(scene(i, PHOTO)).save(photos / f"other{i:02d}.png")
    index_paths(str(root / "coll"), [str(photos)], IngestConfig(encoders=("gist",), workers=0, progress=False))
    coll = Collection.open(root / "coll")
    source_id = next(i for i in coll.embedding_matrix("gist").ids if coll.item(i).path.endswith("source.png"))
    query = big[SHIFT[0]:SHIFT[0] + PHOTO[0], SHIFT[1]:SHIFT[1] + PHOTO[1]].copy()
    yield coll, int(source_id), query
    coll.close()


SMALL = CompletionConfig(context_radius=20, seam_radius=20, match_side=120)


def test_completion_comes_from_the_matching_scene(gist_collection):
    coll, source_id, truth = gist_collection
    hole = central_hole()
    query = truth.copy()
    query[hole] = 0  # nothing of the truth is left in the hole
    report = complete_scene_report(coll, Image.fromarray(query), hole, n=3, config=SMALL)
    results = report.completions
    assert 1 <= len(results) <= 3
    assert [r.score for r in results] == sorted((r.score for r in results), reverse=True)
    best = results[0]
    assert best.id == source_id
    assert report.scenes.ids[0] == source_id  # scene matching alone already ranks it first
    # The source sits at the query's offset: placement (-8, -10) on the composite grid, give or take rounding.
    assert best.placement.scale == 1.0
    assert abs(best.placement.dy + SHIFT[0]) <= 1 and abs(best.placement.dx + SHIFT[1]) <= 1
    assert best.image.dtype == np.uint8 and best.image.shape == query.shape
    # The query's own pixels are kept exactly outside the taken region, and far from the hole everywhere.
    assert best.region[hole].all()
    assert np.array_equal(best.image[~best.region], query[~best.region])
    far = ndimage.distance_transform_edt(~hole) > SMALL.seam_radius
    assert not best.region[far].any()
    # The hole is filled with (nearly) the true pixels; a flat fill would be far off.
    err = np.abs(best.image.astype(float) - truth)[hole].mean()
    flat = np.abs(truth[~hole].mean(axis=0) - truth.astype(float))[hole].mean()
    assert err < 6.0 and err < flat / 4
    # Terms are reported and the timings cover every stage.
    for key in ("scene", "gist", "colour", "context", "texture", "seam", "seam_full", "z_scene"):
        assert np.isfinite(best.terms[key])
    assert set(report.timings) >= {"scene", "context", "seam", "composite", "total"}
    assert best.to_dict()["id"] == source_id


def test_exclude_removes_an_item_and_arrays_are_accepted(gist_collection):
    coll, source_id, truth = gist_collection
    hole = central_hole()
    results = complete_scene(coll, truth, hole.astype(np.uint8) * 255, n=2, config=SMALL, exclude=[source_id])
    assert results and all(r.id != source_id for r in results)
    assert all(np.array_equal(r.image[~r.region], truth[~r.region]) for r in results)


def test_threads_give_the_same_answer(gist_collection):
    from dataclasses import replace

    coll, _, truth = gist_collection
    hole = central_hole()
    one = complete_scene(coll, truth, hole, n=3, config=SMALL)
    two = complete_scene(coll, truth, hole, n=3, config=replace(SMALL, workers=2))
    assert [r.id for r in one] == [r.id for r in two]
    assert all(np.array_equal(a.image, b.image) and a.score == b.score for a, b in zip(one, two))


def test_large_image_is_composited_at_max_side_and_returned_at_its_own_size(gist_collection):
    coll, _, truth = gist_collection
    big = np.asarray(Image.fromarray(truth).resize((400, 300)))
    hole = np.asarray(Image.fromarray(central_hole().astype(np.uint8) * 255).resize((400, 300))) > 127
    config = CompletionConfig(context_radius=20, seam_radius=20, match_side=100, max_side=240, candidates=3)
    report = complete_scene_report(coll, big, hole, n=1, config=config)
    assert report.composite_size == (180, 240) and report.match_size == (75, 100)
    best = report.completions[0]
    assert best.image.shape == (300, 400, 3) and report.output_size == (300, 400)
    assert best.region.shape == (300, 400) and best.region[hole].all()
    # Outside the filled region the photo's own full-resolution pixels come back untouched.
    assert np.array_equal(best.image[~best.region], big[~best.region])
    assert report.timings["full_size"] > 0 and best.solve_scale == 1.0


def fine_scene(seed: int, shape) -> np.ndarray:
    """``scene`` plus one-pixel detail: what a reduced composite, upsampled, would blur away."""
    rng = np.random.default_rng(seed)
    detail = ndimage.gaussian_filter(rng.normal(size=(*shape, 3)), (0.7, 0.7, 0)) * 70
    return np.clip(scene(seed, shape).astype(np.float64) + detail, 0, 255).astype(np.uint8)


def detail(image: np.ndarray, mask: np.ndarray) -> float:
    """Mean squared step between 4-neighbours inside ``mask`` (grey levels): high-frequency energy."""
    g = np.asarray(image, np.float64).mean(axis=2)
    dx = (g[:, 1:] - g[:, :-1])[mask[:, 1:] & mask[:, :-1]]
    dy = (g[1:] - g[:-1])[mask[1:] & mask[:-1]]
    return float(np.mean(np.concatenate([dx, dy]) ** 2))


def test_composites_of_a_large_photo_are_blended_at_its_own_resolution(tmp_path):
    """Composited at max_side, then the source placed, the seam upsampled and Poisson solved at full size:
    the hole is as sharp as the photo, and the photo's pixels outside the filled region are untouched."""
    from nearsight.indexer.ingest import IngestConfig, index_paths
    from nearsight.retrieval.collection import Collection

    # Sizes and the shift divide evenly on every grid (match 80 px, composite 160 px, photo 640 px), so the
    # placement found small is exact at full size and the hole can be compared with the truth pixel for pixel.
    big = fine_scene(200, (504, 672))
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(big[:480, :640]).save(photos / "source.png")
    for i in range(4):
        Image.fromarray(fine_scene(300 + i, (480, 640))).save(photos / f"other{i}.png")
    index_paths(str(tmp_path / "coll"), [str(photos)], IngestConfig(encoders=("gist",), workers=0, progress=False))
    truth = big[24:504, 32:672]
    yy, xx = np.mgrid[:480, :640]
    hole = ((yy - 220) / 80.0) ** 2 + ((xx - 330) / 100.0) ** 2 <= 1.0
    query = truth.copy()
    query[hole] = 0
    config = CompletionConfig(context_radius=20, seam_radius=20, match_side=80, max_side=160, candidates=5)
    coll = Collection.open(tmp_path / "coll")
    try:
        source_id = next(i for i in coll.embedding_matrix("gist").ids if coll.item(i).path.endswith("source.png"))
        report = complete_scene_report(coll, query, hole, n=1, config=config)
    finally:
        coll.close()
    best = report.completions[0]
    assert best.id == source_id and report.composite_size == (120, 160) and report.match_size == (60, 80)
    assert (best.placement.dy, best.placement.dx) == (-6, -8)
    assert best.image.shape == (480, 640, 3) and best.region[hole].all() and best.solve_scale == 1.0
    assert np.array_equal(best.image[~best.region], query[~best.region])
    # The hole holds the true pixels, with their detail: a composite made at 160 px and upsampled keeps
    # under a fifth of it.
    assert np.abs(best.image.astype(float) - truth)[hole].mean() < 3.0
    upsampled = np.asarray(Image.fromarray(truth).resize((160, 120), Image.Resampling.BOX)
                           .resize((640, 480), Image.Resampling.LANCZOS))
    assert detail(upsampled, hole) < 0.2 * detail(truth, hole)
    assert detail(best.image, hole) > 0.8 * detail(truth, hole)


def test_the_query_photo_and_its_copies_are_left_out(gist_collection, tmp_path):
    """Hays & Efros leave the query out: its own item (by content hash) and its near-duplicates."""
    import hashlib

    coll, source_id, _ = gist_collection
    photo = np.asarray(Image.open(coll.item(source_id).path).convert("RGB"))
    hole = central_hole()
    sha = hashlib.sha256(open(coll.item(source_id).path, "rb").read()).hexdigest()
    report = complete_scene_report(coll, photo, hole, n=2, config=SMALL, query_sha256=sha)
    assert report.excluded == (source_id,) and source_id not in report.scenes.ids
    assert all(r.id != source_id for r in report.completions)
    # Without the hash, masked GIST still finds the photo itself (distance ~0) and skips it.
    report = complete_scene_report(coll, photo, hole, n=2, config=SMALL)
    assert report.excluded == () and report.near_duplicates == (source_id,)
    assert report.skipped == {"excluded": [], "near_duplicates": [source_id], "crops": []}
    assert all(r.id != source_id for r in report.completions)


def test_bad_inputs_have_clear_errors(gist_collection, collection):
    coll, _, truth = gist_collection
    hole = central_hole()
    with pytest.raises(InvalidQuery, match="mask is 100x50 but the image is 200x150"):
        complete_scene(coll, truth, np.zeros((50, 100), bool))
    with pytest.raises(InvalidQuery, match="marks no pixels"):
        complete_scene(coll, truth, np.zeros(PHOTO, bool))
    with pytest.raises(InvalidQuery, match="covers the whole image"):
        complete_scene(coll, truth, Image.new("L", (200, 150), 255))
    almost = np.ones(PHOTO, bool)
    almost[:5, :5] = False
    with pytest.raises(InvalidQuery, match="at most 90%"):
        complete_scene(coll, truth, almost)
    with pytest.raises(ImageError, match="at least 32 px"):
        complete_scene(coll, truth[:20, :20], hole[:20, :20])
    with pytest.raises(ImageError, match="RGB"):
        complete_scene(coll, truth[..., 0], hole)
    with pytest.raises(InvalidQuery, match="n must be"):
        complete_scene(coll, truth, hole, n=0)
    # A collection indexed without gist (the shared fixture has only `tiny`).
    with pytest.raises(UnknownEncoder, match="needs the 'gist' encoder"):
        complete_scene(collection, truth, hole)
    # Over the pixel limit: refused before any decoding work; over max_side: reduced, hole kept.
    with pytest.raises(ImageTooLarge, match="over the limit"):
        prepare_inputs(truth, hole, max_pixels=1000)
    rgb, small_hole = prepare_inputs(truth, hole, CompletionConfig(max_side=100))
    assert rgb.shape == (75, 100, 3) and small_hole.shape == (75, 100)
    assert small_hole.sum() >= hole.sum() / 4


def test_mask_formats():
    truth = scene(3, PHOTO)
    hole = central_hole()
    rgba = np.zeros((*PHOTO, 4), np.uint8)
    rgba[hole] = 255
    for mask in (hole, hole.astype(np.uint8) * 255, hole.astype(np.float32), Image.fromarray(hole),
                 Image.fromarray(hole.astype(np.uint8) * 255).convert("RGB"), Image.fromarray(rgba, "RGBA")):
        _, got = prepare_inputs(truth, mask)
        assert np.array_equal(got, hole)


def test_weighted_distances_and_colour_layout():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1000, 48)).astype(np.float16)
    q = rng.normal(size=48).astype(np.float32)
    w = rng.uniform(size=48).astype(np.float32)
    direct = ((x.astype(np.float64) - q) ** 2 * w).sum(axis=1)
    assert np.allclose(weighted_sq_distances(x, q, w, block_rows=128), direct, rtol=1e-4, atol=1e-3)
    img = np.zeros((64, 64, 3), np.uint8)
    img[:, 32:] = 255
    valid = np.ones((64, 64), bool)
    valid[:16, :16] = False
    colour, weights = colour_layout(img, valid, nblocks=4)
    colour, weights = colour.reshape(4, 4, 3), weights.reshape(4, 4, 3)
    assert np.allclose(colour[:, :2, 0], 0, atol=1e-3) and np.allclose(colour[:, 2:, 0], 100, atol=1e-3)
    assert weights[0, 0, 0] == 0 and colour[0, 0, 0] == 0 and weights[1, 1, 0] == 1


def test_progress_reports_each_stage_and_its_exception_stops_the_run(gist_collection):
    coll, _, truth = gist_collection
    hole = central_hole()
    seen = []
    complete_scene(coll, truth, hole, n=2, config=SMALL, progress=lambda stage, f: seen.append((stage, f)))
    stages = list(dict.fromkeys(stage for stage, _ in seen))
    assert stages == ["scene", "context", "seam", "composite"]
    fractions = [f for _, f in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0

    class Stop(Exception):
        pass

    def stop_at_seam(stage, fraction):
        if stage == "seam":
            raise Stop

    with pytest.raises(Stop):  # how the server cancels a running job: no composite is made
        complete_scene(coll, truth, hole, n=2, config=SMALL, progress=stop_at_seam)


def test_cli_complete_leaves_the_photo_itself_out(gist_collection, tmp_path):
    import json

    from click.testing import CliRunner

    from nearsight.server.cli import main

    coll, source_id, _ = gist_collection
    Image.fromarray(central_hole().astype(np.uint8) * 255).save(tmp_path / "mask.png")
    out = CliRunner().invoke(main, ["complete", "-c", coll.dir, coll.item(source_id).path, "--mask",
                                    str(tmp_path / "mask.png"), "-o", str(tmp_path / "out"), "-n", "1"])
    assert out.exit_code == 0, out.output
    assert f"left out 1 copy of the photo found in the collection: items {source_id}" in out.output
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["skipped"] == {"excluded": [source_id], "near_duplicates": [], "crops": []}
    assert saved["completions"][0]["id"] != source_id


# -- the query's scene absent: judged against what could be done without it ----------------------------------

def _field(seed: int, h: int, w: int) -> np.ndarray:
    f = ndimage.gaussian_filter(np.random.default_rng(seed).normal(size=(h + 40, w + 40, 3)), (18, 18, 0))
    return f / f.std()


def family_scene(layout: int, detail: int, shape=PHOTO) -> np.ndarray:
    """Photos of one kind of place: a colour layout from ``layout``, seen shifted by up to 40 px and mixed with a
    layout of the photo's own, plus its own blobs and texture from ``detail``. Two details of one layout share
    a palette and an arrangement, never the pixels (not a copy, not a crop)."""
    h, w = shape
    rng = np.random.default_rng(detail)
    dy, dx = rng.integers(0, 41, 2)
    common = _field(layout, h, w)[dy:dy + h, dx:dx + w]
    own = _field(detail + 500, h, w)[20:20 + h, 20:20 + w]
    img = (0.8 * common + 0.6 * own) * 45 + np.random.default_rng(layout + 1000).uniform(60, 190, 3)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(5):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(6, 14)
        img += (1 / (1 + np.exp(np.sqrt((yy - cy) ** 2 + (xx - cx) ** 2) - r)))[..., None] * rng.uniform(-40, 40, 3)
    img += ndimage.gaussian_filter(rng.normal(size=(h, w, 3)), (1, 1, 0)) * 12
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def held_out_collection(tmp_path_factory):
    """Two other photos of the query's kind of place (never the query, a copy or a crop of it) among ten
    photos of other places."""
    from nearsight.indexer.ingest import IngestConfig, index_paths
    from nearsight.retrieval.collection import Collection

    root = tmp_path_factory.mktemp("complete_held_out")
    photos = root / "photos"
    photos.mkdir()
    for detail in (1, 2):
        Image.fromarray(family_scene(7, detail)).save(photos / f"same_place{detail}.png")
    for i in range(10):
        Image.fromarray(family_scene(20 + i, 40 + i)).save(photos / f"other{i:02d}.png")
    index_paths(str(root / "coll"), [str(photos)], IngestConfig(encoders=("gist",), workers=0, progress=False))
    coll = Collection.open(root / "coll")
    kin = {int(i) for i in coll.embedding_matrix("gist").ids if "same_place" in coll.item(int(i)).path}
    yield coll, kin, family_scene(7, 0)
    coll.close()


def test_completion_with_the_query_scene_absent(held_out_collection):
    """Hays & Efros' setting: the hole's content is nowhere in the collection. The completion must come from
    the photos of the same kind of place, keep the query's own pixels, and fill the hole closer to the truth
    than a completion from another place does, and than a flat fill of the context's mean."""
    coll, kin, truth = held_out_collection
    hole = central_hole()
    query = truth.copy()
    query[hole] = 0
    report = complete_scene_report(coll, Image.fromarray(query), hole, n=3, config=SMALL)
    assert not any(report.skipped.values())          # nothing of the query is in there: no copy, no crop
    best = report.completions[0]
    assert best.id in kin and set(report.scenes.ids[:2]) == kin
    assert np.array_equal(best.image[~best.region], query[~best.region]) and best.region[hole].all()
    error = lambda image: float(np.abs(image.astype(float) - truth)[hole].mean())
    flat = float(np.abs(truth[~hole].mean(axis=0) - truth.astype(float))[hole].mean())
    elsewhere = complete_scene(coll, query, hole, n=1, config=SMALL, exclude=sorted(kin))[0]
    assert elsewhere.id not in kin
    assert error(best.image) < 0.8 * error(elsewhere.image) and error(best.image) < flat, \
        (error(best.image), error(elsewhere.image), flat)


def _jpeg(rgb: np.ndarray, path, quality=85):
    Image.fromarray(rgb).save(path, quality=quality)


def _crop(rgb: np.ndarray, side: float, at: tuple[float, float], aspect: float = 1.0, mirrored=False,
          gain=(1.0, 1.0, 1.0)) -> np.ndarray:
    """``side`` of the photo's height (``side * aspect`` of its width), its corner at ``at`` (fractions of
    the room left), resized to 300 px on the long side, mirrored and colour-scaled as asked."""
    h, w = rgb.shape[:2]
    ch, cw = round(h * side), min(w, round(w * side * aspect))
    y0, x0 = round((h - ch) * at[0]), round((w - cw) * at[1])
    out = Image.fromarray(rgb[y0:y0 + ch, x0:x0 + cw])
    out.thumbnail((300, 300), Image.Resampling.LANCZOS)
    a = np.asarray(out, np.float64) * np.asarray(gain)
    return np.clip(a[:, ::-1] if mirrored else a, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def crops_collection(tmp_path_factory):
    """Real photos (scikit-image's samples): crops of the query photo at 60-90% of its side, straight and
    mirrored, colour-shifted and re-encoded, among other photos, the query's stereo partner included."""
    from nearsight.indexer.ingest import IngestConfig, index_paths
    from nearsight.retrieval.collection import Collection

    data = pytest.importorskip("skimage.data")
    left, right, _ = data.stereo_motorcycle()
    query = np.asarray(Image.fromarray(left).resize((480, 324), Image.Resampling.LANCZOS))
    root = tmp_path_factory.mktemp("crops")
    photos = root / "photos"
    photos.mkdir()
    crops = {"crop60.jpg": _crop(query, 0.6, (0.3, 0.6), 1.1),
             "crop75m.jpg": _crop(query, 0.75, (0.8, 0.2), 0.95, mirrored=True, gain=(1.05, 1.0, 0.93)),
             "crop90.jpg": _crop(query, 0.9, (0.5, 0.5), 0.9, gain=(0.95, 1.0, 1.05)),
             "crop90m.jpg": _crop(query, 0.9, (0.0, 1.0), 1.0, mirrored=True)}
    for name, rgb in crops.items():
        _jpeg(rgb, photos / name)
    others = {"partner.jpg": right, "astronaut.jpg": data.astronaut(), "coffee.jpg": data.coffee(),
              "chelsea.jpg": data.chelsea(), "rocket.jpg": data.rocket()}
    for name, rgb in others.items():
        im = Image.fromarray(rgb)
        im.thumbnail((300, 300), Image.Resampling.LANCZOS)
        _jpeg(np.asarray(im), photos / name)
    index_paths(str(root / "coll"), [str(photos)], IngestConfig(encoders=("gist",), workers=0, progress=False))
    coll = Collection.open(root / "coll")
    names = {os.path.basename(coll.item(i).path): int(i) for i in coll.embedding_matrix("gist").ids}
    yield coll, query, {names[n] for n in crops}, {names[n] for n in others}
    coll.close()


def test_crops_of_the_query_are_skipped_and_other_photos_are_not(crops_collection):
    coll, photo, crop_ids, other_ids = crops_collection
    hole = np.zeros(photo.shape[:2], bool)
    hole[120:200, 180:300] = True
    query = photo.copy()
    query[hole] = 0
    config = CompletionConfig(context_radius=30, seam_radius=30, match_side=120)
    report = complete_scene_report(coll, query, hole, n=3, config=config)
    assert set(report.crops) == crop_ids and report.near_duplicates == ()
    assert report.skipped["crops"] == sorted(crop_ids)
    assert report.completions and all(c.id in other_ids for c in report.completions)
    # With the check off, a crop fits the hole's context best and is used: what the check prevents.
    from dataclasses import replace

    unchecked = complete_scene_report(coll, query, hole, n=1, config=replace(config, crop_threshold=None))
    assert unchecked.crops == () and unchecked.completions[0].id in crop_ids
