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

__all__ = ["LOWER_IS_BETTER", "evaluate_predictions", "group_ranks", "overfitting_gap", "per_date_ic", "summarize_folds"]

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


def group_ranks(values: np.ndarray, codes: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Within-group ranks of ``values`` (1-based, ties averaged, as ``groupby(...).rank()``; NaN
    stays NaN and is not counted), with each group's count of non-NaN values and of distinct ones.

    ``codes``: the group of each row, integers in ``[0, n_groups)``. One lexsort instead of pandas'
    groupby, which re-factorizes the keys for every statistic (the metrics below are computed for
    every fold, trial and permuted feature, so this is on every hot path)."""
    values = np.asarray(values, dtype=np.float64)
    codes = np.asarray(codes, dtype=np.int64)
    ranks = np.full(len(values), np.nan)
    present = ~np.isnan(values)
    rows = np.flatnonzero(present)
    count = np.bincount(codes[rows], minlength=n_groups)
    if len(rows) == 0:
        return ranks, count, np.zeros(n_groups, dtype=np.int64)
    # Sorted by (group, value): the value order's positions as the tie-break of an int64 key, two
    # plain argsorts (several times faster than np.lexsort; the order among equal values does not
    # matter, their ranks are averaged).
    by_value = np.empty(len(rows), dtype=np.int64)
    by_value[np.argsort(values[rows])] = np.arange(len(rows))
    order = rows[np.argsort(codes[rows] * len(rows) + by_value)]
    v, c = values[order], codes[order]
    n = len(order)
    new_group = np.empty(n, dtype=bool)
    new_group[0] = True
    np.not_equal(c[1:], c[:-1], out=new_group[1:])
    new_run = new_group.copy()
    new_run[1:] |= v[1:] != v[:-1]
    positions = np.arange(n)
    group_start = np.maximum.accumulate(np.where(new_group, positions, 0))
    run_id = np.cumsum(new_run) - 1
    run_first = positions[new_run]
    run_last = np.append(run_first[1:], n) - 1
    within = (run_first + run_last) / 2.0 - group_start[run_first] + 1.0  # average 1-based rank of each run
    ranks[order] = within[run_id]
    distinct = np.bincount(c[new_run], minlength=n_groups)
    return ranks, count, distinct


def _ics(frame: pd.DataFrame, methods: Sequence[str]) -> dict[str, pd.Series]:
    """Per-date IC of each of ``methods`` ("pearson", "spearman") on one factorization and one
    ranking of the rows."""
    for method in methods:
        if method not in ("pearson", "spearman"):
            raise ValueError(f"method must be 'pearson' or 'spearman', got {method!r}")
    codes, keys = pd.factorize(frame["date"], sort=True)
    n_groups = len(keys)
    true_rank, n, true_levels = group_ranks(frame["true"].to_numpy(), codes, n_groups)
    pred_rank, _, pred_levels = group_ranks(frame["pred"].to_numpy(), codes, n_groups)
    # Zero variance is judged on distinct values, not on the demeaned sums, which round-off makes tiny but nonzero.
    valid = (n >= _MIN_PAIRS_PER_DATE) & (true_levels > 1) & (pred_levels > 1)
    index = pd.Index(keys[valid], name="date")
    size = np.maximum(n, 1)
    out = {}
    for method in methods:
        if method == "spearman":
            true, pred = true_rank, pred_rank
        else:
            true, pred = frame["true"].to_numpy(dtype=np.float64), frame["pred"].to_numpy(dtype=np.float64)
        # Demean within date, then one grouped sum per moment: no Python loop over dates.
        dt = true - (np.bincount(codes, weights=true, minlength=n_groups) / size)[codes]
        dp = pred - (np.bincount(codes, weights=pred, minlength=n_groups) / size)[codes]
        xy = np.bincount(codes, weights=dt * dp, minlength=n_groups)[valid]
        xx = np.bincount(codes, weights=dt * dt, minlength=n_groups)[valid]
        yy = np.bincount(codes, weights=dp * dp, minlength=n_groups)[valid]
        with np.errstate(invalid="ignore", divide="ignore"):
            ic = np.clip(xy / np.sqrt(xx * yy), -1.0, 1.0)
        out[method] = pd.Series(ic, index=index, name="rank_ic" if method == "spearman" else "ic")
    return out


def _ic_of(frame: pd.DataFrame, method: str) -> pd.Series:
    return _ics(frame, (method,))[method]


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
        ics = _ics(frame, ("pearson", "spearman"))
        pearson, spearman = ics["pearson"], ics["spearman"]
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
