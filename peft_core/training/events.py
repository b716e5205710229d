"""Typed training events, one JSON line each in ``<run dir>/events.jsonl``.

The training process appends (``EventLog``); the UI polls (``read_events``)
and may start reading at any time, or again after a page reload. Each line
is ``{"type": "step", "time": <unix seconds>, ...fields}``. Lines of event
types or fields this version does not know (written by a newer one) are
skipped with a warning, and a torn last line (a writer killed mid-write) is
simply not there yet.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

logger = logging.getLogger(__name__)

GiB = 2**30


def _time() -> Any:
    # Filled in when the event is written; set on events read back from a log.
    return field(default=None, kw_only=True, compare=False)


@dataclass
class StepEvent:
    """One optimizer step: progress, loss, learning rate, speed and memory."""

    step: int
    total: int
    loss: float
    lr: float
    tokens_per_s: float
    mem_allocated_gb: float
    mem_peak_gb: float
    elapsed_s: float
    eta_s: float | None
    epoch: float | None = None
    grad_norm: float | None = None
    time: float | None = _time()


@dataclass
class EvalEvent:
    """Evaluation metrics at a step; ``details`` holds e.g. {"labels": [...], "confusion": [[...]]}."""

    step: int
    metrics: dict[str, float]
    details: dict[str, Any] | None = None
    time: float | None = _time()


@dataclass
class SampleEvent:
    """Generated samples at a step; image paths are relative to the run folder."""

    step: int
    texts: list[str] | None = None
    images: list[str] | None = None
    time: float | None = _time()


@dataclass
class EstimateEvent:
    """The memory estimate made before training, and the peak measured once it ran."""

    step: int
    estimate: dict[str, float]
    measured_peak_gb: float | None
    device: str
    time: float | None = _time()


@dataclass
class LogEvent:
    """A message for the person watching; ``code`` and ``params`` let the UI word it."""

    level: str
    message: str
    code: str | None = None
    params: dict | None = None
    time: float | None = _time()


@dataclass
class DoneEvent:
    """The run ended: finished, stopped by the user, or failed (with advice where there is some)."""

    status: Literal["ok", "stopped", "failed"]
    output_dir: str
    error: str | None = None
    error_code: str | None = None
    advice: list[str] | None = None
    advice_keys: list[dict] | None = None  # the advice as Phrase.to_dict()s, for the Studio to translate
    time: float | None = _time()


Event = StepEvent | EvalEvent | SampleEvent | EstimateEvent | LogEvent | DoneEvent

EVENT_TYPES: dict[str, type] = {
    "step": StepEvent,
    "eval": EvalEvent,
    "sample": SampleEvent,
    "estimate": EstimateEvent,
    "log": LogEvent,
    "done": DoneEvent,
}
_TYPE_NAMES = {cls: name for name, cls in EVENT_TYPES.items()}
_warned: set[str] = set()  # warn once per unknown type or field, not on every poll


def event_to_json(event: Event) -> str:
    """One line of JSON (no newline) with the event's type and the time it happened."""
    name = _TYPE_NAMES.get(type(event))
    if name is None:
        raise TypeError(f"{type(event).__name__} is not an event; use one of {sorted(c.__name__ for c in _TYPE_NAMES)}")
    data = dataclasses.asdict(event)
    stamp = data.pop("time")
    return json.dumps({"type": name, "time": time.time() if stamp is None else stamp, **data})


def event_from_json(line: str) -> Event | None:
    """The event on one line; None (with a warning) for an event type this version does not know.

    Fields it does not know are dropped with a warning. Raises ValueError for
    a line that is not an event at all.
    """
    try:
        data = json.loads(line)
    except json.JSONDecodeError as exc:
        raise ValueError(f"not a JSON event line: {exc}") from None
    if not isinstance(data, dict) or "type" not in data:
        raise ValueError(f"not an event line (no 'type'): {line[:80]!r}")
    name = data.pop("type")
    cls = EVENT_TYPES.get(name)
    if cls is None:
        _warn_once(f"type:{name}", "skipping events of type %r, which this version does not know", name)
        return None
    known = {f.name for f in dataclasses.fields(cls)}
    for key in sorted(set(data) - known):
        _warn_once(f"{name}.{key}", "ignoring field %r of %s events, which this version does not know", key, name)
    try:
        return cls(**{k: v for k, v in data.items() if k in known})
    except TypeError as exc:  # a required field is missing
        raise ValueError(f"malformed {name} event: {exc}") from None


def _warn_once(key: str, message: str, *args: Any) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message, *args)


class EventLog:
    """Appends events to a JSONL file; each one is on disk before ``append`` returns."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if _ends_torn(self.path):
            # A killed writer left half a line; end it, so the next event starts on a line of its own.
            self._write(b"\n")

    def append(self, event: Event) -> None:
        """Write one event as one line, flushed and fsynced."""
        if self._fd < 0:
            raise ValueError(f"the event log {self.path} is closed")
        self._write((event_to_json(event) + "\n").encode("utf-8"))

    def _write(self, data: bytes) -> None:
        # One write() on an O_APPEND descriptor: the line is not interleaved with another writer's.
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view):]
        os.fsync(self._fd)

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __enter__(self) -> EventLog:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        self.close()


def _ends_torn(path: Path) -> bool:
    with open(path, "rb") as handle:
        handle.seek(0, os.SEEK_END)
        if handle.tell() == 0:
            return False
        handle.seek(-1, os.SEEK_END)
        return handle.read(1) != b"\n"


def read_events(path: str | os.PathLike, since_line: int = 0) -> tuple[list[Event], int]:
    """Events on the complete lines after line ``since_line``, and the number of complete lines.

    Poll with the count it returns to see each event exactly once. A last
    line without its newline is still being written (or its writer died) and
    is left for later; lines that are not events are skipped with a warning.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return [], since_line
    lines = data.split(b"\n")[:-1]  # the piece after the last newline is not a complete line
    events: list[Event] = []
    for number, raw in enumerate(lines[since_line:], start=since_line + 1):
        if not raw.strip():
            continue
        try:
            event = event_from_json(raw.decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as exc:
            _warn_once(f"line:{path}:{number}", "skipping line %d of %s: %s", number, path, exc)
            continue
        if event is not None:
            events.append(event)
    return events, max(since_line, len(lines))


# -- memory readings -----------------------------------------------------------------


def process_memory(device: torch.device | str | None = None) -> tuple[float, float]:
    """(allocated, peak) memory in GB (2**30 bytes) for a run on ``device``.

    On CUDA: what PyTorch's allocator holds now and at most on that device.
    Otherwise: this process's resident memory now and at its peak.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    if device.type == "cuda":
        return torch.cuda.memory_allocated(device) / GiB, torch.cuda.max_memory_allocated(device) / GiB
    status = _proc_status()
    if "VmRSS" in status:
        return status["VmRSS"] / GiB, status.get("VmHWM", status["VmRSS"]) / GiB
    # ru_maxrss is in KiB on Linux and in bytes on macOS.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return peak / GiB, peak / GiB


def _proc_status() -> dict[str, int]:
    """Byte values of the ``/proc/self/status`` memory lines (empty where there is no /proc)."""
    values = {}
    try:
        with open("/proc/self/status", encoding="ascii") as handle:
            for line in handle:
                key, _, rest = line.partition(":")
                parts = rest.split()
                if key.startswith("Vm") and len(parts) == 2 and parts[1] == "kB":
                    values[key] = int(parts[0]) * 1024
    except OSError:
        pass
    return values


def device_memory_gb() -> tuple[str, float]:
    """The device training would use and its memory in GB: ("cuda:0 <name>", total) or ("cpu", available RAM)."""
    if not torch.cuda.is_available():
        return "cpu", available_ram_gb()
    if not torch.cuda.is_initialized():
        # Asking torch would create a CUDA context in this (UI) process and keep
        # its memory away from the training process; nvidia-smi does not.
        found = _nvidia_smi()
        if found is not None:
            return found
    props = torch.cuda.get_device_properties(0)
    return f"cuda:0 {props.name}", props.total_memory / GiB


def _nvidia_smi() -> tuple[str, float] | None:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip() or "0"
    command = ["nvidia-smi", "-i", visible, "--query-gpu=name,memory.total", "--format=csv,noheader,nounits"]
    try:
        line = subprocess.run(command, capture_output=True, text=True, timeout=10, check=True).stdout.strip()
        name, mib = line.splitlines()[0].rsplit(",", 1)
        return f"cuda:0 {name.strip()}", float(mib) / 1024
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def available_ram_gb() -> float:
    """RAM a new process could use now: MemAvailable, capped by a container's cgroup limit."""
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except OSError:
        pass
    if available is None:
        available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit = _cgroup_room()
    return min(available, limit) / GiB if limit is not None else available / GiB


def _cgroup_room() -> int | None:
    """Bytes left under a cgroup v2 memory limit, if one is set."""
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as handle:
            limit = handle.read().strip()
        if limit == "max":
            return None
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as handle:
            return max(0, int(limit) - int(handle.read().strip()))
    except (OSError, ValueError):
        return None
