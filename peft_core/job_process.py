"""The process side of training jobs: run folders, job.json, process liveness, and the child itself.

``python -m peft_core.job_process <run dir>`` is a job: it trains the run whose
``config.yaml`` is in that folder (see ``peft_core.jobs`` for the runner that
starts, watches and stops these processes).
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from peft_core.run_config import RunConfig
from peft_core.training.events import DoneEvent, EventLog, StepEvent, event_from_json

logger = logging.getLogger(__name__)

CONFIG_FILE = "config.yaml"  # as in training.run (not imported: it pulls in the whole engine)
EVENTS_FILE = "events.jsonl"  # as in training.run
_HAS_PROC = os.path.exists("/proc/self/stat")
NICENESS = 10  # added to the training process's nice value


@dataclass
class Progress:
    """What has been read of one events.jsonl, so each poll reads only the new lines."""

    offset: int = 0  # bytes read (complete lines only)
    lines: int = 0  # complete lines read, counted as read_events counts them
    step: int = 0
    total: int | None = None
    loss: float | None = None
    done: DoneEvent | None = None
    done_line: int = -1  # 0-based line of the last DoneEvent


def read_progress(progress: Progress, events_file: Path) -> Progress:
    """Read the lines of ``events_file`` added since ``progress`` was last updated (complete lines only)."""
    try:
        with open(events_file, "rb") as handle:
            handle.seek(progress.offset)
            data = handle.read()
    except FileNotFoundError:
        return progress
    end = data.rfind(b"\n") + 1  # a last line without its newline is still being written
    for raw in data[:end].split(b"\n")[:-1]:
        progress.lines += 1
        try:
            event = event_from_json(raw.decode("utf-8")) if raw.strip() else None
        except (ValueError, UnicodeDecodeError):
            continue  # read_events warns about it
        if isinstance(event, StepEvent):
            progress.step, progress.total, progress.loss = event.step, event.total, event.loss
        elif isinstance(event, DoneEvent):
            progress.done, progress.done_line = event, progress.lines - 1
    progress.offset += end
    return progress


# -- files and processes ---------------------------------------------------------------------------
def slug(text: str, limit: int = 40) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", text.lower()).strip("-.")[:limit].strip("-.") or "run"


def new_run_dir(folder: Path, config: RunConfig, name: str | None) -> tuple[str, Path]:
    """A new, never-used folder, readable and unguessable: ``20261123-141502-causal_lm-smollm2-135m-instruct-<12 hex>``.

    The random part (48 bits) means a run id seen once (in a log, a screenshot)
    cannot be used to find the neighbouring runs of the same minute.
    """
    stamp = time.strftime("%Y%m%d-%H%M%S")
    model = config.model.name_or_path.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    base = f"{stamp}-{slug(name)}" if name else f"{stamp}-{config.task}-{slug(model)}"
    folder.mkdir(parents=True, exist_ok=True)
    for _ in range(100):
        job_id = f"{base}-{secrets.token_hex(6)}"
        try:
            (folder / job_id).mkdir()  # atomic: two starts never share a folder
            return job_id, folder / job_id
        except FileExistsError:
            continue
    raise RuntimeError(f"could not find a free run folder in {folder}")


def read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def write_json(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1)
    os.replace(tmp, path)  # a reader sees the old file or the new one, never half of one


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, from /proc; None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        fields = text[text.rfind(")") + 2:].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def start_time(pid: int) -> int | None:
    stat = proc_stat(pid)
    return stat[1] if stat else None


def alive(pid: Any, started: Any = None) -> bool:
    """Whether ``pid`` is still the process we started (not a zombie, not a reuse of its number)."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    if not _HAS_PROC:  # macOS: the pid alone
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
    stat = proc_stat(pid)
    return stat is not None and stat[0] not in ("Z", "X") and started in (None, stat[1])


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


# -- the child ----------------------------------------------------------------------------------
def child_main(run_dir: str) -> int:
    """The training process: train the run in ``run_dir`` (its config.yaml); stdout and stderr are log.txt."""
    import faulthandler

    faulthandler.enable()  # a segfault leaves its traceback in log.txt
    try:
        os.nice(NICENESS)  # the app's web server, not a long run, gets the CPU first: pages stay responsive
    except OSError:
        logger.warning("could not lower the training process's priority")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    asked = threading.Event()

    def ask_stop(signum: int, frame: Any) -> None:  # SIGTERM (or SIGINT): stop after the step, adapter saved
        logger.info("%s received: stopping after the current step", signal_name(signum))
        asked.set()

    signal.signal(signal.SIGTERM, ask_stop)
    signal.signal(signal.SIGINT, ask_stop)
    try:
        from peft_core.training.run import train

        done = train(RunConfig.from_yaml(Path(run_dir) / CONFIG_FILE), stop=asked.is_set)
    except Exception as exc:  # before train() had its event log (e.g. a bad config.yaml)
        logger.exception("the run could not start")
        error = str(exc) if isinstance(exc, (ValueError, OSError)) else f"{type(exc).__name__}: {exc}"
        done = DoneEvent(status="failed", output_dir=run_dir, error=error)
        with EventLog(Path(run_dir) / EVENTS_FILE) as log:
            log.append(done)
    logger.info("run %s: %s%s", run_dir, done.status, f" ({done.error})" if done.error else "")
    return 1 if done.status == "failed" else 0


if __name__ == "__main__":
    code = child_main(sys.argv[1])
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    # Everything is on disk (events are fsynced, checkpoints renamed into place); skip the interpreter's
    # teardown of torch and friends, which takes seconds that the next queued run would wait for.
    os._exit(code)
