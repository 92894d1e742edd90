"""The cnn encoder on ONNX Runtime (CPU): the exported model gives torch's embeddings (cosine >= 0.9999 per image),
is exported once per weights file and cached beside it, re-exported when the weights change; without onnxruntime
the encoder falls back to torch with one warning; a file searched by itself still scores 1.0."""
from __future__ import annotations

import glob
import logging
import os
import pickle
import shutil

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
torch = pytest.importorskip("torch")

from nearsight.retrieval.encoders import create_encoder  # noqa: E402
from nearsight.retrieval.encoders import onnx_runtime  # noqa: E402
from nearsight.retrieval.encoders.cnn import packaged_weights_path  # noqa: E402

SAMPLES = os.path.join(os.path.dirname(__file__), "..", "data", "samples", "photos")


@pytest.fixture(scope="module")
def crops():
    from conftest import make_photo
    from nearsight.retrieval.images import decode_image

    enc = create_encoder("cnn", device="cpu", runtime="torch")
    images = [make_photo(seed, (320, 240)) for seed in range(6)]
    for path in sorted(glob.glob(os.path.join(SAMPLES, "*.jpg")))[:10]:     # real photos where the repo has them
        with open(path, "rb") as f:
            images.append(decode_image(f.read(), min_side=enc.draft_size).image)
    return np.stack([enc.preprocess(im) for im in images])


def test_onnx_embeddings_equal_torch(crops):
    torch_vecs = create_encoder("cnn", device="cpu", runtime="torch").encode_images(crops)
    onnx = create_encoder("cnn", device="cpu", runtime="onnx")
    assert onnx.runtime == "onnx"
    onnx_vecs = onnx.encode_images(crops)
    assert onnx_vecs.shape == torch_vecs.shape == (len(crops), 1280) and onnx_vecs.dtype == np.float32
    cos = np.sum(onnx_vecs * torch_vecs, axis=1)
    assert cos.min() >= 0.9999, cos
    np.testing.assert_allclose(np.linalg.norm(onnx_vecs, axis=1), 1.0, atol=1e-5)
    # an image's vector does not depend on its batch, its place in it, or the number of threads
    np.testing.assert_allclose(onnx.encode_images(crops[3:4])[0], onnx_vecs[3], atol=1e-5)
    with_one = onnx.load()(crops, 1, 4)
    with_two = onnx.load()(crops, 2, 4)
    np.testing.assert_allclose(with_one, with_two, atol=1e-5)


def test_auto_means_onnx_on_cpu_and_the_encoder_pickles_without_its_session(crops):
    enc = create_encoder("cnn", device="cpu")
    enc.encode_images(crops[:2])
    assert enc.runtime == "onnx" and enc._ort is not None
    clone = pickle.loads(pickle.dumps(enc))
    assert clone._ort is None and clone._model is None
    assert "runtime" not in enc.describe()["config"]       # how vectors are computed is not the collection's
    with pytest.raises(ValueError, match="runtime"):
        create_encoder("cnn", device="cpu", runtime="tensorrt")


def test_export_is_cached_beside_the_weights_and_redone_when_they_change(tmp_path, crops):
    weights = tmp_path / "lite0.pth"
    shutil.copy(packaged_weights_path(), weights)
    first = create_encoder("cnn", device="cpu", weights=str(weights), runtime="onnx")
    a = first.encode_images(crops[:4])
    exported = sorted(tmp_path.glob("*.onnx"))
    assert len(exported) == 1
    stamp = exported[0].stat().st_mtime_ns
    again = create_encoder("cnn", device="cpu", weights=str(weights), runtime="onnx")
    np.testing.assert_allclose(again.encode_images(crops[:4]), a, atol=1e-6)
    assert exported[0].stat().st_mtime_ns == stamp            # reused, not exported again
    # new weights (the stem conv scaled): a new file, and vectors that follow the new weights
    state = torch.load(weights, map_location="cpu", weights_only=True)
    key = next(iter(state))
    state[key] = state[key] * 1.5
    torch.save(state, weights)
    changed = create_encoder("cnn", device="cpu", weights=str(weights), runtime="onnx")
    b = changed.encode_images(crops[:4])
    assert len(list(tmp_path.glob("*.onnx"))) == 2
    ref = create_encoder("cnn", device="cpu", weights=str(weights), runtime="torch").encode_images(crops[:4])
    assert np.sum(b * ref, axis=1).min() >= 0.9999
    assert np.sum(b * a, axis=1).min() < 0.9999


def test_without_onnxruntime_torch_runs_with_one_warning(monkeypatch, caplog, crops):
    monkeypatch.setattr(onnx_runtime, "available", lambda: False)
    monkeypatch.setattr(onnx_runtime, "_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="nearsight.retrieval.encoders.onnx_runtime"):
        for _ in range(2):
            enc = create_encoder("cnn", device="cpu")
            enc.encode_images(crops[:2])
            assert enc.runtime == "torch"
    warnings = [r for r in caplog.records if "onnxruntime is not installed" in r.getMessage()]
    assert len(warnings) == 1


def test_a_file_searched_by_itself_scores_one_with_onnx(tmp_path):
    from conftest import make_photo
    from nearsight.indexer.ingest import IngestConfig, index_paths
    from nearsight.retrieval.collection import Collection

    photos = tmp_path / "p"
    photos.mkdir()
    for i in range(4):
        make_photo(100 + i, (900, 700)).save(photos / f"{i}.jpg", quality=90)
    index_paths(str(tmp_path / "c"), [str(photos)], IngestConfig(encoders=("cnn",), workers=0, progress=False))
    coll = Collection.open(tmp_path / "c", device="cpu")
    try:
        assert coll.encoder("cnn").runtime == "onnx"
        for i in range(4):
            path = photos / f"{i}.jpg"
            top = coll.search(image=str(path), encoder="cnn", k=2)
            assert top[0].id == coll.store.path_entry(str(path))[0]
            assert top[0].score > 1 - 1e-4 > top[1].score      # 1.0 up to float16 storage
    finally:
        coll.close()
