"""Per-feature contributions (SHAP values) of fitted models and ensembles, stored as values.

A contributions frame is indexed by (date, symbol) and holds one column per feature the model reads,
``base_value`` and ``prediction``; ``base_value`` plus the feature columns equals ``prediction``
(exactly for the trees, whose values are TreeSHAP from the boosters themselves; up to the path
integral's error for the sequence nets' integrated gradients; see ``Model.contributions``).
Explainers are never stored: they do not pickle across library versions, the values do.

Ensembles (``lib.ensemble.combine.EnsembleFit``) combine their members' per-date standardized
scores, so their contributions are the members' mapped into that space, date by date:

- z-score rules (``mean``, ``weighted``, ``stacked``): ``z = (s - mu_d) / sd_d`` is affine on each
  date, so a member's contributions divide by ``sd_d`` and its base value becomes
  ``(base - mu_d) / sd_d``; weighted and summed over the members, the ensemble's contributions add up
  to its score exactly (``mu_d``, ``sd_d`` from every row of the date, as the rule computes them).
- ``rank_mean``: a per-date rank is not linear in the score. Each member's rank is linearized per
  date by least squares on the score (``r ~ a_d + b_d s``), its contributions multiplied by ``b_d``,
  and what the line leaves is one more column, ``nonlinear_residual``, so the columns still add up
  to the ensemble's score and the share the linearization misses is visible, not hidden.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from plml_assets.lib.models.base import Model
from plml_assets.lib.models.training import predict_rows

BASE, PREDICTION, RESIDUAL = "base_value", "prediction", "nonlinear_residual"
#: columns of a contributions frame that are not features
NOT_FEATURES = (BASE, PREDICTION, RESIDUAL)


def feature_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if c not in NOT_FEATURES and c != "model"]


def explain_rows(model: Model, X: pd.DataFrame, rows: np.ndarray, *, threads: int | None = None, steps: int | None = None) -> pd.DataFrame:
    """Contributions of ``model`` on the rows at positions ``rows`` of the sorted panel ``X`` (its
    feature columns), with ``prediction`` (the model's own score of those rows, as
    :func:`lib.models.training.predict_rows` computes it). A sequence net gets the feature history
    before the first row, as when it predicts."""
    rows = np.asarray(rows, dtype=np.int64)
    X = X[list(model.feature_names_)]
    lookback = int(model.lookback_dates)
    if lookback == 0:
        frame = model.contributions(X.iloc[rows], threads=threads)
    else:
        dates = X.index.get_level_values("date").to_numpy()
        unique = np.unique(dates)
        wanted = dates[rows]
        first = unique[max(int(np.searchsorted(unique, wanted.min())) - lookback, 0)]
        span = np.flatnonzero((dates >= first) & (dates <= wanted.max()))
        kwargs = {} if steps is None else {"steps": steps}
        frame = model.contributions(X.iloc[span], threads=threads, positions=np.searchsorted(span, rows), **kwargs)
    frame[PREDICTION] = predict_rows(model, X, rows)
    return frame


def additivity(frame: pd.DataFrame) -> dict[str, float]:
    """How far ``base_value`` + contributions (+ residual) lie from ``prediction``: the largest
    absolute gap, and that gap relative to the predictions' root mean square (a relative error per
    row would explode on the rows scored near zero)."""
    parts = frame[[*feature_columns(frame), BASE] + ([RESIDUAL] if RESIDUAL in frame else [])].sum(axis=1).to_numpy()
    prediction = frame[PREDICTION].to_numpy(dtype="float64")
    gap = np.abs(parts - prediction)
    scale = float(np.sqrt(np.mean(prediction**2))) if len(prediction) else 0.0
    largest = float(gap.max()) if len(gap) else 0.0
    return {"max_abs_error": largest, "prediction_rms": scale, "relative_error": largest / max(scale, 1e-300), "rows": int(len(gap))}


def mean_abs(frame: pd.DataFrame) -> pd.Series:
    """Mean |contribution| per feature, largest first (the global importance SHAP summaries show)."""
    return frame[feature_columns(frame)].abs().mean().sort_values(ascending=False)


def _per_date_moments(scores: pd.Series) -> tuple[pd.Series, pd.Series]:
    """Mean and population std of ``scores`` per date, and the flat-date rule of ``_zscore_by_date``."""
    dates = scores.index.get_level_values("date")
    mean = scores.groupby(dates).mean()
    std = np.sqrt(((scores - mean.reindex(dates).to_numpy()) ** 2).groupby(dates).mean())
    return mean, std


def _member_in_ensemble_space(method: str, contributions: pd.DataFrame, scores: pd.Series) -> pd.DataFrame:
    """One member's contributions (``base_value``, features, ``prediction``) mapped to the space the
    rule standardizes it into; ``scores``: the member's scores on every row of each date."""
    dates = contributions.index.get_level_values("date")
    features = feature_columns(contributions)
    if method != "rank_mean":
        mean, std = _per_date_moments(scores)
        mu, sd = mean.reindex(dates).to_numpy(), std.reindex(dates).to_numpy()
        flat = sd <= 1e-12 * np.maximum(np.abs(mu), 1e-300)
        scale = np.where(flat, 0.0, 1.0 / np.where(flat, 1.0, sd))
        out = contributions[features].mul(scale, axis=0)
        out[BASE] = (contributions[BASE].to_numpy() - mu) * scale
        out[RESIDUAL] = 0.0
        return out
    from plml_assets.lib.ensemble.combine import _rank_by_date

    ranks = _rank_by_date(scores.to_frame("s"))["s"]
    all_dates = scores.index.get_level_values("date")
    s_mean, s_std = _per_date_moments(scores)
    r_mean = ranks.groupby(all_dates).mean()
    cov = ((scores - s_mean.reindex(all_dates).to_numpy()) * (ranks - r_mean.reindex(all_dates).to_numpy())).groupby(all_dates).mean()
    var = s_std**2
    slope = (cov / var.where(var > 0)).fillna(0.0)
    intercept = r_mean - slope * s_mean
    b, a = slope.reindex(dates).to_numpy(), intercept.reindex(dates).to_numpy()
    out = contributions[features].mul(b, axis=0)
    out[BASE] = a + b * contributions[BASE].to_numpy()
    rank_here = ranks.reindex(contributions.index).to_numpy()
    out[RESIDUAL] = rank_here - (a + b * contributions[PREDICTION].to_numpy())
    return out


def ensemble_contributions(fit: Mapping, members: Mapping[str, pd.DataFrame], scores: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Contributions of an ensemble rule (``EnsembleFit.to_dict()``) on the rows every member was
    explained on: the members' contributions mapped to the rule's space (module docstring),
    weighted and summed; ``prediction`` is the rule's score of those rows computed from ``scores``
    (every member's scores on every row of the dates, as the ensemble was scored)."""
    from plml_assets.lib.ensemble.combine import EnsembleFit

    rule = EnsembleFit.from_dict(fit)
    absent = [m for m in rule.members if m not in members or m not in scores]
    if absent:
        raise ValueError(f"ensemble {rule.method}: no contributions or scores of member(s) {absent}")
    index = members[rule.members[0]].index
    for m in rule.members[1:]:
        index = index.intersection(members[m].index)
    if len(index) == 0:
        raise ValueError(f"ensemble {rule.method}: its members were explained on no common row")
    index = index.sort_values()
    mapped = [_member_in_ensemble_space(rule.method, members[m].loc[index], scores[m]).mul(rule.weights[m])
              for m in rule.members]
    out = pd.concat(mapped, axis=0).groupby(level=[0, 1], sort=True).sum(min_count=1)
    out = out.reindex(columns=[c for c in dict.fromkeys(c for f in mapped for c in f.columns)])
    # Features one member reads and another does not: absent is zero contribution, not unknown.
    out[feature_columns(out)] = out[feature_columns(out)].fillna(0.0)
    out[BASE] = out[BASE] + rule.intercept
    full = rule.combine(pd.DataFrame({m: scores[m] for m in rule.members}))
    out[PREDICTION] = full.reindex(index).to_numpy()
    return out
