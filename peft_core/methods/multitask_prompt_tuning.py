"""Multitask prompt tuning: one shared prompt, scaled per task by a low-rank matrix.

The prompt of task ``t`` is ``shared * (cols[t] @ rows[t])`` (elementwise):
``shared`` is (tokens, width), ``cols[t]`` (tokens, ranks), ``rows[t]``
(ranks, width). A prompt trained on several source tasks transfers to a new
task by starting from the source's shared prompt and task factors.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

import torch
from safetensors.torch import load_file
from torch import nn

from peft_core.config import PeftType, config_field
from peft_core.config_errors import ConfigError, positive_int
from peft_core.methods.prompt_tuning import PROMPT_TASKS, PromptTuningConfig, initial_tokens
from peft_core.prompt_learning import PromptEncoder
from peft_core.prompt_learning.virtual_tokens import VirtualTokenModel
from peft_core.registry import MethodSpec, register_method


class MultitaskPromptTuningInit(str, enum.Enum):
    RANDOM = "RANDOM"
    TEXT = "TEXT"
    AVERAGE_SOURCE_TASKS = "AVERAGE_SOURCE_TASKS"  # source shared prompt, task factors averaged over its tasks
    EXACT_SOURCE_TASK = "EXACT_SOURCE_TASK"  # source shared prompt and one source task's factors
    ONLY_SOURCE_SHARED = "ONLY_SOURCE_SHARED"  # source shared prompt, fresh task factors


SOURCE_INITS = ("AVERAGE_SOURCE_TASKS", "EXACT_SOURCE_TASK", "ONLY_SOURCE_SHARED")


@dataclass
class MultitaskPromptTuningConfig(PromptTuningConfig):
    PEFT_TYPE: ClassVar[PeftType] = PeftType.MULTITASK_PROMPT_TUNING
    INIT_CHOICES: ClassVar[type[enum.Enum]] = MultitaskPromptTuningInit

    prompt_tuning_init: MultitaskPromptTuningInit = config_field(
        MultitaskPromptTuningInit.RANDOM,
        help="How the prompt starts: RANDOM, TEXT, or from a prompt trained on source tasks "
        "(AVERAGE_SOURCE_TASKS, EXACT_SOURCE_TASK, ONLY_SOURCE_SHARED; see prompt_tuning_init_state_dict_path).",
        choices=tuple(MultitaskPromptTuningInit),
    )
    prompt_tuning_init_state_dict_path: str | None = config_field(
        None, help="With a source init: the source adapter's adapter_model.safetensors.", ui=False
    )
    prompt_tuning_init_task: int = config_field(0, help="With EXACT_SOURCE_TASK: which source task to start from.", ui=False)
    num_ranks: int = config_field(1, help="Rank of each task's scaling matrix (1 is usual).")
    num_tasks: int = config_field(1, help="How many tasks share the prompt; each example names its task_id.")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("num_ranks", "num_tasks"):
            value = getattr(self, name)
            positive_int(name, value, "at_least_one")
        if self.prompt_tuning_init.value in SOURCE_INITS and not self.prompt_tuning_init_state_dict_path:
            raise ConfigError("source_init_needs_path", init=self.prompt_tuning_init.value)


class MultitaskPrompt(PromptEncoder):
    def __init__(self, shared: torch.Tensor, tasks: int, ranks: int) -> None:
        super().__init__()
        rows, width = shared.shape
        self.embedding = nn.Parameter(shared.clone())
        # cols @ rows starts as all ones: every task starts from the shared prompt
        self.prefix_task_cols = nn.Parameter(torch.ones(tasks, rows, ranks))
        self.prefix_task_rows = nn.Parameter(torch.full((tasks, ranks, width), 1.0 / ranks))

    def forward(self, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        if task_ids is None:
            raise ValueError("multitask prompt tuning needs task_ids: one task number per example")
        task_ids = torch.as_tensor(task_ids, device=self.embedding.device).long().reshape(-1)
        if task_ids.min() < 0 or task_ids.max() >= self.prefix_task_cols.shape[0]:
            raise ValueError(f"task_ids must lie in 0..{self.prefix_task_cols.shape[0] - 1}; got {task_ids.tolist()}")
        scale = self.prefix_task_cols[task_ids] @ self.prefix_task_rows[task_ids]  # (batch, rows, width)
        return self.embedding.unsqueeze(0) * scale

    def live_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "prompt_embeddings": self.embedding,
            "prefix_task_cols": self.prefix_task_cols,
            "prefix_task_rows": self.prefix_task_rows,
        }

    def start_from_source(self, config: MultitaskPromptTuningConfig) -> None:
        source = load_file(config.prompt_tuning_init_state_dict_path, device=str(self.embedding.device))
        with torch.no_grad():
            self.embedding.copy_(source["prompt_embeddings"])
            init = config.prompt_tuning_init.value
            if init == "ONLY_SOURCE_SHARED":
                return
            cols, rows = source["prefix_task_cols"], source["prefix_task_rows"]
            if init == "EXACT_SOURCE_TASK":
                cols, rows = cols[config.prompt_tuning_init_task], rows[config.prompt_tuning_init_task]
            else:
                cols, rows = cols.mean(dim=0), rows.mean(dim=0)
            self.prefix_task_cols.copy_(cols.expand_as(self.prefix_task_cols))
            self.prefix_task_rows.copy_(rows.expand_as(self.prefix_task_rows))


class MultitaskPromptModel(VirtualTokenModel):
    config_cls = MultitaskPromptTuningConfig
    decoder_tokens = True  # with encoder-decoder models, the second half prefixes the decoder

    def build_encoder(self, config: MultitaskPromptTuningConfig) -> MultitaskPrompt:
        rows = config.num_virtual_tokens * config.num_transformer_submodules
        from_source = config.prompt_tuning_init.value in SOURCE_INITS
        start = config if not from_source else PromptTuningConfig(num_virtual_tokens=config.num_virtual_tokens)
        shared = initial_tokens(start, self.model.get_input_embeddings(), rows)
        encoder = MultitaskPrompt(shared, config.num_tasks, config.num_ranks)
        if from_source:
            encoder.start_from_source(config)
        return encoder


SPEC = register_method(
    MethodSpec(
        name="multitask_prompt_tuning",
        title="Multitask prompt tuning",
        peft_type=PeftType.MULTITASK_PROMPT_TUNING,
        config_cls=MultitaskPromptTuningConfig,
        model_cls=MultitaskPromptModel,
        tasks=PROMPT_TASKS,
        mergeable=False,
        summary="One prompt shared by several tasks, scaled per task; transfers to new tasks.",
    )
)
