"""LoRA's config (with the DoRA and rsLoRA options)."""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from peft_core import targets
from peft_core.config import BIAS_CHOICES, PeftConfig, PeftType, config_field
from peft_core.config_errors import ConfigError, bad, positive_int

logger = logging.getLogger(__name__)

INIT_CHOICES = (True, False, "gaussian")


@dataclass
class LoraConfig(PeftConfig):
    """Low-rank adaptation: ``W x + (alpha / r) * B A x`` with small trainable ``A``, ``B``."""

    PEFT_TYPE: ClassVar[PeftType] = PeftType.LORA

    r: int = config_field(8, help="Rank of the update matrices. Higher learns more and costs more; 4-64 is typical.")
    lora_alpha: float = config_field(8, help="Scale of the update (alpha / r). Often set to r or 2r.")
    lora_dropout: float = config_field(0.0, help="Dropout on the adapter's input while training (0 to 0.5).")
    target_modules: list[str] | str | None = config_field(
        None,
        help="Modules to adapt: names such as q_proj, v_proj (matched at the end of the module path), "
        "a regular expression matching the whole path, or 'all-linear'. Empty: the architecture's defaults.",
    )
    exclude_modules: list[str] | str | None = config_field(
        None, help="Modules never to adapt, matched like target_modules.", ui=False
    )
    modules_to_save: list[str] | None = config_field(
        None, help="Modules trained in full and saved with the adapter, e.g. a new classifier head."
    )
    bias: Literal["none", "all", "lora_only"] = config_field(
        "none", help="Which biases to train too: none, all, or only those of adapted layers.", choices=BIAS_CHOICES
    )
    fan_in_fan_out: bool = config_field(
        False, help="The layer stores its weight as (in, out), as GPT-2's Conv1D does (set automatically).", ui=False
    )
    use_rslora: bool = config_field(False, help="rsLoRA: scale by alpha / sqrt(r), which keeps high ranks stable.")
    use_dora: bool = config_field(
        False, help="DoRA: learn each output's magnitude apart from its direction. Better at low rank, slower."
    )
    init_lora_weights: bool | str = config_field(
        True,
        help="True: B starts at zero, so the model is unchanged at first. 'gaussian': A drawn from N(0, 1/r). "
        "False: random B (for tests only).",
        choices=INIT_CHOICES,
    )
    layers_to_transform: list[int] | int | None = config_field(
        None, help="Only adapt these layer numbers (e.g. [0, 1, 2]); empty: all layers."
    )
    layers_pattern: list[str] | str | None = config_field(
        None, help="Name of the layer list in the module path (e.g. 'layers', 'h') for layers_to_transform.", ui=False
    )
    rank_pattern: dict[str, int] = config_field({}, help="Per-module ranks, e.g. {'q_proj': 16}.", ui=False)
    alpha_pattern: dict[str, float] = config_field({}, help="Per-module alphas, e.g. {'q_proj': 32}.", ui=False)
    lora_bias: bool = config_field(False, help="Give the B matrix a trainable bias.", ui=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        positive_int("r", self.r, "rank")
        if isinstance(self.lora_alpha, bool) or not isinstance(self.lora_alpha, (int, float)) or not (
            math.isfinite(self.lora_alpha) and self.lora_alpha > 0
        ):
            raise bad("positive_number", "lora_alpha", self.lora_alpha)
        if not isinstance(self.lora_dropout, (int, float)) or not 0 <= self.lora_dropout < 1:
            raise bad("dropout", "lora_dropout", self.lora_dropout)
        if self.bias not in BIAS_CHOICES:
            raise bad("one_of", "bias", self.bias, choices=", ".join(BIAS_CHOICES))
        if self.init_lora_weights not in INIT_CHOICES or self.init_lora_weights in (0, 1) and not isinstance(
            self.init_lora_weights, bool
        ):
            raise bad("init_lora_weights", value=self.init_lora_weights)
        self.target_modules = targets.names_or_regex("target_modules", self.target_modules)
        self.exclude_modules = targets.names_or_regex("exclude_modules", self.exclude_modules)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save) or None
        if self.layers_to_transform is not None:
            layers = [self.layers_to_transform] if isinstance(self.layers_to_transform, int) else self.layers_to_transform
            if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
                raise bad("layer_numbers", value=self.layers_to_transform)
            if isinstance(self.target_modules, str):
                raise ConfigError("layers_with_regex")
        elif self.layers_pattern:
            raise ConfigError("layers_pattern_alone")
        if self.use_dora and self.lora_bias:
            raise ConfigError("dora_with_lora_bias")
        for key, rank in self.rank_pattern.items():
            positive_int(f"rank_pattern[{key!r}]", rank)

    @classmethod
    def _adapt_loaded_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        # Other init schemes (PiSSA, OLoRA, ...) only shape the starting point;
        # a saved adapter's trained weights replace it, so load it as True.
        init = kwargs.get("init_lora_weights", True)
        if init not in INIT_CHOICES:
            logger.warning("init_lora_weights=%r is not supported; the saved weights are loaded as they are", init)
            kwargs["init_lora_weights"] = True
        return kwargs

    def rank_for(self, key: str) -> int:
        return _pattern_value(self.rank_pattern, key, self.r)

    def alpha_for(self, key: str) -> float:
        return _pattern_value(self.alpha_pattern, key, self.lora_alpha)

    def scaling_for(self, key: str) -> float:
        rank, alpha = self.rank_for(key), self.alpha_for(key)
        return alpha / math.sqrt(rank) if self.use_rslora else alpha / rank


def _pattern_value(patterns: dict[str, Any], key: str, default: Any) -> Any:
    """The value of the first pattern matching the end of ``key`` (PEFT's rank_pattern rule)."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default
