"""Getting a 4-bit / 8-bit (bitsandbytes) model ready for adapter training (QLoRA)."""

from __future__ import annotations

import logging

import torch
from torch import nn

logger = logging.getLogger(__name__)

_QUANTIZED_PARAMS = ("Params4bit", "Int8Params")


def prepare_model_for_kbit_training(
    model: nn.Module,
    use_gradient_checkpointing: bool = True,
    gradient_checkpointing_kwargs: dict | None = None,
) -> nn.Module:
    """Freeze the base, keep its small float parts (norms, head) in fp32, set up checkpointing.

    Call it on the quantized base model before ``get_peft_model``. Gradient
    checkpointing is non-reentrant by default, which needs no trick to get
    gradients through frozen embeddings.
    """
    for param in model.parameters():
        param.requires_grad_(False)
        if type(param).__name__ in _QUANTIZED_PARAMS:
            continue
        if param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    if use_gradient_checkpointing:
        kwargs = {"use_reentrant": False, **(gradient_checkpointing_kwargs or {})}
        if kwargs["use_reentrant"] and hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()  # reentrant checkpoints need an input that requires grad
        if not hasattr(model, "gradient_checkpointing_enable"):
            raise ValueError(f"{type(model).__name__} does not support gradient checkpointing; pass use_gradient_checkpointing=False")
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    return model
