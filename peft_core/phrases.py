"""Text the engine shows a person that is not an error (advice, a data report's reasons), with a code and params.

A `Phrase` is the English string itself (the CLI prints it, JSON writes it, tests
compare it), and also carries a stable ``code`` and the ``params`` its template is
filled from, so the Studio can say it in another language: its table key is
``<prefix>.<code>`` (the subclass names ``prefix`` and its ``messages``). A
param may be a Phrase too (a list of them is joined with "; "), and ``to_dict``
keeps the whole thing for a log that outlives the process.
"""

from __future__ import annotations

from typing import Any, ClassVar, Self


class Phrase(str):
    """English text with a stable code and params; subclasses name their templates and key prefix."""

    messages: ClassVar[dict[str, str]] = {}
    prefix: ClassVar[str] = ""

    code: str
    params: dict[str, Any]

    def __new__(cls, code: str, **params: Any) -> Self:
        if code not in cls.messages:
            raise KeyError(f"no message for {cls.__name__} code '{code}'; add one to its messages")
        self = super().__new__(cls, cls.messages[code].format(**{k: _joined(v) for k, v in params.items()}))
        self.code, self.params = code, params
        return self

    @property
    def key(self) -> str:
        return f"{self.prefix}.{self.code}"

    def to_dict(self) -> dict[str, Any]:
        """{"key": ..., "params": ...}, nested phrases as dicts too: what a JSON log keeps."""
        return {"key": self.key, "params": {k: _plain(v) for k, v in self.params.items()}}

    def __reduce__(self):  # pickles as code + params (str's own pickling would call __new__ with the text)
        return (_rebuild, (type(self), self.code, self.params))


def _rebuild(cls: type[Phrase], code: str, params: dict) -> Phrase:
    return cls(code, **params)


def _joined(value: Any) -> Any:
    return "; ".join(map(str, value)) if isinstance(value, list) else value


def _plain(value: Any) -> Any:
    if isinstance(value, Phrase):
        return value.to_dict()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value
