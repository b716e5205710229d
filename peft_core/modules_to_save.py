"""Whole modules trained alongside an adapter (``modules_to_save``).

A new classification head, for instance, must be trained in full. The
wrapper keeps the original module and one trainable copy per adapter, and
runs the copy of the active adapter. The copies are saved with the adapter
under the original module's own parameter names (PEFT's format).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


class ModulesToSaveWrapper(nn.Module):
    """Holds ``original_module`` and trainable copies in ``modules_to_save``."""

    def __init__(self, original_module: nn.Module) -> None:
        super().__init__()
        self.original_module = original_module
        self.modules_to_save = nn.ModuleDict()
        self.active_adapter: str | None = None
        self.adapters_disabled = False

    def add_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.modules_to_save:
            clone = copy.deepcopy(self.original_module)
            # A quantized or half-precision head would train poorly; train it in fp32.
            for param in clone.parameters():
                if param.is_floating_point() and param.dtype in (torch.float16, torch.bfloat16):
                    param.data = param.data.float()
            self.modules_to_save[adapter_name] = clone

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.modules_to_save:
            del self.modules_to_save[adapter_name]
        if self.active_adapter == adapter_name:
            self.active_adapter = None

    def set_adapter(self, adapter_names: Iterable[str], trainable: bool) -> None:
        names = [n for n in adapter_names if n in self.modules_to_save]
        if len(names) > 1:
            raise ValueError(
                f"adapters {names} each have their own copy of a module to save; only one of them can be active at a time"
            )
        self.active_adapter = names[0] if names else None
        self.original_module.requires_grad_(False)
        for name, module in self.modules_to_save.items():
            module.requires_grad_(trainable and name == self.active_adapter)

    @property
    def active_module(self) -> nn.Module:
        if self.adapters_disabled or self.active_adapter is None:
            return self.original_module
        return self.modules_to_save[self.active_adapter]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.active_module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            # Model code may read e.g. ``classifier.weight`` or ``out_features``.
            modules = self._modules
            if "original_module" not in modules:
                raise
            return getattr(self.active_module, name)
