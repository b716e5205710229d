"""Which modules of a base model an adapter wraps.

``target_modules`` follows the PEFT library's rules: a string is a regular
expression that must match the whole module path; a list matches a module
whose path equals an entry or ends with ``"." + entry``; ``"all-linear"``
means every Linear-like layer but the output head. When the user gives none,
defaults are picked per architecture *by inspecting the model*, because
module names change between library versions (transformers 5 renamed ViT's
``query``/``value`` to ``q_proj``/``v_proj``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from torch import nn

ALL_LINEAR = "all-linear"

# Preferred attention projections per architecture, as groups of names; the
# first group whose every name exists in the model wins.
_QV = (("q_proj", "v_proj"), ("query", "value"))
_DEFAULT_TARGETS: dict[str, tuple[tuple[str, ...], ...]] = {
    "gpt2": (("c_attn",),),
    "gpt_neo": (("q_proj", "v_proj"),),
    "gptj": (("q_proj", "v_proj"),),
    "gpt_neox": (("query_key_value",),),
    "opt": (("q_proj", "v_proj"),),
    "bloom": (("query_key_value",),),
    "llama": _QV,
    "mistral": _QV,
    "mixtral": _QV,
    "qwen2": _QV,
    "qwen3": _QV,
    "gemma": _QV,
    "gemma2": _QV,
    "t5": (("q", "v"),),
    "mt5": (("q", "v"),),
    "bart": (("q_proj", "v_proj"),),
    "mbart": (("q_proj", "v_proj"),),
    "bert": (("query", "value"), ("q_proj", "v_proj")),
    "roberta": (("query", "value"), ("q_proj", "v_proj")),
    "xlm-roberta": (("query", "value"), ("q_proj", "v_proj")),
    "deberta": (("query_proj", "value_proj"), ("in_proj",)),
    "deberta-v2": (("query_proj", "value_proj"),),
    "vit": (("q_proj", "v_proj"), ("query", "value")),
    "swin": (("query", "value"), ("q_proj", "v_proj")),
    "clip_text_model": (("q_proj", "k_proj", "v_proj", "out_proj"),),
    # diffusers models have no model_type; they are keyed by class name.
    "UNet2DConditionModel": (("to_q", "to_k", "to_v", "to_out.0"),),
}
# Tried in order for architectures not listed above.
_FALLBACK_TARGETS: tuple[tuple[str, ...], ...] = (
    ("q_proj", "v_proj"),
    ("query", "value"),
    ("q", "v"),
    ("c_attn",),
    ("query_key_value",),
    ("to_q", "to_v"),
    ("Wqkv",),
    ("qkv",),
)


def architecture_key(model: nn.Module) -> str:
    """``config.model_type`` for transformers models, the class name otherwise."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    return model_type if isinstance(model_type, str) and model_type else type(model).__name__


def key_matches(key: str, target_modules: str | Sequence[str]) -> bool:
    """Does the module path ``key`` match ``target_modules`` (PEFT's rules)?"""
    if isinstance(target_modules, str):
        return re.fullmatch(target_modules, key) is not None
    return any(key == t or key.endswith("." + t) for t in target_modules)


def layer_index(key: str, layers_pattern: Sequence[str] | str | None) -> int | None:
    """The block number in a module path: 3 in ``model.layers.3.mlp.experts.0.w1``.

    The *first* numbered segment counts (later ones are e.g. expert numbers);
    with ``layers_pattern`` only a number right after one of those names does.
    """
    parts = key.split(".")
    patterns = [layers_pattern] if isinstance(layers_pattern, str) else list(layers_pattern or [])
    for i in range(1, len(parts) - 1):
        if not parts[i].isdigit():
            continue
        if not patterns:
            return int(parts[i])
        for pattern in patterns:
            named = pattern.split(".")
            if parts[max(0, i - len(named)) : i] == named:
                return int(parts[i])
    return None


def selected_by_layer(key: str, layers_to_transform: Sequence[int] | int | None, layers_pattern) -> bool:
    if layers_to_transform is None:
        return True
    wanted = [layers_to_transform] if isinstance(layers_to_transform, int) else list(layers_to_transform)
    index = layer_index(key, layers_pattern)
    return index is not None and index in wanted


Modules = Sequence[tuple[str, nn.Module]]


def leaf_names(modules: Modules, keep: Callable[[nn.Module], bool]) -> list[str]:
    """Distinct last path components of the modules ``keep`` accepts, in model order."""
    names: dict[str, None] = {}
    for key, module in modules:
        if key and keep(module):
            names[key.rsplit(".", 1)[-1]] = None
    return list(names)


def default_target_modules(model: nn.Module, modules: Modules, is_supported: Callable[[nn.Module], bool]) -> list[str]:
    """Pick targets for ``model`` when the user named none.

    ``modules`` are the ``(path, module)`` pairs that may be wrapped.
    """
    arch = architecture_key(model)
    present = [key for key, module in modules if key and is_supported(module)]
    for group in _DEFAULT_TARGETS.get(arch, ()) + _FALLBACK_TARGETS:
        if all(any(key_matches(key, [name]) for key in present) for name in group):
            return list(group)
    raise ValueError(
        f"no default target_modules are known for {type(model).__name__} ({arch}); "
        f"set target_modules to some of its Linear-like modules: {', '.join(leaf_names(modules, is_supported))}"
    )


def all_linear_targets(model: nn.Module, modules: Modules, is_linear: Callable[[nn.Module], bool]) -> list[str]:
    """Target names for ``"all-linear"``: every Linear-like module but the output head.

    Leaf names are returned when they select exactly that set (as PEFT writes
    them); full paths otherwise.
    """
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    keys = [key for key, module in modules if key and is_linear(module) and module is not head]
    if not keys:
        raise ValueError(f"target_modules='all-linear' found no Linear layers in {type(model).__name__}")
    leaves = sorted({key.rsplit(".", 1)[-1] for key in keys})
    linear_keys = [key for key, module in modules if key and is_linear(module)]
    if [key for key in linear_keys if key_matches(key, leaves)] == keys:
        return leaves
    return keys


def resolve_targets(
    model: nn.Module,
    modules: Modules,
    target_modules: str | Sequence[str],
    is_supported: Callable[[nn.Module], bool],
    layers_to_transform: Sequence[int] | int | None = None,
    layers_pattern: Sequence[str] | str | None = None,
    exclude_modules: str | Sequence[str] | None = None,
) -> list[str]:
    """Paths among ``modules`` to wrap; raises a clear error when nothing matches."""
    keys = []
    for key, module in modules:
        if not key or not key_matches(key, target_modules):
            continue
        if exclude_modules and key_matches(key, exclude_modules):
            continue
        if not selected_by_layer(key, layers_to_transform, layers_pattern):
            continue
        if not is_supported(module):
            raise ValueError(
                f"target module {key!r} is a {type(module).__name__}, which this method cannot wrap; "
                f"pick among: {', '.join(leaf_names(modules, is_supported))}"
            )
        keys.append(key)
    if not keys:
        where = f" in layers {layers_to_transform}" if layers_to_transform is not None else ""
        raise ValueError(
            f"target_modules {_show(target_modules)} matched nothing{where} in {type(model).__name__}; "
            f"its Linear-like modules are: {', '.join(leaf_names(modules, is_supported))}"
        )
    return keys


def unmatched_entries(keys: Iterable[str], target_modules: str | Sequence[str]) -> list[str]:
    """List entries of ``target_modules`` that matched no module (for a warning)."""
    if isinstance(target_modules, str):
        return []
    keys = list(keys)
    return [t for t in target_modules if not any(key_matches(k, [t]) for k in keys)]


def _show(target_modules: str | Sequence[str]) -> str:
    return repr(target_modules) if isinstance(target_modules, str) else repr(list(target_modules))
