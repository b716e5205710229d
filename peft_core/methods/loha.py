"""LoHa: the weight change is the Hadamard (element-wise) product of two low-rank matrices.

``dW = (w1_a @ w1_b) * (w2_a @ w2_b) * alpha / r``. Two rank-``r`` products
multiplied element-wise can reach rank ``r**2``, so LoHa learns more per
parameter than LoRA at the same ``r``. For a Conv2d with
``use_effective_conv2d`` each of the two matrices is instead a small
``r x r x kh x kw`` core ``hada_t*`` projected to the output and input
channels (a Tucker/CP form), which keeps big kernels cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from peft_core.config import PeftType, TaskType
from peft_core.methods.lycoris import LycorisConfig, LycorisLayer, LycorisModel, kaiming_
from peft_core.registry import MethodSpec, register_method


@dataclass
class LoHaConfig(LycorisConfig):
    """Low-rank Hadamard product adaptation (LyCORIS LoHa)."""

    PEFT_TYPE: ClassVar[PeftType] = PeftType.LOHA


class LoHaLayer(LycorisLayer):
    """LoHa for nn.Linear and nn.Conv2d."""

    adapter_param_attrs = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")

    def parameter_shapes(self, r: int, config: LycorisConfig) -> dict[str, tuple[int, ...]]:
        out, inp = self.out_features, self.in_features
        if self.uses_cp(config):
            kh, kw = self.kernel_size
            # cores (r, r, kh, kw); w*_a maps the first core axis to outputs, w*_b the second to inputs
            return {
                "hada_t1": (r, r, kh, kw), "hada_w1_a": (r, out), "hada_w1_b": (r, inp),
                "hada_t2": (r, r, kh, kw), "hada_w2_a": (r, out), "hada_w2_b": (r, inp),
            }
        # a convolution's kernel is folded into the input side: (out, r) @ (r, in * kh * kw)
        flat = self.flat_in
        return {"hada_w1_a": (out, r), "hada_w1_b": (r, flat), "hada_w2_a": (out, r), "hada_w2_b": (r, flat)}

    def init_parameters(self, adapter_name: str, init: bool | str) -> None:
        for attr in self.adapter_param_attrs:
            tensor = self.factor(attr, adapter_name)
            if tensor is not None:
                kaiming_(tensor)
        if init:
            # one zero factor zeroes its product, and with it the element-wise product
            nn.init.zeros_(self.hada_w2_b[adapter_name])

    def factor_product(self, adapter_name: str) -> torch.Tensor:
        return self._half(adapter_name, "1") * self._half(adapter_name, "2")

    def _half(self, adapter_name: str, which: str) -> torch.Tensor:
        """One of the two Hadamard factors: (out, in * kh * kw), or (out, in, kh, kw) in CP form."""
        w_a = self.factor(f"hada_w{which}_a", adapter_name)
        w_b = self.factor(f"hada_w{which}_b", adapter_name)
        core = self.factor(f"hada_t{which}", adapter_name)
        if core is None:
            return w_a @ w_b
        # (r, r, kh, kw) x (r, out) x (r, in) -> (out, in, kh, kw)
        return torch.einsum("abhw,ao,bi->oihw", core, w_a, w_b)


class LoHaModel(LycorisModel):
    layer_cls = LoHaLayer
    config_cls = LoHaConfig
    title = "LoHa"


SPEC = register_method(
    MethodSpec(
        name="loha",
        title="LoHa",
        peft_type=PeftType.LOHA,
        config_cls=LoHaConfig,
        model_cls=LoHaModel,
        tasks=frozenset(TaskType),
        mergeable=True,
        summary="Element-wise product of two low-rank updates: more expressive than LoRA per parameter; mergeable.",
    )
)

__all__ = ["SPEC", "LoHaConfig", "LoHaLayer", "LoHaModel"]
