"""AdaLoRA's config: LoRA-style targets plus the rank budget schedule."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from peft_core import targets
from peft_core.config import BIAS_CHOICES, PeftConfig, PeftType, config_field
from peft_core.config_errors import ConfigError, bad

logger = logging.getLogger(__name__)

# The PEFT library writes ``r`` for AdaLoRA too (it inherits LoRA's config) but
# never reads it; this is the value it writes unless the user changed it.
UNUSED_R = 8
# A rank_pattern key names the singular values of one layer: "<module path>.lora_E".
PATTERN_SUFFIX = ".lora_E"


@dataclass
class AdaLoraConfig(PeftConfig):
    """SVD-form LoRA, ``W x + scale * B diag(E) A x``, whose ranks shrink to a budget while training.

    Every targeted layer starts with ``init_r`` singular triplets. After
    ``tinit`` warm-up steps the total budget falls on a cubic curve to
    ``target_r`` per layer at step ``total_step - tfinal``; each ``deltaT``
    steps the least important triplets (by smoothed |weight x gradient|) are
    masked. The final pattern is kept for the last ``tfinal`` steps and is
    saved as ``rank_pattern``.
    """

    PEFT_TYPE: ClassVar[PeftType] = PeftType.ADALORA

    init_r: int = config_field(12, help="Rank every adapted layer starts with, before any is pruned (e.g. 12).")
    target_r: int = config_field(
        8, help="Average rank per layer once pruning ends; important layers keep more, others fewer. At most init_r."
    )
    total_step: int | None = config_field(
        None,
        help="Number of optimizer steps the training will run (required): the rank schedule is laid out over it. "
        "With gradient accumulation, count optimizer steps, not batches.",
    )
    tinit: int = config_field(0, help="Warm-up steps at the full rank init_r before pruning starts.")
    tfinal: int = config_field(0, help="Last steps that train with the final ranks fixed.")
    deltaT: int = config_field(1, help="Re-allocate ranks every this many steps while the budget shrinks.")
    beta1: float = config_field(0.85, help="Smoothing of the importance score (moving average, between 0 and 1).")
    beta2: float = config_field(
        0.85, help="Smoothing of the importance's uncertainty (moving average, between 0 and 1)."
    )
    orth_reg_weight: float = config_field(
        0.5, help="Weight of the loss term that keeps A's rows and B's columns orthonormal (0 turns it off)."
    )
    lora_alpha: float = config_field(8, help="Scale of the update: alpha / init_r.")
    lora_dropout: float = config_field(0.0, help="Dropout on the adapter's input while training (0 to 0.5).")
    target_modules: list[str] | str | None = config_field(
        None,
        help="Linear modules to adapt: names such as q_proj, v_proj (matched at the end of the module path), "
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
    init_lora_weights: bool = config_field(
        True,
        help="True: singular values start at zero, so the model is unchanged at first. False: random (tests only).",
        ui=False,
    )
    layers_to_transform: list[int] | int | None = config_field(
        None, help="Only adapt these layer numbers (e.g. [0, 1, 2]); empty: all layers."
    )
    layers_pattern: list[str] | str | None = config_field(
        None, help="Name of the layer list in the module path (e.g. 'layers', 'h') for layers_to_transform.", ui=False
    )
    rank_pattern: dict[str, list[bool]] | None = config_field(
        None,
        help="Written by training: which of the init_r triplets each layer kept, keyed '<module path>.lora_E'. "
        "When set, layers are built at those ranks and no re-allocation happens.",
        ui=False,
    )
    r: int = config_field(UNUSED_R, help="Not used by AdaLoRA (the PEFT format has the key); set init_r.", ui=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_ranks()
        self._check_schedule()
        for name in ("beta1", "beta2"):
            value = getattr(self, name)
            _require(_finite(value) and 0 < value < 1, "between_0_and_1", name, value)
        _require(_finite(self.orth_reg_weight) and self.orth_reg_weight >= 0, "non_negative_number",
                 "orth_reg_weight", self.orth_reg_weight)
        _require(_finite(self.lora_alpha) and self.lora_alpha > 0, "positive_number", "lora_alpha", self.lora_alpha)
        _require(_finite(self.lora_dropout) and 0 <= self.lora_dropout < 1, "dropout", "lora_dropout",
                 self.lora_dropout)
        _require(self.bias in BIAS_CHOICES, "one_of", "bias", self.bias, choices=", ".join(BIAS_CHOICES))
        _require(isinstance(self.init_lora_weights, bool), "true_or_false_flag", "init_lora_weights",
                 self.init_lora_weights)
        self._check_targets()
        self.rank_pattern = _checked_pattern(self.rank_pattern, self.init_r)

    def _check_ranks(self) -> None:
        _require(_whole(self.init_r) and self.init_r > 0, "rank", "init_r", self.init_r)
        _require(_whole(self.target_r) and 0 < self.target_r <= self.init_r, "target_r", None, self.target_r,
                 init_r=self.init_r)
        if self.r != UNUSED_R:
            raise bad("adalora_r", value=self.r)

    def _check_schedule(self) -> None:
        if self.total_step is None:
            raise ConfigError("total_step_required")
        _require(_whole(self.total_step) and self.total_step > 0, "positive_int", "total_step", self.total_step)
        _require(_whole(self.tinit) and self.tinit >= 0, "steps_at_least", "tinit", self.tinit, low=0)
        _require(_whole(self.tfinal) and self.tfinal >= 0, "steps_at_least", "tfinal", self.tfinal, low=0)
        _require(_whole(self.deltaT) and self.deltaT > 0, "steps_at_least", "deltaT", self.deltaT, low=1)
        if self.tinit >= self.total_step - self.tfinal:
            raise ConfigError("no_steps_to_prune", tinit=self.tinit, tfinal=self.tfinal, total_step=self.total_step,
                              room=self.total_step - self.tfinal)

    def _check_targets(self) -> None:
        self.target_modules = targets.names_or_regex("target_modules", self.target_modules)
        self.exclude_modules = targets.names_or_regex("exclude_modules", self.exclude_modules)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save) or None
        if self.layers_to_transform is not None:
            layers = self.layers_to_transform
            layers = [layers] if isinstance(layers, int) else layers
            if not all(_whole(i) and i >= 0 for i in layers):
                raise bad("layer_numbers", value=self.layers_to_transform)
            if isinstance(self.target_modules, str):
                raise ConfigError("layers_with_regex")
        elif self.layers_pattern:
            raise ConfigError("layers_pattern_alone")

    @classmethod
    def _adapt_loaded_kwargs(cls, kwargs: dict[str, Any]) -> dict[str, Any]:
        # The PEFT library ignores r and treats init_lora_weights as a flag;
        # a saved adapter's weights replace the init anyway.
        if kwargs.get("r", UNUSED_R) != UNUSED_R:
            logger.info("r=%r in the adapter config is not used by AdaLoRA; init_r and rank_pattern are", kwargs["r"])
            kwargs["r"] = UNUSED_R
        if not isinstance(kwargs.get("init_lora_weights", True), bool):
            kwargs["init_lora_weights"] = True
        return kwargs

    # -- ranks per layer ---------------------------------------------------
    def kept_ranks(self, key: str) -> list[bool] | None:
        """The saved keep-flags of the layer at module path ``key``, if the pattern names it."""
        if not self.rank_pattern:
            return None
        return self.rank_pattern.get(key + PATTERN_SUFFIX)

    def rank_for(self, key: str) -> int:
        """The rank the layer at ``key`` is built with: its saved rank, else init_r."""
        kept = self.kept_ranks(key)
        return self.init_r if kept is None else sum(kept)


def pattern_module_path(pattern_key: str) -> str:
    """``model.layers.0.q_proj.lora_E`` -> ``model.layers.0.q_proj``."""
    return pattern_key[: -len(PATTERN_SUFFIX)]


def _checked_pattern(pattern: Any, init_r: int) -> dict[str, list[bool]] | None:
    """Validate rank_pattern; keys written with an adapter name ("...lora_E.default") lose it."""
    if pattern is None or pattern == {}:
        return None
    if not isinstance(pattern, dict):
        raise bad("keep_flags_map", value=pattern)
    checked: dict[str, list[bool]] = {}
    for key, flags in pattern.items():
        name = str(key)
        if not name.endswith(PATTERN_SUFFIX) and PATTERN_SUFFIX + "." in name:
            name = name[: name.rindex(PATTERN_SUFFIX) + len(PATTERN_SUFFIX)]  # PEFT's in-memory form
        if not name.endswith(PATTERN_SUFFIX):
            raise ConfigError("keep_flags_key", key=repr(key))
        if not isinstance(flags, (list, tuple)) or not all(isinstance(f, bool) for f in flags):
            raise ConfigError("keep_flags_type", key=repr(key))
        if len(flags) != init_r:
            raise ConfigError("keep_flags_count", key=repr(key), count=len(flags), init_r=init_r)
        checked[name] = list(flags)
    return checked


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _require(ok: bool, code: str, name: str | None, value: Any, **params: Any) -> None:
    if not ok:
        raise bad(code, name, value, **params)
