"""AutoML: one Optuna study over the model family, the family's hyper-parameters (conditional on it)
and the feature pipeline, on the same purged folds as the family studies, under a wall-clock budget.

The joint space (:class:`AutoMLSpace`) is a :class:`SearchSpace` whose parameters are ``family``
(categorical), ``top_k`` (how many of each fold's ranked selected features to keep: a feature-
pipeline choice the fold's own selection ranked on its own training rows, so no choice sees a test
date), and every family's parameters under its name (``xgboost.max_depth``, ``gru.window``, ...).
A trial draws ``family`` and ``top_k`` first and then only that family's parameters, so Optuna's
TPE models each family's space on that family's trials (a conditional space; the trial's params
hold only what was drawn). The sequence nets' part is an architecture search
(:data:`NAS_SPACE`): depth 1-4, width 16-256, window 10-120, dropout, learning rate and batch
size; the quick profile narrows it (:data:`QUICK_NAS_BOUNDS`).

:class:`AutoMLObjective` scores a configuration as the family studies do (mean validation rank IC
over the folds, :class:`CVObjective`), one CVObjective per ``top_k`` (its column slices built once
and shared by every family); it reports after every fold, so a Hyperband or median pruner stops a
hopeless configuration after its first folds whatever its family (multi-fidelity on folds). Every
trial records its per-date out-of-fold scores, which is what counts it in the deflated Sharpe and
PBO wherever the AutoML winner competes.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd

from plml_assets.lib.tuning.objective import CVObjective, FamilyFitPredict
from plml_assets.lib.tuning.space import ParamSpec, SearchSpace, default_space
from plml_assets.lib.tuning.study import DeadlinePruner, Log, StudyResult, _make_pruner, _noop, run_study

#: the families the AutoML study chooses among, cheapest first
AUTOML_FAMILIES = ("elastic_net", "xgboost", "lightgbm", "lstm", "gru")
SEQUENCE_FAMILIES = ("lstm", "gru")

#: The recurrent nets' architecture search (the cell is the family: LSTM or GRU).
NAS_SPACE = SearchSpace.from_dict({
    "num_layers": {"type": "int", "low": 1, "high": 4},
    "hidden_size": {"type": "int", "low": 16, "high": 256, "log": True},
    "window": {"type": "int", "low": 10, "high": 120, "step": 10},
    "dropout": {"type": "float", "low": 0.0, "high": 0.5},
    "lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
    "batch_size": {"type": "categorical", "choices": [128, 256, 512, 1024]},
    "bidirectional": {"type": "categorical", "choices": [False, True]},
    "pooling": {"type": "categorical", "choices": ["last", "attention"]},
})
#: What the quick profile narrows in the architecture search: short windows, one or two narrow layers.
QUICK_NAS_BOUNDS = {
    "num_layers": {"type": "int", "low": 1, "high": 2},
    "hidden_size": {"type": "int", "low": 16, "high": 32, "log": True},
    "window": {"type": "int", "low": 10, "high": 20, "step": 10},
    "bidirectional": {"type": "categorical", "choices": [False]},  # twice the recurrent cost: full profile only
}


def family_space(family: str, quick: bool = False) -> SearchSpace:
    """The part of the joint space a family contributes: the architecture search for the nets,
    the family study's default space otherwise."""
    if family in SEQUENCE_FAMILIES:
        return SearchSpace.from_dict({**NAS_SPACE.to_dict(), **(QUICK_NAS_BOUNDS if quick else {})})
    return default_space(family, quick=quick)


class AutoMLSpace(SearchSpace):
    """The joint conditional space (module docstring). Stored and compared like any SearchSpace
    (its flat parameter list), so a resumed study checks it was created over the same space."""

    def __init__(self, families: Sequence[str] = AUTOML_FAMILIES, top_k: Sequence[int] = (10, 20, 40), quick: bool = False) -> None:
        families = list(dict.fromkeys(families))
        unknown = sorted(set(families) - set(AUTOML_FAMILIES))
        if not families or unknown:
            raise ValueError(f"families must be among {list(AUTOML_FAMILIES)}, got {families}")
        top = sorted({int(k) for k in top_k})
        if not top or top[0] < 1:
            raise ValueError(f"top_k choices must be whole numbers >= 1, got {list(top_k)}")
        self.families, self.top_k, self.quick = families, top, quick
        self.family_spaces = {f: family_space(f, quick) for f in families}
        params = [ParamSpec.from_dict("family", {"type": "categorical", "choices": families}),
                  ParamSpec.from_dict("top_k", {"type": "categorical", "choices": top})]
        for family, space in self.family_spaces.items():
            params += [ParamSpec.from_dict(f"{family}.{p.name}", p.to_dict()) for p in space.params]
        super().__init__(params)

    def suggest(self, trial: optuna.trial.BaseTrial) -> dict[str, Any]:
        by_name = {p.name: p for p in self.params}
        family = by_name["family"].suggest(trial)
        out = {"family": family, "top_k": by_name["top_k"].suggest(trial)}
        for p in self.family_spaces[family].params:
            out[f"{family}.{p.name}"] = by_name[f"{family}.{p.name}"].suggest(trial)
        return out

    def check_params(self, params: Mapping[str, Any]) -> None:
        super().check_params(params)
        family = params.get("family")
        if family is not None:
            other = sorted(k for k in params if "." in k and not k.startswith(f"{family}."))
            if other:
                raise ValueError(f"a {family} configuration cannot set {other}")

    @staticmethod
    def split(params: Mapping[str, Any]) -> tuple[str, int, dict[str, Any]]:
        """(family, top_k, the family's own parameters) of a drawn configuration."""
        family = str(params["family"])
        prefix = f"{family}."
        return family, int(params["top_k"]), {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


class _FamilyDispatch:
    """``fit_predict`` for a CVObjective shared by the families: the configuration names its family."""

    def __init__(self, horizon: int, fixed: Mapping[str, Mapping[str, Any]]) -> None:
        self.adapters = {family: FamilyFitPredict(family, horizon, **dict(params)) for family, params in fixed.items()}

    def fit(self, params: dict[str, Any], X_train: pd.DataFrame, y_train: pd.Series, calendar: Any = None):
        params = dict(params)
        return self.adapters[params.pop("family")].fit(params, X_train, y_train, calendar=calendar)

    def __call__(self, params, X_train, y_train, X_eval) -> np.ndarray:
        return np.asarray(self.fit(params, X_train, y_train).predict(X_eval), dtype="float64")


class AutoMLObjective:
    """``objective(trial, params)`` over :class:`AutoMLSpace` configurations (module docstring).
    ``fold_columns``: each fold's selected features, best first; ``fixed``: per family, parameters
    held during the search (e.g. the profile's budgets: ``n_estimators``, ``max_epochs``)."""

    def __init__(self, X: pd.DataFrame, y: pd.Series, folds, horizon: int, fold_columns: Sequence[Sequence[str]],
                 fixed: Mapping[str, Mapping[str, Any]], metric: str = "rank_ic", train_eval_dates: int | None = 250) -> None:
        if len(fold_columns) != len(folds):
            raise ValueError(f"{len(fold_columns)} fold column lists for {len(folds)} folds")
        self.X, self.y, self.folds, self.horizon, self.metric = X, y, folds, horizon, metric
        self.fold_columns = [list(c) for c in fold_columns]
        self.dispatch = _FamilyDispatch(horizon, fixed)
        self.train_eval_dates = train_eval_dates
        self.names, self.directions, self.n_steps = (metric,), ("maximize",), len(folds)
        self._by_k: dict[int, CVObjective] = {}
        dates = X.index.get_level_values("date").to_numpy()
        self._fold_dates = [np.unique(dates[np.asarray(test)]) for _, test in folds]

    def for_top_k(self, k: int) -> CVObjective:
        if k not in self._by_k:
            columns = [cols[:k] for cols in self.fold_columns]
            self._by_k[k] = CVObjective(self.dispatch, self.X, self.y, self.folds, self.horizon, metric=self.metric,
                                        fold_columns=columns, train_eval_dates=self.train_eval_dates)
        return self._by_k[k]

    def __call__(self, trial: optuna.trial.BaseTrial, params: dict[str, Any]) -> float:
        family, k, own = AutoMLSpace.split(params)
        if family not in self.dispatch.adapters:
            raise ValueError(f"family {family!r} has no fixed parameters in this objective")
        trial.set_user_attr("family", family)
        trial.set_user_attr("features", int(min(k, max(len(c) for c in self.fold_columns))))
        return self.for_top_k(k)(trial, {"family": family, **own})

    def oof_dates(self) -> pd.DatetimeIndex:
        """The dates every trial's per-date scores refer to, in order (the folds' test dates)."""
        return pd.DatetimeIndex(np.concatenate(self._fold_dates))


def choice_importances(study: optuna.Study, seed: int = 0) -> dict[str, dict[str, float]]:
    """Which choices mattered (Optuna's fANOVA evaluator on the finished trials): ``overall`` over
    the choices every trial made (family, top_k), and per family over its own parameters (that
    family's trials). A part with fewer than 4 finished trials, or a single choice, is left out."""
    from optuna.importance import FanovaImportanceEvaluator, get_param_importances

    done = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)) if t.values]
    out: dict[str, dict[str, float]] = {}

    def evaluate(trials, params) -> dict[str, float] | None:
        varied = [p for p in params if len({repr(t.params.get(p)) for t in trials}) > 1]
        if len(trials) < 4 or not varied:
            return None
        sub = optuna.create_study(direction=study.direction)
        sub.add_trials(trials)
        values = get_param_importances(sub, evaluator=FanovaImportanceEvaluator(seed=seed), params=varied)
        return {k: round(float(v), 4) for k, v in values.items()}

    overall = evaluate(done, ["family", "top_k"])
    if overall:
        out["overall"] = overall
    for family in sorted({t.params.get("family") for t in done}):
        mine = [t for t in done if t.params.get("family") == family]
        names = sorted({k for t in mine for k in t.params if k.startswith(f"{family}.")})
        values = evaluate(mine, names)
        if values:
            out[family] = values
    return out


def run_automl(objective: AutoMLObjective, space: AutoMLSpace, *, storage_url, study_name: str, budget_s: float,
               max_trials: int = 1000, pruner: str = "hyperband", seed: int | None = 0, worker: int = 0,
               enqueue: Sequence[Mapping[str, Any]] = (), log: Log = _noop, study_attrs: Mapping[str, str] | None = None,
               wait_for_others_s: float = 0.0) -> StudyResult:
    """Run (or resume) the AutoML study for ``budget_s`` seconds of this call (and at most
    ``max_trials`` COMPLETE + PRUNED trials in the study): no trial starts after the budget, a
    running one is pruned at its next fold (:class:`DeadlinePruner`), Hyperband (or the median
    rule) stops hopeless configurations after their first folds."""
    if not budget_s or budget_s <= 0:
        raise ValueError(f"budget_s must be > 0 seconds, got {budget_s!r}")
    deadline = time.time() + float(budget_s)
    guard = DeadlinePruner(_make_pruner(pruner, objective.n_steps), deadline)
    return run_study(objective, space, storage_url=storage_url, study_name=study_name, pruner=guard, n_trials=max_trials,
                     timeout_s=float(budget_s), seed=seed, worker=worker, enqueue=enqueue, log=log, study_attrs=study_attrs,
                     wait_for_others_s=wait_for_others_s)
