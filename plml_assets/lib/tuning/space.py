"""Declared search spaces: one per model family, validated, each error naming the parameter.

Part of :mod:`plml_assets.lib.tuning` (see its docstring for how the pieces fit).
"""


from __future__ import annotations

import json
import math
import numbers
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)

# ---------------------------------------------------------------------------------------------
# Search spaces
# ---------------------------------------------------------------------------------------------

_KEYS = {
    "float": {"type", "low", "high", "log", "step"},
    "int": {"type", "low", "high", "log", "step"},
    "categorical": {"type", "choices"},
}
_CHOICE_TYPES = (type(None), bool, int, float, str)


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


@dataclass(frozen=True)
class ParamSpec:
    """One dimension of a search space: ``float``/``int`` on ``[low, high]`` (``log`` scale or a
    ``step`` grid) or ``categorical`` over ``choices``."""

    name: str
    type: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    @classmethod
    def from_dict(cls, name: Any, spec: Any) -> ParamSpec:
        def fail(reason: str) -> ValueError:
            return ValueError(f"search space parameter {name!r}: {reason}")

        if not isinstance(name, str) or not name:
            raise fail("the name must be a non-empty string")
        if not isinstance(spec, Mapping):
            raise fail(f"the spec must be a mapping such as {{'type': 'float', 'low': 0.01, 'high': 0.3}}, got {spec!r}")
        kind = spec.get("type")
        if kind not in _KEYS:
            raise fail(f"'type' must be one of {sorted(_KEYS)}, got {kind!r}")
        unknown = sorted(set(spec) - _KEYS[kind])
        if unknown:
            raise fail(f"unknown key(s) {unknown} for type {kind!r} (allowed: {sorted(_KEYS[kind])})")
        if kind == "categorical":
            choices = spec.get("choices")
            if isinstance(choices, (str, bytes)) or not isinstance(choices, Sequence) or len(choices) == 0:
                raise fail(f"'choices' must be a non-empty list, got {choices!r}")
            bad = [c for c in choices if not isinstance(c, _CHOICE_TYPES)]
            if bad:
                raise fail(f"choices must be None, bool, int, float or str, got {bad[:3]!r}")
            if len({(type(c), c) for c in choices}) != len(choices):
                raise fail(f"'choices' has duplicates: {list(choices)!r}")
            return cls(name=name, type=kind, choices=tuple(choices))
        for key in ("low", "high"):
            if key not in spec:
                raise fail(f"type {kind!r} needs '{key}'")
        low, high = spec["low"], spec["high"]
        number_ok = _is_int if kind == "int" else _is_real
        for key, value in (("low", low), ("high", high)):
            if not number_ok(value):
                raise fail(f"'{key}' must be a finite {'integer' if kind == 'int' else 'number'}, got {value!r}")
        if not low < high:
            raise fail(f"'low' ({low}) must be < 'high' ({high}); pin a value with a one-choice categorical")
        log = spec.get("log", False)
        if not isinstance(log, (bool, np.bool_)):
            raise fail(f"'log' must be true or false, got {log!r}")
        if log and low <= 0:
            raise fail(f"a log scale needs 'low' > 0, got {low}")
        step = spec.get("step")
        if step is not None:
            if log:
                raise fail("'step' and 'log' cannot be combined")
            if not number_ok(step) or step <= 0:
                raise fail(f"'step' must be a positive {'integer' if kind == 'int' else 'number'}, got {step!r}")
            span = (high - low) / step
            if abs(span - round(span)) > 1e-9 * max(1.0, abs(span)):
                raise fail(f"'high' - 'low' ({high - low}) must be a multiple of 'step' ({step})")
        cast = int if kind == "int" else float
        return cls(name=name, type=kind, low=cast(low), high=cast(high), log=bool(log),
                   step=None if step is None else cast(step))

    def to_dict(self) -> dict[str, Any]:
        if self.type == "categorical":
            return {"type": "categorical", "choices": list(self.choices)}
        out: dict[str, Any] = {"type": self.type, "low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    def distribution(self) -> BaseDistribution:
        if self.type == "categorical":
            return CategoricalDistribution(self.choices)
        if self.type == "int":
            return IntDistribution(self.low, self.high, log=self.log, step=self.step or 1)
        return FloatDistribution(self.low, self.high, log=self.log, step=self.step)

    def suggest(self, trial: optuna.trial.BaseTrial) -> Any:
        if self.type == "categorical":
            return trial.suggest_categorical(self.name, self.choices)
        if self.type == "int":
            return trial.suggest_int(self.name, self.low, self.high, log=self.log, step=self.step or 1)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log, step=self.step)

    def check(self, value: Any) -> None:
        """Raise ValueError (naming the parameter) unless ``value`` lies in this dimension."""
        if self.type == "categorical":
            ok = any(value == c and isinstance(value, bool) == isinstance(c, bool) for c in self.choices)
            if not ok:
                raise ValueError(f"parameter {self.name!r}: {value!r} is not one of {list(self.choices)!r}")
            return
        number_ok = _is_int(value) if self.type == "int" else _is_real(value)
        if not number_ok or not self.low <= value <= self.high:
            raise ValueError(f"parameter {self.name!r}: {value!r} is outside the {self.type} range [{self.low}, {self.high}]")


class SearchSpace:
    """An ordered set of :class:`ParamSpec`, declared as plain data::

        SearchSpace.from_dict({
            "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
            "max_depth": {"type": "int", "low": 2, "high": 8},
            "booster": {"type": "categorical", "choices": ["gbtree", "dart"]},
        })
    """

    def __init__(self, params: Sequence[ParamSpec]) -> None:
        if not params:
            raise ValueError("the search space is empty: declare at least one parameter")
        names = [p.name for p in params]
        duplicated = sorted({n for n in names if names.count(n) > 1})
        if duplicated:
            raise ValueError(f"search space parameter(s) {duplicated} declared twice")
        self.params: tuple[ParamSpec, ...] = tuple(params)

    @classmethod
    def from_dict(cls, spec: Mapping[str, Mapping[str, Any]]) -> SearchSpace:
        if not isinstance(spec, Mapping):
            raise ValueError(f"a search space is a mapping of parameter name -> spec, got {type(spec).__name__}")
        return cls([ParamSpec.from_dict(name, body) for name, body in spec.items()])

    @classmethod
    def from_json(cls, text: str) -> SearchSpace:
        return cls.from_dict(json.loads(text))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {p.name: p.to_dict() for p in self.params}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def __iter__(self) -> Iterator[ParamSpec]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return f"SearchSpace({self.to_dict()!r})"

    def distributions(self) -> dict[str, BaseDistribution]:
        return {p.name: p.distribution() for p in self.params}

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        """One configuration: ``{name: value}`` in declaration order."""
        return {p.name: p.suggest(trial) for p in self.params}

    def check_params(self, params: Mapping[str, Any]) -> None:
        """Raise ValueError unless every given parameter is declared and in range (a subset is fine)."""
        unknown = sorted(set(params) - set(self.names))
        if unknown:
            raise ValueError(f"parameter(s) {unknown} are not in the search space {self.names}")
        for spec in self.params:
            if spec.name in params:
                spec.check(params[spec.name])


#: One space per model family, named as the model classes' ``__init__`` arguments. Boosting
#: spaces leave ``n_estimators`` to early stopping; sequence spaces tune the input window too, and
#: stay within what a CPU fits in seconds (a 3-layer, 128-unit GRU over 60 steps took minutes per
#: trial on 2 cores; widen the space on a GPU).
DEFAULT_SPACES: dict[str, SearchSpace] = {
    "xgboost": SearchSpace.from_dict({
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "max_depth": {"type": "int", "low": 2, "high": 8},
        "min_child_weight": {"type": "float", "low": 1.0, "high": 300.0, "log": True},
        "subsample": {"type": "float", "low": 0.5, "high": 1.0},
        "colsample_bytree": {"type": "float", "low": 0.3, "high": 1.0},
        "reg_lambda": {"type": "float", "low": 1e-3, "high": 100.0, "log": True},
    }),
    "lightgbm": SearchSpace.from_dict({
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "num_leaves": {"type": "int", "low": 8, "high": 128, "log": True},
        "min_child_samples": {"type": "int", "low": 10, "high": 500, "log": True},
        "subsample": {"type": "float", "low": 0.5, "high": 1.0},
        "colsample_bytree": {"type": "float", "low": 0.3, "high": 1.0},
        "reg_lambda": {"type": "float", "low": 1e-3, "high": 100.0, "log": True},
    }),
    "lstm": SearchSpace.from_dict({
        "window": {"type": "int", "low": 10, "high": 40, "step": 5},
        "hidden_size": {"type": "int", "low": 16, "high": 64, "log": True},
        "num_layers": {"type": "int", "low": 1, "high": 2},
        "dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
        "batch_size": {"type": "categorical", "choices": [128, 256, 512]},
    }),
}
DEFAULT_SPACES["gru"] = SearchSpace(list(DEFAULT_SPACES["lstm"].params))
#: the interpretable family: how strongly to shrink, and how sparse (1: lasso)
DEFAULT_SPACES["elastic_net"] = SearchSpace.from_dict({
    "alpha": {"type": "float", "low": 1e-5, "high": 1e-1, "log": True},
    "l1_ratio": {"type": "float", "low": 0.05, "high": 1.0},
})

#: What the quick profile narrows in a family's space (the rest of it stays): the sequence nets'
#: cost grows with the window, the width and the depth, so quick searches short windows of one
#: narrow layer. The study records the space it searched, so its trials say what was fitted.
QUICK_SPACE_BOUNDS: dict[str, dict[str, dict[str, Any]]] = {
    "lstm": {"window": {"type": "int", "low": 10, "high": 20, "step": 5},
             "hidden_size": {"type": "int", "low": 16, "high": 32, "log": True},
             "num_layers": {"type": "categorical", "choices": [1]}},
}
QUICK_SPACE_BOUNDS["gru"] = QUICK_SPACE_BOUNDS["lstm"]


def default_space(family: str, *, quick: bool = False) -> SearchSpace:
    """The family's default search space; in the quick profile, with :data:`QUICK_SPACE_BOUNDS`."""
    space = DEFAULT_SPACES[family]
    bounds = QUICK_SPACE_BOUNDS.get(family) if quick else None
    if not bounds:
        return space
    return SearchSpace.from_dict({**space.to_dict(), **bounds})


