"""Ensembles of candidate models, fitted on out-of-fold (OOF) predictions only.

A member's in-sample predictions flatter it (it has seen those labels), so an ensemble fitted on them
would hand the weight to the most overfitted member. Every fit here uses the members' OOF predictions
from a purged CV instead, and :func:`ensemble_oof_scores` scores the ensemble itself honestly: fold
``k`` is combined with weights fitted only on earlier folds' OOF rows, purged.

Predictions and labels are Series on a (``date``, ``symbol``) MultiIndex. A label at date index
``i`` (on the sorted unique-date axis) is the forward return over ``(i, i + horizon]``, known only at
``i + horizon``; so a fit evaluated from date index ``p`` on may use OOF rows of dates ``i`` with
``i + horizon < p`` only (the repo-wide rule of ``lib/validation/splits.py``): the ``horizon`` dates right
before ``p`` are purged.

Rules (:data:`METHODS`), all on per-date cross-sectional transforms of the members, so that members of
different scales (a regressor's returns, a ranker's scores) mix fairly and only the ordering within a
date matters (what the rank IC scores):

- ``mean``: equal weights on per-date z-scores.
- ``rank_mean``: equal weights on per-date ranks mapped to ``[-0.5, 0.5]`` (robust to outliers).
- ``weighted``: non-negative weights summing to 1 that maximize the mean per-date IC (or minimize
  the MSE against the per-date z-scored label), shrunk toward equal weights.
- ``stacked``: ridge regression of the per-date z-scored label on the members' per-date z-scores,
  its penalty chosen on an internal purged time split. Coefficients may be negative (a member that
  is useful as a hedge of another's errors), unlike ``weighted``.
"""

from __future__ import annotations

import datetime
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize

from plml_assets.lib.validation.metrics import evaluate_predictions, per_date_ic

__all__ = [
    "METHODS",
    "OBJECTIVES",
    "STACK_ALPHA_FACTORS",
    "EnsembleFit",
    "ensemble_oof_scores",
    "fit_ensemble",
    "member_matrix",
]

METHODS = ("mean", "rank_mean", "weighted", "stacked")
OBJECTIVES = ("ic", "mse")

#: Ridge penalties tried by ``stacked``, in units of fitted rows: with per-date z-scored inputs
#: ``X'X`` grows like ``n_rows * corr(members)``, so ``alpha = factor * n_rows`` shrinks each
#: eigen-direction by ``e / (e + factor)`` whatever the data size. 0.01 is nearly OLS; 10 is close to
#: weights proportional to each member's own covariance with the label (IC weighting). The *factor*
#: is what carries over from the internal 70% split to the refit on all rows.
STACK_ALPHA_FACTORS = (0.01, 0.1, 1.0, 10.0)
#: Share of the OOF dates the ``stacked`` penalty search fits on (the earlier ones).
STACK_SPLIT = 0.7
#: Fewest labelled dates a fitted rule (``weighted``, ``stacked``) accepts; also the fewest dates on
#: each side of the ``stacked`` search split.
MIN_FIT_DATES = 3

_MIN_ROWS_PER_DATE = 3  # as in metrics: fewer pairs give no per-date correlation
_FITTED = ("weighted", "stacked")


# ---------------------------------------------------------------------------------------------------
# validation and per-date transforms


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown ensemble method {method!r}: choose one of {METHODS}")


def _check_options(shrinkage: float, objective: str, ridge_alpha: float | None, horizon: int) -> None:
    if not isinstance(shrinkage, (int, float)) or isinstance(shrinkage, bool) or not 0.0 <= float(shrinkage) <= 1.0:
        raise ValueError(f"shrinkage must be a number in [0, 1] (0: optimized weights, 1: equal weights), got {shrinkage!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if ridge_alpha is not None and not (isinstance(ridge_alpha, (int, float)) and math.isfinite(ridge_alpha) and ridge_alpha >= 0):
        raise ValueError(f"ridge_alpha must be None (search) or a finite number >= 0, got {ridge_alpha!r}")
    if isinstance(horizon, bool) or not isinstance(horizon, (int, np.integer)) or horizon < 0:
        raise ValueError(f"horizon must be an int >= 0 (trading dates a label needs to be known), got {horizon!r}")


def _check_panel_index(index: pd.Index, what: str) -> None:
    if not isinstance(index, pd.MultiIndex) or "date" not in (index.names or []):
        raise ValueError(f"{what} must be indexed by a (date, symbol) MultiIndex with a 'date' level, got names {list(index.names)}")
    if index.has_duplicates:
        raise ValueError(f"{what} has duplicate (date, symbol) rows: one prediction per row is expected")


def member_matrix(preds: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Members side by side, one column each, on the rows they all share (inner join), sorted.

    No transform is applied here: the per-date standardization (z-scores, or ranks for
    ``rank_mean``) belongs to the rule and is applied by :meth:`EnsembleFit.combine` and in the fit.
    NaN values inside the common rows are kept (a fit uses complete rows; ``combine`` skips a NaN
    member on its row).
    """
    if not isinstance(preds, Mapping):
        raise ValueError(f"preds must be a mapping name -> prediction Series, got {type(preds).__name__}")
    if len(preds) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {list(preds)}")
    for name, series in preds.items():
        if not isinstance(series, pd.Series):
            raise ValueError(f"member {name!r} must be a pd.Series of predictions, got {type(series).__name__}")
        _check_panel_index(series.index, f"member {name!r}")
    matrix = pd.concat({str(name): series.astype(float) for name, series in preds.items()}, axis=1, join="inner")
    if matrix.empty:
        raise ValueError(f"the members {list(preds)} share no (date, symbol) row: they were predicted on different rows")
    return matrix.sort_index()


def _zscore_by_date(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-date z-score of every column (population std, NaN kept). A column constant on a date has
    no opinion on that date's ordering: it becomes 0 there (neutral), not NaN or infinity."""
    dates = frame.index.get_level_values("date")
    mean = frame.groupby(dates).transform("mean")
    dev = frame - mean
    std = np.sqrt((dev * dev).groupby(dates).transform("mean"))
    flat = std <= 1e-12 * np.maximum(mean.abs(), 1e-300)
    z = dev / std.where(~flat, 1.0)
    return z.mask(flat & frame.notna(), 0.0)


def _rank_by_date(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-date ranks (average ties) mapped linearly to [-0.5, 0.5]; a lone value is 0."""
    dates = frame.index.get_level_values("date")
    rank = frame.groupby(dates).rank(method="average")
    count = frame.notna().groupby(dates).transform("sum")
    scaled = (rank - 1.0) / (count - 1.0).where(count > 1, 1.0) - 0.5
    return scaled.mask((count <= 1) & frame.notna(), 0.0)


def _standardize(frame: pd.DataFrame, method: str) -> pd.DataFrame:
    return _rank_by_date(frame) if method == "rank_mean" else _zscore_by_date(frame)


def _as_matrix(preds: Mapping[str, pd.Series] | pd.DataFrame, what: str) -> pd.DataFrame:
    if isinstance(preds, pd.DataFrame):
        _check_panel_index(preds.index, what)
        return preds.astype(float).sort_index()
    return member_matrix(preds)


def _date_str(value: Any) -> str:
    if isinstance(value, (pd.Timestamp, np.datetime64, datetime.date)):
        stamp = pd.Timestamp(value)
        return str(stamp.date()) if stamp == stamp.normalize() else stamp.isoformat()
    return str(value)


def _equal(members: list[str]) -> dict[str, float]:
    return {m: 1.0 / len(members) for m in members}


# ---------------------------------------------------------------------------------------------------
# the fitted rule


@dataclass
class EnsembleFit:
    """A fitted ensemble rule: ``combine`` applies it to new member predictions.

    ``weights`` multiply the members' per-date z-scores (per-date ranks for ``rank_mean``);
    ``intercept`` is added (non-zero only for ``stacked``; irrelevant to rank metrics). ``details``
    records how the weights were chosen (JSON-ready).
    """

    method: str
    members: list[str]
    weights: dict[str, float]
    intercept: float = 0.0
    details: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        _check_method(self.method)
        self.members = [str(m) for m in self.members]
        if len(self.members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {self.members}")
        if set(self.weights) != set(self.members):
            raise ValueError(f"weights {sorted(self.weights)} must name exactly the members {self.members}")
        self.weights = {m: float(self.weights[m]) for m in self.members}
        self.intercept = float(self.intercept)

    def combine(self, preds: Mapping[str, pd.Series] | pd.DataFrame) -> pd.Series:
        """The ensemble's prediction per row, sorted by (date, symbol).

        ``preds``: a DataFrame with one column per member (extra columns ignored), or a mapping
        name -> Series, aligned on the union of their rows (a member absent on a row is NaN there).
        Each member is standardized per date over the rows given (all rows of a date should be
        passed together), exactly as in the fit. A member that is NaN on a row is skipped on that row
        and the others are rescaled to the full weight mass: ``sum_present(w*s) * sum|w| /
        sum_present|w|`` (for non-negative weights: the weighted mean of the present members). A
        row with no member present is NaN.
        """
        if isinstance(preds, pd.DataFrame):
            frame = preds
        elif isinstance(preds, Mapping):
            for name, series in preds.items():
                if not isinstance(series, pd.Series):
                    raise ValueError(f"member {name!r} must be a pd.Series of predictions, got {type(series).__name__}")
            frame = pd.concat({str(k): v for k, v in preds.items()}, axis=1, join="outer") if preds else pd.DataFrame()
        else:
            raise ValueError(f"preds must be a DataFrame or a mapping name -> Series, got {type(preds).__name__}")
        missing = [m for m in self.members if m not in frame.columns]
        if missing:
            raise ValueError(f"combine needs every member's predictions; missing {missing} (members {self.members})")
        _check_panel_index(frame.index, "member predictions")
        frame = frame[self.members].astype(float).sort_index()
        scores = _standardize(frame, self.method).to_numpy()
        weights = np.array([self.weights[m] for m in self.members])
        present = ~np.isnan(scores)
        total = np.abs(weights).sum()
        present_mass = present.astype(float) @ np.abs(weights)
        weighted_sum = np.where(present, scores, 0.0) @ weights
        with np.errstate(invalid="ignore", divide="ignore"):
            out = np.where(present_mass > 0, self.intercept + weighted_sum * total / present_mass, np.nan)
        return pd.Series(out, index=frame.index, name=f"ensemble_{self.method}")

    def to_dict(self) -> dict:
        """JSON-ready; ``EnsembleFit.from_dict(fit.to_dict())`` combines identically."""
        return {
            "method": self.method,
            "members": list(self.members),
            "weights": dict(self.weights),
            "intercept": self.intercept,
            "details": json.loads(json.dumps(self.details, default=_json_default)),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> EnsembleFit:
        if not isinstance(d, Mapping):
            raise ValueError(f"EnsembleFit.from_dict needs a mapping, got {type(d).__name__}")
        absent = [k for k in ("method", "members", "weights") if k not in d]
        if absent:
            raise ValueError(f"EnsembleFit.from_dict: missing keys {absent}")
        return cls(method=d["method"], members=list(d["members"]), weights=dict(d["weights"]),
                   intercept=float(d.get("intercept", 0.0)), details=dict(d.get("details", {})))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


# ---------------------------------------------------------------------------------------------------
# fitting


def _fit_rows(oof: pd.DataFrame, y: pd.Series, method: str) -> tuple[pd.DataFrame, pd.Series]:
    """Standardized members and the label on the complete, labelled rows. The transform is computed on
    every OOF row given (as ``combine`` will see them), before unlabelled rows are dropped."""
    scores = _standardize(oof, method)
    label = y.reindex(oof.index).astype(float)
    keep = scores.notna().all(axis=1) & label.notna()
    return scores[keep], label[keep]


def _usable_dates(label: pd.Series) -> int:
    counts = label.groupby(label.index.get_level_values("date")).agg(["size", "nunique"])
    return int(((counts["size"] >= _MIN_ROWS_PER_DATE) & (counts["nunique"] > 1)).sum())


def _per_date_moments(scores: np.ndarray, label: np.ndarray, dates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For the smooth mean-IC objective: per date ``d`` (rows sorted by date), with members ``X`` and
    label ``y`` demeaned within the date and ``y`` scaled to unit norm, ``B[d] = X'y`` and
    ``G[d] = X'X``, so that ``IC_d(w) = B[d] @ w / sqrt(w @ G[d] @ w)``: the Pearson correlation of the
    combination with the label on that date (any per-date affine transform of either side, as the
    z-score, leaves it unchanged). Dates with < 3 rows or a constant label are left out."""
    starts = np.flatnonzero(np.r_[True, dates[1:] != dates[:-1]])
    counts = np.diff(np.r_[starts, len(dates)])
    date_of_row = np.repeat(np.arange(len(starts)), counts)
    x = scores - (np.add.reduceat(scores, starts, axis=0) / counts[:, None])[date_of_row]
    yc = label - (np.add.reduceat(label, starts) / counts)[date_of_row]
    norm = np.sqrt(np.add.reduceat(yc * yc, starts))
    valid = (counts >= _MIN_ROWS_PER_DATE) & (norm > 1e-12 * np.maximum(np.abs(np.add.reduceat(label, starts) / counts), 1e-300))
    yn = yc / np.where(norm > 0, norm, 1.0)[date_of_row]
    b = np.add.reduceat(x * yn[:, None], starts, axis=0)
    g = np.add.reduceat(x[:, :, None] * x[:, None, :], starts, axis=0)
    return b[valid], g[valid]


def _mean_ic_objective(b: np.ndarray, g: np.ndarray):
    def negative_mean_ic(w: np.ndarray) -> tuple[float, np.ndarray]:
        gw = g @ w  # (dates, members)
        q = np.maximum(gw @ w, 1e-18)
        s = np.sqrt(q)
        a = b @ w
        ic = a / s
        grad = b / s[:, None] - (a / (q * s))[:, None] * gw
        return -float(ic.mean()), -grad.mean(axis=0)

    return negative_mean_ic


def _mse_objective(scores: np.ndarray, target: np.ndarray):
    n = len(target)
    gram, cross, const = scores.T @ scores / n, scores.T @ target / n, float(target @ target / n)

    def mse(w: np.ndarray) -> tuple[float, np.ndarray]:
        gw = gram @ w
        return float(w @ gw - 2 * cross @ w + const), 2 * (gw - cross)

    return mse


def _fit_weighted(scores: pd.DataFrame, label: pd.Series, members: list[str], shrinkage: float, objective: str) -> tuple[dict, dict]:
    x = scores.to_numpy()
    if objective == "ic":
        b, g = _per_date_moments(x, label.to_numpy(), np.asarray(scores.index.get_level_values("date")))
        fun = _mean_ic_objective(b, g)
    else:
        target = _zscore_by_date(label.to_frame()).iloc[:, 0].to_numpy()
        fun = _mse_objective(x, target)
    m = len(members)
    start = np.full(m, 1.0 / m)
    result = minimize(
        fun, start, jac=True, method="SLSQP", bounds=[(0.0, 1.0)] * m,
        constraints=[{"type": "eq", "fun": lambda w: float(w.sum() - 1.0), "jac": lambda w: np.ones_like(w)}],
        options={"maxiter": 500, "ftol": 1e-12},
    )
    optimum = np.clip(result.x, 0.0, None)
    optimum = optimum / optimum.sum() if optimum.sum() > 0 else start
    equal_value, optimum_value = fun(start)[0], fun(optimum)[0]
    fell_back = not optimum_value <= equal_value  # SLSQP wandered off (or NaN): equal weights are no worse
    if fell_back:
        optimum, optimum_value = start, equal_value
    final = (1.0 - shrinkage) * optimum + shrinkage * start
    sign = -1.0 if objective == "ic" else 1.0  # report the mean IC itself, not its negative
    details = {
        "objective": objective,
        "shrinkage": float(shrinkage),
        "weights_unshrunk": dict(zip(members, map(float, optimum))),
        "objective_at_equal": sign * float(equal_value),
        "objective_at_optimum": sign * float(optimum_value),
        "objective_at_weights": sign * float(fun(final)[0]),
        "optimizer": {"method": "SLSQP", "success": bool(result.success), "message": str(result.message),
                      "iterations": int(result.get("nit", 0)), "fell_back_to_equal": bool(fell_back)},
    }
    return dict(zip(members, map(float, final))), details


def _ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, float]:
    """Ridge with an unpenalized intercept."""
    x_mean, y_mean = x.mean(axis=0), float(y.mean())
    xc, yc = x - x_mean, y - y_mean
    coef = np.linalg.lstsq(xc.T @ xc + alpha * np.eye(x.shape[1]), xc.T @ yc, rcond=None)[0]
    return coef, y_mean - float(x_mean @ coef)


def _fit_stacked(scores: pd.DataFrame, label: pd.Series, members: list[str], ridge_alpha: float | None,
                 horizon: int) -> tuple[dict, float, dict]:
    # Target: the per-date z-scored label, not the raw return. Raw returns' cross-sectional spread
    # swings with volatility, so a few turbulent dates would dominate the squared loss, while the
    # rank IC that judges the ensemble weighs every date the same; the z-score makes each date one
    # equal-sized ordering problem, on the members' own (z-scored) scale.
    target = _zscore_by_date(label.to_frame()).iloc[:, 0]
    x, t = scores.to_numpy(), target.to_numpy()
    details: dict[str, Any] = {"target": "per-date z-scored label", "alpha_factors": list(STACK_ALPHA_FACTORS)}
    if ridge_alpha is not None:
        alpha = float(ridge_alpha)
        details.update(alpha_source="given", alpha=alpha)
    else:
        dates = np.asarray(scores.index.get_level_values("date"))
        unique = pd.Index(pd.unique(dates)).sort_values()
        cut = int(STACK_SPLIT * len(unique))
        # fit on positions i with i + horizon < cut, validate on positions >= cut: the purge gap
        train_dates, valid_dates = unique[: max(cut - horizon, 0)], unique[cut:]
        if len(train_dates) < MIN_FIT_DATES or len(valid_dates) < MIN_FIT_DATES:
            factor = 1.0
            details.update(alpha_source=f"default factor {factor}: too few dates for the purged split "
                                        f"({len(train_dates)} fit / {len(valid_dates)} validation dates, need {MIN_FIT_DATES} each)")
        else:
            in_train, in_valid = np.isin(dates, train_dates), np.isin(dates, valid_dates)
            validation: dict[str, float] = {}
            for f in STACK_ALPHA_FACTORS:
                coef, icpt = _ridge(x[in_train], t[in_train], f * int(in_train.sum()))
                metrics = evaluate_predictions(label.to_numpy()[in_valid], x[in_valid] @ coef + icpt, dates[in_valid])
                validation[str(f)] = float(metrics["rank_ic"])
            # best validation rank IC; ties (and NaN) go to the stronger penalty: the simpler fit
            factor = max(STACK_ALPHA_FACTORS, key=lambda f: (np.nan_to_num(validation[str(f)], nan=-np.inf), f))
            details.update(
                alpha_source="purged split search",
                validation_rank_ic=validation,
                search_split={
                    "fit_start": _date_str(train_dates[0]), "fit_end": _date_str(train_dates[-1]),
                    "fit_dates": int(len(train_dates)), "purged_dates": int(min(horizon, cut)),
                    "valid_start": _date_str(valid_dates[0]), "valid_end": _date_str(valid_dates[-1]),
                    "valid_dates": int(len(valid_dates)),
                },
            )
        alpha = factor * len(t)
        details.update(alpha_factor=float(factor), alpha=float(alpha))
    coef, intercept = _ridge(x, t, alpha)
    return dict(zip(members, map(float, coef))), float(intercept), details


def fit_ensemble(
    method: str,
    oof: pd.DataFrame,
    y: pd.Series,
    *,
    shrinkage: float = 0.5,
    objective: str = "ic",
    ridge_alpha: float | None = None,
    horizon: int = 5,
    seed: int = 0,
) -> EnsembleFit:
    """Fit one ensemble rule on the members' OOF predictions ``oof`` (one column per member, rows on
    the (date, symbol) index) against the labels ``y``.

    Fitted rules use the rows where every member and the label are present; the members are
    standardized per date over every given OOF row first, as :meth:`EnsembleFit.combine` will.

    - ``mean`` / ``rank_mean``: equal weights, nothing learnt (``y`` is only checked for overlap).
    - ``weighted``: SLSQP from equal weights, bounds [0, 1], weights sum to 1, maximizing the mean
      per-date Pearson IC (``objective="ic"``) or minimizing the MSE against the per-date z-scored
      label (``"mse"``); then ``w = (1 - shrinkage) * w_opt + shrinkage * equal``. The unshrunk
      optimum is ``details["weights_unshrunk"]``. The IC objective is scale-free; the MSE one, with
      weights tied to sum 1, also rewards shrinking the combination's spread toward the label's
      small predictable part, so it leans toward diversified weights by itself (a signal member
      and an orthogonal noise one get ``(1 + IC) / 2`` and ``(1 - IC) / 2``): prefer ``"ic"`` to rank.
    - ``stacked``: ridge on the per-date z-scored label (see ``_fit_stacked`` for why not the raw
      return). ``ridge_alpha`` (absolute penalty) skips the search; otherwise each ``factor`` of
      :data:`STACK_ALPHA_FACTORS` (``alpha = factor * rows``) is fitted on the earliest 70% of the
      OOF dates, less the last ``horizon`` of them (purge), and scored by rank IC on the latest 30%;
      the best factor is refitted on all rows (``details["validation_rank_ic"]``, ``alpha``).
      Coefficients may be negative.

    Everything is deterministic; ``seed`` is recorded for provenance only.
    """
    _check_method(method)
    _check_options(shrinkage, objective, ridge_alpha, horizon)
    matrix = _as_matrix(oof, "oof")
    members = [str(c) for c in matrix.columns]
    matrix.columns = members
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {members}")
    if matrix.columns.has_duplicates:
        raise ValueError(f"member names must be unique, got {members}")
    if matrix.dropna(how="all").empty:
        raise ValueError("oof has no row with a member prediction")
    if not isinstance(y, pd.Series):
        raise ValueError(f"y must be a pd.Series of labels on the (date, symbol) index, got {type(y).__name__}")
    _check_panel_index(y.index, "y")
    labelled = y.dropna().index
    if not matrix.index.isin(labelled).any():
        raise ValueError("y is not aligned with oof: no (date, symbol) row of oof has a label in y")
    details: dict[str, Any] = {"seed": int(seed), "horizon": int(horizon)}
    if method in ("mean", "rank_mean"):
        details["transform"] = "per-date rank in [-0.5, 0.5]" if method == "rank_mean" else "per-date z-score"
        return EnsembleFit(method, members, _equal(members), 0.0, details)
    scores, label = _fit_rows(matrix, y, method)
    n_dates = _usable_dates(label)
    if n_dates < MIN_FIT_DATES:
        raise ValueError(
            f"{method} needs at least {MIN_FIT_DATES} dates with {_MIN_ROWS_PER_DATE}+ complete, labelled and varying rows "
            f"to fit, got {n_dates}"
        )
    dates = scores.index.get_level_values("date")
    details.update(transform="per-date z-score", n_rows=int(len(scores)), n_dates=int(dates.nunique()),
                   fit_start=_date_str(dates.min()), fit_end=_date_str(dates.max()),
                   # what each member scores alone on the fitted rows, to read the weights against
                   member_ic={m: float(per_date_ic(label, scores[m], dates).mean()) for m in members})
    if method == "weighted":
        weights, extra = _fit_weighted(scores, label, members, float(shrinkage), objective)
        return EnsembleFit(method, members, weights, 0.0, {**details, **extra})
    weights, intercept, extra = _fit_stacked(scores, label, members, ridge_alpha, int(horizon))
    return EnsembleFit(method, members, weights, intercept, {**details, **extra})


# ---------------------------------------------------------------------------------------------------
# honest CV score of an ensemble


def ensemble_oof_scores(
    method: str,
    oof: pd.DataFrame,
    y: pd.Series,
    fold_of_row: pd.Series,
    *,
    horizon: int,
    shrinkage: float = 0.5,
    objective: str = "ic",
    ridge_alpha: float | None = None,
    seed: int = 0,
) -> tuple[pd.Series, pd.DataFrame]:
    """The ensemble's own out-of-fold predictions and per-fold scores, on its members' folds.

    ``fold_of_row`` gives each OOF row's fold; folds are ordered by their first date (walk-forward).
    ``mean``/``rank_mean`` learn nothing, so every fold is combined directly. ``weighted``/``stacked``
    are refitted per fold ``k`` on the OOF rows of the folds before ``k`` whose date index ``i``
    (on the sorted unique dates of ``oof``) satisfies ``i + horizon < p_k``, ``p_k`` being fold
    ``k``'s first date: the labels of the ``horizon`` dates before the fold are not known when it
    starts, so they are purged. A fold with fewer than :data:`MIN_FIT_DATES` such labelled dates
    (always the first) uses equal weights, said in its ``note``.

    Returns the OOF Series (index of ``oof``, sorted) and a table with one row per fold: ``fold``,
    ``test_start``, ``test_end``, ``test_rows``, ``rank_ic``, ``ic`` (vs ``y`` on the fold),
    ``weights`` (JSON), ``intercept``, ``fitted_on_rows`` (rows the fit used), ``train_end`` (last date
    fitted on, None if none) and ``note``.
    """
    _check_method(method)
    _check_options(shrinkage, objective, ridge_alpha, horizon)
    matrix = _as_matrix(oof, "oof")
    matrix.columns = [str(c) for c in matrix.columns]
    members = list(matrix.columns)
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {members}")
    if not isinstance(y, pd.Series):
        raise ValueError(f"y must be a pd.Series of labels on the (date, symbol) index, got {type(y).__name__}")
    _check_panel_index(y.index, "y")
    if not matrix.index.isin(y.dropna().index).any():
        raise ValueError("y is not aligned with oof: no (date, symbol) row of oof has a label in y")
    if not isinstance(fold_of_row, pd.Series):
        raise ValueError(f"fold_of_row must be a pd.Series (fold per OOF row), got {type(fold_of_row).__name__}")
    folds = fold_of_row.reindex(matrix.index)
    if folds.isna().any():
        raise ValueError(f"fold_of_row gives no fold for {int(folds.isna().sum())} OOF row(s): pass one fold per row of oof")
    label = y.reindex(matrix.index).astype(float)
    dates = matrix.index.get_level_values("date")
    position = pd.Index(dates.unique()).sort_values().get_indexer(dates)
    first_position = pd.Series(position, index=matrix.index).groupby(folds.to_numpy()).min().sort_values()
    options = {"shrinkage": shrinkage, "objective": objective, "ridge_alpha": ridge_alpha, "horizon": horizon, "seed": seed}

    unfitted = None if method in _FITTED else fit_ensemble(method, matrix, y, **options)
    out = pd.Series(np.nan, index=matrix.index, name=f"ensemble_{method}")
    rows = []
    for order, (fold, start) in enumerate(first_position.items()):
        in_fold = (folds == fold).to_numpy()
        earlier = folds.isin(first_position.index[:order]).to_numpy()
        train = earlier & (position + horizon < start)
        if method not in _FITTED:
            fit, note, fitted_rows, train_end = unfitted, "no fitting needed", 0, None
        else:
            scores, fit_label = _fit_rows(matrix[train], label[train], method)
            if _usable_dates(fit_label) < MIN_FIT_DATES:
                reason = "no earlier OOF rows outside the purge gap" if not train.any() else (
                    f"fewer than {MIN_FIT_DATES} labelled earlier dates outside the purge gap")
                fit = EnsembleFit(method, members, _equal(members), 0.0, {"fallback": reason})
                note, fitted_rows, train_end = f"equal weights: {reason}", 0, None
            else:
                fit = fit_ensemble(method, matrix[train], label[train], **options)
                note, fitted_rows = "fitted on earlier folds, purged", int(fit.details["n_rows"])
                train_end = fit.details["fit_end"]
        predicted = fit.combine(matrix[in_fold]).reindex(matrix.index[in_fold]).to_numpy()
        out[in_fold] = predicted
        fold_dates = dates[in_fold]
        metrics = evaluate_predictions(label[in_fold].to_numpy(), predicted, fold_dates)
        rows.append({
            "fold": fold.item() if isinstance(fold, np.generic) else fold,
            "test_start": _date_str(fold_dates.min()), "test_end": _date_str(fold_dates.max()),
            "test_rows": int(in_fold.sum()),
            "rank_ic": float(metrics["rank_ic"]), "ic": float(metrics["ic"]),
            "weights": json.dumps(fit.weights), "intercept": float(fit.intercept),
            "fitted_on_rows": fitted_rows, "train_end": train_end, "note": note,
        })
    return out, pd.DataFrame(rows)

