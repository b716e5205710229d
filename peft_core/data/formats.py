"""The text dataset formats: which columns each needs, and how a row becomes an example.

A converter takes one record (keys already renamed to the format's column
names) and returns an example, or raises `Drop` with a reason a person can act
on. Reasons are the same words for the same problem, so they can be counted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

from peft_core.data.errors import DataError, short_list
from peft_core.data.examples import (
    ChatExample,
    LabeledTextExample,
    Message,
    PromptCompletionExample,
    Seq2SeqExample,
    TextExample,
    TokenTagsExample,
)
from peft_core.data.reasons import Reason, kind_of


class Drop(Exception):
    """This row cannot be used; ``reason`` (a `Reason`, its English the message) says why."""

    def __init__(self, code: str, **params: object) -> None:
        self.reason = Reason(code, **params)
        super().__init__(str(self.reason))


@dataclass(frozen=True)
class TextFormat:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    convert: Callable[[dict], object]
    labels: Callable[[object], list[str]] | None = None  # the label strings an example holds, checked for mixing


# Chat roles as ShareGPT and other exports spell them, to the three roles a chat template knows.
_ROLES = {
    "system": "system",
    "user": "user",
    "human": "user",
    "assistant": "assistant",
    "gpt": "assistant",
    "model": "assistant",
}
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def text_field(record: dict, key: str, allow_empty: bool = False) -> str:
    """The string in ``record[key]``; missing, non-string or (unless allowed) blank values drop the row."""
    if key not in record:
        raise Drop("missing_field", key=key)
    value = record[key]
    if value is None:  # null in JSON, a missing value in Parquet
        raise Drop("empty_field", key=key)
    if not isinstance(value, str):
        raise Drop("not_text", key=key, kind=kind_of(value))
    if not allow_empty and not value.strip():
        raise Drop("empty_field", key=key)
    return value


def label_text(value: object, key: str) -> str:
    """A label as the string the task sees: 1 -> '1', 2.0 -> '2', ' pos ' -> 'pos'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Drop("not_finite", key=key)
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, str):
        if not value.strip():
            raise Drop("empty_field", key=key)
        return value.strip()
    raise Drop("not_label", key=key, kind=kind_of(value))


def is_number_label(label: str) -> bool:
    return bool(_NUMBER.fullmatch(label))


class LabelKinds:
    """Stops at the first label that is a word when earlier ones were numbers, or the reverse."""

    def __init__(self, file: str, unit: str) -> None:
        self.file, self.unit = file, unit
        self.first: dict[bool, tuple[str, int]] = {}  # is a number -> (label, row)

    def add(self, labels: list[str], row: int) -> None:
        for label in labels:
            self.first.setdefault(is_number_label(label), (label, row))
            if len(self.first) == 2:
                shown = [f"{label!r} on {self.unit} {where}" for label, where in self.first.values()]
                raise DataError("mixed_labels", file=self.file, examples=short_list(shown))


def _chat(turns: object, key: str, system: str = "") -> ChatExample:
    if not isinstance(turns, list):
        raise Drop("not_message_list", key=key, kind=kind_of(turns))
    if not turns:
        raise Drop("empty_list", key=key)
    messages = []
    for turn in turns:
        if not isinstance(turn, dict):
            raise Drop("message_not_object", key=key, kind=kind_of(turn))
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        if role not in _ROLES:
            raise Drop("unknown_role", role=repr(role))
        if not isinstance(content, str):
            raise Drop("content_not_text", kind=kind_of(content))
        messages.append(Message(_ROLES[role], content))
    if system.strip() and messages[0].role != "system":
        messages.insert(0, Message("system", system))
    if not any(message.role == "assistant" and message.content.strip() for message in messages):
        raise Drop("no_assistant_turn")
    return ChatExample(tuple(messages))


def _alpaca(record: dict) -> ChatExample:
    instruction = text_field(record, "instruction")
    extra = record.get("input")
    if extra is not None and not isinstance(extra, str):
        raise Drop("not_text", key="input", kind=kind_of(extra))
    output = text_field(record, "output")
    system = record.get("system") if isinstance(record.get("system"), str) else ""
    turns = [{"role": "system", "content": system}] if system.strip() else []
    for pair in record.get("history") or []:  # earlier [question, answer] turns, as LLaMA-Factory writes them
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(part, str) for part in pair)):
            raise Drop("bad_history")
        turns += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    prompt = f"{instruction}\n\n{extra}" if extra and extra.strip() else instruction
    turns += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return _chat(turns, "instruction")


def _messages(record: dict) -> ChatExample:
    if "messages" not in record:
        raise Drop("missing_field", key="messages")
    return _chat(record["messages"], "messages")


def _sharegpt(record: dict) -> ChatExample:
    if "conversations" not in record:
        raise Drop("missing_field", key="conversations")
    system = record.get("system") if isinstance(record.get("system"), str) else ""
    return _chat(record["conversations"], "conversations", system)


def _prompt_completion(record: dict) -> PromptCompletionExample:
    return PromptCompletionExample(text_field(record, "prompt", allow_empty=True), text_field(record, "completion"))


def _text(record: dict) -> TextExample:
    return TextExample(text_field(record, "text"))


def _classification(record: dict) -> LabeledTextExample:
    if record.get("label") is None:
        raise Drop("empty_field", key="label")
    return LabeledTextExample(text_field(record, "text"), label_text(record["label"], "label"))


def _word_list(record: dict, key: str, convert: Callable[[object, str], str]) -> tuple[str, ...]:
    value = record.get(key)
    if not isinstance(value, list):
        raise Drop("not_list", key=key, kind=kind_of(value))
    if not value:
        raise Drop("empty_list", key=key)
    return tuple(convert(item, key) for item in value)


def _token(value: object, key: str) -> str:
    if not isinstance(value, str):
        raise Drop("token_not_text", key=key, kind=kind_of(value))
    if not value.strip():
        raise Drop("empty_token", key=key)
    return value


def _token_classification(record: dict) -> TokenTagsExample:
    tokens = _word_list(record, "tokens", _token)
    tags = _word_list(record, "tags", label_text)
    if len(tokens) != len(tags):
        raise Drop("tokens_tags_lengths")
    return TokenTagsExample(tokens, tags)


def _seq2seq(record: dict) -> Seq2SeqExample:
    return Seq2SeqExample(text_field(record, "source"), text_field(record, "target"))


FORMATS: dict[str, TextFormat] = {
    spec.name: spec
    for spec in (
        TextFormat("alpaca", ("instruction", "output"), ("input", "system", "history"), _alpaca),
        TextFormat("messages", ("messages",), (), _messages),
        TextFormat("sharegpt", ("conversations",), ("system",), _sharegpt),
        TextFormat("prompt_completion", ("prompt", "completion"), (), _prompt_completion),
        TextFormat("text", ("text",), (), _text),
        TextFormat("classification", ("text", "label"), (), _classification, lambda ex: [ex.label]),
        TextFormat("token_classification", ("tokens", "tags"), (), _token_classification, lambda ex: list(ex.tags)),
        TextFormat("seq2seq", ("source", "target"), (), _seq2seq),
    )
}
