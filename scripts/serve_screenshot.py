"""The README's screenshot of ``openhart serve``, made with a real model (default: the embedded one).

    python scripts/serve_screenshot.py --out docs/images/serve-ui.png [--model DIR] [--prompt TEXT]

Starts ``openhart serve`` on 127.0.0.1, drives Debian's chromium through Playwright (no downloaded
browser): types the prompt, asks for 4 images with a fixed seed, waits for them, and saves the
page. Needs ``pip install -e ".[web,test]"`` and ``apt-get install chromium``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_healthy(url: str, process: subprocess.Popen, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the server did not answer /health within {timeout_s:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", default=None, help="model folder or name (default: the embedded model)")
    parser.add_argument("--prompt", default="a red apple")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise SystemExit("Debian's chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "openhart.serve.cli", "--port", str(port), "--log-level", "warning"]
    if args.model:
        command += ["--model", args.model]
    server = subprocess.Popen(command, cwd=ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    try:
        wait_until_healthy(url, server)
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1000, "height": 680})
            page.goto(f"{url}/")
            page.fill("#prompt", args.prompt)
            page.uncheck("#random_seed")
            page.fill("#seed", str(args.seed))
            page.select_option("#num_images", "4")
            page.click("#generate")
            expect(page.locator("#gallery img")).to_have_count(4, timeout=120_000)
            expect(page.locator("#status")).to_contain_text("done in", timeout=120_000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out))
            browser.close()
        print(f"wrote {args.out}")
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
