"""Is an explanation worth reading? Stability of the top features, and the randomization test.

- Stability: the rank correlation of the top features' mean |contribution| between the two halves
  of the holdout dates, and between bootstrap resamples of the dates and the whole: an importance
  ranking that reorders when half the dates change says little about the model.
- Randomization (Adebayo et al., 2018, "Sanity checks for saliency maps"): a model fitted on labels
  permuted within each date learnt nothing real, so its explanation must differ from the real
  model's (else the explanation describes the model class or the feature distributions, not what
  was learnt), and none of its features should be credited as much as the real model's strongest
  (else the real ranking is indistinguishable from fitting noise).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from plml_assets.lib.explain.contributions import explain_rows, mean_abs

#: the real and the permuted-label explanations must differ: their profiles' rank correlation at most this
MAX_PROFILE_CORR = 0.5


def _spearman(a: pd.Series, b: pd.Series) -> float:
    a, b = a.astype(float), b.reindex(a.index).astype(float)
    if len(a) < 3 or a.nunique() < 2 or b.nunique() < 2:
        return float("nan")
    return float(a.rank().corr(b.rank()))


def top_feature_stability(frame: pd.DataFrame, top: int = 20, n_boot: int = 20, seed: int = 0) -> dict:
    """Rank correlations of the ``top`` features' (by mean |contribution| over every row) mean
    |contribution|: first half of the dates against the second, and each of ``n_boot`` bootstrap
    resamples of the dates (seeded) against the whole."""
    profile = mean_abs(frame)
    features = list(profile.index[:top])
    dates = np.unique(frame.index.get_level_values("date"))
    if len(dates) < 4:
        raise ValueError(f"stability needs at least 4 dates of contributions, got {len(dates)}")
    on = frame.index.get_level_values("date")
    half = dates[len(dates) // 2]
    first, second = mean_abs(frame[on < half])[features], mean_abs(frame[on >= half])[features]
    rng = np.random.default_rng(seed)
    by_date = frame[features].abs().groupby(on)
    sums, counts = by_date.sum(), by_date.size()
    boots = []
    for _ in range(n_boot):
        pick = rng.choice(len(dates), len(dates), replace=True)
        weight = np.bincount(pick, minlength=len(dates))
        resampled = (sums.mul(weight, axis=0).sum() / float((counts.to_numpy() * weight).sum()))
        boots.append(_spearman(profile[features], resampled))
    finite = [b for b in boots if np.isfinite(b)]
    return {
        "top": len(features),
        "dates": int(len(dates)),
        "halves_rank_corr": _spearman(first, second),
        "bootstrap_rank_corr_median": float(np.median(finite)) if finite else float("nan"),
        "bootstrap_rank_corr_min": float(np.min(finite)) if finite else float("nan"),
        "n_boot": int(n_boot),
    }


def stand_outs(profile: pd.Series, against: float) -> list[str]:
    """Features whose mean |contribution| reaches ``against`` (the real model's strongest)."""
    return [str(f) for f, v in profile.astype(float).items() if v >= against]


def permuted_within_dates(y: pd.Series, seed: int) -> pd.Series:
    """``y`` with its values shuffled among the symbols of each date (seeded): the cross-sectional
    label distribution of every date is kept, its relation to the features is destroyed."""
    rng = np.random.default_rng(seed)
    codes, _ = pd.factorize(y.index.get_level_values("date"))
    shuffled = np.lexsort((rng.random(len(y)), codes))  # rows by date, in random order within a date
    in_place = np.argsort(codes, kind="stable")  # rows by date, in their own order
    values = y.to_numpy().copy()
    values[in_place] = y.to_numpy()[shuffled]
    return pd.Series(values, index=y.index, name=y.name)


def randomization_test(real: pd.Series, permuted: pd.Series, max_corr: float = MAX_PROFILE_CORR) -> dict:
    """The randomization check from two mean-|contribution| profiles: the real model's and that of
    the same family refitted on permuted labels. Passes when the explanation changes with the labels
    (the two profiles' rank correlation is at most ``max_corr``) and no feature of the permuted model
    is credited as much as the real model's strongest (which would make the real ranking
    indistinguishable from fitting noise)."""
    strongest = float(real.max()) if len(real) else 0.0
    out = stand_outs(permuted, strongest) if strongest > 0 else []
    corr = _spearman(real, permuted)
    changed = not (corr > max_corr)
    return {
        "passed": bool(changed and not out),
        "profile_rank_corr": corr,
        "max_profile_corr": float(max_corr),
        "permuted_standouts": out,
        "real_strongest": {str(real.idxmax()): strongest} if len(real) else {},
        "permuted_strongest": {str(permuted.idxmax()): float(permuted.max())} if len(permuted) else {},
    }


def permuted_label_check(model, features: pd.DataFrame, y: pd.Series, train_dates: pd.Index, real: pd.DataFrame,
                         horizon: int, seed: int) -> dict:
    """The randomization test of a fitted model: the same family and parameters refitted
    (``lib.models.training.fit_model``) on ``train_dates`` with the labels permuted within each
    date, explained on the rows of ``real`` (the real model's contributions), and the two profiles
    compared by :func:`randomization_test`."""
    from plml_assets.lib.models.training import fit_model

    columns = list(model.feature_names_)
    X = features.loc[features.index.get_level_values("date").isin(train_dates), columns]
    target = permuted_within_dates(y.reindex(X.index).dropna(), seed)
    params = {k: v for k, v in model.get_params().items() if k != "device"}
    permuted, _ = fit_model(model.family, params, X.loc[target.index], target, horizon)
    explained = explain_rows(permuted, features[columns], features.index.get_indexer(real.index))
    return randomization_test(mean_abs(real), mean_abs(explained))
