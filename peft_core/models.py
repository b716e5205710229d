"""Loading a base model the way a run asks: preset or Hub id, precision, 4/8-bit weights.

Frozen base weights are kept in the run's low-precision dtype on a GPU (fp16
or bf16) and quantized with bitsandbytes when asked; the adapter's own
parameters are always created in fp32.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import torch

from peft_core.presets import resolve_model

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_BAD_NAME = re.compile(r"(^|/)\.\.(/|$)|[\x00-\x1f<>|\"'`;$]")


def check_model_name(name: str) -> str:
    """Refuse names that are neither a plausible Hub id nor a plain path (no '..' tricks, no shell characters)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("no model given; pick a preset or enter a Hub id or local path")
    if _BAD_NAME.search(name):
        raise ValueError(f"model name {name!r} contains characters or '..' parts that no model id or path needs")
    return name.strip()


def weights_dtype(precision: str, device: torch.device) -> torch.dtype:
    """The dtype frozen base weights are loaded in: fp32 on CPU, the run's half precision on a GPU."""
    return _DTYPES[precision] if device.type != "cpu" else torch.float32


def quantization_config(quantization: str, compute_dtype: torch.dtype) -> Any:
    from transformers import BitsAndBytesConfig

    if quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype,
        )
    if quantization == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return None


def load_base_model(
    auto_class: Any,
    name_or_path: str,
    *,
    precision: str,
    device: torch.device,
    quantization: str = "none",
    trust_remote_code: bool = False,
    **kwargs: Any,
) -> torch.nn.Module:
    """``auto_class.from_pretrained`` with the run's dtype, device and quantization; clear errors."""
    source = resolve_model(check_model_name(name_or_path))
    dtype = weights_dtype(precision, device)
    compute = _DTYPES[precision] if device.type != "cpu" else torch.float32
    quant = quantization_config(quantization, compute)
    if trust_remote_code:
        logger.warning("trust_remote_code is on: code shipped with %s will run", name_or_path)
    try:
        model = auto_class.from_pretrained(
            source,
            dtype=dtype,
            quantization_config=quant,
            device_map={"": device} if quant is not None else None,
            trust_remote_code=trust_remote_code,
            **kwargs,
        )
    except OSError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"cannot load model {name_or_path!r}: {first}") from None
    if quant is None:
        model.to(device)
    return model
