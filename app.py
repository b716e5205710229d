"""PEFT Studio: the Gradio app. Builds the Blocks from pages/ and launches."""

from __future__ import annotations

import argparse
import logging
import os
import threading
from pathlib import Path

import gradio as gr

from pages import planner
from peft_core.presets import DEFAULT_LLM, resolve_model

CSS = Path(__file__).parent / "assets" / "studio.css"


def build_app() -> gr.Blocks:
    with gr.Blocks(title="PEFT Studio") as demo:
        gr.Markdown("# PEFT Studio\nParameter-efficient fine-tuning of LLMs, ViT and Stable Diffusion.")
        planner.build()
    return demo


def main() -> None:
    parser = argparse.ArgumentParser(description="Start the PEFT Studio web app.")
    parser.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    parser.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", "7860")))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Prepare the offline default model while the page loads (once; ~20 s the first time).
    threading.Thread(target=resolve_model, args=(DEFAULT_LLM,), daemon=True).start()
    build_app().launch(server_name=args.host, server_port=args.port, css_paths=[CSS])


if __name__ == "__main__":
    main()
