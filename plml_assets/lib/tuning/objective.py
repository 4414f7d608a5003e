"""The purged-CV objective a study optimizes, and the fit/predict adapters it calls per fold.

Part of :mod:`plml_assets.lib.tuning` (see its docstring for how the pieces fit).
"""


from __future__ import annotations

import inspect
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import optuna
import pandas as pd

from plml_assets.lib.models.registry import model_class
from plml_assets.lib.models.training import fit_model, predict_rows, spread_dates
from plml_assets.lib.validation.metrics import evaluate_predictions, per_date_ic

FitPredict = Callable[[dict[str, Any], pd.DataFrame, pd.Series, pd.DataFrame], np.ndarray]

#: User attr holding a trial's per-date validation scores (see CVObjective.oof_dates, trial_date_scores).
DATE_SCORES_ATTR = "date_scores"


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
        #: when a dict, every trial run in this process leaves its test predictions here:
        #: ``kept_predictions[trial number][fold position]`` (one value per test row, in the order of the
        #: fold's sorted test positions), so a later step can reuse a trial's fits instead of redoing them
        self.kept_predictions: dict[int, dict[int, np.ndarray]] | None = None

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
            if self.kept_predictions is not None:
                self.kept_predictions.setdefault(trial.number, {})[k - 1] = np.asarray(preds[in_test], dtype="float64")
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


