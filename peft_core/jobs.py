"""Training jobs in child processes: start, poll, stop, resume and queue them, and find them again after a restart.

The UI never trains in its own process: a crash or an out-of-memory kill must
not take the app down, and GPU memory must be freed when a run ends. A job is
``python -m peft_core.job_process <run dir>``: a fresh interpreter (unlike
multiprocessing's "spawn", it does not re-import the app's main module) in its
own session, so a Ctrl-C in the app's terminal does not kill it mid-step.
Everything is on disk, so a reloaded page or a restarted app sees the same runs::

    <runs_root>/<owner folder>/<job id>/
        job.json      owner folder, created, task, model, pid (+ its start time), events_from
        config.yaml   the run's config; output_dir is always this folder
        log.txt       the child's stdout, stderr and logging (one header line per start)
        events.jsonl  the engine's events (+ the DoneEvent the runner writes for a crashed child)
        STOP          written by ``stop``: the run stops after its current optimizer step
        checkpoint-N/, adapter_model.safetensors, ...   written by the engine

The owner folder is "local" in single-user mode, else a hash of the owner: no
owner string ever becomes a path. A job is "queued" while in this runner's
line; else it has the state of the DoneEvent written since its latest start
(``events_from``: the line count when it was queued); else it is "running"
while its process lives (pid plus start time, so a reused pid does not count),
else "failed", and the runner writes that DoneEvent so the next reload sees it.
"""

from __future__ import annotations

import atexit
import hashlib
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_core.job_process import (
    Progress,
    alive,
    new_run_dir,
    read_json,
    read_progress,
    signal_name,
    start_time,
    write_json,
)
from peft_core.run_config import RunConfig
from peft_core.training.checkpoint import latest_checkpoint
from peft_core.training.events import DoneEvent, Event, EventLog, LogEvent, read_events

logger = logging.getLogger(__name__)

JOB_FILE = "job.json"
LOG_FILE = "log.txt"
EVENTS_FILE = "events.jsonl"  # as in training.run (not imported: it pulls in the whole engine)
CONFIG_FILE = "config.yaml"  # as in training.run
STOP_FILE = "STOP"  # as in training.trainer
POLL_S = 0.5  # how often the watcher thread reaps ended children and starts queued jobs
FINAL_STATES = ("ok", "stopped", "failed")
_JOB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass
class JobStatus:
    """What a page shows about one run; everything comes from the run folder and the process state."""

    job_id: str
    owner: str
    run_dir: str
    state: str  # "queued" | "running" | "ok" | "stopped" | "failed"
    queue_position: int | None = None  # 1 = next; None when not queued (or queued by another app process)
    step: int = 0  # the last optimizer step reported
    total: int | None = None
    last_loss: float | None = None
    error: str | None = None
    advice: list[str] = field(default_factory=list)
    created: float = 0.0  # unix seconds
    task: str = ""
    model: str = ""


class JobRunner:
    """Starts, queues, polls, stops and resumes training jobs under ``runs_root``, one owner folder per user.

    ``max_running`` jobs train at once (default one: a GPU holds one run); the
    rest wait in line and a watcher thread starts them as others end. Runs
    still training from an earlier app session count against ``max_running``.
    """

    def __init__(self, runs_root: str | os.PathLike, single_user: bool = True, max_running: int = 1) -> None:
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
            raise ValueError(f"max_running must be a whole number >= 1; got {max_running!r}")
        self.root = Path(runs_root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self.single_user = single_user
        self.max_running = max_running
        self._lock = threading.RLock()
        self._queue: list[str] = []  # run dirs waiting, in order
        self._procs: dict[str, subprocess.Popen] = {}  # run dir -> our child
        self._progress: dict[str, Progress] = {}
        self._closed = False
        self._closing = threading.Event()
        self._foreign = self._find_foreign_running()
        ref = weakref.ref(self)
        threading.Thread(target=_watch, args=(ref, self._closing), name="peft-jobs", daemon=True).start()
        atexit.register(_shutdown_at_exit, ref)

    # -- the public API -------------------------------------------------------------------
    def start(self, config: RunConfig, owner: str = "local", name: str | None = None) -> JobStatus:
        """Queue a new run in a new folder of ``owner``'s (it starts at once if nothing else is running)."""
        self._check_open()
        folder = self.root / self._owner_folder(owner)
        config = RunConfig.from_dict(config.to_dict())  # our own copy, validated
        job_id, run_dir = new_run_dir(folder, config, name)
        # The runner decides where a run writes; resume_from could name another user's checkpoint.
        config.training.output_dir, config.training.resume_from = str(run_dir), None
        config.save_yaml(run_dir / CONFIG_FILE)
        write_json(run_dir / JOB_FILE, {
            # the owner folder, not the owner: in a shared app that is the browser's token, a secret
            "job_id": job_id, "owner": folder.name, "created": time.time(), "task": config.task,
            "model": config.model.name_or_path, "pid": None, "started": None, "events_from": 0,
            "runner_pid": os.getpid(), "runner_started": start_time(os.getpid()),
        })
        with self._lock:
            self._queue.append(str(run_dir))
            self._advance()
            return self._status(run_dir, owner)

    def status(self, job_id: str, owner: str = "local") -> JobStatus:
        run_dir = self._find(job_id, owner)
        with self._lock:
            self._advance()
            return self._status(run_dir, owner)

    def events(self, job_id: str, owner: str = "local", since_line: int = 0) -> tuple[list[Event], int]:
        """The run's events after line ``since_line``, and the line to poll from next (see ``read_events``)."""
        return read_events(self._find(job_id, owner) / EVENTS_FILE, since_line)

    def log_tail(self, job_id: str, owner: str = "local", lines: int = 40) -> str:
        """The last ``lines`` lines of the child's log.txt (empty before it starts)."""
        path = self._find(job_id, owner) / LOG_FILE
        try:
            with open(path, "rb") as handle:
                handle.seek(max(0, handle.seek(0, os.SEEK_END) - 256 * 1024))  # the tail only: logs can be long
                text = handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""

    def stop(self, job_id: str, owner: str = "local") -> JobStatus:
        """Stop a run: a queued one never starts; a running one stops after its current step (adapter saved)."""
        run_dir = self._find(job_id, owner)
        with self._lock:
            key = str(run_dir)
            state = "queued" if key in self._queue else self._status(run_dir, owner).state
            if key in self._queue:
                self._queue.remove(key)
            if state == "queued":  # ours, or in another app process's line (its runner then skips it)
                self._never_started(run_dir, "stopped while queued; it never started")
            elif state == "running":
                (run_dir / STOP_FILE).touch()
            return self._status(run_dir, owner)

    def resume(self, job_id: str, owner: str = "local") -> JobStatus:
        """Continue a stopped or failed run from its last checkpoint, in the same folder (queued like a new run)."""
        self._check_open()
        run_dir = self._find(job_id, owner)
        with self._lock:
            self._advance()
            state = self._status(run_dir, owner).state
            if state in ("queued", "running"):
                raise ValueError(f"run {job_id} is {state}; only a stopped or failed run can be resumed")
            if state == "ok":
                raise ValueError(f"run {job_id} finished; to train further, start a new run")
            if latest_checkpoint(run_dir) is None:
                raise ValueError(f"run {job_id} has no checkpoint to continue from (it ended before saving one); "
                                 "start a new run with the same settings instead")
            config = RunConfig.from_yaml(run_dir / CONFIG_FILE).with_overrides(["training.resume_from=latest"])
            config.training.output_dir = str(run_dir)
            config.save_yaml(run_dir / CONFIG_FILE)
            meta = read_json(run_dir / JOB_FILE)
            meta.update(pid=None, started=None, events_from=self._read_progress(run_dir).lines,
                        runner_pid=os.getpid(), runner_started=start_time(os.getpid()))
            write_json(run_dir / JOB_FILE, meta)
            self._queue.append(str(run_dir))
            self._advance()
            return self._status(run_dir, owner)

    def list_runs(self, owner: str = "local") -> list[JobStatus]:
        """``owner``'s runs on disk, newest first, including those of earlier app sessions."""
        folder = self.root / self._owner_folder(owner)
        dirs = [d for d in folder.iterdir() if (d / JOB_FILE).is_file()] if folder.is_dir() else []
        with self._lock:
            self._advance()
            runs = [self._status(d, owner) for d in dirs]
        return sorted(runs, key=lambda s: (s.created, s.job_id), reverse=True)

    def shutdown(self, stop_running: bool = True, timeout: float = 30.0) -> None:
        """Stop accepting jobs; queued ones end "stopped" without starting.

        Running children are asked to stop (by default) and waited for up to
        ``timeout`` seconds: a run nobody can watch would hold the GPU, and a
        stopped run keeps a loadable adapter and a checkpoint to resume from.
        Children still going after that are left to finish; a later runner
        shows them as running. Called at interpreter exit too.
        """
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._closing.set()
            for key in self._queue:
                self._never_started(Path(key), "the app shut down before this run started; start it again")
            self._queue.clear()
            procs = dict(self._procs)
            if stop_running:
                for key in procs:
                    (Path(key) / STOP_FILE).touch()
        deadline = time.monotonic() + (timeout if stop_running else 0.0)
        for proc in procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.warning("training process %d is still running; it is left to finish", proc.pid)
        with self._lock:
            self._advance()

    # -- owners and folders -----------------------------------------------------------------
    def _owner(self, owner: str) -> str:
        if self.single_user:
            return "local"
        if not isinstance(owner, str) or not owner:
            raise ValueError("no owner given; every run in a shared app belongs to someone")
        return owner

    def _owner_folder(self, owner: str) -> str:
        # Never a user's string in a path: a hash of it (single-user runs live in "local").
        owner = self._owner(owner)
        return "local" if self.single_user else "u-" + hashlib.sha256(owner.encode("utf-8")).hexdigest()[:16]

    def _find(self, job_id: str, owner: str) -> Path:
        """The run folder of ``owner``'s run ``job_id``; another owner's run reads exactly like a missing one."""
        run_dir = self.root / self._owner_folder(owner) / str(job_id)
        if not isinstance(job_id, str) or not _JOB_ID.match(job_id) or not (run_dir / JOB_FILE).is_file():
            raise ValueError(f"no run named {job_id!r}; pick one from your list of runs")
        return run_dir

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("the job runner has shut down and starts no more runs; restart the app")

    # -- state ------------------------------------------------------------------------------
    def _status(self, run_dir: Path, owner: str) -> JobStatus:
        meta = read_json(run_dir / JOB_FILE)
        state, position = self._state(run_dir, meta)
        progress = self._read_progress(run_dir)
        done = progress.done if state in FINAL_STATES else None
        return JobStatus(
            job_id=run_dir.name, owner=self._owner(owner), run_dir=str(run_dir), state=state,
            queue_position=position, step=progress.step, total=progress.total, last_loss=progress.loss,
            error=done.error if done else None, advice=list(done.advice or []) if done else [],
            created=float(meta.get("created") or 0.0), task=str(meta.get("task", "")), model=str(meta.get("model", "")),
        )

    def _state(self, run_dir: Path, meta: dict[str, Any]) -> tuple[str, int | None]:
        key = str(run_dir)
        if key in self._queue:
            return "queued", self._queue.index(key) + 1
        proc = self._procs.get(key)
        if proc is not None:  # ours: reaped here, before a resume could start a new attempt in its folder
            return ("running", None) if proc.poll() is None else (self._reap(run_dir, proc.returncode), None)
        done = self._done(run_dir, meta)
        if done is not None:
            return done.status, None
        if meta.get("pid") is None:  # queued by a runner that is not this one
            if alive(meta.get("runner_pid"), meta.get("runner_started")):
                return "queued", None
            self._never_started(run_dir, "the app closed before this run started; start it again")
            return "stopped", None
        if alive(meta["pid"], meta.get("started")):
            return "running", None
        return self._reap(run_dir, None), None

    def _done(self, run_dir: Path, meta: dict[str, Any]) -> DoneEvent | None:
        """The DoneEvent of the run's latest start (an earlier one, before a resume, does not count)."""
        progress = self._read_progress(run_dir)
        return progress.done if progress.done_line >= int(meta.get("events_from") or 0) else None

    def _read_progress(self, run_dir: Path) -> Progress:
        return read_progress(self._progress.setdefault(str(run_dir), Progress()), run_dir / EVENTS_FILE)

    def _reap(self, run_dir: Path, exit_code: int | None) -> str:
        """A process that ended: its own DoneEvent, or a "failed" one written for it now so the folder says so."""
        self._procs.pop(str(run_dir), None)
        meta = read_json(run_dir / JOB_FILE)
        done = self._done(run_dir, meta)
        if done is not None:
            return done.status
        how = f"exit code {exit_code}" if exit_code is not None else "it is no longer running and wrote no result"
        if exit_code is not None and exit_code < 0:
            how += f", killed by {signal_name(-exit_code)}"
        advice = []
        if exit_code in (None, -signal.SIGKILL):
            advice.append("a process killed by the system has often run out of memory: lower batch_size or "
                          "max_length, or turn on gradient checkpointing")
        if latest_checkpoint(run_dir) is not None:
            advice.append("resume continues the run from its last checkpoint")
        with EventLog(run_dir / EVENTS_FILE) as log:
            log.append(DoneEvent(status="failed", output_dir=str(run_dir), error_code="crashed", advice=advice,
                                 error=f"the training process ended unexpectedly ({how}); see log.txt"))
        self._read_progress(run_dir)
        return "failed"

    def _never_started(self, run_dir: Path, why: str) -> None:
        with EventLog(run_dir / EVENTS_FILE) as log:
            log.append(LogEvent(level="info", message=why))
            log.append(DoneEvent(status="stopped", output_dir=str(run_dir)))
        self._read_progress(run_dir)

    # -- the line and the children --------------------------------------------------------------
    def _advance(self) -> None:
        """Reap ended children and start queued jobs while there is room (under the lock)."""
        for key, proc in list(self._procs.items()):
            if proc.poll() is not None:
                self._reap(Path(key), proc.returncode)
        self._foreign = {k: v for k, v in self._foreign.items() if alive(*v)}
        while self._queue and not self._closed and len(self._procs) + len(self._foreign) < self.max_running:
            run_dir = Path(self._queue.pop(0))
            if self._done(run_dir, read_json(run_dir / JOB_FILE)) is None:  # not stopped by another runner
                self._launch(run_dir)

    def _launch(self, run_dir: Path) -> None:
        (run_dir / STOP_FILE).unlink(missing_ok=True)  # a resumed run must not stop at once
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        package_parent = str(Path(__file__).resolve().parent.parent)  # the child imports this very peft_core
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
        try:
            with open(run_dir / LOG_FILE, "ab") as log:
                log.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} starting the training process ===\n".encode())
                log.flush()
                proc = subprocess.Popen([sys.executable, "-m", "peft_core.job_process", str(run_dir)], stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        except OSError as exc:
            with EventLog(run_dir / EVENTS_FILE) as events:
                events.append(DoneEvent(status="failed", output_dir=str(run_dir), error_code="crashed",
                                        error=f"could not start the training process: {exc}"))
            return
        self._procs[str(run_dir)] = proc
        meta = read_json(run_dir / JOB_FILE)
        meta.update(pid=proc.pid, started=start_time(proc.pid))
        write_json(run_dir / JOB_FILE, meta)

    def _find_foreign_running(self) -> dict[str, tuple[int, int | None]]:
        """Runs of earlier app sessions still training: they hold the device, so they count against max_running."""
        found = {}
        for job in self.root.glob(f"*/*/{JOB_FILE}"):
            meta = read_json(job)
            if alive(meta.get("pid"), meta.get("started")) and self._done(job.parent, meta) is None:
                found[str(job.parent)] = (meta["pid"], meta.get("started"))
        return found


def _watch(ref: weakref.ref, closing: threading.Event) -> None:
    """The watcher thread: queued jobs start, and crashed ones are marked, with nobody polling."""
    while not closing.wait(POLL_S):
        runner = ref()
        if runner is None:
            return
        try:
            with runner._lock:
                runner._advance()
        except Exception:  # keep watching; the next call will raise it where someone sees it
            logger.exception("the job watcher failed")
        del runner


def _shutdown_at_exit(ref: weakref.ref) -> None:
    runner = ref()
    if runner is not None:
        runner.shutdown()
