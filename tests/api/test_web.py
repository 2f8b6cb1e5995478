"""The web page in headless Debian chromium (Playwright), at desktop and phone widths: search by
photo, read the prediction, filter, move the visual knob, walk into "more like this" and back,
all by keyboard where a merchandiser would, and see an empty state that says why."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

VIEWPORTS = {"desktop": {"width": 1400, "height": 1000}, "phone": {"width": 390, "height": 844}}
INTERNAL_NAMES = re.compile(r"\b(PATH|LEVEL\d|level\d|attr:)")

pytestmark = pytest.mark.browser


def _search_bodies(requests: list) -> list[bytes]:
    return [r.post_data_buffer or b"" for r in requests if r.url.endswith("/v1/search")]


def _field(body: bytes, name: str) -> str | None:
    """The value of one multipart form field, or None when the request lacks it."""
    match = re.search(rb'name="' + name.encode() + rb'"\r\n\r\n(.*?)\r\n--', body, re.S)
    return match.group(1).decode() if match else None


def _sends(response, name: str) -> bool:
    """Whether a response answers a search request that carried form field `name`."""
    body = response.request.post_data_buffer or b""
    return response.url.endswith("/v1/search") and f'name="{name}"'.encode() in body


def _shoot(page, name: str, tmp_path: Path) -> None:
    page.screenshot(path=str(tmp_path / name), full_page=True)
    if os.environ.get("HUSE_SCREENSHOT_DIR"):
        out = Path(os.environ["HUSE_SCREENSHOT_DIR"])
        out.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(out / name), full_page=True)


@pytest.mark.parametrize("width", list(VIEWPORTS))
def test_merchandiser_flow(width, chromium, live_url, catalog_products, tmp_path):
    from playwright.sync_api import expect

    product = catalog_products[2]
    page = chromium.new_page(viewport=VIEWPORTS[width])
    errors: list[str] = []
    requests: list = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("request", lambda r: requests.append(r))
    page.goto(live_url)
    expect(page.locator("#index-size")).to_contain_text(f"{len(catalog_products)} products")

    # Hidden parts take no room (the old empty 16 px bar), the empty state explains.
    assert page.locator("#source").bounding_box() is None
    expect(page.locator("#empty")).to_contain_text("Choose a photo or type a title")

    # Filters are dropdowns filled from the index.
    categories = {" > ".join(p.category[:d]) for p in catalog_products for d in (1, 2, 3)}
    expect(page.locator("#category option")).to_have_count(len(categories) + 1)
    colours = {p.attributes["colour"] for p in catalog_products}
    expect(page.locator("#filter-colour option")).to_have_count(len(colours) + 1)
    expect(page.locator("#filter-gender")).to_be_attached()

    # Search by photo: latency, live status, results in view (also on a phone).
    page.set_input_files("#image", str(product.image_path))
    expect(page.locator("#preview")).to_be_visible()
    expect(page.locator("#status")).to_have_attribute("aria-live", "polite")
    page.click("#submit")
    cards = page.locator("#grid .card")
    expect(cards).to_have_count(12)
    expect(page.locator("#results-meta")).to_have_text(re.compile(r"^12 results · \d+ ms$"))
    expect(page.locator("#status")).to_have_text(re.compile(r"Found 12 .* in \d+ ms"))
    expect(cards.first).to_be_in_viewport()
    first_image = cards.first.locator("img")
    first_image.evaluate("img => img.decode()")  # raises if the image cannot load
    assert first_image.evaluate("img => img.naturalWidth") > 0

    # The predicted path: human names, headline and levels agree.
    panel = page.locator("#classes-panel")
    expect(panel).to_be_visible()
    assert not INTERNAL_NAMES.search(panel.inner_text())
    names = page.locator("#classes .level .level-name").all_inner_texts()
    assert names[:3] == ["Department", "Category", "Product type"]
    headline = page.locator("#headline").inner_text()
    # no "unsure" part when every level is sure (the model decides which this run shows)
    unsure = "".join(page.locator("#headline .unsure").all_inner_texts())
    answers = page.locator("#classes .level .answer").all_inner_texts()[:3]
    if headline.startswith("Not sure"):
        shown, n_sure = unsure.strip(" ()").removeprefix("closest: ").split(" › "), 0
    else:
        shown = [part.strip(" ?") for part in headline.split("›")]
        n_sure = len(headline.removesuffix(unsure).split("›"))
    assert [a.strip(" ?") for a in answers] == shown
    assert [not a.endswith("?") for a in answers] == [i < n_sure for i in range(3)]
    own_ids = cards.evaluate_all("cs => cs.map(c => c.dataset.id)")
    _shoot(page, f"web_{width}_results.png", tmp_path)

    # Keyboard: Tab reaches a result, its focus ring shows, Enter opens "more like this".
    page.focus("#submit")
    for _ in range(40):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.classList.contains('card')"):
            break
    ring = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert ring == "solid"
    clicked = page.evaluate("document.activeElement.dataset.id")
    page.keyboard.press("Enter")
    expect(page.locator("#results-title")).to_have_text("More like this")
    expect(page.locator("#source")).to_be_visible()
    expect(page.locator("#classes-title")).to_have_text("Chosen product")
    clicked_product = next(p for p in catalog_products if p.id == clicked)
    expect(page.locator("#classes .headline")).to_have_text(" › ".join(clicked_product.category))
    expect(page.locator("#prediction-summary")).to_be_hidden()
    expect(cards.first).to_be_in_viewport()
    ids = cards.evaluate_all("cs => cs.map(c => c.dataset.id)")
    assert len(ids) == 12 and clicked not in ids
    _shoot(page, f"web_{width}_more_like_this.png", tmp_path)

    # The visual knob is sent once moved; an attribute filter is sent as `filters`.
    assert _field(_search_bodies(requests)[-1], "product_id") == clicked
    assert _field(_search_bodies(requests)[-1], "visual_weight") is None
    with page.expect_response(lambda r: _sends(r, "visual_weight")):
        page.locator("#visual-weight").fill("0.8")  # input + change: a new search
    expect(page.locator("#visual-value")).to_have_text("0.80")
    colour = sorted(colours)[0]
    with page.expect_response(lambda r: _sends(r, "filters")) as answer:
        page.select_option("#filter-colour", colour)
    assert answer.value.ok
    last = answer.value.request.post_data_buffer
    assert _field(last, "product_id") == clicked
    assert _field(last, "visual_weight") == "0.8"
    assert _field(last, "filters") == f'{{"colour":"{colour}"}}'
    colour_of = {p.id: p.attributes["colour"] for p in catalog_products}
    filtered = [hit["id"] for hit in answer.value.json()["hits"]]
    assert filtered and {colour_of[i] for i in filtered} == {colour}
    page.wait_for_function(  # the grid shows exactly the filtered answer
        "ids => [...document.querySelectorAll('#grid .card')]"
        ".map(c => c.dataset.id).join() === ids",
        arg=",".join(filtered),
    )
    page.select_option("#filter-colour", "")
    page.click("#visual-reset")
    expect(page.locator("#visual-value")).to_have_text("model default")

    # ... and back to the own search, predictions included.
    page.click("#back")
    expect(page.locator("#results-title")).to_have_text("Similar products")
    expect(page.locator("#classes-title")).to_have_text("Predicted category")
    assert cards.evaluate_all("cs => cs.map(c => c.dataset.id)") == own_ids

    # A category emptied since the page loaded: zero results, and the page says why.
    page.evaluate(
        "() => { const s = document.getElementById('category');"
        " s.add(new Option('Discontinued', 'Discontinued'));"
        " s.value = 'Discontinued'; s.dispatchEvent(new Event('change')); }"
    )
    expect(page.locator("#empty")).to_contain_text("No product matches category “Discontinued”")
    expect(page.locator("#results-meta")).to_have_text(re.compile(r"^0 results · \d+ ms$"))
    _shoot(page, f"web_{width}_empty.png", tmp_path)
    page.click("#empty-clear")
    expect(cards).to_have_count(12)
    expect(page.locator("#empty")).to_be_hidden()
    assert not errors, errors
