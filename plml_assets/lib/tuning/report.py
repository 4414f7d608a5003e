"""What a study found: the trial table, per-date scores and parameter importances.

Part of :mod:`plml_assets.lib.tuning` (see its docstring for how the pieces fit).
"""


from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.trial import FrozenTrial, TrialState

from plml_assets.lib.tuning.objective import DATE_SCORES_ATTR
from plml_assets.lib.tuning.space import _is_real
from plml_assets.lib.tuning.study import _DONE, PickRule, _objective_names, pick_trial


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


