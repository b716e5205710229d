"""Why a data report leaves a row out, and what it notes, as `Reason` phrases: English, with a code and params.

The report counts rows by reason (``DataReport.dropped``) and prints the English;
the Studio translates ``reason.<code>`` with the same params. What a value is
(``kind``: "a number", "a list", ...) is a reason of its own, so it is
translated too.
"""

from __future__ import annotations

from peft_core.phrases import Phrase

REASONS: dict[str, str] = {
    # a row's fields
    "missing_field": "has no {key}",
    "empty_field": "{key} is empty",
    "not_text": "{key} is {kind}, not text",
    "not_finite": "{key} is not a finite number",
    "not_label": "{key} is {kind}, not a label",
    "not_list": "{key} is {kind}, not a list",
    "empty_list": "{key} is an empty list",
    "not_message_list": "{key} is {kind}, not a list of messages",
    "message_not_object": "a message in {key} is {kind}, not an object with role and content",
    "unknown_role": "a message has the role {role}; only system, user and assistant (or human, gpt) are used",
    "content_not_text": "a message's content is {kind}, not text",
    "no_assistant_turn": "the conversation has no assistant turn to learn from",
    "bad_history": "history must be a list of [question, answer] pairs of text",
    "token_not_text": "a token in {key} is {kind}, not text",
    "empty_token": "a token in {key} is empty",
    "tokens_tags_lengths": "tokens and tags have different lengths",
    # what the reader found instead of a record
    "json_not_object": "is a JSON {what}, not an object with named fields",
    "csv_fields": "has {count} fields but the header has {header}",
    # encoding
    "nothing_to_train": "nothing left to train after truncation",
    # what a value is
    "kind_null": "null",
    "kind_bool": "true/false",
    "kind_number": "a number",
    "kind_list": "a list",
    "kind_object": "an object",
    "kind_other": "a {type}",
    # notes and warnings of a report
    "own_captions": "{captions} of {images} images have their own caption",
    "one_prompt": "every image is trained with the prompt {prompt}",
    "image_count": "{images} images: DreamBooth works best with 3 to 30",
    "remote_code": (
        "trust_remote_code is on: code from the repository of {model} runs in the training process; turn it off "
        "unless you have read that code and trust it"
    ),
}


class Reason(Phrase):
    """Why a row was left out, or a note of the data report (the Studio's key: ``reason.<code>``)."""

    prefix = "reason"
    messages = REASONS


_KINDS = {bool: "kind_bool", int: "kind_number", float: "kind_number", list: "kind_list", dict: "kind_object"}


def kind_of(value: object) -> Reason:
    """What a value is, in words: 'null', 'a number', 'a list', ..."""
    if value is None:
        return Reason("kind_null")
    code = _KINDS.get(type(value))
    return Reason(code) if code else Reason("kind_other", type=type(value).__name__)
