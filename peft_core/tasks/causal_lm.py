"""Causal language modelling: instructions, chats, prompt/completion pairs and raw text.

Conversations go through the tokenizer's own chat template; only the
assistant's turns are trained (the prompt tokens are masked from the loss).
Without a template, instructions use a plain "### Instruction / ### Response"
layout. With ``packing`` several short examples share one row: each restarts
its position ids, and transformers then lets no token attend across examples,
so the loss equals the unpacked loss while no compute goes to padding.
"""

from __future__ import annotations

import math
import random
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peft_core.config import TaskType
from peft_core.data import ChatExample, PromptCompletionExample, TextExample
from peft_core.tasks.base import Features
from peft_core.tasks.text import TextTask

IGNORE = -100
PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


class CausalLMTask(TextTask):
    name = "causal_lm"
    task_type = TaskType.CAUSAL_LM
    auto_class = "AutoModelForCausalLM"
    accepts: ClassVar[tuple[type, ...]] = (ChatExample, PromptCompletionExample, TextExample)

    # -- encoding ------------------------------------------------------------------
    def encode(self, example: Any) -> Features | None:
        tokenizer = self.processor
        if isinstance(example, TextExample):
            ids = tokenizer(example.text, add_special_tokens=False)["input_ids"] + self._eos()
            trained = [True] * len(ids)
        elif isinstance(example, PromptCompletionExample):
            ids, trained = self._pair(example.prompt, example.completion)
        elif tokenizer.chat_template:
            ids, trained = self._chat(list(example.messages))
        else:
            ids, trained = self._plain_chat(list(example.messages))
        return self._finish(ids, trained)

    def _eos(self) -> list[int]:
        eos = self.processor.eos_token_id
        return [eos] if eos is not None else []

    def _pair(self, prompt: str, answer: str) -> tuple[list[int], list[bool]]:
        tokenizer = self.processor
        head = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tail = tokenizer(answer, add_special_tokens=False)["input_ids"] + self._eos()
        return head + tail, [False] * len(head) + [True] * len(tail)

    def _plain_chat(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """No chat template: one instruction/response pair per assistant turn."""
        ids: list[int] = []
        trained: list[bool] = []
        context: list[str] = []
        for message in messages:
            if message["role"] == "assistant":
                prompt = PLAIN_TEMPLATE.format(prompt="\n\n".join(context))
                part, mask = self._pair(prompt, message["content"])
                ids += part
                trained += mask
                context = []
            else:
                context.append(message["content"])
        return ids, trained

    def _chat(self, messages: list[dict]) -> tuple[list[int], list[bool]]:
        """Render with the chat template; mark the characters of each assistant turn, then the tokens."""
        tokenizer = self.processor
        text = tokenizer.apply_chat_template(messages, tokenize=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = len(tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True))
            end = len(tokenizer.apply_chat_template(messages[: i + 1], tokenize=False))
            if text[:end] != tokenizer.apply_chat_template(messages[: i + 1], tokenize=False):
                raise ValueError("the tokenizer's chat template renders a conversation differently as it grows; "
                                 "use prompt/completion data instead")
            spans.append((start, end))
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        trained = [any(s <= a < e for s, e in spans) for a, _ in encoded["offset_mapping"]]
        return encoded["input_ids"], trained

    def _finish(self, ids: list[int], trained: list[bool]) -> Features | None:
        limit = self.config.data.max_length
        if len(ids) > limit:
            self.report.truncated += 1 if self.report else 0
            ids, trained = ids[:limit], trained[:limit]
        if not any(trained[1:]):  # the first token is never predicted
            return None
        return {"input_ids": ids, "labels": [i if t else IGNORE for i, t in zip(ids, trained, strict=True)]}

    def render(self, features: Features) -> list[tuple[str, bool]]:
        return self.render_tokens(features["input_ids"], [label != IGNORE for label in features["labels"]])

    # -- packing ---------------------------------------------------------------------
    def rows_for_training(self, features: list[Features], seed: int) -> list[Features]:
        if not self.config.data.packing:
            return features
        return pack(features, self.config.data.max_length, seed)

    # -- batches -----------------------------------------------------------------------
    def collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        pad = self.processor.pad_token_id
        width = max(len(f["input_ids"]) for f in features)
        batch = {
            "input_ids": _pad([f["input_ids"] for f in features], width, pad),
            "labels": _pad([f["labels"] for f in features], width, IGNORE),
        }
        if "position_ids" in features[0]:  # packed rows: no mask, the position ids separate the examples
            batch["position_ids"] = _pad([f["position_ids"] for f in features], width, 0)
        else:
            batch["attention_mask"] = _pad([[1] * len(f["input_ids"]) for f in features], width, 0)
        return batch

    def count_items(self, batch: dict[str, torch.Tensor]) -> int:
        return int((batch["labels"][:, 1:] != IGNORE).sum())

    def loss(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int) -> torch.Tensor:
        return self.loss_and_outputs(model, batch, total_items)[0]

    def evaluate(self, model: nn.Module, batches, combine=lambda state: state) -> dict[str, float]:
        metrics = super().evaluate(model, batches, combine)
        metrics["perplexity"] = math.exp(min(metrics["eval_loss"], 50.0))
        return metrics

    def loss_and_outputs(self, model: nn.Module, batch: dict[str, torch.Tensor], total_items: int):
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, use_cache=False).logits
        logits = logits[:, -labels.shape[1]:]  # virtual tokens of prompt methods come first
        # Position t predicts token t+1: shift the labels, not the logits (slicing the logits would copy
        # all of them, batch x length x vocabulary floats). Sum now, divide by the step's item count.
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
        summed = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                 ignore_index=IGNORE, reduction="sum")
        return summed / max(total_items, 1), logits



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
    packed = []
    for row in rows:
        ids, labels, positions = [], [], []
        for f in row:
            ids += f["input_ids"]
            # the first token of an example is never predicted (as without packing)
            labels += [IGNORE] + f["labels"][1:]
            positions += list(range(len(f["input_ids"])))
        packed.append({"input_ids": ids, "labels": labels, "position_ids": positions})
    random.Random(seed + 1).shuffle(packed)
    return packed


def _pad(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)
