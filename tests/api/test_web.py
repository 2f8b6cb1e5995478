"""The web page in headless Debian chromium (Playwright): upload a photo, see results, click one."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not CHROMIUM.exists(), reason="Debian chromium not installed"),
]


def test_upload_photo_see_results_click_for_more(live_url, catalog_products, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    product = catalog_products[2]
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(live_url)
            expect(page.locator("#index-size")).to_contain_text(f"{len(catalog_products)} products")

            page.set_input_files("#image", str(product.image_path))
            expect(page.locator("#preview")).to_be_visible()
            page.click("#submit")

            levels = page.locator("#classes .level")
            expect(levels.first).to_be_visible()
            assert levels.count() >= 1
            cards = page.locator("#grid .card")
            expect(cards.first).to_be_visible()
            assert cards.count() == 12
            first_image = cards.first.locator("img")
            first_id = cards.first.get_attribute("data-id")
            expect(first_image).to_have_attribute("src", f"/v1/products/{first_id}/image")
            first_image.evaluate("img => img.decode()")  # raises if the image cannot load
            assert first_image.evaluate("img => img.naturalWidth") > 0
            page.screenshot(path=str(tmp_path / "results.png"), full_page=True)

            clicked = cards.nth(1).get_attribute("data-id")
            cards.nth(1).click()
            expect(page.locator("#results-title")).to_have_text("More like this")
            expect(page.locator("#source")).to_be_visible()
            ids = page.locator("#grid .card").evaluate_all("cs => cs.map(c => c.dataset.id)")
            assert len(ids) == 12 and clicked not in ids
            if os.environ.get("HUSE_SCREENSHOT_DIR"):
                out = Path(os.environ["HUSE_SCREENSHOT_DIR"])
                out.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out / "web_more_like_this.png"), full_page=True)
            assert not errors, errors
        finally:
            browser.close()
