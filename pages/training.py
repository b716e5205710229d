"""The training tabs (LLM, Vision): model, method form, data, hyperparameters, Check, Start, and the monitor.

Forms come from the config dataclasses (``forms.form_fields``); ``config_from_form``
turns widget values into the same ``RunConfig`` the CLI reads, so a run made
here is reproduced by its ``config.yaml``.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

import gradio as gr

from pages import common, monitor
from pages.forms import form_fields, method_settings, to_settings, widgets_in_rows
from peft_core import list_methods
from peft_core.config import TaskType
from peft_core.data import TEXT_FORMATS
from peft_core.presets import PRESETS
from peft_core.run_config import TASK_TYPES, DataSettings, ModelSettings, RunConfig, TrainingSettings

TRAINING_SHOWN = ["max_steps", "batch_size", "gradient_accumulation_steps", "learning_rate", "lr_scheduler",
                  "warmup_steps", "optimizer", "precision", "eval_steps", "save_steps", "early_stopping_patience",
                  "seed"]
MODEL_SHOWN = ["quantization", "gradient_checkpointing"]
DATA_SHOWN = ["max_length", "packing", "eval_fraction"]
TASK_LABELS = {"causal_lm": "Causal LM (chat, instructions, text)", "seq2seq": "Seq2seq (source → target)",
               "seq_cls": "Text classification", "token_cls": "Token classification (NER)",
               "image_cls": "Image classification", "dreambooth": "DreamBooth"}
_HUB_ID = re.compile(r"^[\w.-]+/[\w.-]+(:[\w.-]+)?$")


def fields_of(cls: type, names: list[str]):
    by_name = {f.name: f for f in form_fields(cls)}
    return [by_name[name] for name in names]


HYPER_FIELDS = fields_of(ModelSettings, MODEL_SHOWN) + fields_of(DataSettings, DATA_SHOWN) + fields_of(
    TrainingSettings, TRAINING_SHOWN)


def presets_for(tasks: list[str]) -> list[str]:
    types = {TASK_TYPES[t] for t in tasks}
    return [key for key, preset in PRESETS.items() if types & set(preset.task_types)]


def methods_for_task(task: str) -> list[tuple[str, str]]:
    return [(spec.title, spec.name) for spec in list_methods(TASK_TYPES[task] or None)]


def stable_copy(uploaded: str, owner: str) -> str:
    """Keep an uploaded file where a resumed run still finds it (content-addressed: nothing is overwritten).

    Its size is checked before it is read, and its name made safe (it came from the browser).
    """
    source = Path(uploaded)
    common.check_upload(source)
    digest = hashlib.sha256()
    with open(source, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    digest.update(owner.encode())
    folder = common.settings().runs_root / "uploads" / digest.hexdigest()[:16]
    name = common.upload_name(source.name)
    target = folder / name
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{name}.part"
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
    return str(target)


def data_source(uploaded: str | None, typed: str, owner: str) -> str:
    """The data the run reads: an upload, or (typed) a Hub dataset id or, for a local user only, a path."""
    if uploaded:
        return stable_copy(uploaded, owner)
    typed = (typed or "").strip()
    if not typed:
        raise ValueError("no data: upload a file (or a ZIP), or type a Hub dataset id")
    if not common.settings().single_user and (os.path.exists(typed) or not _HUB_ID.match(typed)):
        raise ValueError(f"{typed!r}: on a shared Studio give a Hub dataset id (owner/name) or upload a file")
    return typed


def check_model_choice(model: str) -> str:
    model = (model or "").strip()
    if not model:
        raise ValueError("no model: pick a preset or type a Hub id")
    if not common.settings().single_user and model not in PRESETS and (os.path.exists(model) or not _HUB_ID.match(model)):
        raise ValueError(f"{model!r}: on a shared Studio pick a preset or give a Hub model id (owner/name)")
    return model


def config_from_form(task: str, model: str, method: str, method_values: list, data_path: str, data_format: str,
                     hyper_values: list) -> RunConfig:
    """Widget values -> a validated RunConfig (the engine's own checks give the messages)."""
    hyper = to_settings(HYPER_FIELDS, hyper_values)
    return RunConfig.from_dict({
        "task": task,
        "model": {"name_or_path": check_model_choice(model), **{k: hyper[k] for k in MODEL_SHOWN}},
        "method": method_settings(method, method_values),
        "data": {"train": data_path, "format": data_format or "auto", **{k: hyper[k] for k in DATA_SHOWN}},
        "training": {"output_dir": "runs/from-the-app", **{k: hyper[k] for k in TRAINING_SHOWN}},
    })


def check_run(config: RunConfig) -> str:
    """Markdown: the data report, what trains, and whether it fits in memory here."""
    from peft_core.training import memory
    from peft_core.training.run import REMOTE_CODE_WARNING, estimate, validate

    report = validate(config)
    parts = [f"### Data: {report.source}", f"{report.format} · {report.rows} rows · **{report.used} train** · "
             f"{report.eval_rows} eval"]
    if config.model.trust_remote_code:
        parts.insert(0, "**Warning:** " + REMOTE_CODE_WARNING.format(model=config.model.name_or_path))
    for reason, count in report.dropped.items():
        parts.append(f"- left out {count}: {reason}")
    if report.labels:
        parts.append("Labels: " + ", ".join(f"{k} ({v})" for k, v in report.labels.items()))
    if report.max_length:
        parts.append(f"Truncated at {report.max_length} tokens: {report.truncated}")
        bins = [b for b in report.length_histogram if b[2]]
        parts.append("\n".join(f"`{low:>5}-{high:<5}` {'█' * min(count, 40)} {count}" for low, high, count in bins))
    parts += [f"- {note}" for note in report.notes]
    for index in range(min(2, len(report.examples))):
        parts.append(f"**Example {index + 1}** (trained part between ⟦ ⟧)\n```\n{report.marked(index)}\n```")
    if config.task != "dreambooth":
        from peft_core.planning import plan_adapter

        settings = {k: v for k, v in config.method.items() if k != "name"}
        plan = plan_adapter(config.model.name_or_path, config.method["name"], settings, config.task_type)
        parts.append(f"### What trains: {plan.method} on {plan.architecture}\ntrainable params: "
                     f"**{plan.trainable_params:,d}** || all params: {plan.total_params:,d} || "
                     f"trainable%: **{plan.trainable_percent:.4f}** ({len(plan.wrapped_modules)} modules adapted)")
        result = estimate(config)
        device, available = memory.device_memory_gb()
        ok, advice = memory.fits(result, available)
        verdict = "fits" if ok else "does not fit; try: " + "; ".join(advice)
        parts.append(f"### Memory: about {result.total_gb:.2f} GB on {device} ({available:.1f} GB available) — "
                     f"**{verdict}**")
    return "\n\n".join(parts)


def run_actions(gather):
    """The Check and Start handlers of a training tab; ``gather(args)`` turns the widget values into
    (owner, RunConfig). Engine errors reach the page as messages."""

    def do_check(*args):
        try:
            return check_run(gather(args)[1])
        except (ValueError, OSError) as exc:
            raise gr.Error(common.message(exc)) from None

    def do_start(*args):
        try:
            owner, config = gather(args)
            status = common.runner().start(config, owner)
        except (ValueError, OSError) as exc:
            raise gr.Error(common.message(exc)) from None
        where = f"queued at position {status.queue_position}" if status.state == "queued" else "started"
        return status.job_id, f"Run **{status.job_id}** {where}."

    return do_check, do_start


def suggested_settings(model: str) -> dict[str, Any]:
    """Starting points by model size (parameters counted without loading weights)."""
    from peft_core.planning import plan_adapter

    try:
        total = plan_adapter(model, "lora", {}, TaskType.CAUSAL_LM).total_params
    except Exception:  # a model the planner cannot build: keep the form as it is
        return {}
    if total < 100e6:
        return {"batch_size": 8, "learning_rate": 5e-4, "gradient_checkpointing": False, "quantization": "none"}
    if total < 1e9:
        return {"batch_size": 4, "learning_rate": 2e-4, "gradient_checkpointing": False, "quantization": "none"}
    if total < 4e9:
        return {"batch_size": 2, "gradient_accumulation_steps": 4, "learning_rate": 2e-4,
                "gradient_checkpointing": True, "quantization": "none"}
    return {"batch_size": 1, "gradient_accumulation_steps": 8, "learning_rate": 1e-4, "gradient_checkpointing": True,
            "quantization": "4bit"}


def build(title: str, tasks: list[str], default_model: str, owner_state: gr.State, data_types: list[str]) -> None:
    """One training tab for ``tasks`` (for scripts, the same runs start through the /start_run endpoint)."""
    job_state = gr.State(None)
    with gr.Tab(title, elem_id=f"tab-{title.lower()}"), gr.Row():
        with gr.Column(scale=5):
            with gr.Row():
                model = gr.Dropdown(choices=presets_for(tasks), value=default_model, allow_custom_value=True,
                                    label="Model", info="A preset that works offline, or a Hub id.")
                task = gr.Dropdown(choices=[(TASK_LABELS[t], t) for t in tasks], value=tasks[0], label="Task",
                                   interactive=len(tasks) > 1)
            method = gr.Dropdown(choices=methods_for_task(tasks[0]), value="lora", label="Method",
                                 info="Only methods that fit the task are offered.")
            task.change(lambda t: gr.Dropdown(choices=methods_for_task(t), value="lora"), task, method)
            with gr.Row():
                upload = gr.File(label="Training data", file_types=data_types, type="filepath", interactive=True)
                with gr.Column():
                    typed = gr.Textbox(label="…or a Hub dataset id", placeholder="owner/name", interactive=True)
                    data_format = gr.Dropdown(choices=["auto", *TEXT_FORMATS], value="auto", label="Format",
                                              visible="image_cls" not in tasks, interactive=True)
            with gr.Accordion("Hyperparameters", open=False):
                hyper = widgets_in_rows(HYPER_FIELDS)
            by_name = dict(zip([f.name for f in HYPER_FIELDS], hyper, strict=True))
            tuned = ["batch_size", "gradient_accumulation_steps", "learning_rate", "gradient_checkpointing",
                     "quantization"]

            def on_model(name):
                suggested = suggested_settings(name)
                return [gr.update(value=suggested[k]) if k in suggested else gr.skip() for k in tuned]

            model.change(on_model, model, [by_name[k] for k in tuned], api_name=False)

            @gr.render(inputs=method)
            def method_form(method_name: str) -> None:
                spec = next(s for s in list_methods() if s.name == method_name)
                with gr.Accordion(f"{spec.title} settings", open=False):
                    widgets = widgets_in_rows(form_fields(spec.config_cls))
                with gr.Row():
                    check = gr.Button("Check data and memory")
                    start = gr.Button("Start training", variant="primary")
                report = gr.Markdown()
                n_method = len(widgets)

                def gather(args):
                    task_, model_, method_, upload_, typed_, format_, token = args[:7]
                    values = list(args[7:])
                    owner = common.owner_of(token)
                    data = data_source(upload_, typed_, owner)
                    return owner, config_from_form(task_, model_, method_, values[:n_method], data, format_,
                                                   values[n_method:])

                do_check, do_start = run_actions(gather)

                inputs = [task, model, method, upload, typed, data_format, owner_state, *widgets, *hyper]
                check.click(do_check, inputs, report, api_name=False)  # API: /check_config
                start.click(do_start, inputs, [job_state, report], api_name=False)  # API: /start_run
        with gr.Column(scale=6):
            monitor.build(owner_state, job_state, title.lower(), tasks)
