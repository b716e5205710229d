"""``LoraModel``: which modules LoRA can wrap and how it wraps them."""

from __future__ import annotations

from torch import nn

from peft_core import targets
from peft_core.methods.lora.config import LoraConfig
from peft_core.methods.lora.layer import LoraLayer, create_lora_layer
from peft_core.tuner import AdapterModel


def is_conv1d(module: nn.Module) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer with its weight stored (in, out)."""
    return type(module).__name__ == "Conv1D" and type(module).__module__.startswith("transformers")


def is_linear(module: nn.Module) -> bool:
    """nn.Linear (bitsandbytes' 4/8-bit layers subclass it) or Conv1D."""
    return isinstance(module, nn.Linear) or is_conv1d(module)


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
            linear = lambda m: is_linear(m) or isinstance(m, LoraLayer) and is_linear(m.base_layer)  # noqa: E731
            config.target_modules = targets.all_linear_targets(self.model, modules, linear)
        return config

    def create_layer(self, target: nn.Module, adapter_name: str, config: LoraConfig, key: str) -> LoraLayer:
        conv1d = is_conv1d(target)
        if conv1d:
            config.fan_in_fan_out = True  # recorded as the PEFT library records it
        layer = create_lora_layer(target, is_conv1d=conv1d)
        layer.update_layer(adapter_name, config, key)
        return layer

    def extra_trainable(self, adapter_name: str) -> dict[str, nn.Parameter]:
        """Biases trained (and saved) with the adapter when ``bias`` is not "none"."""
        config = self.peft_config.get(adapter_name)
        if config is None or config.bias == "none":
            return {}
        if config.bias == "lora_only":
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
