"""Faults during a run: a killed training process, Stop in the middle of things, a full disk, out of memory.

Nothing may be lost: after each fault the last checkpoint loads, a loadable
adapter remains, and the run either resumes where it was or ends with a reason.
(Killing a checkpoint writer mid-write is in test_checkpoint.py.)
"""

from __future__ import annotations

import errno
import json
import os
import signal
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from test_jobs import config, finished, runners, steps_in, wait_for  # noqa: F401 (runners is a fixture)
from tiny_runs import SAMPLES, run_config

from pages import api, common, monitor
from peft_core import PeftModel
from peft_core.tasks import make_task
from peft_core.tasks.causal_lm import CausalLMTask
from peft_core.training import checkpoint as ckpt
from peft_core.training import trainer as engine_trainer
from peft_core.training.checkpoint import latest_checkpoint, list_checkpoints, read_trainer_state
from peft_core.training.events import DoneEvent, EvalEvent, StepEvent, read_events
from peft_core.training.run import train


def losses(run_dir) -> dict[int, float]:
    """step -> loss (a resumed run's later value wins, as the loss curve shows it)."""
    return {e.step: e.loss for e in read_events(Path(run_dir) / "events.jsonl")[0] if isinstance(e, StepEvent)}


def loads(cfg, folder) -> None:
    base = make_task(cfg).load_model("fp32", torch.device("cpu"))
    PeftModel.from_pretrained(base, folder)


def test_a_killed_training_process_fails_with_the_reason_and_resumes_from_its_last_checkpoint(
        model_dirs, tmp_path, runners):  # noqa: F811
    runner = runners(tmp_path / "runs")
    cfg = config(model_dirs, steps=30, save_steps=3, lr_scheduler="constant")
    job = runner.start(cfg).job_id
    run_dir = Path(runner.status(job).run_dir)
    wait_for(lambda: latest_checkpoint(run_dir) is not None and runner.status(job).step >= 7)
    os.kill(json.loads((run_dir / "job.json").read_text())["pid"], signal.SIGKILL)

    failed = wait_for(lambda: finished(runner, job))
    assert failed.state == "failed" and "killed by SIGKILL" in failed.error
    assert any("resume continues the run from its last checkpoint" in line for line in failed.advice)
    last = latest_checkpoint(run_dir)
    saved_step = read_trainer_state(last).global_step
    assert saved_step >= 3 and saved_step % 3 == 0
    loads(cfg, last)  # the checkpoint is whole: it loads as an adapter

    assert runner.resume(job).state == "running"
    done = wait_for(lambda: finished(runner, job))
    assert done.state == "ok" and (done.step, done.total) == (30, 30)
    # the resumed attempt started right after the checkpoint: steps after it were trained again, none skipped
    events = read_events(run_dir / "events.jsonl")[0]
    crash = next(i for i, e in enumerate(events) if isinstance(e, DoneEvent))
    assert [e.step for e in events[crash:] if isinstance(e, StepEvent)] == list(range(saved_step + 1, 31))
    # and its loss curve is the one of a run that was never killed
    alone = tmp_path / "alone"
    assert train(config(model_dirs, steps=30, lr_scheduler="constant").with_overrides(
        [f"training.output_dir={alone}"])).status == "ok"
    assert losses(run_dir) == pytest.approx(losses(alone), rel=1e-5)
    loads(cfg, run_dir)


def stop_inside(monkeypatch, owner, name: str, after_calls: int) -> threading.Event:
    """An Event set (Stop pressed) while ``owner.name`` runs for the ``after_calls``-th time."""
    asked, calls, original = threading.Event(), [0], getattr(owner, name)

    def wrapped(*args, **kwargs):
        calls[0] += 1
        if calls[0] == after_calls:
            asked.set()
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)
    return asked


def test_stop_during_evaluation_ends_after_it_with_a_loadable_adapter(model_dirs, tmp_path, monkeypatch):
    asked = stop_inside(monkeypatch, CausalLMTask, "evaluate", after_calls=2)  # call 1 is the eval at step 0
    cfg = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / "run", max_steps=20,
                     batch_size=2, eval_steps=3, data={"eval_fraction": 0.2})
    done = train(cfg, stop=asked.is_set)
    assert done.status == "stopped"
    events = read_events(tmp_path / "run" / "events.jsonl")[0]
    assert [e.step for e in events if isinstance(e, StepEvent)] == [1, 2, 3]  # no step after the evaluation
    assert [e.step for e in events if isinstance(e, EvalEvent)] == [0, 3] and "eval_loss" in events[-2].metrics
    assert read_trainer_state(latest_checkpoint(tmp_path / "run")).global_step == 3
    loads(cfg, tmp_path / "run")
    loads(cfg, latest_checkpoint(tmp_path / "run"))


def test_stop_during_a_checkpoint_write_finishes_the_checkpoint(model_dirs, tmp_path, monkeypatch):
    asked = threading.Event()
    original = ckpt.save_checkpoint

    def save_checkpoint(run_dir, step, write_files, *args, **kwargs):
        def write(folder):
            write_files(folder)
            asked.set()  # Stop pressed halfway: the adapter is written, the trainer state not yet
        return original(run_dir, step, write, *args, **kwargs)

    monkeypatch.setattr(ckpt, "save_checkpoint", save_checkpoint)
    cfg = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / "run", max_steps=20,
                     batch_size=1, save_steps=4, data={"max_length": 32})
    done = train(cfg, stop=asked.is_set)
    assert done.status == "stopped" and steps_in(tmp_path / "run") == [1, 2, 3, 4]
    assert [Path(p).name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-4"]
    assert not [p for p in os.listdir(tmp_path / "run") if p.startswith(".")]  # no half-written folder left
    loads(cfg, tmp_path / "run" / "checkpoint-4")
    loads(cfg, tmp_path / "run")
    resumed = cfg.with_overrides(["training.resume_from=latest"])
    assert train(resumed).status == "ok" and steps_in(tmp_path / "run")[4:] == list(range(5, 21))


def test_a_full_disk_while_saving_fails_clearly_and_keeps_the_previous_checkpoint(model_dirs, tmp_path, monkeypatch):
    calls = [0]
    original = engine_trainer.save_state

    def fills_the_disk(state, folder, name):
        calls[0] += 1
        if calls[0] == 2:  # the second checkpoint: its adapter is written, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", os.path.join(folder, f"{name}.safetensors"))
        return original(state, folder, name)

    monkeypatch.setattr(engine_trainer, "save_state", fills_the_disk)
    cfg = run_config("causal_lm", model_dirs["llama"], SAMPLES / "alpaca.jsonl", tmp_path / "run", max_steps=20,
                     batch_size=1, save_steps=2, data={"max_length": 32})
    done = train(cfg)
    assert done.status == "failed" and done.error_code == "disk_full"
    assert "could not write checkpoint-4" in done.error and "the disk is full" in done.error
    assert "The previous checkpoint checkpoint-2 is intact; resume from it." in done.error
    assert [Path(p).name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2"]
    assert not [p for p in os.listdir(tmp_path / "run") if p.startswith(".")]
    loads(cfg, tmp_path / "run" / "checkpoint-2")
    monkeypatch.undo()  # space freed: the run continues from the checkpoint
    assert train(cfg.with_overrides(["training.resume_from=latest"])).status == "ok"


# Injected into the training process only (PYTHONPATH): the framework's own OOM error at step 3.
OOM_AT_STEP_3 = textwrap.dedent("""
    import torch
    from peft_core.tasks.causal_lm import CausalLMTask

    _loss, _calls = CausalLMTask.loss, [0]

    def loss(self, *args, **kwargs):
        _calls[0] += 1
        if _calls[0] == 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return _loss(self, *args, **kwargs)

    CausalLMTask.loss = loss
""")


def test_out_of_memory_in_the_training_process_ends_with_advice_and_the_app_keeps_serving(
        model_dirs, tmp_path, monkeypatch):
    hook = tmp_path / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(OOM_AT_STEP_3)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hook), os.environ.get("PYTHONPATH", "")]))
    common.configure(tmp_path / "runs", single_user=True)
    try:
        job = api.start_run(config(model_dirs, steps=10).to_yaml())
        status = wait_for(lambda: (s := api.run_status(job))["state"] in ("ok", "stopped", "failed") and s)
        assert status["state"] == "failed" and status["error"] == "out of memory" and status["step"] == 2
        assert status["advice"] and any("batch" in line for line in status["advice"])
        view = monitor.snapshot(job, "local")  # what the page shows
        assert "**Error:** out of memory" in view.progress and all(line in view.log for line in status["advice"])
        monkeypatch.delenv("PYTHONPATH")  # the app goes on: the next run trains
        again = api.start_run(config(model_dirs, steps=2).to_yaml())
        assert wait_for(lambda: (s := api.run_status(again))["state"] in ("ok", "failed") and s)["state"] == "ok"
    finally:
        common.configure(tmp_path / "runs", single_user=True)
