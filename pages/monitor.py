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


def snapshot(job_id: str, owner: str) -> RunView:
    """Everything the monitor shows for one run, from its events on disk."""
    runner = common.runner()
    status = runner.status(job_id, owner)
    events, _ = runner.events(job_id, owner)
    view = RunView(state=status.state)
    loss, lr, memory = [], [], []
    last_step = None
    lines: list[str] = []
    for event in events:
        if isinstance(event, StepEvent):
            last_step = event
            loss.append((event.step, event.loss, "train loss"))
            lr.append((event.step, event.lr, "learning rate"))
            memory.append((event.step, event.mem_allocated_gb, "allocated GB"))
            memory.append((event.step, event.mem_peak_gb, "peak GB"))
        elif isinstance(event, EvalEvent):
            if "eval_loss" in event.metrics:
                loss.append((event.step, event.metrics["eval_loss"], "eval loss"))
            shown = ", ".join(f"{k} {v:.4g}" for k, v in event.metrics.items())
            lines.append(f"step {event.step}: {shown}")
        elif isinstance(event, SampleEvent):
            for index, path in enumerate(event.images or []):
                caption = (event.texts or [""] * (index + 1))[index] if event.texts else ""
                view.samples.append((os.path.join(status.run_dir, path), f"step {event.step}: {caption}"))
        elif isinstance(event, EstimateEvent):
            if event.measured_peak_gb is None and event.estimate:
                lines.append(f"memory estimate: {event.estimate.get('total_gb', 0):.2f} GB on {event.device}")
            elif event.measured_peak_gb is not None:
                lines.append(f"measured peak after {event.step} steps: {event.measured_peak_gb:.2f} GB")
        elif isinstance(event, LogEvent):
            lines.append(event.message)
        elif isinstance(event, DoneEvent):
            view.finished = True
            lines.append(f"run {event.status}" + (f": {event.error}" if event.error else ""))
            lines += [f"  - {advice}" for advice in event.advice or []]
    view.loss, view.lr, view.memory = _frame(loss), _frame(lr), _frame(memory)
    if status.state == "queued":
        view.progress = f"**Queued** — position {status.queue_position} in line; it starts by itself."
    elif last_step is not None:
        speed = f"{last_step.tokens_per_s:,.0f} tokens/s"
        view.progress = (f"{bar(last_step.step, last_step.total)}\n\n"
                         f"**{status.state}** — step {last_step.step} / {last_step.total} · loss {last_step.loss:.4f} · "
                         f"{speed} · elapsed {_duration(last_step.elapsed_s)} · ETA {_duration(last_step.eta_s)}")
    elif view.finished:
        view.progress = f"**{status.state}** before the first step."
    else:
        view.progress = f"**{status.state}** — loading the model and the data…"
    if status.state == "failed" and status.error:
        view.progress += f"\n\n**Error:** {status.error}"
    tail = runner.log_tail(job_id, owner, lines=20)
    view.log = "\n".join(lines[-30:]) + ("\n--- log.txt ---\n" + tail if tail else "")
    config_path = os.path.join(status.run_dir, "config.yaml")
    if os.path.isfile(config_path):
        with open(config_path, encoding="utf-8") as fh:
            view.config_yaml = fh.read()
        view.config_path = config_path
    return view


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


def run_choices(owner: str) -> list[tuple[str, str]]:
    """Past and current runs of this owner, newest first, as (label, job id)."""
    return [(f"{s.job_id} · {s.state}", s.job_id) for s in common.runner().list_runs(owner)]


def build(owner_state: gr.State, job_state: gr.State, name: str, tasks: list[str], show_samples: bool = False) -> None:
    """The monitor panel of tab ``name``; ``job_state`` holds the job id it follows.

    A page that follows no run (a new or reloaded page) picks up this owner's
    newest running or queued run of ``tasks`` by itself.
    """
    progress = gr.Markdown("No run yet: check your settings, then Start.")
    with gr.Row():
        stop = gr.Button("Stop", variant="stop", size="sm")
        resume = gr.Button("Resume", size="sm")
    with gr.Row():
        # no value until there are points: a plot takes its axes and colours from the first data it gets
        loss = gr.LinePlot(x="step", y="value", color="series", title="Loss", height=220, y_title="loss",
                           elem_id=f"{name}-loss-plot")
        lr = gr.LinePlot(x="step", y="value", color="series", title="Learning rate", height=220,
                         y_title="learning rate")
        memory = gr.LinePlot(x="step", y="value", color="series", title="Memory", height=220,
                             y_title="GB (RSS on CPU)")
    gallery = gr.Gallery(label="Samples", columns=4, height=260, visible=show_samples)
    log = gr.Textbox(label="Log", lines=8, max_lines=12, autoscroll=True)
    with gr.Accordion("config.yaml (reproduce with: python -m peft_core train config.yaml)", open=False):
        config_code = gr.Code(language="yaml")
        config_file = gr.File(label="Download config.yaml", interactive=False)
    with gr.Row():
        runs = gr.Dropdown(label="Your runs", choices=[], interactive=True, scale=4)
        refresh = gr.Button("Refresh list", size="sm", scale=1)
    timer = gr.Timer(1.0)

    def tick(job_id, token):
        try:
            owner = common.owner_of(token)
            job_id = job_id or attachable(owner, tasks)
            if not job_id:
                return [gr.skip()] * 9
            view = snapshot(job_id, owner)
        except ValueError as exc:
            return [gr.skip(), f"**Error:** {common.message(exc)}"] + [gr.skip()] * 7
        plots = [frame if len(frame) else gr.skip() for frame in (view.loss, view.lr, view.memory)]
        return [job_id, view.progress, *plots, view.samples, view.log, view.config_yaml, view.config_path]

    outputs = [job_state, progress, loss, lr, memory, gallery, log, config_code, config_file]
    timer.tick(tick, [job_state, owner_state], outputs, show_progress="hidden")
    job_state.change(lambda job_id, token: tick(job_id, token)[1:], [job_state, owner_state], outputs[1:],
                     show_progress="hidden")

    def do_stop(job_id, token):
        if not job_id:
            raise gr.Error("no run to stop")
        status = common.runner().stop(job_id, common.owner_of(token))
        gr.Info(f"{job_id}: {'stopping after this step' if status.state == 'running' else status.state}")

    def do_resume(job_id, token):
        if not job_id:
            raise gr.Error("no run to resume")
        try:
            status = common.runner().resume(job_id, common.owner_of(token))
        except ValueError as exc:
            raise gr.Error(common.message(exc)) from None
        return status.job_id

    stop.click(do_stop, [job_state, owner_state], None, api_name=False)
    resume.click(do_resume, [job_state, owner_state], job_state, api_name=False)
    refresh.click(lambda token: gr.Dropdown(choices=run_choices(common.owner_of(token))), owner_state, runs,
                  api_name=False)
    runs.select(lambda job_id: job_id, runs, job_state, api_name=False)
