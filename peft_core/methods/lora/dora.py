"""DoRA's arithmetic on out-first weights (rows are output channels).

DoRA writes the adapted weight as ``m * (W + dW) / ||W + dW||`` with one
learned magnitude ``m`` per output channel. The norm is treated as a
constant for autograd, as the DoRA paper recommends, which saves memory.
"""

from __future__ import annotations

import torch


def row_norm(weight: torch.Tensor) -> torch.Tensor:
    """L2 norm of each output row of an out-first weight; shape (out,)."""
    return weight.flatten(1).norm(p=2, dim=1)


def rescale_rows(weight: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Multiply row ``i`` of ``weight`` by ``factor[i]``."""
    return weight * factor.reshape(-1, *([1] * (weight.dim() - 1)))
