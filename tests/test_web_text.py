"""Text search on the page with a model trained in the collection (`nearsight train`): the placeholder
suggests what it learnt, typed words find their pictures, and with `serve --feedback` opening a result
records it with the results passed over above it."""
from __future__ import annotations

import json
import shutil

import pytest
from test_train import COLOURS, SHAPES, build_shapes
from test_web import ARTIFACTS, CHROMIUM, Server, browser, page, screenshot_on_failure, wait_for_results  # noqa: F401

from nearsight.indexer.install_model import install_model
from nearsight.indexer.train import TrainConfig, train_heads
from nearsight.retrieval.collection import Collection

pytestmark = [pytest.mark.browser,
              pytest.mark.skipif(not shutil.which(CHROMIUM), reason=f"{CHROMIUM} is missing")]


@pytest.fixture(scope="module")
def text_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("webtext")
    build_shapes(root, 4)
    config = TrainConfig(image_encoder="tiny", dim=32, hidden=64, epochs=30, batch_size=32, lr=2e-3,
                         progress=False, device="cpu")
    coll = Collection.open(root / "coll")
    try:
        result = train_heads(coll, config)
    finally:
        coll.close()
    install_model(str(root / "coll"), config, result)
    server = Server(root / "coll", args=("--feedback",))
    server.post("api/search", {"text": "warm up", "k": 1})  # loads torch and the sentence model
    yield server, root / "coll"
    server.stop()


@screenshot_on_failure
def test_typed_words_find_their_pictures_and_opening_one_records_feedback(text_server, page):
    server, coll_dir = text_server
    page.goto(server.url)
    page.wait_for_function("() => document.querySelector('#query').placeholder.includes('e.g.')")
    placeholder = page.locator("#query").get_attribute("placeholder")
    assert any(f"{c} {s}" in placeholder for c in COLOURS for s in SHAPES), placeholder
    page.fill("#query", "a photo of a yellow circle")
    page.keyboard.press("Enter")
    wait_for_results(page)
    captions = page.locator("#results .result .caption").all_inner_texts()
    assert captions[0] == "a yellow circle", captions[:5]
    ids = [int(x) for x in page.locator("#results .result").evaluate_all("els => els.map(e => e.dataset.id)")]
    page.locator("#results .result").nth(2).click()
    page.wait_for_timeout(500)
    for _ in range(40):
        if (coll_dir / "feedback.jsonl").exists():
            break
        page.wait_for_timeout(250)
    events = [json.loads(line) for line in (coll_dir / "feedback.jsonl").read_text().splitlines()]
    assert events[-1] == {"text": "a photo of a yellow circle", "opened": ids[2], "passed_over": ids[:2]}
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "text_search.png"))
    assert not page.js_errors


def test_feedback_api_checks_its_input(text_server):
    import urllib.error
    import urllib.request

    server, _ = text_server

    def post(body):
        req = urllib.request.Request(server.url + "api/feedback", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return r.status, json.load(r)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    assert post({"text": "a red square", "opened": 1, "passed_over": [0]}) == (200, {"recorded": True})
    assert post({"text": "", "opened": 1})[0] == 400
    assert post({"text": "x", "opened": "1"})[0] == 400
    assert post({"text": "x", "opened": 10 ** 9})[0] == 404
    assert post({"text": "x", "opened": 1, "extra": 2})[0] == 400
    stats = json.load(urllib.request.urlopen(server.url + "api/stats", timeout=30))
    assert stats["text"]["encoder"] == "text" and stats["text"]["feedback"] is True and stats["text"]["examples"]
