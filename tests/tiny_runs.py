"""Tiny models saved as ordinary model folders (with real tokenizers), and run configs over them."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertForSequenceClassification,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
    ViTConfig,
    ViTForImageClassification,
    ViTImageProcessorPil,
)

from peft_core.presets import DEFAULT_LLM, resolve_model
from peft_core.run_config import RunConfig

SAMPLES = Path(__file__).resolve().parent.parent / "assets" / "samples"


def build_model_dirs(root: Path) -> dict[str, str]:
    """causal_lm / seq2seq with SmolLM2's tokenizer, seq_cls / token_cls with MiniLM's, a ViT for 32x32 images."""
    smol = AutoTokenizer.from_pretrained(resolve_model(DEFAULT_LLM))
    minilm = AutoTokenizer.from_pretrained(resolve_model("all-minilm-l6-v2"))
    torch.manual_seed(0)
    models = {
        "llama": (LlamaForCausalLM(LlamaConfig(
            num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2, num_key_value_heads=2,
            vocab_size=len(smol), tie_word_embeddings=True)), smol),
        "t5": (T5ForConditionalGeneration(T5Config(
            vocab_size=len(smol), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
            pad_token_id=smol.pad_token_id, eos_token_id=smol.eos_token_id,
            decoder_start_token_id=smol.pad_token_id)), smol),
        "bert": (BertForSequenceClassification(BertConfig(
            num_hidden_layers=2, hidden_size=32, intermediate_size=64, num_attention_heads=2,
            vocab_size=len(minilm))), minilm),
        "vit": (ViTForImageClassification(ViTConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)), ViTImageProcessorPil(size={"height": 32, "width": 32})),
    }
    dirs = {}
    for name, (model, processor) in models.items():
        path = root / name
        model.save_pretrained(path)
        processor.save_pretrained(path)
        dirs[name] = str(path)
    dirs["minilm"] = "all-minilm-l6-v2"  # the real preset (from PyPI)
    return dirs


def run_config(task: str, model_dir: str, train: str | os.PathLike, output_dir: str | os.PathLike,
               method: dict | None = None, data: dict | None = None, **training) -> RunConfig:
    settings = {"output_dir": str(output_dir), "max_steps": 6, "batch_size": 4, "learning_rate": 1e-2,
                "eval_steps": None, "save_steps": None, "logging_steps": 1, **training}
    return RunConfig.from_dict({
        "task": task,
        "model": {"name_or_path": model_dir},
        "method": method or {"name": "lora", "r": 4},
        "data": {"train": str(train), "max_length": 128, **(data or {})},
        "training": settings,
    })
