"""The job runner with real training processes on a tiny model: run, poll, stop, resume, queue, crash, owners."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_runs import SAMPLES, run_config

from peft_core import PeftModel, job_process, jobs
from peft_core.jobs import JobRunner
from peft_core.tasks import make_task
from peft_core.training import run as engine_run
from peft_core.training import trainer as engine_trainer
from peft_core.training.events import DoneEvent, EventLog, LogEvent, StepEvent, read_events

TIMEOUT = 90  # seconds for one child to import torch and train a few steps on a busy 2-core machine


@pytest.fixture
def runners():
    """Make runners; every one is shut down (its children stopped) after the test."""
    made: list[JobRunner] = []

    def make(root: Path, **kwargs) -> JobRunner:
        made.append(JobRunner(root, **kwargs))
        return made[-1]

    yield make
    for runner in made:
        runner.shutdown(timeout=20)


def config(model_dirs, steps: int = 6, train=SAMPLES / "alpaca.jsonl", **training):
    # batch 1 and short rows: a long run takes many cheap steps, so stopping it is never a race
    return run_config("causal_lm", model_dirs["llama"], train, "/somewhere/else", max_steps=steps, batch_size=1,
                      data={"max_length": 32}, **training)


def wait_for(check, timeout: float = TIMEOUT, every: float = 0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = check()
        if value:
            return value
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {check}")


def finished(runner: JobRunner, job_id: str, owner: str = "local"):
    status = runner.status(job_id, owner)
    return status if status.state in jobs.FINAL_STATES else None


def steps_in(run_dir) -> list[int]:
    return [e.step for e in read_events(Path(run_dir) / "events.jsonl")[0] if isinstance(e, StepEvent)]


def done_on_disk(run_dir) -> DoneEvent | None:
    done = [e for e in read_events(Path(run_dir) / "events.jsonl")[0] if isinstance(e, DoneEvent)]
    return done[-1] if done else None


def test_file_names_match_the_engine():
    assert (jobs.STOP_FILE, jobs.EVENTS_FILE, jobs.CONFIG_FILE) == (
        engine_trainer.STOP_FILE, engine_run.EVENTS_FILE, engine_run.CONFIG_FILE)


def test_a_job_runs_to_ok_and_only_its_owner_sees_it(model_dirs, tmp_path, runners):
    runner = runners(tmp_path / "runs", single_user=False)
    status = runner.start(config(model_dirs), owner="alice")
    assert status.state == "running" and status.owner == "alice"
    run_dir = Path(status.run_dir)
    assert run_dir.parent.parent == tmp_path / "runs" and "alice" not in str(run_dir)  # a hashed owner folder
    seen, line, read_while_running = [], 0, False
    while (now := runner.status(status.job_id, "alice")).state == "running":
        new, line = runner.events(status.job_id, "alice", since_line=line)
        seen += new
        read_while_running |= bool(new)
        time.sleep(0.05)
    assert now.state == "ok", now.error
    seen += runner.events(status.job_id, "alice", since_line=line)[0]
    assert read_while_running
    assert [e.step for e in seen if isinstance(e, StepEvent)] == [1, 2, 3, 4, 5, 6]  # each event exactly once
    assert (now.step, now.total, now.error) == (6, 6, None) and now.last_loss > 0
    assert (run_dir / "adapter_model.safetensors").is_file()
    assert "starting the training process" in runner.log_tail(status.job_id, "alice")
    assert [s.job_id for s in runner.list_runs("alice")] == [status.job_id]
    written = [f for f in run_dir.iterdir() if f.suffix in (".json", ".yaml", ".txt", ".jsonl")]
    assert len(written) >= 4 and not any("alice" in f.read_text() for f in written)  # in a shared app: a token

    # bob (and a forged id climbing out of his folder) learns nothing: the same answer as for no run at all
    assert runner.list_runs("bob") == []
    escape = f"../{run_dir.parent.name}/{status.job_id}"
    for job_id in (status.job_id, escape):
        for call in (runner.status, runner.events, runner.log_tail, runner.stop, runner.resume):
            with pytest.raises(ValueError, match="^no run named") as caught:
                call(job_id, "bob")
            assert "alice" not in str(caught.value)
    assert runner.status(status.job_id, "alice").state == "ok"


def test_stop_leaves_a_loadable_adapter_and_resume_finishes_the_run(model_dirs, tmp_path, runners):
    runner = runners(tmp_path / "runs")
    cfg = config(model_dirs, steps=16)
    job = runner.start(cfg, name="stop me").job_id
    run_dir = Path(runner.status(job).run_dir)
    wait_for(lambda: runner.status(job).step >= 2)
    with pytest.raises(ValueError, match="is running; only a stopped or failed run can be resumed"):
        runner.resume(job)
    assert runner.stop(job).state == "running"  # it stops after the current step
    stopped = wait_for(lambda: finished(runner, job))
    assert stopped.state == "stopped" and 2 <= stopped.step < 16
    base = make_task(cfg).load_model("fp32", torch.device("cpu"))
    PeftModel.from_pretrained(base, run_dir)  # the adapter at the top of the run folder loads

    # a new runner (an app restart) sees it stopped, and resumes it
    again = runners(tmp_path / "runs")
    assert [(s.job_id, s.state) for s in again.list_runs()] == [(job, "stopped")]
    assert again.resume(job).state == "running"
    done = wait_for(lambda: finished(again, job))
    assert done.state == "ok" and (done.step, done.total) == (16, 16)
    assert steps_in(run_dir) == list(range(1, 17))  # continued where it stopped: no step twice, none missing
    with pytest.raises(ValueError, match="finished; to train further, start a new run"):
        again.resume(job)


def test_the_queue_runs_by_itself_and_a_killed_child_ends_failed(model_dirs, tmp_path, runners):
    root = tmp_path / "runs"
    runner = runners(root)
    long = runner.start(config(model_dirs, steps=500))
    evil = "../../evil name"
    second = runner.start(config(model_dirs), name=evil)
    third = runner.start(config(model_dirs), name=evil)
    assert (second.state, second.queue_position, third.queue_position) == ("queued", 1, 2)
    assert second.job_id != third.job_id and "/" not in second.job_id
    assert all(Path(s.run_dir).parent == root / "local" for s in (long, second, third))

    stopped = runner.stop(second.job_id)
    assert (stopped.state, stopped.queue_position) == ("stopped", None)
    assert runner.status(third.job_id).queue_position == 1
    assert runner.status(long.job_id).state == "running"
    pid = json.loads((Path(long.run_dir) / "job.json").read_text())["pid"]
    os.kill(pid, signal.SIGKILL)
    # nobody polls from here on: the watcher marks the crash on disk and starts the next job
    crash = wait_for(lambda: done_on_disk(long.run_dir))
    assert crash.status == "failed"
    assert crash.error == "the training process ended unexpectedly (exit code -9, killed by SIGKILL); see log.txt"
    assert wait_for(lambda: done_on_disk(third.run_dir)).status == "ok"
    assert steps_in(third.run_dir) == [1, 2, 3, 4, 5, 6]

    # the stopped one never started
    assert steps_in(second.run_dir) == [] and not (Path(second.run_dir) / "log.txt").exists()
    assert json.loads((Path(second.run_dir) / "job.json").read_text())["pid"] is None
    # a page reload / restart sees it all, newest first
    listed = [(s.job_id, s.state) for s in runners(root).list_runs()]
    assert listed == [(third.job_id, "ok"), (second.job_id, "stopped"), (long.job_id, "failed")]
    failed = runner.status(long.job_id)
    assert "ended unexpectedly" in failed.error and any("memory" in line for line in failed.advice)
    with pytest.raises(ValueError, match="no checkpoint to continue from"):
        runner.resume(long.job_id)


def test_a_failing_run_ends_failed_with_the_engines_message_and_shutdown_empties_the_line(model_dirs, tmp_path,
                                                                                           runners):
    runner = runners(tmp_path / "runs")
    bad = runner.start(config(model_dirs, train=tmp_path / "missing.jsonl"))
    waiting = runner.start(config(model_dirs))
    assert (bad.state, waiting.state) == ("running", "queued")
    runner.shutdown(timeout=TIMEOUT)  # waits for the running child; the queued one never starts
    status = runner.status(bad.job_id)
    assert status.state == "failed"
    assert "missing.jsonl does not exist" in status.error and "unexpectedly" not in status.error
    assert runner.status(waiting.job_id).state == "stopped" and not (Path(waiting.run_dir) / "log.txt").exists()
    with pytest.raises(RuntimeError, match="shut down"):
        runner.start(config(model_dirs))


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_runs_of_an_earlier_session_are_reattached_from_disk(tmp_path, runners):
    """No training needed: run folders as an app that was killed left them."""
    folder = tmp_path / "runs" / "local"
    me, start = os.getpid(), job_process.start_time(os.getpid())
    layouts = {  # name: (pid, its start time, runner pid, events)
        "a-alive": (me, start, None, [StepEvent(3, 10, 1.5, 1e-3, 1.0, 0.1, 0.1, 1.0, 1.0)]),
        "b-dead": (_dead_pid(), None, None, [StepEvent(2, 10, 2.5, 1e-3, 1.0, 0.1, 0.1, 1.0, 1.0)]),
        "c-reused-pid": (me, start + 1, None, []),
        "d-queued-by-a-closed-app": (None, None, _dead_pid(), []),
        "e-finished": (None, None, None, [DoneEvent(status="ok", output_dir="x")]),
    }
    for created, (name, (pid, started, runner_pid, events)) in enumerate(layouts.items()):
        (folder / name).mkdir(parents=True)
        (folder / name / "job.json").write_text(json.dumps({
            "created": created, "task": "causal_lm", "model": "m", "pid": pid, "started": started,
            "events_from": 0, "runner_pid": runner_pid}))
        with EventLog(folder / name / "events.jsonl") as log:
            for event in events:
                log.append(event)
    runner = runners(tmp_path / "runs")
    states = {s.job_id: (s.state, s.step) for s in runner.list_runs()}
    assert states == {"a-alive": ("running", 3), "b-dead": ("failed", 2), "c-reused-pid": ("failed", 0),
                      "d-queued-by-a-closed-app": ("stopped", 0), "e-finished": ("ok", 0)}
    assert "ended unexpectedly" in done_on_disk(folder / "b-dead").error  # written down for the next reload
    notes = [e for e in read_events(folder / "d-queued-by-a-closed-app" / "events.jsonl")[0] if isinstance(e, LogEvent)]
    assert "before this run started" in notes[0].message
    assert runner.list_runs()[0].job_id == "e-finished"  # newest first
