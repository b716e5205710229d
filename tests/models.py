"""Tiny models built from configs, and the inputs to run them on.

Each factory returns a fresh model in eval mode (same weights for the same
seed) and a dict of inputs; ``logits`` runs a model on them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
)

VOCAB = 100


@dataclass
class TinyModel:
    name: str
    task_type: str | None
    build: Callable[[], nn.Module]
    inputs: Callable[[], dict]
    modules_to_save: list[str] | None = None

    def fresh(self, seed: int = 0) -> nn.Module:
        torch.manual_seed(seed)
        return self.build().eval()


def _ids(batch: int = 2, length: int = 7, seed: int = 1) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def gpt2() -> nn.Module:
    return GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0))


def llama() -> nn.Module:
    return LlamaForCausalLM(
        LlamaConfig(
            num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
            num_key_value_heads=2, vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, pad_token_id=0,
        )
    )


def bert_cls() -> nn.Module:
    return BertForSequenceClassification(
        BertConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                   vocab_size=VOCAB, num_labels=3)
    )


def t5() -> nn.Module:
    return T5ForConditionalGeneration(
        T5Config(num_layers=2, d_model=32, d_ff=64, num_heads=2, d_kv=16, vocab_size=VOCAB,
                 decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    )


def vit() -> nn.Module:
    return ViTForImageClassification(
        ViTConfig(num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
                  image_size=32, patch_size=8, num_labels=3)
    )


def _pixels() -> dict:
    return {"pixel_values": torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))}


MODELS: dict[str, TinyModel] = {
    "gpt2": TinyModel("gpt2", "CAUSAL_LM", gpt2, lambda: {"input_ids": _ids()}),
    "llama": TinyModel("llama", "CAUSAL_LM", llama, lambda: {"input_ids": _ids()}),
    "bert": TinyModel("bert", "SEQ_CLS", bert_cls, lambda: {"input_ids": _ids()}, ["classifier"]),
    "t5": TinyModel("t5", "SEQ_2_SEQ_LM", t5, lambda: {"input_ids": _ids(), "decoder_input_ids": _ids(length=5, seed=3)}),
    "vit": TinyModel("vit", "IMAGE_CLS", vit, _pixels, ["classifier"]),
}


def logits(model: nn.Module, inputs: dict) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).logits


def twin(model: nn.Module) -> nn.Module:
    """An independent copy with the same weights (for the other library)."""
    return copy.deepcopy(model)
