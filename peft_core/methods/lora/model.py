"""``LoraModel``: which modules LoRA can wrap and how it wraps them."""

from __future__ import annotations

from torch import nn

from peft_core import targets
from peft_core.layers import is_conv1d, is_linear
from peft_core.methods.lora.config import LoraConfig
from peft_core.methods.lora.layer import LoraLayer, create_lora_layer
from peft_core.tuner import AdapterModel


class LoraModel(AdapterModel):
    layer_cls = LoraLayer
    config_cls = LoraConfig

    def is_supported(self, module: nn.Module) -> bool:
        return is_linear(module) or isinstance(module, (nn.Conv2d, nn.Embedding))

    def resolve_config(self, config: LoraConfig) -> LoraConfig:
        modules = self.wrappable_modules()
        if config.target_modules is None:
            config.target_modules = targets.default_target_modules(self.model, modules, self._supports)
        elif config.target_modules == targets.ALL_LINEAR:
            linear = lambda m: is_linear(m) or isinstance(m, LoraLayer) and is_linear(m.base_layer)
            config.target_modules = targets.all_linear_targets(self.model, modules, linear)
        return config

    def create_layer(self, target: nn.Module, adapter_name: str, config: LoraConfig, key: str) -> LoraLayer:
        conv1d = is_conv1d(target)
        if conv1d:
            config.fan_in_fan_out = True  # recorded as the PEFT library records it
        layer = create_lora_layer(target, is_conv1d=conv1d)
        layer.update_layer(adapter_name, config, key)
        return layer
