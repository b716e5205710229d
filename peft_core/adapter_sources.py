"""Finding, reading and checking the adapters the Test tab loads.

An adapter to test comes as a run folder, a checkpoint folder, a bare adapter
folder or a Hub id. The helpers here turn such a source into what
``peft_core.compare.AdapterTester`` needs before it touches a model: the run's
config.yaml, a name for the adapter, the adapter's config (after checking that
a local folder really holds a complete adapter, with a message saying what it
holds instead), the DreamBooth parts' folders, whether the adapter's task and
base model fit the tester, and a classifier's label names. ``open_image``
reads the input of an image classifier. Every check raises ``ValueError`` with
a message for the user; what only deserves a mention is appended to ``notes``.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Container
from pathlib import Path
from typing import Any

from peft_core.config import CONFIG_NAME, PeftConfig
from peft_core.run_config import TASK_TYPES
from peft_core.serialization import PICKLE_WEIGHTS_NAME, WEIGHTS_NAME


def run_config_file(folder: Path) -> Path:
    """The config.yaml of the run that ``folder`` (a run folder, or a checkpoint inside one) belongs to."""
    config_file = next((f / "config.yaml" for f in (folder, folder.parent) if (f / "config.yaml").is_file()), None)
    if config_file is None:
        raise ValueError(f"{folder} has no config.yaml, so it is not a run folder; for a bare adapter folder "
                         f"use AdapterTester(base, task).load_adapter({str(folder)!r})")
    return config_file


def adapter_name(source: str, name: str | None, taken: Container[str]) -> str:
    """``name`` if it is a valid new name, else one made from the source's folder name that ``taken`` lacks."""
    if name is not None:
        if not re.fullmatch(r"[\w-]+", name):
            raise ValueError(f"adapter name {name!r} may hold only letters, digits, '_' and '-'")
        if name in taken:
            raise ValueError(f"an adapter named {name!r} is already loaded; choose another name")
        return name
    path = Path(source.rstrip("/\\"))
    stem = f"{path.parent.name}-{path.name}" if path.name.startswith("checkpoint-") else path.name
    stem = re.sub(r"[^\w-]+", "_", stem).strip("_") or "adapter"
    candidate, number = stem, 2
    while candidate in taken:
        candidate, number = f"{stem}-{number}", number + 1
    return candidate


def read_config(source: str) -> PeftConfig:
    """The adapter's config, after checking that a local folder really holds an adapter."""
    from peft_core.hub import looks_like_local_path

    if looks_like_local_path(source):
        path = Path(source).expanduser()
        if not path.exists():
            raise ValueError(f"{source} does not exist; give a run folder, an adapter folder or a Hub id")
        if not path.is_dir():
            raise ValueError(f"{source} is a file; give the folder that holds {CONFIG_NAME}")
        if not (path / CONFIG_NAME).is_file():
            raise ValueError(_no_adapter_message(path))
        if not (path / WEIGHTS_NAME).is_file() and not (path / PICKLE_WEIGHTS_NAME).is_file():
            raise ValueError(f"{source} has {CONFIG_NAME} but no {WEIGHTS_NAME}: the adapter is incomplete "
                             f"(a run still saving, or a folder copied in part); copy the whole folder")
    try:
        return PeftConfig.from_pretrained(source)
    except FileNotFoundError as exc:
        raise ValueError(f"cannot load adapter {source}: {exc}") from None


def local_folder(source: str) -> Path:
    """A local folder as is; a Hub id downloaded (the DreamBooth parts only)."""
    from peft_core.hub import looks_like_local_path

    if looks_like_local_path(source):
        return Path(source).expanduser()
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(source, allow_patterns=["unet/*", "text_encoder/*", "adapter_*"]))
    except Exception as exc:  # noqa: BLE001  offline, unknown repo, gated...: each becomes a message
        raise ValueError(f"{source!r} is not a local folder and could not be fetched from the Hub "
                         f"({type(exc).__name__}); check the id, or download it and give the folder") from None


def _no_adapter_message(path: Path) -> str:
    """Why a local folder without an adapter config is not an adapter, and what to load instead."""
    if (path / "unet" / CONFIG_NAME).is_file():
        return f"{path} holds a DreamBooth adapter (unet/); test it with task dreambooth"
    if (path / "config.yaml").is_file():
        checkpoints = sorted(p.name for p in path.glob("checkpoint-*") if (p / CONFIG_NAME).is_file())
        hint = f"load one of its checkpoints: {', '.join(checkpoints)}" if checkpoints else "it has no checkpoint either"
        return (f"run folder {path} has no adapter yet (is it still training, or did it fail? see its "
                f"events.jsonl); {hint}")
    present = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
    return f"{path} holds no adapter: expected {CONFIG_NAME} and {WEIGHTS_NAME} (it holds: {present})"


def same_base(ours: str, recorded: str) -> bool:
    """Do two model names (preset key, Hub id or folder) name the same base model?"""
    from peft_core.presets import base_model_id

    if base_model_id(ours).lower() == base_model_id(recorded).lower():
        return True
    a, b = Path(ours).expanduser(), Path(recorded).expanduser()
    return a.exists() and b.exists() and a.resolve() == b.resolve()


def check_base_model(ours: str, recorded: str | None, source: str, check: bool, notes: list[str]) -> None:
    """Refuse (``check``) or note an adapter recorded as trained on another base model than ``ours``."""
    if not recorded:
        notes.append(f"the adapter does not record its base model; assuming it fits {ours}")
    elif not same_base(ours, recorded):
        if check:
            raise ValueError(f"{source} was trained on base model {recorded!r}, but this tester's base is "
                             f"{ours!r}; open a tester on {recorded!r} (or load with check_base=False if "
                             f"both names are the same model)")
        notes.append(f"the adapter was trained on {recorded!r}, loaded on {ours!r} as asked")


def check_task(task: str, config: PeftConfig, source: str, notes: list[str]) -> None:
    """Refuse an adapter saved for another task than ``task`` (a key of ``TASK_TYPES``)."""
    expected = TASK_TYPES[task]
    found = config.task_type
    if found is None:
        if task != "image_cls":  # image adapters are saved without one, as the PEFT library does
            notes.append(f"the adapter's config names no task; it is tested as {task}")
        return
    if found is not expected:
        other = next((k for k, v in TASK_TYPES.items() if v is found), found.value)
        raise ValueError(f"{source} is a {found.value} adapter, but this tester is for {task} "
                         f"({expected.value}); open a tester for task {other}")


def diffusion_folders(source: str, base: str, check: bool, notes: list[str]) -> dict[str, Path]:
    """A DreamBooth adapter's part folders (``unet``, maybe ``text_encoder``), each checked against ``base``."""
    from peft_core.inference import adapter_folders

    folders = adapter_folders(local_folder(source))
    for folder in folders.values():
        check_base_model(base, read_config(str(folder)).base_model_name_or_path, source, check, notes)
    return folders


def find_labels(source: str, config: PeftConfig, notes: list[str]) -> list[str] | None:
    """The classifier's label names: labels.json of the run, else the head's size as LABEL_i."""
    from peft_core.hub import resolve_adapter_file
    from peft_core.training.checkpoint import checkpoint_step
    from peft_core.training.run import LABELS_FILE, read_labels

    labels = None
    path = Path(source).expanduser()
    if path.is_dir():  # a run, or a checkpoint inside one
        folders = [path, path.parent] if checkpoint_step(path) is not None else [path]
        labels = next((found for f in folders if (found := read_labels(f))), None)
    else:  # a Hub repo may carry the run's labels.json
        with contextlib.suppress(FileNotFoundError):
            labels = read_labels(Path(resolve_adapter_file(source, LABELS_FILE)).parent)
    if labels is not None:
        return labels
    size = _head_size(source, config)
    if size is None:  # the head was not trained: the base model's own head and labels answer
        notes.append("the adapter does not train the classification head; labels are the base model's")
        return None
    notes.append(f"no labels.json with the adapter, so its {size} classes are shown as LABEL_0..LABEL_{size - 1}")
    return [f"LABEL_{i}" for i in range(size)]


def _head_size(source: str, config: PeftConfig) -> int | None:
    """How many classes the adapter's trained head has, read from the weights file's tensor shapes."""
    from safetensors import safe_open

    from peft_core.hub import resolve_adapter_file
    from peft_core.serialization import PREFIX

    heads = list(getattr(config, "modules_to_save", None) or [])
    sizes = []
    with safe_open(resolve_adapter_file(source, WEIGHTS_NAME), framework="pt") as weights:
        for key in weights.keys():  # noqa: SIM118 (safe_open has no iterator)
            module = "." + key.removeprefix(PREFIX).rsplit(".", 1)[0] + "."
            shape = weights.get_slice(key).get_shape()
            if key.endswith(".weight") and len(shape) == 2 and any(f".{h}." in module for h in heads):
                sizes.append(shape[0])
    return min(sizes) if sizes else None  # a two-layer head (dense + out_proj): the smaller is the output


def base_labels(base: str) -> list[str]:
    """The label names of the base model's own config (``id2label``), in head order."""
    from transformers import AutoConfig

    from peft_core.presets import resolve_model

    id2label = AutoConfig.from_pretrained(resolve_model(base)).id2label
    return [id2label[i] for i in range(len(id2label))]


def open_image(image: Any) -> Any:
    """An image classifier's input as an RGB PIL image: a PIL image, or the path of an image file."""
    from PIL import Image, ImageOps

    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if not isinstance(image, (str, os.PathLike)) or not os.path.isfile(image):
        raise ValueError(f"give an image, or the path of an image file; got {image!r}")
    try:
        with Image.open(image) as opened:
            return ImageOps.exif_transpose(opened).convert("RGB")
    except OSError as exc:
        raise ValueError(f"{image} is not an image this app can read ({exc})") from None
