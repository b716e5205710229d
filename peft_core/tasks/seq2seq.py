"""Sequence-to-sequence generation (T5, BART, ...): source text in, target text out."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peft_core.config import TaskType
from peft_core.data import PromptCompletionExample, Seq2SeqExample
from peft_core.tasks.base import Features
from peft_core.tasks.text import TextTask

IGNORE = -100


class Seq2SeqTask(TextTask):
    name = "seq2seq"
    task_type = TaskType.SEQ_2_SEQ_LM
    auto_class = "AutoModelForSeq2SeqLM"
    accepts: ClassVar[tuple[type, ...]] = (Seq2SeqExample, PromptCompletionExample)

    def encode(self, example: Any) -> Features | None:
        source, target = (example.source, example.target) if isinstance(example, Seq2SeqExample) else (
            example.prompt, example.completion)
        tokenizer = self.processor
        limit = self.config.data.max_length
        ids = tokenizer(source)["input_ids"]
        labels = tokenizer(text_target=target)["input_ids"]
        if len(ids) > limit or len(labels) > limit:
            if self.report:
                self.report.truncated += 1
            ids, labels = ids[:limit], labels[:limit]
        if not labels or not ids:
            return None
        return {"input_ids": ids, "labels": labels}

    def length(self, features: Features) -> int:
        return len(features["input_ids"]) + len(features["labels"])

    def render(self, features: Features) -> list[tuple[str, bool]]:
        return [(self.decode(features["input_ids"]) + "  →  ", False), (self.decode(features["labels"]), True)]

    def collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        pad = self.processor.pad_token_id
        width = max(len(f["input_ids"]) for f in features)
        target = max(len(f["labels"]) for f in features)
        ids = [f["input_ids"] + [pad] * (width - len(f["input_ids"])) for f in features]
        mask = [[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features]
        labels = [f["labels"] + [IGNORE] * (target - len(f["labels"])) for f in features]
        return {"input_ids": torch.tensor(ids), "attention_mask": torch.tensor(mask), "labels": torch.tensor(labels)}

    def count_items(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int) -> torch.Tensor:
        return self.loss_and_outputs(model, batch, total_items)[0]

    def loss_and_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int):
        labels = batch["labels"]
        # the model shifts the labels right into decoder inputs itself
        logits = model(**batch, use_cache=False).logits
        logits = logits[:, -labels.shape[1]:]
        summed = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        return summed / max(total_items, 1), logits

    def metric_state(self) -> dict[str, Any]:
        return {"right": 0, "total": 0}

    def update_metric(self, state: dict[str, Any], outputs: Any, batch: dict[str, torch.Tensor]) -> None:
        labels = batch["labels"]
        keep = labels != IGNORE
        state["right"] += int((outputs.argmax(-1)[keep] == labels[keep]).sum())
        state["total"] += int(keep.sum())

    def finish_metric(self, state: dict[str, Any]) -> dict[str, float]:
        return {"token_accuracy": state["right"] / state["total"]} if state["total"] else {}
