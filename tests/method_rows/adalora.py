"""AdaLoRA rows: fresh adapters, and adapters at ranks a training run left behind."""

from __future__ import annotations

from collections.abc import Callable

from method_rows import MethodRow
from peft_core import PeftConfig
from peft_core.methods.adalora import AdaLoraConfig

INIT_R = 6
# The first default target of each tiny model, in its first two blocks.
FIRST_TARGETS = {
    "gpt2": ("transformer.h.0.attn.c_attn", "transformer.h.1.attn.c_attn"),
    "llama": ("model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"),
    "bert": ("bert.encoder.layer.0.attention.self.query", "bert.encoder.layer.1.attention.self.query"),
    "t5": ("encoder.block.0.layer.0.SelfAttention.q", "encoder.block.1.layer.0.SelfAttention.q"),
    "vit": ("vit.layers.0.attention.q_proj", "vit.layers.1.attention.q_proj"),
}


def allocated(model: str) -> dict[str, list[bool]]:
    """A rank_pattern as training writes it: one layer keeps 3 of 6 triplets, one keeps none."""
    first, second = FIRST_TARGETS[model]
    return {f"{first}.lora_E": [True, False, True, False, False, True], f"{second}.lora_E": [False] * INIT_R}


def adalora(**kwargs) -> Callable:
    def make(model: str, task_type, modules_to_save, init) -> PeftConfig:
        extra = {k: (v(model) if callable(v) else v) for k, v in kwargs.items()}
        return AdaLoraConfig(
            task_type=task_type, modules_to_save=modules_to_save, init_lora_weights=init,
            init_r=INIT_R, target_r=2, total_step=20, **extra,
        )

    return make


ROWS = [
    MethodRow("adalora", adalora()),
    MethodRow("adalora_all_linear", adalora(target_modules="all-linear", bias="all", lora_dropout=0.1)),
    # Layers built at saved ranks, one of them empty. Not an interop row: the PEFT
    # library builds a fresh adapter at init_r whatever rank_pattern says (it only
    # prunes when saving), so its live outputs are not its saved adapter's.
    # test_adalora.py crosses allocated adapters both ways.
    MethodRow("adalora_allocated", adalora(rank_pattern=allocated), interop=False),
]
