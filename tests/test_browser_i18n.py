"""The page in English, Chinese and Arabic (headless Chromium, one server): no raw key leaks, Arabic is right-to-left.

Screenshots go to ``test-output/browser/page-{en,zh,ar}.png``.
"""

from __future__ import annotations

import os
import re

from test_browser import ARGS, CHROMIUM, SHOTS, server  # noqa: F401 (server is the fixture used below)

from pages.i18n import tables

LOCALES = {"en": "en-US", "zh": "zh-CN", "ar": "ar"}
KEY = re.compile(r"\b(?:help|error|card|tab|task|train|report|monitor|test|publish|db|plot|progress|state|log|app|form)"
                 r"\.[A-Za-z_]+(?:\.[A-Za-z_]+)?\b")

# Where each dropdown's text may run (its box less its end padding) and where its arrow starts, on the LLM tab.
DROPDOWN_TEXT_AND_ARROW = """() => {
  const boxes = [...document.querySelectorAll('#tab-llm .wrap-inner .secondary-wrap input')].map(input => {
    const arrow = input.closest('.wrap-inner').querySelector('.icon-wrap');
    if (!arrow) return null;
    const text = input.getBoundingClientRect(), style = getComputedStyle(input);
    return {value: input.value, text_right: text.right - parseFloat(style.paddingRight),
            arrow_left: arrow.getBoundingClientRect().left};
  }).filter(Boolean);
  if (!boxes.length) throw new Error('no dropdown with an arrow found on the LLM tab');
  return boxes;
}"""


# Labels (the settings' config keys) that run past the box they sit in, on the LLM tab; they would be cut.
LABELS_PAST_THEIR_BOX = """() => [...document.querySelectorAll(
    '#tab-llm [data-testid="block-info"], #tab-llm .checkbox-container .label-text')].map(label => {
  const text = label.getBoundingClientRect(), box = label.closest('div.block').getBoundingClientRect();
  return {text: label.textContent.trim(), left: text.left, right: text.right, box_left: box.left, box_right: box.right};
}).filter(l => l.right > l.box_right + 1 || l.left < l.box_left - 1)"""


def test_each_language_renders_without_raw_keys(server):  # noqa: F811 (the fixture imported above)
    from playwright.sync_api import expect, sync_playwright

    assert os.path.exists(CHROMIUM), "install Debian's chromium (apt-get install chromium)"
    url, _, _ = server
    keys = set(tables()["en"])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        for lang, locale in LOCALES.items():
            context = browser.new_context(locale=locale, viewport={"width": 1400, "height": 1000})
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(url)
            llm = tables()[lang]["tab.llm"]
            expect(page.get_by_role("tab", name=llm)).to_be_visible(timeout=90_000)
            tab = page.locator("#tab-llm")
            tab.get_by_text(tables()[lang]["train.hyperparameters"]).first.click()
            # the method form and its buttons are drawn by gr.render after the page: wait for them, not for a time
            expect(tab.get_by_role("button", name=tables()[lang]["train.start"])).to_be_visible(timeout=90_000)
            tab.get_by_text(tables()[lang]["train.method_settings"]).first.click()
            text = page.inner_text("body")
            leaked = sorted({m for m in KEY.findall(text) if m in keys})
            assert "__i18n__" not in text, f"{lang}: a translation marker reached the page as text"
            assert not leaked, f"{lang}: untranslated keys on the page: {leaked}"
            for name in ("tab.vision", "tab.test", "tab.publish", "train.start", "monitor.no_run"):
                assert tables()[lang][name].split("\n")[0] in text, (lang, name)
            assert tables()[lang]["help.TrainingSettings.learning_rate"] in text  # help from the config, translated
            for box in page.evaluate(DROPDOWN_TEXT_AND_ARROW):  # a long choice (the task names) is cut, not overlapped
                assert box["text_right"] <= box["arrow_left"] + 1, (lang, box)
            assert page.evaluate(LABELS_PAST_THEIR_BOX) == [], lang  # a long config key wraps, it is not cut
            direction = page.evaluate("getComputedStyle(document.body).direction")
            assert direction == ("rtl" if lang == "ar" else "ltr"), (lang, direction)
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / f"page-{lang}.png"), full_page=True)
            if lang == "en":  # the switch in the page changes the language at once, and the server follows it
                page.locator("#language input").click()
                page.get_by_role("option", name="العربية").click()
                expect(page.get_by_role("tab", name=tables()["ar"]["tab.llm"])).to_be_visible()
                assert page.evaluate("document.documentElement.dir") == "rtl"
                assert "peft_studio_lang=ar" in page.evaluate("document.cookie")
            context.close()
        browser.close()
