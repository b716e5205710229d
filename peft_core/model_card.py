"""Model cards: the README.md a published adapter carries, and the images it shows.

``model_card`` is the short card of ``PeftModel.push_to_hub``. ``run_model_card``
is the full card of a Studio training run, written from ``RunFacts``;
``card_for_record`` gathers those facts from a run read by
``peft_core.publish.read_run`` and draws the run's loss curve with
``loss_curve_png`` (a PNG made with PIL, so no plotting library is needed).

Imports run one way: ``publish`` -> ``model_card`` -> ``hub``. This module
never imports ``publish`` at run time (it is handed the ``RunRecord``), and
``hub`` only forwards the old ``hub.model_card``-style names here on first use.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from peft_core.config import CONFIG_NAME
from peft_core.hub import _HUB_ID, looks_like_local_path

if TYPE_CHECKING:
    from peft_core.publish import RunRecord

DIFFUSERS_LORA_FILE = "pytorch_lora_weights.safetensors"  # the LoRA file diffusers' load_lora_weights reads


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


# -- the model card of a training run ------------------------------------------------------

_PIPELINE_TAGS = {"causal_lm": "text-generation", "seq_cls": "text-classification",
                  "token_cls": "token-classification", "image_cls": "image-classification",
                  "dreambooth": "text-to-image"}
# The headings of a run's card, in English; a caller may pass its own (``run_model_card(facts, headings)``),
# e.g. the Studio's translation of them. Filled only from the names in braces.
HEADINGS: dict[str, str] = {
    "base_model": "Base model", "method": "Method: {method}", "data": "Data", "training": "Training",
    "evaluation": "Evaluation at step {step}:", "loss_plot": "Training loss by step", "labels": "Labels",
    "samples": "Samples", "samples_made": "Made at the end of training:", "use": "Use it",
}

_TASK_WORDS = {"causal_lm": "text generation", "seq2seq": "sequence-to-sequence generation",
               "seq_cls": "text classification", "token_cls": "token classification",
               "image_cls": "image classification", "dreambooth": "DreamBooth text-to-image"}


@dataclass
class RunFacts:
    """Everything a run's card says, gathered from its record by ``card_for_record``."""

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


def run_model_card(facts: RunFacts, headings: dict[str, str] | None = None) -> str:
    """README.md for a run's adapter: metadata, what was trained on what, how it went, how to load it.

    ``headings`` replaces some or all of `HEADINGS` (same keys and placeholders), e.g. with a translation.
    """
    head = {**HEADINGS, **(headings or {})}
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
             "## " + head["base_model"], _base_model_line(facts.base_model),
             "## " + head["method"].format(method=facts.method_title),
             _table({k: v for k, v in {**facts.method, **facts.adapter_settings}.items() if k != "name"}),
             "## " + head["data"], _table(facts.data, ("", "")),
             "## " + head["training"], _table(facts.training, ("", ""))]
    if facts.final_metrics:
        metrics = {k: f"{v:.4g}" if isinstance(v, float) else v for k, v in facts.final_metrics.items()}
        parts += [head["evaluation"].format(step=facts.final_metrics_step), _table(metrics, ("metric", "value"))]
    if facts.has_loss_plot:
        parts.append(f"![{head['loss_plot']}](loss.png)")
    if facts.labels:
        parts += ["## " + head["labels"], ", ".join(f"`{label}`" for label in facts.labels)]
    parts += _samples(facts, head)
    parts += ["## " + head["use"], _snippet(facts)]
    return "\n\n".join(parts) + "\n"


def _base_model_line(base: str) -> str:
    if _hub_model_id(base):
        return f"[`{base}`](https://huggingface.co/{base})"
    return f"`{base}` (not a Hub id: a local folder or a PEFT Studio preset; load the same base model to use this)"


def _samples(facts: RunFacts, head: dict[str, str]) -> list[str]:
    if facts.sample_images:
        images = "\n\n".join(f"![{prompt}]({path})\n\n*{prompt}*" for path, prompt in facts.sample_images)
        return ["## " + head["samples"], head["samples_made"], images]
    if facts.sample_texts:
        return ["## " + head["samples"], "\n\n".join(f"```text\n{text}\n```" for text in facts.sample_texts)]
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


# -- a run's facts, from its record ----------------------------------------------------------


def card_for_record(record: RunRecord, repo_id: str | None,
                    headings: dict[str, str] | None = None) -> tuple[str, dict[str, bytes]]:
    """README.md text for a run read by ``publish.read_run``, and the files it shows: {"loss.png": ..., ...}.

    ``repo_id`` None: a card for a downloaded folder (the snippets load from a local path); ``headings``: see
    ``run_model_card``.
    """
    from peft_core.presets import base_model_id
    from peft_core.registry import get_method
    from peft_core.tasks import task_classes
    from peft_core.training.run import read_labels

    config, last_eval = record.config, record.evals[-1] if record.evals else None
    extra, images = _sample_files(record)
    eval_losses = {e.step: e.metrics["eval_loss"] for e in record.evals if "eval_loss" in e.metrics}
    if record.losses:
        extra["loss.png"] = loss_curve_png(record.losses, eval_losses)
    facts = RunFacts(
        repo_id=repo_id, task=config.task, auto_class=task_classes()[config.task].auto_class,
        base_model=base_model_id(config.model.name_or_path), method=dict(config.method),
        method_title=get_method(config.method["name"]).title, adapter_settings=_adapter_settings(record),
        data=_data_summary(record), training=_training_summary(record),
        final_metrics=dict(last_eval.metrics) if last_eval else {},
        final_metrics_step=last_eval.step if last_eval else None, has_loss_plot="loss.png" in extra,
        sample_images=images,
        sample_texts=list(record.samples.texts or []) if record.samples and not record.samples.images else [],
        labels=read_labels(record.run_dir),
        instance_prompt=config.dreambooth.instance_prompt if config.task == "dreambooth" else None,
        diffusers_lora=(record.run_dir / DIFFUSERS_LORA_FILE).is_file(),
    )
    return run_model_card(facts, headings), extra


def _sample_files(record: RunRecord) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """The last sample images inside the run folder: {path: bytes}, and [(path, prompt)] for the card."""
    files, shown = {}, []
    if record.samples and record.samples.images:
        prompts = record.samples.texts or []
        for index, rel in enumerate(record.samples.images):
            path = Path(rel)
            if not path.is_absolute() and ".." not in path.parts and (record.run_dir / path).is_file():
                files[path.as_posix()] = (record.run_dir / path).read_bytes()
                shown.append((path.as_posix(), prompts[index] if index < len(prompts) else ""))
    return files, shown


def _adapter_settings(record: RunRecord) -> dict:
    """What the saved adapter config adds to the run's method settings (the target modules it picked)."""
    main = record.run_dir / ("unet" if record.config.task == "dreambooth" else "") / CONFIG_NAME
    if not main.is_file():
        return {}
    saved = json.loads(main.read_text(encoding="utf-8"))
    return {k: saved[k] for k in ("peft_type", "target_modules", "modules_to_save") if saved.get(k)}


def _data_summary(record: RunRecord) -> dict:
    data, task = record.config.data, record.config.task
    if task == "dreambooth":
        settings = record.config.dreambooth
        return {k: v for k, v in {
            "instance images": Path(data.train).name, "images used": record.rows_used,
            "instance prompt": settings.instance_prompt,
            "prior preservation": f"{settings.num_class_images} images of {settings.class_prompt!r}"
            if settings.with_prior_preservation else "off",
            "resolution": settings.resolution,
            "text encoder LoRA": f"r={settings.text_encoder_r}" if settings.train_text_encoder else "not trained",
        }.items() if v is not None}
    summary = {"training data": Path(data.train).name or data.train,
               "format": "auto-detected" if data.format == "auto" else data.format,
               "examples used": record.rows_used,
               "evaluation data": Path(data.eval).name if data.eval else f"{data.eval_fraction:.0%} held out",
               "max length (tokens)": data.max_length if task != "image_cls" else None,
               "packing": data.packing if task == "causal_lm" else None}
    return {k: v for k, v in summary.items() if v is not None}


def _training_summary(record: RunRecord) -> dict:
    training = record.config.training
    last = max(record.losses) if record.losses else None
    summary = {
        "steps": f"{last} of {record.total_steps}" if last is not None else "none",
        "status": {"ok": "finished", "stopped": "stopped early"}.get(record.done.status, record.done.status)
        if record.done else "unknown",
        "final training loss": f"{record.losses[last]:.4g}" if last is not None else None,
        "learning rate": training.learning_rate,
        "batch size": training.batch_size,
        "gradient accumulation": training.gradient_accumulation_steps if training.gradient_accumulation_steps > 1
        else None,
        "scheduler": training.lr_scheduler,
        "warm-up steps": training.warmup_steps or None,
        "weight decay": training.weight_decay or None,
        "optimizer": training.optimizer,
        "precision": f"{record.precision} on {record.device}" if record.precision else training.precision,
        "base weights": record.config.model.quantization if record.config.model.quantization != "none" else None,
        "seed": training.seed,
    }
    return {k: v for k, v in summary.items() if v is not None}


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
