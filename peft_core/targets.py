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
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from torch import nn

from peft_core.config_errors import bad

ALL_LINEAR = "all-linear"

# Candidate groups of module names, in order of preference; the first group
# whose every name exists in the model wins.
Groups = tuple[tuple[str, ...], ...]

# LoRA: preferred attention projections per architecture.
_QV = (("q_proj", "v_proj"), ("query", "value"))
_DEFAULT_TARGETS: dict[str, Groups] = {
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
_FALLBACK_TARGETS: Groups = (
    ("q_proj", "v_proj"),
    ("query", "value"),
    ("q", "v"),
    ("c_attn",),
    ("query_key_value",),
    ("to_q", "to_v"),
    ("Wqkv",),
    ("qkv",),
)

# IA3: (attention projections, feedforward projections), in order of
# preference. Both are targets; the feedforward ones (the MLP's second
# projection) are scaled at their input, the MLP's hidden activations. Keys,
# values and those activations are what the (IA)^3 paper rescales.
IA3Choice = tuple[tuple[str, ...], tuple[str, ...]]
_KV_DOWN: tuple[IA3Choice, ...] = ((("k_proj", "v_proj"), ("down_proj",)),)
_KV_FC2: tuple[IA3Choice, ...] = ((("k_proj", "v_proj"), ("fc2",)),)
# No suffix tells BERT's MLP "output.dense" from "attention.output.dense", so
# both are scaled at their input, as the PEFT library's own defaults do.
_BERT_LIKE: tuple[IA3Choice, ...] = ((("key", "value"), ("output.dense",)),)
_FUSED_QKV: tuple[IA3Choice, ...] = ((("query_key_value",), ("dense_4h_to_h",)),)
_GPT2_LIKE: tuple[IA3Choice, ...] = ((("c_attn",), ("mlp.c_proj",)),)
_T5_LIKE: tuple[IA3Choice, ...] = ((("k", "v"), ("wo",)),)
_IA3_DEFAULTS: dict[str, tuple[IA3Choice, ...]] = {
    "gpt2": _GPT2_LIKE,
    "gpt_bigcode": _GPT2_LIKE,
    "gpt_neo": ((("k_proj", "v_proj"), ("mlp.c_proj",)),),
    "gptj": ((("k_proj", "v_proj"), ("fc_out",)),),
    "gpt_neox": _FUSED_QKV,
    "bloom": _FUSED_QKV,
    "falcon": _FUSED_QKV,
    "opt": _KV_FC2,
    "phi": _KV_FC2,
    "llama": _KV_DOWN,
    "mistral": _KV_DOWN,
    # transformers 5 fuses Mixtral's experts into one module without Linear layers
    "mixtral": ((("k_proj", "v_proj"), ("w2",)), (("k_proj", "v_proj"), ())),
    "qwen2": _KV_DOWN,
    "qwen3": _KV_DOWN,
    "gemma": _KV_DOWN,
    "gemma2": _KV_DOWN,
    "gemma3_text": _KV_DOWN,
    "t5": _T5_LIKE,
    "mt5": _T5_LIKE,
    "bart": _KV_FC2,
    "mbart": _KV_FC2,
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "deberta": ((("in_proj",), ("output.dense",)),),
    "deberta-v2": ((("key_proj", "value_proj"), ("output.dense",)),),
    "vit": _KV_FC2 + _BERT_LIKE,
    "swin": _KV_FC2 + _BERT_LIKE,
    "clip_text_model": _KV_FC2,
    "UNet2DConditionModel": ((("to_k", "to_v"), ("ff.net.2",)),),
}
# Tried in order for architectures not listed above: with an MLP projection
# first, then the attention alone.
_IA3_FALLBACK: tuple[IA3Choice, ...] = (
    _KV_DOWN + _KV_FC2 + _BERT_LIKE + _T5_LIKE + _GPT2_LIKE + _FUSED_QKV
    + ((("to_k", "to_v"), ("ff.net.2",)),)
    + tuple((group, ()) for group in (("k_proj", "v_proj"), ("key", "value"), ("k", "v"), ("c_attn",),
                                      ("query_key_value",), ("to_k", "to_v"), ("Wqkv",), ("qkv",)))
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


def first_present_group(
    modules: Modules, is_supported: Callable[[nn.Module], bool], groups: Iterable[tuple[str, ...]]
) -> tuple[str, ...] | None:
    """The first group of names that all match some wrappable module, or None."""
    present = [key for key, module in modules if key and is_supported(module)]
    for group in groups:
        if all(any(key_matches(key, [name]) for key in present) for name in group):
            return group
    return None


def default_target_modules(
    model: nn.Module,
    modules: Modules,
    is_supported: Callable[[nn.Module], bool],
    table: Mapping[str, Groups] = _DEFAULT_TARGETS,
    fallback: Groups = _FALLBACK_TARGETS,
) -> list[str]:
    """Pick targets for ``model`` when the user named none.

    ``modules`` are the ``(path, module)`` pairs that may be wrapped. ``table``
    holds candidate groups per architecture, ``fallback`` those tried for every
    architecture after them; both default to LoRA's.
    """
    arch = architecture_key(model)
    group = first_present_group(modules, is_supported, table.get(arch, ()) + fallback)
    if group is None:
        raise ValueError(
            f"no default target_modules are known for {type(model).__name__} ({arch}); "
            f"set target_modules to some of its Linear-like modules: {', '.join(leaf_names(modules, is_supported))}"
        )
    return list(group)


def _ia3_choices(model: nn.Module) -> tuple[IA3Choice, ...]:
    return _IA3_DEFAULTS.get(architecture_key(model), ()) + _IA3_FALLBACK


def ia3_default_modules(
    model: nn.Module, modules: Modules, is_supported: Callable[[nn.Module], bool]
) -> tuple[list[str], list[str]]:
    """IA3's default ``(target_modules, feedforward_modules)`` for ``model``.

    The feedforward modules are always among the targets.
    """
    choices = _ia3_choices(model)
    groups = tuple(attention + feedforward for attention, feedforward in choices)
    chosen = default_target_modules(model, modules, is_supported, table={}, fallback=groups)
    feedforward = next(ff for attention, ff in choices if attention + ff == tuple(chosen))
    return chosen, list(feedforward)


def ia3_default_feedforward(
    model: nn.Module, modules: Modules, is_supported: Callable[[nn.Module], bool]
) -> list[str]:
    """The feedforward names of IA3's default for ``model``; empty when no default fits."""
    choices = _ia3_choices(model)
    chosen = first_present_group(modules, is_supported, (attention + ff for attention, ff in choices))
    return next((list(ff) for attention, ff in choices if attention + ff == chosen), [])


def names_or_regex(field_name: str, value: Any) -> list[str] | str | None:
    """A config's module selection as a list of names, one regular expression, or None.

    Sets become sorted lists (PEFT writes its sets as lists); empty means None.
    """
    if value is None or isinstance(value, str):
        return value if value is None or value.strip() else None
    if isinstance(value, (list, tuple, set, frozenset)) and all(isinstance(v, str) and v for v in value):
        names = sorted(value) if isinstance(value, (set, frozenset)) else list(value)
        return names or None
    raise bad("names_or_regex", field_name, value)


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
