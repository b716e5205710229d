"""IA3 rows: the architecture's defaults, explicit feedforward modules, and a Conv2d target."""

from __future__ import annotations

from collections.abc import Callable

from method_rows import MethodRow
from peft_core import PeftConfig
from peft_core.methods.ia3 import IA3Config

# Per tiny model: (target_modules, feedforward_modules), unlike the defaults.
# Conv1D scaled at its input (gpt2's c_fc) and at its output with a bias
# (mlp.c_proj), several feedforward modules, and ViT's patch Conv2d at its input.
EXPLICIT = {
    "gpt2": (["c_attn", "c_fc", "mlp.c_proj"], ["c_fc"]),
    "llama": (["q_proj", "o_proj", "up_proj", "down_proj"], ["o_proj", "down_proj"]),
    "bert": (["query", "intermediate.dense", "output.dense"], ["intermediate.dense"]),
    "t5": (["k", "o", "wi", "wo"], ["o", "wo"]),
    "vit": (["v_proj", "fc1", "fc2", "projection"], ["fc2", "projection"]),
}


def ia3(**kwargs) -> Callable:
    def make(model: str, task_type, modules_to_save, init) -> PeftConfig:
        extra = {k: (v(model) if callable(v) else v) for k, v in kwargs.items()}
        return IA3Config(task_type=task_type, modules_to_save=modules_to_save, init_ia3_weights=init, **extra)

    return make


ROWS = [
    MethodRow("ia3", ia3()),
    MethodRow(
        "ia3_feedforward",
        ia3(target_modules=lambda m: EXPLICIT[m][0], feedforward_modules=lambda m: EXPLICIT[m][1]),
    ),
    # ViT's patch embedding scaled at its output (the bias too when merging)
    MethodRow("ia3_conv", ia3(target_modules=["projection", "k_proj"], feedforward_modules=[]), models=("vit",)),
]
