"""PEFT methods. Each registers itself with ``peft_core.registry`` on import."""

from peft_core.methods.lora import LoraConfig
from peft_core.methods.multitask_prompt_tuning import MultitaskPromptTuningConfig
from peft_core.methods.p_tuning import PromptEncoderConfig
from peft_core.methods.prefix_tuning import PrefixTuningConfig
from peft_core.methods.prompt_tuning import PromptTuningConfig

__all__ = [
    "LoraConfig",
    "MultitaskPromptTuningConfig",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptTuningConfig",
]
