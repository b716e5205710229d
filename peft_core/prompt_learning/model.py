"""``PromptModel``: a base model plus named prompt adapters.

No layer of the base model is touched. Each adapter is a ``PromptEncoder``
that produces the virtual tokens (or the prefix) and is kept in
``self.prompt_encoder[name]``; a subclass says how they enter the model
(``virtual_tokens.py``, ``prefix.py``) and each method says how its encoder
is built. Saved tensors use PEFT's names: ``prompt_embeddings`` (the
encoder's output), plus ``base_model.<module>`` for ``modules_to_save``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from peft_core.prompt_learning.config import PromptLearningConfig
from peft_core.tuner import AdapterModel


class PromptEncoder(nn.Module):
    """Produces an adapter's virtual tokens: ``(tokens, width)``, or ``(batch, tokens, width)`` per task."""

    def forward(self, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError

    def live_tensors(self) -> dict[str, torch.Tensor]:
        """The tensors a saved adapter is loaded into, by PEFT name."""
        raise NotImplementedError

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        return {k: v.detach() for k, v in self.live_tensors().items()}

    def loadable(self) -> PromptEncoder:
        """An encoder of the form the saved file holds (itself, unless it saves a computed output)."""
        return self


class DirectPrompt(PromptEncoder):
    """Virtual tokens stored as they are: one trainable row per token."""

    def __init__(self, rows: int, width: int, init: torch.Tensor | None = None) -> None:
        super().__init__()
        self.embedding = nn.Parameter(torch.randn(rows, width) if init is None else init.clone())

    def forward(self, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.embedding

    def live_tensors(self) -> dict[str, torch.Tensor]:
        return {"prompt_embeddings": self.embedding}


class ComputedPrompt(PromptEncoder):
    """An encoder whose output, not its weights, is the saved adapter (P-tuning, prefix projection).

    The PEFT format stores only the computed tokens, so an adapter loaded
    from a file continues as a ``DirectPrompt`` of those tokens.
    """

    def tensors_to_save(self) -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return {"prompt_embeddings": self().detach()}

    def live_tensors(self) -> dict[str, torch.Tensor]:
        # The trained weights; a file is never loaded into them (see ``loadable``).
        return {f"prompt_encoder.{name}": param for name, param in self.named_parameters()}

    def loadable(self) -> PromptEncoder:
        with torch.no_grad():
            tokens = self()
        return DirectPrompt(*tokens.shape).to(tokens.device)


class PromptModel(AdapterModel):
    """Holds ``self.model`` untouched and the prompt adapters in ``self.prompt_encoder``."""

    key_prefix: ClassVar[str] = "base_model."

    # -- what a method implements ----------------------------------------------
    def build_encoder(self, config: PromptLearningConfig) -> PromptEncoder:
        raise NotImplementedError

    def check_model(self, config: PromptLearningConfig) -> None:
        """Raise a clear error if the base model cannot take this kind of prompt."""

    # -- adapters -------------------------------------------------------------------
    def add_adapter(self, adapter_name: str, config: PromptLearningConfig) -> None:
        if adapter_name in self.peft_config:
            raise ValueError(f"an adapter named {adapter_name!r} already exists; pick another name or delete it first")
        if not isinstance(config, self.config_cls):
            raise ValueError(
                f"this model holds {self.config_cls.__name__} adapters; a {type(config).__name__} "
                f"cannot be added to it (adapters of different methods cannot be mixed on one model)"
            )
        config = config.fitted_to(self.model)
        self.check_model(config)
        if "prompt_encoder" not in self._modules:
            self.prompt_encoder = nn.ModuleDict()
        embeddings = self.model.get_input_embeddings().weight
        self.prompt_encoder[adapter_name] = self.build_encoder(config).to(embeddings.device)
        self._wrap_modules_to_save(adapter_name, list(config.modules_to_save or []), self.wrappable_modules())
        self.peft_config[adapter_name] = config
        self.set_adapter(self.active_adapters or adapter_name)

    def set_adapter(self, adapter_names: str | Sequence[str]) -> None:
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        if len(names) > 1:
            raise ValueError(f"prompt adapters cannot be active together; pick one of {names}")
        super().set_adapter(names)
        trainable = not self.peft_config[names[0]].inference_mode
        for name, encoder in self.prompt_encoder.items():
            encoder.requires_grad_(trainable and name == names[0])

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        del self.prompt_encoder[adapter_name]

    def set_adapters_disabled(self, disabled: bool) -> None:
        super().set_adapters_disabled(disabled)
        self.prompts_disabled = disabled

    @property
    def active_config(self) -> PromptLearningConfig | None:
        """The active adapter's config, or None while adapters are disabled."""
        if getattr(self, "prompts_disabled", False):
            return None
        return self.peft_config[self.active_adapters[0]]

    def prompts(self, batch_size: int, task_ids: torch.Tensor | None = None) -> torch.Tensor:
        """The active adapter's virtual tokens for a batch: ``(batch, tokens, width)``."""
        tokens = self.prompt_encoder[self.active_adapters[0]](task_ids)
        return tokens if tokens.dim() == 3 else tokens.unsqueeze(0).expand(batch_size, -1, -1)

    # -- merging does not apply ----------------------------------------------------
    def merge_adapter(self, adapter_names: Sequence[str] | None = None, safe_merge: bool = False) -> None:
        raise ValueError("prompt adapters add tokens, not weights, so they cannot be merged into the model")

    def merge_and_unload(self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> nn.Module:
        self.merge_adapter()
        return self.model

    # -- tensors in the PEFT format --------------------------------------------------
    def adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        out = dict(self.prompt_encoder[adapter_name].live_tensors())
        out.update({self.key_prefix + k: v for k, v in self.saved_module_tensors(adapter_name).items()})
        return out

    def tensors_to_save(self, adapter_name: str) -> dict[str, torch.Tensor]:
        out = dict(self.prompt_encoder[adapter_name].tensors_to_save())
        out.update({self.key_prefix + k: v.detach() for k, v in self.saved_module_tensors(adapter_name).items()})
        return out

    def prepare_for_loading(self, adapter_name: str) -> None:
        encoder = self.prompt_encoder[adapter_name].loadable()
        self.prompt_encoder[adapter_name] = encoder
        encoder.requires_grad_(adapter_name in self.active_adapters and not self.peft_config[adapter_name].inference_mode)

    # -- inputs ------------------------------------------------------------------------
    @staticmethod
    def _kwargs_with_input_ids(args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        if len(args) > 1:
            raise TypeError("pass the model inputs by name (input_ids=..., attention_mask=...)")
        if args:
            kwargs = {"input_ids": args[0], **kwargs}
        return kwargs

    @staticmethod
    def _batch_size(kwargs: dict[str, Any]) -> int:
        for key in ("input_ids", "inputs_embeds"):
            if kwargs.get(key) is not None:
                return kwargs[key].shape[0]
        raise ValueError("give input_ids or inputs_embeds")
