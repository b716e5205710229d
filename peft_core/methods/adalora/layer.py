"""AdaLoRA's layer: an SVD-shaped update ``B diag(E) A`` on a Linear-like module.

Wraps nn.Linear, transformers' Conv1D (weight stored (in, out)) and
bitsandbytes' Linear4bit / Linear8bitLt, and adds

    scaling / (init_r + 1e-5) * B (E * A) dropout(x)

with ``A`` (r, in) the right singular vectors, ``E`` (r, 1) the singular
values and ``B`` (out, r) the left ones. The divisor stays ``init_r`` even
after ranks are pruned, so a pruned adapter computes what the full one with
zeroed singular values did. ``E`` starts at zero: injection changes nothing.
"""

from __future__ import annotations

import torch
from torch import nn

from peft_core.layers import AdapterLayer, adapter_device_and_dtype, linear_features
from peft_core.methods.adalora.config import AdaLoraConfig

# Guards the division by the rank; part of the format's arithmetic.
RANK_EPS = 1e-5


class AdaLoraLinear(AdapterLayer):
    """AdaLoRA on a Linear-like base layer."""

    adapter_param_attrs = ("lora_A", "lora_B", "lora_E")

    def __init__(self, base_layer: nn.Module, fan_in_fan_out: bool) -> None:
        super().__init__(base_layer)
        self.fan_in_fan_out = fan_in_fan_out
        self.in_features, self.out_features = linear_features(base_layer, fan_in_fan_out)
        self.lora_A = nn.ParameterDict()  # (r, in)
        self.lora_B = nn.ParameterDict()  # (out, r)
        self.lora_E = nn.ParameterDict()  # (r, 1)
        self.lora_dropout = nn.ModuleDict()
        self.scaling: dict[str, float] = {}
        self.rank_divisor: dict[str, float] = {}  # init_r + eps, rounded to fp32 as the format computes it

    def update_layer(self, adapter_name: str, config: AdaLoraConfig, key: str) -> None:
        r = config.rank_for(key)
        device, dtype = adapter_device_and_dtype(self.base_layer)
        self.lora_A[adapter_name] = nn.Parameter(torch.empty(r, self.in_features, device=device, dtype=dtype))
        self.lora_E[adapter_name] = nn.Parameter(torch.empty(r, 1, device=device, dtype=dtype))
        self.lora_B[adapter_name] = nn.Parameter(torch.empty(self.out_features, r, device=device, dtype=dtype))
        self._init_triplets(adapter_name, config.init_lora_weights)
        self.lora_dropout[adapter_name] = nn.Dropout(config.lora_dropout) if config.lora_dropout > 0 else nn.Identity()
        self.scaling[adapter_name] = float(config.lora_alpha)
        self.rank_divisor[adapter_name] = (torch.tensor(float(config.init_r)) + RANK_EPS).item()

    def _init_triplets(self, adapter_name: str, init: bool) -> None:
        A, E, B = self.lora_A[adapter_name], self.lora_E[adapter_name], self.lora_B[adapter_name]
        with torch.no_grad():
            if init:  # zero singular values: the adapter adds nothing until it trains
                E.zero_()
                A.normal_(0.0, 0.02)
                B.normal_(0.0, 0.02)
            else:  # random everywhere (tests)
                for param in (A, E, B):
                    param.normal_()

    def forget_adapter(self, adapter_name: str) -> None:
        for table in (self.scaling, self.rank_divisor):
            table.pop(adapter_name, None)
        if adapter_name in self.lora_dropout:
            del self.lora_dropout[adapter_name]

    def rank(self, adapter_name: str) -> int:
        return self.lora_E[adapter_name].shape[0]

    def add_delta(self, adapter_name: str, x: torch.Tensor, result: torch.Tensor) -> torch.Tensor:
        A, E, B = self.lora_A[adapter_name], self.lora_E[adapter_name], self.lora_B[adapter_name]
        x = self.lora_dropout[adapter_name](x.to(A.dtype))
        # (..., in) @ (in, r) @ (r, out); the order of operations follows the format's reference math
        update = x @ (A * E).T @ B.T
        update = update * self.scaling[adapter_name] / self.rank_divisor[adapter_name]
        return result + update.to(result.dtype)

    def delta_weight(self, adapter_name: str) -> torch.Tensor:
        A, E, B = self.lora_A[adapter_name], self.lora_E[adapter_name], self.lora_B[adapter_name]
        delta = B @ (A * E) * self.scaling[adapter_name] / self.rank_divisor[adapter_name]  # (out, in)
        return delta.T if self.fan_in_fan_out else delta

    def orthogonality_gap(self, adapter_name: str) -> list[torch.Tensor]:
        """``||A A^T - I||_F`` and ``||B^T B - I||_F``: how far the singular vectors are from orthonormal."""
        A, B = self.lora_A[adapter_name], self.lora_B[adapter_name]
        gaps = []
        for gram in (A @ A.T, B.T @ B):  # both (r, r)
            eye = torch.eye(gram.shape[0], device=gram.device, dtype=gram.dtype)
            gaps.append(torch.linalg.matrix_norm(gram - eye, ord="fro"))
        return gaps

    def zero_pruned(self, adapter_name: str, keep: torch.Tensor) -> None:
        """Set the singular values of the triplets not in ``keep`` (bool, (r,)) to zero."""
        with torch.no_grad():
            self.lora_E[adapter_name].masked_fill_(~keep.to(self.lora_E[adapter_name].device).view(-1, 1), 0.0)

    def pruned_tensors(self, adapter_name: str, keep: torch.Tensor) -> dict[str, torch.Tensor]:
        """This adapter's tensors with only the triplets in ``keep``: what a pruned layer holds."""
        keep = keep.to(self.lora_E[adapter_name].device)
        return {
            "lora_A": self.lora_A[adapter_name].detach()[keep],
            "lora_E": self.lora_E[adapter_name].detach()[keep],
            "lora_B": self.lora_B[adapter_name].detach()[:, keep],
        }

    def extra_repr(self) -> str:
        ranks = {name: self.rank(name) for name in self.adapter_names}
        return f"ranks={ranks}, active={self.active_adapters}"

