"""The page's views in Chromium: the browse grid on arrival, state in the address bar (Back, Forward, shared
links), the detail view, filters, and the two image tools (complete, colorize). Helpers and the served
collection come from test_web; a failing test leaves a screenshot in tests/artifacts/."""
from __future__ import annotations

import base64
import io
import os
import urllib.request

import numpy as np
import pytest
from conftest import make_photo
from PIL import Image
from test_web import (CHROMIUM, N_PHOTOS, Server, _build, browser, page, phone, screenshot_on_failure,  # noqa: F401
                      server, wait_for_results)

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is missing (apt-get install chromium)"),
    pytest.mark.filterwarnings("ignore:clip encoder .* random weights:UserWarning"),
]


def browse_ids(page) -> list[int]:
    return [int(x) for x in page.locator("#browse .result").evaluate_all("els => els.map(e => e.dataset.id)")]


@screenshot_on_failure
def test_arrival_browse_grid_and_state_in_the_address_bar(server, page):
    page.goto(server.url)
    page.wait_for_function("() => document.querySelectorAll('#browse .result').length === 30")
    first = browse_ids(page)
    assert first[0] == N_PHOTOS - 1  # most recently added first (one commit: the newest id)
    page.click("#browse-more")
    page.wait_for_function(f"() => document.querySelectorAll('#browse .result').length === {N_PHOTOS}")
    assert sorted(browse_ids(page)) == list(range(N_PHOTOS)) and page.locator("#browse-more").is_hidden()

    page.fill("#query", "a sunny beach")
    page.press("#query", "Enter")
    text_ids = wait_for_results(page)
    assert "q=a+sunny+beach" in page.url and page.locator("#browse-view").is_hidden()
    assert "a sunny beach" in page.text_content("#query-label")

    page.locator(f"#results .result[data-id='{text_ids[1]}']").click()  # the detail view
    page.wait_for_selector("#detail .more-like")
    assert f"item={text_ids[1]}" in page.url
    page.locator("#detail .more-like[data-encoder='tiny']").click()
    id_ids = wait_for_results(page, text_ids)
    assert f"id={text_ids[1]}" in page.url and "encoder=tiny" in page.url and id_ids[0] == text_ids[1]
    assert page.locator("#query-image").is_visible()

    page.go_back()   # the detail view of the text query's result
    page.go_back()   # the text query
    page.wait_for_function("() => document.querySelector('#query-label').textContent.includes('sunny')")
    assert not page.locator("#detail").evaluate("d => d.open")
    page.go_forward()
    page.go_forward()
    # the query is headed by its picture and file name (caption first when it has one), not its id
    page.wait_for_function(f"() => document.querySelector('#query-label').textContent.includes('p{text_ids[1]:02d}.jpg')")
    assert f"#{text_ids[1]}" not in page.text_content("#query-label")

    # A shared link opens the same results.
    other = page.context.new_page()
    other.goto(server.url + f"?id={text_ids[1]}&encoder=tiny")
    assert wait_for_results(other) == id_ids
    other.close()
    page.keyboard.press("Escape")  # back to browsing
    page.wait_for_selector("#browse-view:not([hidden])")
    assert page.js_errors == []


@screenshot_on_failure
def test_detail_view_shows_the_item_and_keyboard_works(server, page):
    page.goto(server.url)
    page.wait_for_selector("#browse .result img")
    page.locator("#browse .result[data-id='11']").focus()
    page.keyboard.press("Enter")
    page.wait_for_selector("#detail .more-like")
    assert page.text_content("#detail-title") == "p11.jpg"
    assert page.text_content("#detail-caption") == "a sunny beach"
    fields = page.text_content("#detail-fields")
    assert "SHA-256" in fields and "#11" in fields
    assert page.get_attribute("#detail-download", "href").endswith("api/items/11/image")
    page.wait_for_function("() => document.querySelector('#detail-image').naturalWidth > 0")
    buttons = page.locator("#detail .more-like").all_text_contents()
    assert buttons == ["More like this (clip)", "More like this (tiny)"]  # the default (best) first
    page.keyboard.press("Escape")
    page.wait_for_function("() => !document.querySelector('#detail').open")
    # a dialog's "close" event (which takes the item out of the URL) is dispatched a task after it closes
    page.wait_for_function("() => !new URLSearchParams(location.search).has('item')")
    assert page.js_errors == []


@screenshot_on_failure
def test_filters_go_into_the_search_and_the_link(server, page):
    page.goto(server.url + "?q=beach&caption=sunny")
    ids = wait_for_results(page)
    assert ids == [11] and page.locator("#filters").evaluate("d => d.open")
    assert page.input_value("#f-caption") == "sunny"
    page.fill("#f-caption", "")
    page.check("#f-collapse")  # a change re-runs the query
    ids = wait_for_results(page, ids)
    assert "collapse=1" in page.url and "caption" not in page.url
    # The test's CLIP has random weights: its embeddings of these synthetic photos are close, so many fold
    # into groups; every photo is still accounted for, each group once with its size.
    badges = page.locator("#results .copies").all_text_contents()
    assert badges and len(ids) + sum(int(b.lstrip("+")) for b in badges) == N_PHOTOS
    page.fill("#f-before", "2001-01-01")  # nothing was indexed that long ago
    page.press("#f-before", "Tab")
    page.wait_for_function("() => document.querySelector('#query-info').textContent.includes(': 0 results')")
    assert "before=2001-01-01" in page.url
    page.fill("#f-before", "")
    page.fill("#f-maxw", "95")  # the photos are 96 px wide
    page.press("#f-maxw", "Tab")
    page.wait_for_function("() => document.querySelector('#query-info').textContent.includes(': 0 results')")
    page.fill("#f-maxw", "96")
    page.press("#f-maxw", "Tab")
    wait_for_results(page, [])
    page.fill("#f-minsim", "101")
    page.press("#f-minsim", "Tab")
    page.wait_for_function("() => document.querySelector('#query-info').textContent.includes(': 0 results')")
    assert page.js_errors == []


def cutout(path) -> None:
    """A transparent PNG cut-out: a near-black disc on a fully transparent square (the case a dark backdrop
    hides)."""
    y, x = np.mgrid[0:120, 0:120]
    inside = (x - 60) ** 2 + (y - 60) ** 2 < 40 ** 2
    rgba = np.zeros((120, 120, 4), np.uint8)
    rgba[inside] = (25, 25, 30, 255)
    Image.fromarray(rgba, "RGBA").save(path)


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    """Photos with gist (scene completion) and tiny-gray (colorization)."""
    from nearsight.indexer.ingest import IngestConfig, index_paths

    root = tmp_path_factory.mktemp("webtools")
    photos = root / "photos"
    photos.mkdir()
    for i in range(12):
        make_photo(i, (160, 120)).save(photos / f"p{i:02d}.png")
    cutout(photos / "z_cutout.png")  # sorts last: item 12
    (photos / "z_cutout.txt").write_text("a black disc\n")
    index_paths(str(root / "coll"), [str(photos)],
                IngestConfig(encoders=("tiny", "gist", "tiny-gray"), workers=0, progress=False))
    server = Server(root / "coll")
    yield server, photos
    server.stop()


@screenshot_on_failure
def test_complete_tool_paints_a_hole_and_shows_completions(tools_server, page, tmp_path):
    server, photos = tools_server
    query = tmp_path / "query.jpg"
    make_photo(3, (160, 120)).save(query, quality=90)
    page.goto(server.url + "?tool=complete")
    page.wait_for_selector("#complete-tool:not([hidden])")
    assert page.locator("#browse-view").is_hidden()
    page.set_input_files("#complete-file", str(query))
    page.wait_for_selector("#complete-stage:not([hidden])")
    assert page.locator("#complete-run").is_disabled()  # nothing painted yet
    box = page.locator("#complete-mask").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.4, box["y"] + box["height"] * 0.5)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.5, steps=8)
    page.mouse.up()
    page.fill("#complete-n", "2")
    page.click("#complete-run")
    page.wait_for_function("() => document.querySelectorAll('#complete-results figure').length === 3",
                           timeout=180_000)
    status = page.text_content("#complete-status")
    assert "2 completions" in status and "left out" in status  # photo 3 itself is in the collection
    sources = page.locator("#complete-results figcaption").all_text_contents()[1:]
    assert all("#3" not in s for s in sources)
    size = page.locator("#complete-results img").nth(1).evaluate("i => [i.naturalWidth, i.naturalHeight]")
    assert size == [160, 120]
    assert page.js_errors == []


@screenshot_on_failure
def test_colorize_tool_colours_a_gray_copy_and_shows_its_neighbours(tools_server, page):
    server, _ = tools_server
    page.goto(server.url)
    page.wait_for_selector("#browse .result img")
    page.locator("#browse .result[data-id='4']").click()
    page.wait_for_selector("#detail .more-like")
    page.click("#detail-colorize")
    page.wait_for_selector("#colorize-result figure", timeout=180_000)
    assert "tool=colorize" in page.url
    used = [int(x) for x in page.locator("#colorize-used .result").evaluate_all("els => els.map(e => e.dataset.id)")]
    assert used and used[0] == 4  # the gray copy's own photo gives its colours back
    assert page.locator("#colorize-result img").count() == 2
    assert page.js_errors == []


def group_ids(page) -> list[list[int]]:
    return page.locator("#results .batch-group").evaluate_all(
        "gs => gs.map(g => [...g.querySelectorAll('.result')].map(e => Number(e.dataset.id)))")


def batch_heads(page) -> list[str]:
    return page.locator("#results .batch-head h3").all_text_contents()


def url_params(page) -> dict[str, list[str]]:
    return page.evaluate("() => { const p = new URLSearchParams(location.search), out = {};"
                         " for (const [k, v] of p) (out[k] = out[k] || []).push(v); return out; }")


@screenshot_on_failure
def test_batch_of_images_and_of_ids_grouped_per_query(server, page, tmp_path):
    first, second = tmp_path / "first.jpg", tmp_path / "second.png"
    make_photo(5).resize((150, 110)).save(first, quality=90)
    make_photo(23).save(second)
    page.goto(server.url)
    page.wait_for_function("() => document.querySelector('#encoder').options.length === 3")
    page.select_option("#encoder", "tiny")
    page.set_input_files("#upload", [str(first), str(second)])  # two files chosen at once: one batch call
    page.wait_for_function("() => document.querySelectorAll('#results .batch-group').length === 2")
    assert batch_heads(page) == ["first.jpg", "second.png"]
    page.wait_for_function("() => [...document.querySelectorAll('.batch-head img')]"
                           ".every(i => i.complete && i.naturalWidth > 0)")  # each group headed by its image
    expected = server.post("api/search", {"batch": [{"image": base64.b64encode(p.read_bytes()).decode()}
                                                    for p in (first, second)], "k": 12, "encoder": "tiny"})
    groups = group_ids(page)
    assert groups == [[r["id"] for r in g["results"]] for g in expected["batch"]]
    assert groups[0][0] == 5 and groups[1][0] == 23 and all(len(g) == 12 for g in groups)
    assert url_params(page)["image"] == ["first.jpg", "second.png"] and page.locator("#more").is_hidden()
    assert "2 queries: 24 results" in page.text_content("#query-info")

    # Several ids typed into the search box: one batch, each group headed by the item's caption or file name.
    page.fill("#query", "#3 #11")
    page.press("#query", "Enter")
    page.wait_for_function("() => [...document.querySelectorAll('.batch-head h3')].map(h => h.textContent)"
                           ".join('|') === 'p03.jpg|a sunny beach p11.jpg'")
    by_ids = group_ids(page)
    assert [g[0] for g in by_ids] == [3, 11] and url_params(page)["ids"] == ["3,11"]
    shared = page.context.new_page()  # the link opens the same batch
    shared.goto(page.url)
    shared.wait_for_function("() => document.querySelectorAll('#results .batch-group .result').length === 24")
    assert group_ids(shared) == by_ids
    shared.close()

    # Keyboard: "Just this one" on a group repeats that query alone, paged, headed by its picture and caption.
    page.locator(".batch-group").nth(1).locator(".just-this").focus()
    page.keyboard.press("Enter")
    page.wait_for_function("() => !document.querySelector('#results').classList.contains('batched')"
                           " && document.querySelectorAll('#results .result').length === 30")
    assert url_params(page)["id"] == ["11"] and page.locator("#more").is_visible()
    page.wait_for_function("() => document.querySelector('#query-label').textContent.includes('a sunny beach')")
    assert "p11.jpg" in page.text_content("#query-label") and "#11" not in page.text_content("#query-label")
    page.wait_for_function("() => document.querySelector('#query-image').naturalWidth > 0")
    page.go_back()  # the batch again
    page.wait_for_function("() => document.querySelectorAll('#results .batch-group').length === 2")
    page.go_back()  # the image batch: its files ride in the history state
    page.wait_for_function("() => document.querySelectorAll('.batch-head h3')[0]?.textContent === 'first.jpg'")
    assert group_ids(page) == groups
    assert page.js_errors == []


@screenshot_on_failure
def test_batch_results_fit_a_phone(server, phone):
    phone.goto(server.url + "?ids=3,11,20&encoder=tiny")
    phone.wait_for_function("() => document.querySelectorAll('#results .batch-group .result').length === 36")
    phone.wait_for_timeout(100)  # layout settles after the images
    assert phone.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth"), \
        "the page scrolls sideways on a 360 px screen"
    for head in phone.locator(".batch-head").all():
        box = head.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 360
    columns = phone.evaluate("() => getComputedStyle(document.querySelector('.batch-group .grid'))"
                             ".gridTemplateColumns.split(' ').length")
    assert columns == 2


@screenshot_on_failure
def test_allow_and_deny_lists_in_the_filters_and_the_link(server, page):
    page.goto(server.url + "?id=3&encoder=tiny")
    ids = wait_for_results(page)
    page.click("#filters summary")
    page.fill("#f-only", "3, 9 #12 30")
    page.press("#f-only", "Tab")  # a change re-runs the query
    ids = wait_for_results(page, ids)
    assert sorted(ids) == [3, 9, 12, 30] and ids[0] == 3
    page.fill("#f-never", "9")
    page.press("#f-never", "Tab")
    ids = wait_for_results(page, ids)
    expected = server.post("api/search", {"id": 3, "k": 30, "encoder": "tiny",
                                          "filter": {"ids": [3, 9, 12, 30], "exclude": [9]}})
    assert ids == [r["id"] for r in expected["results"]] and sorted(ids) == [3, 12, 30]
    params = url_params(page)
    assert params["only"] == ["3, 9 #12 30"] and params["never"] == ["9"]
    shared = page.context.new_page()  # the link keeps the lists
    shared.goto(page.url)
    assert wait_for_results(shared) == ids
    assert shared.input_value("#f-never") == "9" and shared.locator("#filters").evaluate("d => d.open")
    shared.close()
    page.fill("#f-never", "9, nine")  # refused on the page, naming the bad entry
    page.press("#f-never", "Tab")
    page.wait_for_selector("#error:not([hidden])")
    assert "nine" in page.text_content("#error") and page.locator("#results .result").count() == 0
    assert page.js_errors == []


@screenshot_on_failure
def test_detail_view_offers_the_encoders_people_pick_first(tools_server, page):
    server, _ = tools_server
    page.goto(server.url + "?item=2")
    page.wait_for_selector("#detail .more-like")
    # gist is the best image encoder here, then tiny; tiny-gray (made for colorization) waits behind a disclosure
    assert page.locator("#detail-more > .more-like").all_text_contents() == [
        "More like this (gist)", "More like this (tiny)"]
    helper = page.locator(".more-encoders .more-like[data-encoder='tiny-gray']")
    assert helper.count() == 1 and helper.is_hidden()
    page.locator(".more-encoders summary").focus()
    page.keyboard.press("Enter")  # the disclosure opens from the keyboard
    helper.wait_for(state="visible")
    helper.focus()
    page.keyboard.press("Enter")
    ids = wait_for_results(page)
    assert ids[0] == 2 and url_params(page)["encoder"] == ["tiny-gray"]
    assert page.js_errors == []


@screenshot_on_failure
def test_transparent_cutouts_show_on_a_light_checkerboard(tools_server, page):
    server, _ = tools_server
    # The stored thumbnail: the transparency flattened on white, the disc kept dark.
    with urllib.request.urlopen(server.url + "api/items/12/thumbnail", timeout=30) as r:
        thumb = np.asarray(Image.open(io.BytesIO(r.read())).convert("L"))
    assert thumb[2, 2] > 245 and thumb[thumb.shape[0] // 2, thumb.shape[1] // 2] < 60
    page.goto(server.url + "?item=12")
    page.wait_for_function("() => document.querySelector('#detail-image').naturalWidth > 0")
    assert page.text_content("#detail-caption") == "a black disc"
    assert "conic-gradient" in page.locator("#detail-image").evaluate("i => getComputedStyle(i).backgroundImage")
    # The large view is the original PNG, alpha and all: its transparent corners must show light, the disc dark.
    shot = np.asarray(Image.open(io.BytesIO(page.locator("#detail-image").screenshot())).convert("L"))
    h, w = shot.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    assert shot[top + side // 2, left + side // 2] < 60
    assert shot[top + 4, left + 4] > 200 and shot[top + side - 5, left + side - 5] > 200
    page.keyboard.press("Escape")
    card = page.locator("#browse .result[data-id='12'] img")
    card.wait_for()
    assert card.evaluate("i => getComputedStyle(i).backgroundColor") == "rgb(255, 255, 255)"
    assert page.js_errors == []


@screenshot_on_failure
def test_dropping_several_images_is_one_batch_and_its_size_is_checked(server, page, tmp_path):
    paths = [tmp_path / f"drop{i}.jpg" for i in (7, 30)]
    for i, path in zip((7, 30), paths):
        make_photo(i).save(path, quality=90)
    page.goto(server.url + "?encoder=tiny")
    page.wait_for_function("() => document.querySelector('#encoder').value === 'tiny'")
    page.evaluate("""(files) => {
        const dt = new DataTransfer();
        for (const [name, bytes] of files) dt.items.add(new File([new Uint8Array(bytes)], name, {type: 'image/jpeg'}));
        window.dispatchEvent(new DragEvent('dragenter', {dataTransfer: dt, bubbles: true}));
        window.dispatchEvent(new DragEvent('drop', {dataTransfer: dt, bubbles: true, cancelable: true}));
    }""", [[p.name, list(p.read_bytes())] for p in paths])
    page.wait_for_function("() => document.querySelectorAll('#results .batch-group .result').length === 24")
    assert batch_heads(page) == ["drop7.jpg", "drop30.jpg"] and [g[0] for g in group_ids(page)] == [7, 30]
    assert page.locator("#drop-overlay").is_hidden()
    # Over the server's upload limit, the page says so with the sizes instead of sending the batch.
    page.evaluate("() => { serverLimits.max_upload_bytes = 1000; }")
    page.set_input_files("#upload", [str(p) for p in paths])
    page.wait_for_selector("#error:not([hidden])")
    assert "choose fewer" in page.text_content("#error") and page.locator("#results .result").count() == 0
    assert page.js_errors == []
