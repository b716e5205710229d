"""Training events: JSON lines a writer appends and a poller reads, each event once."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from peft_core.training import events as ev
from peft_core.training.events import (
    DoneEvent,
    EstimateEvent,
    EvalEvent,
    EventLog,
    LogEvent,
    SampleEvent,
    StepEvent,
    device_memory_gb,
    event_from_json,
    event_to_json,
    process_memory,
    read_events,
)

REPO = Path(__file__).resolve().parents[1]

ALL = [
    StepEvent(step=3, total=10, loss=1.25, lr=2e-4, tokens_per_s=812.5, mem_allocated_gb=0.5, mem_peak_gb=0.75,
              elapsed_s=12.0, eta_s=28.0, epoch=0.3, grad_norm=0.9),
    StepEvent(3, 10, float("nan"), 0.0, 0.0, 0.0, 0.0, 0.0, None),
    EvalEvent(step=5, metrics={"eval_loss": 1.1, "accuracy": 0.5}),
    SampleEvent(step=5, texts=["hello"], images=["samples/step-5/0.png"]),
    EstimateEvent(step=0, estimate={"total_gb": 3.5}, measured_peak_gb=None, device="cpu"),
    LogEvent(level="warning", message="3 rows too long", code="rows_truncated", params={"count": 3}),
    DoneEvent(status="failed", output_dir="runs/a", error="out of memory", error_code="oom", advice=["batch size 4"]),
]


def same(a, b) -> bool:
    """Equal, NaN equal to NaN."""
    if type(a) is not type(b):
        return False
    pairs = [(getattr(a, f), getattr(b, f)) for f in a.__dataclass_fields__ if f != "time"]
    return all(x == y or (isinstance(x, float) and math.isnan(x) and math.isnan(y)) for x, y in pairs)


@pytest.mark.parametrize("event", ALL, ids=lambda e: type(e).__name__)
def test_each_event_is_one_line_with_its_type_and_time_and_comes_back_equal(event):
    before = time.time()
    line = event_to_json(event)
    assert "\n" not in line
    data = json.loads(line)
    assert data["type"] == {StepEvent: "step", EvalEvent: "eval", SampleEvent: "sample", EstimateEvent: "estimate",
                            LogEvent: "log", DoneEvent: "done"}[type(event)]
    assert before <= data["time"] <= time.time()
    back = event_from_json(line)
    assert same(back, event) and back.time == data["time"]


def test_unknown_types_and_fields_from_a_newer_version_are_skipped_with_a_warning(caplog):
    assert event_from_json('{"type": "hologram", "time": 1, "step": 2}') is None
    step = event_from_json(event_to_json(ALL[0])[:-1] + ', "carbon_g": 0.1}')
    assert same(step, ALL[0])
    assert "hologram" in caplog.text and "carbon_g" in caplog.text
    with pytest.raises(ValueError, match="not an event"):
        event_from_json('["step"]')
    with pytest.raises(ValueError, match="malformed eval event"):
        event_from_json('{"type": "eval", "time": 1}')


def test_the_log_appends_and_a_poller_sees_each_event_once(tmp_path):
    path = tmp_path / "run" / "events.jsonl"
    assert read_events(path) == ([], 0)  # nothing written yet
    with EventLog(path) as log:
        for event in ALL[:3]:
            log.append(event)
        first, seen = read_events(path)
        assert [type(e) for e in first] == [StepEvent, StepEvent, EvalEvent] and seen == 3
        assert read_events(path, seen) == ([], 3)
        log.append(ALL[3])
        more, seen = read_events(path, seen)
        assert len(more) == 1 and same(more[0], ALL[3]) and seen == 4


def test_a_torn_last_line_is_ignored_until_it_is_complete(tmp_path):
    path = tmp_path / "events.jsonl"
    line = event_to_json(ALL[2])
    path.write_text(event_to_json(ALL[0]) + "\n" + line[:10])
    events, seen = read_events(path)
    assert len(events) == 1 and seen == 1
    with open(path, "a") as handle:
        handle.write(line[10:] + "\n")
    events, seen = read_events(path, seen)
    assert len(events) == 1 and same(events[0], ALL[2]) and seen == 2


def test_a_writer_killed_mid_line_leaves_a_log_the_next_writer_continues(tmp_path, caplog):
    path = tmp_path / "events.jsonl"
    path.write_text(event_to_json(ALL[0]) + "\n" + event_to_json(ALL[2])[:15])  # the kill came mid-line
    with EventLog(path) as log:  # e.g. the resumed run
        log.append(ALL[6])
    events, seen = read_events(path)
    assert [type(e) for e in events] == [StepEvent, DoneEvent] and seen == 3
    assert "skipping line 2" in caplog.text


WRITER = textwrap.dedent("""
    import sys, time
    from peft_core.training.events import EventLog, StepEvent
    with EventLog(sys.argv[1]) as log:
        for i in range(int(sys.argv[2])):
            log.append(StepEvent(i, 0, 0.5, 0.1, 1.0, 0.0, 0.0, 0.0, None, grad_norm=float(i) * 1e-3))
            time.sleep(0.002)
""")


def test_a_poller_reading_while_another_process_writes_sees_every_event_once_in_order(tmp_path):
    path, count = tmp_path / "events.jsonl", 300
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(count)], env=env)
    seen, steps, polls = 0, [], 0
    while True:
        done = child.poll() is not None
        new, seen = read_events(path, seen)
        steps += [e.step for e in new]
        polls += 1
        if done:
            break
        time.sleep(0.001)
    assert child.returncode == 0
    assert steps == list(range(count)) and polls > 2


def test_process_memory_follows_what_this_process_allocates():
    # in a fresh process: in a long test session the allocator may hand back memory it already holds
    code = (
        "import torch\n"
        "from peft_core.training.events import process_memory\n"
        "allocated, peak = process_memory()\n"
        "assert 0 < allocated <= peak\n"
        "block = torch.ones(64 * 2**20)  # 256 MB, touched\n"
        "grown, peak_now = process_memory('cpu')\n"
        "assert grown - allocated > 0.2 and peak_now >= grown, (allocated, grown, peak_now)\n"
    )
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(root)})
    assert result.returncode == 0, result.stderr


def test_process_memory_reads_rss_from_proc_and_falls_back_to_getrusage(monkeypatch):
    monkeypatch.setattr(ev, "_proc_status", dict)
    allocated, peak = process_memory()
    assert allocated == peak > 0


def test_device_memory_names_the_device_and_its_memory():
    name, gb = device_memory_gb()
    if torch.cuda.is_available():
        assert name.startswith("cuda:0 ") and gb > 1
    else:
        assert name == "cpu" and 0 < gb < 1e5
