"""What the text tasks share: reading a text file into typed examples, the eval split, the tokenizer."""

from __future__ import annotations

import random
from typing import Any, ClassVar

from peft_core.data import load_text
from peft_core.tasks.base import Task, report_from_loaded


def split_eval(examples: list[Any], fraction: float, seed: int) -> tuple[list[Any], list[Any]]:
    """Hold out ``fraction`` of the examples (at least one, never all) with a seeded shuffle."""
    if fraction <= 0 or len(examples) < 2:
        return examples, []
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    count = min(len(examples) - 1, max(1, round(len(examples) * fraction)))
    held = set(order[:count])
    return [e for i, e in enumerate(examples) if i not in held], [e for i, e in enumerate(examples) if i in held]


class TextTask(Task):
    """A task whose data is one text file (CSV, JSON, JSONL, Parquet, TXT)."""

    accepts: ClassVar[tuple[type, ...]]  # the example types of peft_core.data it can train on

    def load_processor(self) -> Any:
        from transformers import AutoTokenizer

        from peft_core.models import check_model_name, model_load_error
        from peft_core.presets import resolve_model

        settings = self.config.model
        source = resolve_model(check_model_name(settings.name_or_path))
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=settings.trust_remote_code)
        except OSError as exc:
            raise model_load_error(settings.name_or_path, exc) from None
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
        self.processor = tokenizer
        return tokenizer

    def read(self) -> tuple[list[Any], list[Any] | None]:
        data = self.config.data
        loaded = load_text(data.train, format=data.format, columns=data.columns or None)
        self._check_types(loaded.examples, data.train, loaded.format)
        self.report = report_from_loaded(loaded, data.max_length)
        train = loaded.examples
        if data.eval:
            evaluation = load_text(data.eval, format=loaded.format, columns=data.columns or None).examples
            self._check_types(evaluation, data.eval, loaded.format)
        else:
            train, evaluation = split_eval(train, data.eval_fraction, self.config.training.seed)
        self.report.eval_rows = len(evaluation)
        return train, evaluation or None

    def _check_types(self, examples: list[Any], path: str, fmt: str) -> None:
        wrong = [e for e in examples if not isinstance(e, self.accepts)]
        if wrong:
            fits = ", ".join(sorted(t.__name__.replace("Example", "") for t in self.accepts))
            raise ValueError(
                f"{path} holds {fmt} data, which task {self.name} cannot train on; it needs: {fits}. "
                f"Choose another task, or another format/column mapping"
            )

    def decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids, skip_special_tokens=False)

    def render_tokens(self, ids: list[int], trained: list[bool]) -> list[tuple[str, bool]]:
        """Join runs of tokens that are all trained or all not into text segments."""
        segments: list[tuple[str, bool]] = []
        start = 0
        for i in range(1, len(ids) + 1):
            if i == len(ids) or trained[i] != trained[start]:
                segments.append((self.decode(ids[start:i]), trained[start]))
                start = i
        return segments
