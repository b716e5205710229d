"""Injecting a method's layers into a base model, and everything done to them.

``AdapterModel`` holds the user's model as ``self.model`` (so parameter
names read ``base_model.model.<path>`` under a ``PeftModel``, as in the PEFT
library), swaps the targeted modules for the method's wrapper layers, wraps
``modules_to_save``, and manages several named adapters: which is active,
merging, unloading, and the adapter's tensors in the PEFT format.

A method subclasses it and says which modules it can wrap
(``is_supported``) and how to wrap one (``create_layer``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import nn

from peft_core import targets
from peft_core.config import PeftConfig
from peft_core.layers import AdapterLayer
from peft_core.modules_to_save import ModulesToSaveWrapper

logger = logging.getLogger(__name__)


class AdapterModel(nn.Module):
    """A base model with one method's adapter layers injected."""

    layer_cls: ClassVar[type[AdapterLayer]]
    config_cls: ClassVar[type[PeftConfig]]

    def __init__(self, model: nn.Module, config: PeftConfig, adapter_name: str = "default") -> None:
        super().__init__()
        self.model = model
        self.peft_config: dict[str, PeftConfig] = {}
        self.active_adapters: list[str] = []
        model.requires_grad_(False)
        self.add_adapter(adapter_name, config)

    # -- what a method implements -----------------------------------------
    @classmethod
    def model_problem(cls, model: nn.Module) -> str | None:
        """Why this method cannot adapt ``model`` at all, or None (the registry asks before the UI offers it)."""
        return None

    def is_supported(self, module: nn.Module) -> bool:
        """Can this method wrap ``module`` (a base module, not a wrapper)?"""
        raise NotImplementedError

    def create_layer(self, target: nn.Module, adapter_name: str, config: PeftConfig, key: str) -> AdapterLayer:
        """Wrap ``target`` and give the wrapper the parameters of ``adapter_name``."""
        raise NotImplementedError

    def resolve_config(self, config: PeftConfig) -> PeftConfig:
        """Fill in what depends on the model (default target modules)."""
        return config

    def extra_trainable(self, adapter_name: str) -> dict[str, nn.Parameter]:
        """Base-model parameters the adapter also trains and saves: biases, per the config's ``bias``.

        "all": every bias of the model; "lora_only": those of the layers the
        adapter wraps; "none" (or a method without the field): nothing.
        """
        config = self.peft_config.get(adapter_name)
        bias = getattr(config, "bias", "none")
        if bias == "none":
            return {}
        if bias == "lora_only":
            return {
                f"{key}.base_layer.bias": layer.base_layer.bias
                for key, layer in self.adapter_layers()
                if layer.has_adapter(adapter_name) and getattr(layer.base_layer, "bias", None) is not None
            }
        covered: set[int] = set()
        for _, layer in self.adapter_layers():
            for name in layer.adapter_names:
                covered.update(id(p) for _, p in layer.adapter_parameters(name))
        for _, wrapper in self.saved_module_wrappers():
            covered.update(id(p) for p in wrapper.parameters())
        return {
            key: param
            for key, param in self.model.named_parameters()
            if key.rsplit(".", 1)[-1] == "bias" and id(param) not in covered and param.is_floating_point()
        }

    # -- training hooks: the trainer calls these; most methods need neither ----
    def regularization_loss(self) -> torch.Tensor | None:
        """A term ``PeftModel.forward`` adds to the task loss while training (AdaLoRA's orthogonality)."""
        return None

    def on_optimizer_step(self, global_step: int) -> None:
        """Called after each optimizer step, before gradients are zeroed (AdaLoRA's rank budget)."""

    def training_state(self) -> dict[str, Any]:
        """Method state beyond the parameters that an exact resume needs (AdaLoRA's importance scores)."""
        return {}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Restore what ``training_state`` returned."""

    def tensors_to_save(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """What ``save_pretrained`` writes; a method may prune (AdaLoRA drops masked ranks)."""
        return {key: tensor.detach() for key, tensor in self.adapter_tensors(adapter_name).items()}

    # -- model access ---------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        return self.model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "model":
                raise
            return getattr(self.model, name)

    def wrappable_modules(self) -> list[tuple[str, nn.Module]]:
        """``(path, module)`` of every module an adapter may target.

        Does not descend into adapter wrappers (so ``q_proj.base_layer`` is
        never a target of its own) nor into ``modules_to_save`` copies.
        """
        found: list[tuple[str, nn.Module]] = []

        def walk(prefix: str, module: nn.Module) -> None:
            for name, child in module.named_children():
                key = f"{prefix}.{name}" if prefix else name
                found.append((key, child))
                if not isinstance(child, (AdapterLayer, ModulesToSaveWrapper)):
                    walk(key, child)

        walk("", self.model)
        return found

    def _supports(self, module: nn.Module) -> bool:
        return isinstance(module, self.layer_cls) or (
            not isinstance(module, (AdapterLayer, ModulesToSaveWrapper)) and self.is_supported(module)
        )

    def adapter_layers(self) -> Iterator[tuple[str, AdapterLayer]]:
        for key, module in self.model.named_modules():
            if isinstance(module, AdapterLayer):
                yield key, module

    def saved_module_wrappers(self) -> Iterator[tuple[str, ModulesToSaveWrapper]]:
        for key, module in self.model.named_modules():
            if isinstance(module, ModulesToSaveWrapper):
                yield key, module

    # -- adding, choosing and deleting adapters ------------------------------
    def add_adapter(self, adapter_name: str, config: PeftConfig) -> None:
        if adapter_name in self.peft_config:
            raise ValueError(f"an adapter named {adapter_name!r} already exists; pick another name or delete it first")
        if not isinstance(config, self.config_cls):
            raise ValueError(
                f"this model holds {self.config_cls.__name__} adapters; a {type(config).__name__} "
                f"cannot be added to it (adapters of different methods cannot be mixed on one model)"
            )
        config = self.resolve_config(dataclasses.replace(config))
        modules = self.wrappable_modules()
        saved = list(getattr(config, "modules_to_save", None) or [])
        # A module trained in full is not also given adapter layers.
        candidates = [(k, m) for k, m in modules if not any(targets.key_matches(p, saved) for p in _prefixes(k))]
        keys = targets.resolve_targets(
            self.model,
            candidates,
            config.target_modules,
            self._supports,
            layers_to_transform=getattr(config, "layers_to_transform", None),
            layers_pattern=getattr(config, "layers_pattern", None),
            exclude_modules=getattr(config, "exclude_modules", None),
        )
        missing = targets.unmatched_entries(keys, config.target_modules)
        if missing:
            logger.warning("target_modules %s matched nothing in %s", missing, type(self.model).__name__)
        for key in keys:
            target = self.model.get_submodule(key)
            if isinstance(target, self.layer_cls):
                target.update_layer(adapter_name, config, key)
            else:
                self._replace(key, self.create_layer(target, adapter_name, config, key))
        self._wrap_modules_to_save(adapter_name, saved, modules)
        self.peft_config[adapter_name] = config
        self.set_adapter(self.active_adapters or adapter_name)  # keep the current choice; freeze the new one

    def _wrap_modules_to_save(self, adapter_name: str, names: Sequence[str], modules) -> None:
        if not names:
            return
        matched = [(k, m) for k, m in modules if targets.key_matches(k, names)]
        if not matched:
            available = ", ".join(targets.leaf_names(modules, lambda m: any(True for _ in m.parameters(recurse=False))))
            raise ValueError(
                f"modules_to_save {list(names)} matched no module of {type(self.model).__name__}; "
                f"modules with their own weights are: {available}"
            )
        for key, module in matched:
            if not isinstance(module, ModulesToSaveWrapper):
                module = ModulesToSaveWrapper(module)
                self._replace(key, module)
            module.add_adapter(adapter_name)

    def set_adapter(self, adapter_names: str | Sequence[str]) -> None:
        """Make ``adapter_names`` active; their parameters train unless loaded for inference."""
        names = [adapter_names] if isinstance(adapter_names, str) else list(adapter_names)
        unknown = [n for n in names if n not in self.peft_config]
        if unknown or not names:
            raise ValueError(f"no adapter named {unknown or names}; this model has: {list(self.peft_config)}")
        trainable = not all(self.peft_config[n].inference_mode for n in names)
        for _, layer in self.adapter_layers():
            if layer.merged_adapters and set(layer.merged_adapters) != set(names):
                layer.unmerge()
            layer.set_adapter(names, trainable)
        for _, wrapper in self.saved_module_wrappers():
            wrapper.set_adapter(names, trainable)
        self.active_adapters = names
        for param in self.extra_trainable(names[0]).values():
            param.requires_grad_(trainable)

    def delete_adapter(self, adapter_name: str) -> None:
        if adapter_name not in self.peft_config:
            raise ValueError(f"no adapter named {adapter_name!r}; this model has: {list(self.peft_config)}")
        if len(self.peft_config) == 1:
            raise ValueError(f"{adapter_name!r} is the only adapter; use unload() to get the base model back")
        for _, layer in self.adapter_layers():
            layer.delete_adapter(adapter_name)
        for _, wrapper in self.saved_module_wrappers():
            wrapper.delete_adapter(adapter_name)
        del self.peft_config[adapter_name]
        remaining = [n for n in self.active_adapters if n != adapter_name]
        self.set_adapter(remaining or next(iter(self.peft_config)))

    def set_adapters_disabled(self, disabled: bool) -> None:
        for _, layer in self.adapter_layers():
            layer.adapters_disabled = disabled
        for _, wrapper in self.saved_module_wrappers():
            wrapper.adapters_disabled = disabled

    # -- merging and unloading -------------------------------------------------
    def merge_adapter(self, adapter_names: Sequence[str] | None = None, safe_merge: bool = False) -> None:
        self._warn_about_tied_weights()
        for _, layer in self.adapter_layers():
            layer.merge(adapter_names, safe_merge=safe_merge)

    def unmerge_adapter(self) -> None:
        for _, layer in self.adapter_layers():
            layer.unmerge()

    def merge_and_unload(self, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> nn.Module:
        """Fold the adapters into the weights and return the plain base model."""
        return self._unwrap(merge=True, safe_merge=safe_merge, adapter_names=adapter_names)

    def unload(self) -> nn.Module:
        """Remove every adapter layer without merging; return the base model."""
        return self._unwrap(merge=False)

    def _unwrap(self, merge: bool, safe_merge: bool = False, adapter_names: Sequence[str] | None = None) -> nn.Module:
        if merge:
            self._warn_about_tied_weights()
        for key, layer in list(self.adapter_layers()):
            if merge:
                layer.merge(adapter_names, safe_merge=safe_merge)
            else:
                layer.unmerge()
            self._replace(key, layer.get_base_layer())
        for key, wrapper in list(self.saved_module_wrappers()):
            self._replace(key, wrapper.active_module if merge else wrapper.original_module)
        return self.model

    def _warn_about_tied_weights(self) -> None:
        """Merging into a weight another module shares (tied embeddings) changes that module too."""
        uses: dict[int, int] = {}
        for _, param in self.model.named_parameters(remove_duplicate=False):
            uses[id(param)] = uses.get(id(param), 0) + 1
        for key, layer in self.adapter_layers():
            weight = getattr(layer.base_layer, "weight", None)
            if weight is not None and uses.get(id(weight), 0) > 1:
                logger.warning(
                    "%s shares its weight with another module (tied embeddings); merging the adapter "
                    "changes both. Keep the adapter unmerged, or untie the weights first.", key
                )

    def _replace(self, key: str, new: nn.Module) -> None:
        parent_key, _, child = key.rpartition(".")
        parent = self.model.get_submodule(parent_key) if parent_key else self.model
        setattr(parent, child, new)

    # -- the adapter's tensors under their full PEFT-format names ----------------
    # Injected methods' names start with "base_model.model." (the user's model
    # sits at PeftModel.base_model.model); prompt methods name theirs differently.
    key_prefix: ClassVar[str] = "base_model.model."

    def adapter_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """Live tensors (parameters and buffers) of one adapter, keyed by PEFT name."""
        out: dict[str, torch.Tensor] = {}
        for key, layer in self.adapter_layers():
            for local, param in layer.adapter_parameters(adapter_name):
                out[f"{key}.{local}"] = param
        out.update(self.saved_module_tensors(adapter_name))
        out.update(self.extra_trainable(adapter_name))
        return {self.key_prefix + key: tensor for key, tensor in out.items()}

    def saved_module_tensors(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """The adapter's copies of ``modules_to_save``, under the original modules' names."""
        out: dict[str, torch.Tensor] = {}
        for key, wrapper in self.saved_module_wrappers():
            if adapter_name in wrapper.modules_to_save:
                for local, tensor in wrapper.modules_to_save[adapter_name].state_dict(keep_vars=True).items():
                    out[f"{key}.{local}"] = tensor
        return out

    def prepare_for_loading(self, adapter_name: str) -> None:
        """Hook before saved tensors are copied in (a method may reshape itself to the file's form)."""


def _prefixes(key: str) -> list[str]:
    """``a.b.c`` -> ``[a, a.b, a.b.c]``: a module and its ancestors."""
    parts = key.split(".")
    return [".".join(parts[: i + 1]) for i in range(len(parts))]
