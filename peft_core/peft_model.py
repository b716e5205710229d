"""``PeftModel``: a base model plus named adapters, with the PEFT library's API.

The method's ``AdapterModel`` sits at ``self.base_model`` and the user's
model at ``self.base_model.model``. Task wrappers (causal LM, seq2seq,
classification) add what their task needs: generation, and the new
classification head trained in full (``modules_to_save``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from peft_core import hub, serialization
from peft_core.config import PeftConfig, TaskType
from peft_core.registry import get_method

logger = logging.getLogger(__name__)


class PeftModel(nn.Module):
    """A base model with adapters; forwards like the base model."""

    # Top-level heads that a task trains in full when the user names none.
    default_modules_to_save: ClassVar[tuple[str, ...]] = ()

    def __init__(self, model: nn.Module, peft_config: PeftConfig, adapter_name: str = "default") -> None:
        super().__init__()
        if isinstance(model, PeftModel):
            raise ValueError("this model already has adapters; use add_adapter() to add another one")
        check_task(peft_config)
        spec = get_method(peft_config.peft_type)
        self.base_model = spec.model_cls(model, self._with_task_defaults(peft_config, model), adapter_name)

    # -- basics ---------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        outputs = self.base_model(*args, **kwargs)
        if self.training and getattr(outputs, "loss", None) is not None:
            extra = self.base_model.regularization_loss()
            if extra is not None:
                outputs.loss = outputs.loss + extra
        return outputs

    def on_optimizer_step(self, global_step: int) -> None:
        """Let the method update itself after an optimizer step (a no-op for most methods).

        Training loops call it after ``optimizer.step()`` and before
        ``optimizer.zero_grad()``; peft_core's trainer does.
        """
        self.base_model.on_optimizer_step(global_step)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "base_model":
                raise
            return getattr(self.base_model, name)

    @property
    def peft_config(self) -> dict[str, PeftConfig]:
        return self.base_model.peft_config

    @property
    def active_adapters(self) -> list[str]:
        return list(self.base_model.active_adapters)

    @property
    def active_adapter(self) -> str:
        return self.base_model.active_adapters[0]

    def get_base_model(self) -> nn.Module:
        """The user's model, with the adapter layers in it."""
        return self.base_model.model

    def _with_task_defaults(self, config: PeftConfig, model: nn.Module) -> PeftConfig:
        if not self.default_modules_to_save or not hasattr(config, "modules_to_save"):
            return config
        present = [name for name in self.default_modules_to_save if hasattr(model, name)]
        chosen = list(dict.fromkeys(list(config.modules_to_save or []) + present))
        return dataclasses.replace(config, modules_to_save=chosen or None)

    # -- several adapters -----------------------------------------------------
    def add_adapter(self, adapter_name: str, peft_config: PeftConfig) -> None:
        """Add a new adapter (inactive until ``set_adapter``)."""
        check_task(peft_config)
        self.base_model.add_adapter(adapter_name, self._with_task_defaults(peft_config, self.get_base_model()))

    def set_adapter(self, adapter_name: str | Sequence[str]) -> None:
        self.base_model.set_adapter(adapter_name)

    def delete_adapter(self, adapter_name: str) -> None:
        self.base_model.delete_adapter(adapter_name)

    @contextlib.contextmanager
    def disable_adapter(self) -> Iterator[None]:
        """Within the block the model behaves exactly like the base model."""
        self.base_model.set_adapters_disabled(True)
        try:
            yield
        finally:
            self.base_model.set_adapters_disabled(False)

    def disable_adapters(self) -> None:
        self.base_model.set_adapters_disabled(True)

    def enable_adapters(self) -> None:
        self.base_model.set_adapters_disabled(False)

    # -- merging -----------------------------------------------------------------
    def merge_adapter(self, adapter_names: Sequence[str] | None = None, safe_merge: bool = False) -> None:
        self._check_mergeable()
        self.base_model.merge_adapter(adapter_names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        self.base_model.unmerge_adapter()

    def merge_and_unload(self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> nn.Module:
        """Fold the adapters into the weights; returns the plain base model (no added latency)."""
        self._check_mergeable()
        return self.base_model.merge_and_unload(safe_merge=safe_merge, adapter_names=adapter_names)

    def unload(self) -> nn.Module:
        """Remove the adapters without merging; returns the original base model."""
        return self.base_model.unload()

    def _check_mergeable(self) -> None:
        for config in self.peft_config.values():
            spec = get_method(config.peft_type)
            if not spec.mergeable:
                raise ValueError(f"{spec.title} adapters add tokens, not weights, so they cannot be merged into the model")

    # -- parameters ----------------------------------------------------------------
    def get_nb_trainable_parameters(self) -> tuple[int, int]:
        """``(trainable, all)`` parameter counts (4-bit weights counted unpacked)."""
        trainable = total = 0
        for param in self.parameters():
            count = param.numel()
            if type(param).__name__ == "Params4bit":
                count *= 2 * getattr(param, "quant_storage", torch.uint8).itemsize
            total += count
            if param.requires_grad:
                trainable += count
        return trainable, total

    def print_trainable_parameters(self) -> None:
        trainable, total = self.get_nb_trainable_parameters()
        share = 100 * trainable / total if total else 0.0
        print(f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {share:.4f}")

    # -- saving and loading ---------------------------------------------------------
    def get_adapter_state_dict(self, adapter_name: str | None = None) -> dict[str, torch.Tensor]:
        return serialization.get_peft_model_state_dict(self, adapter_name or self.active_adapter)

    def save_pretrained(
        self,
        save_directory: str | os.PathLike,
        selected_adapters: Sequence[str] | None = None,
        safe_serialization: bool = True,
        is_main_process: bool = True,
    ) -> None:
        """Write each adapter as adapter_config.json + adapter_model.safetensors.

        The adapter named "default" goes to ``save_directory`` itself, any
        other to a sub-folder of its name (the PEFT library's layout).
        """
        if not safe_serialization:
            raise ValueError("peft_core writes safetensors only; pickled adapter files are not written")
        if os.path.isfile(save_directory):
            raise ValueError(f"{save_directory} is a file; save_pretrained needs a directory")
        names = list(selected_adapters or self.peft_config)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown:
            raise ValueError(f"no adapter named {unknown}; this model has: {list(self.peft_config)}")
        if not is_main_process:
            return
        for name in names:
            directory = save_directory if name == "default" else os.path.join(save_directory, name)
            serialization.save_adapter_weights(self.get_adapter_state_dict(name), directory)
            config = self.peft_config[name]
            if config.base_model_name_or_path is None:
                config = dataclasses.replace(config, base_model_name_or_path=self._base_model_name())
            config.save_pretrained(directory)

    def _base_model_name(self) -> str | None:
        base = self.get_base_model()
        name = getattr(getattr(base, "config", None), "_name_or_path", None) or getattr(base, "name_or_path", None)
        return name or None

    @classmethod
    def from_pretrained(
        cls,
        model: nn.Module,
        model_id: str | os.PathLike,
        adapter_name: str = "default",
        is_trainable: bool = False,
        config: PeftConfig | None = None,
        allow_pickle: bool = False,
        subfolder: str | None = None,
        revision: str | None = None,
        token: str | None = None,
    ) -> PeftModel:
        """Load an adapter (local directory or Hub id) onto ``model``."""
        config, state_dict = _read_adapter(model_id, config, is_trainable, allow_pickle, subfolder, revision, token)
        wrapper = cls if cls is not PeftModel else task_model_class(config.task_type)
        peft_model = wrapper(model, config, adapter_name)
        serialization.set_peft_model_state_dict(peft_model, state_dict, adapter_name)
        if not is_trainable:
            peft_model.eval()
        return peft_model

    def load_adapter(
        self,
        model_id: str | os.PathLike,
        adapter_name: str,
        is_trainable: bool = False,
        allow_pickle: bool = False,
        subfolder: str | None = None,
        revision: str | None = None,
        token: str | None = None,
    ) -> None:
        """Load another adapter next to the present ones (inactive until ``set_adapter``)."""
        config, state_dict = _read_adapter(model_id, None, is_trainable, allow_pickle, subfolder, revision, token)
        self.add_adapter(adapter_name, config)
        try:
            serialization.set_peft_model_state_dict(self, state_dict, adapter_name)
        except ValueError:
            self.delete_adapter(adapter_name)  # leave the model as it was
            raise

    def push_to_hub(
        self,
        repo_id: str,
        token: str | None = None,
        private: bool = False,
        commit_message: str = "Upload adapter with PEFT Studio",
        model_card_extra: str = "",
    ) -> str:
        """Upload the adapter(s) and a model card; returns the repo URL."""
        config = self.peft_config[self.active_adapter]

        def save(folder: str) -> None:
            self.save_pretrained(folder)
            title = get_method(config.peft_type).title
            base = config.base_model_name_or_path or self._base_model_name()
            card = hub.model_card(repo_id, base, title, config.to_dict(), model_card_extra)
            with open(os.path.join(folder, "README.md"), "w", encoding="utf-8") as fh:
                fh.write(card)

        return hub.push_folder(save, repo_id, token=token, private=private, commit_message=commit_message)


def check_task(config: PeftConfig) -> None:
    """Refuse a method for a task it cannot train, naming the ones that fit."""
    spec = get_method(config.peft_type)
    task = config.task_type
    if task is None and config.is_prompt_learning:
        fits = ", ".join(sorted(t.value for t in spec.tasks))
        raise ValueError(f"{spec.title} needs a task_type to know where its tokens go; one of: {fits}")
    if task is not None and task not in spec.tasks:
        fits = ", ".join(sorted(t.value for t in spec.tasks))
        raise ValueError(f"{spec.title} does not fit task {task.value}; it fits: {fits}")


def _read_adapter(
    model_id: str | os.PathLike,
    config: PeftConfig | None,
    is_trainable: bool,
    allow_pickle: bool,
    subfolder: str | None,
    revision: str | None,
    token: str | None,
) -> tuple[PeftConfig, dict[str, torch.Tensor]]:
    """An adapter's config (unless given) and tensors, from a folder or the Hub."""
    hub_kwargs = dict(subfolder=subfolder, revision=revision, token=token)
    config = config or PeftConfig.from_pretrained(model_id, **hub_kwargs)
    config = dataclasses.replace(config, inference_mode=not is_trainable)
    return config, serialization.load_adapter_weights(model_id, allow_pickle=allow_pickle, **hub_kwargs)


class PeftModelForCausalLM(PeftModel):
    """Decoder-only language models (GPT-2, Llama, ...)."""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.generate(*args, **kwargs)


class PeftModelForSeq2SeqLM(PeftModel):
    """Encoder-decoder language models (T5, BART, ...)."""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model.generate(*args, **kwargs)


class PeftModelForSequenceClassification(PeftModel):
    default_modules_to_save = ("classifier", "score")


class PeftModelForTokenClassification(PeftModel):
    default_modules_to_save = ("classifier", "score")


class PeftModelForImageClassification(PeftModel):
    """ViT / Swin classifiers: the new head is trained in full."""

    default_modules_to_save = ("classifier",)


_TASK_MODELS: dict[TaskType | None, type[PeftModel]] = {
    TaskType.CAUSAL_LM: PeftModelForCausalLM,
    TaskType.SEQ_2_SEQ_LM: PeftModelForSeq2SeqLM,
    TaskType.SEQ_CLS: PeftModelForSequenceClassification,
    TaskType.TOKEN_CLS: PeftModelForTokenClassification,
    TaskType.IMAGE_CLS: PeftModelForImageClassification,
}


def task_model_class(task_type: TaskType | None) -> type[PeftModel]:
    return _TASK_MODELS.get(task_type, PeftModel)


def get_peft_model(model: nn.Module, peft_config: PeftConfig, adapter_name: str = "default") -> PeftModel:
    """Wrap ``model`` with a new, trainable adapter; only adapter parameters train."""
    config = dataclasses.replace(peft_config, inference_mode=False)
    return task_model_class(config.task_type)(model, config, adapter_name)
