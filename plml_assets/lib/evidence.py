"""The promotion evidence: what was tried, how many independent tries that was, and what the pick
did on dates no choice saw.

Everything here is in one unit, the metric the selection rule ranks by (per-date rank IC by
default): the studies' trials, the ensemble rules and the pick are all scored per date in it, so
the deflated Sharpe compares like with like. The "Sharpe" of a per-date score series is its
annualized information ratio ``mean / std * sqrt(252)``; for the pick it is measured on the
backtest dates (walk-forward segment and holdout), for the trials on their out-of-fold dates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pandas as pd

from plml_assets.lib import overfitting as of

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


def promotion_evidence(tried: pd.DataFrame, pick_scores: pd.Series, duplicate_corr: float = 0.95) -> dict:
    """Deflated Sharpe of the pick's per-date scores over the effective number of independent tries,
    and PBO of the tried set (see :func:`plml_assets.lib.overfitting.cluster_trials` and
    :func:`plml_assets.lib.overfitting.trial_set_pbo`)."""
    out: dict = {"trials": int(tried.shape[1]), "effective_trials": math.nan, "sharpe_trials_std": math.nan,
                 "dsr": math.nan, "pbo": math.nan, "clustering": "", "pbo_details": {}}
    pick = pick_scores.dropna()
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
        out["dsr"] = float(of.deflated_sharpe_ratio(pick.to_numpy(), n_trials=clusters.n_effective, sr_variance=variance))
    out["pbo"], out["pbo_details"] = of.trial_set_pbo(tried, duplicate_corr=duplicate_corr)
    return out
