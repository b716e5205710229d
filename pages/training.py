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
from pages.i18n import PageError, lang_of, say, t, tr
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
        raise PageError("error.no_data")
    if not common.settings().single_user and (os.path.exists(typed) or not _HUB_ID.match(typed)):
        raise PageError("error.shared_data", data=repr(typed))
    return typed


def check_model_choice(model: str) -> str:
    model = (model or "").strip()
    if not model:
        raise PageError("error.no_model")
    if not common.settings().single_user and model not in PRESETS and (os.path.exists(model) or not _HUB_ID.match(model)):
        raise PageError("error.shared_model", model=repr(model))
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


def check_run(config: RunConfig, lang: str = "en") -> str:
    """Markdown: the data report, what trains, and whether it fits in memory here (in ``lang``)."""
    from peft_core.data.reasons import Reason
    from peft_core.training import memory
    from peft_core.training.run import estimate, validate

    report = validate(config)
    parts = [t("report.data", lang, source=report.source),
             t("report.counts", lang, format=report.format, rows=report.rows, used=report.used, eval=report.eval_rows)]
    if config.model.trust_remote_code:
        warning = Reason("remote_code", model=config.model.name_or_path)
        parts.insert(0, t("report.warning", lang) + " " + say(warning, lang))
    for reason, count in report.dropped.items():
        parts.append(t("report.left_out", lang, count=count, reason=say(reason, lang)))
    if report.labels:
        parts.append(t("report.labels", lang, labels=", ".join(f"{k} ({v})" for k, v in report.labels.items())))
    if report.max_length:
        parts.append(t("report.truncated", lang, max_length=report.max_length, count=report.truncated))
        bins = [b for b in report.length_histogram if b[2]]
        parts.append("\n".join(f"`{low:>5}-{high:<5}` {'█' * min(count, 40)} {count}" for low, high, count in bins))
    parts += [f"- {say(note, lang)}" for note in report.notes]
    for index in range(min(2, len(report.examples))):
        parts.append(t("report.example", lang, n=index + 1) + f"\n```\n{report.marked(index)}\n```")
    if config.task != "dreambooth":
        from peft_core.planning import plan_adapter

        settings = {k: v for k, v in config.method.items() if k != "name"}
        plan = plan_adapter(config.model.name_or_path, config.method["name"], settings, config.task_type)
        parts.append(t("report.what_trains", lang, method=plan.method, architecture=plan.architecture) + "\n"
                     + t("report.params", lang, trainable=f"{plan.trainable_params:,d}", total=f"{plan.total_params:,d}",
                         percent=f"{plan.trainable_percent:.4f}", modules=len(plan.wrapped_modules)))
        result = estimate(config)
        device, available = memory.device_memory_gb()
        ok, advice = memory.fits(result, available)
        verdict = t("report.fits", lang) if ok else t("report.does_not_fit", lang, advice=say(advice, lang))
        parts.append(t("report.memory", lang, gb=f"{result.total_gb:.2f}", device=device, available=f"{available:.1f}",
                       verdict=verdict))
    return "\n\n".join(parts)


def run_actions(gather):
    """The Check and Start handlers of a training tab; ``gather(args)`` turns the widget values into
    (owner, RunConfig). Engine errors reach the page as messages."""

    def do_check(request: gr.Request, *args):
        lang = lang_of(request)
        try:
            return check_run(gather(args)[1], lang)
        except (ValueError, OSError) as exc:
            raise gr.Error(common.message(exc, lang)) from None

    def do_start(request: gr.Request, *args):
        lang = lang_of(request)
        try:
            owner, config = gather(args)
            status = common.runner().start(config, owner)
        except (ValueError, OSError) as exc:
            raise gr.Error(common.message(exc, lang)) from None
        if status.state == "queued":
            return status.job_id, t("run.queued", lang, job=status.job_id, position=status.queue_position)
        return status.job_id, t("run.started", lang, job=status.job_id)

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


def build(name: str, tasks: list[str], default_model: str, owner_state: gr.State, data_types: list[str]) -> None:
    """Training tab ``name`` ("llm", "vision": its title is ``tab.<name>``) for ``tasks`` (for scripts, the same
    runs start through the /start_run endpoint)."""
    job_state = gr.State(None)
    with gr.Tab(tr(f"tab.{name}"), elem_id=f"tab-{name}"), gr.Row():
        with gr.Column(scale=5):
            with gr.Row():
                model = gr.Dropdown(choices=presets_for(tasks), value=default_model, allow_custom_value=True,
                                    label=tr("train.model"), info=tr("train.model_info"))
                task = gr.Dropdown(choices=[(tr(f"task.{t}"), t) for t in tasks], value=tasks[0], label=tr("train.task"),
                                   interactive=len(tasks) > 1)
            method = gr.Dropdown(choices=methods_for_task(tasks[0]), value="lora", label=tr("train.method"),
                                 info=tr("train.method_info"))
            task.change(lambda t: gr.Dropdown(choices=methods_for_task(t), value="lora"), task, method)
            with gr.Row():
                upload = gr.File(label=tr("train.data"), file_types=data_types, type="filepath", interactive=True)
                with gr.Column():
                    typed = gr.Textbox(label=tr("train.hub_dataset"), placeholder="owner/name", interactive=True)
                    data_format = gr.Dropdown(choices=["auto", *TEXT_FORMATS], value="auto", label=tr("train.format"),
                                              visible="image_cls" not in tasks, interactive=True)
            with gr.Accordion(tr("train.hyperparameters"), open=False):
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
                with gr.Accordion(tr("train.method_settings"), open=False):
                    widgets = widgets_in_rows(form_fields(spec.config_cls))
                with gr.Row():
                    check = gr.Button(tr("train.check"))
                    start = gr.Button(tr("train.start"), variant="primary")
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
            monitor.build(owner_state, job_state, name, tasks)
