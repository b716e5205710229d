"""Image classification (ViT, Swin, ...): the model's own image processor; the new head trains in full."""

from __future__ import annotations

import os
import random
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch import nn

from peft_core.config import TaskType
from peft_core.data import load_images
from peft_core.tasks import classification
from peft_core.tasks.base import Features, Task, report_from_loaded


class ImageClsTask(classification.ConfusionMetrics, Task):
    name = "image_cls"
    task_type = TaskType.IMAGE_CLS
    auto_class = "AutoModelForImageClassification"

    def load_processor(self) -> Any:
        from transformers import AutoImageProcessor

        from peft_core.models import check_model_name, model_load_error
        from peft_core.presets import resolve_model

        source = resolve_model(check_model_name(self.config.model.name_or_path))
        try:
            self.processor = AutoImageProcessor.from_pretrained(source)
        except OSError as exc:
            raise model_load_error(self.config.model.name_or_path, exc) from None
        return self.processor

    def read(self) -> tuple[list[Any], list[Any] | None]:
        data = self.config.data
        extract_to = os.path.join(self.config.training.output_dir, "data")
        loaded = load_images(data.train, extract_to=os.path.join(extract_to, "train"))
        self.report = report_from_loaded(loaded, None)
        self.labels = list(loaded.labels)
        train = loaded.examples
        if data.eval:
            evaluation = load_images(data.eval, extract_to=os.path.join(extract_to, "eval")).examples
            unseen = sorted({e.label for e in evaluation} - set(self.labels))
            if unseen:
                raise ValueError(f"the eval images have classes the training images lack: {unseen}")
        else:
            train, evaluation = _split_per_class(train, data.eval_fraction, self.config.training.seed)
        self.report.labels = {label: sum(e.label == label for e in train) for label in self.labels}
        self.report.eval_rows = len(evaluation)
        return train, evaluation or None

    def model_kwargs(self) -> dict[str, Any]:
        return classification.label_maps(self.labels)

    def encode(self, example: Any) -> Features | None:
        return {"path": example.path, "label": self.labels.index(example.label)}

    def length(self, features: Features) -> int:
        return 1

    def render(self, features: Features) -> list[tuple[str, bool]]:
        return [(os.path.basename(features["path"]) + "  →  ", False), (self.labels[features["label"]], True)]

    def collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        images = []
        for f in features:
            with Image.open(f["path"]) as image:
                images.append(ImageOps.exif_transpose(image).convert("RGB"))
        pixels = self.processor(images=images, return_tensors="pt")["pixel_values"]
        return {"pixel_values": pixels, "labels": torch.tensor([f["label"] for f in features])}

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int) -> torch.Tensor:
        return self.loss_and_outputs(model, batch, total_items)[0]

    def loss_and_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int):
        logits = model(pixel_values=batch["pixel_values"]).logits
        return F.cross_entropy(logits.float(), batch["labels"], reduction="sum") / max(total_items, 1), logits



def _split_per_class(examples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Hold out ``fraction`` of each class (at least one image of a class that has two or more)."""
    if fraction <= 0:
        return examples, []
    rng = random.Random(seed)
    held: set[int] = set()
    for label in sorted({e.label for e in examples}):
        indices = [i for i, e in enumerate(examples) if e.label == label]
        rng.shuffle(indices)
        if len(indices) >= 2:
            held.update(indices[: max(1, round(len(indices) * fraction))])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]
