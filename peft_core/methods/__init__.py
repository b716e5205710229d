"""PEFT methods. Each registers itself with ``peft_core.registry`` on import."""

from peft_core.methods.lora import LoraConfig

__all__ = ["LoraConfig"]
