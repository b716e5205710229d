"""Reading and writing the dense weight of a base layer, quantized or not.

Merging an adapter changes the base weight. For plain layers that is an
in-place add; for bitsandbytes 4-bit / 8-bit layers the weight is
dequantized, changed and quantized again (which rounds, as any merge into a
quantized model must).
"""

from __future__ import annotations

import torch
from torch import nn


def _bnb():
    import bitsandbytes as bnb

    return bnb


def quantization_kind(layer: nn.Module) -> str | None:
    """"4bit", "8bit" or None, judged by the weight's class (no bitsandbytes import needed)."""
    kind = type(getattr(layer, "weight", None)).__name__
    return {"Params4bit": "4bit", "Int8Params": "8bit"}.get(kind)


def dense_weight(layer: nn.Module) -> torch.Tensor:
    """The layer's weight as a float tensor in the layer's own layout."""
    weight = layer.weight
    kind = quantization_kind(layer)
    if kind == "4bit":
        _unpack_cpu_layout(weight)
        return _bnb().functional.dequantize_4bit(weight.data, weight.quant_state)
    if kind == "8bit":
        return _bnb().functional.int8_vectorwise_dequant(weight.data, _int8_scales(layer))
    return weight


def _unpack_cpu_layout(weight: torch.Tensor) -> None:
    """Undo the CPU-only weight layout bitsandbytes switches to on its first inference call.

    Its usual dequantization does not read that layout; the next inference
    call packs the weight again.
    """
    if getattr(weight.quant_state, "packing_format_for_cpu", False):
        from bitsandbytes.functional import _convert_weight_packed_for_cpu_inverse

        weight.data, weight.quant_state = _convert_weight_packed_for_cpu_inverse(weight.data, weight.quant_state)
        if getattr(weight, "module", None) is not None:
            weight.module.quant_state = weight.quant_state


def training_layout(model: nn.Module) -> None:
    """Give every 4-bit layer of ``model`` back its trainable layout.

    On the CPU bitsandbytes re-lays a 4-bit weight out for inference on the
    first call in eval mode without gradients (an evaluation, a sample), and
    keeps using that layout's kernel afterwards, which has no backward: no
    gradient would pass through the layer. Training loops call this before
    training steps that follow such a call.
    """
    for layer in model.modules():
        weight = getattr(layer, "weight", None)
        if type(weight).__name__ == "Params4bit" and weight.quant_state is not None:
            _unpack_cpu_layout(weight)


def _int8_scales(layer: nn.Module) -> torch.Tensor:
    # bitsandbytes moves the row scales from the weight to ``layer.state`` on the first forward.
    scales = getattr(layer.weight, "SCB", None)
    return scales if scales is not None else layer.state.SCB


def set_dense_weight(layer: nn.Module, new: torch.Tensor) -> None:
    """Replace the layer's weight values (re-quantizing when the layer is quantized)."""
    weight = layer.weight
    kind = quantization_kind(layer)
    if kind is None:
        with torch.no_grad():
            weight.data.copy_(new.to(weight.dtype))
        return
    bnb = _bnb()
    device = weight.device
    if kind == "4bit":
        fresh = bnb.nn.Params4bit(
            new.to("cpu", torch.float32).contiguous(),
            requires_grad=False,
            blocksize=weight.blocksize,
            compress_statistics=weight.compress_statistics,
            quant_type=weight.quant_type,
            quant_storage=weight.quant_storage,
            module=layer,
        )
        layer.weight = fresh._quantize(device)
        return
    cb, scb, _ = bnb.functional.int8_vectorwise_quant(new.to(device, torch.float16).contiguous())
    weight.data = cb
    if getattr(weight, "SCB", None) is not None:
        weight.SCB, weight.CB = scb, cb
    state = getattr(layer, "state", None)
    if state is not None and getattr(state, "SCB", None) is not None:
        state.SCB, state.CB = scb, cb


def add_to_weight(layer: nn.Module, delta: torch.Tensor) -> None:
    """``weight += delta`` in the layer's layout."""
    if quantization_kind(layer) is None:
        with torch.no_grad():
            layer.weight.data += delta.to(layer.weight.dtype)
        return
    set_dense_weight(layer, dense_weight(layer).float() + delta.float())
