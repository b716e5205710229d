"""Prompt-method rows: prompt tuning, P-tuning, prefix tuning, multitask prompt tuning.

They add tokens rather than weights (so they change the output from the start
and cannot be merged) and need a text model (not the ViT).
"""

from __future__ import annotations

import torch

from method_rows import MethodRow
from peft_core import (
    MultitaskPromptTuningConfig,
    PeftConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
)

TEXT_MODELS = ("gpt2", "llama", "bert", "t5")


def prompt(config_cls, **kwargs):
    def make(model: str, task_type, modules_to_save, init) -> PeftConfig:
        return config_cls(task_type=task_type, modules_to_save=modules_to_save, num_virtual_tokens=3, **kwargs)

    return make


def row(name: str, make, **kwargs) -> MethodRow:
    return MethodRow(name, make, mergeable=False, identity_at_init=False, models=TEXT_MODELS, **kwargs)


ROWS = [
    row("prompt_tuning", prompt(PromptTuningConfig)),
    row("prompt_tuning_vocab", prompt(PromptTuningConfig, prompt_tuning_init="SAMPLE_VOCAB")),
    row("p_tuning_mlp", prompt(PromptEncoderConfig, encoder_hidden_size=16)),
    row("p_tuning_lstm", prompt(PromptEncoderConfig, encoder_reparameterization_type="LSTM", encoder_hidden_size=8)),
    row("prefix_tuning", prompt(PrefixTuningConfig)),
    row("prefix_projection", prompt(PrefixTuningConfig, prefix_projection=True, encoder_hidden_size=16)),
    # PEFT's own seq2seq forward fails with decoder_input_ids for this method (it needs labels); its
    # T5 interop runs with labels in test_prompt_methods.py.
    row("multitask_prompt", prompt(MultitaskPromptTuningConfig, num_tasks=2, num_ranks=2),
        forward_kwargs={"task_ids": torch.tensor([0, 1])}, interop_models=("gpt2", "llama", "bert")),
]
