"""API-only endpoints for ``gradio_client``: start, watch and stop runs from a config, as the CLI would.

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")
    job = client.predict(open("examples/seq_cls.yaml").read(), "", api_name="/start_run")
    client.predict(job, "", api_name="/run_status")

``owner_token`` is any secret string the caller keeps; on a shared Studio it is
who the runs belong to (locally it is ignored: every run is yours). A shared
Studio reads no server paths: send the training data as ``data_file``
(``gradio_client.handle_file("train.jsonl")``); it replaces ``data.train``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gradio as gr
import yaml
from gradio import FileData

from pages import common
from pages.training import check_model_choice, check_run, data_source
from peft_core.errors import RunError
from peft_core.run_config import RunConfig


def _config(config_yaml: str, owner: str, data_file: FileData | None = None) -> RunConfig:
    try:
        data = yaml.safe_load(config_yaml or "")
    except yaml.YAMLError as exc:
        raise ValueError(f"the config is not valid YAML: {exc}") from None
    config = RunConfig.from_dict(data or {})
    check_model_choice(config.model.name_or_path)
    if config.model.trust_remote_code and not common.settings().single_user:
        raise RunError("remote_code_refused", model=config.model.name_or_path)
    uploaded = data_file.get("path") if isinstance(data_file, dict) else None  # Gradio checked it was uploaded
    config.data.train = data_source(uploaded, config.data.train, owner)
    if config.data.eval:
        config.data.eval = data_source(None, config.data.eval, owner)
    return config


def _owner(token: str) -> str:
    return common.owner_of(token or None) if not common.settings().single_user else "local"


def start_run(config_yaml: str, owner_token: str = "", data_file: FileData | None = None) -> str:
    """Start (or queue) a run from a run config's YAML text (and its uploaded training file); returns its job id."""
    try:
        owner = _owner(owner_token)
        return common.runner().start(_config(config_yaml, owner, data_file), owner).job_id
    except (ValueError, OSError) as exc:
        raise gr.Error(common.message(exc)) from None


def run_status(job_id: str, owner_token: str = "") -> dict[str, Any]:
    """The run's state, step, loss and queue position."""
    try:
        return dataclasses.asdict(common.runner().status(job_id, _owner(owner_token)))
    except ValueError as exc:
        raise gr.Error(common.message(exc)) from None


def stop_run(job_id: str, owner_token: str = "") -> dict[str, Any]:
    """Ask the run to stop after its current step (a queued run never starts)."""
    try:
        return dataclasses.asdict(common.runner().stop(job_id, _owner(owner_token)))
    except ValueError as exc:
        raise gr.Error(common.message(exc)) from None


def check_config(config_yaml: str, owner_token: str = "", data_file: FileData | None = None) -> str:
    """The data report, what trains and the memory estimate, as Markdown."""
    try:
        return check_run(_config(config_yaml, _owner(owner_token), data_file))
    except (ValueError, OSError) as exc:
        raise gr.Error(common.message(exc)) from None


def build() -> None:
    for fn in (start_run, stop_run, check_config):
        gr.api(fn, api_name=fn.__name__)
    # a poll reads a few lines from disk: many clients at once need not wait behind each other in the queue
    gr.api(run_status, api_name="run_status", concurrency_limit=None)
