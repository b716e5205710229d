"""What the classification tasks share: the label list, accuracy, a confusion matrix."""

from __future__ import annotations

from typing import Any

import torch


def label_maps(labels: list[str]) -> dict[str, Any]:
    """from_pretrained arguments that give a new head one output per label."""
    return {
        "num_labels": len(labels),
        "id2label": dict(enumerate(labels)),
        "label2id": {label: i for i, label in enumerate(labels)},
        "ignore_mismatched_sizes": True,
    }


def confusion_state(num_labels: int) -> dict[str, Any]:
    return {"matrix": torch.zeros(num_labels, num_labels, dtype=torch.long)}


def add_to_confusion(state: dict[str, Any], predicted: torch.Tensor, truth: torch.Tensor) -> None:
    keep = truth >= 0
    for t, p in zip(truth[keep].tolist(), predicted[keep].tolist(), strict=True):
        state["matrix"][t, p] += 1


def accuracy_from(state: dict[str, Any]) -> dict[str, float]:
    matrix = state["matrix"]
    total = int(matrix.sum())
    if not total:
        return {}
    return {"accuracy": float(matrix.diag().sum()) / total}


def details(labels: list[str], confusion: list[list[int]] | None) -> dict[str, Any] | None:
    """For the EvalEvent: rows are the true labels, columns the predicted ones."""
    return None if confusion is None else {"labels": list(labels), "confusion": confusion}


class ConfusionMetrics:
    """Accuracy and a confusion matrix over ``self.labels``, for a task whose outputs are logits per label."""

    labels: list[str]
    confusion: list[list[int]] | None = None

    def metric_state(self) -> dict[str, Any]:
        return confusion_state(len(self.labels))

    def update_metric(self, state: dict[str, Any], outputs: Any, batch: dict[str, torch.Tensor]) -> None:
        add_to_confusion(state, outputs.argmax(-1).flatten(), batch["labels"].flatten())

    def finish_metric(self, state: dict[str, Any]) -> dict[str, float]:
        self.confusion = state["matrix"].tolist()
        return accuracy_from(state)

    def eval_details(self) -> dict[str, Any] | None:
        return details(self.labels, self.confusion)
