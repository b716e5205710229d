"""The engine's English words the UI translates, read from the code: form help, error templates, card headings.

``python -m pages.i18n_engine`` writes them to ``pages/locales/engine.en.yaml``;
``tests/test_i18n.py`` fails when that file and the code part, so a changed help
text or a new error code is noticed (and then translated in ``engine.zh.yaml`` and
``engine.ar.yaml``). Keys:

* ``help.<Class>.<field>``: a config field's ``help``, under the dataclass that declares the field
  (so LoHa and LoKr share the fields of ``LycorisConfig``);
* ``error.<ErrorClass>.<code>``: the message template of an engine error with a stable code;
* ``card.<name>``: a heading of the run's model card (``model_card.HEADINGS``);
* ``<prefix>.<code>``: a ``peft_core.phrases.Phrase`` (advice, a data report's reasons and notes).
"""

from __future__ import annotations

import inspect
from pathlib import Path

import yaml

ENGINE_EN = Path(__file__).parent / "locales" / "engine.en.yaml"


def settings_classes() -> list[type]:
    """Every config dataclass the pages build a form from."""
    from peft_core import list_methods
    from peft_core.run_config import DataSettings, DreamBoothSettings, ModelSettings, TrainingSettings

    return [spec.config_cls for spec in list_methods()] + [ModelSettings, DataSettings, TrainingSettings,
                                                           DreamBoothSettings]


def help_key(config_cls: type, field_name: str) -> str:
    """``help.<the class that declares the field>.<field>``."""
    for cls in config_cls.__mro__:
        if field_name in inspect.get_annotations(cls):
            return f"help.{cls.__name__}.{field_name}"
    return f"help.{config_cls.__name__}.{field_name}"


def help_strings() -> dict[str, str]:
    from pages.forms import form_fields

    out: dict[str, str] = {}
    for cls in settings_classes():
        for field in form_fields(cls):
            key = help_key(cls, field.name)
            if out.setdefault(key, field.help) != field.help:  # a subclass changed the help: key it by itself
                out[f"help.{cls.__name__}.{field.name}"] = field.help
    return out


def error_classes() -> list[type]:
    """Engine errors with a stable ``code`` and a table of English templates."""
    from peft_core.data.errors import DataError

    found: list[type] = [DataError]
    try:
        from peft_core.errors import UserError
    except ImportError:
        return found
    pending = list(UserError.__subclasses__())
    while pending:
        cls = pending.pop(0)
        pending += cls.__subclasses__()
        if cls not in found:
            found.append(cls)
    return found


def error_strings() -> dict[str, str]:
    from peft_core.data.errors import MESSAGES as DATA_MESSAGES

    out: dict[str, str] = {}
    for cls in error_classes():
        table = getattr(cls, "messages", None) or (DATA_MESSAGES if cls.__name__ == "DataError" else {})
        out.update({f"error.{cls.__name__}.{code}": text for code, text in table.items()})
    return out


def phrase_classes() -> list[type]:
    """Every ``Phrase`` subclass (their modules imported here, so none is missed)."""
    import peft_core.data.reasons
    import peft_core.training.memory_advice  # noqa: F401
    from peft_core.phrases import Phrase

    found, pending = [], list(Phrase.__subclasses__())
    while pending:
        cls = pending.pop(0)
        pending += cls.__subclasses__()
        found.append(cls)
    return found


def phrase_strings() -> dict[str, str]:
    return {f"{cls.prefix}.{code}": text for cls in phrase_classes() for code, text in cls.messages.items()}


def card_strings() -> dict[str, str]:
    from peft_core.model_card import HEADINGS

    return {f"card.{name}": text for name, text in HEADINGS.items()}


def engine_strings() -> dict[str, str]:
    """All of the engine's English the UI shows, by key (what ``engine.en.yaml`` holds)."""
    return {**help_strings(), **error_strings(), **phrase_strings(), **card_strings()}


def card_headings(lang: str) -> dict[str, str]:
    """The model card's headings in ``lang``, for ``model_card.run_model_card(facts, headings)``."""
    from pages.i18n import t
    from peft_core.model_card import HEADINGS

    return {name: t(f"card.{name}", lang) for name in HEADINGS}


def dump(strings: dict[str, str]) -> str:
    header = "# Written by `python -m pages.i18n_engine` from the code; do not edit (tests/test_i18n.py compares).\n"
    return header + yaml.safe_dump(strings, allow_unicode=True, sort_keys=False, width=1000)


def main() -> None:
    ENGINE_EN.write_text(dump(engine_strings()), encoding="utf-8")
    print(f"wrote {ENGINE_EN} ({len(engine_strings())} strings)")


if __name__ == "__main__":
    main()
