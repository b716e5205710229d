"""Rows that hold several examples end to end, and what a causal LM must support for them.

A packed row restarts its ``position_ids`` at every example; transformers'
attention masks then keep each token inside its own example, so the loss of
a packed row is the loss of its examples trained apart, with nothing spent
on padding. Two ways use it:

- ``pack`` (``data.packing``): the whole training set is packed once into
  rows of ``max_length`` tokens, so an epoch has fewer, fuller steps.
- ``flatten`` (``data.padding_free``): each batch's own examples are put end
  to end in a few rows of about ``max_length`` tokens, so the steps are those
  of padded training (the same examples, the same loss) without the padding.

Not every model honours restarting position ids, and prompt methods put
their virtual tokens once per row; ``packing_problem`` finds out by running
the model on a tiny packed row against the same examples alone.
"""

from __future__ import annotations

import inspect
import math
import random
import sys

import torch
from torch import nn

from peft_core.errors import RunError
from peft_core.tasks.base import Features

IGNORE = -100


def join(examples: list[Features]) -> Features:
    """One row from several examples; each example's first token is never predicted (as when apart)."""
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []
    for f in examples:
        ids += f["input_ids"]
        labels += [IGNORE] + f["labels"][1:]
        positions += list(range(len(f["input_ids"])))
    return {"input_ids": ids, "labels": labels, "position_ids": positions}


def pack(features: list[Features], max_length: int, seed: int) -> list[Features]:
    """First-fit packing of examples (in a seeded order) into rows of at most ``max_length`` tokens."""
    order = list(range(len(features)))
    random.Random(seed).shuffle(order)
    rows: list[list[Features]] = []
    room: list[int] = []
    for index in sorted(order, key=lambda i: -len(features[i]["input_ids"])):
        size = len(features[index]["input_ids"])
        for r, free in enumerate(room):
            if size <= free:
                rows[r].append(features[index])
                room[r] -= size
                break
        else:
            rows.append([features[index]])
            room.append(max_length - size)
    packed = [join(row) for row in rows]
    random.Random(seed + 1).shuffle(packed)
    return packed


def flatten(features: list[Features], max_length: int) -> list[Features]:
    """A batch as ``ceil(tokens / max_length)`` packed rows of near-equal length (packed rows are left as they are).

    One row per ``max_length`` tokens keeps attention as cheap as in padded
    batches (a row's cost grows with the square of its length); the longest
    examples go first, each into the row with the fewest tokens so far, so the
    rows come out nearly equal and little padding is left.
    """
    if not features or "position_ids" in features[0]:
        return features
    total = sum(len(f["input_ids"]) for f in features)
    rows: list[list[Features]] = [[] for _ in range(max(1, math.ceil(total / max_length)))]
    sizes = [0] * len(rows)
    for f in sorted(features, key=lambda f: -len(f["input_ids"])):
        emptiest = sizes.index(min(sizes))
        rows[emptiest].append(f)
        sizes[emptiest] += len(f["input_ids"])
    return [join(row) for row in rows if row]


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DDP / FSDP / DeepSpeed wrappers (accelerate's own unwrapping)."""
    from accelerate.utils import extract_model_from_parallel

    return extract_model_from_parallel(model)


def _uses_prompt_method(model: nn.Module) -> bool:
    configs = getattr(model, "peft_config", None) or {}
    return any(getattr(c, "is_prompt_learning", False) for c in configs.values())


def packing_problem(model: nn.Module) -> RunError | None:
    """Why packed rows would not give the loss of their examples apart with this model (to raise or log); None if they do."""
    model = _unwrap(model)
    if _uses_prompt_method(model):
        return RunError("packing_prompt_method")
    device = next(model.parameters()).device
    first, second = list(range(3, 9)), list(range(11, 15))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            alone = model(input_ids=torch.tensor([second], device=device), use_cache=False).logits[0].float()
            row = torch.tensor([first + second], device=device)
            positions = torch.tensor([list(range(len(first))) + list(range(len(second)))], device=device)
            packed = model(input_ids=row, position_ids=positions, use_cache=False).logits[0, len(first):].float()
    finally:
        model.train(was_training)
    scale = float(alone.abs().max()) + 1e-6
    if float((alone - packed).abs().max()) > 1e-2 * scale:
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        return RunError("packing_attends_across", model=type(base).__name__)
    return None


def keeps_selected_logits(model: nn.Module) -> bool:
    """Whether the model can compute logits at chosen positions only (transformers' ``logits_to_keep`` mask)."""
    model = _unwrap(model)
    if _uses_prompt_method(model):  # their virtual tokens shift the positions
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if "logits_to_keep" not in inspect.signature(base.forward).parameters:
        return False
    # models whose forward slices through transformers' helper accept a (batch, length) boolean mask
    return hasattr(sys.modules.get(type(base).__module__), "slice_logits_to_keep")
