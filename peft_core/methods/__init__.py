"""PEFT methods. Each registers itself with ``peft_core.registry`` on import."""

from peft_core.methods.adalora import AdaLoraConfig
from peft_core.methods.ia3 import IA3Config
from peft_core.methods.loha import LoHaConfig
from peft_core.methods.lokr import LoKrConfig
from peft_core.methods.lora import LoraConfig
from peft_core.methods.multitask_prompt_tuning import MultitaskPromptTuningConfig
from peft_core.methods.p_tuning import PromptEncoderConfig
from peft_core.methods.prefix_tuning import PrefixTuningConfig
from peft_core.methods.prompt_tuning import PromptTuningConfig

__all__ = [
    "AdaLoraConfig",
    "IA3Config",
    "LoHaConfig",
    "LoKrConfig",
    "LoraConfig",
    "MultitaskPromptTuningConfig",
    "PrefixTuningConfig",
    "PromptEncoderConfig",
    "PromptTuningConfig",
]
