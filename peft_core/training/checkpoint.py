"""Checkpoints that are complete or absent, never half-written.

A checkpoint is a folder ``<run dir>/checkpoint-<step>/`` whose last file is
``trainer_state.json``. It is built in a hidden temporary folder, flushed to
disk, and renamed into place in one step, so a process killed at any moment
leaves either the old set of checkpoints or the new one. Leftovers of killed
writers (``.checkpoint-*`` folders) are never listed and are removed by
``clean_stale_temp_dirs``.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peft_core.training.state_io import fsync_dir, fsync_file

logger = logging.getLogger(__name__)

TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Hidden folders of a writer: being written, an older copy moved aside, or being deleted.
_HIDDEN = re.compile(r"^\.checkpoint-(\d+)\.(tmp|old|del)-[0-9a-f]+$")


class CheckpointError(OSError):
    """A checkpoint could not be written; the earlier ones are intact."""


@dataclass
class TrainerState:
    """Where training stands, saved with every checkpoint (plain JSON)."""

    global_step: int = 0
    epoch: int = 0
    batches_seen_in_epoch: int = 0
    best_metric: float | None = None
    best_checkpoint: str | None = None
    log_history_len: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainerState:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            logger.warning("ignoring trainer state keys this version does not know: %s", unknown)
        return cls(**{k: v for k, v in data.items() if k in known})


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """The step of a ``checkpoint-<step>`` folder, or None for any other name."""
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


def read_trainer_state(checkpoint_dir: str | os.PathLike) -> TrainerState:
    """The ``trainer_state.json`` of a checkpoint."""
    path = Path(checkpoint_dir) / TRAINER_STATE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{checkpoint_dir} is not a complete checkpoint: no {TRAINER_STATE_NAME}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")  # noqa: TRY004 (bad file content, not a bad argument)
    return TrainerState.from_dict(data)


def list_checkpoints(run_dir: str | os.PathLike) -> list[str]:
    """Complete checkpoints in ``run_dir`` (readable trainer state), oldest step first."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return []
    found = []
    for entry in run_dir.iterdir():
        step = checkpoint_step(entry)
        if step is None or not entry.is_dir():
            continue
        try:
            read_trainer_state(entry)
        except (OSError, ValueError, TypeError) as exc:
            logger.warning("skipping incomplete checkpoint %s: %s", entry, exc)
            continue
        found.append((step, str(entry)))
    return [path for _, path in sorted(found)]


def latest_checkpoint(run_dir: str | os.PathLike) -> str | None:
    """The complete checkpoint with the highest step, or None."""
    checkpoints = list_checkpoints(run_dir)
    return checkpoints[-1] if checkpoints else None


def save_checkpoint(
    run_dir: str | os.PathLike,
    step: int,
    write_files: Callable[[str], None],
    trainer_state: TrainerState,
    keep_last: int | None = 3,
    protect: Iterable[str] = (),
) -> str:
    """Write ``run_dir/checkpoint-<step>/`` all at once and return its path.

    ``write_files(folder)`` writes the adapter and the optimizer, scheduler
    and RNG state into a temporary folder; ``trainer_state.json`` is written
    last, everything is flushed, and the folder is renamed into place. Then
    all but the newest ``keep_last`` checkpoints are deleted, except those
    named in ``protect`` (paths or folder names, e.g. the best checkpoint).
    """
    if keep_last is not None and keep_last < 1:
        raise ValueError(f"keep_last must be at least 1 or None (keep all), got {keep_last}")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    final = run_dir / f"checkpoint-{step}"
    previous = latest_checkpoint(run_dir)
    tmp = run_dir / f".checkpoint-{step}.tmp-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()
        write_files(str(tmp))
        (tmp / TRAINER_STATE_NAME).write_text(json.dumps(trainer_state.to_dict(), indent=2), encoding="utf-8")
        _fsync_tree(tmp)
        _move_into_place(tmp, final)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _checkpoint_error(exc, final, previous, run_dir) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("saved %s", final)
    if keep_last is not None:
        _rotate(run_dir, keep_last, {str(final), *protect})
    return str(final)


def clean_stale_temp_dirs(run_dir: str | os.PathLike) -> int:
    """Remove what killed writers left behind; return how many folders went.

    Call it only while no process is writing checkpoints to ``run_dir``
    (e.g. before a run resumes). An older checkpoint that was moved aside
    to be replaced, and whose replacement never arrived, is put back.
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return 0
    removed = 0
    for entry in sorted(run_dir.iterdir()):
        match = _HIDDEN.match(entry.name)
        if match is None or not entry.is_dir():
            continue
        final = run_dir / f"checkpoint-{match.group(1)}"
        if match.group(2) == "old" and not final.exists() and (entry / TRAINER_STATE_NAME).is_file():
            os.replace(entry, final)
            logger.warning("restored %s, which a killed writer had moved aside", final)
            continue
        shutil.rmtree(entry, ignore_errors=True)
        removed += 1
    if removed:
        fsync_dir(run_dir)
        logger.info("removed %d unfinished checkpoint folder(s) from %s", removed, run_dir)
    return removed


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under ``folder`` so the rename publishes data that is on disk."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            fsync_file(os.path.join(root, name))
        for name in dirs:
            fsync_dir(os.path.join(root, name))
    fsync_dir(folder)


def _move_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first, then deleted."""
    aside = None
    if final.exists():
        # A folder cannot be renamed over a non-empty one; the aside copy is
        # restored by clean_stale_temp_dirs if we are killed in between.
        aside = final.with_name(f".{final.name}.old-{secrets.token_hex(4)}")
        os.replace(final, aside)
    try:
        os.replace(tmp, final)
    except OSError:
        if aside is not None:
            os.replace(aside, final)
        raise
    fsync_dir(final.parent)
    if aside is not None:
        _delete(aside)


def _delete(folder: Path) -> None:
    """Delete a checkpoint folder so that no half-deleted one is ever listed as complete."""
    doomed = folder.with_name(f".{folder.name.lstrip('.').split('.')[0]}.del-{secrets.token_hex(4)}")
    os.replace(folder, doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def _rotate(run_dir: Path, keep_last: int, protect: set[str]) -> None:
    protected = {Path(p).name for p in protect if p}
    checkpoints = list_checkpoints(run_dir)
    for path in checkpoints[: max(0, len(checkpoints) - keep_last)]:
        if Path(path).name in protected:
            continue
        try:
            _delete(Path(path))
            logger.info("deleted old checkpoint %s (keep_last=%d)", path, keep_last)
        except OSError as exc:  # a leftover costs disk space, not correctness
            logger.warning("could not delete old checkpoint %s: %s", path, exc)


def _checkpoint_error(exc: OSError, final: Path, previous: str | None, run_dir: Path) -> CheckpointError:
    reason = exc.strerror or str(exc)
    message = f"could not write {final.name} in {run_dir}: {reason}"
    if exc.filename:
        message += f" ({Path(exc.filename).name})"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        free_gb = shutil.disk_usage(run_dir).free / 2**30
        message += f"; the disk is full ({free_gb:.1f} GB free): free space or save fewer checkpoints (keep_last)"
    if previous is not None:
        message += f". The previous checkpoint {Path(previous).name} is intact; resume from it."
    else:
        message += ". No earlier checkpoint exists in this run."
    error = CheckpointError(exc.errno or errno.EIO, message)
    # a stable code for the page (the DoneEvent's error_code), as for the engine's other user errors
    error.code = "disk_full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else "checkpoint_failed"
    error.params = {"checkpoint": final.name, "reason": reason, "previous": Path(previous).name if previous else None}
    return error
