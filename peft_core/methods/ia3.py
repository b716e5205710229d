"""(IA)^3: learned per-channel scaling vectors, one per adapted layer.

A layer's output channels are multiplied by a vector ``ia3_l`` (shape
``(out, 1)`` for Linear, ``(1, out, 1, 1)`` for Conv2d). A *feedforward*
layer (usually the MLP's second projection) has its input channels
multiplied instead, before the base layer runs (``(1, in)`` /
``(1, in, 1, 1)``). Vectors start at one, so injection changes nothing.
Merging multiplies the base weight's rows (output scaling, the bias too) or
columns (input scaling); several active adapters multiply together.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from peft_core import targets, weights
from peft_core.config import PeftConfig, PeftType, TaskType, config_field
from peft_core.config_errors import ConfigError, bad, flag
from peft_core.layers import AdapterLayer, adapter_device_and_dtype, is_conv1d, is_linear, linear_features
from peft_core.registry import MethodSpec, register_method
from peft_core.tuner import AdapterModel

logger = logging.getLogger(__name__)


# -- config ------------------------------------------------------------------------
@dataclass
class IA3Config(PeftConfig):
    """Per-channel scaling of chosen layers' outputs, or of feedforward layers' inputs."""

    PEFT_TYPE: ClassVar[PeftType] = PeftType.IA3

    target_modules: list[str] | str | None = config_field(
        None,
        help="Modules to rescale: names such as k_proj, v_proj, down_proj (matched at the end of the module "
        "path), a regular expression matching the whole path, or 'all-linear'. Empty: the architecture's "
        "attention keys and values plus the MLP's second projection.",
    )
    feedforward_modules: list[str] | str | None = config_field(
        None,
        help="Which target modules scale their input instead of their output (the MLP's second projection, "
        "e.g. down_proj); must be among target_modules. Empty: the architecture's default.",
    )
    exclude_modules: list[str] | str | None = config_field(
        None, help="Modules never to adapt, matched like target_modules.", ui=False
    )
    modules_to_save: list[str] | None = config_field(
        None, help="Modules trained in full and saved with the adapter, e.g. a new classifier head."
    )
    fan_in_fan_out: bool = config_field(
        False, help="The layer stores its weight as (in, out), as GPT-2's Conv1D does (set automatically).", ui=False
    )
    init_ia3_weights: bool = config_field(
        True, help="True: vectors start at one, so the model is unchanged at first. False: random (tests only).",
        ui=False,
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        self.target_modules = targets.names_or_regex("target_modules", self.target_modules)
        self.exclude_modules = targets.names_or_regex("exclude_modules", self.exclude_modules)
        feedforward = self.feedforward_modules
        empty = isinstance(feedforward, (list, tuple, set, frozenset)) and not feedforward
        # [] means "no feedforward module", None "the architecture's default"
        self.feedforward_modules = [] if empty else targets.names_or_regex("feedforward_modules", feedforward)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save) or None
        flag("fan_in_fan_out", self.fan_in_fan_out, "true_or_false_flag")
        if not isinstance(self.init_ia3_weights, bool):
            raise bad("init_ia3_weights", value=self.init_ia3_weights)
        if isinstance(self.feedforward_modules, list) and isinstance(self.target_modules, list):
            # a set rule, as the PEFT library checks it when it reads the config
            stray = [name for name in self.feedforward_modules if name not in self.target_modules]
            if stray:
                raise ConfigError("feedforward_not_targeted", stray=str(stray), targets=str(self.target_modules))

    def is_feedforward(self, key: str) -> bool:
        """Does the module at path ``key`` scale its input?"""
        feedforward = self.feedforward_modules
        if not feedforward:
            return False
        if isinstance(feedforward, str):
            return re.fullmatch(feedforward, key) is not None
        # The PEFT library tests a bare suffix here (no "." boundary, unlike
        # target_modules); the vectors' saved shapes depend on it, so do the same.
        return any(key.endswith(name) for name in feedforward)


# -- layers ------------------------------------------------------------------------
class IA3Layer(AdapterLayer):
    """What every IA3 wrapper shares: one vector per adapter, input or output scaling, merging."""

    adapter_param_attrs = ("ia3_l",)

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.ia3_l = nn.ParameterDict()
        self.feedforward: dict[str, bool] = {}  # per adapter: scales the input (True) or the output

    # -- per-kind hooks ------------------------------------------------------
    def vector_shape(self, feedforward: bool) -> tuple[int, ...]:
        """The saved shape of ``ia3_l`` (the PEFT library's)."""
        raise NotImplementedError

    def activation_view(self, vector: torch.Tensor) -> torch.Tensor:
        """``vector`` shaped to broadcast over the channel axis of the layer's input or output."""
        raise NotImplementedError

    def weight_view(self, vector: torch.Tensor, feedforward: bool) -> torch.Tensor:
        """``vector`` shaped to broadcast over the base weight (in its own layout)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------
    def update_layer(self, adapter_name: str, config: IA3Config, key: str) -> None:
        feedforward = config.is_feedforward(key)
        device, dtype = adapter_device_and_dtype(self.base_layer)
        make = torch.ones if config.init_ia3_weights else torch.randn
        self.feedforward[adapter_name] = feedforward
        self.ia3_l[adapter_name] = nn.Parameter(make(self.vector_shape(feedforward), device=device, dtype=dtype))

    def forget_adapter(self, adapter_name: str) -> None:
        self.feedforward.pop(adapter_name, None)

    def combined_scale(self, feedforward: bool) -> torch.Tensor | None:
        """Product of the active adapters' vectors on the input (or output) side; None if there are none."""
        scale = None
        for name in self.active_adapters:
            if self.feedforward[name] == feedforward:
                vector = self.activation_view(self.ia3_l[name])
                scale = vector if scale is None else scale * vector
        return scale

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.adapters_disabled or self.merged_adapters:
            return super().forward(x, *args, **kwargs)  # the base layer alone (unmerging first if disabled)
        in_scale, out_scale = self.combined_scale(True), self.combined_scale(False)
        if in_scale is not None:
            x = (x.to(in_scale.dtype) * in_scale).to(x.dtype)
        result = self.base_layer(x, *args, **kwargs)
        if out_scale is not None:
            result = (result.to(out_scale.dtype) * out_scale).to(result.dtype)
        return result

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """The additive change merging ``adapter_name`` alone makes: ``W * (l - 1)``."""
        scale = self.weight_view(self.ia3_l[adapter_name], self.feedforward[adapter_name])
        return weights.dense_weight(self.base_layer).float() * (scale - 1)

    def merge_into_base(self, adapter_name: str, safe_merge: bool) -> None:
        self._rescale_base(adapter_name, self.ia3_l[adapter_name].detach().float(), safe_merge)

    def unmerge_from_base(self, adapter_name: str) -> None:
        vector = self.ia3_l[adapter_name].detach().float()
        if (vector == 0).any():
            logger.warning(
                "adapter %r scales some channels by exactly 0; their weights cannot be recovered by unmerging",
                adapter_name,
            )
        self._rescale_base(adapter_name, 1 / torch.where(vector == 0, torch.ones_like(vector), vector), False)

    def _rescale_base(self, adapter_name: str, vector: torch.Tensor, safe_merge: bool) -> None:
        """Multiply the base weight (and, for output scaling, the bias) by ``vector``."""
        base, feedforward = self.base_layer, self.feedforward[adapter_name]
        with torch.no_grad():
            weight = weights.dense_weight(base).float() * self.weight_view(vector, feedforward)
            bias = getattr(base, "bias", None)
            # an input scale happens before the bias is added; an output scale covers it
            new_bias = None if feedforward or bias is None else bias.float() * vector.reshape(-1)
            if safe_merge and not _all_finite(weight, new_bias):
                raise ValueError(
                    f"merging adapter {adapter_name!r} would put NaN/inf into the weights; nothing was changed"
                )
            weights.set_dense_weight(base, weight)
            if new_bias is not None:
                bias.copy_(new_bias.to(bias.dtype))


def _all_finite(*tensors: torch.Tensor | None) -> bool:
    return all(t is None or bool(torch.isfinite(t).all()) for t in tensors)


class IA3Linear(IA3Layer):
    """IA3 for nn.Linear, transformers' Conv1D (weight stored (in, out)) and bitsandbytes Linear4bit/8bitLt."""

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out = fan_in_fan_out
        self.in_features, self.out_features = linear_features(base_layer, fan_in_fan_out)

    def vector_shape(self, feedforward: bool) -> tuple[int, ...]:
        return (1, self.in_features) if feedforward else (self.out_features, 1)

    def activation_view(self, vector: torch.Tensor) -> torch.Tensor:
        return vector.reshape(-1)  # channels are the last axis: (..., features)

    def weight_view(self, vector: torch.Tensor, feedforward: bool) -> torch.Tensor:
        # out-first (out, in): an input scale multiplies columns, an output scale rows
        out_first = vector.reshape(1, -1) if feedforward else vector.reshape(-1, 1)
        return out_first.T if self.fan_in_fan_out else out_first


class IA3Conv2d(IA3Layer):
    """IA3 for nn.Conv2d: vectors of shape (1, channels, 1, 1)."""

    def vector_shape(self, feedforward: bool) -> tuple[int, ...]:
        base = self.base_layer
        return (1, base.in_channels if feedforward else base.out_channels, 1, 1)

    def activation_view(self, vector: torch.Tensor) -> torch.Tensor:
        return vector.reshape(-1, 1, 1)  # (channels, 1, 1) fits batched and unbatched (..., C, H, W)

    def weight_view(self, vector: torch.Tensor, feedforward: bool) -> torch.Tensor:
        base = self.base_layer
        if not feedforward:
            return vector.reshape(-1, 1, 1, 1)  # (out, 1, 1, 1)
        # The weight is (out, in / groups, kh, kw): output channel o of group g
        # reads input channels g * in_per_group ... (g + 1) * in_per_group - 1.
        in_per_group, out_per_group = base.in_channels // base.groups, base.out_channels // base.groups
        scale = vector.reshape(base.groups, 1, in_per_group).expand(base.groups, out_per_group, in_per_group)
        return scale.reshape(base.out_channels, in_per_group, 1, 1)


# -- model -------------------------------------------------------------------------
class IA3Model(AdapterModel):
    layer_cls = IA3Layer
    config_cls = IA3Config

    def is_supported(self, module: nn.Module) -> bool:
        return is_linear(module) or isinstance(module, nn.Conv2d)

    def resolve_config(self, config: IA3Config) -> IA3Config:
        """Fill in default targets and feedforward modules by looking at the model."""
        modules = self.wrappable_modules()
        target, feedforward = config.target_modules, config.feedforward_modules
        if target is None:
            target, default_feedforward = targets.ia3_default_modules(self.model, modules, self._supports)
            feedforward = default_feedforward if feedforward is None else feedforward
        elif target == targets.ALL_LINEAR:
            target = targets.all_linear_targets(self.model, modules, _is_linear_or_wraps_one)
        if feedforward is None:
            feedforward = self._default_feedforward(target, modules)
        logger.info("IA3 targets %s, of which feedforward: %s", target, feedforward)
        # replace() validates again: the feedforward modules must be among the resolved targets
        return dataclasses.replace(config, target_modules=target, feedforward_modules=feedforward)

    def _default_feedforward(self, target: list[str] | str, modules: targets.Modules) -> list[str]:
        """The architecture's feedforward names that the user's own targets select."""
        names = targets.ia3_default_feedforward(self.model, modules, self._supports)
        if isinstance(target, list):
            return [name for name in names if name in target]
        keys = [key for key, _ in modules if key and targets.key_matches(key, target)]
        return [name for name in names if any(key.endswith(name) for key in keys)]

    def create_layer(self, target: nn.Module, adapter_name: str, config: IA3Config, key: str) -> IA3Layer:
        if isinstance(target, nn.Conv2d):
            layer: IA3Layer = IA3Conv2d(target)
        else:
            conv1d = is_conv1d(target)
            if conv1d:
                config.fan_in_fan_out = True  # recorded as the PEFT library records it
            layer = IA3Linear(target, fan_in_fan_out=conv1d)
        layer.update_layer(adapter_name, config, key)
        return layer


def _is_linear_or_wraps_one(module: nn.Module) -> bool:
    return is_linear(module) or isinstance(module, IA3Layer) and is_linear(module.base_layer)


SPEC = register_method(
    MethodSpec(
        name="ia3",
        title="IA³",
        peft_type=PeftType.IA3,
        config_cls=IA3Config,
        model_cls=IA3Model,
        tasks=frozenset(TaskType),
        mergeable=True,
        summary="Learned per-channel scales on keys, values and MLP activations; the fewest parameters, mergeable.",
    )
)

__all__ = ["SPEC", "IA3Config", "IA3Conv2d", "IA3Layer", "IA3Linear", "IA3Model"]
