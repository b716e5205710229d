"""Adapter weights on disk: ``adapter_model.safetensors`` with PEFT's tensor names.

Names are ``base_model.model.<module path>.<tensor>``, the adapter name
stripped (``...q_proj.lora_A.weight``). Only safetensors are written; a
pickled ``adapter_model.bin`` is read only when the caller opts in, because
unpickling can run code.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load_file, save_file

from peft_core.hub import resolve_adapter_file

if TYPE_CHECKING:
    from peft_core.peft_model import PeftModel

logger = logging.getLogger(__name__)

WEIGHTS_NAME = "adapter_model.safetensors"
PICKLE_WEIGHTS_NAME = "adapter_model.bin"
PREFIX = "base_model.model."


class PickleRefusedError(ValueError):
    """The adapter exists only as a pickle and the caller did not allow pickles."""


def get_peft_model_state_dict(model: PeftModel, adapter_name: str = "default") -> dict[str, torch.Tensor]:
    """The adapter's tensors under the names the PEFT library uses."""
    if adapter_name not in model.peft_config:
        raise ValueError(f"no adapter named {adapter_name!r}; this model has: {list(model.peft_config)}")
    return dict(model.base_model.tensors_to_save(adapter_name))


def set_peft_model_state_dict(model: PeftModel, state_dict: dict[str, torch.Tensor], adapter_name: str = "default") -> None:
    """Copy PEFT-named tensors into adapter ``adapter_name``; strict, with clear errors."""
    state_dict = _drop_redundant_keys(state_dict)
    model.base_model.prepare_for_loading(adapter_name)
    expected = model.base_model.adapter_tensors(adapter_name)
    base_name = model.peft_config[adapter_name].base_model_name_or_path
    made_for = f" (its config names base model {base_name!r})" if base_name else ""
    extra = [k for k in state_dict if k not in expected]
    full_weights = _base_model_tensors(model, extra)
    unexpected = [k for k in extra if k not in full_weights]
    if unexpected:
        raise ValueError(
            f"the adapter file has {len(unexpected)} tensors for modules this model does not have or the "
            f"adapter config does not target, e.g. {unexpected[:3]}; it was made for another base model{made_for} "
            f"or its adapter_config.json does not match the weights"
        )
    missing = [k for k in expected if k not in state_dict]
    if missing:
        raise ValueError(
            f"the adapter file lacks {len(missing)} tensors its config asks for, e.g. {missing[:3]}; "
            f"the file is incomplete or belongs to another adapter_config.json"
        )
    for key, value in state_dict.items():
        target = expected.get(key, full_weights.get(key))
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(
                f"tensor {key} has shape {tuple(value.shape)} in the adapter file but {tuple(target.shape)} in "
                f"{type(model.get_base_model()).__name__}: the adapter was trained on a different base model{made_for}"
            )
    with torch.no_grad():
        for key, value in state_dict.items():
            target = expected.get(key, full_weights.get(key))
            target.copy_(value.to(device=target.device, dtype=target.dtype))
    if full_weights:
        logger.info("loaded %d full base-model tensors saved with the adapter", len(full_weights))


def _drop_redundant_keys(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Leave out copies the PEFT library writes with ``bias="all"`` next to ``modules_to_save``.

    It also saves the frozen original head's bias (``.original_module.``) and
    a second name for the trained copy's bias (``.modules_to_save.``).
    """
    kept = {}
    for key, value in state_dict.items():
        if ".original_module." in key:
            continue
        if ".modules_to_save." in key and key.replace(".modules_to_save.", ".") in state_dict:
            continue
        kept[key] = value
    return kept


def _base_model_tensors(model: PeftModel, keys: list[str]) -> dict[str, torch.Tensor]:
    """Keys that name a whole base-model tensor (PEFT saves resized embeddings this way)."""
    found = {}
    inner = model.get_base_model()
    params = dict(inner.named_parameters())
    for key in keys:
        local = key[len(PREFIX) :] if key.startswith(PREFIX) else None
        if local in params:
            found[key] = params[local]
    return found


def save_adapter_weights(state_dict: dict[str, torch.Tensor], directory: str | os.PathLike) -> str:
    """Write ``adapter_model.safetensors`` atomically (temp file + rename)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, WEIGHTS_NAME)
    tmp = path + ".tmp"
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(tensors, tmp, metadata={"format": "pt"})
    os.replace(tmp, path)
    return path


def load_adapter_weights(
    path_or_hub_id: str | os.PathLike,
    allow_pickle: bool = False,
    subfolder: str | None = None,
    revision: str | None = None,
    token: str | None = None,
) -> dict[str, torch.Tensor]:
    """Read the adapter's tensors from a local directory or a Hub repo."""
    kwargs = dict(subfolder=subfolder, revision=revision, token=token)
    try:
        return load_file(resolve_adapter_file(path_or_hub_id, WEIGHTS_NAME, **kwargs), device="cpu")
    except FileNotFoundError as no_safetensors:
        try:
            pickled = resolve_adapter_file(path_or_hub_id, PICKLE_WEIGHTS_NAME, **kwargs)
        except FileNotFoundError:
            raise no_safetensors from None
    if not allow_pickle:
        raise PickleRefusedError(
            f"{pickled} is a pickle file, which can run arbitrary code when loaded; it is only read with "
            f"allow_pickle=True, for files you trust. Better: convert it once to {WEIGHTS_NAME}."
        )
    logger.warning("loading pickled adapter weights from %s because allow_pickle=True", pickled)
    return torch.load(pickled, map_location="cpu", weights_only=True)
