"""Text classification: one label per text; the new head trains in full (modules_to_save)."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peft_core.config import TaskType
from peft_core.data import LabeledTextExample
from peft_core.tasks import classification
from peft_core.tasks.base import Features
from peft_core.tasks.text import TextTask


class SeqClsTask(classification.ConfusionMetrics, TextTask):
    name = "seq_cls"
    task_type = TaskType.SEQ_CLS
    auto_class = "AutoModelForSequenceClassification"
    accepts: ClassVar[tuple[type, ...]] = (LabeledTextExample,)

    def read(self) -> tuple[list[Any], list[Any] | None]:
        train, evaluation = super().read()
        self.labels = sorted({e.label for e in train})
        if len(self.labels) < 2:
            raise ValueError(f"{self.config.data.train} has only the label {self.labels}; a classifier needs two or more")
        unseen = sorted({e.label for e in evaluation or []} - set(self.labels))
        if unseen:
            raise ValueError(f"the eval data has labels the training data lacks: {unseen}")
        self.report.labels = {label: sum(e.label == label for e in train) for label in self.labels}
        return train, evaluation

    def model_kwargs(self) -> dict[str, Any]:
        kwargs = classification.label_maps(self.labels)
        if self.processor is not None and self.processor.pad_token_id is not None:
            kwargs["pad_token_id"] = self.processor.pad_token_id  # decoder models classify the last real token
        return kwargs

    def encode(self, example: LabeledTextExample) -> Features | None:
        ids = self.processor(example.text)["input_ids"]
        if len(ids) > self.config.data.max_length:
            if self.report:
                self.report.truncated += 1
            ids = ids[: self.config.data.max_length]
        return {"input_ids": ids, "label": self.labels.index(example.label)}

    def render(self, features: Features) -> list[tuple[str, bool]]:
        return [(self.decode(features["input_ids"]) + "  →  ", False), (self.labels[features["label"]], True)]

    def collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        pad = self.processor.pad_token_id
        width = max(len(f["input_ids"]) for f in features)
        return {
            "input_ids": torch.tensor([f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in features]),
            "attention_mask": torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]),
            "labels": torch.tensor([f["label"] for f in features]),
        }

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int) -> torch.Tensor:
        return self.loss_and_outputs(model, batch, total_items)[0]

    def loss_and_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int):
        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        return F.cross_entropy(logits.float(), labels, reduction="sum") / max(total_items, 1), logits
