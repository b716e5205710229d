"""LoHa rows: defaults, Conv2d (flat and effective), rank/alpha patterns with dropout set."""

from __future__ import annotations

from collections.abc import Callable

from method_rows import MethodRow
from peft_core import PeftConfig
from peft_core.methods.loha import LoHaConfig

# GPT-2 is left out: its layers are transformers Conv1D, which LoHa/LoKr refuse (as PEFT does).
LINEAR_MODELS = ("llama", "bert", "t5", "vit")
FIRST_TARGET = {"llama": "q_proj", "bert": "query", "t5": "q", "vit": "q_proj"}
# ViT's patch embedding is a Conv2d(3, 32, kernel 8, stride 8).
CONV_TARGETS = ["v_proj", "projection"]


def lycoris(config_cls: type[PeftConfig], **kwargs) -> Callable:
    """A row's ``make``: ``kwargs`` values may be functions of the model name."""

    def make(model: str, task_type, modules_to_save, init) -> PeftConfig:
        extra = {k: (v(model) if callable(v) else v) for k, v in kwargs.items()}
        return config_cls(task_type=task_type, modules_to_save=modules_to_save, init_weights=init, **extra)

    return make


# PEFT's random LoHa init multiplies two products of small Kaiming factors, so its
# update is ~100x smaller than a random LoRA's; a large alpha makes it show in
# the logits (a wrong tensor must change them by more than the tolerances).
ROWS = [
    MethodRow("loha", lycoris(LoHaConfig, alpha=256), models=LINEAR_MODELS),
    MethodRow("loha_conv", lycoris(LoHaConfig, target_modules=CONV_TARGETS, alpha=2048), models=("vit",)),
    MethodRow(
        "loha_conv_effective",
        lycoris(LoHaConfig, target_modules=CONV_TARGETS, use_effective_conv2d=True, r=4, alpha=4096),
        models=("vit",),
    ),
    MethodRow(
        "loha_rank_pattern",
        lycoris(
            LoHaConfig, r=4, alpha=128, rank_pattern=lambda m: {FIRST_TARGET[m]: 2},
            alpha_pattern=lambda m: {FIRST_TARGET[m]: 256}, rank_dropout=0.2, module_dropout=0.2,
        ),
        models=LINEAR_MODELS,
    ),
]
