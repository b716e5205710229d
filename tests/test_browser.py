"""End to end in headless Chromium: upload data, train, watch the loss plot grow, stop, test, publish.

The app runs as a real server (``python app.py``) on a free port; the Hub is a
local stand-in. Screenshots of every tab go to ``test-output/browser/``.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from hub_standin import HubStandIn
from tiny_runs import SAMPLES

ROOT = Path(__file__).resolve().parent.parent
SHOTS = ROOT / "test-output" / "browser"
CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def server(tmp_path, model_dirs):
    hub = HubStandIn().__enter__()
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_ENDPOINT": hub.url, "HF_HUB_OFFLINE": "0",
           "GRADIO_ANALYTICS_ENABLED": "False"}
    log = open(tmp_path / "app.log", "w")  # noqa: SIM115 (closed below)
    process = subprocess.Popen([sys.executable, "app.py", "--port", str(port), "--runs", str(tmp_path / "runs")],
                               cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2)
            break
        except OSError:
            if process.poll() is not None:
                raise RuntimeError((tmp_path / "app.log").read_text()) from None
            time.sleep(0.5)
    yield url, hub, model_dirs
    process.terminate()
    process.wait(timeout=30)
    log.close()
    hub.__exit__(None, None, None)


def in_tab(page, tab: str):
    return page.locator(f"#tab-{tab}")


def shot(page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def pick(page, scope, label: str, text: str) -> None:
    """Choose an option of a Gradio dropdown (or type a value it allows)."""
    box = scope.get_by_label(label, exact=True).first
    box.click()
    box.fill(text)
    option = page.get_by_role("option").filter(has_text=text).first
    if option.count():
        option.click()
    else:
        box.press("Enter")


def test_train_watch_stop_test_publish(server, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    assert os.path.exists(CHROMIUM), "install Debian's chromium (apt-get install chromium): the README's test command does"

    url, hub, model_dirs = server
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.set_default_timeout(60_000)
        expect.set_options(timeout=90_000)
        page.goto(url)
        expect(page.get_by_role("tab", name="LLM")).to_be_visible()
        shot(page, "1-llm")

        # LLM tab: a tiny model folder, a data file, a long run
        llm = in_tab(page, "llm")
        pick(page, llm, "Model", model_dirs["llama"])
        time.sleep(3)  # the form takes the suggested settings for the model's size first
        llm.locator("input[type=file]").first.set_input_files(str(SAMPLES / "alpaca.jsonl"))
        llm.get_by_text("Hyperparameters").first.click()
        for label, value in (("max_steps", "300"), ("batch_size", "1"), ("eval_steps", "")):
            llm.get_by_label(label, exact=True).first.fill(value)
        llm.get_by_role("button", name="Check data and memory").click()
        try:
            expect(llm.get_by_text("trainable params").first).to_be_visible()
        finally:
            shot(page, "1b-llm-checked")
        llm.get_by_role("button", name="Start training").click()
        steps = llm.get_by_text(re.compile(r"step \d+ / 300"))
        expect(steps).to_be_visible()

        # the loss plot gains points: its picture changes as steps arrive
        plot = page.locator("#llm-loss-plot")
        first_step = int(re.search(r"step (\d+) /", steps.inner_text()).group(1))
        before = plot.screenshot()
        deadline = time.time() + 60
        while int(re.search(r"step (\d+) /", steps.inner_text()).group(1)) < first_step + 3 and time.time() < deadline:
            time.sleep(0.5)
        time.sleep(1.5)  # a timer tick to draw them
        assert plot.screenshot() != before, "the loss plot did not change while the run went on"
        shot(page, "2-llm-running")

        llm.get_by_role("button", name="Stop").click()
        expect(llm.get_by_text("stopped").first).to_be_visible()
        shot(page, "3-llm-stopped")

        for tab in ("Vision", "DreamBooth"):
            page.get_by_role("tab", name=tab).click()
            shot(page, f"4-{tab.lower()}")

        # Test: the adapter answers next to the base model
        page.get_by_role("tab", name="Test").click()
        test = in_tab(page, "test")
        test.get_by_role("button", name="Refresh").click()
        pick(page, test, "One of your runs", "causal_lm")
        test.get_by_role("button", name="Load adapter").click()
        expect(test.get_by_text("Loaded").first).to_be_visible()
        test.get_by_label("Input (prompt or text)").fill("Give me a word.")
        test.get_by_role("button", name="Compare").click()
        expect(test.get_by_label("With the adapter")).not_to_have_value("")
        shot(page, "5-test")

        # Publish to the local Hub stand-in
        page.get_by_role("tab", name="Publish").click()
        publish = in_tab(page, "publish")
        publish.get_by_role("button", name="Refresh").click()
        pick(page, publish, "Run", "causal_lm")
        publish.get_by_label("Repository id").fill("someone/tiny-adapter")
        publish.get_by_label("Hub token (write)").fill("hf_test_token_123")
        publish.get_by_role("button", name="Push to the Hub").click()
        expect(publish.get_by_text("Pushed").first).to_be_visible()
        shot(page, "6-publish")
        browser.close()

    files = hub.files("someone/tiny-adapter")
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert all(b"hf_test_token_123" not in content for content in files.values())
