"""PEFT Studio: the Gradio app. Builds the Blocks from pages/ and launches.

Locally it is single-user (every run is yours). On a Hugging Face Space (or with
``--shared``) each browser is its own user: it sees and stops only its own runs,
and GPU jobs wait their turn in one queue.
"""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

# Gradio recomputes a pandas summary of its last 10,000 events after every event; with every open
# page polling once a second that grew to most of a poll's cost. Summarise every 1,000 events instead.
os.environ.setdefault("GRADIO_ANALYTICS_CACHE_FREQUENCY", "1000")
os.environ.setdefault("GRADIO_ANALYTICS_MAX_EVENTS", "2000")

import gradio as gr  # (reads the settings above when imported)

from pages import api, common, dreambooth, i18n, publish_tab, test_tab, training
from peft_core.presets import DEFAULT_LLM, resolve_model

CSS = Path(__file__).parent / "assets" / "studio.css"
TEXT_FILES = [".csv", ".tsv", ".json", ".jsonl", ".parquet", ".txt"]


def build_app() -> gr.Blocks:
    with gr.Blocks(title="PEFT Studio") as demo:
        with gr.Row(equal_height=True):
            gr.Markdown(i18n.tr("app.title"))
            language = gr.Dropdown(choices=i18n.language_choices(), value="en", label=i18n.tr("app.language"),
                                   elem_id="language", scale=0, min_width=160, interactive=True)
        # the page's language: Gradio's locale (the browser's, or the one chosen here, kept in a cookie)
        demo.load(None, None, language, js=i18n.load_js(), api_name=False)
        language.input(None, language, None, js=i18n.SWITCH_JS, api_name=False)
        owner = gr.BrowserState(None, storage_key="peft-studio-owner")  # survives page reloads

        def ensure_owner(token):
            return token or common.new_token()

        demo.load(ensure_owner, owner, owner, api_name=False)
        training.build("llm", ["causal_lm", "seq2seq", "seq_cls", "token_cls"], DEFAULT_LLM, owner, TEXT_FILES)
        training.build("vision", ["image_cls"], "tiny-vit-random", owner, [".zip", ".csv", ".jsonl"])
        dreambooth.build(owner)
        test_tab.build(owner)
        publish_tab.build(owner)
        api.build()
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Start the PEFT Studio web app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    parser.add_argument("--runs", default=os.environ.get("PEFT_STUDIO_RUNS", "runs"), help="where runs are kept")
    parser.add_argument("--shared", action="store_true", default=bool(os.environ.get("SPACE_ID")),
                        help="several users: each sees only their own runs (the default on a Space)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    common.configure(args.runs, single_user=not args.shared)
    # Prepare the offline default model while the page loads (once; ~20 s the first time).
    threading.Thread(target=resolve_model, args=(DEFAULT_LLM,), daemon=True).start()
    build_app().queue(default_concurrency_limit=4).launch(server_name=args.host, server_port=args.port,
                                                           css_paths=[CSS], i18n=i18n.i18n(),
                                                           max_file_size=common.settings().max_upload_bytes)


if __name__ == "__main__":
    main()
