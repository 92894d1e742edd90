"""The Flask app (``nearsight.server``): every route, every error status, token, paging, query arithmetic,
uploads (multipart, base64, oversize, decompression bomb), refresh after an index run, SIGHUP reload,
and the OpenAPI document kept in sync with the app's routes."""
from __future__ import annotations

import base64
import io
import os
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
from conftest import make_photo
from PIL import Image

from nearsight.retrieval.collection import Collection
from nearsight.server.app import ServerConfig, create_app, install_reload_signal

# A CLIP small enough to build in a second, with random (seeded) weights: text queries work, meaning aside.
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
CLIP_OPTIONS = (("clip", (("model", "nearsight-server-test"), ("model_config", TINY_CLIP), ("pretrained", "random"))),)
N_PHOTOS = 12
pytestmark = pytest.mark.filterwarnings("ignore:clip encoder .* random weights:UserWarning")


def _jpeg(image: Image.Image, **kw) -> bytes:
    out = io.BytesIO()
    image.save(out, format="JPEG", quality=90, **kw)
    return out.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _bomb_png(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height; its pixel data would inflate to gigabytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = b"\x00" + b"\x00" * (3 * width)
    idat = zlib.compress(row * 4, 9)  # a few rows only: the guard must stop at the header
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(collection dir, photo dir): 12 photos, one captioned, indexed with tiny and a tiny random CLIP."""
    from nearsight.indexer.ingest import IngestConfig, index_paths

    root = tmp_path_factory.mktemp("server")
    photos = root / "photos"
    photos.mkdir()
    for i in range(N_PHOTOS):
        make_photo(i).save(photos / f"p{i:02d}.jpg", quality=92)
    (photos / "p11.txt").write_text("a sunny beach\n")
    with pytest.warns(UserWarning, match="random weights"):
        index_paths(str(root / "coll"), [str(photos)],
                    IngestConfig(encoders=("tiny", "clip"), encoder_options=CLIP_OPTIONS, workers=0, progress=False))
    return root / "coll", photos


@pytest.fixture(scope="module")
def app(built):
    app = create_app(ServerConfig(str(built[0]), token=None))
    yield app
    app.extensions["nearsight"].holder.collection.close()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(scope="module")
def coll(app):
    return app.extensions["nearsight"].holder.collection


def _search(client, status=200, **body):
    r = client.post("/api/search", json=body)
    assert r.status_code == status, r.get_json()
    return r.get_json()


def _ids(answer) -> list[int]:
    return [r["id"] for r in answer["results"]]


def _error(response, status: int, code: str | None = None) -> str:
    assert response.status_code == status, (response.status_code, response.data[:300])
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    if code:
        assert body["error"]["code"] == code, body
    assert "Traceback" not in body["error"]["message"]
    return body["error"]["message"]


# -- search ---------------------------------------------------------------------------------------

def test_search_by_id_answers_the_item_first_with_all_fields(client, coll):
    answer = _search(client, id=3, k=5, encoder="tiny")
    assert answer["encoder"] == "tiny" and answer["took_ms"] >= 0
    assert len(answer["results"]) == 5 and answer["results"][0]["id"] == 3
    assert answer["results"][0]["score"] == pytest.approx(1.0, abs=1e-3)
    scores = [r["score"] for r in answer["results"]]
    assert scores == sorted(scores, reverse=True)
    first = answer["results"][0]
    assert set(first) == {"id", "score", "similarity", "caption", "width", "height", "sha256", "group_size",
                          "thumbnail_url"}
    assert (first["width"], first["height"]) == (96, 72) and first["thumbnail_url"] == "/api/items/3/thumbnail"
    assert _ids(answer) == [r.id for r in coll.search(id=3, k=5, encoder="tiny")]
    assert client.get(first["thumbnail_url"]).status_code == 200


def test_caption_comes_back(client):
    answer = _search(client, id=11, k=1, encoder="tiny")
    assert answer["results"][0]["caption"] == "a sunny beach"


def test_search_by_base64_image_data_url_and_multipart_agree_with_in_process(client, coll):
    query = make_photo(5).resize((120, 90))
    data = _jpeg(query)
    expected = [r.id for r in coll.search(image=data, k=6, encoder="tiny")]
    assert expected[0] == 5
    assert _ids(_search(client, image=_b64(data), k=6, encoder="tiny")) == expected
    assert _ids(_search(client, image="data:image/jpeg;base64," + _b64(data), k=6, encoder="tiny")) == expected
    r = client.post("/api/search", data={"image": (io.BytesIO(data), "q.jpg"), "k": "6", "encoder": "tiny"},
                    content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    assert _ids(r.get_json()) == expected


def test_image_query_default_encoder_is_the_best_image_encoder(client):
    answer = _search(client, image=_b64(_jpeg(make_photo(2))), k=3)
    assert answer["encoder"] == "clip" and answer["results"][0]["id"] == 2  # clip ranks above tiny


def test_search_by_vector_equals_search_by_id(client, coll):
    vector = coll.embedding_matrix("tiny").reconstruct([7])[0]
    by_vector = _search(client, vector=vector.tolist(), k=4, encoder="tiny")
    assert _ids(by_vector) == _ids(_search(client, id=7, k=4, encoder="tiny"))


def test_text_search_uses_the_text_encoder_and_matches_in_process(client, coll):
    answer = _search(client, text="a sunny beach", k=5)
    assert answer["encoder"] == "clip"
    expected = coll.search(text="a sunny beach", k=5, encoder="clip")
    assert _ids(answer) == [r.id for r in expected]
    assert [r["score"] for r in answer["results"]] == pytest.approx([r.score for r in expected], abs=1e-5)


def test_query_arithmetic_matches_the_weighted_sum(client, coll):
    terms = [{"text": "beach", "weight": 1}, {"id": 3, "weight": -0.5}, {"id": 4}]
    answer = _search(client, query=terms, k=6)
    assert answer["encoder"] == "clip"  # a text term picks the text encoder
    assert _ids(answer) == [r.id for r in coll.search(query=terms, k=6, encoder="clip")]
    # by hand: the weighted sum of unit vectors, normalised, searched exactly
    clip = coll.encoder("clip")
    rows = coll.embedding_matrix("clip").reconstruct([3, 4]).astype(np.float64)
    text = clip.encode_text(["beach"])[0].astype(np.float64)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    q = unit(unit(text) - 0.5 * unit(rows[0]) + unit(rows[1]))
    matrix = coll.embedding_matrix("clip")
    scores = matrix.vectors.astype(np.float64) @ q
    assert _ids(answer) == matrix.ids[np.argsort(-scores, kind="stable")[:6]].tolist()
    image_term = [{"image": _b64(_jpeg(make_photo(8))), "weight": 2}, {"id": 8, "weight": -1}]
    assert _search(client, query=image_term, k=1, encoder="tiny")["results"][0]["id"] == 8
    cancel = [{"id": 3, "weight": 1}, {"id": 3, "weight": -1}]
    assert "zero vector" in _error(client.post("/api/search", json={"query": cancel, "encoder": "tiny"}), 400)


def test_paging_with_offset_continues_the_ranking(client):
    whole = _ids(_search(client, id=0, k=10, encoder="tiny"))
    pages = [_ids(_search(client, id=0, k=4, offset=o, encoder="tiny")) for o in (0, 4, 8)]
    assert pages[0] + pages[1] + pages[2] == whole + _ids(_search(client, id=0, k=2, offset=10, encoder="tiny"))
    assert _search(client, id=0, k=5, offset=N_PHOTOS - 2, encoder="tiny")["results"].__len__() == 2
    assert _search(client, id=0, k=5, offset=500, encoder="tiny")["results"] == []


def test_integral_floats_count_as_integers(client):
    assert _ids(_search(client, id=3.0, k=4.0, offset=0.0, encoder="tiny")) == _ids(_search(client, id=3, k=4, encoder="tiny"))


def test_prefilter_needs_a_fitted_pca_and_then_matches_exact_search(tmp_path, photo_dir, ingest):
    ingest(tmp_path / "coll", [photo_dir])
    app = create_app(ServerConfig(str(tmp_path / "coll"), token=None))
    client = app.test_client()
    try:
        assert "fit-pca" in _error(client.post("/api/search", json={"id": 2, "prefilter": 5}), 422, "no_pca")
        assert client.get("/api/stats").get_json()["encoders"][0]["pca_dim"] is None
        Collection.open(tmp_path / "coll").fit_pca("tiny", 8)
        assert client.get("/api/stats").get_json()["encoders"][0]["pca_dim"] == 8
        exact = _search(client, id=2, k=5)
        whole = _search(client, id=2, k=5, prefilter=12)  # a shortlist of everything: the exact answer
        assert _ids(whole) == _ids(exact)
        assert _search(client, id=2, k=3, prefilter=4)["results"][0]["id"] == 2
        _error(client.post("/api/search", json={"id": 2, "prefilter": 0}), 400, "invalid_query")
    finally:
        app.extensions["nearsight"].holder.collection.close()


# -- errors ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("body, needle", [
    ({}, "exactly one"),
    ({"id": 1, "text": "x"}, "exactly one"),
    ({"id": 1, "k": 0}, "k must be"),
    ({"id": 1, "k": 1001}, "k must be"),
    ({"id": 1, "k": "3"}, "k must be"),
    ({"id": 1, "k": True}, "k must be"),
    ({"id": 1, "offset": -1}, "offset must be"),
    ({"id": 1, "offset": 10 ** 9}, "offset must be"),
    ({"id": "3"}, "id must be an integer"),
    ({"id": 1.5}, "id must be an integer"),
    ({"text": "   "}, "non-empty"),
    ({"text": "x" * 1001}, "at most"),
    ({"image": "not base64!"}, "base64"),
    ({"image": "data:image/jpeg,abc"}, "base64"),
    ({"image": 12}, "base64"),
    ({"vector": ["a", "b"]}, "vector must be"),
    ({"vector": [[1.0, 2.0]]}, "vector must be"),
    ({"vector": [1.0, 2.0], "encoder": "tiny"}, "3072"),
    ({"query": []}, "query must be"),
    ({"query": "beach"}, "query must be"),
    ({"query": [{"id": 1, "text": "x"}]}, "exactly one"),
    ({"query": [{"query": [{"id": 1}]}]}, "exactly one"),
    ({"query": [{"id": 1, "weight": "heavy"}]}, "weight"),
    ({"query": [5]}, "must be an object"),
    ({"query": [{"id": 1}] * 33}, "query must be"),
    ({"id": 1, "url": "http://example.com/a.jpg"}, "unknown field"),
    ({"id": 1, "encoder": ""}, "encoder must be"),
    ({"id": 1, "prefilter": None}, "null"),
    ({"id": 1, "text": None}, "null"),
])
def test_malformed_searches_are_400(client, body, needle):
    assert needle in _error(client.post("/api/search", json=body), 400, "invalid_query")


def test_body_that_is_not_a_json_object_is_400(client):
    _error(client.post("/api/search", data="{not json", content_type="application/json"), 400)
    _error(client.post("/api/search", json=[1, 2]), 400)
    assert "NoneType" in _error(client.post("/api/search", data="null", content_type="application/json"), 400)
    _error(client.post("/api/search", data=b"\xff\xfe", content_type="application/json"), 400)


def test_wrong_content_type_is_415(client):
    _error(client.post("/api/search", data="id=1", content_type="text/plain"), 415)


def test_unknown_ids_are_404(client):
    for body in ({"id": 999}, {"id": -1}, {"id": 2 ** 70}, {"query": [{"id": 999}]}):
        _error(client.post("/api/search", json=body), 404, "unknown_item")
    for url in ("/api/items/999", "/api/items/999/thumbnail", "/api/items/999/image",
                f"/api/items/{2 ** 64}", f"/api/items/{2 ** 64}/thumbnail"):
        _error(client.get(url), 404, "unknown_item")
    _error(client.get("/api/items/-1"), 404, "not_found")  # not an id: no route
    _error(client.get("/api/items/abc"), 404, "not_found")
    _error(client.get("/api/nothing"), 404, "not_found")


def test_impossible_queries_are_422(client):
    assert "clip" in _error(client.post("/api/search", json={"text": "beach", "encoder": "tiny"}), 422,
                            "unsupported_modality")
    message = _error(client.post("/api/search", json={"id": 1, "encoder": "nope"}), 422, "unknown_encoder")
    assert "nope" in message and "tiny" in message


def test_not_an_image_is_415(client):
    _error(client.post("/api/search", json={"image": _b64(b"hello, this is text")}), 415, "not_an_image")
    r = client.post("/api/search", data={"image": (io.BytesIO(b"%PDF-1.4 ..."), "x.pdf")}, content_type="multipart/form-data")
    _error(r, 415, "not_an_image")
    truncated = _jpeg(make_photo(1))[:200]
    _error(client.post("/api/search", json={"image": _b64(truncated)}), 415, "not_an_image")


def test_multipart_needs_exactly_an_image_file(client):
    data = _jpeg(make_photo(1))
    r = client.post("/api/search", data={"k": "3"}, content_type="multipart/form-data")
    _error(r, 400, "invalid_query")
    r = client.post("/api/search", data={"image": (io.BytesIO(data), "a.jpg"), "text": "x"}, content_type="multipart/form-data")
    _error(r, 400, "invalid_query")
    r = client.post("/api/search", data={"image": (io.BytesIO(data), "a.jpg"), "k": "many"}, content_type="multipart/form-data")
    assert "k must be" in _error(r, 400, "invalid_query")


def test_method_not_allowed_is_json_with_allow(client):
    r = client.get("/api/search")
    _error(r, 405)
    assert "POST" in r.headers["Allow"]


def test_unexpected_errors_are_a_plain_500(app, client, monkeypatch):
    coll = app.extensions["nearsight"].holder.collection

    def boom(*args, **kwargs):
        raise RuntimeError("secret detail /etc/shadow")

    monkeypatch.setattr(coll, "search_batch", boom)
    message = _error(client.post("/api/search", json={"id": 1}), 500, "internal_error")
    assert "secret" not in message and "shadow" not in message


# -- uploads: size limit and decompression bomb ------------------------------------------------------

@pytest.fixture(scope="module")
def strict_client(built):
    app = create_app(ServerConfig(str(built[0]), token=None, max_upload_bytes=20_000, max_pixels=200_000))
    yield app.test_client()
    app.extensions["nearsight"].holder.collection.close()


def test_upload_size_limit_is_413(strict_client):
    big = _jpeg(Image.fromarray(np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8)))
    request_limit = ServerConfig("x", token=None, max_upload_bytes=20_000).max_request_bytes
    assert len(big) > 20_000 and len(_b64(big)) < request_limit  # over the image limit, within the body limit
    _error(strict_client.post("/api/search", json={"image": _b64(big)}), 413, "image_too_large")
    r = strict_client.post("/api/search", data={"image": (io.BytesIO(big), "big.jpg")}, content_type="multipart/form-data")
    _error(r, 413, "image_too_large")
    huge = b"x" * 100_000  # over the request body limit itself: refused before parsing
    _error(strict_client.post("/api/search", json={"image": _b64(huge)}), 413, "request_too_large")
    ok = _jpeg(make_photo(1))
    assert strict_client.post("/api/search", json={"image": _b64(ok), "k": 1}).status_code == 200


def test_decompression_bomb_is_413_before_decoding(strict_client, client):
    bomb = _bomb_png(60_000, 60_000)  # 3.6 gigapixels, 10.8 GB decoded; a few hundred bytes here
    assert len(bomb) < 1000
    start = time.perf_counter()
    assert "pixels" in _error(client.post("/api/search", json={"image": _b64(bomb)}), 413, "image_too_large")
    assert time.perf_counter() - start < 2
    r = strict_client.post("/api/search", data={"image": (io.BytesIO(_jpeg(Image.new("RGB", (600, 400), "teal"))), "a.jpg")},
                           content_type="multipart/form-data")
    assert "200,000" in _error(r, 413, "image_too_large")


def test_strings_are_never_paths(client, built):
    photo = str(built[1] / "p01.jpg")
    for value in (photo, "file://" + photo, "http://127.0.0.1/p01.jpg"):
        r = client.post("/api/search", json={"image": value})
        assert r.status_code in (400, 415)
        r = client.post("/api/search", json={"query": [{"image": value}]})
        assert r.status_code in (400, 415)


# -- items -----------------------------------------------------------------------------------------

def test_item_metadata_has_no_server_path(client, built):
    body = client.get("/api/items/4").get_json()
    assert body["id"] == 4 and body["filename"] == "p04.jpg" and body["width"] == 96
    assert body["bytes"] == os.path.getsize(built[1] / "p04.jpg")
    assert body["thumbnail_url"] == "/api/items/4/thumbnail" and body["image_url"] == "/api/items/4/image"
    assert str(built[1]) not in str(body)


def test_thumbnail_is_a_cacheable_jpeg_with_etag(client, coll):
    r = client.get("/api/items/4/thumbnail")
    assert r.status_code == 200 and r.mimetype == "image/jpeg" and r.data == coll.thumbnail(4)
    assert Image.open(io.BytesIO(r.data)).format == "JPEG"
    assert r.headers["ETag"] and "max-age" in r.headers["Cache-Control"] and "public" in r.headers["Cache-Control"]
    again = client.get("/api/items/4/thumbnail", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    other = client.get("/api/items/5/thumbnail", headers={"If-None-Match": r.headers["ETag"]})
    assert other.status_code == 200


def test_original_image_while_the_file_exists(tmp_path, ingest):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(3):
        make_photo(40 + i).save(photos / f"o{i}.jpg")
    make_photo(43).save(photos / "o3.png")
    ingest(tmp_path / "coll", [photos])
    app = create_app(ServerConfig(str(tmp_path / "coll"), token=None))
    client = app.test_client()
    try:
        by_name = {client.get(f"/api/items/{i}").get_json()["filename"]: i for i in range(4)}
        r = client.get(f"/api/items/{by_name['o0.jpg']}/image")
        assert r.status_code == 200 and r.mimetype == "image/jpeg"
        assert r.data == (photos / "o0.jpg").read_bytes()
        r = client.get(f"/api/items/{by_name['o3.png']}/image")
        assert r.mimetype == "image/png" and r.data == (photos / "o3.png").read_bytes()
        (photos / "o1.jpg").unlink()
        assert "no longer available" in _error(client.get(f"/api/items/{by_name['o1.jpg']}/image"), 404, "unknown_item")
        make_photo(99).save(photos / "o2.jpg")  # changed since indexing: not the item's original any more
        _error(client.get(f"/api/items/{by_name['o2.jpg']}/image"), 404, "unknown_item")
        assert client.get(f"/api/items/{by_name['o1.jpg']}/thumbnail").status_code == 200
    finally:
        app.extensions["nearsight"].holder.collection.close()


# -- collection ------------------------------------------------------------------------------------

def test_stats_and_health(client):
    stats = client.get("/api/stats").get_json()
    assert stats["items"] == N_PHOTOS
    assert [(e["name"], e["dim"], e["embedded"]) for e in stats["encoders"]] == [("tiny", 3072, 12), ("clip", 32, 12)]
    assert stats["default_encoder"] == {"image": "clip", "text": "clip"}
    assert stats["limits"]["max_k"] == 1000 and stats["limits"]["max_upload_bytes"] == 20 * 1024 * 1024
    assert client.get("/api/health").get_json() == {"status": "ok"}


def test_new_items_from_an_index_run_appear_without_restart(tmp_path, photo_dir, ingest):
    ingest(tmp_path / "coll", [photo_dir])
    app = create_app(ServerConfig(str(tmp_path / "coll"), token=None))
    client = app.test_client()
    try:
        assert client.get("/api/stats").get_json()["items"] == 12
        assert _search(client, id=0, k=20)["results"].__len__() == 12
        more = tmp_path / "more"
        more.mkdir()
        for i in range(5):
            make_photo(200 + i).save(more / f"m{i}.jpg")
        make_photo(77).save(photo_dir / "p03.jpg")  # changed content: item 3 is replaced by a new item
        # A separate process writes, as `nearsight index` would while the server runs.
        subprocess.run([sys.executable, "-m", "nearsight.server.cli", "index", str(more), str(photo_dir),
                        "-c", str(tmp_path / "coll"), "--workers", "0", "--quiet", "--no-index"],
                       check=True, capture_output=True, timeout=120)
        answer = _search(client, id=0, k=30)
        assert len(answer["results"]) == 12 + 5  # 18 items made, one replaced
        new_ids = set(range(12, 18))
        assert new_ids <= set(_ids(answer)) and 3 not in _ids(answer)
        assert client.get("/api/stats").get_json()["items"] == 17
        assert "replaced by" in _error(client.get("/api/items/3"), 404, "unknown_item")
        assert _search(client, image=_b64(_jpeg(make_photo(202))), k=1)["results"][0]["id"] in new_ids
        assert client.get("/api/items/12/thumbnail").status_code == 200
    finally:
        app.extensions["nearsight"].holder.collection.close()


def test_sighup_reopens_the_collection(tmp_path, photo_dir, ingest):
    ingest(tmp_path / "coll", [photo_dir])
    app = create_app(ServerConfig(str(tmp_path / "coll"), token=None))
    holder = app.extensions["nearsight"].holder
    before = holder.collection
    previous = signal.getsignal(signal.SIGHUP)
    try:
        install_reload_signal(app)
        os.kill(os.getpid(), signal.SIGHUP)
        deadline = time.time() + 10
        while holder.collection is before and time.time() < deadline:
            time.sleep(0.02)
        assert holder.collection is not before
        assert app.test_client().post("/api/search", json={"id": 1, "k": 2}).status_code == 200
    finally:
        signal.signal(signal.SIGHUP, previous)
        holder.collection.close()


# -- token -----------------------------------------------------------------------------------------

def test_bearer_token_guards_every_api_route_but_health(built, monkeypatch):
    monkeypatch.setenv("NEARSIGHT_TOKEN", "s3cret-token")
    config = ServerConfig(str(built[0]))
    assert config.token == "s3cret-token"  # from the environment
    app = create_app(config)
    client = app.test_client()
    good = {"Authorization": "Bearer s3cret-token"}
    try:
        requests = [("post", "/api/search", {"json": {"id": 1}}), ("get", "/api/items/1", {}),
                    ("get", "/api/items/1/thumbnail", {}), ("get", "/api/items/1/image", {}), ("get", "/api/stats", {})]
        for method, url, kw in requests:
            r = getattr(client, method)(url, **kw)
            _error(r, 401, "unauthorized")
            assert r.headers["WWW-Authenticate"].startswith("Bearer")
            _error(getattr(client, method)(url, headers={"Authorization": "Bearer wrong"}, **kw), 401)
            _error(getattr(client, method)(url, headers={"Authorization": "Basic czNjcmV0LXRva2Vu"}, **kw), 401)
            assert getattr(client, method)(url, headers=good, **kw).status_code == 200, url
        for url in ("/api/health", "/", "/openapi.json", "/static/app.js"):
            assert client.get(url).status_code == 200, url
        thumb = client.get("/api/items/1/thumbnail", headers=good)
        assert "private" in thumb.headers["Cache-Control"]
        doc = client.get("/openapi.json").get_json()
        assert doc["security"] == [{"bearer": []}] and doc["paths"]["/api/health"]["get"]["security"] == []
    finally:
        app.extensions["nearsight"].holder.collection.close()


def test_blank_token_is_refused():
    with pytest.raises(ValueError):
        ServerConfig("x", token="  ")


# -- web page and OpenAPI ------------------------------------------------------------------------------

def test_web_page_and_static_files(client):
    r = client.get("/")
    assert r.status_code == 200 and r.mimetype == "text/html"
    assert b'id="search-form"' in r.data and b"static/app.js" in r.data
    assert "default-src 'self'" in r.headers["Content-Security-Policy"]
    for name, mimetype in (("app.js", "javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and mimetype in r.mimetype
    assert client.get("/static/../app.py").status_code == 404
    assert client.get("/static/%2e%2e/app.py").status_code == 404


def _flask_path(rule: str) -> str:
    """/api/items/<int:item_id> -> /api/items/{item_id}"""
    import re

    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_openapi_document_is_valid_and_in_sync_with_the_routes(app, client):
    from openapi_spec_validator import validate

    doc = client.get("/openapi.json").get_json()
    validate(doc)
    documented = {(path, method.upper()) for path, ops in doc["paths"].items() for method in ops}
    served = {(_flask_path(rule.rule), method) for rule in app.url_map.iter_rules() if rule.endpoint != "static"
              for method in rule.methods - {"HEAD", "OPTIONS"}}
    assert documented == served
    assert "401" not in doc["paths"]["/api/stats"]["get"]["responses"]  # no token configured
    search = doc["paths"]["/api/search"]["post"]
    assert {"400", "404", "413", "415", "422"} <= set(search["responses"])
    encoder = doc["components"]["schemas"]["SearchRequest"]["properties"]["encoder"]
    assert encoder["enum"] == ["tiny", "clip"]  # the served collection's encoders


def test_openapi_schemas_describe_real_answers(client):
    """The answers of the routes validate against the response schemas the document gives."""
    import jsonschema

    doc = client.get("/openapi.json").get_json()

    def check(instance, ref):
        schema = {"$ref": ref, "components": doc["components"]}
        jsonschema.validate(instance, schema, cls=jsonschema.Draft202012Validator)

    check(_search(client, id=1, k=3), "#/components/schemas/SearchResponse")
    check(client.get("/api/items/1").get_json(), "#/components/schemas/Item")
    check(client.get("/api/stats").get_json(), "#/components/schemas/Stats")
    check(client.get("/api/items/999").get_json(), "#/components/schemas/Error")
    check({"query": [{"text": "beach", "weight": 1}, {"id": 12, "weight": -0.5}], "k": 5},
          "#/components/schemas/SearchRequest")
    with pytest.raises(jsonschema.ValidationError):
        check({"id": 1, "text": "two kinds"}, "#/components/schemas/SearchRequest")


def test_image_endpoint_helpers_read_uploads_and_ids_and_answer_jpeg(built):
    """read_image_request / image_response, the input and output of the image endpoints (complete, colorize)."""
    from PIL import ImageOps

    from nearsight.server.api import image_response, read_image_request

    app = create_app(ServerConfig(str(built[0]), token=None, max_upload_bytes=50_000))

    @app.post("/test/mirror")
    def mirror():
        image, fields = read_image_request(frozenset({"strength"}))
        assert set(fields) <= {"strength"}
        return image_response(ImageOps.mirror(image))

    client = app.test_client()
    try:
        photo = make_photo(3)
        for kw in ({"json": {"image": _b64(_jpeg(photo)), "strength": 2}}, {"json": {"id": 3}},
                   {"data": {"image": (io.BytesIO(_jpeg(photo)), "a.jpg"), "strength": "2"},
                    "content_type": "multipart/form-data"}):
            r = client.post("/test/mirror", **kw)
            assert r.status_code == 200 and r.mimetype == "image/jpeg" and r.headers["Cache-Control"] == "no-store"
            out = np.asarray(Image.open(io.BytesIO(r.data)), dtype=np.float32)
            assert out.shape == (72, 96, 3)
            assert np.abs(out - np.asarray(ImageOps.mirror(photo), dtype=np.float32)).mean() < 8
        _error(client.post("/test/mirror", json={"image": _b64(_jpeg(photo)), "id": 3}), 400, "invalid_query")
        _error(client.post("/test/mirror", json={"id": 3, "other": 1}), 400, "invalid_query")
        _error(client.post("/test/mirror", json={"id": 999}), 404, "unknown_item")
        _error(client.post("/test/mirror", json={"image": _b64(b"text")}), 415, "not_an_image")
        _error(client.post("/test/mirror", json={"image": _b64(_bomb_png(60_000, 60_000))}), 413, "image_too_large")
    finally:
        app.extensions["nearsight"].holder.collection.close()
