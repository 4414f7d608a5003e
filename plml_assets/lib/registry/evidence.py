"""The promotion evidence: what was tried, how many independent tries that was, and what the pick
did on dates no choice saw.

Everything here is in one unit, the metric the selection rule ranks by (per-date rank IC by
default): the studies' trials, the ensemble rules and the pick are all scored per date in it, so
the deflated Sharpe compares like with like. The "Sharpe" of a per-date score series is its
annualized information ratio ``mean / std * sqrt(252)``; for the pick it is measured on the
backtest dates (walk-forward segment and holdout), for the trials on their out-of-fold dates.

Overlapping labels: the per-date score of an ``h``-day forward return shares ``h - 1`` days of
returns with the next date's, so consecutive per-date scores are autocorrelated and a daily series
of T dates holds fewer independent observations. The PSR/DSR formulas assume i.i.d. observations:
fed T daily scores they would understate the Sharpe ratio's standard error by about sqrt(h) (an
equal-weight MA(h - 1) has variance ratio h). So the pick's Sharpe is measured on every date but
enters the deflated Sharpe with the effective sample size ``T / (1 + 2 * sum_{k<h} rho_k)``, the
autocorrelations estimated up to the overlap's lag h - 1 (Lo, A. (2002), "The Statistics of Sharpe
Ratios", *Financial Analysts Journal* 58(4); :func:`effective_observations`). The trials' Sharpe
dispersion needs no such correction: it is measured across trials, noise included.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from plml_assets.lib.validation import overfitting as of

#: leaderboard primary metric -> the per-date metric behind it
PRIMARY_TO_DATE_METRIC = {
    "walk_forward_rank_ic_mean": "rank_ic",
    "kfold_rank_ic_mean": "rank_ic",
    "cv_rank_ic_mean": "rank_ic",
}


def tried_configurations(studies: Mapping[str, Mapping], ensemble_scores: Mapping[str, pd.Series]) -> pd.DataFrame:
    """Every configuration tried, as per-date out-of-fold scores (dates x configurations): each trial
    of each study (``<family>:trial_<n>``, from the study's ``trial_date_scores``) and each ensemble
    rule (its nested OOF per-date scores)."""
    columns: dict[str, pd.Series] = {}
    for family, study in studies.items():
        dates = pd.DatetimeIndex(pd.to_datetime(study.get("oof_dates", [])))
        for name, values in (study.get("trial_date_scores") or {}).items():
            if len(values) != len(dates):
                raise ValueError(f"{family}_study: trial {name} has {len(values)} per-date scores for {len(dates)} dates: "
                                 f"re-materialize {family}_study")
            columns[f"{family}:{name}"] = pd.Series([np.nan if v is None else v for v in values], index=dates, dtype=float)
    for name, series in ensemble_scores.items():
        columns[name] = series.astype(float)
    return pd.DataFrame(columns).sort_index()


def effective_observations(scores: pd.Series, horizon: int) -> float:
    """How many independent observations ``scores`` (per-date scores of a ``horizon``-day label, in date
    order) are worth: ``T / max(1, 1 + 2 * sum_{k=1}^{horizon-1} rho_k)``, the autocorrelations
    ``rho_k`` estimated on the series (Lo 2002). ``horizon=1`` returns T."""
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    values = scores.dropna().sort_index().to_numpy(dtype=float)
    n = len(values)
    if horizon == 1 or n < 4 * horizon:
        return float(n)
    centered = values - values.mean()
    var = float(centered @ centered) / n
    if var == 0:
        return float(n)
    rho = [float(centered[:-k] @ centered[k:]) / n / var for k in range(1, horizon)]
    return float(n / max(1.0, 1.0 + 2.0 * sum(rho)))


def promotion_evidence(tried: pd.DataFrame, pick_scores: pd.Series, duplicate_corr: float = 0.95, horizon: int = 1) -> dict:
    """Deflated Sharpe of the pick's per-date scores over the effective number of independent tries,
    and PBO of the tried set (see :func:`plml_assets.lib.validation.overfitting.cluster_trials` and
    :func:`plml_assets.lib.validation.overfitting.trial_set_pbo`). ``horizon``: the label's length in dates;
    the pick's Sharpe enters with its effective sample size (see the module docstring)."""
    out: dict = {"trials": int(tried.shape[1]), "effective_trials": math.nan, "sharpe_trials_std": math.nan,
                 "dsr": math.nan, "pbo": math.nan, "clustering": "", "pbo_details": {}, "dsr_observations": 0}
    pick = pick_scores.dropna().sort_index()
    out["pick_score_sharpe"] = of.sharpe_ratio(pick, 252) if len(pick) > 2 else math.nan
    if tried.shape[1] == 0:
        out["clustering"] = "no trial recorded per-date scores"
        return out
    clusters = of.cluster_trials(tried, duplicate_corr=duplicate_corr)
    out["effective_trials"] = clusters.n_effective
    out["clustering"] = clusters.method
    variance = clusters.sharpe_variance
    if clusters.n_effective == 1:  # one independent try: no selection to deflate for
        variance = 0.0
    out["sharpe_trials_std"] = float(math.sqrt(variance)) if math.isfinite(variance) else math.nan
    if len(pick) >= 8 and math.isfinite(variance):
        stats = of.SharpeStats.from_returns(pick.to_numpy())
        n_eff = effective_observations(pick, horizon)
        stats = dataclasses.replace(stats, n=max(2, int(round(n_eff))))
        out["dsr"] = float(of.deflated_sharpe_ratio(stats, n_trials=clusters.n_effective, sr_variance=variance))
        out["dsr_observations"] = int(stats.n)
    out["pbo"], out["pbo_details"] = of.trial_set_pbo(tried, duplicate_corr=duplicate_corr)
    return out
