"""What every page shares: the job runner, who the user is, and how engine errors reach the page.

Handlers are plain functions of plain values (tested without a browser); the
Gradio wiring lives in each page's ``build``.
"""

from __future__ import annotations

import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from peft_core.data.errors import human_size
from peft_core.errors import RunError
from peft_core.jobs import JobRunner

MAX_UPLOAD_BYTES = int(float(os.environ.get("PEFT_STUDIO_MAX_UPLOAD_MB", "1024")) * 2**20)


@dataclass
class AppSettings:
    runs_root: Path
    single_user: bool  # local default: every run is "local"; on a shared Space each browser is its own owner
    max_upload_bytes: int = MAX_UPLOAD_BYTES  # per file: Gradio refuses bigger uploads as they arrive, we check again


_settings = AppSettings(Path(os.environ.get("PEFT_STUDIO_RUNS", "runs")), single_user=True)
_runner: JobRunner | None = None


def configure(runs_root: str | os.PathLike, single_user: bool, max_upload_bytes: int = MAX_UPLOAD_BYTES) -> None:
    """Set where runs live and whether users are kept apart (before the Blocks are built)."""
    global _runner, _settings
    if _runner is not None:  # its running children are asked to stop (their adapters are saved)
        _runner.shutdown()
    _settings = AppSettings(Path(runs_root), single_user, max_upload_bytes)
    _runner = None


def settings() -> AppSettings:
    return _settings


def runner() -> JobRunner:
    global _runner
    if _runner is None:
        _settings.runs_root.mkdir(parents=True, exist_ok=True)
        _runner = JobRunner(_settings.runs_root, single_user=_settings.single_user)
    return _runner


def owner_of(token: str | None) -> str:
    """The owner a browser acts as: "local" in single-user mode, else its own random token."""
    if _settings.single_user:
        return "local"
    if not token:
        from pages.i18n import PageError

        raise PageError("error.no_identity")
    return token


def new_token() -> str:
    return secrets.token_urlsafe(18)


def upload_name(name: str) -> str:
    """An uploaded file's name made safe to keep: letters, digits, '.', '_', '-'; no leading dot; its extension kept."""
    stem, dot, ext = Path(name).name.rpartition(".") if "." in Path(name).name else (Path(name).name, "", "")
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).lstrip("._-")[:80] or "upload"
    ext = re.sub(r"[^A-Za-z0-9]+", "", ext)[:10].lower()
    return f"{stem}.{ext}" if dot and ext else stem


def check_upload(path: str | os.PathLike) -> int:
    """The size of an uploaded file, refused above the upload limit before a byte of it is read."""
    size = os.stat(path).st_size
    if size > _settings.max_upload_bytes:
        raise RunError("upload_too_large", file=upload_name(str(path)), size=human_size(size),
                       limit=human_size(_settings.max_upload_bytes))
    return size


def message(exc: BaseException, lang: str = "en") -> str:
    """An engine error as the page shows it, in ``lang`` when it has a code; never a stack trace alone."""
    from pages.i18n import message as translated

    return translated(exc, lang)
