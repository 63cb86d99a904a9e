"""The page's Edit mode in headless Chromium: upload an image, paint a mask, submit, see the edit.

Drives Debian's ``chromium`` through Playwright against a real server process, as
tests/test_serve_browser.py does. Skips with a message when chromium or Playwright is missing.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.test_serve import ServerProcess
from tests.test_serve_browser import CHROMIUM, CHROMIUM_ARGS

logger = logging.getLogger(__name__)

sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: browser test skipped"
)
if CHROMIUM is None:  # pragma: no cover (test_serve_browser skips the module first)
    pytest.skip("Debian's chromium is not installed: browser test skipped", allow_module_level=True)


def _data_url_image(url: str) -> np.ndarray:
    header, _, data = url.partition(",")
    assert header == "data:image/png;base64", header
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))


def test_edit_mode_paints_a_mask_and_shows_the_result(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)  # H 40, W 48
    picture = tmp_path / "photo.png"
    Image.fromarray(pixels).save(picture)
    server = ServerProcess(
        ["--model", "tiny", "--random-weights", "--log-level", "warning"], tmp_path / "server.log"
    )
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 720})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            expect = sync_api.expect

            page.goto(f"{server.url}/")
            expect(page.locator("#model")).to_contain_text("tiny")
            page.click("#mode_edit")
            expect(page.locator("#generate")).to_have_text("Edit")
            page.fill("#prompt", "a red hat")
            page.click("#generate")  # no image yet: caught in the page
            expect(page.locator("#status")).to_have_text("image: choose an image to edit")

            page.set_input_files("#edit_image", str(picture))
            expect(page.locator("#status")).to_contain_text("image 48×40")
            # Paint a horizontal stroke across the middle of the image with a 16 px brush.
            page.locator("#brush_size").fill("16")
            box = page.locator("#mask_overlay").bounding_box()
            assert box is not None and box["width"] > 100
            y = box["y"] + box["height"] / 2
            page.mouse.move(box["x"] + box["width"] * 0.3, y)
            page.mouse.down()
            for step in range(1, 11):
                page.mouse.move(box["x"] + box["width"] * (0.3 + 0.04 * step), y)
            page.mouse.up()

            page.uncheck("#random_seed")
            page.fill("#seed", "5")
            with page.expect_request("**/api/edit") as sent:
                page.click("#generate")
            body = sent.value.post_data_json
            assert body["prompt"] == "a red hat" and body["seed"] == 5 and body["strength"] == 1
            assert np.array_equal(_data_url_image(body["image"]), pixels)  # the file itself was sent
            mask = _data_url_image(body["mask"])
            assert mask.shape[:2] == (40, 48)
            white = mask[..., 0] > 127
            assert white[20, 16:32].all()  # the stroke, in image pixels
            assert not white[:8].any() and not white[-8:].any()  # nowhere near it

            images = page.locator("#gallery img")
            expect(images).to_have_count(2, timeout=30_000)  # the original and the edit
            expect(page.locator("#status")).to_contain_text("done in")
            expect(page.locator("figure.original figcaption")).to_have_text("original")
            expect(page.locator("figcaption .seed")).to_have_text(["seed 5"])
            assert images.nth(1).evaluate("img => img.complete && img.naturalWidth") == 48
            assert images.nth(1).evaluate("img => img.naturalHeight") == 40

            screenshot = tmp_path / "serve-edit-ui.png"
            page.screenshot(path=str(screenshot), full_page=True)
            logger.warning("browser test screenshot: %s", screenshot)
            if os.environ.get("OPENHART_EDIT_UI_SCREENSHOT"):
                shutil.copyfile(screenshot, Path(os.environ["OPENHART_EDIT_UI_SCREENSHOT"]))
            browser.close()
        assert not problems, problems
    finally:
        assert server.stop() == 0
