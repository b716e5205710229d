"""Token classification (NER and the like): a tag per word; the first sub-token of each word is trained."""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peft_core.config import TaskType
from peft_core.data import TokenTagsExample
from peft_core.tasks import classification
from peft_core.tasks.base import Features
from peft_core.tasks.text import TextTask

IGNORE = -100


class TokenClsTask(classification.ConfusionMetrics, TextTask):
    name = "token_cls"
    task_type = TaskType.TOKEN_CLS
    auto_class = "AutoModelForTokenClassification"
    accepts: ClassVar[tuple[type, ...]] = (TokenTagsExample,)

    def read(self) -> tuple[list[Any], list[Any] | None]:
        train, evaluation = super().read()
        self.labels = sorted({tag for e in train for tag in e.tags})
        unseen = sorted({tag for e in evaluation or [] for tag in e.tags} - set(self.labels))
        if unseen:
            raise ValueError(f"the eval data has tags the training data lacks: {unseen}")
        self.report.labels = {tag: sum(e.tags.count(tag) for e in train) for tag in self.labels}
        return train, evaluation

    def model_kwargs(self) -> dict[str, Any]:
        return classification.label_maps(self.labels)

    def encode(self, example: TokenTagsExample) -> Features | None:
        encoded = self.processor(list(example.tokens), is_split_into_words=True)
        labels, previous = [], None
        for word in encoded.word_ids():
            labels.append(IGNORE if word is None or word == previous else self.labels.index(example.tags[word]))
            previous = word
        ids = encoded["input_ids"]
        limit = self.config.data.max_length
        if len(ids) > limit:
            if self.report:
                self.report.truncated += 1
            ids, labels = ids[:limit], labels[:limit]
        if all(label == IGNORE for label in labels):
            return None
        return {"input_ids": ids, "labels": labels}

    def render(self, features: Features) -> list[tuple[str, bool]]:
        return self.render_tokens(features["input_ids"], [label != IGNORE for label in features["labels"]])

    def collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        pad = self.processor.pad_token_id
        width = max(len(f["input_ids"]) for f in features)

        def padded(key: str, value: int) -> torch.Tensor:
            return torch.tensor([f[key] + [value] * (width - len(f[key])) for f in features])

        mask = torch.tensor([[1] * len(f["input_ids"]) + [0] * (width - len(f["input_ids"])) for f in features])
        return {"input_ids": padded("input_ids", pad), "attention_mask": mask, "labels": padded("labels", IGNORE)}

    def count_items(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int) -> torch.Tensor:
        return self.loss_and_outputs(model, batch, total_items)[0]

    def loss_and_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int):
        labels = batch["labels"]
        logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        logits = logits[:, -labels.shape[1]:]
        summed = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE, reduction="sum")
        return summed / max(total_items, 1), logits
