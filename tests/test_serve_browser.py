"""The ``openhart serve`` page in headless Chromium: type a prompt, click Generate, see the images.

Drives Debian's ``chromium`` through Playwright (``executable_path``; no downloaded browser) against
a real server process. The screenshot is kept as a test artifact in pytest's tmp dir (its path is
logged); set ``OPENHART_UI_SCREENSHOT=path.png`` to also copy it there (how
docs/images/serve-ui.png is made). Skips with a message when chromium or Playwright is missing.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pytest

from tests.test_serve import ServerProcess

logger = logging.getLogger(__name__)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]

if CHROMIUM is None:
    pytest.skip(
        "Debian's chromium is not installed (apt-get install -y chromium): browser test skipped",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed: browser test skipped"
)


def test_page_generates_images_in_headless_chromium(tmp_path):
    server = ServerProcess(
        ["--model", "tiny", "--random-weights", "--log-level", "warning"], tmp_path / "server.log"
    )
    try:
        with sync_api.sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 680})
            problems: list[str] = []
            page.on("pageerror", lambda error: problems.append(f"page error: {error}"))
            page.on("console", lambda m: problems.append(f"console: {m.text}") if m.type == "error" else None)
            expect = sync_api.expect

            page.goto(f"{server.url}/")
            expect(page.locator("#model")).to_contain_text("tiny · 32×32 px · 6 scales · random weights")
            expect(page.locator("#num_images option")).to_have_count(4)  # from the model card's limits

            # An empty prompt is caught in the page, before any request.
            page.click("#generate")
            expect(page.locator("#status")).to_have_text("prompt: type something to draw")

            page.fill("#prompt", "a red fox in the snow")
            page.fill("#negative_prompt", "blurry")
            page.uncheck("#random_seed")
            page.fill("#seed", "42")
            page.locator("#guidance_scale").fill("3")  # a range input takes fill() in Playwright
            page.locator("#steps").fill("12")
            page.select_option("#num_images", "2")
            with page.expect_request("**/api/generate") as sent:
                page.click("#generate")
            # Every control reached the request.
            assert sent.value.post_data_json == {
                "prompt": "a red fox in the snow",
                "negative_prompt": "blurry",
                "seed": 42,
                "guidance_scale": 3,
                "steps": 12,
                "num_images": 2,
                "format": "base64",
            }
            images = page.locator("#gallery img")
            expect(images).to_have_count(2, timeout=30_000)
            expect(page.locator("#status")).to_contain_text("done in")
            expect(page.locator("figcaption .seed")).to_have_text(["seed 42", "seed 43"])
            for i in range(2):  # decoded by the browser at the model's size
                assert images.nth(i).evaluate("img => img.complete && img.naturalWidth") == 32
            expect(page.locator("#used")).to_contain_text("seed 42, guidance 3, steps 12")

            screenshot = tmp_path / "serve-ui.png"
            page.screenshot(path=str(screenshot))
            logger.warning("browser test screenshot: %s", screenshot)
            if os.environ.get("OPENHART_UI_SCREENSHOT"):
                shutil.copyfile(screenshot, Path(os.environ["OPENHART_UI_SCREENSHOT"]))

            # "use seed" on image 1 puts its seed back in the form; random seeds get reported too.
            page.locator("figcaption button").nth(1).click()
            expect(page.locator("#seed")).to_have_value("43")
            page.check("#random_seed")
            page.select_option("#num_images", "1")
            with page.expect_response("**/api/generate") as answer:
                page.click("#generate")
            assert answer.value.request.post_data_json["seed"] is None
            seed = answer.value.json()["parameters"]["seed"]
            expect(page.locator("figcaption .seed")).to_have_text([f"seed {seed}"])

            # A server-side refusal is shown, not swallowed (the page's own maxlength removed first).
            page.evaluate("document.getElementById('prompt').removeAttribute('maxlength')")
            page.fill("#prompt", "y" * 1001)
            page.click("#generate")
            expect(page.locator("#status")).to_contain_text("422: prompt: String should have at most 1000")
            browser.close()
        assert screenshot.stat().st_size > 5_000
        # The only console error allowed is Chromium reporting the deliberate 422.
        unexpected = [problem for problem in problems if "status of 422" not in problem]
        assert not unexpected, unexpected
    finally:
        assert server.stop() == 0
