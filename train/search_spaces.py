"""The kinds of dimension a hyper-parameter search space is made of (torch- and optuna-free).

Each method's search space is declared next to its preset in :mod:`train.config`
(``SEARCH_SPACES``); :mod:`train.tune` asks an Optuna trial for a value of each dimension and
applies it to the method's configuration as a ``--set PATH=VALUE`` assignment would, so a sampled
value goes through the same type and range checks as a hand-written one.

A dimension knows how to ask for its value (``suggest(trial)``, duck-typed on Optuna's
``suggest_float`` / ``suggest_int`` / ``suggest_categorical``) and how to describe itself
(``describe()``, part of a study's identity: changing a range makes a new study, never a study
whose old trials were drawn from another space).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def _check_path(path: str) -> None:
    if path.count(".") != 1 or not all(path.split(".")):
        raise ValueError(f"search dimension {path!r}: expected SECTION.FIELD (e.g. semi.graph_strength)")


@dataclass(frozen=True)
class FloatRange:
    """A real-valued field searched in ``[low, high]``, on a log scale when ``log``."""

    path: str
    low: float
    high: float
    log: bool = False

    def __post_init__(self):
        _check_path(self.path)
        if not (math.isfinite(self.low) and math.isfinite(self.high) and self.low < self.high):
            raise ValueError(f"search dimension {self.path}: need finite low < high, got {self.low}, {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"search dimension {self.path}: a log range needs low > 0, got {self.low}")

    def suggest(self, trial) -> float:
        return trial.suggest_float(self.path, self.low, self.high, log=self.log)

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "kind": "float", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class IntRange:
    """An integer field searched in ``[low, high]`` (both included), on a log scale when ``log``."""

    path: str
    low: int
    high: int
    log: bool = False

    def __post_init__(self):
        _check_path(self.path)
        if not self.low < self.high:
            raise ValueError(f"search dimension {self.path}: need low < high, got {self.low}, {self.high}")
        if self.log and self.low <= 0:
            raise ValueError(f"search dimension {self.path}: a log range needs low > 0, got {self.low}")

    def suggest(self, trial) -> int:
        return trial.suggest_int(self.path, self.low, self.high, log=self.log)

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "kind": "int", "low": self.low, "high": self.high, "log": self.log}


@dataclass(frozen=True)
class Choice:
    """A field that takes one of a few values (booleans, named modes, a handful of decays)."""

    path: str
    choices: tuple

    def __post_init__(self):
        _check_path(self.path)
        if len(self.choices) < 2 or len(set(self.choices)) != len(self.choices):
            raise ValueError(f"search dimension {self.path}: need at least two distinct choices, got {self.choices}")

    def suggest(self, trial):
        return trial.suggest_categorical(self.path, list(self.choices))

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "kind": "choice", "choices": list(self.choices)}


SearchDimension = FloatRange | IntRange | Choice


def assignment(path: str, value) -> str:
    """``value`` for ``path`` spelled as ``--set`` reads it (repr round-trips every float)."""
    if isinstance(value, bool):
        return f"{path}={'true' if value else 'false'}"
    return f"{path}={value!r}" if isinstance(value, float) else f"{path}={value}"
