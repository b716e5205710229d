"""Reading users' data files into typed training examples, with errors a person can act on."""

from peft_core.data.archives import safe_extract
from peft_core.data.errors import DataError
from peft_core.data.examples import (
    ChatExample,
    LabeledImageExample,
    LabeledTextExample,
    Message,
    PromptCompletionExample,
    Seq2SeqExample,
    TextExample,
    TokenTagsExample,
)
from peft_core.data.images import IMAGE_EXTENSIONS, LoadedImages, load_images, load_instance_images
from peft_core.data.text import TEXT_FORMATS, DroppedRow, LoadedText, load_text

__all__ = [
    "IMAGE_EXTENSIONS",
    "TEXT_FORMATS",
    "ChatExample",
    "DataError",
    "DroppedRow",
    "LabeledImageExample",
    "LabeledTextExample",
    "LoadedImages",
    "LoadedText",
    "Message",
    "PromptCompletionExample",
    "Seq2SeqExample",
    "TextExample",
    "TokenTagsExample",
    "load_images",
    "load_instance_images",
    "load_text",
    "safe_extract",
]
