"""The fields every prompt method's config has, and filling them in from the model."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import nn

from peft_core.config import PeftConfig, TaskType, config_field
from peft_core.config_errors import positive_int


@dataclass
class PromptLearningConfig(PeftConfig):
    """Virtual tokens; the model's sizes are read from the model when left empty."""

    num_virtual_tokens: int = config_field(
        20, help="How many virtual tokens to learn. 10-30 is typical; more can learn more but lengthens every input."
    )
    token_dim: int | None = config_field(None, help="Width of one virtual token (read from the model).", ui=False)
    num_transformer_submodules: int | None = config_field(
        None, help="1, or 2 for encoder-decoder models (set from the task).", ui=False
    )
    num_attention_heads: int | None = config_field(None, help="Attention heads (read from the model).", ui=False)
    num_layers: int | None = config_field(None, help="Transformer layers (read from the model).", ui=False)
    modules_to_save: list[str] | None = config_field(
        None, help="Modules trained in full and saved with the adapter (a classifier head).", ui=False
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int("num_virtual_tokens", self.num_virtual_tokens)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save) or None

    @property
    def is_prompt_learning(self) -> bool:
        return True

    def fitted_to(self, model: nn.Module) -> PromptLearningConfig:
        """A copy with the model's sizes filled in where they were left empty."""
        config = getattr(model, "config", None)
        if config is None:
            raise ValueError(f"{type(model).__name__} has no transformers config; prompt methods need one")
        sizes = {
            "num_layers": _first(config, "num_hidden_layers", "num_layers", "n_layer"),
            "token_dim": _first(config, "hidden_size", "n_embd", "d_model"),
            "num_attention_heads": _first(config, "num_attention_heads", "n_head", "num_heads", "encoder_attention_heads"),
            "num_transformer_submodules": 2 if self.task_type is TaskType.SEQ_2_SEQ_LM else 1,
        }
        filled = {k: v for k, v in sizes.items() if getattr(self, k) is None}
        missing = [k for k, v in filled.items() if v is None]
        if missing:
            raise ValueError(f"cannot read {', '.join(missing)} from {type(model).__name__}'s config; set them in the adapter config")
        return dataclasses.replace(self, **filled)


def _first(config: Any, *names: str) -> Any:
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    return None
