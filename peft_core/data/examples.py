"""One training example per row of a user's file, typed by what the task learns from it.

All types are frozen (and so hashable), and hold only strings, so they can be
compared in tests, deduplicated and sent to a worker process as they are.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass

ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Message(Mapping):
    """One chat turn; reads like ``{"role": ..., "content": ...}`` (``m["role"]``, ``dict(m)``)."""

    role: str  # one of ROLES
    content: str

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise ValueError(f"role must be one of {', '.join(ROLES)}, got {self.role!r}")
        if not isinstance(self.content, str):
            raise TypeError(f"content must be a string, got {type(self.content).__name__}")

    # Mapping, so chat templates and code written for plain dicts read it unchanged.
    def __getitem__(self, key: str) -> str:
        if key == "role":
            return self.role
        if key == "content":
            return self.content
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(("role", "content"))

    def __len__(self) -> int:
        return 2


@dataclass(frozen=True)
class ChatExample:
    """A conversation; the assistant turns are what the model learns to write."""

    messages: tuple[Message, ...]

    def as_dicts(self) -> list[dict[str, str]]:
        """Plain dicts, the form ``tokenizer.apply_chat_template`` takes."""
        return [dict(message) for message in self.messages]


@dataclass(frozen=True)
class PromptCompletionExample:
    prompt: str
    completion: str  # what the model learns; the prompt is context only


@dataclass(frozen=True)
class TextExample:
    text: str  # raw text for language modelling: every token is learned


@dataclass(frozen=True)
class Seq2SeqExample:
    source: str
    target: str


@dataclass(frozen=True)
class LabeledTextExample:
    text: str
    label: str  # always a string here; the task maps labels to ids


@dataclass(frozen=True)
class TokenTagsExample:
    tokens: tuple[str, ...]
    tags: tuple[str, ...]  # one per token

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.tags):
            raise ValueError(f"tokens and tags must have the same length, got {len(self.tokens)} and {len(self.tags)}")


@dataclass(frozen=True)
class LabeledImageExample:
    path: str  # a readable image inside the data directory
    label: str
