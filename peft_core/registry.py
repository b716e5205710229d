"""The method registry: every PEFT method registers itself here by name.

Nothing outside ``peft_core/methods`` asks "is this LoRA?"; it looks the
method up here and calls its interface. The UI reads the registry to know
which methods exist and which tasks each one fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from torch import nn

from peft_core.config import PeftType, TaskType

if TYPE_CHECKING:
    from peft_core.config import PeftConfig
    from peft_core.tuner import AdapterModel


@dataclass(frozen=True)
class MethodSpec:
    """What the rest of the engine knows about a method."""

    name: str  # short id used in YAML configs and the UI: "lora"
    title: str  # display name: "LoRA"
    peft_type: PeftType
    config_cls: type[PeftConfig]
    model_cls: type[AdapterModel]  # injects the method's layers into a base model
    tasks: frozenset[TaskType]  # tasks the method can train
    mergeable: bool  # whether merge_and_unload folds it into the weights
    summary: str  # one line for the UI


_METHODS: dict[str, MethodSpec] = {}


def register_method(spec: MethodSpec) -> MethodSpec:
    if spec.name in _METHODS and _METHODS[spec.name] is not spec:
        raise ValueError(f"a method named {spec.name!r} is already registered")
    _METHODS[spec.name] = spec
    return spec


def get_method(key: str | PeftType) -> MethodSpec:
    """Find a method by its short name ("lora") or its peft_type ("LORA")."""
    _load_builtin_methods()
    text = key.value if isinstance(key, PeftType) else str(key)
    for spec in _METHODS.values():
        if text.lower() == spec.name or text.upper() == spec.peft_type.value:
            return spec
    known = ", ".join(sorted(_METHODS))
    raise ValueError(f"unknown PEFT method {text!r}; peft_core knows: {known}")


def list_methods(task: TaskType | str | None = None) -> list[MethodSpec]:
    """All registered methods, or those that can train ``task``."""
    _load_builtin_methods()
    specs = sorted(_METHODS.values(), key=lambda s: s.name)
    if task is None:
        return specs
    task = TaskType(task) if not isinstance(task, TaskType) else task
    return [s for s in specs if task in s.tasks]


def methods_for(task: TaskType | str, model: nn.Module) -> list[MethodSpec]:
    """The methods that can train ``task`` on ``model`` (which may live on the meta device)."""
    return [spec for spec in list_methods(task) if spec.model_cls.model_problem(model) is None]


def _load_builtin_methods() -> None:
    import peft_core.methods  # noqa: F401  (registers on import)
