"""The web page end to end: the real ``nearsight serve`` (waitress) on a loopback port, driven in Debian's
headless Chromium through Playwright. Type a query, upload and drop an image, click a result for more like
it, switch encoders, use it on a phone-sized screen and behind a token. A failing test leaves a screenshot
in tests/artifacts/."""
from __future__ import annotations

import functools
import json
import os
import re
import select
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import make_photo

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).parent / "artifacts"
TIMEOUT_MS = 30_000
N_PHOTOS = 40  # more than one page of 30 results
TINY_CLIP = {"embed_dim": 32,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
             "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.filterwarnings("ignore:clip encoder .* random weights:UserWarning"),
]


def _build(root: Path, encoders: tuple[str, ...]) -> Path:
    from nearsight.indexer.ingest import IngestConfig, index_paths

    photos = root / "photos"
    photos.mkdir()
    for i in range(N_PHOTOS):
        make_photo(i).save(photos / f"p{i:02d}.jpg", quality=92)
    (photos / "p11.txt").write_text("a sunny beach\n")
    options = (("clip", (("model", "nearsight-web-test"), ("model_config", TINY_CLIP), ("pretrained", "random"))),)
    index_paths(str(root / "coll"), [str(photos)],
                IngestConfig(encoders=encoders, encoder_options=options, workers=0, progress=False))
    return root / "coll"


class Server:
    """``nearsight serve --port 0`` in a subprocess; the URL is read from its first line of output."""

    def __init__(self, collection: Path, token: str | None = None, args: tuple[str, ...] = ()):
        env = dict(os.environ, HF_HUB_OFFLINE="1")
        env.pop("NEARSIGHT_TOKEN", None)
        if token:
            env["NEARSIGHT_TOKEN"] = token
        self.proc = subprocess.Popen([sys.executable, "-m", "nearsight.server.cli", "serve", "-c", str(collection),
                                      "--host", "127.0.0.1", "--port", "0", "--threads", "4", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True)
        deadline = time.time() + 60
        line = ""
        while time.time() < deadline and "http://" not in line:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                line = self.proc.stdout.readline()
                if not line and self.proc.poll() is not None:
                    break
        match = re.search(r"http://127\.0\.0\.1:\d+/", line)
        if not match:
            self.stop()
            raise RuntimeError(f"nearsight serve did not start: {line!r}")
        self.url = match.group(0)

    def post(self, path: str, body: dict, token: str | None = None) -> dict:
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {token}"} if token else {})}
        req = urllib.request.Request(self.url + path, data=json.dumps(body).encode(), headers=headers)
        with urllib.request.urlopen(req, timeout=60) as r:
            return json.load(r)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    server = Server(_build(tmp_path_factory.mktemp("web"), ("tiny", "clip")))
    server.post("api/search", {"text": "warm up", "k": 1})  # the first text query loads torch and the model
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.js_errors = errors
    yield page
    context.close()


def screenshot_on_failure(test):
    """Save a full-page screenshot to tests/artifacts/<test>.png when the test fails, then re-raise."""
    @functools.wraps(test)
    def wrapper(*args, **kwargs):
        page = kwargs.get("page") or kwargs.get("phone")
        try:
            return test(*args, **kwargs)
        except BaseException:
            if page is not None:
                ARTIFACTS.mkdir(exist_ok=True)
                try:
                    page.screenshot(path=str(ARTIFACTS / f"{test.__name__}.png"), full_page=True)
                except Exception:  # the page may be gone; the original failure matters more
                    pass
            raise
    return wrapper


def result_ids(page) -> list[int]:
    return [int(x) for x in page.locator("#results .result").evaluate_all("els => els.map(e => e.dataset.id)")]


def wait_for_results(page, previous: list[int] | None = None) -> list[int]:
    """Wait until the grid shows results (different from ``previous``) and the first thumbnail has loaded
    (the others load lazily, as they scroll into view)."""
    page.wait_for_function(
        """(prev) => {
            const cards = [...document.querySelectorAll('#results .result')];
            if (!cards.length) return false;
            const ids = cards.map(c => c.dataset.id).join(',');
            return prev === null || ids !== prev;
        }""", arg=None if previous is None else ",".join(map(str, previous)), timeout=TIMEOUT_MS)
    page.wait_for_function("() => { const i = document.querySelector('#results .result img');"
                           " return i && i.complete && i.naturalWidth > 0; }", timeout=TIMEOUT_MS)
    return result_ids(page)


@pytest.fixture(scope="module")
def query_photo(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("upload") / "query.jpg"
    make_photo(5).resize((150, 110)).save(path, quality=90)
    return path


@screenshot_on_failure
def test_type_upload_click_and_the_results_change(server, page, query_photo):
    page.goto(server.url)
    page.wait_for_function("() => document.querySelector('#collection-stats').textContent.includes('40 images')")
    assert page.locator("#encoder option").all_text_contents() == ["auto", "tiny (image)", "clip (image+text)"]

    page.fill("#query", "a sunny beach")
    page.press("#query", "Enter")
    text_ids = wait_for_results(page)
    expected = server.post("api/search", {"text": "a sunny beach", "k": 30})
    assert text_ids == [r["id"] for r in expected["results"]] and len(text_ids) == 30
    assert "with clip" in page.text_content("#query-info")
    scores = page.locator("#results .score").all_text_contents()
    assert scores[0] == f"{round(100 * expected['results'][0]['similarity'])}%"  # a similarity, not a raw score

    page.set_input_files("#upload", str(query_photo))
    image_ids = wait_for_results(page, text_ids)
    assert image_ids[0] == 5 and "image query.jpg" in page.text_content("#query-info")
    assert "with clip" in page.text_content("#query-info")  # the best image encoder held
    assert page.locator("#query-image").is_visible()  # the query is shown above its results

    target = image_ids[2]
    page.locator(f"#results .result[data-id='{target}']").click()  # the detail view, then more like it
    page.locator("#detail .more-like[data-encoder='clip']").click()
    similar = wait_for_results(page, image_ids)
    assert similar[0] == target and "more like" in page.text_content("#query-info")
    page.wait_for_function(f"() => document.querySelector('#query-label').textContent.includes('p{target:02d}.jpg')")
    assert similar == [r["id"] for r in server.post("api/search", {"id": target, "k": 30})["results"]]
    assert page.js_errors == []


@screenshot_on_failure
def test_drag_and_drop_an_image(server, page, query_photo):
    page.goto(server.url)
    page.wait_for_function("() => document.querySelector('#encoder').options.length > 1")
    data = list(query_photo.read_bytes())
    page.evaluate("""(bytes) => {
        const file = new File([new Uint8Array(bytes)], 'dropped.jpg', {type: 'image/jpeg'});
        const dt = new DataTransfer();
        dt.items.add(file);
        window.dispatchEvent(new DragEvent('dragenter', {dataTransfer: dt, bubbles: true}));
        window.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", data)
    ids = wait_for_results(page)
    assert ids[0] == 5 and "dropped.jpg" in page.text_content("#query-info")
    assert page.locator("#drop-overlay").is_hidden()


@screenshot_on_failure
def test_errors_are_shown_and_the_encoder_selector_is_used(server, page):
    page.goto(server.url)
    page.wait_for_function("() => document.querySelector('#encoder').options.length === 3")
    page.select_option("#encoder", "tiny")
    page.fill("#query", "a beach")
    page.press("#query", "Enter")
    page.wait_for_selector("#error:not([hidden])")
    message = page.text_content("#error")
    assert "no text tower" in message and "clip" in message and "(422)" in message
    assert page.locator("#results .result").count() == 0
    page.select_option("#encoder", "clip")  # changing the encoder repeats the query with it
    ids = wait_for_results(page)
    assert page.locator("#error").is_hidden() and "with clip" in page.text_content("#query-info")
    assert ids == [r["id"] for r in server.post("api/search", {"text": "a beach", "k": 30, "encoder": "clip"})["results"]]


@screenshot_on_failure
def test_more_results_pages_on_and_captions_show(server, page):
    page.goto(server.url)
    page.wait_for_function("() => document.querySelector('#encoder').options.length === 3")
    page.fill("#query", "a sunny beach")
    page.press("#query", "Enter")
    first = wait_for_results(page)
    assert len(first) == 30 and page.locator("#more").is_visible()
    page.click("#more")
    page.wait_for_function("() => document.querySelectorAll('#results .result').length === 40")
    everything = result_ids(page)
    assert everything[:30] == first and sorted(everything) == list(range(N_PHOTOS))
    assert page.locator("#more").is_hidden() and "40 results" in page.text_content("#query-info")
    page.locator("#results .result[data-id='11']").click()
    page.locator("#detail .more-like[data-encoder='clip']").click()
    similar = wait_for_results(page, everything)
    assert similar[0] == 11
    assert page.locator("#results .result").first.locator(".caption").text_content() == "a sunny beach"


@pytest.fixture
def phone(browser):
    context = browser.new_context(viewport={"width": 360, "height": 740}, device_scale_factor=2, is_mobile=True,
                                  has_touch=True)
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    yield page
    context.close()


@screenshot_on_failure
def test_usable_on_a_phone_sized_screen(server, phone):
    phone.goto(server.url)
    phone.wait_for_function("() => document.querySelector('#encoder').options.length === 3")
    phone.fill("#query", "a sunny beach")
    phone.locator("#search-button").tap()
    wait_for_results(phone)
    phone.wait_for_timeout(100)  # layout settles after the images
    fits = phone.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
    assert fits, "the page scrolls sideways on a 360 px screen"
    boxes = [phone.locator(sel).bounding_box() for sel in ("#query", "#search-button", "#upload-label")]
    assert all(b and b["x"] >= 0 and b["x"] + b["width"] <= 360 for b in boxes)
    columns = phone.evaluate("() => getComputedStyle(document.querySelector('#results')).gridTemplateColumns"
                             ".split(' ').length")
    assert columns == 2
    phone.locator("#results .result").nth(1).tap()
    phone.locator("#detail .more-like").first.tap()
    phone.wait_for_function("() => document.querySelector('#query-info').textContent.includes('more like')")


@pytest.fixture(scope="module")
def token_server(tmp_path_factory):
    server = Server(_build(tmp_path_factory.mktemp("webtoken"), ("tiny",)), token="open-sesame")
    yield server
    server.stop()


@screenshot_on_failure
def test_token_prompt_then_search_with_authorised_thumbnails(token_server, page, query_photo):
    page.goto(token_server.url)
    page.wait_for_selector("#token-form:not([hidden])")
    page.fill("#token", "wrong")
    page.click("#token-form button")
    page.wait_for_function("() => document.querySelector('#token-form label').textContent.includes('refused')")
    page.fill("#token", "open-sesame")
    page.click("#token-form button")
    page.wait_for_function("() => document.querySelector('#collection-stats').textContent.includes('40 images')")
    assert page.locator("#token-form").is_hidden()
    assert page.evaluate("() => localStorage.getItem('nearsight.token')") == "open-sesame"
    page.set_input_files("#upload", str(query_photo))
    ids = wait_for_results(page)
    assert ids[0] == 5
    src = page.locator("#results .result img").first.get_attribute("src")
    assert src.startswith("blob:")  # fetched with the Authorization header, shown from memory


@screenshot_on_failure
def test_image_jobs_run_through_the_job_api_with_progress(server, page):
    """The page's job client (runJob in app.js): submit, poll with statuses, resolve to the route's answer."""
    page.goto(server.url)
    outcome = page.evaluate("""async () => {
        const statuses = [];
        const answer = await runJob("recolor", {id: 1, like: 2}, (s) => statuses.push(jobLabel(s) + "|" + s.state));
        let refused = null;
        try { await runJob("colorize", {id: 1}); } catch (err) { refused = [err.status, err.code]; }
        return {answer, statuses, refused};
    }""")
    assert outcome["answer"]["reference_ids"] == [2] and outcome["answer"]["image"].startswith("data:image/jpeg")
    states = [s.split("|")[1] for s in outcome["statuses"]]
    assert states[0] in ("queued", "running") and states[-1] == "done" and outcome["statuses"][-1].startswith("Done")
    assert outcome["refused"] == [422, "unknown_encoder"]  # no luminance descriptors: refused at submit
    assert not page.js_errors
