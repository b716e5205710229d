"""Adapter configs: the typed base class every method's config extends.

A config is a dataclass whose fields carry ``help`` metadata (the UI builds
its forms from them) and whose ``__post_init__`` rejects bad values with a
message a person can act on. ``to_dict`` / ``from_dict`` speak the PEFT
library's ``adapter_config.json`` dialect (see DESIGN.md section 3).
"""

from __future__ import annotations

import dataclasses
import enum
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, ClassVar

from peft_core.config_errors import bad

logger = logging.getLogger(__name__)

CONFIG_NAME = "adapter_config.json"


class TaskType(str, enum.Enum):
    """What the base model does; picks the task wrapper around it."""

    CAUSAL_LM = "CAUSAL_LM"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    SEQ_CLS = "SEQ_CLS"
    TOKEN_CLS = "TOKEN_CLS"
    QUESTION_ANS = "QUESTION_ANS"
    FEATURE_EXTRACTION = "FEATURE_EXTRACTION"
    # The PEFT library has no image task type; such adapters are saved with
    # ``task_type: null``, exactly as PEFT users save their ViT adapters.
    IMAGE_CLS = "IMAGE_CLS"


# What ``bias`` may say in the methods that have it (LoRA, AdaLoRA).
BIAS_CHOICES = ("none", "all", "lora_only")

# Task types the PEFT library accepts in adapter_config.json.
PEFT_LIBRARY_TASK_TYPES = frozenset(t for t in TaskType if t is not TaskType.IMAGE_CLS)


class PeftType(str, enum.Enum):
    """The ``peft_type`` values of adapter_config.json."""

    LORA = "LORA"
    ADALORA = "ADALORA"
    IA3 = "IA3"
    LOHA = "LOHA"
    LOKR = "LOKR"
    PROMPT_TUNING = "PROMPT_TUNING"
    P_TUNING = "P_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    MULTITASK_PROMPT_TUNING = "MULTITASK_PROMPT_TUNING"


def config_field(
    default: Any = dataclasses.MISSING,
    *,
    help: str,
    ui: bool = True,
    choices: tuple | None = None,
    repr: bool = True,
) -> Any:
    """A dataclass field with ``help`` text for forms.

    ``ui=False`` hides it from generated forms; ``choices`` lists the values
    a form may offer.
    """
    metadata = {"help": help, "ui": ui, "choices": choices}
    if isinstance(default, (list, dict, set)):
        template = default
        return field(default_factory=lambda: type(template)(template), metadata=metadata, repr=repr)
    return field(default=default, metadata=metadata, repr=repr)


def _parse_task_type(value: Any) -> TaskType | None:
    if value is None or isinstance(value, TaskType):
        return value
    try:
        return TaskType(str(value).upper())
    except ValueError:
        valid = ", ".join(t.value for t in TaskType)
        raise bad("task_type", value=value, choices=valid) from None


def _is_default_like(value: Any) -> bool:
    """Keys a newer PEFT writes with an 'off' value can be ignored without a warning."""
    return value is None or value is False or value == {} or value == [] or value == ""


@dataclass
class PeftConfig:
    """Fields every adapter config has; a method's config subclasses this."""

    PEFT_TYPE: ClassVar[PeftType]

    task_type: TaskType | None = config_field(
        None, help="What the base model does (CAUSAL_LM, SEQ_2_SEQ_LM, SEQ_CLS, TOKEN_CLS, IMAGE_CLS).", ui=False
    )
    base_model_name_or_path: str | None = config_field(
        None, help="Hub id or path of the base model the adapter was trained on.", ui=False
    )
    revision: str | None = config_field(None, help="Hub revision of the base model.", ui=False)
    inference_mode: bool = config_field(False, help="Load frozen, for inference only.", ui=False)
    # Keys of adapter_config.json this version does not know (newer PEFT
    # releases add some); kept so that re-saving loses nothing.
    extra_keys: dict[str, Any] = config_field({}, help="Unknown adapter_config.json keys, kept as-is.", ui=False, repr=False)

    def __post_init__(self) -> None:
        self.task_type = _parse_task_type(self.task_type)

    @property
    def peft_type(self) -> PeftType:
        return self.PEFT_TYPE

    @property
    def is_prompt_learning(self) -> bool:
        """True for methods that add virtual tokens instead of wrapping layers."""
        return False

    # -- serialisation -------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The adapter_config.json content, with PEFT's keys and values."""
        out: dict[str, Any] = dict(self.extra_keys)
        for f in dataclasses.fields(self):
            if f.name == "extra_keys":
                continue
            out[f.name] = _jsonable(getattr(self, f.name))
        task = self.task_type
        out["task_type"] = task.value if task in PEFT_LIBRARY_TASK_TYPES else None
        out["peft_type"] = self.peft_type.value
        return dict(sorted(out.items()))

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        os.makedirs(save_directory, exist_ok=True)
        data = self.to_dict()
        data["inference_mode"] = True  # as the PEFT library writes it
        with open(os.path.join(save_directory, CONFIG_NAME), "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PeftConfig:
        """Build the config of the method named by ``data['peft_type']``.

        Called on ``PeftConfig`` it dispatches through the method registry;
        called on a method's class it refuses a config of another method.
        """
        from peft_core.registry import get_method

        data = dict(data)
        peft_type = data.pop("peft_type", None)
        if cls is PeftConfig:
            if peft_type is None:
                raise ValueError("adapter config has no 'peft_type'; it is not a PEFT adapter config")
            target_cls = get_method(peft_type).config_cls
        else:
            target_cls = cls
            if peft_type is not None and str(peft_type).upper() != cls.PEFT_TYPE.value:
                raise ValueError(
                    f"this adapter config is for {peft_type}, not {cls.PEFT_TYPE.value}; load it with "
                    f"PeftConfig.from_pretrained, which picks the method from the file"
                )
        known = {f.name for f in dataclasses.fields(target_cls) if f.init}
        kwargs = {k: v for k, v in data.items() if k in known and k != "extra_keys"}
        extra = {k: v for k, v in data.items() if k not in known}
        noisy = sorted(k for k, v in extra.items() if not _is_default_like(v) and k not in _SILENT_KEYS)
        if noisy:
            logger.warning(
                "adapter config keys %s are not supported by peft_core and are ignored (kept when re-saving)",
                noisy,
            )
        kwargs = target_cls._adapt_loaded_kwargs(kwargs)
        return target_cls(**kwargs, extra_keys=extra)

    @classmethod
    def _adapt_loaded_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Hook: a method may relax values that only mattered when training started."""
        return kwargs

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> PeftConfig:
        try:
            with open(path, encoding="utf-8") as fh:
                data = json.load(fh)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path} is not valid JSON ({exc}); is it really an adapter_config.json?") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} holds a JSON {type(data).__name__}, not an object of adapter settings")
        return cls.from_dict(data)

    @classmethod
    def from_pretrained(
        cls,
        path_or_hub_id: str | os.PathLike,
        subfolder: str | None = None,
        revision: str | None = None,
        token: str | None = None,
    ) -> PeftConfig:
        """Read adapter_config.json from a local directory or a Hub repo."""
        from peft_core.hub import resolve_adapter_file

        path = resolve_adapter_file(path_or_hub_id, CONFIG_NAME, subfolder=subfolder, revision=revision, token=token)
        return cls.from_json_file(path)

    @classmethod
    def fields_for_ui(cls) -> list[dataclasses.Field]:
        """The fields a form should show, in declaration order (no instance needed: some fields are required)."""
        return [f for f in dataclasses.fields(cls) if f.metadata.get("ui", True)]


# Keys the PEFT library writes that say nothing about the adapter's math.
_SILENT_KEYS = frozenset({"peft_version", "auto_mapping", "megatron_core", "qalora_group_size"})


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, (set, frozenset)):
        return sorted(value)
    if isinstance(value, tuple):
        return list(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return value
