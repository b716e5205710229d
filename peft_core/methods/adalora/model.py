"""``AdaLoraModel``: wraps Linear-like modules and runs the rank budget while training.

Its two training-time parts are the declared hooks of ``AdapterModel``:
``regularization_loss`` (keeps the singular vectors orthonormal) and
``on_optimizer_step`` (scores importance, prunes to the schedule). A loop that
forgets the second trains a plain SVD-LoRA at ``init_r``; that is noticed and
logged once. ``tensors_to_save`` drops the pruned triplets, as the PEFT
library's files hold them.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from peft_core import targets
from peft_core.layers import is_conv1d, is_linear
from peft_core.methods.adalora.allocator import RankAllocator
from peft_core.methods.adalora.config import PATTERN_SUFFIX, AdaLoraConfig, pattern_module_path
from peft_core.methods.adalora.layer import AdaLoraLinear
from peft_core.tuner import AdapterModel

logger = logging.getLogger(__name__)

# Architectures whose AdaLoRA defaults differ from LoRA's (the PEFT library's table).
_DEFAULT_TARGETS = {
    "t5": ["q", "k", "v", "o", "wi", "wo"],
    "mt5": ["q", "k", "v", "o", "wi_0", "wi_1", "wo"],
    "bart": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
    "roberta": ["query", "key", "value", "dense"],
    "deberta-v2": ["query_proj", "key_proj", "value_proj", "dense"],
}
# Training forwards between two checks that on_optimizer_step is being called.
# A check only warns if the weights changed meanwhile, so gradient
# accumulation over more forwards than this is no false alarm.
HOOK_CHECK_FORWARDS = 8


class AdaLoraModel(AdapterModel):
    layer_cls = AdaLoraLinear
    config_cls = AdaLoraConfig

    def __init__(self, model: nn.Module, config: AdaLoraConfig, adapter_name: str = "default") -> None:
        # Set before AdapterModel.__init__, which adds the first adapter (plain
        # attributes, so nn.Module allows them this early).
        self.allocators: dict[str, RankAllocator] = {}
        self._forwards_since_step = 0
        self._values_at_check: list[torch.Tensor] | None = None
        self._warned_missing_hook = False
        super().__init__(model, config, adapter_name)

    @classmethod
    def model_problem(cls, model: nn.Module) -> str | None:
        """AdaLoRA adapts Linear-like layers; a model with none but its output head has nothing to adapt."""
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        if not any(is_linear(m) and m is not head for m in model.modules()):
            return "AdaLoRA adapts Linear layers (and GPT-2's Conv1D); this model has none besides its output head"
        return None

    def is_supported(self, module: nn.Module) -> bool:
        return is_linear(module)

    def resolve_config(self, config: AdaLoraConfig) -> AdaLoraConfig:
        modules = self.wrappable_modules()
        if config.target_modules is None:
            preset = _DEFAULT_TARGETS.get(targets.architecture_key(self.model))
            present = [key for key, module in modules if self._supports(module)]
            if preset and all(any(targets.key_matches(k, [name]) for k in present) for name in preset):
                config.target_modules = list(preset)
            else:
                config.target_modules = targets.default_target_modules(self.model, modules, self._supports)
        elif config.target_modules == targets.ALL_LINEAR:
            linear = lambda m: is_linear(m) or isinstance(m, AdaLoraLinear)
            config.target_modules = targets.all_linear_targets(self.model, modules, linear)
        self._check_pattern_paths(config, dict(modules))
        return config

    def _check_pattern_paths(self, config: AdaLoraConfig, modules: dict[str, nn.Module]) -> None:
        for pattern_key in config.rank_pattern or {}:
            path = pattern_module_path(pattern_key)
            if path not in modules or not self._supports(modules[path]):
                raise ValueError(
                    f"rank_pattern names {pattern_key!r}, but {type(self.model).__name__} has no Linear layer at "
                    f"{path!r}; the adapter was trained on another base model"
                )

    def create_layer(self, target: nn.Module, adapter_name: str, config: AdaLoraConfig, key: str) -> AdaLoraLinear:
        conv1d = is_conv1d(target)
        if conv1d:
            config.fan_in_fan_out = True  # recorded as the PEFT library records it
        layer = AdaLoraLinear(target, fan_in_fan_out=conv1d)
        layer.update_layer(adapter_name, config, key)
        return layer

    def add_adapter(self, adapter_name: str, config: AdaLoraConfig) -> None:
        super().add_adapter(adapter_name, config)
        config = self.peft_config[adapter_name]
        # An adapter with a rank_pattern was built at its final ranks: nothing left to allocate.
        if not config.inference_mode and config.rank_pattern is None:
            self.allocators[adapter_name] = RankAllocator(adapter_name, config, self.layers_of(adapter_name))

    def delete_adapter(self, adapter_name: str) -> None:
        super().delete_adapter(adapter_name)
        self.allocators.pop(adapter_name, None)

    def layers_of(self, adapter_name: str) -> list[tuple[str, AdaLoraLinear]]:
        """``(module path, layer)`` of every layer that holds ``adapter_name``."""
        return [(k, layer) for k, layer in self.adapter_layers() if layer.has_adapter(adapter_name)]

    def _training(self) -> list[str]:
        """Active adapters whose weights train now."""
        return [
            name for name in self.active_adapters
            if any(p.requires_grad for _, layer in self.layers_of(name) for _, p in layer.adapter_parameters(name))
        ]

    # -- the training hooks ----------------------------------------------------
    def regularization_loss(self) -> torch.Tensor | None:
        """``orth_reg_weight`` x the mean of ``||A A^T - I||_F`` and ``||B^T B - I||_F`` over the adapted layers."""
        names = self._training()
        self._check_hook_is_called(names)
        total = None
        for name in names:
            gaps = [gap for _, layer in self.layers_of(name) for gap in layer.orthogonality_gap(name)]
            if not gaps:
                continue
            term = sum(gaps[1:], gaps[0]) / len(gaps) * self.peft_config[name].orth_reg_weight
            total = term if total is None else total + term
        return total

    def on_optimizer_step(self, global_step: int) -> None:
        """Score importance and prune to the budget of ``global_step`` (call after optimizer.step())."""
        self._forwards_since_step = 0
        self._values_at_check = None
        for name in self._training():
            allocator = self.allocators.get(name)
            if allocator is None:
                continue
            keep = allocator.step(global_step, self.layers_of(name))
            if keep is not None:
                self.peft_config[name].rank_pattern = {
                    key + PATTERN_SUFFIX: mask.tolist() for key, mask in keep.items()
                }
                kept = sum(int(mask.sum()) for mask in keep.values())
                logger.debug("AdaLoRA %r at step %d keeps %d triplets", name, global_step, kept)

    def _check_hook_is_called(self, names: list[str]) -> None:
        """Warn once when the weights change between training forwards but on_optimizer_step never runs."""
        names = [n for n in names if n in self.allocators]
        if self._warned_missing_hook or not names:
            return
        values = [layer.lora_E[n].detach() for n in names for _, layer in self.layers_of(n)]
        if self._values_at_check is None:
            self._values_at_check = [v.clone() for v in values]
            return
        self._forwards_since_step += 1
        if self._forwards_since_step < HOOK_CHECK_FORWARDS:
            return
        changed = any(not torch.equal(a, b) for a, b in zip(values, self._values_at_check, strict=True))
        if changed:
            self._warned_missing_hook = True
            logger.warning(
                "AdaLoRA adapter %s is training (its weights changed over %d training forwards) but "
                "on_optimizer_step was never called, so its ranks are not being allocated: it stays at init_r and "
                "no rank_pattern is saved. Call model.on_optimizer_step(global_step) after optimizer.step() and "
                "before optimizer.zero_grad() (peft_core's trainer does this).",
                ", ".join(repr(n) for n in names), self._forwards_since_step,
            )
        self._forwards_since_step = 0
        self._values_at_check = [v.clone() for v in values]

    def training_state(self) -> dict:
        return {
            name: {"allocator": allocator.state_dict(), "rank_pattern": self.peft_config[name].rank_pattern}
            for name, allocator in self.allocators.items()
        }

    def load_training_state(self, state: dict) -> None:
        for name, saved in state.items():
            if name in self.allocators:
                self.allocators[name].load_state_dict(saved["allocator"])
                self.peft_config[name].rank_pattern = saved["rank_pattern"]

    # -- saving -------------------------------------------------------------------
    def tensors_to_save(self, adapter_name: str) -> dict[str, torch.Tensor]:
        """The adapter's tensors, pruned to the triplets its rank_pattern keeps (PEFT's file layout)."""
        tensors = super().tensors_to_save(adapter_name)
        config = self.peft_config[adapter_name]
        regrown = []
        for key, layer in self.layers_of(adapter_name):
            kept = config.kept_ranks(key)
            rank = layer.rank(adapter_name)
            if kept is None or rank == sum(kept):
                continue  # not allocated, or already built at its saved rank
            if rank != len(kept):
                raise ValueError(
                    f"{key} holds {rank} triplets but rank_pattern lists {len(kept)}; the config and the weights "
                    f"of adapter {adapter_name!r} do not belong together"
                )
            keep = torch.tensor(kept, dtype=torch.bool)
            pruned = layer.pruned_tensors(adapter_name, keep)
            tensors.update({f"{self.key_prefix}{key}.{attr}": tensor for attr, tensor in pruned.items()})
            values = layer.lora_E[adapter_name].detach().view(-1)
            if torch.any(values[~keep.to(values.device)] != 0):
                regrown.append(key)
        if regrown:
            # Between two allocations a pruned singular value trains on; the
            # file keeps only the pattern's triplets, as the PEFT library's does.
            logger.warning(
                "saving AdaLoRA adapter %r before its ranks are final: pruned triplets of %s trained back off zero "
                "and are left out, so the saved adapter differs from the live one. Save after step total_step - "
                "tfinal = %d for an exact copy.", adapter_name, ", ".join(regrown), config.total_step - config.tfinal,
            )
        return tensors
