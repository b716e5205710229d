"""What LoHa and LoKr (the LyCORIS family) share: config fields, the wrapper layer, the model.

Both methods build a full-size weight change ``dW`` from a few small
factors and add ``scaling * dW`` to the wrapped layer's weight, with
``scaling = alpha / r``. They differ only in which factors they keep and how
``dW`` is made from them, so a method's layer says just that
(``parameter_shapes``, ``init_parameters``, ``factor_product``); the forward
pass, rank and module dropout, and merging live here.

The forward applies ``dW`` with the base layer's own operation (``F.linear``
or the base convolution), so ``base(x) + op(x, dW)`` equals the merged layer.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from peft_core import targets
from peft_core.config import PeftConfig, config_field
from peft_core.config_errors import ConfigError, bad, flag, positive_int
from peft_core.layers import AdapterLayer, adapter_device_and_dtype, is_conv1d
from peft_core.tuner import AdapterModel


@dataclass
class LycorisConfig(PeftConfig):
    """Fields LoHa and LoKr have in common (adapter_config.json keys of the PEFT library)."""

    INIT_CHOICES: ClassVar[tuple] = (True, False)

    r: int = config_field(8, help="Rank of the small factors. Higher learns more and costs more; 4-32 is typical.")
    alpha: float = config_field(8, help="Scale of the update (alpha / r). Often set to r or 2r.")
    rank_dropout: float = config_field(
        0.0, help="While training, the chance that each output row of the update is dropped for one step (0 to 0.5)."
    )
    module_dropout: float = config_field(
        0.0, help="While training, the chance that a whole adapted layer is skipped for one step (0 to 0.5)."
    )
    use_effective_conv2d: bool = config_field(
        False,
        help="For Conv2d layers with a kernel larger than 1x1: factor the kernel separately (fewer parameters).",
    )
    target_modules: list[str] | str | None = config_field(
        None,
        help="Modules to adapt (Linear or Conv2d): names such as q_proj, v_proj (matched at the end of the module "
        "path), a regular expression matching the whole path, or 'all-linear'. Empty: the architecture's defaults.",
    )
    exclude_modules: list[str] | str | None = config_field(
        None, help="Modules never to adapt, matched like target_modules.", ui=False
    )
    init_weights: bool | str = config_field(
        True,
        help="True: one factor starts at zero, so the model is unchanged at first. False: random (for tests only).",
        choices=(True, False),
    )
    layers_to_transform: list[int] | int | None = config_field(
        None, help="Only adapt these layer numbers (e.g. [0, 1, 2]); empty: all layers."
    )
    layers_pattern: list[str] | str | None = config_field(
        None, help="Name of the layer list in the module path (e.g. 'layers', 'h') for layers_to_transform.", ui=False
    )
    rank_pattern: dict[str, int] = config_field({}, help="Per-module ranks, e.g. {'q_proj': 16}.", ui=False)
    alpha_pattern: dict[str, float] = config_field({}, help="Per-module alphas, e.g. {'q_proj': 32}.", ui=False)
    modules_to_save: list[str] | None = config_field(
        None, help="Modules trained in full and saved with the adapter, e.g. a new classifier head."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_rank("r", self.r)
        _check_alpha("alpha", self.alpha)
        for name in ("rank_dropout", "module_dropout"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
                raise bad("dropout", name, value)
        check_bool("use_effective_conv2d", self.use_effective_conv2d)
        if not isinstance(self.init_weights, (bool, str)) or self.init_weights not in self.INIT_CHOICES:
            choices = ", ".join(repr(c) for c in self.INIT_CHOICES)
            raise bad("one_of", "init_weights", self.init_weights, choices=choices)
        self.target_modules = _names_or_regex("target_modules", self.target_modules)
        self.exclude_modules = _names_or_regex("exclude_modules", self.exclude_modules)
        if self.modules_to_save is not None:
            self.modules_to_save = list(self.modules_to_save) or None
        self._check_layer_selection()
        self.rank_pattern = _check_pattern("rank_pattern", self.rank_pattern, _check_rank)
        self.alpha_pattern = _check_pattern("alpha_pattern", self.alpha_pattern, _check_alpha)

    def _check_layer_selection(self) -> None:
        if self.layers_to_transform is None:
            if self.layers_pattern:
                raise ConfigError("layers_pattern_alone")
            return
        layers = [self.layers_to_transform] if isinstance(self.layers_to_transform, int) else self.layers_to_transform
        if not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in layers):
            raise bad("layer_numbers", value=self.layers_to_transform)
        if isinstance(self.target_modules, str):
            raise ConfigError("layers_with_regex")

    def rank_for(self, key: str) -> int:
        """The rank of the module at path ``key``: the first matching rank_pattern entry, else ``r``."""
        return _pattern_value(self.rank_pattern, key, self.r)

    def alpha_for(self, key: str) -> float:
        return _pattern_value(self.alpha_pattern, key, self.alpha)


def _check_rank(name: str, value: Any) -> None:
    positive_int(name, value, "rank")


def _check_alpha(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (math.isfinite(value) and value > 0):
        raise bad("positive_number", name, value)


def check_bool(name: str, value: Any) -> None:
    flag(name, value)


def _check_pattern(name: str, patterns: Any, check_value) -> dict:
    if not isinstance(patterns, dict):
        raise bad("pattern_map", name, patterns)
    for key, value in patterns.items():
        try:
            re.compile(key)
        except (re.error, TypeError):
            raise ConfigError("pattern_regex", name=name, key=repr(key)) from None
        check_value(f"{name}[{key!r}]", value)
    return dict(patterns)


def _names_or_regex(field_name: str, value: Any) -> list[str] | str | None:
    if value is None or isinstance(value, str):
        return value if value and value.strip() else None
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) and v for v in value):
        names = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        return names or None
    raise bad("names_or_regex", field_name, value)


def _pattern_value(patterns: dict[str, Any], key: str, default: Any) -> Any:
    # PEFT's rule: a pattern matches the end of the module path, at a "." boundary.
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", key):
            return value
    return default


def kaiming_(tensor: torch.Tensor) -> None:
    """PyTorch's default Linear init (uniform, bound 1/sqrt(fan_in)), the LyCORIS factors' start."""
    nn.init.kaiming_uniform_(tensor, a=math.sqrt(5))


class LycorisLayer(AdapterLayer):
    """Wraps an nn.Linear or nn.Conv2d and adds ``scaling * dW``; subclasses say how ``dW`` is built.

    The base weight is ``(out, in, *kernel)`` with ``in`` counted per group
    and ``kernel`` empty for Linear. Every adapter tensor is a bare
    parameter in a ``ParameterDict`` named after its PEFT tensor name.
    """

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        if isinstance(base_layer, nn.Conv2d):
            self.out_features = base_layer.out_channels
            self.in_features = base_layer.in_channels // base_layer.groups
            self.kernel_size: tuple[int, ...] = tuple(base_layer.kernel_size)
        elif isinstance(base_layer, nn.Linear):
            self.out_features, self.in_features, self.kernel_size = base_layer.out_features, base_layer.in_features, ()
        else:
            kind = type(base_layer).__name__
            raise ValueError(f"{type(self).__name__} wraps nn.Linear and nn.Conv2d layers, not {kind}")
        for attr in self.adapter_param_attrs:
            setattr(self, attr, nn.ParameterDict())
        self.r: dict[str, int] = {}
        self.alpha: dict[str, float] = {}
        self.scaling: dict[str, float] = {}
        self.rank_dropout: dict[str, float] = {}
        self.rank_dropout_scale: dict[str, bool] = {}
        self.module_dropout: dict[str, float] = {}

    # -- what a method implements ---------------------------------------------
    def parameter_shapes(self, r: int, config: LycorisConfig) -> dict[str, tuple[int, ...]]:
        """The adapter tensors this layer needs: PEFT tensor name -> shape."""
        raise NotImplementedError

    def init_parameters(self, adapter_name: str, init: bool | str) -> None:
        """Fill the freshly made tensors; ``init`` True must make ``dW`` exactly zero."""
        raise NotImplementedError

    def factor_product(self, adapter_name: str) -> torch.Tensor:
        """``dW`` before scaling, in any shape with the base weight's number of elements."""
        raise NotImplementedError

    def rescales_rank_dropout(self, config: LycorisConfig) -> bool:
        """Whether rank dropout divides the kept rows by the fraction kept (as inverted dropout does)."""
        return True

    # -- geometry shared by both methods ----------------------------------------
    @property
    def weight_shape(self) -> tuple[int, ...]:
        return (self.out_features, self.in_features, *self.kernel_size)

    @property
    def flat_in(self) -> int:
        """Inputs one output row sees: ``in * kh * kw`` for a convolution."""
        return self.in_features * math.prod(self.kernel_size)

    def uses_cp(self, config: LycorisConfig) -> bool:
        """Factor the kernel on its own ("effective conv2d"); pointless for 1x1 kernels and Linear."""
        return bool(config.use_effective_conv2d) and any(k != 1 for k in self.kernel_size)

    # -- adapters -----------------------------------------------------------------
    def update_layer(self, adapter_name: str, config: LycorisConfig, key: str) -> None:
        r, alpha = config.rank_for(key), config.alpha_for(key)
        self.r[adapter_name], self.alpha[adapter_name], self.scaling[adapter_name] = r, alpha, alpha / r
        self.rank_dropout[adapter_name] = config.rank_dropout
        self.rank_dropout_scale[adapter_name] = self.rescales_rank_dropout(config)
        self.module_dropout[adapter_name] = config.module_dropout
        device, dtype = adapter_device_and_dtype(self.base_layer)
        for attr, shape in self.parameter_shapes(r, config).items():
            getattr(self, attr)[adapter_name] = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        with torch.no_grad():
            self.init_parameters(adapter_name, config.init_weights)

    def forget_adapter(self, adapter_name: str) -> None:
        tables = (self.r, self.alpha, self.scaling, self.rank_dropout, self.rank_dropout_scale, self.module_dropout)
        for table in tables:
            table.pop(adapter_name, None)

    def factor(self, attr: str, adapter_name: str) -> torch.Tensor | None:
        """The adapter's tensor ``attr`` (e.g. "hada_t1"), or None when this adapter does not use it."""
        return getattr(self, attr).get(adapter_name)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        """``scaling * dW`` in the base weight's shape ``(out, in, *kernel)``."""
        return self.factor_product(adapter_name).reshape(self.weight_shape) * self.scaling[adapter_name]

    # -- forward ------------------------------------------------------------------
    def add_delta(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result + op(x, dW)``, with module and rank dropout while training."""
        skip_chance = self.module_dropout[adapter_name]
        if self.training and skip_chance > 0 and torch.rand(()) < skip_chance:
            return result  # module dropout: this layer's adapter sits out the step
        delta = self.delta_weight(adapter_name)
        if self.training and self.rank_dropout[adapter_name] > 0:
            delta = delta * self._row_mask(adapter_name, delta)
        return result + self._apply_weight(x.to(delta.dtype), delta).to(result.dtype)

    def _row_mask(self, adapter_name: str, delta: torch.Tensor) -> torch.Tensor:
        """Keep each output row with probability ``1 - rank_dropout``; shape (out, 1, ...)."""
        rows = delta.shape[0]
        keep = (torch.rand(rows, device=delta.device) >= self.rank_dropout[adapter_name]).to(delta.dtype)
        if self.rank_dropout_scale[adapter_name]:
            # the clamp only matters when every row was dropped (0 / x stays 0, never NaN)
            keep = keep / keep.mean().clamp_min(1.0 / rows)
        return keep.reshape(rows, *([1] * (delta.dim() - 1)))

    def _apply_weight(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """The base layer's operation with ``weight`` in place of its own, without bias."""
        if isinstance(self.base_layer, nn.Conv2d):
            # _conv_forward honours the base's padding_mode (reflect, circular), as merging would
            return self.base_layer._conv_forward(x, weight, None)
        return F.linear(x, weight)


class LycorisModel(AdapterModel):
    """Injects a LyCORIS method's layers; a method sets ``layer_cls``, ``config_cls`` and ``title``."""

    title: ClassVar[str]

    @classmethod
    def model_problem(cls, model: nn.Module) -> str | None:
        """GPT-2 style models: every layer but the output head is a Conv1D, which LoHa / LoKr cannot wrap."""
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        kinds = [is_conv1d(m) for m in model.modules() if m is not head and (cls._is_wrappable(m) or is_conv1d(m))]
        if kinds and all(kinds):
            return f"{cls.title} cannot adapt transformers Conv1D layers (GPT-2 style), the only layers of this model"
        return None

    @staticmethod
    def _is_wrappable(module: nn.Module) -> bool:
        return isinstance(module, (nn.Linear, nn.Conv2d))

    def is_supported(self, module: nn.Module) -> bool:
        return self._is_wrappable(module)

    def resolve_config(self, config: LycorisConfig) -> LycorisConfig:
        # Conv1D counts while picking defaults and 'all-linear', so that GPT-2 gets
        # the targets LoRA would get and then a refusal that says why.
        modules = self.wrappable_modules()
        if config.target_modules is None:
            config.target_modules = targets.default_target_modules(
                self.model, modules, lambda m: self._supports(m) or is_conv1d(m)
            )
        elif config.target_modules == targets.ALL_LINEAR:
            config.target_modules = targets.all_linear_targets(self.model, modules, self._is_linear_like)
        self._refuse_conv1d(config, modules)
        return config

    def _is_linear_like(self, module: nn.Module) -> bool:
        base = module.base_layer if isinstance(module, self.layer_cls) else module
        return isinstance(base, nn.Linear) or is_conv1d(base)

    def _refuse_conv1d(self, config: LycorisConfig, modules) -> None:
        found = [k for k, m in modules if k and is_conv1d(m) and targets.key_matches(k, config.target_modules)]
        if found:
            supported = ", ".join(targets.leaf_names(modules, self.is_supported)) or "none"
            raise ValueError(
                f"{self.title} cannot adapt {found[0]!r}: it is a transformers Conv1D layer (GPT-2 style), which "
                f"{self.title} does not support (nor does the PEFT library, so the adapter could not be shared). "
                f"Use LoRA or IA3 for this model, or target its nn.Linear / nn.Conv2d modules: {supported}"
            )

    def create_layer(self, target: nn.Module, adapter_name: str, config: LycorisConfig, key: str) -> LycorisLayer:
        layer = self.layer_cls(target)
        layer.update_layer(adapter_name, config, key)
        return layer
