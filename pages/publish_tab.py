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


def build(owner_state: gr.State) -> None:
    with gr.Tab("Publish", elem_id="tab-publish"):
        gr.Markdown("Share a finished run: its adapter, a model card with the loss curve and samples, "
                    "and the config that made it.")
        with gr.Row():
            run = gr.Dropdown(label="Run", choices=[], scale=4)
            refresh = gr.Button("Refresh", size="sm", scale=1)
        with gr.Row():
            repo = gr.Textbox(label="Repository id", placeholder="your-name/my-adapter")
            token = gr.Textbox(label="Hub token (write)", type="password",
                               info="Used for this upload only; never stored or logged.")
            private = gr.Checkbox(label="Private", value=True)
        with gr.Row():
            push = gr.Button("Push to the Hub", variant="primary")
            zip_button = gr.Button("Download adapter (ZIP)")
            merge = gr.Button("Merge into the base model")
        result = gr.Markdown()
        download = gr.File(label="Download", interactive=False)

        refresh.click(lambda t: gr.Dropdown(choices=finished_runs(common.owner_of(t))), owner_state, run,
                      api_name=False)

        def mine(owner_token: str, run_dir: str | None) -> str:
            if not run_dir:
                raise ValueError("choose one of your finished runs")
            allowed = {path for _, path in finished_runs(common.owner_of(owner_token))}
            if run_dir not in allowed:
                raise ValueError("that run is not one of yours, or it has no adapter yet")
            return run_dir

        def do_push(owner_token, run_dir, repo_id, hub_token, private_):
            try:
                url = publish.push_run(mine(owner_token, run_dir), (repo_id or "").strip(), hub_token or None,
                                       private=bool(private_))
            except (ValueError, OSError) as exc:
                raise gr.Error(common.message(exc)) from None
            return f"Pushed: [{url}]({url})"

        def do_zip(owner_token, run_dir):
            try:
                path = publish.zip_adapter(mine(owner_token, run_dir), tempfile.mkdtemp(prefix="peft-studio-zip-"))
            except (ValueError, OSError) as exc:
                raise gr.Error(common.message(exc)) from None
            return f"ZIP ready: `{path.name}`", str(path)

        def do_merge(owner_token, run_dir):
            try:
                folder = publish.merge_run(mine(owner_token, run_dir), tempfile.mkdtemp(prefix="peft-studio-merged-"))
                archive = zip_folder(folder)
            except (ValueError, OSError) as exc:
                raise gr.Error(common.message(exc)) from None
            return (f"Merged model: `{archive.name}` (safetensors; unzip and load it with `from_pretrained`).",
                    str(archive))

        push.click(do_push, [owner_state, run, repo, token, private], result, api_name="publish")
        zip_button.click(do_zip, [owner_state, run], [result, download], api_name="download_zip")
        merge.click(do_merge, [owner_state, run], [result, download], api_name="merge")
