"""Loading a base model the way a run asks: preset or Hub id, precision, 4/8-bit weights.

Frozen base weights are kept in the run's low-precision dtype on a GPU (fp16
or bf16) and quantized with bitsandbytes when asked; the adapter's own
parameters are always created in fp32.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

import torch

from peft_core.errors import RunError
from peft_core.presets import PRESETS, resolve_model

logger = logging.getLogger(__name__)

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
_BAD_NAME = re.compile(r"(^|/)\.\.(/|$)|[\x00-\x1f<>|\"'`;$]")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")  # "name" or "owner/name"


def check_model_name(name: str) -> str:
    """A preset, a model folder here, or something shaped like a Hub id (no '..' tricks, no shell characters)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError("no model given; pick a preset or enter a Hub id or local path")
    name = name.strip()
    if _BAD_NAME.search(name):
        raise RunError("bad_model_name", model=name, why="it has characters or '..' parts that no id or path needs")
    if name.lower() in PRESETS:
        return name
    path = os.path.expanduser(name)
    if os.path.exists(path):
        if not (os.path.isfile(os.path.join(path, "config.json")) or os.path.isfile(os.path.join(path, "model_index.json"))):
            raise RunError("not_a_model_folder", model=name)
        return name
    if not _HUB_ID.match(name):
        raise RunError("bad_model_name", model=name, why="no such folder, and a Hub id has one '/' at most")
    return name


def model_load_error(name: str, exc: BaseException) -> RunError:
    """The error to raise when ``from_pretrained`` could not load ``name`` (first line of its reason)."""
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")
    return RunError("model_not_found", model=name, reason=reason)


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
        raise model_load_error(name_or_path, exc) from None
    if quant is None:
        model.to(device)
    return model
