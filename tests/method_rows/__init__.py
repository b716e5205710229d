"""The method rows of the method x model test matrix, one module per method.

Each module defines ``ROWS``: a list of ``MethodRow``. A row builds a config
for a tiny model; ``init=True`` asks for an adapter that starts as a no-op,
``init=False`` for a random one (to test merging and saving with weights that
change the output).
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass

from peft_core import PeftConfig


@dataclass
class MethodRow:
    name: str
    make: Callable[[str, str | None, list[str] | None, bool], PeftConfig]
    mergeable: bool = True  # merge_and_unload folds it into the weights (else: a clear error)
    identity_at_init: bool = True  # injecting it changes no output
    models: tuple[str, ...] | None = None  # the tiny models it fits (None: all)
    interop: bool = True  # the real peft library can load it
    interop_models: tuple[str, ...] | None = None  # where the interop tests run (None: every model it fits)
    forward_kwargs: dict = dataclasses.field(default_factory=dict)  # extra inputs the adapted model needs

    def fits(self, model: str) -> bool:
        return self.models is None or model in self.models

    def interops_on(self, model: str) -> bool:
        return self.interop and self.fits(model) and (self.interop_models is None or model in self.interop_models)


def _collect() -> dict[str, MethodRow]:
    rows: dict[str, MethodRow] = {}
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda i: i.name):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for row in module.ROWS:
            if row.name in rows:
                raise ValueError(f"two method rows are named {row.name!r}")
            rows[row.name] = row
    return rows


METHODS: dict[str, MethodRow] = _collect()


def cases(models, *, where: Callable[[MethodRow, str], bool] = lambda row, model: True) -> list[tuple[str, str]]:
    """(model, method) pairs of the matrix, filtered by ``where(row, model)``."""
    return [(m, k) for m in models for k, row in METHODS.items() if row.fits(m) and where(row, m)]


def adapted(method: str, inputs: dict) -> dict:
    """The inputs for the model with the adapter (some methods need more, e.g. task_ids)."""
    return {**inputs, **METHODS[method].forward_kwargs}
