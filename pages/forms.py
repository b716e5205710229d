"""Forms built from a method's config dataclass.

Every field a form shows comes from the config (its type, default, choices
and ``help`` text), so a new method needs no UI code. Numbers are number
widgets; lists of names are comma-separated text.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from typing import Any

import gradio as gr

from pages.i18n import PageError, tables, tr
from pages.i18n_engine import help_key


@dataclass(frozen=True)
class FormField:
    name: str
    kind: str  # "bool" | "int" | "float" | "int?" | "float?" (may be empty) | "text" | "choice" | "names" | "ints"
    default: Any
    help: str
    choices: tuple | None = None
    key: str = ""  # the help text's translation key (pages/i18n_engine.help_key)


def _kind(hint: Any, choices: tuple | None) -> str:
    if choices:
        return "choice"
    optional = typing.get_origin(hint) in (typing.Union, types.UnionType)
    args = set(typing.get_args(hint)) - {type(None)} if optional else set()
    if hint is bool:
        return "bool"
    if hint is int:
        return "int"
    if hint is float:
        return "float"
    if hint is str or args == {str}:
        return "text"
    if args == {int}:
        return "int?"
    if args == {float} or args == {int, float}:
        return "float?"
    if int in args or list[int] in args or hint == list[int]:
        return "ints"
    return "names"


def form_fields(config_cls: type) -> list[FormField]:
    """The fields of ``config_cls`` a form shows, typed for widgets."""
    hints = typing.get_type_hints(config_cls)
    out = []
    for field in dataclasses.fields(config_cls):
        if not field.metadata.get("ui", True):
            continue
        choices = field.metadata.get("choices")
        default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
        out.append(FormField(field.name, _kind(hints[field.name], choices), default, field.metadata["help"], choices,
                             help_key(config_cls, field.name)))
    return out


def widget(field: FormField) -> gr.components.Component:
    """The field's widget: its label is the config key (as in config.yaml), its info the translated help."""
    label = field.name
    info = tr(field.key) if field.key in tables()["en"] else field.help
    if field.kind == "bool":
        return gr.Checkbox(value=bool(field.default), label=label, info=info, interactive=True)
    if field.kind in ("int", "int?"):
        return gr.Number(value=field.default, label=label, info=info, precision=0, interactive=True)
    if field.kind in ("float", "float?"):
        return gr.Number(value=field.default, label=label, info=info, interactive=True)
    if field.kind == "choice":
        labels = [choice_label(c) for c in field.choices]
        return gr.Dropdown(choices=labels, value=choice_label(field.default), label=label, info=info,
                           interactive=True)
    text = "" if field.default is None else ", ".join(map(str, field.default)) if isinstance(field.default, list) else str(field.default)
    return gr.Textbox(value=text, label=label, info=info, interactive=True)


def choice_label(choice: Any) -> str:
    return choice.value if isinstance(choice, enum.Enum) else str(choice)


def to_settings(fields: list[FormField], values: list[Any]) -> dict[str, Any]:
    """Widget values -> keyword arguments for the config class (it validates them)."""
    settings: dict[str, Any] = {}
    for field, value in zip(fields, values, strict=True):
        settings[field.name] = _parse(field, value)
    return settings


def _parse(field: FormField, value: Any) -> Any:
    if field.kind == "choice":
        by_label = {choice_label(c): c for c in field.choices}
        if value not in by_label:
            raise PageError("form.pick_one", name=field.name, choices=", ".join(by_label))
        return by_label[value]
    if field.kind == "int":
        if value is None:
            raise PageError("form.whole_number", name=field.name)
        return int(value)
    if field.kind == "float":
        if value is None:
            raise PageError("form.number", name=field.name)
        return float(value)
    if field.kind == "bool":
        return bool(value)
    if field.kind in ("int?", "float?"):
        if value is None or value == "" or (value == 0 and field.default is None):
            return None  # empty (a number box shows an empty optional as 0): the setting is off
        return int(value) if field.kind == "int?" else float(value)
    text = (value or "").strip()
    if field.kind == "text":
        return text if text or field.default is not None else None
    if not text:
        return None
    if field.kind == "ints":
        try:
            return [int(part) for part in text.replace(" ", "").split(",") if part]
        except ValueError:
            raise PageError("form.whole_numbers", name=field.name) from None
    if "," not in text and any(ch in text for ch in "*()[]|\\^$+?") or text == "all-linear":
        return text  # a regular expression, or the 'all-linear' shortcut
    return [part.strip() for part in text.split(",") if part.strip()]


def widgets_in_rows(fields: list[FormField], per_row: int = 3) -> list[gr.components.Component]:
    """A widget per field, ``per_row`` to a row, in field order (call inside the Blocks being built)."""
    widgets: list[gr.components.Component] = []
    for start in range(0, len(fields), per_row):
        with gr.Row():
            widgets += [widget(f) for f in fields[start:start + per_row]]
    return widgets


def method_settings(method: str, values: list[Any]) -> dict[str, Any]:
    """A method form's widget values -> its run-config ``method`` section (empty settings left out)."""
    from peft_core.registry import get_method

    settings = to_settings(form_fields(get_method(method).config_cls), values)
    return {"name": method, **{k: choice_label(v) if isinstance(v, enum.Enum) else v for k, v in settings.items()
                               if k != "task_type" and v is not None}}
