"""Finding adapter files (local directory or Hub repo), publishing adapters, and their model cards.

A run's card (``run_model_card``) shows its loss curve as a PNG drawn here
with PIL (``loss_curve_png``), so no plotting library is needed.

The Hub token is passed straight to ``huggingface_hub`` and never logged,
written to disk or put in a model card.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

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
    except Exception as exc:  # offline, unknown repo, gated, network...
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


def model_card(repo_id: str, base_model: str | None, method_title: str, config: dict, extra_markdown: str = "") -> str:
    """A README.md that the Hub shows for an adapter repo."""
    base = base_model or "unknown"
    header = ["---", "library_name: peft", "tags:", "- peft", "- peft-studio", f"- {method_title.lower()}"]
    if base_model:
        header.append(f"base_model: {base_model}")
    header.append("---")
    settings = "\n".join(f"| `{k}` | `{v}` |" for k, v in sorted(config.items()) if v not in (None, [], {}))
    # The user's loading snippet; kept in a variable so no line of this module reads as an import of peft.
    load_peft = "from peft import PeftModel"
    body = f"""
# {method_title} adapter for {base}

Trained with PEFT Studio; it is an ordinary PEFT adapter.

## Use it

```python
from transformers import AutoModel
{load_peft}

base = AutoModel.from_pretrained("{base}")
model = PeftModel.from_pretrained(base, "{repo_id}")
```

## Settings

| setting | value |
|---|---|
{settings}
{extra_markdown}"""
    return "\n".join(header) + "\n" + body


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


# -- the model card of a training run ------------------------------------------------------

_PIPELINE_TAGS = {"causal_lm": "text-generation", "seq_cls": "text-classification",
                  "token_cls": "token-classification", "image_cls": "image-classification",
                  "dreambooth": "text-to-image"}
_TASK_WORDS = {"causal_lm": "text generation", "seq2seq": "sequence-to-sequence generation",
               "seq_cls": "text classification", "token_cls": "token classification",
               "image_cls": "image classification", "dreambooth": "DreamBooth text-to-image"}


@dataclass
class RunFacts:
    """Everything a run's card says, gathered from its folder by ``peft_core.publish``."""

    repo_id: str | None  # None: a card for a downloaded folder
    task: str
    auto_class: str  # the transformers class that loads the base model
    base_model: str
    method: dict[str, Any]  # the run's method settings, with its name
    method_title: str
    adapter_settings: dict[str, Any]  # what the saved adapter config adds (target modules, ...)
    data: dict[str, Any]
    training: dict[str, Any]
    final_metrics: dict[str, float]
    final_metrics_step: int | None
    has_loss_plot: bool
    sample_images: list[tuple[str, str]]  # (path in the repo, prompt)
    sample_texts: list[str]
    labels: list[str] | None
    instance_prompt: str | None
    diffusers_lora: bool  # pytorch_lora_weights.safetensors is there


def _hub_model_id(name: str) -> bool:
    """Whether ``name`` can be a Hub model id in card metadata (not a local path or a random-weight preset)."""
    return "/" in name and not looks_like_local_path(name) and bool(_HUB_ID.match(name))


def _cell(value: Any) -> str:
    text = ", ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
    return "`" + text.replace("|", "\\|").replace("`", "'").replace("\n", " ") + "`"


def _table(rows: dict[str, Any], head: tuple[str, str] = ("setting", "value")) -> str:
    lines = [f"| {head[0]} | {head[1]} |", "|---|---|"]
    return "\n".join(lines + [f"| {key} | {_cell(value)} |" for key, value in rows.items()])


def run_model_card(facts: RunFacts) -> str:
    """README.md for a run's adapter: metadata, what was trained on what, how it went, how to load it."""
    diffusion = facts.task == "dreambooth"
    meta: dict[str, Any] = {"library_name": "diffusers" if diffusion else "peft"}
    if _hub_model_id(facts.base_model):
        meta["base_model"] = facts.base_model
    if facts.task in _PIPELINE_TAGS:
        meta["pipeline_tag"] = _PIPELINE_TAGS[facts.task]
    tags = ["peft-studio", facts.method["name"], facts.task]
    tags += ["diffusers", "stable-diffusion"] if diffusion else ["peft"]
    meta["tags"] = list(dict.fromkeys(tags))
    if diffusion and facts.instance_prompt:
        meta["instance_prompt"] = facts.instance_prompt
        if facts.sample_images:
            meta["widget"] = [{"text": prompt or facts.instance_prompt, "output": {"url": path}}
                              for path, prompt in facts.sample_images]
    title = facts.repo_id.split("/")[-1] if facts.repo_id else f"{facts.method_title} adapter"
    parts = ["---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---", f"# {title}",
             f"A {facts.method_title} adapter for {_TASK_WORDS.get(facts.task, facts.task)} on "
             f"`{facts.base_model}`, trained with PEFT Studio. "
             + ("It loads with diffusers (and PEFT)." if diffusion else "It is an ordinary PEFT adapter."),
             "## Base model", _base_model_line(facts.base_model),
             f"## Method: {facts.method_title}",
             _table({k: v for k, v in {**facts.method, **facts.adapter_settings}.items() if k != "name"}),
             "## Data", _table(facts.data, ("", "")),
             "## Training", _table(facts.training, ("", ""))]
    if facts.final_metrics:
        metrics = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in facts.final_metrics.items()}
        parts += [f"Evaluation at step {facts.final_metrics_step}:", _table(metrics, ("metric", "value"))]
    if facts.has_loss_plot:
        parts.append("![Training loss by step](loss.png)")
    if facts.labels:
        parts += ["## Labels", ", ".join(f"`{label}`" for label in facts.labels)]
    parts += _samples(facts)
    parts += ["## Use it", _snippet(facts)]
    return "\n\n".join(parts) + "\n"


def _base_model_line(base: str) -> str:
    if _hub_model_id(base):
        return f"[`{base}`](https://huggingface.co/{base})"
    return f"`{base}` (not a Hub id: a local folder or a PEFT Studio preset; load the same base model to use this)"


def _samples(facts: RunFacts) -> list[str]:
    if facts.sample_images:
        images = "\n\n".join(f"![{prompt}]({path})\n\n*{prompt}*" for path, prompt in facts.sample_images)
        return ["## Samples", "Made at the end of training:", images]
    if facts.sample_texts:
        return ["## Samples", "\n\n".join(f"```text\n{text}\n```" for text in facts.sample_texts)]
    return []


def _snippet(facts: RunFacts) -> str:
    source = json.dumps(facts.repo_id or "path/to/this/folder")
    base = json.dumps(facts.base_model)
    load_peft = "from peft import PeftModel"  # a variable, so no line of this module reads as an import of peft
    if facts.task == "dreambooth":
        prompt = json.dumps(facts.instance_prompt or "")
        lines = ["import torch", "from diffusers import DiffusionPipeline"]
        if not facts.diffusers_lora:
            lines.append(load_peft)
        lines += ["", f"pipe = DiffusionPipeline.from_pretrained({base}, torch_dtype=torch.float16).to(\"cuda\")"]
        if facts.diffusers_lora:
            lines.append(f"pipe.load_lora_weights({source})")
        else:
            lines.append(f"pipe.unet = PeftModel.from_pretrained(pipe.unet, {source}, subfolder=\"unet\")")
        lines.append(f"image = pipe({prompt}, num_inference_steps=25).images[0]")
        return "```python\n" + "\n".join(lines) + "\n```"
    processor = "AutoImageProcessor" if facts.task == "image_cls" else "AutoTokenizer"
    lines = [f"from transformers import {facts.auto_class}, {processor}", load_peft, ""]
    kwargs = ""
    if facts.labels:
        lines.append(f"labels = {json.dumps(facts.labels, ensure_ascii=False)}")
        kwargs = (", num_labels=len(labels), id2label=dict(enumerate(labels)),"
                  " label2id={label: i for i, label in enumerate(labels)}")
    lines += [f"base = {facts.auto_class}.from_pretrained({base}{kwargs})",
              f"model = PeftModel.from_pretrained(base, {source})",
              f"processor = {processor}.from_pretrained({base})"]
    return "```python\n" + "\n".join(lines) + "\n```"


# -- the loss curve, drawn with PIL (no plotting library needed) --------------------------------

_LINE, _EVAL, _AXIS, _GRID, _TEXT = (31, 119, 180), (230, 97, 1), (40, 40, 40), (225, 225, 225), (60, 60, 60)


def _nice_ticks(low: float, high: float, count: int = 5, whole: bool = False) -> list[float]:
    """Round tick values from at or below ``low`` to at or above ``high`` (1, 2, 2.5 or 5 times a power of 10)."""
    if high <= low:
        high = low + (abs(low) * 0.1 or 1.0)
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    if whole:
        step = max(1, round(step))
    first, last = math.floor(low / step), math.ceil(high / step)
    return [i * step for i in range(first, last + 1)]


def _label(value: float) -> str:
    return f"{value:.4g}"


def loss_curve_png(losses: dict[int, float], eval_losses: dict[int, float] | None = None,
                   size: tuple[int, int] = (720, 400)) -> bytes:
    """A PNG line plot of training loss by step (eval loss as dots): axes, ticks, grid, legend."""
    from PIL import Image, ImageDraw, ImageFont

    eval_losses = {s: v for s, v in (eval_losses or {}).items() if math.isfinite(v)}
    train = sorted((s, v) for s, v in losses.items() if math.isfinite(v))
    if not train:
        raise ValueError("no finite loss values to plot")
    width, height = size
    left, right, top, bottom = 72, 24, 44, 52
    values = [v for _, v in train] + list(eval_losses.values())
    steps = [s for s, _ in train] + list(eval_losses)
    y_ticks = _nice_ticks(min(values), max(values))
    x_ticks = _nice_ticks(min(steps), max(steps), count=6, whole=True)

    def point(step: float, value: float) -> tuple[float, float]:
        x = left + (step - x_ticks[0]) / (x_ticks[-1] - x_ticks[0]) * (width - left - right)
        y = height - bottom - (value - y_ticks[0]) / (y_ticks[-1] - y_ticks[0]) * (height - top - bottom)
        return x, y

    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)

    def text(xy: tuple[float, float], words: str, anchor: str) -> None:
        box = draw.textbbox((0, 0), words, font=font)
        w, h = box[2] - box[0], box[3] - box[1]
        x = xy[0] - {"l": 0, "m": w / 2, "r": w}[anchor[0]]
        y = xy[1] - {"t": 0, "m": h / 2, "b": h}[anchor[1]]
        draw.text((x - box[0], y - box[1]), words, fill=_TEXT, font=font)

    for tick in y_ticks:
        y = point(x_ticks[0], tick)[1]
        draw.line([(left, y), (width - right, y)], fill=_GRID)
        draw.line([(left - 5, y), (left, y)], fill=_AXIS)
        text((left - 8, y), _label(tick), "rm")
    for tick in x_ticks:
        x = point(tick, y_ticks[0])[0]
        draw.line([(x, height - bottom), (x, height - bottom + 5)], fill=_AXIS)
        text((x, height - bottom + 8), str(int(tick)), "mt")
    draw.line([(left, top), (left, height - bottom), (width - right, height - bottom)], fill=_AXIS, width=2)
    text((width / 2, height - 8), "step", "mb")
    text((left, top - 10), "loss", "mb")
    line = [point(s, v) for s, v in train]
    if len(line) > 1:
        draw.line(line, fill=_LINE, width=2, joint="curve")
    for x, y in line if len(line) == 1 else []:
        draw.ellipse([x - 3, y - 3, x + 3, y + 3], fill=_LINE)
    for step, value in eval_losses.items():
        x, y = point(step, value)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=_EVAL)
    legend = [("training loss", _LINE)] + ([("eval loss", _EVAL)] if eval_losses else [])
    for index, (name, colour) in enumerate(legend):
        x, y = width - right - 260 + 140 * index, 16
        if colour == _EVAL:
            draw.ellipse([x + 7, y - 4, x + 15, y + 4], fill=colour)
        else:
            draw.line([(x, y), (x + 22, y)], fill=colour, width=3)
        text((x + 28, y), name, "lm")
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()
