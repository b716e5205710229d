"""Prompt tuning: trained embeddings for a few virtual tokens in front of every input."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

import torch

from peft_core.config import PeftType, TaskType, config_field
from peft_core.config_errors import ConfigError, bad
from peft_core.prompt_learning import DirectPrompt, PromptLearningConfig
from peft_core.prompt_learning.virtual_tokens import VirtualTokenModel
from peft_core.registry import MethodSpec, register_method


class PromptTuningInit(str, enum.Enum):
    RANDOM = "RANDOM"  # small random vectors
    TEXT = "TEXT"  # the embeddings of a text, e.g. the task's instruction
    SAMPLE_VOCAB = "SAMPLE_VOCAB"  # embeddings of random vocabulary tokens


@dataclass
class PromptTuningConfig(PromptLearningConfig):
    PEFT_TYPE: ClassVar[PeftType] = PeftType.PROMPT_TUNING
    INIT_CHOICES: ClassVar[type[enum.Enum]] = PromptTuningInit

    prompt_tuning_init: PromptTuningInit = config_field(
        PromptTuningInit.RANDOM,
        help="How the virtual tokens start: RANDOM, TEXT (the embeddings of prompt_tuning_init_text; often "
        "learns faster) or SAMPLE_VOCAB (embeddings of random vocabulary tokens).",
        choices=tuple(PromptTuningInit),
    )
    prompt_tuning_init_text: str | None = config_field(
        None, help="With TEXT: a sentence that describes the task, e.g. 'Classify the sentiment of this review:'."
    )
    tokenizer_name_or_path: str | None = config_field(
        None, help="With TEXT: the tokenizer (Hub id or path) that turns the text into token ids.", ui=False
    )
    tokenizer_kwargs: dict | None = config_field(None, help="Extra arguments for loading that tokenizer.", ui=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        choices = type(self).INIT_CHOICES
        text = str(getattr(self.prompt_tuning_init, "value", self.prompt_tuning_init)).upper()
        if text not in choices.__members__:
            valid = ", ".join(choices.__members__)
            raise bad("one_of", "prompt_tuning_init", self.prompt_tuning_init, choices=valid)
        self.prompt_tuning_init = choices(text)
        if text == "TEXT" and not (self.prompt_tuning_init_text and self.tokenizer_name_or_path):
            raise ConfigError("text_init_needs_text")


def initial_tokens(config: PromptTuningConfig, embeddings: torch.nn.Embedding, rows: int) -> torch.Tensor:
    """Starting values for ``rows`` virtual tokens, per ``prompt_tuning_init``."""
    weight = embeddings.weight.detach()
    init = config.prompt_tuning_init.value
    if init == "SAMPLE_VOCAB":
        return weight[torch.randint(0, weight.shape[0], (rows,), device=weight.device)].float()
    if init == "TEXT":
        ids = text_token_ids(config)
        repeated = (ids * (rows // len(ids) + 1))[:rows]  # repeat the text to fill every row
        return weight[torch.tensor(repeated, device=weight.device)].float()
    return random_tokens(embeddings, rows)


def random_tokens(embeddings: torch.nn.Embedding, rows: int) -> torch.Tensor:
    """Random tokens on the scale of the model's own embeddings, so they neither drown nor vanish."""
    weight = embeddings.weight.detach()
    return torch.randn(rows, weight.shape[1], device=weight.device) * weight.float().std()


def text_token_ids(config: PromptTuningConfig) -> list[int]:
    from transformers import AutoTokenizer

    from peft_core.presets import resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.tokenizer_name_or_path), **(config.tokenizer_kwargs or {}))
    ids = tokenizer(config.prompt_tuning_init_text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError("prompt_tuning_init_text became no tokens; give a non-empty text")
    return ids


class PromptTuningModel(VirtualTokenModel):
    config_cls = PromptTuningConfig

    def build_encoder(self, config: PromptTuningConfig) -> DirectPrompt:
        rows = config.num_virtual_tokens * config.num_transformer_submodules
        tokens = initial_tokens(config, self.model.get_input_embeddings(), rows)
        return DirectPrompt(rows, config.token_dim, init=tokens)


PROMPT_TASKS = frozenset({TaskType.CAUSAL_LM, TaskType.SEQ_2_SEQ_LM, TaskType.SEQ_CLS})

SPEC = register_method(
    MethodSpec(
        name="prompt_tuning",
        title="Prompt tuning",
        peft_type=PeftType.PROMPT_TUNING,
        config_cls=PromptTuningConfig,
        model_cls=PromptTuningModel,
        tasks=PROMPT_TASKS,
        mergeable=False,
        summary="Learns a few virtual tokens put in front of the input; tiny adapters, the model untouched.",
    )
)
