"""LoRA layers: Linear (also GPT-2's Conv1D and bitsandbytes 4/8-bit), Conv2d, Embedding.

Each adds ``scaling * B(A(dropout(x)))`` to the wrapped module's output,
with ``scaling = alpha / r`` (``alpha / sqrt(r)`` for rsLoRA). ``B`` starts at
zero, so injecting an adapter changes no output. With DoRA the adapted
weight's per-output norm is replaced by a learned magnitude (see dora.py).

Every layer works in an "out-first" view of the base weight: ``(out, in)``
for Linear, ``(out, in, kh, kw)`` for Conv2d, ``(dim, num_embeddings)`` for
Embedding, and converts to the module's own layout only when merging.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from peft_core import weights
from peft_core.layers import AdapterLayer, adapter_device_and_dtype, linear_features
from peft_core.methods.lora import dora
from peft_core.methods.lora.config import LoraConfig


class LoraLayer(AdapterLayer):
    """What every LoRA wrapper shares: per-adapter rank, scaling, dropout, merge."""

    adapter_param_attrs = ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B", "lora_magnitude_vector")
    magnitude_shape: tuple[int, ...]

    def __init__(self, base_layer: nn.Module) -> None:
        super().__init__(base_layer)
        self.lora_A = nn.ModuleDict()
        self.lora_B = nn.ModuleDict()
        self.lora_embedding_A = nn.ParameterDict()
        self.lora_embedding_B = nn.ParameterDict()
        self.lora_magnitude_vector = nn.ParameterDict()  # DoRA
        self.lora_dropout = nn.ModuleDict()
        self.r: dict[str, int] = {}
        self.scaling: dict[str, float] = {}
        self._merged_norms: dict[str, torch.Tensor] = {}  # DoRA norms at merge time, for unmerge

    # -- per-kind hooks ------------------------------------------------------
    def create_factors(self, adapter_name: str, r: int, bias: bool) -> None:
        raise NotImplementedError

    def init_factors(self, adapter_name: str, init: bool | str) -> None:
        A, B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        if init is False:
            return  # nn.Linear's own random init for both: the adapter changes the output (tests)
        if init == "gaussian":
            nn.init.normal_(A.weight, std=1 / self.r[adapter_name])
        else:
            nn.init.kaiming_uniform_(A.weight, a=math.sqrt(5))
        nn.init.zeros_(B.weight)
        if B.bias is not None:
            nn.init.zeros_(B.bias)

    def delta_out_first(self, adapter_name: str) -> torch.Tensor:
        """``scaling * B @ A`` in the out-first view."""
        raise NotImplementedError

    def base_weight_out_first(self) -> torch.Tensor:
        raise NotImplementedError

    def to_base_layout(self, out_first: torch.Tensor) -> torch.Tensor:
        return out_first

    # -- shared ----------------------------------------------------------------
    def update_layer(self, adapter_name: str, config: LoraConfig, key: str) -> None:
        r = config.rank_for(key)
        self.r[adapter_name] = r
        self.scaling[adapter_name] = config.scaling_for(key)
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.create_factors(adapter_name, r, config.lora_bias)
        self.init_factors(adapter_name, config.init_lora_weights)
        device, dtype = adapter_device_and_dtype(self.base_layer)
        for attr in ("lora_A", "lora_B", "lora_embedding_A", "lora_embedding_B"):
            container = getattr(self, attr)
            if adapter_name in container:
                container[adapter_name] = container[adapter_name].to(device=device, dtype=dtype)
        if config.use_dora:
            with torch.no_grad():
                norm = self.weight_norm(adapter_name)
            self.lora_magnitude_vector[adapter_name] = nn.Parameter(norm.reshape(self.magnitude_shape).clone())

    def forget_adapter(self, adapter_name: str) -> None:
        for table in (self.r, self.scaling, self._merged_norms):
            table.pop(adapter_name, None)
        if adapter_name in self.lora_dropout:
            del self.lora_dropout[adapter_name]

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        return self.to_base_layout(self.delta_out_first(adapter_name))

    def is_dora(self, adapter_name: str) -> bool:
        return adapter_name in self.lora_magnitude_vector

    def weight_norm(self, adapter_name: str) -> torch.Tensor:
        """Per-output norm of the adapted weight, shape (out,); a constant for autograd."""
        with torch.no_grad():
            return dora.row_norm(self.base_weight_out_first().float() + self.delta_out_first(adapter_name).float())

    def dora_scale(self, adapter_name: str) -> torch.Tensor:
        """``magnitude / ||W + dW||``, shaped to broadcast over the layer's output."""
        magnitude = self.lora_magnitude_vector[adapter_name]
        return magnitude / self.weight_norm(adapter_name).reshape(magnitude.shape)

    def _lora_bias(self, adapter_name: str) -> torch.Tensor | None:
        module = self.lora_B[adapter_name] if adapter_name in self.lora_B else None
        bias = getattr(module, "bias", None)
        return None if bias is None else bias.detach() * self.scaling[adapter_name]

    def _shift_base_bias(self, adapter_name: str, sign: float) -> None:
        extra = self._lora_bias(adapter_name)
        if extra is None:
            return
        bias = getattr(self.base_layer, "bias", None)
        if bias is None:
            raise ValueError("lora_bias cannot be merged into a layer that has no bias of its own")
        with torch.no_grad():
            bias.add_(sign * extra.to(bias.dtype))

    def merge_into_base(self, adapter_name: str, safe_merge: bool) -> None:
        if not self.is_dora(adapter_name):
            super().merge_into_base(adapter_name, safe_merge)
            self._shift_base_bias(adapter_name, +1.0)
            return
        with torch.no_grad():
            weight = self.base_weight_out_first().float()
            adapted = weight + self.delta_out_first(adapter_name).float()
            norm = dora.row_norm(adapted)
            magnitude = self.lora_magnitude_vector[adapter_name].reshape(-1)
            merged = dora.rescale_rows(adapted, magnitude / norm)
            if safe_merge and not torch.isfinite(merged).all():
                raise ValueError(f"merging adapter {adapter_name!r} would put NaN/inf into the weights; nothing was changed")
            self._merged_norms[adapter_name] = norm
            weights.set_dense_weight(self.base_layer, self.to_base_layout(merged))

    def unmerge_from_base(self, adapter_name: str) -> None:
        if not self.is_dora(adapter_name):
            super().unmerge_from_base(adapter_name)
            self._shift_base_bias(adapter_name, -1.0)
            return
        with torch.no_grad():
            norm = self._merged_norms.pop(adapter_name)
            magnitude = self.lora_magnitude_vector[adapter_name].reshape(-1)
            adapted = dora.rescale_rows(self.base_weight_out_first().float(), norm / magnitude)
            original = adapted - self.delta_out_first(adapter_name).float()
            weights.set_dense_weight(self.base_layer, self.to_base_layout(original))

    def base_output_without_bias(self, x: torch.Tensor) -> torch.Tensor:
        """The base layer's output for ``x`` without its bias (DoRA with dropout needs it)."""
        raise NotImplementedError

    def add_delta(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """``result + scaling * B(A(dropout(x)))``; with DoRA, rescaled by magnitude / norm."""
        A, B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        scaling = self.scaling[adapter_name]
        x = x.to(A.weight.dtype)
        dropout = self.lora_dropout[adapter_name]
        dropped = self.training and not isinstance(dropout, nn.Identity)
        if dropped:
            x = dropout(x)
        lora = B(A(x))
        if not self.is_dora(adapter_name):
            return result + (lora * scaling).to(result.dtype)
        if dropped:  # the base output saw the undropped input; recompute it
            base = self.base_output_without_bias(x)
        else:
            bias = getattr(self.base_layer, "bias", None)
            base = (result - bias.reshape(self.magnitude_shape) if bias is not None else result).to(x.dtype)
        scale = self.dora_scale(adapter_name)
        return result + ((scale - 1) * base + scale * lora * scaling).to(result.dtype)


class LoraLinear(LoraLayer):
    """LoRA for nn.Linear, transformers' Conv1D (weight stored (in, out)) and bitsandbytes Linear4bit/8bitLt."""

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out = fan_in_fan_out
        self.in_features, self.out_features = linear_features(base_layer, fan_in_fan_out)
        self.magnitude_shape = (self.out_features,)

    def create_factors(self, adapter_name: str, r: int, bias: bool) -> None:
        self.lora_A[adapter_name] = nn.Linear(self.in_features, r, bias=False)
        self.lora_B[adapter_name] = nn.Linear(r, self.out_features, bias=bias)

    def add_delta(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        """Plain LoRA as one fused ``result + scaling * (A x) B^T`` (``addmm``); in place without gradients.

        The general path makes ``B(A x)``, then its scaled copy, then the sum:
        two more tensors of the output's size per layer. DoRA, a bias on B,
        dropout while training, autocast or mixed dtypes take the general path.
        """
        A, B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        dropout = self.lora_dropout[adapter_name]
        if (self.is_dora(adapter_name) or B.bias is not None or result.dtype != B.weight.dtype
                or (self.training and not isinstance(dropout, nn.Identity))
                or torch.is_autocast_enabled(result.device.type)):
            return super().add_delta(adapter_name, x, result)
        hidden = A(x.to(A.weight.dtype))
        flat, hidden = result.reshape(-1, result.shape[-1]), hidden.reshape(-1, hidden.shape[-1])
        scaling = self.scaling[adapter_name]
        if torch.is_grad_enabled():
            return torch.addmm(flat, hidden, B.weight.t(), alpha=scaling).view(result.shape)
        return flat.addmm_(hidden, B.weight.t(), alpha=scaling).view(result.shape)  # the base output is ours

    def delta_out_first(self, adapter_name: str) -> torch.Tensor:
        A, B = self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight
        return (B @ A) * self.scaling[adapter_name]

    def base_weight_out_first(self) -> torch.Tensor:
        weight = weights.dense_weight(self.base_layer)
        return weight.T if self.fan_in_fan_out else weight

    def to_base_layout(self, out_first: torch.Tensor) -> torch.Tensor:
        return out_first.T if self.fan_in_fan_out else out_first

    def base_output_without_bias(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.base_weight_out_first().to(x.dtype))


class LoraConv2d(LoraLayer):
    """LoRA for nn.Conv2d: ``A`` has the base's kernel, ``B`` is 1x1."""

    def __init__(self, base_layer: nn.Conv2d) -> None:
        if base_layer.groups != 1:
            raise ValueError(f"LoRA does not support grouped convolutions (groups={base_layer.groups})")
        super().__init__(base_layer)
        self.magnitude_shape = (1, base_layer.out_channels, 1, 1)

    def create_factors(self, adapter_name: str, r: int, bias: bool) -> None:
        base = self.base_layer
        self.lora_A[adapter_name] = nn.Conv2d(
            base.in_channels, r, base.kernel_size, base.stride, base.padding, base.dilation, bias=False
        )
        self.lora_B[adapter_name] = nn.Conv2d(r, base.out_channels, 1, 1, bias=bias)

    def delta_out_first(self, adapter_name: str) -> torch.Tensor:
        A, B = self.lora_A[adapter_name].weight, self.lora_B[adapter_name].weight
        # (out, r) x (r, in, kh, kw) -> (out, in, kh, kw)
        return torch.einsum("or,rikl->oikl", B[:, :, 0, 0], A) * self.scaling[adapter_name]

    def base_weight_out_first(self) -> torch.Tensor:
        return self.base_layer.weight

    def base_output_without_bias(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_layer
        return F.conv2d(x, base.weight.to(x.dtype), None, base.stride, base.padding, base.dilation)


class LoraEmbedding(LoraLayer):
    """LoRA for nn.Embedding: ``A`` is (r, num_embeddings), ``B`` is (dim, r); no dropout."""

    def __init__(self, base_layer: nn.Embedding) -> None:
        super().__init__(base_layer)
        self.magnitude_shape = (base_layer.embedding_dim,)

    def create_factors(self, adapter_name: str, r: int, bias: bool) -> None:
        if bias:
            raise ValueError("lora_bias is not available for Embedding layers")
        base = self.base_layer
        self.lora_embedding_A[adapter_name] = nn.Parameter(torch.empty(r, base.num_embeddings))
        self.lora_embedding_B[adapter_name] = nn.Parameter(torch.empty(base.embedding_dim, r))

    def init_factors(self, adapter_name: str, init: bool | str) -> None:
        A, B = self.lora_embedding_A[adapter_name], self.lora_embedding_B[adapter_name]
        if init is False:
            nn.init.normal_(A)
            nn.init.normal_(B)
        elif init == "gaussian":
            nn.init.normal_(A, std=1 / self.r[adapter_name])
            nn.init.zeros_(B)
        else:  # the lookup table starts at zero, B random: still no change at first
            nn.init.zeros_(A)
            nn.init.normal_(B)

    def delta_out_first(self, adapter_name: str) -> torch.Tensor:
        A, B = self.lora_embedding_A[adapter_name], self.lora_embedding_B[adapter_name]
        return (B @ A) * self.scaling[adapter_name]  # (dim, num_embeddings)

    def base_weight_out_first(self) -> torch.Tensor:
        return self.base_layer.weight.T

    def to_base_layout(self, out_first: torch.Tensor) -> torch.Tensor:
        return out_first.T

    def add_delta(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        A, B = self.lora_embedding_A[adapter_name], self.lora_embedding_B[adapter_name]
        base = self.base_layer
        rows = F.embedding(x, A.T, base.padding_idx, base.max_norm, base.norm_type, base.scale_grad_by_freq, base.sparse)
        lora = rows @ B.T * self.scaling[adapter_name]
        if not self.is_dora(adapter_name):
            return result + lora.to(result.dtype)
        scale = self.dora_scale(adapter_name)
        return result + ((scale - 1) * result.to(lora.dtype) + scale * lora).to(result.dtype)


def create_lora_layer(target: nn.Module, is_conv1d: bool) -> LoraLayer:
    """The LoRA wrapper class that fits ``target``."""
    if isinstance(target, nn.Embedding):
        return LoraEmbedding(target)
    if isinstance(target, nn.Conv2d):
        return LoraConv2d(target)
    return LoraLinear(target, fan_in_fan_out=is_conv1d)
