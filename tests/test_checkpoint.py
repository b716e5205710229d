"""Checkpoints are complete or absent: a killed writer, a full disk, rotation, replacement."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from peft_core.training.checkpoint import (
    CheckpointError,
    TrainerState,
    clean_stale_temp_dirs,
    latest_checkpoint,
    list_checkpoints,
    read_trainer_state,
    save_checkpoint,
)
from peft_core.training.state_io import load_state, save_state

REPO = Path(__file__).resolve().parents[1]


def writer(value: float, size: int = 1000):
    def write(folder: str) -> None:
        save_state({"weights": torch.full((size,), value), "step": int(value)}, folder, "training_state")
        Path(folder, "adapter_config.json").write_text("{}")

    return write


def save(run_dir, step, **kwargs):
    return save_checkpoint(run_dir, step, writer(float(step)), TrainerState(global_step=step), **kwargs)


def hidden(run_dir) -> list[str]:
    return sorted(p.name for p in Path(run_dir).iterdir() if p.name.startswith("."))


def test_a_checkpoint_holds_the_files_and_the_trainer_state(tmp_path):
    state = TrainerState(global_step=12, epoch=1, batches_seen_in_epoch=4, best_metric=0.25,
                         best_checkpoint="checkpoint-8", log_history_len=30, extra={"stale_evals": 2})
    path = save_checkpoint(tmp_path, 12, writer(1.5), state)
    assert path == str(tmp_path / "checkpoint-12")
    assert read_trainer_state(path) == state
    assert load_state(path, "training_state")["weights"][0].item() == 1.5
    assert list_checkpoints(tmp_path) == [path] and latest_checkpoint(tmp_path) == path
    assert hidden(tmp_path) == []


def test_checkpoints_sort_by_step_not_by_name_and_rotate_keeping_the_protected(tmp_path):
    for step in (5, 10, 100, 20):
        save(tmp_path, step, keep_last=None)
    assert [Path(p).name for p in list_checkpoints(tmp_path)] == [
        "checkpoint-5", "checkpoint-10", "checkpoint-20", "checkpoint-100"]
    save(tmp_path, 200, keep_last=2, protect=[str(tmp_path / "checkpoint-5")])
    assert [Path(p).name for p in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-100", "checkpoint-200"]
    save(tmp_path, 300, keep_last=1, protect=["checkpoint-5"])  # a bare folder name protects too
    assert [Path(p).name for p in list_checkpoints(tmp_path)] == ["checkpoint-5", "checkpoint-300"]
    assert hidden(tmp_path) == []


def test_saving_a_step_again_replaces_it_whole(tmp_path):
    save(tmp_path, 7)
    save_checkpoint(tmp_path, 7, writer(99.0), TrainerState(global_step=7, extra={"again": True}))
    (path,) = list_checkpoints(tmp_path)
    assert load_state(path, "training_state")["weights"][0].item() == 99.0
    assert read_trainer_state(path).extra == {"again": True}
    assert hidden(tmp_path) == []


def test_a_full_disk_raises_a_checkpoint_error_and_keeps_the_previous_checkpoint(tmp_path):
    previous = save(tmp_path, 1)
    before = {p.name: p.read_bytes() for p in Path(previous).iterdir()}

    def fills_the_disk(folder: str) -> None:
        writer(2.0)(folder)  # half of the files are written...
        raise OSError(errno.ENOSPC, "No space left on device", os.path.join(folder, "optimizer.safetensors"))

    with pytest.raises(CheckpointError) as info:
        save_checkpoint(tmp_path, 2, fills_the_disk, TrainerState(global_step=2))
    error = info.value
    assert isinstance(error, OSError) and error.errno == errno.ENOSPC
    message = str(error)
    assert "checkpoint-2" in message and "disk is full" in message
    assert "previous checkpoint checkpoint-1 is intact" in message
    assert list_checkpoints(tmp_path) == [previous] and hidden(tmp_path) == []
    assert {p.name: p.read_bytes() for p in Path(previous).iterdir()} == before


def test_a_first_checkpoint_that_fails_says_there_is_none_before_it(tmp_path):
    def fails(folder: str) -> None:
        raise PermissionError(errno.EACCES, "Permission denied", folder)

    with pytest.raises(CheckpointError, match="No earlier checkpoint"):
        save_checkpoint(tmp_path, 1, fails, TrainerState())
    assert list(tmp_path.iterdir()) == []


def test_a_bug_in_write_files_propagates_unchanged_and_leaves_nothing(tmp_path):
    def buggy(folder: str) -> None:
        raise KeyError("optimizer")

    with pytest.raises(KeyError):
        save_checkpoint(tmp_path, 1, buggy, TrainerState())
    assert list(tmp_path.iterdir()) == []


SLOW_WRITER = textwrap.dedent("""
    import sys, time, torch
    from peft_core.training.checkpoint import TrainerState, save_checkpoint
    from peft_core.training.state_io import save_state

    def write(folder):
        save_state({"weights": torch.ones(4_000_000)}, folder, "big_one")  # 16 MB
        print("written", flush=True)
        time.sleep(60)  # killed here, before the second file and trainer_state.json
        save_state({"weights": torch.ones(10)}, folder, "training_state")

    save_checkpoint(sys.argv[1], 2, write, TrainerState(global_step=2))
""")


def test_a_writer_killed_mid_checkpoint_leaves_only_complete_checkpoints(tmp_path):
    previous = save(tmp_path, 1)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    child = subprocess.Popen([sys.executable, "-c", SLOW_WRITER, str(tmp_path)], stdout=subprocess.PIPE, env=env)
    try:
        assert child.stdout.readline().strip() == b"written"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=30)
    assert child.returncode == -signal.SIGKILL
    leftovers = hidden(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".checkpoint-2.tmp-")
    assert (tmp_path / leftovers[0] / "big_one.safetensors").exists()  # the kill came mid-write
    assert list_checkpoints(tmp_path) == [previous] and latest_checkpoint(tmp_path) == previous
    assert load_state(previous, "training_state")["weights"][0].item() == 1.0
    assert clean_stale_temp_dirs(tmp_path) == 1
    assert hidden(tmp_path) == [] and list_checkpoints(tmp_path) == [previous]


def test_a_checkpoint_moved_aside_by_a_killed_replacer_is_restored(tmp_path):
    # Replacing checkpoint-3 renames it aside before the new one is renamed in;
    # a kill between the two renames leaves only the aside copy.
    path = Path(save(tmp_path, 3))
    aside = tmp_path / ".checkpoint-3.old-0badf00d"
    os.replace(path, aside)
    (tmp_path / ".checkpoint-4.del-12345678").mkdir()  # a deletion that was cut short
    assert list_checkpoints(tmp_path) == []
    assert clean_stale_temp_dirs(tmp_path) == 1
    assert list_checkpoints(tmp_path) == [str(path)] and hidden(tmp_path) == []
    assert read_trainer_state(path).global_step == 3


def test_incomplete_or_foreign_folders_are_not_checkpoints(tmp_path):
    good = save(tmp_path, 4)
    (tmp_path / "checkpoint-9").mkdir()  # no trainer_state.json
    (tmp_path / "checkpoint-8").mkdir()
    (tmp_path / "checkpoint-8" / "trainer_state.json").write_text("{not json")
    (tmp_path / "checkpoint-final").mkdir()
    (tmp_path / "checkpoint-12").write_text("a file, not a folder")
    assert list_checkpoints(tmp_path) == [good]
    assert list_checkpoints(tmp_path / "missing") == [] and latest_checkpoint(tmp_path / "missing") is None


def test_trainer_state_from_a_newer_version_loads_with_a_warning(tmp_path, caplog):
    path = Path(save(tmp_path, 5))
    data = json.loads((path / "trainer_state.json").read_text())
    (path / "trainer_state.json").write_text(json.dumps({**data, "new_field": 1}))
    assert read_trainer_state(path).global_step == 5
    assert "new_field" in caplog.text


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    with pytest.raises(ValueError, match="keep_last must be at least 1"):
        save(tmp_path, 1, keep_last=0)
    with pytest.raises(ValueError, match="step must be >= 0"):
        save(tmp_path, -1)
    assert list(tmp_path.iterdir()) == []
