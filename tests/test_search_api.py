"""Search options over HTTP and the command line: filters, exclude, min score, collapse, batch, sha256."""
from __future__ import annotations

import base64
import hashlib
import io
import json

import pytest
from click.testing import CliRunner
from conftest import make_photo

from nearsight.server.app import ServerConfig, create_app
from nearsight.server.cli import main


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    from nearsight.indexer.ingest import IngestConfig, index_paths

    root = tmp_path_factory.mktemp("search_api")
    photos = root / "photos"
    (photos / "sub").mkdir(parents=True)
    for i in range(8):
        make_photo(i).save(photos / f"p{i:02d}.jpg", quality=92)
    make_photo(1).save(photos / "sub" / "p01_copy.jpg", quality=60)  # a near-copy of p01
    (photos / "p03.txt").write_text("a sunny beach\n")
    index_paths(str(root / "coll"), [str(photos)], IngestConfig(encoders=("tiny",), workers=0, progress=False))
    return root / "coll", photos


@pytest.fixture(scope="module")
def client(built):
    app = create_app(ServerConfig(str(built[0]), token=None))
    yield app.test_client()
    app.extensions["nearsight"].holder.collection.close()


def _search(client, **body):
    r = client.post("/api/search", json=body)
    assert r.status_code == 200, r.get_json()
    return r.get_json()


def test_results_have_sha256_similarity_and_group_size(client, built):
    first = _search(client, id=0, k=2)["results"][0]
    assert first["sha256"] == hashlib.sha256((built[1] / "p00.jpg").read_bytes()).hexdigest()
    assert first["similarity"] == pytest.approx(1.0, abs=1e-3) and first["group_size"] == 1


def test_filter_exclude_min_score_collapse(client, built):
    sub = str(built[1] / "sub") + "/"
    assert [r["id"] for r in _search(client, id=0, k=5, filter={"path_prefix": sub})["results"]] == [8]
    captioned = _search(client, id=0, k=5, filter={"caption": "beach"})["results"]
    assert len(captioned) == 1 and captioned[0]["caption"] == "a sunny beach"
    assert 0 not in [r["id"] for r in _search(client, id=0, k=9, exclude=[0])["results"]]
    assert _search(client, id=0, k=9, min_similarity=0.999)["results"][0]["id"] == 0
    assert len(_search(client, id=0, k=9, min_similarity=0.999)["results"]) == 1
    grouped = _search(client, id=1, k=3, collapse=True)["results"]
    assert grouped[0]["group_size"] == 2 and 8 not in [r["id"] for r in grouped]
    assert _search(client, id=0, filter={"path_prefix": "/nowhere/"})["results"] == []


def test_bad_filter_is_422_naming_the_fields(client):
    r = client.post("/api/search", json={"id": 0, "filter": {"colour": "red"}})
    assert r.status_code == 422
    error = r.get_json()["error"]
    assert error["code"] == "invalid_filter" and "colour" in error["message"] and "path_prefix" in error["message"]
    r = client.post("/api/search", json={"id": 0, "exclude": "all"})
    assert r.status_code == 400


def test_batch_answers_one_list_per_query(client, built):
    image = base64.b64encode((built[1] / "p05.jpg").read_bytes()).decode()
    answer = _search(client, batch=[{"id": 2}, {"image": image}], k=3)
    assert "results" not in answer and [b["results"][0]["id"] for b in answer["batch"]] == [2, 5]
    r = client.post("/api/search", json={"batch": [{"id": 2}], "id": 3})
    assert r.status_code == 400 and "not both" in r.get_json()["error"]["message"]


def test_multipart_search_takes_the_options(client, built):
    data = {"image": (io.BytesIO((built[1] / "p02.jpg").read_bytes()), "q.jpg"), "k": "3",
            "filter": json.dumps({"max_width": 1000}), "exclude": "2", "collapse": "true"}
    r = client.post("/api/search", data=data, content_type="multipart/form-data")
    assert r.status_code == 200, r.get_json()
    assert 2 not in [x["id"] for x in r.get_json()["results"]]


def test_openapi_describes_the_answers(client):
    import jsonschema

    doc = client.get("/openapi.json").get_json()

    def check(instance, ref):
        jsonschema.validate(instance, {"$ref": ref, "components": doc["components"]},
                            cls=jsonschema.Draft202012Validator)

    check(_search(client, id=1, k=3, collapse=True, filter={"min_width": 1}), "#/components/schemas/SearchResponse")
    check(_search(client, batch=[{"id": 1}, {"id": 2}], k=2), "#/components/schemas/SearchResponse")
    check({"batch": [{"id": 1}], "filter": {"caption": "beach"}, "exclude": [3], "collapse": 0.9},
          "#/components/schemas/SearchRequest")
    with pytest.raises(jsonschema.ValidationError):
        check({"id": 1, "filter": {"colour": "red"}}, "#/components/schemas/SearchRequest")


def test_cli_search_filters_batch_and_json(built):
    coll, photos = built
    runner = CliRunner()
    out = runner.invoke(main, ["search", "-c", str(coll), "--id", "1", "-k", "3", "--collapse", "--json"])
    assert out.exit_code == 0, out.output
    results = json.loads(out.output)["results"]
    assert results[0]["group_size"] == 2 and len(results[0]["sha256"]) == 64
    out = runner.invoke(main, ["search", "-c", str(coll), "--id", "1", "-k", "3", "--collapse",
                               "--collapse-threshold", "1", "--json"])  # the encoder's threshold overridden
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["results"][0]["group_size"] == 1  # the copy is close, not identical
    out = runner.invoke(main, ["search", "-c", str(coll), "--id", "1", "--collapse-threshold", "0.9"])
    assert out.exit_code == 2 and "needs --collapse" in out.output
    out = runner.invoke(main, ["search", "-c", str(coll), "--id", "0", "--id", "4", "-k", "2", "--exclude", "0",
                               "--path-prefix", str(photos), "--json"])
    assert out.exit_code == 0, out.output
    batch = json.loads(out.output)["batch"]
    assert len(batch) == 2 and batch[0]["results"][0]["id"] != 0 and batch[1]["results"][0]["id"] == 4
    out = runner.invoke(main, ["search", "-c", str(coll), "--id", "0", "--caption", "beach"])
    assert out.exit_code == 0 and "a sunny beach" in out.output and "100.0%" not in out.output
    out = runner.invoke(main, ["search", "-c", str(coll), "--id", "0", "--only-ids", "x,y"])
    assert out.exit_code == 2 and "expected item ids" in out.output


def test_browse_pages_recent_and_random(client):
    import jsonschema

    first = client.get("/api/items?k=4").get_json()
    assert first["total"] == 9 and first["order"] == "recent" and len(first["items"]) == 4
    rest = client.get("/api/items?k=10&offset=4").get_json()["items"]
    ids = [i["id"] for i in first["items"] + rest]
    assert sorted(ids) == list(range(9)) and ids[0] == 8  # one commit: ties go to the newest id
    shuffled = [i["id"] for i in client.get("/api/items?k=9&order=random&seed=3").get_json()["items"]]
    assert sorted(shuffled) == list(range(9)) and shuffled != ids
    assert shuffled == [i["id"] for i in client.get("/api/items?k=9&order=random&seed=3").get_json()["items"]]
    assert client.get("/api/items?order=oldest").status_code == 400
    assert client.get("/api/items?k=0").status_code == 400
    assert client.get("/api/items?colour=red").status_code == 400
    doc = client.get("/openapi.json").get_json()
    jsonschema.validate(first, {"$ref": "#/components/schemas/ItemPage", "components": doc["components"]},
                        cls=jsonschema.Draft202012Validator)
