"""Prediction-quality metrics for cross-sectional (date, symbol) return forecasts.

The headline numbers are information coefficients: per date, how well the predictions order the
symbols (Pearson ``ic``, Spearman ``rank_ic``), averaged over dates. Inputs are positional:
``y_true[k]``, ``y_pred[k]`` and ``dates[k]`` describe the same row.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd

__all__ = ["LOWER_IS_BETTER", "evaluate_predictions", "overfitting_gap", "per_date_ic", "summarize_folds"]

#: Metrics where smaller is better; the overfitting gap is then ``valid - train``.
LOWER_IS_BETTER = frozenset({"rmse", "mse", "mae", "loss", "log_loss", "logloss"})

_MIN_PAIRS_PER_DATE = 3


def _frame(y_true: Any, y_pred: Any, dates: Any) -> pd.DataFrame:
    """Aligned (true, pred, date) rows, rows with a NaN in either input dropped."""
    if dates is None:
        index = getattr(y_true, "index", None)
        if index is None or "date" not in (index.names or []):
            raise ValueError("dates is None and y_true has no 'date' index level; pass dates (one per row)")
        dates = index.get_level_values("date")
    true = np.asarray(y_true, dtype=float).ravel()
    pred = np.asarray(y_pred, dtype=float).ravel()
    date_values = np.asarray(dates).ravel()
    if not (len(true) == len(pred) == len(date_values)):
        raise ValueError(
            f"y_true, y_pred and dates must have the same length, got {len(true)}, {len(pred)} and {len(date_values)}"
        )
    frame = pd.DataFrame({"true": true, "pred": pred, "date": date_values})
    return frame.dropna(subset=["true", "pred"])


def _ic_of(frame: pd.DataFrame, method: str) -> pd.Series:
    if method not in ("pearson", "spearman"):
        raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    grouped = frame.groupby("date", sort=True)
    stats = grouped.agg(n=("true", "size"), true_levels=("true", "nunique"), pred_levels=("pred", "nunique"))
    if method == "spearman":
        true, pred = grouped["true"].rank(), grouped["pred"].rank()
    else:
        true, pred = frame["true"], frame["pred"]
    dates = frame["date"]
    # Demean within date, then one grouped sum per moment: no Python loop over dates.
    dt = true - true.groupby(dates).transform("mean")
    dp = pred - pred.groupby(dates).transform("mean")
    moments = pd.DataFrame({"xy": dt * dp, "xx": dt * dt, "yy": dp * dp, "date": dates}).groupby("date", sort=True).sum()
    # Zero variance is judged on distinct values, not on the demeaned sums, which round-off makes tiny but nonzero.
    valid = (stats["n"] >= _MIN_PAIRS_PER_DATE) & (stats["true_levels"] > 1) & (stats["pred_levels"] > 1)
    moments = moments[valid]
    ic = (moments["xy"] / np.sqrt(moments["xx"] * moments["yy"])).clip(-1.0, 1.0)
    ic.index.name = "date"
    return ic.rename("rank_ic" if method == "spearman" else "ic")


def per_date_ic(
    y_true: Any,
    y_pred: Any,
    dates: Any,
    method: Literal["pearson", "spearman"] = "pearson",
) -> pd.Series:
    """Cross-sectional correlation of predictions with outcomes, one value per date.

    Dates with fewer than 3 valid (non-NaN) pairs, or where either side is constant, are skipped
    (absent from the result). ``method="spearman"`` correlates within-date ranks (average ties).
    Returns a float Series indexed by sorted ``date``, named ``ic`` or ``rank_ic``.
    """
    return _ic_of(_frame(y_true, y_pred, dates), method)


def _pooled_corr(frame: pd.DataFrame, method: str) -> float:
    if len(frame) < _MIN_PAIRS_PER_DATE or frame["true"].nunique() < 2 or frame["pred"].nunique() < 2:
        return math.nan
    return float(frame["true"].corr(frame["pred"], method=method))


def evaluate_predictions(y_true: Any, y_pred: Any, dates: Any) -> dict[str, float]:
    """Headline metrics of one prediction set.

    Keys: ``ic`` (mean per-date Pearson IC), ``rank_ic`` (mean per-date Spearman IC), ``ic_ir``
    (mean / sample std of per-date rank IC; NaN with fewer than 2 dates or a constant rank IC),
    ``rmse``, ``directional_accuracy`` (share of rows with ``sign(pred) == sign(true)`` among rows
    whose true value is nonzero; a zero prediction counts as wrong), ``n_rows``, ``n_dates``
    (counts, as ints, after dropping rows with NaN in either input).

    Single-symbol fallback: when every date holds at most one row (one instrument's time series),
    a cross-sectional IC cannot exist, so ``ic``/``rank_ic`` are the Pearson/Spearman correlation
    over time of all rows instead, and ``ic_ir`` is NaN. Metrics that are undefined (no rows, no
    date with 3 varying pairs) are NaN rather than errors.
    """
    frame = _frame(y_true, y_pred, dates)
    n_rows, n_dates = len(frame), int(frame["date"].nunique())
    if n_rows > 0 and n_rows == n_dates:
        ic, rank_ic, ic_ir = _pooled_corr(frame, "pearson"), _pooled_corr(frame, "spearman"), math.nan
    else:
        pearson, spearman = _ic_of(frame, "pearson"), _ic_of(frame, "spearman")
        ic = float(pearson.mean()) if len(pearson) else math.nan
        rank_ic = float(spearman.mean()) if len(spearman) else math.nan
        spread = float(spearman.std(ddof=1)) if len(spearman) >= 2 else math.nan
        ic_ir = rank_ic / spread if spread > 1e-12 else math.nan
    error = frame["pred"].to_numpy() - frame["true"].to_numpy()
    rmse = float(np.sqrt(np.mean(error**2))) if n_rows else math.nan
    moved = frame[frame["true"] != 0]
    directional_accuracy = (
        float((np.sign(moved["pred"]) == np.sign(moved["true"])).mean()) if len(moved) else math.nan
    )
    return {
        "ic": ic,
        "rank_ic": rank_ic,
        "ic_ir": ic_ir,
        "rmse": rmse,
        "directional_accuracy": directional_accuracy,
        "n_rows": n_rows,
        "n_dates": n_dates,
    }


def overfitting_gap(
    train: Mapping[str, float],
    valid: Mapping[str, float],
    metric: str = "rank_ic",
    bound: float = 0.1,
) -> dict[str, Any]:
    """How much worse a metric is out of sample than in sample.

    ``gap`` is positive when validation is worse: ``train - valid`` for higher-is-better metrics
    (IC, accuracy, ...), ``valid - train`` for those in ``LOWER_IS_BETTER`` (``rmse``, ...).
    ``ratio`` is ``valid / train`` when ``train > 0`` (share of the in-sample score kept; for
    rmse, how many times larger the out-of-sample error is), else NaN. ``flag`` is ``gap > bound``;
    an undefined (NaN) gap is not flagged. The result also echoes ``metric``, ``bound`` and the
    ``train``/``valid`` values.
    """
    for name, scores in (("train", train), ("valid", valid)):
        if metric not in scores:
            raise ValueError(f"metric {metric!r} missing from the {name} metrics (has {sorted(scores)})")
    train_value, valid_value = float(train[metric]), float(valid[metric])
    gap = valid_value - train_value if metric in LOWER_IS_BETTER else train_value - valid_value
    ratio = valid_value / train_value if train_value > 0 else math.nan
    return {
        "metric": metric,
        "bound": float(bound),
        "train": train_value,
        "valid": valid_value,
        "gap": gap,
        "ratio": ratio,
        "flag": bool(gap > bound),
    }


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def summarize_folds(fold_metrics: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Mean and std over folds of every numeric key: ``<key>_mean``, ``<key>_std``.

    The std is the population std (ddof=0), as in sklearn's ``cv_results_``. NaN fold values are
    ignored (a key that is NaN in every fold gives NaN); booleans and non-numeric values are skipped.
    Keys keep their first-seen order.
    """
    values: dict[str, list[float]] = {}
    for fold in fold_metrics:
        for key, value in fold.items():
            if _is_number(value):
                values.setdefault(key, []).append(float(value))
    summary: dict[str, float] = {}
    for key, series in values.items():
        finite = np.asarray(series, dtype=float)
        finite = finite[~np.isnan(finite)]
        summary[f"{key}_mean"] = float(finite.mean()) if finite.size else math.nan
        summary[f"{key}_std"] = float(finite.std()) if finite.size else math.nan
    return summary
