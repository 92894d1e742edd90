"""The cnn encoder's CPU fast path (batch norms folded, channels-last, sub-batches, kept heap) computes
what the plain timm model computes: same features and logits as the unfolded NCHW model on a whole batch."""
import subprocess
import sys

import numpy as np
import pytest

from nearsight.retrieval.encoders import create_encoder
from nearsight.retrieval.encoders.cnn import CPU_SUB_BATCH, MEAN, STD, load_lite0
from nearsight.retrieval.encoders.netutil import sub_batches

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def cnn():
    # the torch path (CUDA's, and the CPU's without onnxruntime); ONNX Runtime's is test_cnn_onnx.py
    return create_encoder("cnn", device="cpu", runtime="torch")


@pytest.fixture(scope="module")
def crops(cnn):
    # photo-like structure (smooth ramps and blocks) plus noise, so the features are not degenerate
    from conftest import make_photo

    return np.stack([cnn.preprocess(make_photo(seed, (320, 240))) for seed in range(2 * CPU_SUB_BATCH + 3)])


def reference(crops: np.ndarray, logits: bool) -> np.ndarray:
    """The plain model: no folding, NCHW, the whole batch in one forward."""
    model = load_lite0()
    x = torch.from_numpy(crops).float() / 255.0
    x = (x - torch.tensor(MEAN).view(1, -1, 1, 1)) / torch.tensor(STD).view(1, -1, 1, 1)
    with torch.inference_mode():
        return model.forward_head(model.forward_features(x), pre_logits=not logits).numpy()


def test_features_match_the_plain_model(cnn, crops):
    ref = reference(crops, logits=False)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    ours = cnn.encode_images(crops)  # several sub-batches and a ragged last one
    assert ours.shape == ref.shape and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, atol=2e-5)
    assert np.all(np.sum(ours * ref, axis=1) > 1 - 1e-6)
    # an image's vector does not depend on its batch or its place in it
    np.testing.assert_allclose(cnn.encode_images(crops[5:6])[0], ours[5], atol=2e-6)


def test_logits_match_the_plain_model(cnn, crops):
    ref = reference(crops[:3], logits=True)
    ours = cnn.classify(crops[:3])
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)
    assert (ours.argmax(1) == ref.argmax(1)).all()


def test_fold_batchnorm_leaves_no_batch_norm(cnn):
    model = cnn.load()
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_sub_batches_cover_the_batch():
    assert sub_batches(10, 4) == [slice(0, 4), slice(4, 8), slice(8, 10)]
    assert sub_batches(0, 4) == []


def test_kept_heap_in_a_process_of_its_own():
    # it changes the whole process, so it runs in a child rather than in the test runner
    code = ("from nearsight.retrieval.heap import keep_freed_memory as k; "
            "import sys; sys.exit(0 if k() and k() else 1)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
