"""The page's views in Chromium: the browse grid on arrival, state in the address bar (Back, Forward, shared
links), the detail view, filters, and the two image tools (complete, colorize). Helpers and the served
collection come from test_web; a failing test leaves a screenshot in tests/artifacts/."""
from __future__ import annotations

import pytest
from conftest import make_photo
from test_web import (CHROMIUM, N_PHOTOS, Server, _build, browser, page, screenshot_on_failure,  # noqa: F401
                      server, wait_for_results)

import os

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
    page.wait_for_function(f"() => document.querySelector('#query-label').textContent.includes('#{text_ids[1]}')")

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
    assert "item=" not in page.url
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


@pytest.fixture(scope="module")
def tools_server(tmp_path_factory):
    """Photos with gist (scene completion) and tiny-gray (colorization)."""
    from nearsight.indexer.ingest import IngestConfig, index_paths

    root = tmp_path_factory.mktemp("webtools")
    photos = root / "photos"
    photos.mkdir()
    for i in range(12):
        make_photo(i, (160, 120)).save(photos / f"p{i:02d}.png")
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
