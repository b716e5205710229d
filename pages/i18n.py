"""The Studio in English, Chinese and Arabic: one translation table per language, Gradio's ``gr.I18n`` and ours.

Tables: ``pages/locales/ui.<lang>.yaml`` (the pages' own words, written by hand) and
``pages/locales/engine.<lang>.yaml`` (the engine's words: form help from the config
dataclasses, error templates by code, model-card headings). ``engine.en.yaml`` is
written from the code by ``python -m pages.i18n_engine`` and a test keeps it equal.

Two ways a string reaches the page:

* static text (labels, info, tab names, Markdown written at build time) is a
  ``tr(key)`` marker that Gradio translates in the browser, in the browser's
  language or the one picked in the page (``LANGUAGE_JS``);
* text made at run time (reports, the progress line, errors) is translated here,
  ``t(key, lang, **params)``, in the language ``lang_of(request)`` reads from the
  page's language cookie (else the browser's Accept-Language).

A key missing in ``zh`` or ``ar`` falls back to English, in the browser and here.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import gradio as gr
import yaml

LANGS = ("en", "zh", "ar")
LANGUAGE_NAMES = {"en": "English", "zh": "中文", "ar": "العربية"}
RTL_LANGS = ("ar",)
COOKIE = "peft_studio_lang"
LOCALES = Path(__file__).parent / "locales"


def _read(name: str) -> dict[str, str]:
    path = LOCALES / name
    if not path.is_file():
        return {}
    return {str(k): str(v) for k, v in (yaml.safe_load(path.read_text(encoding="utf-8")) or {}).items()}


@cache
def tables() -> dict[str, dict[str, str]]:
    """{lang: {key: text}}: the UI table and the engine table of each language, merged."""
    return {lang: {**_read(f"ui.{lang}.yaml"), **_read(f"engine.{lang}.yaml")} for lang in LANGS}


@cache
def i18n() -> gr.I18n:
    """The ``gr.I18n`` the app launches with (Gradio falls back to ``en`` for a missing key)."""
    return gr.I18n(**tables())


def tr(key: str) -> gr.i18n.I18nData:
    """A marker the browser translates; an unknown key fails here, while the page is built, not in the browser."""
    if key not in tables()["en"]:
        raise KeyError(f"no English text for the UI key {key!r}; add it to pages/locales/ui.en.yaml")
    return i18n()(key)


def t(key: str, lang: str = "en", **params: Any) -> str:
    """The text of ``key`` in ``lang`` (English when the language lacks it), filled from ``params``."""
    table = tables()
    template = table.get(normalize(lang), {}).get(key) or table["en"][key]
    return template.format(**params) if params else template


def english(value: Any) -> str:
    """A component's label as English text, whether it is a plain string or a ``tr`` marker."""
    key = getattr(value, "key", None)
    return t(key) if key is not None else str(value)


def normalize(code: str | None) -> str:
    """A browser language tag ('zh-CN', 'ar-EG', 'en-US') -> one of ``LANGS``; anything else is English."""
    base = (code or "").strip().lower().replace("_", "-").split("-")[0]
    return base if base in LANGS else "en"


def lang_of(request: gr.Request | None) -> str:
    """The language a request's page shows: the language switch's cookie, else the best Accept-Language."""
    if request is None:
        return "en"
    cookies = getattr(request, "cookies", None) or {}
    chosen = cookies.get(COOKIE) if hasattr(cookies, "get") else None
    if chosen in LANGS:
        return chosen
    header = (getattr(request, "headers", None) or {}).get("accept-language", "")
    ranked = []
    for part in header.split(","):
        tag, _, weight = part.strip().partition(";q=")
        try:
            ranked.append((float(weight or 1), tag))
        except ValueError:
            continue
    for _, tag in sorted(ranked, key=lambda item: -item[0]):
        if tag.split("-")[0].lower() in LANGS:
            return normalize(tag)
    return "en"


class PageError(ValueError):
    """A problem a page finds in what the user entered: a UI key and its params; ``str()`` is the English text."""

    def __init__(self, key: str, **params: Any) -> None:
        self.key = key
        self.params = params
        super().__init__(t(key, "en", **params))


def error_key(exc: BaseException) -> str | None:
    """The table key of an error that carries a stable code (``UserError``, ``DataError``, ``PageError``)."""
    if isinstance(exc, PageError):
        return exc.key
    code = getattr(exc, "code", None)
    if code is None or not isinstance(getattr(exc, "params", None), dict):
        return None
    key = f"error.{type(exc).__name__}.{code}"
    return key if key in tables()["en"] else None


def message(exc: BaseException, lang: str = "en") -> str:
    """An error in ``lang`` when it has a code the tables know, else its English message; advice as a list."""
    key = error_key(exc)
    if key is not None:
        try:
            text = _fill(key, lang, exc.params)  # type: ignore[attr-defined]
        except (KeyError, IndexError, ValueError):  # a translation naming a param the error lacks
            text = str(exc)
    else:
        text = str(exc).strip() or type(exc).__name__
    advice = getattr(exc, "advice", None)
    if advice:
        text += "\n" + "\n".join(f"- {line}" for line in advice)
    return text


def say(text: Any, lang: str = "en") -> str:
    """Engine text in ``lang``: a ``Phrase`` (or its ``to_dict()`` from a log) by its key and params, translated
    all the way down (a list param is joined with "; "); anything else, or a key the tables lack, as written."""
    if isinstance(text, list):
        return "; ".join(say(item, lang) for item in text)
    key, params = getattr(text, "key", None), getattr(text, "params", None)
    if isinstance(text, dict) and "key" in text:
        key, params = text["key"], text.get("params") or {}
    if not isinstance(key, str) or not isinstance(params, dict) or key not in tables()["en"]:
        return text if isinstance(text, str) else str(text)
    try:
        return _fill(key, lang, params)
    except (KeyError, IndexError, ValueError):  # a translation naming a param the text lacks
        return str(text)


def _fill(key: str, lang: str, params: dict[str, Any]) -> str:
    """``t`` for engine params, which may be phrases themselves or be called ``key`` or ``lang``."""
    table = tables()
    template = table.get(normalize(lang), {}).get(key) or table["en"][key]
    return template.format(**{name: say(value, lang) for name, value in params.items()})


_LTR_RUN = re.compile(r"(`[^`\n]+`)")


def ltr(text: str, lang: str) -> str:
    """In a right-to-left language, keep inline code (model ids, paths, numbers in backticks) left-to-right."""
    if lang not in RTL_LANGS:
        return text
    return _LTR_RUN.sub(r'<bdi dir="ltr">\1</bdi>', text)


def language_choices() -> list[tuple[str, str]]:
    return [(LANGUAGE_NAMES[lang], lang) for lang in LANGS]


# Runs once the page is up: defines the language switch (it remembers the choice in a cookie, which the
# server reads for text made at run time, and switches Gradio's own locale with the call its Settings >
# Language panel makes); makes the <html> element's direction follow the locale (Gradio sets only `lang`);
# applies a language chosen earlier. Returns the page's language, for the switch to show.
LOAD_JS = """
async () => {
  const langs = %(langs)s, rtl = %(rtl)s, cookie = "%(cookie)s";
  const base = (tag) => { const b = (tag || "en").toLowerCase().split("-")[0]; return langs.includes(b) ? b : "en"; };
  const html = document.documentElement;
  const direction = () => { html.dir = rtl.includes(base(html.lang)) ? "rtl" : "ltr"; };
  window.peftStudioSetLanguage = async (lang) => {
    document.cookie = cookie + "=" + lang + "; path=/; max-age=31536000; SameSite=Lax";
    const core = performance.getEntriesByType("resource").map((e) => e.name).find((n) => /\\/core-[^/]*\\.js$/.test(n));
    if (core) { (await import(core)).changeLocale(lang === "zh" ? "zh-CN" : lang); }
    html.dir = rtl.includes(lang) ? "rtl" : "ltr";
    return lang;
  };
  new MutationObserver(direction).observe(html, {attributes: true, attributeFilter: ["lang"]});
  direction();
  const saved = (document.cookie.match(new RegExp("(?:^|; )" + cookie + "=([a-z]+)")) || [])[1];
  if (saved && langs.includes(saved) && saved !== base(html.lang)) { await window.peftStudioSetLanguage(saved); }
  return saved && langs.includes(saved) ? saved : base(html.lang || navigator.language);
}
"""
SWITCH_JS = "(lang) => window.peftStudioSetLanguage(lang)"


def load_js() -> str:
    """``LOAD_JS`` with this module's languages and cookie name filled in."""
    return LOAD_JS % {"langs": list(LANGS), "rtl": list(RTL_LANGS), "cookie": COOKIE}
