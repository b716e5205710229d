"""The Task interface: user data -> batches -> loss -> evaluation -> predictions.

A task knows its model class, how to read and encode its examples, how to
collate them and what its loss and metric are. It knows nothing about a
particular PEFT method; the trainer knows nothing about a particular task.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from peft_core.config import TaskType
from peft_core.run_config import RunConfig

Features = dict[str, Any]  # one encoded example: lists of ints and the like


@dataclass
class DataReport:
    """What a user sees before training: what was read, what was dropped and why, what the model will see."""

    source: str
    format: str
    rows: int  # rows read from the file
    used: int  # examples that will train
    dropped: dict[str, int] = field(default_factory=dict)  # reason -> count
    dropped_rows: list[tuple[int, str]] = field(default_factory=list)  # the first few, (row, reason)
    labels: dict[str, int] = field(default_factory=dict)  # label -> count, for classification
    max_length: int | None = None
    truncated: int = 0  # examples cut at max_length
    length_histogram: list[tuple[int, int, int]] = field(default_factory=list)  # (low, high, count) in tokens
    examples: list[list[tuple[str, bool]]] = field(default_factory=list)  # segments of text, trained or not
    eval_rows: int = 0
    notes: list[str] = field(default_factory=list)

    def marked(self, index: int) -> str:
        """Example ``index`` as text with the trained part between ⟦ and ⟧."""
        return "".join(f"⟦{text}⟧" if trained else text for text, trained in self.examples[index])


def histogram(lengths: Sequence[int], max_length: int, bins: int = 10) -> list[tuple[int, int, int]]:
    """Counts of lengths in equal bins up to the longest (or max_length), for a bar chart."""
    if not lengths:
        return []
    top = max(max(lengths), max_length)
    width = max(1, math.ceil(top / bins))
    counts = Counter(min(length // width, bins - 1) for length in lengths)
    return [(i * width, (i + 1) * width, counts.get(i, 0)) for i in range(bins)]


class Task:
    """Base class; subclasses fill in the model, the data and the loss."""

    name: ClassVar[str]
    task_type: ClassVar[TaskType]
    auto_class: ClassVar[str]  # the transformers Auto class of its models

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self.processor: Any = None  # tokenizer or image processor, set by load_processor
        self.report: DataReport | None = None

    # -- model -------------------------------------------------------------------
    def load_processor(self) -> Any:
        raise NotImplementedError

    def model_kwargs(self) -> dict[str, Any]:
        """Extra from_pretrained arguments (a classifier's labels, ...)."""
        return {}

    def load_model(self, precision: str, device: torch.device) -> nn.Module:
        import transformers

        from peft_core.models import load_base_model

        settings = self.config.model
        return load_base_model(
            getattr(transformers, self.auto_class),
            settings.name_or_path,
            precision=precision,
            device=device,
            quantization=settings.quantization,
            trust_remote_code=settings.trust_remote_code,
            **self.model_kwargs(),
        )

    def build_model(self, precision: str, device: torch.device) -> nn.Module:
        """The base model with the run's adapter (4/8-bit and checkpointing as configured)."""
        import dataclasses

        from peft_core.kbit import prepare_model_for_kbit_training
        from peft_core.peft_model import get_peft_model
        from peft_core.presets import base_model_id

        base = self.load_model(precision, device)
        settings = self.config.model
        if settings.quantization != "none":
            base = prepare_model_for_kbit_training(base, use_gradient_checkpointing=settings.gradient_checkpointing)
        elif settings.gradient_checkpointing:
            base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        method = dataclasses.replace(self.config.method_config(), base_model_name_or_path=base_model_id(settings.name_or_path))
        return get_peft_model(base, method)

    # -- samples during training -----------------------------------------------------------
    @property
    def sample_every(self) -> int | None:
        """Make samples (``sample``) at step 0 and every this many steps; None: never."""
        return None

    def sample(self, model: nn.Module, step: int, run_dir: str) -> tuple[list[str], list[str]]:
        """(image paths relative to the run folder, their prompts) made by the model as it is now."""
        raise NotImplementedError

    # -- data ----------------------------------------------------------------------
    def read(self) -> tuple[list[Any], list[Any] | None]:
        """Train and eval examples (typed, from peft_core.data); fills ``self.report``'s reading part."""
        raise NotImplementedError

    def encode(self, example: Any) -> Features | None:
        """Model features for one example, or None when nothing would train (e.g. truncated away)."""
        raise NotImplementedError

    def collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def length(self, features: Features) -> int:
        return len(features["input_ids"])

    def rows_for_training(self, features: list[Features], seed: int) -> list[Features]:
        """Hook: a task may pack short examples into rows (causal LM)."""
        return features

    @property
    def groups_by_length(self) -> bool:
        """Whether batches should hold examples of similar length (padded batches waste less)."""
        return True

    def render(self, features: Features) -> list[tuple[str, bool]]:
        """The example as the model sees it: (text, trained?) segments."""
        return []

    # -- loss and metrics --------------------------------------------------------------
    def count_items(self, batch: dict[str, torch.Tensor]) -> int:
        """How many loss terms the batch holds (trained tokens, or examples)."""
        return int(batch["labels"].shape[0])

    def count_tokens(self, features: list[Features]) -> int:
        """Real (non-padding) input tokens of a batch before collation, for tokens per second."""
        return sum(self.length(f) for f in features)

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int) -> torch.Tensor:
        """This batch's share of the mean loss over ``total_items`` items of the optimizer step."""
        raise NotImplementedError

    def metric_state(self) -> dict[str, Any]:
        return {}

    def update_metric(self, state: dict[str, Any], outputs: Any, batch: dict[str, torch.Tensor]) -> None:
        """Accumulate a task metric from one eval batch (the default has none)."""

    def finish_metric(self, state: dict[str, Any]) -> dict[str, float]:
        return {}

    @torch.no_grad()
    def evaluate(
        self,
        model: nn.Module,
        batches: Iterable[dict[str, torch.Tensor]],
        combine: Callable[[dict[str, Any]], dict[str, Any]] = lambda state: state,
    ) -> dict[str, float]:
        """Mean loss over every item, plus the task's metric.

        ``combine`` sums the running totals over processes (the trainer passes
        one under DDP), so the metrics are those of the whole eval set.
        """
        state = {"loss_sum": 0.0, "items": 0, **self.metric_state()}
        for batch in batches:
            items = self.count_items(batch)
            if items == 0:
                continue
            loss, outputs = self.loss_and_outputs(model, batch, items)
            state["loss_sum"] += float(loss) * items
            state["items"] += items
            self.update_metric(state, outputs, batch)
        state = combine(state)
        metrics = {"eval_loss": state["loss_sum"] / state["items"] if state["items"] else float("nan")}
        metrics.update(self.finish_metric(state))
        return metrics

    def eval_details(self) -> dict[str, Any] | None:
        """More than numbers from the last evaluation (the classification tasks: labels and confusion matrix)."""
        return None

    def loss_and_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int) -> tuple[torch.Tensor, Any]:
        return self.loss(model, batch, total_items), None

    # -- the report ------------------------------------------------------------------
    def finish_report(self, encoded: list[Features], shown: int = 3, seed: int = 0) -> None:
        """Add lengths, truncation and rendered examples to ``self.report``."""
        report = self.report
        lengths = [self.length(f) for f in encoded]
        report.used = len(encoded)
        report.length_histogram = histogram(lengths, report.max_length or 0)
        picks = random.Random(seed).sample(range(len(encoded)), min(shown, len(encoded)))
        report.examples = [self.render(encoded[i]) for i in sorted(picks)]


def report_from_loaded(loaded: Any, max_length: int | None) -> DataReport:
    """The reading part of a report from peft_core.data's LoadedText / LoadedImages."""
    reasons = Counter(d.reason for d in loaded.dropped)
    return DataReport(
        source=loaded.source,
        format=getattr(loaded, "format", "images"),
        rows=len(loaded.examples) + len(loaded.dropped),
        used=len(loaded.examples),
        dropped=dict(reasons),
        dropped_rows=[(d.row, d.reason) for d in loaded.dropped[:20]],
        max_length=max_length,
    )
