"""LoRA rows (with DoRA, rsLoRA, bias, layer selection and rank patterns)."""

from __future__ import annotations

from collections.abc import Callable

from method_rows import MethodRow
from peft_core import LoraConfig, PeftConfig

# Embedding / Conv2d targets per tiny model, next to one attention projection.
EMBED_OR_CONV = {
    "gpt2": ["c_attn", "wpe"],
    "llama": ["q_proj", "embed_tokens"],
    "bert": ["query", "word_embeddings"],
    "t5": ["q", "wi"],
    "vit": ["q_proj", "projection"],
}
# One target per model for the rank_pattern row.
HAS_BIASES = {"gpt2", "bert", "vit"}
FIRST_TARGET = {"gpt2": "c_attn", "llama": "q_proj", "bert": "query", "t5": "q", "vit": "q_proj"}


def lora(**kwargs) -> Callable:
    def make(model: str, task_type, modules_to_save, init) -> PeftConfig:
        extra = {k: (v(model) if callable(v) else v) for k, v in kwargs.items()}
        return LoraConfig(task_type=task_type, modules_to_save=modules_to_save, init_lora_weights=init, **extra)

    return make


ROWS = [
    MethodRow("lora", lora()),
    MethodRow("lora_all_linear", lora(target_modules="all-linear", r=4, lora_alpha=8)),
    MethodRow("rslora", lora(use_rslora=True, r=4, lora_alpha=8)),
    MethodRow("dora", lora(use_dora=True)),
    MethodRow("lora_embed_conv", lora(target_modules=lambda m: EMBED_OR_CONV[m])),
    MethodRow("dora_embed_conv", lora(target_modules=lambda m: EMBED_OR_CONV[m], use_dora=True)),
    MethodRow("lora_bias_all", lora(bias="all", lora_dropout=0.1)),
    MethodRow("lora_one_layer", lora(layers_to_transform=[1])),
    MethodRow(
        "lora_rank_pattern",
        # lora_bias merges into the base bias, so only where the base layers have one
        lora(rank_pattern=lambda m: {FIRST_TARGET[m]: 2}, lora_bias=lambda m: m in HAS_BIASES),
    ),
]
