"""Finding adapter files (a local directory or a Hub repo) and uploading adapters to the Hub.

Model cards live in ``peft_core.model_card``; ``hub.model_card``, ``hub.RunFacts``,
``hub.run_model_card`` and ``hub.loss_curve_png`` still work, forwarded there on
first use (so importing this module never imports that one, which imports this).

The Hub token is passed straight to ``huggingface_hub`` and never logged,
written to disk or put in a model card.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def looks_like_local_path(name: str | os.PathLike) -> bool:
    text = os.fspath(name)
    return (
        os.path.isabs(text)
        or text.startswith((".", "~"))
        or os.path.exists(text)
        or text.count("/") > 1
        or os.sep != "/" and os.sep in text
    )


def resolve_adapter_file(
    path_or_hub_id: str | os.PathLike,
    filename: str,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> str:
    """Local path of ``filename`` from a local adapter directory or a Hub repo.

    Raises ``FileNotFoundError`` naming what was looked for and where.
    """
    name = os.fspath(path_or_hub_id)
    if looks_like_local_path(name):
        directory = Path(name).expanduser() / (subfolder or "")
        if not directory.is_dir():
            raise FileNotFoundError(f"adapter directory {str(directory)!r} does not exist")
        path = directory / filename
        if not path.is_file():
            present = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
            raise FileNotFoundError(f"{str(directory)!r} has no {filename} (it holds: {present})")
        return str(path)
    if not _HUB_ID.match(name):
        raise FileNotFoundError(f"{name!r} is neither an existing adapter directory nor a valid Hub repo id")
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return hf_hub_download(name, filename, subfolder=subfolder, revision=revision, token=token)
    except EntryNotFoundError:
        raise FileNotFoundError(f"Hub repo {name!r} has no {filename}") from None
    except Exception as exc:  # noqa: BLE001  offline, unknown repo, gated, network...: all become FileNotFoundError
        raise FileNotFoundError(
            f"{name!r} is not a local adapter directory and could not be fetched from the Hub "
            f"({type(exc).__name__}: {_first_line(exc)})"
        ) from None


def adapter_file_exists(path_or_hub_id: str | os.PathLike, filename: str, **kwargs) -> bool:
    try:
        resolve_adapter_file(path_or_hub_id, filename, **kwargs)
    except FileNotFoundError:
        return False
    return True


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else ""


def push_folder(
    save: Callable[[str], None],
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    commit_message: str = "Upload adapter with PEFT Studio",
) -> str:
    """Save into a temporary folder with ``save(folder)`` and upload it; returns the repo URL."""
    from huggingface_hub import HfApi

    if not _HUB_ID.match(repo_id) or "/" not in repo_id:
        raise ValueError(f"repo id {repo_id!r} is not of the form 'user-or-org/name'")
    # HF_ENDPOINT is read now: huggingface_hub reads it once, at import
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    url = api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="peft-push-") as folder:
        save(folder)
        api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message)
    logger.info("pushed adapter to %s", repo_id)
    return str(url)


_MODEL_CARD_NAMES = frozenset({"model_card", "RunFacts", "run_model_card", "loss_curve_png"})


def __getattr__(name: str) -> Any:
    """The model-card names that used to live here, taken from ``peft_core.model_card`` when first asked for."""
    if name in _MODEL_CARD_NAMES:
        from peft_core import model_card

        return getattr(model_card, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
