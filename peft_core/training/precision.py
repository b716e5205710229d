"""Which precision to train in, picked from the hardware unless the run says otherwise."""

from __future__ import annotations

import torch


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def native_bf16(device: torch.device) -> bool:
    """True on GPUs with bf16 in hardware (compute capability 8.0+).

    ``torch.cuda.is_bf16_supported()`` is also true on a T4 (7.5), through slow
    emulation, so the capability is what decides.
    """
    if device.type != "cuda":
        return False
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


def pick_precision(requested: str, device: torch.device) -> str:
    """"fp32" on CPU; on a GPU bf16 where native, else fp16 (with gradient scaling); or what was asked."""
    if requested != "auto":
        if device.type == "cpu" and requested == "fp16":
            raise ValueError("fp16 training needs a GPU; use precision auto or fp32 on the CPU")
        return requested
    if device.type == "cpu":
        return "fp32"
    return "bf16" if native_bf16(device) else "fp16"


def accelerate_mixed_precision(precision: str) -> str:
    return {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}[precision]


def upcast_trainable(model: torch.nn.Module) -> int:
    """Keep trainable weights in fp32 under half-precision training; returns how many were cast.

    The frozen base stays in fp16/bf16 (that is where the memory goes); the
    adapter's small tensors in fp32 keep their updates from rounding away, and
    fp16 gradient scaling can only unscale fp32 gradients.
    """
    cast = 0
    for param in model.parameters():
        if param.requires_grad and param.is_floating_point() and param.dtype != torch.float32:
            param.data = param.data.float()
            cast += 1
    return cast
