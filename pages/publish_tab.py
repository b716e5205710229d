"""The Publish tab: push a run's adapter to the Hub with a model card, download it as a ZIP, or merge it.

The token is a password field passed straight to the upload; it is never
stored, logged or shown again.
"""

from __future__ import annotations

import tempfile
import zipfile
from pathlib import Path

import gradio as gr

from pages import common
from pages.i18n import PageError, lang_of, language_choices, t, tr
from pages.i18n_engine import card_headings
from pages.test_tab import finished_runs
from peft_core import publish


def zip_folder(folder: Path) -> Path:
    """The merged model as one download (stored, not compressed: weights do not shrink, and it stays fast)."""
    archive = folder.with_name(folder.name + ".zip")
    with zipfile.ZipFile(archive, "x", compression=zipfile.ZIP_STORED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    return archive


def own_finished_run(owner_token: str, run_dir: str | None) -> str:
    """``run_dir`` if it is one of the caller's finished runs (a crafted request may name any folder)."""
    if not run_dir:
        raise PageError("error.choose_finished_run")
    allowed = {path for _, path in finished_runs(common.owner_of(owner_token))}
    if run_dir not in allowed:
        raise PageError("error.not_your_run")
    return run_dir


def build(owner_state: gr.State) -> None:
    with gr.Tab(tr("tab.publish"), elem_id="tab-publish"):
        gr.Markdown(tr("publish.intro"))
        with gr.Row():
            run = gr.Dropdown(label=tr("publish.run"), choices=[], scale=4)
            refresh = gr.Button(tr("test.refresh"), size="sm", scale=1)
        with gr.Row():
            repo = gr.Textbox(label=tr("publish.repo"), placeholder="your-name/my-adapter")
            token = gr.Textbox(label=tr("publish.token"), type="password", info=tr("publish.token_info"))
            private = gr.Checkbox(label=tr("publish.private"), value=True)
            # English cards by default: a Hub card is read by everyone; the headings can be in the Studio's languages
            card_lang = gr.Dropdown(choices=language_choices(), value="en", label=tr("publish.card_lang"),
                                    info=tr("publish.card_lang_info"), interactive=True)
        with gr.Row():
            push = gr.Button(tr("publish.push"), variant="primary")
            zip_button = gr.Button(tr("publish.zip"))
            merge = gr.Button(tr("publish.merge"))
        result = gr.Markdown()
        download = gr.File(label=tr("publish.download"), interactive=False)

        refresh.click(lambda t: gr.Dropdown(choices=finished_runs(common.owner_of(t))), owner_state, run,
                      api_name=False)

        def do_push(owner_token, run_dir, repo_id, hub_token, private_, card_lang_="en", request: gr.Request = None):
            lang = lang_of(request)
            try:
                url = publish.push_run(own_finished_run(owner_token, run_dir), (repo_id or "").strip(), hub_token or None,
                                       private=bool(private_), headings=card_headings(card_lang_ or "en"))
            except (ValueError, OSError) as exc:
                raise gr.Error(common.message(exc, lang)) from None
            return t("publish.pushed", lang, url=url)

        def do_zip(owner_token, run_dir, card_lang_="en", request: gr.Request = None):
            lang = lang_of(request)
            try:
                path = publish.zip_adapter(own_finished_run(owner_token, run_dir), tempfile.mkdtemp(prefix="peft-studio-zip-"),
                                           headings=card_headings(card_lang_ or "en"))
            except (ValueError, OSError) as exc:
                raise gr.Error(common.message(exc, lang)) from None
            return t("publish.zip_ready", lang, name=path.name), str(path)

        def do_merge(owner_token, run_dir, request: gr.Request = None):
            lang = lang_of(request)
            try:
                folder = publish.merge_run(own_finished_run(owner_token, run_dir), tempfile.mkdtemp(prefix="peft-studio-merged-"))
                archive = zip_folder(folder)
            except (ValueError, OSError) as exc:
                raise gr.Error(common.message(exc, lang)) from None
            return t("publish.merged", lang, name=archive.name), str(archive)

        push.click(do_push, [owner_state, run, repo, token, private, card_lang], result, api_name="publish")
        zip_button.click(do_zip, [owner_state, run, card_lang], [result, download], api_name="download_zip")
        merge.click(do_merge, [owner_state, run], [result, download], api_name="merge")
