"""Near-duplicate collapse per encoder: each encoder's own copy threshold (``collapse.COPY_THRESHOLDS``, in the
similarity units results show) folds a JPEG copy (and, for the CNN, a mirrored one) into its original and keeps
another shot of a scene apart. Real photos: the ones scikit-image ships (its [test] extra)."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageOps

from nearsight.retrieval.collapse import COPY_THRESHOLDS, DEFAULT_THRESHOLD, collapse_ranked, copy_threshold
from nearsight.retrieval.collection import Collection
from nearsight.retrieval.errors import InvalidQuery

ENCODERS = ("tiny", "gist", "lab-layout", "cnn")
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "retina", "brick", "grass", "gravel",
          "coins")


@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    """scikit-image's photos; chelsea (the cat) again as a JPEG (quality 85) and mirrored (JPEG 90); and the
    astronaut photo framed 35% further right: another shot of the same scene, not a copy."""
    data = pytest.importorskip("skimage.data")
    from nearsight.indexer.ingest import IngestConfig, index_paths

    root = tmp_path_factory.mktemp("collapse")
    photos = root / "photos"
    photos.mkdir()
    for name in PHOTOS:
        Image.fromarray(np.asarray(getattr(data, name)())).convert("RGB").save(photos / f"{name}.png")
    cat = Image.open(photos / "chelsea.png")
    cat.save(photos / "chelsea_copy.jpg", quality=85)
    ImageOps.mirror(cat).save(photos / "chelsea_mirror.jpg", quality=90)
    astronaut = Image.open(photos / "astronaut.png")
    astronaut.crop((int(astronaut.width * 0.35), 0, astronaut.width, astronaut.height)).save(photos / "astronaut_pan.png")
    index_paths(str(root / "coll"), [str(photos)], IngestConfig(encoders=ENCODERS, workers=0, progress=False))
    coll = Collection.open(root / "coll")
    ids = {coll.item(int(i)).path.rsplit("/", 1)[1]: int(i) for i in coll.item_table().ids}
    yield coll, ids
    coll.close()


@pytest.mark.parametrize("encoder", ENCODERS)
def test_a_copy_collapses_and_another_shot_does_not(copies, encoder):
    coll, ids = copies
    n = len(ids)
    grouped = coll.search(id=ids["chelsea.png"], encoder=encoder, k=n, collapse=True)
    shown = {r.id for r in grouped}
    assert grouped[0].id == ids["chelsea.png"] and ids["chelsea_copy.jpg"] not in shown  # folded into the cat
    mirror_folds = encoder == "cnn"  # only the CNN sees a mirrored photo as the same picture
    assert (ids["chelsea_mirror.jpg"] in shown) != mirror_folds
    assert grouped[0].group_size == 2 + mirror_folds
    assert sum(r.group_size for r in grouped) == n  # every item once: a result, or inside a result's group
    around = coll.search(id=ids["astronaut.png"], encoder=encoder, k=n, collapse=True)
    assert {ids["astronaut.png"], ids["astronaut_pan.png"]} <= {r.id for r in around}
    assert all(r.group_size == 1 for r in around if r.id != ids["chelsea.png"])


def test_l2_encoders_compare_distances_not_cosines():
    """Two lab-layout-like vectors that point the same way (cosine 0.996) but lie far apart against the
    collection's typical distance are not copies; a pair closer than typical by far is."""
    a, b, c = np.array([60.0, 5, 5]), np.array([52.0, 0, 6]), np.array([59.8, 5.1, 4.9])
    assert a @ b / np.linalg.norm(a) / np.linalg.norm(b) > 0.99
    reps, group = collapse_ranked(np.stack([a, b, c]), 0.96, "l2", scale=50.0)
    assert reps.tolist() == [0, 1] and group.tolist() == [0, 1, 0]
    reps, _ = collapse_ranked(np.stack([a, b, c]), 0.96, "ip")  # the cosine alone folds all three
    assert reps.tolist() == [0]


def test_threshold_override_and_bad_values(copies):
    coll, ids = copies
    n = len(ids)
    # the override is a similarity, as results show it: 1e-9 folds everything, 1.0 only identical vectors
    everything = coll.search(id=ids["chelsea.png"], encoder="gist", k=3, collapse=1e-9)
    assert len(everything) == 1 and everything[0].group_size == n
    exact = coll.search(id=ids["chelsea.png"], encoder="gist", k=n, collapse=1.0)
    assert all(r.group_size == 1 for r in exact)
    for bad in (0, 1.5, "yes", -0.2):
        with pytest.raises(InvalidQuery, match="collapse must be true, false or a similarity threshold"):
            coll.search(id=ids["chelsea.png"], encoder="tiny", collapse=bad)
    assert copy_threshold("no-such-kind") == DEFAULT_THRESHOLD
    assert set(ENCODERS) <= set(COPY_THRESHOLDS)
