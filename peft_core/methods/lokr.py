"""LoKr: the weight change is the Kronecker product of two small matrices.

The output size is split as ``out = l * k`` and the input size as
``in = m * n`` (``factorize``), and ``dW = kron(w1, w2) * alpha / r`` with
``w1`` of shape ``(l, m)`` and ``w2`` of shape ``(k, n)`` (``(k, n, kh, kw)``
for a convolution). Either factor is stored whole (``lokr_w1``,
``lokr_w2``) or as a rank-``r`` product (``lokr_w*_a @ lokr_w*_b``) when
that is smaller; ``w2`` of a Conv2d with ``use_effective_conv2d`` gets a
small kernel core ``lokr_t2`` instead. Which tensors exist is decided per
layer, exactly as the PEFT library decides it, so saved files line up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from peft_core.config import PeftType, TaskType, config_field
from peft_core.config_errors import bad
from peft_core.methods.lycoris import LycorisConfig, LycorisLayer, LycorisModel, check_bool, kaiming_
from peft_core.registry import MethodSpec, register_method


@dataclass
class LoKrConfig(LycorisConfig):
    """Low-rank Kronecker product adaptation (LyCORIS LoKr)."""

    PEFT_TYPE: ClassVar[PeftType] = PeftType.LOKR
    INIT_CHOICES: ClassVar[tuple] = (True, False, "lycoris")

    init_weights: bool | str = config_field(
        True,
        help="True: the left factor starts at zero, so the model is unchanged at first. 'lycoris': the right "
        "factor starts at zero instead (as the LyCORIS project does). False: random (for tests only).",
        choices=INIT_CHOICES,
    )
    decompose_both: bool = config_field(
        False, help="Also store the left Kronecker factor as a low-rank product when that is smaller."
    )
    decompose_factor: int = config_field(
        -1,
        help="Size to aim for in the left factor when splitting each dimension (e.g. 4 or 8); -1 splits near the "
        "square root.",
    )
    rank_dropout_scale: bool = config_field(
        False, help="With rank_dropout, scale the kept rows up by the fraction kept (as ordinary dropout does)."
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_bool("decompose_both", self.decompose_both)
        check_bool("rank_dropout_scale", self.rank_dropout_scale)
        factor = self.decompose_factor
        if isinstance(factor, bool) or not isinstance(factor, int) or not (factor == -1 or factor >= 1):
            raise bad("decompose_factor", value=factor)


def factorize(dimension: int, factor: int = -1) -> tuple[int, int]:
    """Split ``dimension`` into ``(m, n)`` with ``m * n == dimension``: LoKr's Kronecker factor sizes.

    A ``factor`` that divides ``dimension`` is used as ``m`` as it is (even
    when larger than ``n``). Otherwise ``m`` is the largest divisor with
    ``m <= n`` and ``m <= factor`` (no bound for -1), so primes give ``(1, p)``.
    """
    if dimension < 1:
        raise ValueError(f"cannot split a dimension of {dimension}; layer sizes must be at least 1")
    if factor > 0 and dimension % factor == 0:
        return factor, dimension // factor
    bound = dimension if factor == -1 else factor
    best = 1
    for m in range(1, math.isqrt(dimension) + 1):  # m <= n  <=>  m <= sqrt(dimension)
        if m > bound:
            break
        if dimension % m == 0:
            best = m
    return best, dimension // best


class LoKrLayer(LycorisLayer):
    """LoKr for nn.Linear and nn.Conv2d."""

    adapter_param_attrs = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

    def rescales_rank_dropout(self, config: LoKrConfig) -> bool:
        return bool(config.rank_dropout_scale)

    def parameter_shapes(self, r: int, config: LoKrConfig) -> dict[str, tuple[int, ...]]:
        out_a, out_b = factorize(self.out_features, config.decompose_factor)
        in_a, in_b = factorize(self.in_features, config.decompose_factor)
        shapes: dict[str, tuple[int, ...]] = {}
        # A factor is stored as a rank-r product only when r is below half its larger side.
        if config.decompose_both and 2 * r < max(out_a, in_a):
            shapes.update(lokr_w1_a=(out_a, r), lokr_w1_b=(r, in_a))
        else:
            shapes.update(lokr_w1=(out_a, in_a))
        if 2 * r >= max(out_b, in_b):
            shapes.update(lokr_w2=(out_b, in_b, *self.kernel_size))
        elif self.uses_cp(config):
            kh, kw = self.kernel_size
            shapes.update(lokr_t2=(r, r, kh, kw), lokr_w2_a=(r, out_b), lokr_w2_b=(r, in_b))
        else:
            # a convolution's kernel is folded into the input side: (out_b, r) @ (r, in_b * kh * kw)
            shapes.update(lokr_w2_a=(out_b, r), lokr_w2_b=(r, in_b * math.prod(self.kernel_size)))
        return shapes

    def init_parameters(self, adapter_name: str, init: bool | str) -> None:
        for attr in self.adapter_param_attrs:
            tensor = self.factor(attr, adapter_name)
            if tensor is not None:
                kaiming_(tensor)
        # a zero factor makes the Kronecker product zero; which one is zeroed differs by scheme
        if init == "lycoris":
            zero = "lokr_w2" if adapter_name in self.lokr_w2 else "lokr_w2_b"
        elif init:
            zero = "lokr_w1" if adapter_name in self.lokr_w1 else "lokr_w1_a"
        else:
            return
        nn.init.zeros_(getattr(self, zero)[adapter_name])

    def factor_product(self, adapter_name: str) -> torch.Tensor:
        w1 = self._left(adapter_name)  # (l, m)
        w2 = self._right(adapter_name)  # (k, n * kh * kw) or (k, n, kh, kw)
        # torch.kron would pad w1 with *leading* unit axes; trailing ones keep the kernel axes w2's alone
        w1 = w1.reshape(*w1.shape, *([1] * (w2.dim() - 2)))
        # (l * k, m * n, ...): the base weight's layout once reshaped; kron needs a contiguous einsum result
        return torch.kron(w1, w2.contiguous())

    def _left(self, adapter_name: str) -> torch.Tensor:
        whole = self.factor("lokr_w1", adapter_name)
        return whole if whole is not None else self.lokr_w1_a[adapter_name] @ self.lokr_w1_b[adapter_name]

    def _right(self, adapter_name: str) -> torch.Tensor:
        whole = self.factor("lokr_w2", adapter_name)
        if whole is not None:
            return whole
        w_a, w_b = self.lokr_w2_a[adapter_name], self.lokr_w2_b[adapter_name]
        core = self.factor("lokr_t2", adapter_name)
        if core is None:
            return w_a @ w_b
        # (r, r, kh, kw) x (r, k) x (r, n) -> (k, n, kh, kw)
        return torch.einsum("abhw,ak,bn->knhw", core, w_a, w_b)


class LoKrModel(LycorisModel):
    layer_cls = LoKrLayer
    config_cls = LoKrConfig
    title = "LoKr"


SPEC = register_method(
    MethodSpec(
        name="lokr",
        title="LoKr",
        peft_type=PeftType.LOKR,
        config_cls=LoKrConfig,
        model_cls=LoKrModel,
        tasks=frozenset(TaskType),
        mergeable=True,
        summary="Kronecker product of two small matrices: very few parameters for large layers; mergeable.",
    )
)

__all__ = ["SPEC", "LoKrConfig", "LoKrLayer", "LoKrModel", "factorize"]
