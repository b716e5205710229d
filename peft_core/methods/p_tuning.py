"""P-tuning: virtual tokens produced by a small MLP or LSTM over trainable inputs.

The encoder makes training smoother than learning the tokens directly; the
saved adapter (in the PEFT format) holds the tokens it produced, so an adapter
loaded from a file keeps training those tokens directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from peft_core.config import PeftType, config_field
from peft_core.config_errors import bad, positive_int
from peft_core.methods.prompt_tuning import PROMPT_TASKS, random_tokens
from peft_core.prompt_learning import PromptLearningConfig
from peft_core.prompt_learning.model import ComputedPrompt
from peft_core.prompt_learning.virtual_tokens import VirtualTokenModel
from peft_core.registry import MethodSpec, register_method

ENCODER_TYPES = ("MLP", "LSTM")


@dataclass
class PromptEncoderConfig(PromptLearningConfig):
    PEFT_TYPE: ClassVar[PeftType] = PeftType.P_TUNING

    encoder_reparameterization_type: str = config_field(
        "MLP", help="The network that produces the virtual tokens: MLP (faster) or LSTM.", choices=ENCODER_TYPES
    )
    encoder_hidden_size: int | None = config_field(
        None, help="Width of that network's hidden layers (empty: the model's hidden size)."
    )
    encoder_num_layers: int = config_field(2, help="Hidden layers of the MLP, or stacked LSTM layers (1-4).")
    encoder_dropout: float = config_field(0.0, help="Dropout inside that network while training (0 to 0.5).")

    def __post_init__(self) -> None:
        super().__post_init__()
        kind = str(getattr(self.encoder_reparameterization_type, "value", self.encoder_reparameterization_type)).upper()
        if kind not in ENCODER_TYPES:
            raise bad("encoder_type", value=self.encoder_reparameterization_type)
        self.encoder_reparameterization_type = kind
        positive_int("encoder_num_layers", self.encoder_num_layers, "at_least_one")
        if self.encoder_hidden_size is not None:
            positive_int("encoder_hidden_size", self.encoder_hidden_size)
        if isinstance(self.encoder_dropout, bool) or not isinstance(self.encoder_dropout, (int, float)) or not (
            0 <= self.encoder_dropout < 1
        ):
            raise bad("dropout", "encoder_dropout", self.encoder_dropout)


class PTuningEncoder(ComputedPrompt):
    """Trainable inputs (rows, width) -> MLP or bidirectional LSTM -> virtual tokens (rows, width)."""

    def __init__(self, config: PromptEncoderConfig, start: torch.Tensor) -> None:
        super().__init__()
        width = config.token_dim
        hidden = config.encoder_hidden_size or width
        self.embedding = nn.Parameter(start.clone())  # (rows, width)
        if config.encoder_reparameterization_type == "LSTM":
            dropout = config.encoder_dropout if config.encoder_num_layers > 1 else 0.0
            self.lstm = nn.LSTM(width, hidden, config.encoder_num_layers, dropout=dropout,
                                bidirectional=True, batch_first=True)
            self.head = nn.Sequential(nn.Linear(2 * hidden, 2 * hidden), nn.ReLU(), nn.Linear(2 * hidden, width))
        else:
            self.lstm = None
            layers: list[nn.Module] = []
            size = width
            for _ in range(config.encoder_num_layers):
                layers += [nn.Linear(size, hidden), nn.ReLU(), nn.Dropout(config.encoder_dropout)]
                size = hidden
            self.head = nn.Sequential(*layers, nn.Linear(size, width))

    def forward(self, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embedding
        if self.lstm is not None:
            x = self.lstm(x.unsqueeze(0))[0].squeeze(0)  # (rows, 2 * hidden)
        return self.head(x)


class PTuningModel(VirtualTokenModel):
    config_cls = PromptEncoderConfig

    def build_encoder(self, config: PromptEncoderConfig) -> PTuningEncoder:
        rows = config.num_virtual_tokens * config.num_transformer_submodules
        return PTuningEncoder(config, random_tokens(self.model.get_input_embeddings(), rows))


SPEC = register_method(
    MethodSpec(
        name="p_tuning",
        title="P-tuning",
        peft_type=PeftType.P_TUNING,
        config_cls=PromptEncoderConfig,
        model_cls=PTuningModel,
        tasks=PROMPT_TASKS,
        mergeable=False,
        summary="Virtual tokens produced by a small MLP/LSTM; steadier to train than plain prompt tuning.",
    )
)
