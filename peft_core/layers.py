"""The base of every adapter layer: a module that wraps one base-model module.

A wrapper keeps the original module as ``base_layer`` and holds each
adapter's parameters in ``nn.ModuleDict`` / ``nn.ParameterDict`` containers
keyed by adapter name (their attribute names are listed in
``adapter_param_attrs``). Its output is ``base_layer(x)`` plus what each
active adapter adds, unless the adapters are merged into the base weight or
disabled. A method's layer subclasses this and says how to build its
parameters, what it adds in the forward pass and what its delta weight is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, ClassVar

import torch
from torch import nn

from peft_core import weights


class AdapterLayer(nn.Module):
    """Wraps ``base_layer``; subclasses add per-adapter parameters."""

    # Attributes (ModuleDict / ParameterDict keyed by adapter name) that hold
    # adapter parameters. They are the method's tensor names in the PEFT format.
    adapter_param_attrs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__()
        self.base_layer = base_layer
        self.active_adapters: list[str] = []
        self.merged_adapters: list[str] = []
        self.adapters_disabled = False

    # -- what a method implements -------------------------------------
    def update_layer(self, adapter_name: str, config: Any, key: str) -> None:
        """Create the parameters of ``adapter_name`` for this layer."""
        raise NotImplementedError

    def add_delta(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """Return ``result`` plus what ``adapter_name`` adds for input ``x``."""
        raise NotImplementedError

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The change to the base weight (in its layout) that merging applies."""
        raise NotImplementedError

    def forget_adapter(self, adapter_name: str) -> None:
        """Drop any per-adapter bookkeeping beyond the parameter containers."""

    # -- adapters --------------------------------------------------------
    def get_base_layer(self) -> nn.Module:
        return self.base_layer

    @property
    def weight(self) -> torch.Tensor:
        # Model code reads ``.weight`` of wrapped layers (tied embeddings, dtype checks).
        return self.base_layer.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return getattr(self.base_layer, "bias", None)

    @property
    def adapter_names(self) -> list[str]:
        names: dict[str, None] = {}
        for attr in self.adapter_param_attrs:
            names.update(dict.fromkeys(getattr(self, attr).keys()))
        return list(names)

    def has_adapter(self, adapter_name: str) -> bool:
        return any(adapter_name in getattr(self, attr) for attr in self.adapter_param_attrs)

    def adapter_parameters(self, adapter_name: str) -> Iterator[tuple[str, nn.Parameter]]:
        """``(PEFT-format local name, parameter)`` pairs of one adapter."""
        for attr in self.adapter_param_attrs:
            container = getattr(self, attr)
            if adapter_name not in container:
                continue
            item = container[adapter_name]
            if isinstance(item, nn.Parameter):
                yield attr, item
            else:
                for name, param in item.named_parameters():
                    yield f"{attr}.{name}", param

    def set_adapter(self, adapter_names: Iterable[str], trainable: bool) -> None:
        """Make ``adapter_names`` the active ones; only they may train."""
        names = list(adapter_names)
        self.active_adapters = [n for n in names if self.has_adapter(n)]
        for name in self.adapter_names:
            for _, param in self.adapter_parameters(name):
                param.requires_grad_(trainable and name in self.active_adapters)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name in self.merged_adapters:
            raise ValueError(f"adapter {adapter_name!r} is merged into the weights; unmerge before deleting it")
        for attr in self.adapter_param_attrs:
            container = getattr(self, attr)
            if adapter_name in container:
                del container[adapter_name]
        self.forget_adapter(adapter_name)
        self.active_adapters = [n for n in self.active_adapters if n != adapter_name]

    # -- merging ---------------------------------------------------------
    @property
    def merged(self) -> bool:
        return bool(self.merged_adapters)

    def merge(self, adapter_names: Iterable[str] | None = None, safe_merge: bool = False) -> None:
        """Fold adapters (the active ones by default) into the base weight."""
        names = list(self.active_adapters if adapter_names is None else adapter_names)
        for name in names:
            if name in self.merged_adapters or not self.has_adapter(name):
                continue
            self.merge_into_base(name, safe_merge)
            self.merged_adapters.append(name)

    def unmerge(self) -> None:
        """Undo every merge, last merged first."""
        while self.merged_adapters:
            self.unmerge_from_base(self.merged_adapters.pop())

    def merge_into_base(self, adapter_name: str, safe_merge: bool) -> None:
        delta = self.delta_weight(adapter_name).detach()
        if safe_merge:
            check = weights.dense_weight(self.base_layer).float() + delta.float()
            if not torch.isfinite(check).all():
                raise ValueError(f"merging adapter {adapter_name!r} would put NaN/inf into the weights; nothing was changed")
        weights.add_to_weight(self.base_layer, delta)

    def unmerge_from_base(self, adapter_name: str) -> None:
        weights.add_to_weight(self.base_layer, -self.delta_weight(adapter_name).detach())

    # -- forward -----------------------------------------------------------
    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.adapters_disabled and self.merged_adapters:
            self.unmerge()  # base behaviour was asked for; give back the base weights
        if self.adapters_disabled or self.merged_adapters:
            return self.base_layer(x, *args, **kwargs)
        result = self.base_layer(x, *args, **kwargs)
        for name in self.active_adapters:
            result = self.add_delta(name, x, result)
        return result

    def extra_repr(self) -> str:
        return f"adapters={self.adapter_names}, active={self.active_adapters}"


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer with its weight stored (in, out)."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def is_linear(module: nn.Module) -> bool:
    """nn.Linear (bitsandbytes' 4/8-bit layers subclass it) or Conv1D."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


def linear_features(base_layer: nn.Module, fan_in_fan_out: bool) -> tuple[int, int]:
    """``(in_features, out_features)`` of a Linear-like layer (Conv1D stores its weight (in, out))."""
    if fan_in_fan_out:
        rows, cols = base_layer.weight.shape
        return rows, cols
    return base_layer.in_features, base_layer.out_features


def adapter_device_and_dtype(base_layer: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Where new adapter parameters live: the base's device, fp32 (trained in full precision)."""
    weight = getattr(base_layer, "weight", None)
    if weight is None:
        return torch.device("cpu"), torch.float32
    device = weight.device if weight.device.type != "meta" else torch.device("meta")
    return device, torch.float32
