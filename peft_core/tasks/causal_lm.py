"""Causal language modelling: instructions, chats, prompt/completion pairs and raw text.

Conversations go through the tokenizer's own chat template; only the
assistant's turns are trained (the prompt tokens are masked from the loss).
Without a template, instructions use a plain "### Instruction / ### Response"
layout. Batches are padding-free by default (``data.padding_free``): each
batch's examples go end to end in rows of about ``max_length`` tokens whose
position ids restart at each example (``tasks/packed.py``), so the loss is that of padded batches with no
compute on padding; ``data.packing`` packs the whole set into full rows
instead. The vocabulary projection runs only at trained positions (the
model's ``logits_to_keep``), the same loss without the prompt's logits.
"""

from __future__ import annotations

import logging
import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peft_core.config import TaskType
from peft_core.data import ChatExample, PromptCompletionExample, TextExample
from peft_core.tasks.base import Features
from peft_core.tasks.packed import IGNORE, flatten, keeps_selected_logits, pack, packing_problem
from peft_core.tasks.text import TextTask

logger = logging.getLogger(__name__)
PLAIN_TEMPLATE = "### Instruction:\n{prompt}\n\n### Response:\n"


class CausalLMTask(TextTask):
    name = "causal_lm"
    task_type = TaskType.CAUSAL_LM
    auto_class = "AutoModelForCausalLM"
    accepts: ClassVar[tuple[type, ...]] = (ChatExample, PromptCompletionExample, TextExample)
    flat_batches = False  # set by build_model: each batch becomes a few packed rows (data.padding_free)
    selected_logits: bool | None = None  # logits only at trained positions; found on the first loss

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

    def build_model(self, precision: str, device: torch.device) -> nn.Module:
        """The model with its adapter; then whether it can take packed rows (``data.packing``, ``padding_free``)."""
        model = super().build_model(precision, device)
        data = self.config.data
        self.flat_batches = False
        if data.packing or data.padding_free:
            problem = packing_problem(model)
            if problem is not None and data.packing:
                raise problem
            if problem is not None:
                logger.info("padded batches instead of padding-free ones (%s)", problem)
            self.flat_batches = data.padding_free and not data.packing and problem is None
        return model

    @property
    def groups_by_length(self) -> bool:
        return not self.flat_batches  # a flattened batch has no padding, whatever its lengths

    # -- batches -----------------------------------------------------------------------
    def collate(self, features: list[Features]) -> dict[str, torch.Tensor]:
        if self.flat_batches:
            features = flatten(features, self.config.data.max_length)
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
        # Position t predicts token t+1: shift the labels, not the logits (slicing the logits would copy
        # all of them, batch x length x vocabulary floats). Sum now, divide by the step's item count.
        targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE)
        if self.selected_logits is None:
            self.selected_logits = keeps_selected_logits(model)
        if self.selected_logits:  # the vocabulary projection only where a token is trained
            trained = targets != IGNORE
            logits = model(**inputs, use_cache=False, logits_to_keep=trained).logits  # (trained tokens, vocab)
            targets = targets[trained]
        else:
            logits = model(**inputs, use_cache=False).logits
            logits = logits[:, -labels.shape[1]:]  # virtual tokens of prompt methods come first
        summed = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1),
                                 ignore_index=IGNORE, reduction="sum")
        return summed / max(total_items, 1), logits



def _pad(rows: list[list[int]], width: int, value: int) -> torch.Tensor:
    return torch.tensor([row + [value] * (width - len(row)) for row in rows], dtype=torch.long)
