"""The server against hostile requests (issue 13): deep JSON, no server paths in answers, Host names (DNS
rebinding), JSON for waitress's own 413, oversized base64 refused before decoding, one-line serve errors."""
import base64
import http.client
import json
import socket
import threading

import pytest
from click.testing import CliRunner

from nearsight.server.app import ServerConfig, create_app
from nearsight.server.cli import main
from nearsight.server.guard import host_allowed, public_message


@pytest.fixture(scope="module")
def guarded(tmp_path_factory):
    from nearsight.indexer.ingest import IngestConfig, index_paths
    from tests.conftest import make_photo

    root = tmp_path_factory.mktemp("guard")
    (root / "photos").mkdir()
    for i in range(6):
        make_photo(i).save(root / "photos" / f"p{i}.jpg")
    index_paths(str(root / "c"), [str(root / "photos")], IngestConfig(workers=0, progress=False))
    app = create_app(ServerConfig(str(root / "c"), token=None, max_upload_bytes=2000))
    yield root, app
    app.extensions["nearsight"].holder.collection.close()


def test_deeply_nested_json_is_a_400(guarded):
    r = guarded[1].test_client().post("/api/search", data="[" * 60_000, content_type="application/json")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "invalid_query"


def test_no_server_path_in_any_error(guarded):
    root, app = guarded
    client = app.test_client()
    bodies = [{"id": 1, "encoder": "nope"}, {"text": "x", "encoder": "nope"}, {"id": 1, "prefilter": 5}]
    for body in bodies:
        r = client.post("/api/search", json=body)
        assert r.status_code >= 400 and r.is_json
        assert str(root) not in r.get_data(as_text=True), r.get_data(as_text=True)
    r = client.post("/api/search", json={"id": 1, "encoder": "nope"})
    assert r.get_json()["error"]["message"].startswith("this collection has no encoder 'nope'")


def test_public_message_removes_paths():
    assert public_message("collection /srv/c has no gist", "/srv/c") == "the collection has no gist"
    assert public_message("cannot read /home/me/x.jpg: denied", "/srv/c") == "cannot read <path>: denied"
    assert public_message("send image/jpeg to /api/search (see https://example.org/x)", "/srv/c") == \
        "send image/jpeg to /api/search (see https://example.org/x)"


def test_only_loopback_and_allowed_host_names_are_answered(guarded):
    client = guarded[1].test_client()
    for host in ("localhost", "localhost:8080", "127.0.0.1:80", "[::1]:8080"):
        assert client.get("/api/health", headers={"Host": host}).status_code == 200, host
    for host in ("evil.example", "evil.example:8080", "localhost.evil.example"):
        r = client.get("/api/health", headers={"Host": host})
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "host_not_allowed", host
    assert host_allowed("photos.lan:8080", ("photos.lan",)) and host_allowed("anything", ("*",))
    assert not host_allowed("", ())


def test_oversized_base64_is_refused_before_decoding(guarded):
    r = guarded[1].test_client().post("/api/search", json={"image": "A" * 4000})
    assert r.status_code == 413 and "about 3,000 bytes" in r.get_json()["error"]["message"]


def test_waitress_413_is_json(guarded):
    from waitress import create_server

    from nearsight.server.guard import use_json_errors

    app = guarded[1]
    server = create_server(app, host="127.0.0.1", port=0, max_request_body_size=1000, ident="nearsight")
    use_json_errors(server)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", server.effective_port, timeout=30)
        conn.request("POST", "/api/search", body=json.dumps({"image": base64.b64encode(b"x" * 3000).decode()}),
                     headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        assert r.status == 413 and r.getheader("Content-Type") == "application/json"
        assert json.loads(r.read())["error"]["code"] == "request_too_large"
    finally:
        server.close()


def test_serve_on_a_port_in_use_is_one_line(guarded):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = CliRunner().invoke(main, ["serve", "-c", str(guarded[0] / "c"), "--port", str(s.getsockname()[1])])
    assert r.exit_code == 1 and r.output.strip().startswith("error: cannot listen on 127.0.0.1:"), r.output
    assert len(r.output.strip().splitlines()) == 1


def test_token_file(tmp_path):
    from nearsight.server.cli import _read_token

    (tmp_path / "t").write_text("s3cret\n")
    assert _read_token(str(tmp_path / "t")) == "s3cret"
    (tmp_path / "empty").write_text("\n")
    r = CliRunner().invoke(main, ["serve", "-c", str(tmp_path), "--token-file", str(tmp_path / "empty")])
    assert r.exit_code == 2 and "holds no token" in r.output


def test_colorize_output_name_checked_before_any_work(guarded, monkeypatch):
    import nearsight.retrieval.colorize as colorize

    monkeypatch.setattr(colorize, "colorize", lambda *a, **k: pytest.fail("worked before checking -o"))
    root = guarded[0]
    r = CliRunner().invoke(main, ["colorize", "-c", str(root / "c"), str(root / "photos" / "p1.jpg"), "-o", "noext"])
    assert r.exit_code == 1 and "cannot tell the image format from 'noext'" in r.output
