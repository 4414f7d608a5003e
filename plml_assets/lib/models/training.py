"""Leak-free training plumbing shared by the CV, training and registry assets.

The date axis is the panel's sorted unique dates. The label of date index ``i`` spans dates
``(i, i + horizon]``; a training date is kept before a test/holdout block starting at ``j`` only
if ``i + horizon < j``.
"""

from __future__ import annotations

import copy
import inspect
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from plml_assets.lib.models.base import Model
from plml_assets.lib.models.registry import make_model
from plml_assets.lib.validation.metrics import evaluate_predictions, overfitting_gap

Log = Callable[[str], None]


def _noop(_: str) -> None:
    return None


@dataclass(frozen=True)
class HoldoutSplit:
    """Dates for the final holdout and the purged training window before it."""

    train_dates: pd.DatetimeIndex
    holdout_dates: pd.DatetimeIndex
    purged_dates: pd.DatetimeIndex

    def describe(self) -> dict[str, object]:
        return {
            "train_start": str(self.train_dates.min().date()),
            "train_end": str(self.train_dates.max().date()),
            "purged_dates": len(self.purged_dates),
            "holdout_start": str(self.holdout_dates.min().date()),
            "holdout_end": str(self.holdout_dates.max().date()),
            "holdout_dates": len(self.holdout_dates),
        }


def excess_returns(y: pd.Series) -> pd.Series:
    """The learning target: forward return minus the universe's mean forward return that date.

    Cross-sectional features cannot predict the market-wide move, which dominates raw returns and
    makes squared-error early stopping stop after a round or two; the excess return keeps RMSE and
    directional accuracy meaningful ("beats the universe") and leaves per-date IC unchanged.
    """
    return (y - y.groupby(level="date").transform("mean")).rename(f"{y.name}_excess")


def holdout_split(labels: pd.Series, holdout_days: int, horizon: int) -> HoldoutSplit:
    """The last ``holdout_days`` dates with a known label form the holdout; training ends
    ``horizon`` dates before it so that no training label reaches into the holdout."""
    all_dates = pd.DatetimeIndex(np.sort(labels.index.get_level_values("date").unique()))
    labeled = pd.DatetimeIndex(np.sort(labels.dropna().index.get_level_values("date").unique()))
    if len(labeled) < holdout_days + horizon + 50:
        raise ValueError(
            f"only {len(labeled)} dates have a known {horizon}-day label; the holdout of {holdout_days} dates "
            f"plus a purge of {horizon} leaves fewer than 50 training dates: lower holdout_days or use more history"
        )
    holdout = labeled[-holdout_days:]
    start = all_dates.get_loc(holdout[0])
    train = labeled[labeled < all_dates[max(start - horizon, 0)]]
    purged = labeled[(labeled >= all_dates[max(start - horizon, 0)]) & (labeled < holdout[0])]
    return HoldoutSplit(train, holdout, purged)


def design_matrix(
    features: pd.DataFrame, labels: pd.Series, columns: Iterable[str], dates: pd.DatetimeIndex | None = None
) -> tuple[pd.DataFrame, pd.Series]:
    """Rows with a known label (optionally restricted to ``dates``), the chosen feature columns."""
    columns = list(columns)
    missing = [c for c in columns if c not in features.columns]
    if missing:
        raise ValueError(f"feature column(s) {missing[:10]} not in the features asset")
    y = labels.reindex(features.index)
    mask = y.notna().to_numpy()
    if dates is not None:
        mask &= features.index.get_level_values("date").isin(dates)
    return features.loc[mask, columns], y[mask].astype("float64")


def folds_from_assignments(X: pd.DataFrame, assignments: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """Row positions of each fold from a (fold, date, role) table such as the cv_splits asset."""
    dates = X.index.get_level_values("date")
    folds = []
    for _, block in assignments.groupby("fold", sort=True):
        train = np.flatnonzero(dates.isin(block.loc[block["role"] == "train", "date"]))
        test = np.flatnonzero(dates.isin(block.loc[block["role"] == "test", "date"]))
        folds.append((train, test))
    return folds


def fold_assignments(splitter, dates: pd.DatetimeIndex, scheme: str) -> pd.DataFrame:
    """Long table (scheme, fold, date, role) of a splitter's date-level folds."""
    parts = []
    for k, (train_dates, test_dates) in enumerate(splitter.split_dates(dates), start=1):
        parts.append(pd.DataFrame({"scheme": scheme, "fold": k, "date": pd.DatetimeIndex(train_dates), "role": "train"}))
        parts.append(pd.DataFrame({"scheme": scheme, "fold": k, "date": pd.DatetimeIndex(test_dates), "role": "test"}))
    return pd.concat(parts, ignore_index=True)


def winsorize_bounds(y: pd.Series, quantile: float = 0.01) -> tuple[float, float]:
    lo, hi = np.nanquantile(y.to_numpy(), [quantile, 1 - quantile])
    return float(lo), float(hi)


def early_stopping_split(dates: np.ndarray, horizon: int, fraction: float = 0.15) -> tuple[np.ndarray, np.ndarray]:
    """Split a training block's row dates into fit / early-stopping rows, the latter being the last
    ``fraction`` of its dates, with ``horizon`` dates purged in between. Returns boolean masks."""
    unique = np.unique(dates)
    n_stop = max(int(round(len(unique) * fraction)), 1)
    if len(unique) - n_stop - horizon < 10:
        raise ValueError(f"training block of {len(unique)} dates is too short for early stopping with horizon {horizon}")
    stop_start = unique[-n_stop]
    fit_end = unique[-n_stop - horizon]  # exclusive: purge `horizon` dates before the stopping slice
    return dates < fit_end, dates >= stop_start


def spread_dates(rows: np.ndarray, dates: np.ndarray, max_dates: int | None) -> np.ndarray:
    """The rows (positions, sorted) of at most ``max_dates`` of their dates, spread evenly from the
    first to the last date (whole cross-sections, so per-date metrics stay meaningful)."""
    rows = np.asarray(rows, dtype=np.int64)
    unique = np.unique(dates[rows])
    if max_dates is None or len(unique) <= max_dates:
        return rows
    keep = unique[np.unique(np.linspace(0, len(unique) - 1, max_dates).round().astype(int))]
    return rows[np.isin(dates[rows], keep)]


def best_iteration(model: Model) -> int:
    """The boosting round (trees, 0-based) or epoch (nets, 0-based) early stopping kept."""
    if hasattr(model, "best_iteration_"):
        return int(model.best_iteration_)
    return int(model.best_epoch_) - 1


def iteration_word(family: str) -> str:
    return "epoch" if family in ("lstm", "gru") else "round"


def _dates_of(X: pd.DataFrame) -> np.ndarray:
    return X.index.get_level_values("date").to_numpy()


def _windows_by_calendar(model: Model) -> bool:
    """Whether ``model`` windows feature history by a trading calendar (the sequence nets: their
    ``fit`` takes ``calendar=`` and reads NaN-target rows as history only)."""
    return int(model.lookback_dates) > 0 and "calendar" in inspect.signature(model.fit).parameters


def _fit_sets(
    model: Model, X: pd.DataFrame, target: pd.Series, fit_mask: np.ndarray, stop_mask: np.ndarray,
    calendar: np.ndarray | pd.Index | None,
) -> tuple[tuple[pd.DataFrame, pd.Series], tuple[pd.DataFrame, pd.Series], dict[str, object]]:
    """(train, valid, keyword arguments) of ``fit``/``fit_incremental`` for the fitting and
    early-stopping rows. A sequence net also gets the ``calendar`` (its windows never cross a
    calendar date missing from the rows, such as a K-fold test block and its purge) and, as
    history of its validation rows, the purged rows between fitting and stopping rows with a NaN
    target (features only, never a label), so the first validation windows read the dates right
    before them instead of jumping the purge back to the fitting rows."""
    train = (X[fit_mask], target[fit_mask])
    if not _windows_by_calendar(model):
        return train, (X[stop_mask], target[stop_mask]), {}
    later = ~fit_mask  # the purged rows and the stopping rows after them
    valid = (X[later], target[later].where(stop_mask[later]))
    return train, valid, ({} if calendar is None else {"calendar": calendar})


def fit_model(
    family: str, params: dict[str, object], X: pd.DataFrame, y: pd.Series, horizon: int,
    calendar: np.ndarray | pd.Index | None = None, dask_client=None,
) -> tuple[Model, np.ndarray]:
    """Fit a model of ``family`` with early stopping on the purged tail of the given training rows;
    the target is clipped at quantiles of the fitting rows alone. Returns the model and the
    fitting-row mask. Every family is fitted by this one recipe, in CV, in tuning and for the
    final model, so their numbers compare.

    ``calendar``: the panel's trading dates, when the training rows may lack some of them (a K-fold
    or CPCV training set around its test blocks): a sequence net's windows then never stitch the
    rows on the two sides of a hole together (see ``lib.models.sequence``). None: the rows' own
    dates, right for a contiguous training window.

    ``dask_client``: a ``distributed.Client``; the boosters then train data-parallel on its workers
    (lib/models/distributed.py), by the same recipe."""
    fit_mask, stop_mask = early_stopping_split(_dates_of(X), horizon)
    clip = winsorize_bounds(y[fit_mask])
    target = y.clip(*clip)
    model = make_model(family, **params)
    train, valid, keywords = _fit_sets(model, X, target, fit_mask, stop_mask, calendar)
    if dask_client is not None:
        from plml_assets.lib.models.distributed import fit_on_dask

        fit_on_dask(model, train, valid, dask_client)
    else:
        model.fit(train, valid, **keywords)
    model.target_clip_ = clip
    return model, fit_mask


def update_model(
    model: Model, X: pd.DataFrame, y: pd.Series, horizon: int, rounds: int | None = None,
    calendar: np.ndarray | pd.Index | None = None,
) -> tuple[Model, np.ndarray]:
    """Update a fitted model (a champion) on new rows instead of refitting it: a copy of ``model``
    continues training (:meth:`Model.fit_incremental`: more trees, or fine-tuning epochs, at most
    ``rounds``, the family's default when None) with early stopping on the purged tail of the
    given dates, by :func:`fit_model`'s recipe, except that the target is clipped at the original
    model's ``target_clip_``: the update keeps the fit's units, as it keeps its scaler. ``X`` must
    hold exactly the model's feature columns; ``calendar`` as in :func:`fit_model`. Returns the
    updated copy (``model`` is left as it was) and the fitting-row mask."""
    clip = getattr(model, "target_clip_", None)
    if clip is None:
        raise ValueError(
            f"{type(model).__name__} has no target_clip_: update_model takes a model from fit_model (or one saved "
            "and loaded since); set model.target_clip_ = (low, high) as used when it was fitted"
        )
    fit_mask, stop_mask = early_stopping_split(_dates_of(X), horizon)
    target = y.clip(*clip)
    updated = copy.deepcopy(model)
    train, valid, keywords = _fit_sets(updated, X, target, fit_mask, stop_mask, calendar)
    updated.fit_incremental(train, valid, rounds=rounds, **keywords)
    updated.target_clip_ = tuple(float(v) for v in clip)
    return updated, fit_mask


def predict_rows(model: Model, X: pd.DataFrame, rows: np.ndarray) -> np.ndarray:
    """Predictions for the rows at positions ``rows`` of the sorted panel ``X``.

    A model that reads feature history (``model.lookback_dates > 0``: the sequence nets) is given
    every row from ``lookback_dates`` dates before the first requested date up to the last one, so
    the first rows of a test block see their history; features of earlier dates are past
    information, so this never looks ahead. That span holds every date of ``X`` between its ends,
    so a window reads consecutive dates of ``X``'s calendar and never jumps a hole (a test fold's
    rows get the purged and training rows before them, not rows of another segment)."""
    rows = np.asarray(rows, dtype=np.int64)
    lookback = int(model.lookback_dates)
    if lookback == 0 or len(rows) == 0:
        return np.asarray(model.predict(X.iloc[rows]), dtype="float64")
    dates = _dates_of(X)
    unique = np.unique(dates)
    wanted = dates[rows]
    first = unique[max(int(np.searchsorted(unique, wanted.min())) - lookback, 0)]
    span = np.flatnonzero((dates >= first) & (dates <= wanted.max()))
    positions = np.searchsorted(span, rows)
    if hasattr(model, "predict_positions"):  # scores only the requested rows; the rest is history
        return np.asarray(model.predict_positions(X.iloc[span], positions), dtype="float64")
    return np.asarray(model.predict(X.iloc[span]), dtype="float64")[positions]


def cross_validate(
    params: dict[str, object],
    X: pd.DataFrame,
    y: pd.Series,
    folds: list[tuple[np.ndarray, np.ndarray]],
    horizon: int,
    gap_bound: float,
    select: Callable[[np.ndarray], list[str]] | None = None,
    log: Log = _noop,
    fold_predictions: list[pd.Series] | None = None,
    family: str = "xgboost",
    fold_columns: Sequence[Sequence[str]] | None = None,
    train_eval_dates: int | None = 250,
    on_fold_model: Callable[[int, Model, pd.DataFrame, np.ndarray], None] | None = None,
) -> tuple[pd.DataFrame, pd.Series]:
    """Fit one ``family`` model per fold and evaluate it on the fold's test dates. Returns
    (per-fold metrics, out-of-fold predictions).

    ``on_fold_model(k, model, X_fold, test_idx)`` is called with each fold's fitted model (``X_fold``:
    every row on the fold's columns), so a caller can measure more on the same fit (e.g. permutation
    importance) instead of refitting it.

    Everything a fold learns comes from its own training rows: its features (``fold_columns[k]``
    chosen beforehand on them, or ``select`` called with the fitting positions; neither uses every
    column), its target clipping and its early stopping (on the purged tail of its training dates).
    When ``fold_predictions`` is a list, each fold's test predictions are appended to it (CPCV
    tests each date several times). The in-sample (train) metrics behind the overfitting gap are
    measured on at most ``train_eval_dates`` fitting dates spread evenly over the fitting window
    (None: all), the same for every family: scoring every training row of a sequence net costs more
    than fitting it.
    """
    if fold_columns is not None and len(fold_columns) != len(folds):
        raise ValueError(f"{len(fold_columns)} fold column lists for {len(folds)} folds")
    dates = _dates_of(X)
    calendar = np.unique(dates)  # a fold's training rows lack its test dates: nets window by the panel's dates
    y_values = y.to_numpy()
    rows: list[dict[str, object]] = []
    oof = pd.Series(np.nan, index=X.index, name="prediction")
    for k, (train_idx, test_idx) in enumerate(folds, start=1):
        if len(train_idx) == 0 or len(test_idx) == 0:
            raise ValueError(
                f"fold {k}/{len(folds)} has {len(train_idx)} training and {len(test_idx)} test rows: "
                "the CV splits do not match the training window (re-materialize cv_splits)"
            )
        start = time.perf_counter()
        try:
            fit_mask, stop_mask = early_stopping_split(dates[train_idx], horizon)
        except ValueError as exc:
            raise ValueError(f"fold {k}/{len(folds)}: {exc}; use fewer folds or more history") from exc
        fit_idx = train_idx[fit_mask]
        if fold_columns is not None:
            columns = list(fold_columns[k - 1])
        else:
            columns = select(fit_idx) if select is not None else list(X.columns)
        Xf = X[columns]
        model, _ = fit_model(family, params, Xf.iloc[train_idx], y.iloc[train_idx], horizon, calendar=calendar)
        eval_idx = spread_dates(fit_idx, dates, train_eval_dates)
        pred_train = predict_rows(model, Xf, eval_idx)
        pred_test = predict_rows(model, Xf, test_idx)
        oof.iloc[test_idx] = pred_test
        if on_fold_model is not None:
            on_fold_model(k, model, Xf, test_idx)
        if fold_predictions is not None:
            fold_predictions.append(pd.Series(pred_test, index=X.index[test_idx], name=f"fold_{k}"))
        train_m = evaluate_predictions(y_values[eval_idx], pred_train, dates[eval_idx])
        test_m = evaluate_predictions(y_values[test_idx], pred_test, dates[test_idx])
        gap = overfitting_gap(train_m, test_m, metric="rank_ic", bound=gap_bound)
        row = {
            "fold": k,
            "train_start": pd.Timestamp(dates[train_idx].min()).date().isoformat(),
            "train_end": pd.Timestamp(dates[train_idx].max()).date().isoformat(),
            "test_start": pd.Timestamp(dates[test_idx].min()).date().isoformat(),
            "test_end": pd.Timestamp(dates[test_idx].max()).date().isoformat(),
            "train_rows": len(fit_idx),
            "test_rows": len(test_idx),
            "n_features": len(columns),
            "features": ",".join(columns),
            "best_iteration": best_iteration(model),
            **{f"train_{m}": float(train_m[m]) for m in ("ic", "rank_ic", "rmse", "directional_accuracy")},
            **{f"valid_{m}": float(test_m[m]) for m in ("ic", "rank_ic", "rmse", "directional_accuracy")},
            "rank_ic_gap": float(gap["gap"]),
            "overfit_flag": bool(gap["flag"]),
            "fit_seconds": round(time.perf_counter() - start, 3),
        }
        rows.append(row)
        log(
            f"fold {k}/{len(folds)}: train {row['train_start']}..{row['train_end']} ({row['train_rows']:,} rows, "
            f"{len(columns)} features), test {row['test_start']}..{row['test_end']}: rank IC {row['valid_rank_ic']:.4f} "
            f"(train {row['train_rank_ic']:.4f}), {family} {iteration_word(family)} {row['best_iteration'] + 1}, {row['fit_seconds']:.1f} s"
        )
    return pd.DataFrame(rows), oof
