"""Watching a run: plots, progress, log, samples, Stop / Resume, its config.yaml, and past runs.

``snapshot(job_id, owner)`` reads the run's ``events.jsonl`` (through the job
runner, so a user only sees their own runs) and returns everything the panel
shows; a ``gr.Timer`` calls it about once a second. Nothing here trains.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import gradio as gr
import pandas as pd

from pages import common
from pages.i18n import lang_of, say, t, tables, tr
from peft_core.training.events import DoneEvent, EstimateEvent, EvalEvent, LogEvent, SampleEvent, StepEvent

PLOT_COLUMNS = ["step", "value", "series"]


def _frame(rows: list[tuple[int, float, str]] = ()) -> pd.DataFrame:
    """Typed columns even when empty: the plot picks quantitative axes from the first frame it sees."""
    frame = pd.DataFrame(list(rows), columns=PLOT_COLUMNS)
    return frame.astype({"step": "int64", "value": "float64", "series": "object"})


@dataclass
class RunView:
    state: str = ""
    progress: str = ""
    loss: pd.DataFrame = field(default_factory=_frame)
    lr: pd.DataFrame = field(default_factory=_frame)
    memory: pd.DataFrame = field(default_factory=_frame)
    log: str = ""
    samples: list[tuple[str, str]] = field(default_factory=list)  # (image path, caption)
    config_yaml: str = ""
    config_path: str | None = None
    finished: bool = False


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def snapshot(job_id: str, owner: str, lang: str = "en") -> RunView:
    """Everything the monitor shows for one run, from its events on disk (its words in ``lang``)."""
    runner = common.runner()
    status = runner.status(job_id, owner)
    events, _ = runner.events(job_id, owner)
    view = RunView(state=status.state)
    loss, lr, memory = [], [], []
    last_step, done = None, None
    lines: list[str] = []
    for event in events:
        if isinstance(event, StepEvent):
            last_step = event
            loss.append((event.step, event.loss, t("plot.train_loss", lang)))
            lr.append((event.step, event.lr, t("plot.learning_rate", lang)))
            memory.append((event.step, event.mem_allocated_gb, t("plot.allocated", lang)))
            memory.append((event.step, event.mem_peak_gb, t("plot.peak", lang)))
        elif isinstance(event, EvalEvent):
            if "eval_loss" in event.metrics:
                loss.append((event.step, event.metrics["eval_loss"], t("plot.eval_loss", lang)))
            shown = ", ".join(f"{k} {v:.4g}" for k, v in event.metrics.items())
            lines.append(t("log.eval", lang, step=event.step, metrics=shown))
        elif isinstance(event, SampleEvent):
            for index, path in enumerate(event.images or []):
                caption = (event.texts or [""] * (index + 1))[index] if event.texts else ""
                view.samples.append((os.path.join(status.run_dir, path), t("log.sample", lang, step=event.step,
                                                                                       caption=caption)))
        elif isinstance(event, EstimateEvent):
            if event.measured_peak_gb is None and event.estimate:
                lines.append(t("log.estimate", lang, gb=f"{event.estimate.get('total_gb', 0):.2f}", device=event.device))
            elif event.measured_peak_gb is not None:
                lines.append(t("log.peak", lang, steps=event.step, gb=f"{event.measured_peak_gb:.2f}"))
        elif isinstance(event, LogEvent):
            lines.append(event.message)
        elif isinstance(event, DoneEvent):
            view.finished, done = True, event
            lines.append(t("log.done", lang, status=t(f"state.{event.status}", lang))
                         + (f": {_done_error(event, lang)}" if event.error else ""))
            lines += [f"  - {say(advice, lang)}" for advice in event.advice_keys or event.advice or []]
    view.loss, view.lr, view.memory = _frame(loss), _frame(lr), _frame(memory)
    state = t(f"state.{status.state}", lang)
    if status.state == "queued":
        view.progress = t("progress.queued", lang, position=status.queue_position)
    elif last_step is not None:
        view.progress = bar(last_step.step, last_step.total) + "\n\n" + t(
            "progress.step", lang, state=state, step=last_step.step, total=last_step.total,
            loss=f"{last_step.loss:.4f}", speed=f"{last_step.tokens_per_s:,.0f}",
            elapsed=_duration(last_step.elapsed_s), eta=_duration(last_step.eta_s))
    elif view.finished:
        view.progress = t("progress.before_first_step", lang, state=state)
    else:
        view.progress = t("progress.loading", lang, state=state)
    if status.state == "failed" and status.error:
        error = _done_error(done, lang) if done is not None and done.error else status.error
        view.progress += "\n\n" + t("progress.error", lang, error=error)
    tail = runner.log_tail(job_id, owner, lines=20)
    view.log = "\n".join(lines[-30:]) + ("\n--- log.txt ---\n" + tail if tail else "")
    config_path = os.path.join(status.run_dir, "config.yaml")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as fh:
            view.config_yaml = fh.read()
        view.config_path = config_path
    return view


def _done_error(done: DoneEvent, lang: str) -> str:
    """A failed run's error in ``lang`` where its code has words in the tables (out of memory), else as written."""
    key = f"done.{done.error_code}"
    return t(key, lang) if done.error_code and key in tables()["en"] else str(done.error)


def bar(step: int, total: int | None) -> str:
    """A progress bar (HTML, so it needs no script) for the Markdown above the plots."""
    share = min(1.0, step / total) if total else 0.0
    return (f'<div class="run-progress" role="progressbar" aria-valuenow="{step}" aria-valuemax="{total or 0}">'
            f'<div style="width:{100 * share:.1f}%"></div></div>')


def attachable(owner: str, tasks: list[str]) -> str | None:
    """The newest running or queued run of ``tasks``: what a reloaded page follows again."""
    for status in common.runner().list_runs(owner):
        if status.state in ("running", "queued") and status.task in tasks:
            return status.job_id
    return None


def run_choices(owner: str, lang: str = "en") -> list[tuple[str, str]]:
    """Past and current runs of this owner, newest first, as (label, job id)."""
    return [(f"{s.job_id} · {t(f'state.{s.state}', lang)}", s.job_id) for s in common.runner().list_runs(owner)]


def build(owner_state: gr.State, job_state: gr.State, name: str, tasks: list[str], show_samples: bool = False) -> None:
    """The monitor panel of tab ``name``; ``job_state`` holds the job id it follows.

    A page that follows no run (a new or reloaded page) picks up this owner's
    newest running or queued run of ``tasks`` by itself.
    """
    progress = gr.Markdown(tr("monitor.no_run"))
    with gr.Row():
        stop = gr.Button(tr("monitor.stop"), variant="stop", size="sm")
        resume = gr.Button(tr("monitor.resume"), size="sm")
    with gr.Row():
        # no value until there are points: a plot takes its axes and colours from the first data it gets
        loss = gr.LinePlot(x="step", y="value", color="series", title=tr("plot.loss"), height=220,
                           y_title=tr("plot.loss_axis"), x_title=tr("plot.step"), elem_id=f"{name}-loss-plot")
        lr = gr.LinePlot(x="step", y="value", color="series", title=tr("plot.lr"), height=220,
                         y_title=tr("plot.learning_rate"), x_title=tr("plot.step"))
        memory = gr.LinePlot(x="step", y="value", color="series", title=tr("plot.memory"), height=220,
                             y_title=tr("plot.memory_axis"), x_title=tr("plot.step"))
    gallery = gr.Gallery(label=tr("monitor.samples"), columns=4, height=260, visible=show_samples)
    log = gr.Textbox(label=tr("monitor.log"), lines=8, max_lines=12, autoscroll=True)
    with gr.Accordion(tr("monitor.config"), open=False):
        config_code = gr.Code(language="yaml")
        config_file = gr.File(label=tr("monitor.download_config"), interactive=False)
    with gr.Row():
        runs = gr.Dropdown(label=tr("monitor.your_runs"), choices=[], interactive=True, scale=4)
        refresh = gr.Button(tr("monitor.refresh"), size="sm", scale=1)
    timer = gr.Timer(1.0)

    def tick(job_id, token, request: gr.Request = None):
        lang = lang_of(request)
        try:
            owner = common.owner_of(token)
            job_id = job_id or attachable(owner, tasks)
            if not job_id:
                return [gr.skip()] * 9
            view = snapshot(job_id, owner, lang)
        except ValueError as exc:
            return [gr.skip(), t("progress.error", lang, error=common.message(exc, lang))] + [gr.skip()] * 7
        plots = [frame if len(frame) else gr.skip() for frame in (view.loss, view.lr, view.memory)]
        return [job_id, view.progress, *plots, view.samples, view.log, view.config_yaml, view.config_path]

    outputs = [job_state, progress, loss, lr, memory, gallery, log, config_code, config_file]
    timer.tick(tick, [job_state, owner_state], outputs, show_progress="hidden")
    def follow(job_id, token, request: gr.Request = None):
        return tick(job_id, token, request)[1:]

    job_state.change(follow, [job_state, owner_state], outputs[1:], show_progress="hidden")

    def do_stop(job_id, token, request: gr.Request = None):
        lang = lang_of(request)
        if not job_id:
            raise gr.Error(t("monitor.no_run_to_stop", lang))
        status = common.runner().stop(job_id, common.owner_of(token))
        state = t("monitor.stopping", lang) if status.state == "running" else t(f"state.{status.state}", lang)
        gr.Info(f"{job_id}: {state}")

    def do_resume(job_id, token, request: gr.Request = None):
        lang = lang_of(request)
        if not job_id:
            raise gr.Error(t("monitor.no_run_to_resume", lang))
        try:
            status = common.runner().resume(job_id, common.owner_of(token))
        except ValueError as exc:
            raise gr.Error(common.message(exc, lang)) from None
        return status.job_id

    stop.click(do_stop, [job_state, owner_state], None, api_name=False)
    resume.click(do_resume, [job_state, owner_state], job_state, api_name=False)
    def do_refresh(token, request: gr.Request = None):
        return gr.Dropdown(choices=run_choices(common.owner_of(token), lang_of(request)))

    refresh.click(do_refresh, owner_state, runs, api_name=False)
    runs.select(lambda job_id: job_id, runs, job_state, api_name=False)
