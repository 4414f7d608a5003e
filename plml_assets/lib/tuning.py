"""Hyper-parameter search: declared search spaces, a purged-CV objective, resumable Optuna studies.

The pieces, in the order a study uses them:

* :class:`SearchSpace` declares the space as data (``SearchSpace.from_dict({...})``, validated, each
  error naming the parameter) and suggests one configuration per trial. :data:`DEFAULT_SPACES`
  holds one per model family, named like the model classes' ``__init__`` arguments.
* :func:`cv_objective` scores a configuration by the mean validation rank IC over purged folds,
  with an injected ``fit_predict(params, X_train, y_train, X_eval) -> predictions`` that fits on a
  fold's training rows (early stopping inside them) - so the objective knows nothing of the model
  family. After fold ``k`` it reports the running mean (``trial.report(mean, step=k)``) and lets the
  pruner stop a hopeless trial. With ``objectives=("rank_ic", "gap")`` or ``("rank_ic",
  "turnover")`` it is multi-objective (Optuna does not prune those).
* :func:`run_study` opens (creates or resumes) an RDB-stored study and runs it until the study
  holds ``n_trials`` COMPLETE + PRUNED trials - the budget belongs to the study, not to the call,
  so a resumed or a second worker's call only runs what is missing. Heartbeats mark a killed
  process's trial FAIL; FAIL trials do not count.
* :func:`pick_trial` chooses one trial from a Pareto front by a documented :class:`PickRule`;
  :func:`trials_frame`, :func:`param_importances` and the ``plot_*`` functions (PNG bytes) report.

MLflow stays out of this module. The study asset logs *one* MLflow run holding the trial table,
the plots and the chosen parameters, not one nested run per trial: the trials already live in the
Optuna storage with their states, intermediate values and timings (the table is a faithful
snapshot), a nested run per trial would multiply the tracking store by the budget, and MLflow's
view of a study is its outcome, not its bookkeeping.

Budget accounting across workers. Before each trial a worker counts the study's COMPLETE + PRUNED
trials plus the trials that hold a claim on the budget ahead of it (RUNNING or WAITING with a
lower trial number); if that reaches ``n_trials`` the new trial is dropped (state FAIL, user attr
``over_budget``, no parameters sampled) and the worker stops. Trial numbers are handed out by the
storage in one order, so two workers racing for the last slot cannot both take it. A trial of a
killed process keeps its claim until its heartbeat is ``grace_period`` seconds old, after which the
next worker to start a trial marks it FAIL.

Parallelism is by processes sharing the storage (one ``run_study`` call per worker, e.g. one per
Kubernetes pod on PostgreSQL), not by threads: one XGBoost fit already uses its ``nthread``.

Seeding. A sampler seeded with the same number in a resumed process would replay the
configurations it proposed before the kill; the effective seed therefore mixes ``seed``, the number
of trials the study already holds and the ``worker`` index (give parallel workers distinct
indices). A configuration identical to a finished trial is not fitted again: it is completed with
the earlier values (``duplicate_of`` user attr) or pruned again.
"""

from __future__ import annotations

import inspect
import io
import json
import math
import numbers
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.trial import FrozenTrial, TrialState

from plml_assets.lib.metrics import evaluate_predictions, per_date_ic
from plml_assets.lib.models.registry import model_class
from plml_assets.lib.training import fit_model, predict_rows, spread_dates

__all__ = [
    "DEFAULT_SPACES",
    "CVObjective",
    "ParamSpec",
    "PickRule",
    "SearchSpace",
    "StudyResult",
    "cv_objective",
    "FamilyFitPredict",
    "family_fit_predict",
    "fail_dead_local_trials",
    "make_storage",
    "open_study",
    "param_importances",
    "pick_trial",
    "plot_optimization_history",
    "plot_param_importances",
    "plot_pareto_front",
    "prediction_turnover",
    "run_study",
    "trial_value_of",
    "trials_frame",
    "xgboost_fit_predict",
]

Log = Callable[[str], None]
FitPredict = Callable[[dict[str, Any], pd.DataFrame, pd.Series, pd.DataFrame], np.ndarray]
Objective = Callable[[optuna.trial.Trial, dict[str, Any]], "float | Sequence[float]"]

_DONE = (TrialState.COMPLETE, TrialState.PRUNED)
#: User attr holding a trial's per-date validation scores (see CVObjective.oof_dates, trial_date_scores).
DATE_SCORES_ATTR = "date_scores"
_CLAIMS = (TrialState.RUNNING, TrialState.WAITING)
_SPACE_ATTR = "plml:search_space"


def _noop(_: str) -> None:
    return None


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


# ---------------------------------------------------------------------------------------------
# Fit/predict adapters
# ---------------------------------------------------------------------------------------------


class FamilyFitPredict:
    """``fit_predict`` for :func:`cv_objective` with any family of ``lib.models`` (``"xgboost"``,
    ``"lightgbm"``, ``"lstm"``, ``"gru"``), fitted by ``training.fit_model``, the recipe of the CV
    and the final model: target clipped at quantiles of the fitting rows, early stopping on the
    purged tail of the training dates. ``fixed`` (e.g. ``nthread=1, n_estimators=200``) is merged
    under every trial's parameters.

    Besides the plain ``fit_predict(params, X_train, y_train, X_eval)`` contract it exposes
    :meth:`fit`, which the objective prefers: it then scores only the rows it needs with
    ``training.predict_rows`` on the fold's whole frame, so a sequence net's test rows see their
    feature history and its in-sample rows are not all scored."""

    def __init__(self, family: str, horizon: int, **fixed: Any) -> None:
        model_class(family)(**fixed)  # an unknown family or a bad fixed value fails now, not in trial 1
        self.family, self.horizon, self.fixed = family, horizon, fixed

    def fit(self, params: dict[str, Any], X_train: pd.DataFrame, y_train: pd.Series, calendar: Any = None):
        """``calendar``: the panel's dates, which a fold's training rows lack some of (see
        ``training.fit_model``); the objective passes it."""
        model, _ = fit_model(self.family, {**self.fixed, **params}, X_train, y_train, self.horizon, calendar=calendar)
        return model

    def __call__(self, params: dict[str, Any], X_train: pd.DataFrame, y_train: pd.Series, X_eval: pd.DataFrame) -> np.ndarray:
        return np.asarray(self.fit(params, X_train, y_train).predict(X_eval), dtype="float64")


def family_fit_predict(family: str, horizon: int, **fixed: Any) -> FamilyFitPredict:
    """:class:`FamilyFitPredict` for ``family``."""
    return FamilyFitPredict(family, horizon, **fixed)


def xgboost_fit_predict(horizon: int, **fixed: Any) -> FitPredict:
    """:func:`family_fit_predict` for XGBoost."""
    return family_fit_predict("xgboost", horizon, **fixed)


# ---------------------------------------------------------------------------------------------
# The cross-validated objective
# ---------------------------------------------------------------------------------------------

#: objective name -> direction. The CV metric (``rank_ic`` or ``ic``) is maximized; ``gap`` is
#: the mean over folds of train minus validation metric; ``turnover`` is
#: :func:`prediction_turnover` of the validation predictions, averaged over folds.
OBJECTIVE_DIRECTIONS = {"rank_ic": "maximize", "ic": "maximize", "gap": "minimize", "turnover": "minimize"}


def prediction_turnover(predictions: pd.Series) -> float:
    """How much the cross-sectional ordering of predictions changes from one date to the next:
    ``1 - mean Spearman correlation`` of consecutive dates' predictions over the symbols both
    dates hold (0: the same ranking every day, 1: unrelated, 2: reversed). Takes a Series on a
    (date, symbol) index; NaN when fewer than two dates have 3 or more common symbols."""
    wide = predictions.unstack("symbol").sort_index()
    ranks = wide.rank(axis=1)
    previous = ranks.shift(1)
    both = ranks.notna() & previous.notna()
    a, b = ranks.where(both), previous.where(both)
    # Ranks recomputed on the common symbols so that a symbol entering or leaving does not count.
    a, b = a.rank(axis=1), b.rank(axis=1)
    da, db = a.sub(a.mean(axis=1), axis=0), b.sub(b.mean(axis=1), axis=0)
    denominator = np.sqrt((da**2).sum(axis=1) * (db**2).sum(axis=1))
    corr = ((da * db).sum(axis=1) / denominator.where(denominator > 0)).where(both.sum(axis=1) >= 3)
    corr = corr.dropna()
    return float(1.0 - corr.mean()) if len(corr) else math.nan


def _check_purged(dates: np.ndarray, folds: Sequence[tuple[np.ndarray, np.ndarray]], horizon: int) -> None:
    """Refuse folds where a training row's label window ``(i, i + horizon]`` reaches a test date."""
    codes, unique = pd.factorize(pd.Index(dates), sort=True)
    for k, (train_idx, test_idx) in enumerate(folds, start=1):
        if len(train_idx) == 0 or len(test_idx) == 0:
            raise ValueError(f"fold {k}/{len(folds)} has {len(train_idx)} training and {len(test_idx)} test rows")
        is_test = np.zeros(len(unique) + horizon + 1, dtype=np.int64)
        is_test[np.unique(codes[test_idx])] = 1
        cumulative = np.concatenate([[0], np.cumsum(is_test)])
        train_codes = np.unique(codes[train_idx])
        # test dates among positions i+1 .. i+horizon
        reach = cumulative[train_codes + horizon + 1] - cumulative[train_codes + 1]
        if (reach > 0).any() or np.isin(train_codes, codes[test_idx]).any():
            bad = pd.Timestamp(unique[train_codes[(reach > 0) | np.isin(train_codes, codes[test_idx])][0]])
            raise ValueError(
                f"fold {k}/{len(folds)} is not purged for horizon {horizon}: training date {bad.date()} has a "
                "label window that reaches a test date; build the folds with a purged splitter and this horizon"
            )


class CVObjective:
    """The objective :func:`cv_objective` returns: ``objective(trial, params) -> value(s)``.

    Exposes ``names`` and ``directions`` (one per objective) and ``n_steps`` (the number of folds,
    the pruner's resource). Per trial it records user attrs ``fold_<metric>`` (validation metric
    per fold evaluated), ``train_<metric>``, ``gap``, ``turnover`` (when computed), ``nan_folds``
    and ``fit_seconds``.
    """

    def __init__(
        self,
        fit_predict: FitPredict,
        X: pd.DataFrame,
        y: pd.Series,
        folds: Sequence[tuple[np.ndarray, np.ndarray]],
        horizon: int,
        metric: str = "rank_ic",
        objectives: Sequence[str] | None = None,
        track_gap: bool = True,
        fold_columns: Sequence[Sequence[str]] | None = None,
        train_eval_dates: int | None = 250,
    ) -> None:
        if metric not in ("rank_ic", "ic"):
            raise ValueError(f"metric must be 'rank_ic' or 'ic', got {metric!r}")
        names = tuple(objectives) if objectives is not None else (metric,)
        allowed = (metric, "gap", "turnover")
        bad = [n for n in names if n not in allowed]
        if not names or bad or len(set(names)) != len(names):
            raise ValueError(f"objectives must be distinct names among {allowed}, got {list(names)}")
        if len(X) != len(y):
            raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
        # Sorted positions: X_eval is then a sorted panel and predictions split back by membership.
        folds = [(np.sort(np.asarray(a, dtype=np.int64)), np.sort(np.asarray(b, dtype=np.int64))) for a, b in folds]
        if not folds:
            raise ValueError("no folds given")
        self.dates = X.index.get_level_values("date").to_numpy()
        _check_purged(self.dates, folds, horizon)
        if fold_columns is not None:
            if len(fold_columns) != len(folds):
                raise ValueError(f"{len(fold_columns)} fold column lists for {len(folds)} folds")
            unknown = sorted({c for cols in fold_columns for c in cols} - set(map(str, X.columns)))
            if unknown or any(len(cols) == 0 for cols in fold_columns):
                raise ValueError(f"fold columns must be non-empty lists of X's columns; unknown: {unknown[:10]}")
            # Column slices built once, reused by every trial.
            self._fold_X = [X[list(cols)] for cols in fold_columns]
        else:
            self._fold_X = [X] * len(folds)
        self.fit_predict, self.X, self.y, self.folds, self.horizon = fit_predict, X, y, folds, horizon
        # A fold's training rows lack its test (and purged) dates: a fit that takes the panel's
        # calendar gets it, so a sequence net's windows do not stitch the rows around the hole.
        fit = getattr(fit_predict, "fit", None)
        takes_calendar = fit is not None and "calendar" in inspect.signature(fit).parameters
        self._fit_keywords = {"calendar": np.unique(self.dates)} if takes_calendar else {}
        # Each fold's test dates, in fold order: a trial's per-date scores (user attr DATE_SCORES_ATTR)
        # line up with their concatenation (see oof_dates), so trials can be compared date by date.
        self._fold_dates = [np.unique(self.dates[test]) for _, test in folds]
        self.train_eval_dates = train_eval_dates
        self.metric = metric
        self.names = names
        self.directions = tuple(OBJECTIVE_DIRECTIONS[n] for n in names)
        self.n_steps = len(folds)
        self.track_gap = track_gap or "gap" in names
        self._y = y.to_numpy(dtype="float64")

    def __call__(self, trial: optuna.trial.BaseTrial, params: dict[str, Any]) -> float | tuple[float, ...]:
        single = len(self.names) == 1
        valid_scores: list[float] = []
        train_scores: list[float] = []
        turnovers: list[float] = []
        nan_folds = 0
        date_scores: list[float | None] = []
        start = time.perf_counter()
        for k, (train_idx, test_idx) in enumerate(self.folds, start=1):
            X = self._fold_X[k - 1]
            if hasattr(self.fit_predict, "fit"):
                # A model comes back: score only the test rows and a spread of training dates, each
                # row with its feature history (sequence nets), see FamilyFitPredict.
                in_sample = spread_dates(train_idx, self.dates, self.train_eval_dates) if self.track_gap else train_idx[:0]
                eval_idx = np.union1d(in_sample, test_idx)
                model = self.fit_predict.fit(dict(params), X.iloc[train_idx], self.y.iloc[train_idx], **self._fit_keywords)
                preds = predict_rows(model, X, eval_idx)
            else:
                eval_idx = np.union1d(train_idx, test_idx) if self.track_gap else test_idx
                preds = np.asarray(
                    self.fit_predict(dict(params), X.iloc[train_idx], self.y.iloc[train_idx], X.iloc[eval_idx]),
                    dtype="float64",
                ).ravel()
            if len(preds) != len(eval_idx):
                raise ValueError(f"fit_predict returned {len(preds)} predictions for {len(eval_idx)} rows")
            in_test = np.isin(eval_idx, test_idx)
            in_train = ~in_test
            valid = evaluate_predictions(self._y[test_idx], preds[in_test], self.dates[test_idx])[self.metric]
            per_date = per_date_ic(self._y[test_idx], preds[in_test], self.dates[test_idx],
                                   method="spearman" if self.metric == "rank_ic" else "pearson")
            per_date = per_date.reindex(pd.DatetimeIndex(self._fold_dates[k - 1]))
            date_scores.extend(None if not np.isfinite(v) else round(float(v), 5) for v in per_date.to_numpy())
            trial.set_user_attr(DATE_SCORES_ATTR, date_scores)
            if math.isnan(valid):  # constant predictions order nothing: no skill, not an error
                nan_folds += 1
                valid = 0.0
            valid_scores.append(float(valid))
            if self.track_gap:
                train_rows = eval_idx[in_train]
                train = evaluate_predictions(self._y[train_rows], preds[in_train], self.dates[train_rows])[self.metric]
                train_scores.append(0.0 if math.isnan(train) else float(train))
            if "turnover" in self.names:
                turnover = prediction_turnover(pd.Series(preds[in_test], index=self.X.index[test_idx]))
                turnovers.append(0.0 if math.isnan(turnover) else turnover)
            self._record(trial, valid_scores, train_scores, turnovers, nan_folds, start)
            if single:
                trial.report(float(np.mean(valid_scores)), step=k)
                # After the last fold the value is known: a finished trial is never thrown away as pruned.
                if k < self.n_steps and trial.should_prune():
                    raise optuna.TrialPruned(
                        f"running mean {self.metric} {np.mean(valid_scores):.4f} after fold {k}/{self.n_steps}"
                    )
        values = {
            self.metric: float(np.mean(valid_scores)),
            "gap": float(np.mean(train_scores) - np.mean(valid_scores)) if train_scores else math.nan,
            "turnover": float(np.mean(turnovers)) if turnovers else math.nan,
        }
        out = tuple(values[n] for n in self.names)
        return out[0] if single else out

    def oof_dates(self) -> pd.DatetimeIndex:
        """The dates a complete trial's per-date scores (user attr ``date_scores``) refer to, in order."""
        return pd.DatetimeIndex(np.concatenate(self._fold_dates)) if self._fold_dates else pd.DatetimeIndex([])

    def _record(self, trial, valid_scores, train_scores, turnovers, nan_folds, start) -> None:
        trial.set_user_attr(f"fold_{self.metric}", [round(v, 6) for v in valid_scores])
        if train_scores:
            trial.set_user_attr(f"train_{self.metric}", float(np.mean(train_scores)))
            trial.set_user_attr("gap", float(np.mean(train_scores) - np.mean(valid_scores)))
        if turnovers:
            trial.set_user_attr("turnover", float(np.mean(turnovers)))
        trial.set_user_attr("nan_folds", nan_folds)
        trial.set_user_attr("fit_seconds", round(time.perf_counter() - start, 3))


def cv_objective(
    fit_predict: FitPredict,
    X: pd.DataFrame,
    y: pd.Series,
    folds: Sequence[tuple[np.ndarray, np.ndarray]],
    horizon: int,
    metric: str = "rank_ic",
    objectives: Sequence[str] | None = None,
    track_gap: bool = True,
    fold_columns: Sequence[Sequence[str]] | None = None,
    train_eval_dates: int | None = 250,
) -> CVObjective:
    """The mean validation ``metric`` (per-date rank IC by default) over purged ``folds``.

    ``fit_predict(params, X_train, y_train, X_eval)`` fits on a fold's training rows - early
    stopping, if any, inside them - and returns one prediction per row of ``X_eval``: the fold's
    test rows, preceded in row order by its training rows when the train/validation gap is tracked
    (``track_gap``, needed for the ``gap`` objective). ``folds`` are row positions as a purged
    splitter yields them; folds whose training labels reach a test date (for ``horizon``) are
    refused. A fold whose predictions are constant scores 0 (no ordering skill).

    Single objective: after fold ``k`` the running mean is reported at ``step=k`` and the trial is
    pruned when the study's pruner says so (never after the last fold: its value is then final). ``objectives=("rank_ic", "gap")`` (gap minimized) or
    ``("rank_ic", "turnover")`` make it multi-objective, never pruned. ``fold_columns[k]`` restricts
    fold ``k`` to the features chosen on its own training rows (e.g. the ``cv_fold_features`` asset).
    With a :class:`FamilyFitPredict` the in-sample metric is measured on at most ``train_eval_dates``
    training dates spread over the window, as in ``training.cross_validate``.
    """
    return CVObjective(fit_predict, X, y, folds, horizon, metric, objectives, track_gap, fold_columns, train_eval_dates)


# ---------------------------------------------------------------------------------------------
# Studies
# ---------------------------------------------------------------------------------------------


def make_storage(url: str, heartbeat_interval: int | None = 60, grace_period: int | None = None) -> optuna.storages.RDBStorage:
    """RDB storage (``sqlite:///path.db``, ``postgresql://user@host/db``, ...) with heartbeats: a
    RUNNING trial whose heartbeat is older than ``grace_period`` (default twice the interval)
    seconds is marked FAIL by the next worker that starts a trial."""
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, but needed to reap killed trials
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url=url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # N workers started at once on an empty database all create Optuna's schema; PostgreSQL
            # refuses the losers' CREATE TABLE / CREATE TYPE ("duplicate key ... pg_type" or "already
            # exists"). The winner's schema is complete a moment later: open it again.
            text = str(exc).lower()
            if attempt == 4 or not ("already exists" in text or "duplicate key" in text):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _sampler_seed(seed: int | None, n_existing: int, worker: int) -> int | None:
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), int(n_existing), int(worker)]).generate_state(1)[0])


def _make_sampler(sampler: str | optuna.samplers.BaseSampler, seed: int | None) -> optuna.samplers.BaseSampler:
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    if sampler == "tpe":
        # constant_liar: a RUNNING trial counts as a bad result, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be 'tpe', 'random' or an optuna sampler, got {sampler!r}")


def _make_pruner(pruner: str | optuna.pruners.BasePruner, n_steps: int | None) -> optuna.pruners.BasePruner:
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "median":
        # No trial is judged on its first fold alone: one fold's rank IC is mostly noise, and pruning
        # on it lost most of what TPE finds (docs/benchmarks.md, "Hyper-parameter search").
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=n_steps or "auto", reduction_factor=3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be 'median', 'hyperband', 'none' or an optuna pruner, got {pruner!r}")


def _params_of(trial: FrozenTrial) -> dict[str, Any]:
    """Parameters of a trial, including those fixed by enqueue_trial and not yet suggested."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def open_study(
    space: SearchSpace,
    *,
    storage_url: str | optuna.storages.BaseStorage,
    study_name: str,
    directions: Sequence[str] = ("maximize",),
    metric_names: Sequence[str] | None = None,
    sampler: str | optuna.samplers.BaseSampler = "tpe",
    pruner: str | optuna.pruners.BasePruner = "median",
    seed: int | None = 0,
    worker: int = 0,
    n_steps: int | None = None,
    enqueue: Sequence[Mapping[str, Any]] = (),
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
) -> optuna.Study:
    """Create the study, or load it (``load_if_exists``) after checking that its directions and
    search space are the ones given. Configurations in ``enqueue`` (e.g. the current defaults) are
    enqueued unless a trial with the same parameters is already waiting, running or finished."""
    storage = make_storage(storage_url, heartbeat_interval, grace_period) if isinstance(storage_url, str) else storage_url
    directions = [str(d).lower() for d in directions]
    bad = [d for d in directions if d not in ("maximize", "minimize")]
    if bad or not directions:
        raise ValueError(f"directions must be 'maximize' or 'minimize', got {directions}")
    if metric_names is not None and len(metric_names) != len(directions):
        raise ValueError(f"{len(metric_names)} metric names for {len(directions)} directions")
    for params in enqueue:
        space.check_params(params)
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions, load_if_exists=True)
    existing = [d.name.lower() for d in study.directions]
    if existing != directions:
        raise ValueError(f"study {study_name!r} exists with directions {existing}, not {directions}: use another study_name")
    stored_space = study.user_attrs.get(_SPACE_ATTR)
    if stored_space is None:
        study.set_user_attr(_SPACE_ATTR, space.to_json())
    elif SearchSpace.from_json(stored_space) != space:
        raise ValueError(
            f"study {study_name!r} was created with another search space ({stored_space}); a budget counted over "
            "two spaces means nothing: use another study_name"
        )
    if metric_names is not None and study.metric_names != list(metric_names):
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, still the way to name objectives
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metric_names))
    trials = study.get_trials(deepcopy=False)
    study.sampler = _make_sampler(sampler, _sampler_seed(seed, len(trials), worker))
    study.pruner = _make_pruner(pruner, n_steps) if len(directions) == 1 else optuna.pruners.NopPruner()
    taken = [_params_of(t) for t in trials if t.state != TrialState.FAIL]
    for params in enqueue:
        if dict(params) not in taken:
            study.enqueue_trial(dict(params))
            taken.append(dict(params))
    return study


def _counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    return {state.name: sum(t.state == state for t in trials) for state in TrialState}


def _claims_before(trials: Sequence[FrozenTrial], me: FrozenTrial | optuna.trial.Trial) -> int:
    """Budget already spent or claimed ahead of ``me``: COMPLETE + PRUNED trials, plus RUNNING or
    WAITING trials with a lower (number, id) - the order in which the storage created them."""
    key = (me.number, me._trial_id)
    done = sum(t.state in _DONE for t in trials)
    ahead = sum(t.state in _CLAIMS and (t.number, t._trial_id) < key for t in trials)
    return done + ahead


@dataclass(frozen=True)
class PickRule:
    """How one trial is chosen from a multi-objective study's Pareto front.

    Among the Pareto-optimal trials whose ``bounded`` objective (minimized: the train/validation
    gap or the turnover) is at most ``bound``, take the best on ``primary`` (the validation rank
    IC); if none is within the bound, take the one with the smallest ``bounded`` value. Ties go to
    the earlier trial. Objectives are indexed or named (``study.metric_names``); the default is the
    first objective bounded by the second, as :func:`cv_objective` orders ``("rank_ic", "gap")``.
    The default bound, 0.1, is ``ValidationBounds.gap_warn``: a larger train/validation rank-IC gap
    is mostly memorized noise. For ``("rank_ic", "turnover")`` choose a turnover bound instead.
    """

    primary: str | int = 0
    bounded: str | int = 1
    bound: float = 0.1

    def describe(self) -> str:
        return (f"highest {self.primary} among Pareto trials with {self.bounded} <= {self.bound}, "
                f"else the smallest {self.bounded}")


def _objective_index(study: optuna.Study, key: str | int) -> int:
    if isinstance(key, int):
        if not 0 <= key < len(study.directions):
            raise ValueError(f"objective index {key} out of range for {len(study.directions)} objectives")
        return key
    names = study.metric_names or []
    if key not in names:
        raise ValueError(f"objective {key!r} not among the study's metric names {names}")
    return names.index(key)


def pick_trial(study: optuna.Study, rule: PickRule | None = None) -> FrozenTrial:
    """The chosen trial: ``study.best_trial`` for one objective, else :class:`PickRule` applied to
    the Pareto front ``study.best_trials``."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ValueError(f"study {study.study_name!r} has no COMPLETE trial to pick")
    if len(study.directions) == 1:
        return study.best_trial
    rule = rule or PickRule()
    primary, bounded = _objective_index(study, rule.primary), _objective_index(study, rule.bounded)
    if primary == bounded:
        raise ValueError("PickRule.primary and PickRule.bounded must be different objectives")
    if study.directions[bounded] != optuna.study.StudyDirection.MINIMIZE:
        raise ValueError(f"PickRule.bounded ({rule.bounded!r}) must be a minimized objective")
    sign = 1.0 if study.directions[primary] == optuna.study.StudyDirection.MAXIMIZE else -1.0
    front = sorted(study.best_trials, key=lambda t: t.number)
    within = [t for t in front if t.values[bounded] <= rule.bound]
    if within:
        return max(within, key=lambda t: (sign * t.values[primary], -t.number))
    return min(front, key=lambda t: (t.values[bounded], t.number))


@dataclass
class StudyResult:
    """What :func:`run_study` returns: the study, its best trials (the Pareto front, or the single
    best trial), the chosen trial, the budget used (COMPLETE + PRUNED trials in the study) and how
    many trials this call finished in each state."""

    study: optuna.Study
    best_trials: list[FrozenTrial]
    best: FrozenTrial | None
    n_done: int
    ran: dict[str, int] = field(default_factory=dict)
    rule: PickRule | None = None

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best.params) if self.best is not None else {}


class _OverBudget(Exception):
    """Raised inside a trial started after the budget was taken (by another worker)."""


def run_study(
    objective_fn: Objective,
    space: SearchSpace,
    *,
    storage_url: str | optuna.storages.BaseStorage,
    study_name: str,
    direction: str | None = None,
    directions: Sequence[str] | None = None,
    metric_names: Sequence[str] | None = None,
    sampler: str | optuna.samplers.BaseSampler = "tpe",
    pruner: str | optuna.pruners.BasePruner = "median",
    n_trials: int = 50,
    timeout_s: float | None = None,
    seed: int | None = 0,
    worker: int = 0,
    enqueue: Sequence[Mapping[str, Any]] = (),
    pick_rule: PickRule | None = None,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    catch: tuple[type[Exception], ...] = (),
    log: Log = _noop,
) -> StudyResult:
    """Run (or resume) a study until it holds ``n_trials`` COMPLETE + PRUNED trials, or
    ``timeout_s`` passes.

    ``objective_fn(trial, params)`` gets the configuration ``space.suggest(trial)`` drew (a
    :class:`CVObjective` fits here; its ``directions``, ``names`` and ``n_steps`` are used when
    ``direction``/``directions``/``metric_names`` are not given). ``storage_url`` is an RDB URL
    (SQLite file or PostgreSQL) or a storage object; the study is created or loaded
    (``load_if_exists``), see :func:`open_study`. Samplers: ``"tpe"`` (constant liar, for parallel
    workers) or ``"random"``; pruners: ``"median"``, ``"hyperband"`` (resource = folds) or
    ``"none"`` - multi-objective studies are never pruned. ``"median"`` is ``MedianPruner(
    n_startup_trials=5, n_warmup_steps=2)``: from the sixth finished trial on, a trial whose running
    mean after fold 2, 3, ... is below the median of earlier trials' running means at that fold stops
    (never after the last fold, whose value is final; so with 2 folds nothing is pruned). Parallel workers run the same call
    with distinct ``worker`` indices. Exceptions of the types in ``catch`` fail a trial without
    stopping the study (at most ``n_trials`` such failures per call).
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 0:
        raise ValueError(f"n_trials must be a whole number >= 0, got {n_trials!r}")
    if direction is not None and directions is not None:
        raise ValueError("give direction or directions, not both")
    dirs = [direction] if direction is not None else list(directions or getattr(objective_fn, "directions", ("maximize",)))
    names = metric_names if metric_names is not None else getattr(objective_fn, "names", None)
    if names is not None and len(names) != len(dirs):
        names = None
    if len(dirs) > 1 and not (pruner == "none" or isinstance(pruner, optuna.pruners.NopPruner)):
        log(f"study {study_name}: {len(dirs)} objectives, so no pruning (Optuna prunes single-objective studies only)")
    study = open_study(
        space, storage_url=storage_url, study_name=study_name, directions=dirs, metric_names=names,
        sampler=sampler, pruner=pruner, seed=seed, worker=worker, n_steps=getattr(objective_fn, "n_steps", None),
        enqueue=enqueue, heartbeat_interval=heartbeat_interval, grace_period=grace_period,
    )
    worker_label = f"{socket.gethostname()}:{os.getpid()}:{worker}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    reaped = fail_dead_local_trials(study)
    if reaped:
        log(f"study {study_name}: trial(s) {reaped} of a killed process on this host marked FAIL (they do not count)")
    trials = study.get_trials(deepcopy=False)
    counts = _counts(trials)
    done_before = counts["COMPLETE"] + counts["PRUNED"]
    ran: dict[str, int] = {}
    failures = 0

    def objective(trial: optuna.trial.Trial) -> float | Sequence[float]:
        trial.set_user_attr("worker", worker_label)  # first: a killed process's trial is then recognisable
        if _claims_before(study.get_trials(deepcopy=False), trial) >= n_trials:
            trial.set_user_attr("over_budget", True)
            study.stop()
            raise _OverBudget(f"the budget of {n_trials} trials was taken by other workers: trial dropped, not an error")
        params = space.suggest(trial)
        for other in study.get_trials(deepcopy=False, states=_DONE):
            if other.number != trial.number and other.params == params:
                trial.set_user_attr("duplicate_of", other.number)
                if DATE_SCORES_ATTR in other.user_attrs:  # the same configuration has the same per-date scores
                    trial.set_user_attr(DATE_SCORES_ATTR, other.user_attrs[DATE_SCORES_ATTR])
                if other.state == TrialState.PRUNED:
                    raise optuna.TrialPruned(f"same parameters as pruned trial {other.number}")
                return other.values[0] if len(other.values) == 1 else tuple(other.values)
        return objective_fn(trial, params)

    def after_trial(study: optuna.Study, frozen: FrozenTrial) -> None:
        nonlocal failures
        if frozen.user_attrs.get("over_budget"):
            return
        ran[frozen.state.name] = ran.get(frozen.state.name, 0) + 1
        failures += frozen.state == TrialState.FAIL
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in _DONE for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        log(_trial_line(study, frozen, done, n_trials))
        if done + running >= n_trials or failures >= max(n_trials, 1):
            study.stop()

    if done_before + counts["RUNNING"] < n_trials:
        log(
            f"study {study_name}: {done_before} of {n_trials} trials done"
            + (f", {counts['RUNNING']} running elsewhere" if counts["RUNNING"] else "")
            + (f", {counts['FAIL']} failed (not counted)" if counts["FAIL"] else "")
            + f"; running up to {n_trials - done_before - counts['RUNNING']} more"
        )
        study.optimize(objective, n_trials=None, timeout=timeout_s, catch=(_OverBudget, *catch),
                       callbacks=[after_trial], gc_after_trial=False)
    else:
        log(f"study {study_name}: budget of {n_trials} trials already spent ({done_before} done)")
    trials = study.get_trials(deepcopy=False)
    counts = _counts(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best_trials = list(study.best_trials) if complete else []
    best = pick_trial(study, pick_rule) if complete else None
    if best is not None:
        names = _objective_names(study)
        log(f"study {study_name}: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed; "
            f"picked trial {best.number}: " + ", ".join(f"{n} {v:.4f}" for n, v in zip(names, best.values)))
    return StudyResult(study=study, best_trials=best_trials, best=best, n_done=counts["COMPLETE"] + counts["PRUNED"],
                       ran=ran, rule=pick_rule if len(study.directions) > 1 else None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def fail_dead_local_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials started on this host by a process that no longer exists (a
    killed run), so that a re-run resumes at once instead of waiting for their heartbeats to go
    stale. Trials of other hosts are left to the heartbeat, and so is a trial killed in the instant
    between its creation by Optuna and its first line, which writes the worker label: it cannot be
    attributed, counts as running elsewhere until its heartbeat goes stale, and the re-run after that
    completes the budget. Returns the trial numbers marked."""
    host = socket.gethostname()
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        parts = worker.rsplit(":", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if int(parts[1]) != os.getpid() and not _pid_alive(int(parts[1])):
            try:
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
                reaped.append(trial.number)
            except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                pass  # finished or reaped meanwhile by another worker
    return reaped


def _trial_line(study: optuna.Study, trial: FrozenTrial, done: int, budget: int) -> str:
    head = f"trial {trial.number} {trial.state.name}"
    if trial.state == TrialState.COMPLETE:
        names = study.metric_names or [f"objective_{i}" for i in range(len(trial.values))]
        head += " " + ", ".join(f"{n} {v:.4f}" for n, v in zip(names, trial.values))
    elif trial.state == TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        head += f" at step {step} ({trial.intermediate_values[step]:.4f})"
    seconds = trial.duration.total_seconds() if trial.duration else math.nan
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    return f"{head} in {seconds:.1f} s [{done}/{budget}] {params}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def _objective_names(study: optuna.Study) -> list[str]:
    return list(study.metric_names or (["value"] if len(study.directions) == 1 else
                                       [f"objective_{i}" for i in range(len(study.directions))]))


def trials_frame(study: optuna.Study, rule: PickRule | None = None) -> pd.DataFrame:
    """One row per trial: number, state, objective value(s) by name, ``param_<name>``, the last
    reported step and running value (for pruned trials), timings, ``attr_<name>`` user attributes
    (lists as ``;``-joined text) and ``best`` (the Pareto front for several objectives) and
    ``picked`` flags."""
    names = _objective_names(study)
    trials = study.get_trials(deepcopy=False)
    complete = any(t.state == TrialState.COMPLETE for t in trials)
    best_numbers = {t.number for t in study.best_trials} if complete else set()
    picked = pick_trial(study, rule).number if complete else None
    rows = []
    for t in trials:
        row: dict[str, Any] = {"number": t.number, "state": t.state.name}
        for i, name in enumerate(names):
            row[name] = t.values[i] if t.values is not None else math.nan
        for key, value in t.params.items():
            row[f"param_{key}"] = value
        steps = t.intermediate_values
        row["last_step"] = max(steps) if steps else math.nan
        row["last_intermediate"] = steps[max(steps)] if steps else math.nan
        row["duration_s"] = t.duration.total_seconds() if t.duration is not None else math.nan
        row["datetime_start"] = t.datetime_start
        row["datetime_complete"] = t.datetime_complete
        for key, value in t.user_attrs.items():
            if key == DATE_SCORES_ATTR:  # one number per validation date: see trial_date_scores
                continue
            row[f"attr_{key}"] = ";".join(str(v) for v in value) if isinstance(value, (list, tuple)) else value
        row["best"] = t.number in best_numbers
        row["picked"] = t.number == picked
        rows.append(row)
    return pd.DataFrame(rows)


def trial_date_scores(study: optuna.Study, dates: Sequence, min_dates: int = 20) -> pd.DataFrame:
    """Every COMPLETE or PRUNED trial's out-of-fold per-date scores (the objective's metric, e.g. the
    per-date rank IC on each validation date), one column per trial (``trial_<number>``) on ``dates``
    (:meth:`CVObjective.oof_dates`). A pruned trial covers only the folds it ran (NaN after); trials
    with fewer than ``min_dates`` scored dates, or stored before per-date scores were recorded, are
    left out. This is what the deflated Sharpe and PBO of the promotion evidence count as "tried"."""
    index = pd.DatetimeIndex(pd.to_datetime(list(dates)))
    columns = {}
    for t in study.get_trials(deepcopy=False, states=_DONE):
        values = t.user_attrs.get(DATE_SCORES_ATTR)
        if not values:
            continue
        series = np.full(len(index), np.nan)
        head = np.array([np.nan if v is None else float(v) for v in values[: len(index)]], dtype=float)
        series[: len(head)] = head
        if np.isfinite(series).sum() >= min_dates:
            columns[f"trial_{t.number}"] = series
    return pd.DataFrame(columns, index=index)


def trial_value_of(frame: pd.DataFrame, params: Mapping[str, Any], objective: str) -> float | None:
    """The ``objective`` of the COMPLETE trial run with exactly ``params`` in a :func:`trials_frame`
    (e.g. the enqueued default configuration, to show what a search bought); None if there is none."""
    if frame.empty or not params:
        return None
    mask = np.ones(len(frame), dtype=bool)
    for key, value in params.items():
        column = f"param_{key}"
        if column not in frame:
            return None
        mask &= frame[column].astype(object).eq(value).to_numpy()
    rows = frame[mask & (frame["state"] == "COMPLETE").to_numpy()]
    column = objective if objective in rows else "value"
    if rows.empty or column not in rows:
        return None
    return float(rows[column].iloc[0])


def _fallback_importances(trials: Sequence[FrozenTrial], target: Callable[[FrozenTrial], float],
                          names: Sequence[str]) -> dict[str, float]:
    """Squared Spearman correlation (numbers) or eta squared (categories) of each parameter with
    the objective, normalized to sum to one: rough, but defined for a handful of trials."""
    y = pd.Series([target(t) for t in trials], dtype="float64")
    scores: dict[str, float] = {}
    for name in names:
        x = pd.Series([t.params.get(name) for t in trials])
        if x.nunique(dropna=True) < 2 or y.nunique() < 2:
            scores[name] = 0.0
        elif all(_is_real(v) for v in x.dropna()):
            rho = x.astype("float64").rank().corr(y.rank())
            scores[name] = 0.0 if math.isnan(rho) else float(rho**2)
        else:
            groups = y.groupby(x.astype(str))
            between = float((groups.size() * (groups.mean() - y.mean()) ** 2).sum())
            total = float(((y - y.mean()) ** 2).sum())
            scores[name] = between / total if total > 0 else 0.0
    total = sum(scores.values())
    return {k: (v / total if total > 0 else 0.0) for k, v in scores.items()}


def param_importances(study: optuna.Study, objective: int = 0, min_trials: int = 8, seed: int = 0) -> pd.Series:
    """Importance of each parameter for one objective, normalized to sum to one, sorted.

    fANOVA (``optuna.importance``, seeded) on the COMPLETE trials when there are at least
    ``min_trials`` of them; below that, or if fANOVA fails (e.g. a parameter that never varied),
    the correlation fallback of ``_fallback_importances``. The method used is in ``.attrs["method"]``;
    an empty Series (method ``"none"``) with fewer than 2 COMPLETE trials.
    """
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    names = sorted({k for t in trials for k in t.params})

    def target(t: FrozenTrial) -> float:
        return t.values[objective]

    if len(trials) < 2 or not names:
        result, method = {}, "none"
    else:
        result, method = None, "fanova"
        if len(trials) >= min_trials:
            try:
                result = optuna.importance.get_param_importances(
                    study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=seed), target=target
                )
            except Exception:  # fANOVA has several ways to give up on a degenerate study; the fallback does not
                result = None
        if result is None:
            result, method = _fallback_importances(trials, target, names), "spearman_fallback"
    series = pd.Series(result, dtype="float64", name="importance").sort_values(ascending=False)
    series.index.name = "param"
    series.attrs["method"] = method
    return series


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas only

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot(1, 1, 1)


def plot_optimization_history(study: optuna.Study, objective: int = 0) -> bytes:
    """PNG: each COMPLETE trial's value by trial number, the running best, and pruned trials at
    the running mean they were stopped at."""
    name = _objective_names(study)[objective]
    maximize = study.directions[objective] == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    fig, ax = _figure()
    if complete:
        x = [t.number for t in complete]
        y = [t.values[objective] for t in complete]
        best = np.maximum.accumulate(y) if maximize else np.minimum.accumulate(y)
        ax.scatter(x, y, s=18, color="tab:blue", label="complete", zorder=3)
        ax.step(x, best, where="post", color="tab:red", label="running best")
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="x", color="grey", s=22, label="pruned (running mean when stopped)")
    ax.set_xlabel("trial")
    ax.set_ylabel(name)
    ax.set_title(f"{study.study_name}: optimization history")
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(loc="best", fontsize=8)
    return _png(fig)


def plot_pareto_front(study: optuna.Study, rule: PickRule | None = None) -> bytes:
    """PNG for a two-objective study: every COMPLETE trial, the Pareto front, the picked trial and
    the rule's bound."""
    if len(study.directions) != 2:
        raise ValueError(f"a Pareto front plot needs 2 objectives, the study has {len(study.directions)}")
    names = _objective_names(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig, ax = _figure(6.0, 4.5)
    if complete:
        front = sorted(study.best_trials, key=lambda t: t.values[0])
        ax.scatter([t.values[0] for t in complete], [t.values[1] for t in complete], s=16, color="lightgrey", label="trials")
        ax.plot([t.values[0] for t in front], [t.values[1] for t in front], "o-", color="tab:blue", ms=5, label="Pareto front")
        rule = rule or PickRule()
        try:
            picked = pick_trial(study, rule)
            ax.scatter([picked.values[0]], [picked.values[1]], marker="*", s=180, color="tab:red", zorder=4,
                       label=f"picked (#{picked.number})")
            bounded = _objective_index(study, rule.bounded)
            line = ax.axhline if bounded == 1 else ax.axvline
            line(rule.bound, ls="--", color="tab:red", lw=0.8, label=f"{names[bounded]} bound {rule.bound}")
        except ValueError:
            pass
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"{names[0]} ({study.directions[0].name.lower()})")
    ax.set_ylabel(f"{names[1]} ({study.directions[1].name.lower()})")
    ax.set_title(f"{study.study_name}: Pareto front")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_param_importances(importances: pd.Series) -> bytes:
    """PNG: horizontal bars of :func:`param_importances`."""
    fig, ax = _figure(6.0, 0.6 + 0.35 * max(len(importances), 1))
    ordered = importances.sort_values()
    ax.barh(list(map(str, ordered.index)), ordered.to_numpy(), color="tab:blue")
    ax.set_xlabel("importance (sums to 1)")
    ax.set_title(f"parameter importance ({importances.attrs.get('method', 'unknown')})")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)
