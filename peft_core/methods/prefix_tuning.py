"""Prefix tuning: trained keys and values in front of every attention layer.

Optionally produced by a small MLP (``prefix_projection``), which trains more
steadily; the saved adapter holds the keys and values themselves.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from peft_core.config import PeftType, config_field
from peft_core.config_errors import positive_int
from peft_core.methods.prompt_tuning import PROMPT_TASKS
from peft_core.prompt_learning import DirectPrompt, PromptEncoder, PromptLearningConfig
from peft_core.prompt_learning.model import ComputedPrompt
from peft_core.prompt_learning.prefix import PrefixModel
from peft_core.registry import MethodSpec, register_method


@dataclass
class PrefixTuningConfig(PromptLearningConfig):
    PEFT_TYPE: ClassVar[PeftType] = PeftType.PREFIX_TUNING

    prefix_projection: bool = config_field(
        False, help="Produce the prefix with a small MLP while training (steadier; more memory while training)."
    )
    encoder_hidden_size: int | None = config_field(
        None, help="With prefix_projection: width of the MLP's hidden layer (empty: the model's width)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.encoder_hidden_size is not None:
            positive_int("encoder_hidden_size", self.encoder_hidden_size)

    def fitted_to(self, model: nn.Module) -> PrefixTuningConfig:
        """Keys and values have the attention's own sizes, which differ from the hidden size
        when the model groups its key/value heads (GQA) or sets its own head size (T5's d_kv)."""
        config = model.config
        filled = super().fitted_to(model)
        if self.token_dim is None:
            heads = filled.num_attention_heads
            head_dim = getattr(config, "head_dim", None) or getattr(config, "d_kv", None) or filled.token_dim // heads
            kv_heads = getattr(config, "num_key_value_heads", None) or heads
            filled = dataclasses.replace(filled, token_dim=head_dim * kv_heads, num_attention_heads=kv_heads)
        if filled.encoder_hidden_size is None:
            filled = dataclasses.replace(filled, encoder_hidden_size=filled.token_dim)
        return filled


class ProjectedPrefix(ComputedPrompt):
    """Trainable inputs (n, width) -> Linear -> tanh -> Linear -> prefix (n, layers * 2 * width)."""

    def __init__(self, config: PrefixTuningConfig) -> None:
        super().__init__()
        width, hidden = config.token_dim, config.encoder_hidden_size
        self.embedding = nn.Parameter(torch.randn(config.num_virtual_tokens, width))
        self.transform = nn.Sequential(
            nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, config.num_layers * 2 * width)
        )

    def forward(self, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.transform(self.embedding)


class PrefixTuningModel(PrefixModel):
    config_cls = PrefixTuningConfig

    def build_encoder(self, config: PrefixTuningConfig) -> PromptEncoder:
        if config.prefix_projection:
            return ProjectedPrefix(config)
        return DirectPrompt(config.num_virtual_tokens, config.num_layers * 2 * config.token_dim)


SPEC = register_method(
    MethodSpec(
        name="prefix_tuning",
        title="Prefix tuning",
        peft_type=PeftType.PREFIX_TUNING,
        config_cls=PrefixTuningConfig,
        model_cls=PrefixTuningModel,
        tasks=PROMPT_TASKS,
        mergeable=False,
        summary="Learns keys and values put in front of every attention layer; strong for generation tasks.",
    )
)
