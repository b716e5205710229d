"""What the prompt methods share: virtual tokens in front of the input, or a prefix of keys and values.

Prompt tuning, P-tuning and multitask prompt tuning put trained embeddings
in front of the input (``virtual_tokens.py``); prefix tuning puts trained
keys and values in front of every attention layer's cache (``prefix.py``).
Their adapters hold the prompt, never the model's weights (``model.py``).
"""

from peft_core.prompt_learning.config import PromptLearningConfig
from peft_core.prompt_learning.model import DirectPrompt, PromptEncoder, PromptModel

__all__ = ["DirectPrompt", "PromptEncoder", "PromptLearningConfig", "PromptModel"]
