"""The DreamBooth tab: upload a few images (thumbnails shown), prompts, the UNet's method, Start, the gallery.

The images are copied into one folder per upload (named by their content, so
nothing is overwritten) and the run reads that folder, as the CLI would.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import gradio as gr

from pages import common, monitor
from pages.forms import form_fields, method_settings, to_settings, widgets_in_rows
from pages.i18n import PageError, tr
from pages.training import check_model_choice, run_actions
from peft_core import list_methods
from peft_core.presets import PRESETS
from peft_core.run_config import DreamBoothSettings, RunConfig, methods_for_task

DREAMBOOTH_FIELDS = form_fields(DreamBoothSettings)
TRAINING = {"max_steps": 400, "batch_size": 1, "learning_rate": 1e-4, "save_steps": 100, "eval_steps": None}


def save_uploads(paths: list[str], owner: str) -> str:
    """Copy the uploaded images (or one ZIP) into a folder of their own; returns what the run reads."""
    if not paths:
        raise PageError("error.no_images")
    digest = hashlib.sha256(owner.encode())
    for path in sorted(paths):
        common.check_upload(path)  # before any of it is read
        digest.update(Path(path).name.encode())
        with open(path, "rb") as fh:
            digest.update(hashlib.sha256(fh.read()).digest())
    folder = common.settings().runs_root / "uploads" / f"dreambooth-{digest.hexdigest()[:16]}"
    if not folder.exists():
        staging = folder.with_name(folder.name + ".part")
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        for path in paths:
            shutil.copyfile(path, staging / common.upload_name(Path(path).name))
        os.replace(staging, folder)
    zips = [p for p in folder.iterdir() if p.suffix.lower() == ".zip"]
    if zips and len(paths) > 1:
        raise PageError("error.images_and_zip")
    return str(zips[0] if zips else folder)


def dreambooth_config(model: str, method: str, method_values: list, data: str, db_values: list, steps: int,
                      learning_rate: float, gradient_checkpointing: bool, optimizer: str) -> RunConfig:
    dreambooth = to_settings(DREAMBOOTH_FIELDS, db_values)
    return RunConfig.from_dict({
        "task": "dreambooth",
        "model": {"name_or_path": check_model_choice(model), "gradient_checkpointing": bool(gradient_checkpointing)},
        "method": method_settings(method, method_values),
        "data": {"train": data},
        "dreambooth": {k: v for k, v in dreambooth.items() if v is not None or k == "snr_gamma"},
        "training": {**TRAINING, "output_dir": "runs/from-the-app", "max_steps": int(steps),
                     "learning_rate": float(learning_rate), "optimizer": optimizer},
    })


def build(owner_state: gr.State) -> None:
    job_state = gr.State(None)
    with gr.Tab(tr("tab.dreambooth"), elem_id="tab-dreambooth"), gr.Row():
        with gr.Column(scale=5):
            gr.Markdown(tr("db.intro"))
            images = gr.File(label=tr("db.images"), file_count="multiple",
                             file_types=["image", ".zip"], type="filepath", interactive=True)
            thumbs = gr.Gallery(label=tr("db.your_images"), columns=6, height=140, show_label=True)
            images.change(lambda files: [f for f in files or [] if not f.lower().endswith(".zip")], images,
                          thumbs, api_name=False)
            diffusion = [k for k, p in PRESETS.items() if not p.task_types and k.endswith("sd-random")]
            model = gr.Dropdown(choices=diffusion, value=diffusion[0], allow_custom_value=True,
                                label=tr("db.model"), info=tr("db.model_info"))
            with gr.Accordion(tr("db.settings"), open=True):
                db_widgets = widgets_in_rows(DREAMBOOTH_FIELDS)
            with gr.Row():
                steps = gr.Number(value=400, precision=0, label="max_steps", interactive=True)
                lr = gr.Number(value=1e-4, label="learning_rate", interactive=True)
                checkpointing = gr.Checkbox(value=True, label="gradient_checkpointing", interactive=True)
                optimizer = gr.Dropdown(choices=["adamw", "adamw_8bit"], value="adamw_8bit", label="optimizer",
                                        interactive=True)
            method = gr.Dropdown(choices=[(s.title, s.name) for s in methods_for_task("dreambooth")],
                                 value="lora", label=tr("db.method"))

            @gr.render(inputs=method)
            def method_form(method_name: str) -> None:
                spec = next(s for s in list_methods() if s.name == method_name)
                with gr.Accordion(tr("db.method_settings"), open=False):
                    widgets = widgets_in_rows(form_fields(spec.config_cls))
                with gr.Row():
                    check = gr.Button(tr("db.check"))
                    start = gr.Button(tr("train.start"), variant="primary")
                report = gr.Markdown()
                n_method, n_db = len(widgets), len(db_widgets)

                def gather(args):
                    model_, method_, files, steps_, lr_, gc_, opt_, token = args[:8]
                    rest = list(args[8:])
                    owner = common.owner_of(token)
                    data = save_uploads([f for f in files or []], owner)
                    return owner, dreambooth_config(model_, method_, rest[:n_method], data,
                                                    rest[n_method:n_method + n_db], steps_, lr_, gc_, opt_)

                do_check, do_start = run_actions(gather)

                inputs = [model, method, images, steps, lr, checkpointing, optimizer, owner_state, *widgets,
                          *db_widgets]
                check.click(do_check, inputs, report, api_name=False)  # API: /check_config
                start.click(do_start, inputs, [job_state, report], api_name=False)  # API: /start_run
        with gr.Column(scale=6):
            monitor.build(owner_state, job_state, "dreambooth", ["dreambooth"], show_samples=True)
