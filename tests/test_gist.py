"""GIST: the golden vectors of lear-gist (tests/data/golden_gist, see its README), batching, masks, encoders."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from nearsight.retrieval.encoders import create_encoder
from nearsight.retrieval.errors import InvalidQuery, UnknownEncoder
from nearsight.retrieval.gist import (GistParams, gist, lowpass_factors, lowpass_matrix, masked_gist,
                                     prepare_gist_image)

torch = pytest.importorskip("torch")

GOLDEN = Path(__file__).parent / "data" / "golden_gist"
CASES = json.loads((GOLDEN / "cases.json").read_text())
# The issue asks for 1e-3 relative L2 per descriptor; a faithful float32 implementation sits near 1e-6.
TOL = 1e-4


def load_png(name: str) -> np.ndarray:
    return np.asarray(Image.open(GOLDEN / name).convert("RGB"))


def case_params(case: dict) -> GistParams:
    return GistParams(nblocks=case["nblocks"], orientations=tuple(case["orientations"]), image_size=case["size"])


def rel_err(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a, np.float64) - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name):
    case = CASES[name]
    ref = np.load(GOLDEN / f"{name}.gist.npy")
    params = case_params(case)
    assert params.dim(3) == case["dim"] == ref.shape[0]
    desc = gist(load_png(case["input"])[None], params)
    assert desc.shape == (1, case["dim"]) and desc.dtype == np.float32
    assert rel_err(desc[0], ref) < TOL


def test_prepare_reproduces_golden_inputs():
    """The golden PNGs are scikit-image samples centre-cropped and bilinearly resized: so is ours, to the byte."""
    skdata = pytest.importorskip("skimage.data")
    for sample, stem in [("chelsea", "chelsea"), ("rocket", "rocket"), ("camera", "camera_gray")]:
        source = Image.fromarray(getattr(skdata, sample)())  # 451x300, 640x427: both need the crop
        for size in (128, 256):
            prepared = prepare_gist_image(source, size)
            assert prepared.shape == (size, size, 3) and prepared.dtype == np.uint8
            assert np.array_equal(prepared, load_png(f"{stem}_{size}.png"))


def test_prepare_gray_and_odd_shapes():
    img = Image.new("RGBA", (300, 40), (10, 200, 30, 128))
    assert prepare_gist_image(img, 32).shape == (32, 32, 3)
    gray = prepare_gist_image(img, 32, gray=True)
    assert gray.shape == (32, 32) and gray.dtype == np.uint8


def test_batch_equals_single():
    names = [n for n in sorted(CASES) if CASES[n]["size"] == 128 and n.endswith("_128")]
    images = np.stack([load_png(CASES[n]["input"]) for n in names])
    threads = torch.get_num_threads()
    batch = gist(images)  # on CPU with several torch threads: whole images spread over worker threads
    assert torch.get_num_threads() == threads  # the workers' single-threading does not leak out
    single = np.concatenate([gist(im[None]) for im in images])
    np.testing.assert_allclose(batch, single, rtol=1e-5, atol=1e-7)
    torch.set_num_threads(1)
    try:
        np.testing.assert_allclose(gist(images), batch, rtol=1e-5, atol=1e-7)
    finally:
        torch.set_num_threads(threads)
    for row, name in zip(batch, names):
        assert rel_err(row, np.load(GOLDEN / f"{name}.gist.npy")) < TOL


def test_input_types_agree():
    img = load_png("noise_32.png")
    ref = gist(img[None])
    np.testing.assert_allclose(gist(torch.from_numpy(img[None].copy())), ref, rtol=1e-6)
    np.testing.assert_allclose(gist(img[None].astype(np.float32)), ref, rtol=1e-6)
    readonly = img[None].copy()
    readonly.flags.writeable = False
    np.testing.assert_allclose(gist(readonly), ref, rtol=1e-6)
    assert gist(np.zeros((0, 32, 32, 3), np.uint8)).shape == (0, 960)


def test_gray_is_one_channel_of_a_grey_colour_image():
    """A grey image stored as three equal channels gives three copies of the one-channel GIST."""
    rgb = load_png("camera_gray_128.png")
    gray = gist(rgb[None, ..., 0])
    assert gray.shape == (1, 320)
    assert rel_err(gray[0], np.load(GOLDEN / "camera_gray_128.gist.npy")[:320]) < TOL


def test_bad_inputs():
    with pytest.raises(ValueError, match="at least 8x8"):
        gist(np.zeros((1, 6, 6, 3), np.uint8))
    with pytest.raises(ValueError, match="shape"):
        gist(np.zeros((32, 32), np.uint8))
    with pytest.raises(ValueError, match="orientations"):
        GistParams(orientations=(8, 0))
    with pytest.raises(ValueError, match="masks"):
        masked_gist(np.zeros((1, 32, 32, 3), np.uint8), np.ones((1, 16, 16), bool))


# -- sizes the golden files do not cover: a float64 transcription of lear-gist's steps -------

def reference_gist(img: np.ndarray, nb: int, orientations) -> np.ndarray:
    """lear-gist in float64 numpy, FFT for FFT (natural axes for non-square images)."""
    x = np.log(img.astype(np.float64) + 1).transpose(2, 0, 1)
    p = np.pad(x, ((0, 0), (5, 5), (5, 5)), mode="symmetric")

    def centred(n):
        return np.arange(n) - n / 2.0

    fy, fx = np.meshgrid(centred(p.shape[1]), centred(p.shape[2]), indexing="ij")
    g = np.fft.fftshift(np.exp(-(fx ** 2 + fy ** 2) / (4 / math.sqrt(math.log(2))) ** 2))
    out = p - np.fft.ifft2(np.fft.fft2(p) * g).real
    contrast = np.sqrt(np.abs(np.fft.ifft2(np.fft.fft2(out.mean(0) ** 2) * g)))
    y = (out / (0.2 + contrast))[:, 5:-5, 5:-5]
    h, w = y.shape[1:]
    fy, fx = np.meshgrid(centred(h), centred(w), indexing="ij")
    fr, th = np.fft.fftshift(np.hypot(fx, fy)), np.fft.fftshift(np.arctan2(fy, fx))
    spectrum, res = np.fft.fft2(y), []
    for s, n_or in enumerate(orientations):
        f0 = 0.3 / 1.85 ** s
        for j in range(n_or):
            t = th + math.pi * j / n_or
            t = np.where(t < -math.pi, t + 2 * math.pi, np.where(t > math.pi, t - 2 * math.pi, t))
            gab = np.exp(-3.5 * (fr / h / f0 - 1) * (fr / w / f0 - 1) - 2 * (16 * n_or ** 2 / 1024) * math.pi * t * t)
            a = np.abs(np.fft.ifft2(spectrum * gab))
            ey, ex = [k * h // nb for k in range(nb + 1)], [k * w // nb for k in range(nb + 1)]
            res.append([[a[:, ey[r]:ey[r + 1], ex[c]:ex[c + 1]].mean((1, 2)) for r in range(nb)] for c in range(nb)])
    return np.asarray(res).transpose(3, 0, 1, 2).reshape(-1)  # (filter, col, row, channel) -> channel first


@pytest.mark.parametrize("n", [138, 266, 47, 18])
def test_lowpass_factors_reproduce_the_circulant(n):
    """The prefilter's thin factors equal the dense FFT filter (real for even sizes, complex for odd)."""
    up, down = lowpass_factors(n, 4.0)
    dense = lowpass_matrix(n, 4.0)
    assert np.iscomplexobj(up) == (n % 2 == 1)
    assert up.shape[1] <= min(n, 45)
    assert np.abs(up @ down - dense).max() < 1e-9
    x = np.random.default_rng(n).normal(size=n)
    np.testing.assert_allclose(dense @ x, np.fft.ifft(np.fft.fft(x) * np.fft.fft(dense[:, 0])), atol=1e-12)


@pytest.mark.parametrize("shape,nb,orientations", [
    ((37, 37), 4, (8, 8, 4)),     # odd: the prefilter's low-pass kernel is complex
    ((50, 50), 4, (8, 8, 4)),     # cells of unequal size (floor edges)
    ((40, 56), 3, (6, 4)),        # not square
])
def test_matches_reference_on_other_sizes(shape, nb, orientations):
    rng = np.random.default_rng(sum(shape))
    img = rng.integers(0, 256, (*shape, 3)).astype(np.uint8)
    desc = gist(img[None], GistParams(nblocks=nb, orientations=orientations))[0]
    assert rel_err(desc, reference_gist(img, nb, orientations)) < TOL


# -- masked GIST ---------------------------------------------------------------------------

def test_masked_all_valid_is_plain_gist():
    images = np.stack([load_png("astronaut_128.png"), load_png("rocket_128.png")])
    desc, weights = masked_gist(images, np.ones(images.shape[:3], bool))
    np.testing.assert_array_equal(desc, gist(images))
    assert weights.shape == desc.shape == (2, 960) and weights.dtype == np.float32
    assert np.all(weights == 1.0)


def test_masked_weights_follow_the_hole():
    img = load_png("coffee_128.png")
    mask = np.ones((1, 128, 128), bool)
    mask[:, :, :48] = False  # columns 0..47: cell column 0 all hole, column 1 (32..63) half hole
    desc, weights = masked_gist(img[None], mask)
    cells = weights.reshape(3 * 20, 4, 4)  # [channel*filter, col, row]
    assert np.all(cells[:, 0] == 0.0) and np.all(cells[:, 1] == 0.5) and np.all(cells[:, 2:] == 1.0)
    # The hole's content does not matter: it is replaced before filtering.
    other = img.copy()
    other[:, :48] = 255 - other[:, :48]
    np.testing.assert_array_equal(masked_gist(other[None], mask)[0], desc)
    # A weighted distance between two images that differ only inside the hole is zero.
    plain = gist(np.stack([img, other]))
    assert np.sum(weights[0] * (desc[0] - masked_gist(other[None], mask)[0][0]) ** 2) == 0.0
    assert np.sum((plain[0] - plain[1]) ** 2) > 0


def test_masked_rows_layout_and_empty_mask():
    img = load_png("chelsea_128.png")
    mask = np.ones((2, 128, 128), bool)
    mask[0, 96:] = False  # bottom cell row of image 0
    mask[1] = False       # nothing valid at all
    desc, weights = masked_gist(np.stack([img, img]), mask)
    rows = weights[0].reshape(60, 4, 4)  # [.., col, row]
    assert np.all(rows[:, :, 3] == 0.0) and np.all(rows[:, :, :3] == 1.0)
    assert np.all(weights[1] == 0.0) and np.all(np.isfinite(desc))


# -- encoders ------------------------------------------------------------------------------

def test_encoder_on_pil_image():
    enc = create_encoder("gist", device="cpu")
    assert (enc.dim, enc.metric, enc.draft_size) == (960, "l2", 128)
    assert enc.describe()["config"] == {"nblocks": 4, "orientations": [8, 8, 4], "image_size": 128}
    photo = Image.open(GOLDEN / "astronaut_256.png")  # a square image: the crop keeps it whole
    vec = enc.embed_images([photo])
    assert vec.shape == (1, 960) and vec.dtype == np.float32
    # 256 -> 128 bilinear is not the golden 128 input pixel for pixel, but it is the same scene.
    assert rel_err(vec[0], np.load(GOLDEN / "astronaut_128.gist.npy")) < 0.1
    exact = enc.encode_images(np.stack([enc.preprocess(Image.open(GOLDEN / "astronaut_128.png"))]))
    assert rel_err(exact[0], np.load(GOLDEN / "astronaut_128.gist.npy")) < TOL


def test_encoder_config_round_trip():
    enc = create_encoder("gist", device="cpu", nblocks=8, orientations="8,8,8,8", image_size=64)
    assert enc.dim == 6144 and enc.draft_size == 64
    again = create_encoder("gist", device="cpu", **json.loads(json.dumps(enc.describe()["config"])))
    assert again.params == enc.params
    assert enc.preprocess(Image.new("RGB", (90, 70))).shape == (64, 64, 3)
    with pytest.raises(UnknownEncoder, match="nblocks"):
        create_encoder("gist", device="cpu", cells=4)
    with pytest.raises(InvalidQuery, match="shape"):
        enc.encode_images(np.zeros((2, 32, 32, 3), np.uint8))


def test_gray_encoder():
    enc = create_encoder("gist-gray", device="cpu")
    assert enc.dim == 320 and enc.metric == "l2"
    arr = enc.preprocess(Image.open(GOLDEN / "camera_gray_128.png"))
    assert arr.shape == (128, 128)
    vec = enc.encode_images(arr[None])
    assert vec.shape == (1, 320)
    assert rel_err(vec[0], np.load(GOLDEN / "camera_gray_128.gist.npy")[:320]) < TOL
    assert enc.encode_images(np.zeros((0, 128, 128), np.uint8)).shape == (0, 320)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_golden():
    names = ["astronaut_128", "coffee_256", "noise_32"]
    for name in names:
        case = CASES[name]
        desc = gist(load_png(case["input"])[None], case_params(case), device="cuda")
        assert rel_err(desc[0], np.load(GOLDEN / f"{name}.gist.npy")) < TOL
    images = np.stack([load_png(CASES[n]["input"]) for n in sorted(CASES) if n.endswith("_128")])
    np.testing.assert_allclose(gist(images, device="cuda"), gist(images), rtol=1e-4, atol=1e-6)
    mask = np.ones(images.shape[:3], bool)
    mask[:, 40:90, 20:70] = False
    d_gpu, w_gpu = masked_gist(images, mask, device="cuda")
    d_cpu, w_cpu = masked_gist(images, mask)
    np.testing.assert_allclose(d_gpu, d_cpu, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(w_gpu, w_cpu)
