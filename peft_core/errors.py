"""Problems a user can fix, as exceptions with a stable code, the params of their message, and English text.

`UserError` is the shape every such error takes (``peft_core.data.errors.DataError``
for data files, `RunError` below for models, methods and the app's limits): a
``code`` that never changes, the ``params`` its message is built from, and one
English template per code in the subclass's ``messages`` table, filled only from
``params``, so a translation needs nothing but another table with the same
placeholders. ``str(err)`` is the English message.
"""

from __future__ import annotations

from typing import ClassVar


class UserError(ValueError):
    """A problem the user can fix; subclasses name their table of message templates."""

    messages: ClassVar[dict[str, str]] = {}

    def __init__(self, code: str, **params: object) -> None:
        if code not in self.messages:
            raise KeyError(f"no message for {type(self).__name__} code '{code}'; add one to its messages")
        self.code = code
        self.params = params
        super().__init__(self.messages[code].format(**params))

    def __reduce__(self):  # pickles (for worker processes) as code + params, not as the message
        return (_rebuild, (type(self), self.code, self.params))


def _rebuild(cls: type[UserError], code: str, params: dict) -> UserError:
    return cls(code, **params)


MESSAGES: dict[str, str] = {
    # models
    "bad_model_name": (
        "The model {model!r} is not a preset, a model folder here, or a Hub id ({why}). "
        "Pick a preset, or give a Hub id like owner/name."
    ),
    "not_a_model_folder": (
        "{model} is not a model folder (it has no config.json or model_index.json). "
        "Choose the folder that from_pretrained would load, or give a Hub id."
    ),
    "model_not_found": (
        "The model {model!r} could not be loaded: {reason}. Check the Hub id (owner/name) and the network, "
        "or pick a preset that works offline."
    ),
    "remote_code_refused": (
        "trust_remote_code is on for {model!r}, which would run code from the model's repository on this "
        "shared server. It is not allowed here: pick a model transformers supports without remote code, "
        "or train it on your own machine."
    ),
    # methods
    "method_task_mismatch": (
        "The method {method} cannot train the task {task}. Methods that can: {methods}. Pick one of them."
    ),
    # packed rows (data.packing, data.padding_free)
    "packing_prompt_method": (
        "data.packing cannot be used with a prompt method: it adds its virtual tokens once per row, not once "
        "per example. Set data.packing to false."
    ),
    "packing_attends_across": (
        "data.packing cannot be used with {model}: it lets the examples of a packed row attend to each other. "
        "Set data.packing to false."
    ),
    # the app's limits
    "upload_too_large": (
        "{file} is {size}, above this Studio's upload limit of {limit}. Use a smaller file, or split the data."
    ),
}


class RunError(UserError):
    """A problem with a run's model, method or upload (codes in `MESSAGES`)."""

    messages = MESSAGES
