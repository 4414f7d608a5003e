"""Drift and staleness of the champion: has the market moved away from what it was trained on?

Three views, each cheap enough for a sensor tick:

* feature drift: per feature, the new data's distribution against the champion's training window
  (Population Stability Index on reference-quantile bins, two-sample Kolmogorov-Smirnov);
* prediction drift: the champion's own scores, raw and as per-date cross-sectional z-scores;
* performance decay: the realized rank IC on dates whose labels are now known, against the
  champion's holdout rank IC.

``summarize`` folds them into one flat dict and ``decide_retraining`` turns that dict into a
``RetrainDecision`` with one human sentence per crossed threshold. A metric that could not be
measured is noted and skipped, never a crash: a sensor must not die on a quiet week.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from plml_assets.lib.validation.metrics import per_date_ic

__all__ = [
    "DriftThresholds",
    "RetrainDecision",
    "data_age_days",
    "decide_retraining",
    "feature_drift",
    "ks_statistic",
    "performance_decay",
    "prediction_drift",
    "psi",
    "realized_rank_ic",
    "summarize",
]

FEATURE_DRIFT_COLUMNS = [
    "psi", "ks", "ks_pvalue", "reference_mean", "current_mean", "reference_missing", "current_missing",
]


def _finite(values: Any) -> np.ndarray:
    array = np.asarray(values, dtype=float).ravel()
    return array[np.isfinite(array)]


def _bin_index(edges: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, int]:
    """Bin of each value and the number of bins, for reference-quantile ``edges`` (unique, sorted).

    Bins are right-closed, ``(e[i], e[i+1]]``, the first and last open-ended so that current values
    outside the reference range land in the end bins. A constant reference (one edge ``v``) gets the
    three bins ``< v``, ``== v``, ``> v``: one bin would make every current sample look identical."""
    if len(edges) == 1:
        return np.searchsorted(edges, values, side="left") + np.searchsorted(edges, values, side="right"), 3
    inner = edges[1:-1]
    return np.searchsorted(inner, values, side="left"), len(inner) + 1


def psi(reference: np.ndarray, current: np.ndarray, bins: int = 10, eps: float = 1e-4) -> float:
    """Population Stability Index of ``current`` against ``reference``.

    ``sum((c_i - r_i) * ln(c_i / r_i))`` over bins whose edges are the ``bins``-quantiles of the
    reference's finite values (duplicate edges, e.g. from a point mass at 0, collapse into one), with
    proportions floored at ``eps`` so an empty bin costs a large but finite amount. NaN and infinite
    values are ignored on both sides; NaN when either side has no finite value. Rule of thumb:
    < 0.1 stable, 0.1-0.25 moderate shift, > 0.25 major shift."""
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    ref, cur = _finite(reference), _finite(current)
    if len(ref) == 0 or len(cur) == 0:
        return math.nan
    edges = np.unique(np.quantile(ref, np.linspace(0.0, 1.0, bins + 1)))
    ref_bins, n_bins = _bin_index(edges, ref)
    cur_bins, _ = _bin_index(edges, cur)
    r = np.maximum(np.bincount(ref_bins, minlength=n_bins) / len(ref), eps)
    c = np.maximum(np.bincount(cur_bins, minlength=n_bins) / len(cur), eps)
    return float(np.sum((c - r) * np.log(c / r)))


def ks_statistic(reference: Any, current: Any) -> tuple[float, float]:
    """Two-sample Kolmogorov-Smirnov statistic and p-value (``scipy.stats.ks_2samp``) on the non-NaN
    values; ``(nan, nan)`` when either side is empty. With hundreds of thousands of rows the p-value
    is tiny for any visible shift: read the statistic, not the p-value, as the size of the drift."""
    ref = np.asarray(reference, dtype=float).ravel()
    cur = np.asarray(current, dtype=float).ravel()
    ref, cur = ref[~np.isnan(ref)], cur[~np.isnan(cur)]
    if len(ref) == 0 or len(cur) == 0:
        return math.nan, math.nan
    with warnings.catch_warnings():
        # For a large shift the exact p-value underflows and scipy falls back to the asymptotic one, saying so.
        warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful", category=RuntimeWarning)
        result = stats.ks_2samp(ref, cur)
    return float(result.statistic), float(result.pvalue)


def _subsample(frame: pd.DataFrame, max_rows: int | None, rng: np.random.Generator) -> pd.DataFrame:
    if max_rows is None or len(frame) <= max_rows:
        return frame
    rows = np.sort(rng.choice(len(frame), size=max_rows, replace=False))
    return frame.iloc[rows]


def _numeric_values(column: pd.Series) -> np.ndarray:
    return pd.to_numeric(column, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def feature_drift(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    *,
    bins: int = 10,
    max_rows: int | None = 200_000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per feature (the numeric columns both frames share, in ``reference`` order): ``psi``, ``ks``,
    ``ks_pvalue`` and, on all rows, ``reference_mean``/``current_mean`` (of finite values) and
    ``reference_missing``/``current_missing`` (share of NaN or infinite values). Sorted by ``psi``,
    largest first, undefined last; indexed by ``feature``.

    Above ``max_rows`` rows a side is subsampled (seeded, same rows for every feature) before PSI and
    KS: quantile bins and the KS statistic are stable at that size and the cost stays flat."""
    if max_rows is not None and max_rows < 1:
        raise ValueError(f"max_rows must be >= 1 or None, got {max_rows}")
    common = [c for c in reference.columns if c in current.columns]
    numeric = [
        c for c in common
        if pd.api.types.is_numeric_dtype(reference[c]) and pd.api.types.is_numeric_dtype(current[c])
    ]
    rng = np.random.default_rng(seed)
    ref_sample = _subsample(reference[numeric], max_rows, rng)
    cur_sample = _subsample(current[numeric], max_rows, rng)
    rows = []
    for name in numeric:
        ref_all, cur_all = _numeric_values(reference[name]), _numeric_values(current[name])
        ref_ok, cur_ok = np.isfinite(ref_all), np.isfinite(cur_all)
        ref_s, cur_s = _finite(_numeric_values(ref_sample[name])), _finite(_numeric_values(cur_sample[name]))
        ks, ks_p = ks_statistic(ref_s, cur_s)
        rows.append({
            "feature": name,
            "psi": psi(ref_s, cur_s, bins=bins),
            "ks": ks,
            "ks_pvalue": ks_p,
            "reference_mean": float(ref_all[ref_ok].mean()) if ref_ok.any() else math.nan,
            "current_mean": float(cur_all[cur_ok].mean()) if cur_ok.any() else math.nan,
            "reference_missing": float(1.0 - ref_ok.mean()) if len(ref_all) else math.nan,
            "current_missing": float(1.0 - cur_ok.mean()) if len(cur_all) else math.nan,
        })
    table = pd.DataFrame(rows, columns=["feature", *FEATURE_DRIFT_COLUMNS]).set_index("feature")
    return table.sort_values("psi", ascending=False, na_position="last", kind="stable")


def _cross_sectional_z(scores: pd.Series) -> pd.Series:
    """Per-date z-score of ``scores`` (index with a ``date`` level); NaN where a date's std is 0 or
    undefined. Without a ``date`` level the whole series is one cross-section."""
    scores = pd.to_numeric(scores, errors="coerce").astype(float)
    names = scores.index.names or []
    keys = scores.index.get_level_values("date") if "date" in names else np.zeros(len(scores))
    grouped = scores.groupby(keys)
    std = grouped.transform("std")
    return (scores - grouped.transform("mean")) / std.where(std > 0)


def _moments(values: np.ndarray) -> tuple[float, float]:
    if len(values) == 0:
        return math.nan, math.nan
    return float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else math.nan


def prediction_drift(reference_scores: pd.Series, current_scores: pd.Series, bins: int = 10) -> dict[str, float]:
    """Drift of the champion's scores, new window against the reference (its training/holdout window).

    Raw scores (``raw_*``): a level or scale change; for a ranking model this can move with the market
    without hurting the ordering. Per-date cross-sectional z-scores (``zscore_*``): a change in the
    *shape* of each day's cross-section (tails, skew, ties), which does touch the ordering.
    Keys: ``raw_psi``, ``raw_ks``, ``raw_ks_pvalue``, ``reference_mean``, ``current_mean``,
    ``mean_shift`` (current - reference), ``reference_std``, ``current_std``, ``std_shift``,
    ``mean_shift_in_std`` (mean shift in reference standard deviations), ``zscore_psi``, ``zscore_ks``,
    ``zscore_ks_pvalue``; and the headline ``psi`` and ``ks``: the larger defined value of the raw and
    z-score versions, so either kind of drift can trigger retraining. NaN where undefined."""
    ref_raw = _finite(pd.to_numeric(reference_scores, errors="coerce"))
    cur_raw = _finite(pd.to_numeric(current_scores, errors="coerce"))
    ref_z, cur_z = _finite(_cross_sectional_z(reference_scores)), _finite(_cross_sectional_z(current_scores))
    raw_psi, z_psi = psi(ref_raw, cur_raw, bins=bins), psi(ref_z, cur_z, bins=bins)
    raw_ks, raw_p = ks_statistic(ref_raw, cur_raw)
    z_ks, z_p = ks_statistic(ref_z, cur_z)
    ref_mean, ref_std = _moments(ref_raw)
    cur_mean, cur_std = _moments(cur_raw)
    mean_shift = cur_mean - ref_mean
    return {
        "psi": _nanmax(raw_psi, z_psi),
        "ks": _nanmax(raw_ks, z_ks),
        "raw_psi": raw_psi,
        "raw_ks": raw_ks,
        "raw_ks_pvalue": raw_p,
        "reference_mean": ref_mean,
        "current_mean": cur_mean,
        "mean_shift": mean_shift,
        "reference_std": ref_std,
        "current_std": cur_std,
        "std_shift": cur_std - ref_std,
        "mean_shift_in_std": mean_shift / ref_std if ref_std > 0 else math.nan,
        "zscore_psi": z_psi,
        "zscore_ks": z_ks,
        "zscore_ks_pvalue": z_p,
    }


def _nanmax(*values: float) -> float:
    defined = [v for v in values if _is_number(v)]
    return max(defined) if defined else math.nan


def realized_rank_ic(scores: pd.Series, labels: pd.Series) -> pd.Series:
    """Per-date Spearman IC of ``scores`` against ``labels`` (both on a (date, symbol) index), on the
    rows where both are known: labels arrive ``horizon`` days late, so recent dates simply drop out."""
    joined = pd.concat({"score": scores, "label": labels}, axis=1, join="inner").dropna()
    return per_date_ic(joined["label"], joined["score"], joined.index.get_level_values("date"), method="spearman")


def performance_decay(
    scores: pd.Series,
    labels: pd.Series,
    reference_rank_ic: float,
    *,
    min_dates: int = 20,
    horizon: int = 1,
) -> dict[str, Any]:
    """Realized rank IC of the champion's predictions against the rank IC it showed on its holdout.

    Keys: ``realized_rank_ic`` (mean per-date rank IC), ``n_dates``, ``reference_rank_ic``, ``decay``
    (reference - realized; positive is worse), ``standard_error`` of the mean rank IC, ``t_stat``
    (mean / standard error), ``enough_dates`` (``n_dates >= min_dates``: daily rank ICs are noisy, a
    handful of dates says little). NaN where undefined. Labels over ``horizon`` days overlap, so
    neighbouring dates' ICs are correlated: the standard error counts ``n_dates / horizon``
    independent dates, not ``n_dates``."""
    if not (isinstance(horizon, numbers.Integral) and horizon >= 1):
        raise ValueError(f"horizon must be a positive integer, got {horizon!r}")
    ic = realized_rank_ic(scores, labels)
    n = len(ic)
    realized = float(ic.mean()) if n else math.nan
    sd = float(ic.std(ddof=1)) if n > 1 else math.nan
    se = sd / math.sqrt(max(n / horizon, 1.0)) if n > 1 else math.nan
    t_stat = realized / se if n > 1 and se > 0 else math.nan
    reference = float(reference_rank_ic) if _is_number(reference_rank_ic) else math.nan
    return {
        "realized_rank_ic": realized,
        "n_dates": int(n),
        "reference_rank_ic": reference,
        "decay": reference - realized,
        "standard_error": se,
        "t_stat": t_stat,
        "enough_dates": bool(n >= min_dates),
    }


def data_age_days(training_end: Any, dates: Any) -> int:
    """Trading days of data newer than ``training_end``: the distinct ``dates`` strictly after it."""
    stamps = pd.DatetimeIndex(pd.to_datetime(pd.Index(dates).unique()))
    return int((stamps > pd.Timestamp(training_end)).sum())


@dataclass(frozen=True)
class DriftThresholds:
    """When the champion is stale. ``None`` switches a rule off."""

    #: a feature (or the score distribution) above this PSI is worth a look: severity "warn".
    psi_warn: float = 0.1
    #: a feature above this PSI counts as drifted.
    psi_retrain: float = 0.25
    #: retrain when more than this share of features is drifted (PSI > psi_retrain).
    # 0.4: on the 20-stock panel, 0.3 flagged half of the calm 60-date windows (benchmarks/drift.py).
    max_drifted_share: float = 0.4
    #: retrain when the champion's score PSI is above this.
    prediction_psi_retrain: float = 0.25
    #: retrain when the realized rank IC (with enough labelled dates) falls below this...
    min_realized_rank_ic: float | None = 0.0
    #: ...or falls by more than this below the champion's holdout rank IC.
    max_decay: float | None = 0.03
    #: a performance rule fires only when its breach is this many standard errors of the realized
    #: rank IC beyond the bound (1.645: one-sided 5%), so the rule scales with the universe and the
    #: dates seen: on 20 stocks a per-date rank IC has a spread near 0.23, so 60 dates of 5-day labels
    #: (12 independent) give a standard error near 0.07, and a slip of 0.03 is noise. None: judge the
    #: point estimate alone.
    performance_z: float | None = 1.645
    #: retrain when the champion's training data ends more than this many trading days before the newest data.
    max_age_days: int | None = None

    def validate(self) -> DriftThresholds:
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None and f.name in ("min_realized_rank_ic", "max_decay", "max_age_days", "performance_z"):
                continue
            if not _is_number(value):
                raise ValueError(f"{f.name} must be a finite number, got {value!r}")
        if self.psi_warn < 0:
            raise ValueError(f"psi_warn must be >= 0, got {self.psi_warn}")
        if self.psi_retrain <= 0:
            raise ValueError(f"psi_retrain must be > 0, got {self.psi_retrain}")
        if self.psi_warn > self.psi_retrain:
            raise ValueError(f"psi_warn ({self.psi_warn}) must not exceed psi_retrain ({self.psi_retrain})")
        if not 0 <= self.max_drifted_share < 1:
            raise ValueError(f"max_drifted_share must be in [0, 1), got {self.max_drifted_share}")
        if self.prediction_psi_retrain <= 0:
            raise ValueError(f"prediction_psi_retrain must be > 0, got {self.prediction_psi_retrain}")
        if self.min_realized_rank_ic is not None and not -1 <= self.min_realized_rank_ic <= 1:
            raise ValueError(f"min_realized_rank_ic must be in [-1, 1], got {self.min_realized_rank_ic}")
        if self.max_decay is not None and self.max_decay < 0:
            raise ValueError(f"max_decay must be >= 0, got {self.max_decay}")
        if self.performance_z is not None and self.performance_z < 0:
            raise ValueError(f"performance_z must be >= 0, got {self.performance_z}")
        if self.max_age_days is not None and (
            isinstance(self.max_age_days, bool) or not isinstance(self.max_age_days, numbers.Integral)
            or self.max_age_days < 0
        ):
            raise ValueError(f"max_age_days must be an integer >= 0, got {self.max_age_days!r}")
        return self


@dataclass
class RetrainDecision:
    """``reasons``: one sentence per crossed threshold (the retrain ones, or the warnings when nothing
    calls for retraining); ``notes``: metrics that could not be judged; ``causes``: short labels of
    the retrain triggers (``feature_drift``, ``prediction_drift``, ``performance``, ``age``)."""

    retrain: bool
    reasons: list[str]
    severity: str  # "ok" | "warn" | "retrain"
    notes: list[str] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)

    def run_tags(self) -> dict[str, str]:
        """Tags for the run a drift sensor launches: string values, keys Dagster accepts."""
        return {
            "plml/trigger": "drift",
            "plml/severity": self.severity,
            "plml/causes": ",".join(self.causes) or "none",
            "plml/reason": "; ".join(self.reasons)[:4000] or "no threshold crossed",
        }


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def decide_retraining(summary: Mapping[str, Any], thresholds: DriftThresholds) -> RetrainDecision:
    """Apply ``thresholds`` to a ``summarize`` dict. Missing or NaN entries are noted as not measured
    and skipped; the performance rules apply only when ``enough_dates`` is true."""
    thresholds.validate()
    retrain: list[str] = []
    warn: list[str] = []
    notes: list[str] = []
    causes: list[str] = []

    def measured(key: str, what: str) -> float | None:
        value = summary.get(key)
        if _is_number(value):
            return float(value)
        notes.append(f"{what} not measured")
        return None

    share = measured("feature_drift_share", "feature drift share")
    names = summary.get("top_drifted")
    top = [str(name) for name in names][:5] if isinstance(names, (list, tuple, pd.Index, pd.Series, np.ndarray)) else []
    top_text = f" (most drifted: {', '.join(top)})" if top else ""
    if share is not None and share > thresholds.max_drifted_share:
        n, n_drifted = summary.get("n_features"), summary.get("n_drifted")
        count = f"{int(n_drifted)} of {int(n)} features ({share:.0%})" if _is_number(n) and _is_number(n_drifted) \
            else f"{share:.0%} of features"
        retrain.append(
            f"feature drift: {count} have PSI above {thresholds.psi_retrain}, more than "
            f"the {thresholds.max_drifted_share:.0%} allowed{top_text}"
        )
        causes.append("feature_drift")

    max_psi = measured("max_feature_psi", "max feature PSI")
    if max_psi is not None and max_psi > thresholds.psi_warn:
        warn.append(f"feature drift: max feature PSI {max_psi:.3f} is above the warning level {thresholds.psi_warn}{top_text}")

    prediction_psi = measured("prediction_psi", "prediction PSI")
    if prediction_psi is not None:
        if prediction_psi > thresholds.prediction_psi_retrain:
            retrain.append(
                f"prediction drift: the champion's score PSI {prediction_psi:.3f} is above "
                f"{thresholds.prediction_psi_retrain}"
            )
            causes.append("prediction_drift")
        elif prediction_psi > thresholds.psi_warn:
            warn.append(
                f"prediction drift: the champion's score PSI {prediction_psi:.3f} is above the warning level "
                f"{thresholds.psi_warn}"
            )

    if thresholds.min_realized_rank_ic is not None or thresholds.max_decay is not None:
        if summary.get("enough_dates") is not True:
            notes.append("realized rank IC not judged: too few dates with known labels")
        else:
            margin, margin_text = 0.0, ""
            if thresholds.performance_z is not None:
                se = summary.get("standard_error")
                if _is_number(se):
                    margin = thresholds.performance_z * float(se)
                    margin_text = f" by more than {thresholds.performance_z:g} standard errors ({margin:.4f})"
                else:
                    notes.append("realized rank IC has no standard error: its point estimate is judged alone")
            realized = measured("realized_rank_ic", "realized rank IC")
            if realized is not None and thresholds.min_realized_rank_ic is not None:
                if realized < thresholds.min_realized_rank_ic - margin:
                    retrain.append(f"performance: realized rank IC {realized:.4f} is below the floor "
                                   f"{thresholds.min_realized_rank_ic}{margin_text}")
                    causes.append("performance")
                elif realized < thresholds.min_realized_rank_ic:
                    warn.append(f"performance: realized rank IC {realized:.4f} is below the floor "
                                f"{thresholds.min_realized_rank_ic}, within noise (standard error {margin / thresholds.performance_z:.4f})")
            if thresholds.max_decay is not None:
                decay = measured("decay", "rank IC decay")
                if decay is not None and decay > thresholds.max_decay + margin:
                    retrain.append(
                        f"performance: realized rank IC is {decay:.4f} below the champion's holdout rank IC, "
                        f"more than the {thresholds.max_decay} allowed decay{margin_text}"
                    )
                    if "performance" not in causes:
                        causes.append("performance")
                elif decay is not None and decay > thresholds.max_decay:
                    warn.append(f"performance: realized rank IC is {decay:.4f} below the champion's holdout rank IC, "
                                f"more than the {thresholds.max_decay} allowed decay but within noise")

    if thresholds.max_age_days is not None:
        age = measured("age_days", "champion age")
        if age is not None and age > thresholds.max_age_days:
            retrain.append(
                f"age: the champion's training data ends {int(age)} trading days before the newest data, "
                f"more than the {thresholds.max_age_days} allowed"
            )
            causes.append("age")

    if retrain:
        return RetrainDecision(True, retrain, "retrain", notes, causes)
    return RetrainDecision(False, warn, "warn" if warn else "ok", notes, [])


def summarize(
    feature_table: pd.DataFrame,
    prediction: Mapping[str, Any],
    performance: Mapping[str, Any],
    thresholds: DriftThresholds,
    age_days: int | None,
    *,
    top: int = 10,
) -> dict[str, Any]:
    """The flat dict ``decide_retraining`` reads, from ``feature_drift``, ``prediction_drift`` and
    ``performance_decay`` results. ``feature_drift_share`` is the share of features with a defined
    PSI whose PSI is above ``thresholds.psi_retrain``; ``top_drifted`` lists up to ``top`` features
    above ``thresholds.psi_warn``, most drifted first. Values are plain Python (metadata-ready)."""
    values = pd.to_numeric(feature_table["psi"], errors="coerce") if "psi" in feature_table else pd.Series(dtype=float)
    values = values[np.isfinite(values)]
    drifted = values > thresholds.psi_retrain
    above_warn = values[values > thresholds.psi_warn].sort_values(ascending=False, kind="stable")

    def number(mapping: Mapping[str, Any], key: str) -> float:
        value = mapping.get(key)
        return float(value) if _is_number(value) else math.nan

    return {
        "feature_drift_share": float(drifted.mean()) if len(values) else math.nan,
        "max_feature_psi": float(values.max()) if len(values) else math.nan,
        "n_features": int(len(values)),
        "n_drifted": int(drifted.sum()),
        "top_drifted": [str(name) for name in above_warn.index[:top]],
        "prediction_psi": number(prediction, "psi"),
        "realized_rank_ic": number(performance, "realized_rank_ic"),
        "decay": number(performance, "decay"),
        "standard_error": number(performance, "standard_error"),
        "enough_dates": bool(performance.get("enough_dates", False)),
        "age_days": int(age_days) if age_days is not None else None,
    }


#: Causes an incremental update can answer: the market is the same, the champion is only older or
#: slipping. A shift in the inputs or in the scores asks for a model fitted from scratch.
INCREMENTAL_CAUSES = frozenset({"age", "performance"})


def retrain_mode(decision: RetrainDecision) -> str:
    """The retraining policy: 'incremental' (update the champion on the new dates) when every cause of
    the decision is staleness or a performance slip, 'full' when the features or the scores drifted."""
    causes = set(decision.causes)
    return "incremental" if causes and causes <= INCREMENTAL_CAUSES else "full"


def importance_weighted_drift(feature_table: pd.DataFrame, profile: Mapping[str, float], top: int = 10) -> dict:
    """Feature drift weighted by the model's reliance on each feature: ``psi`` and ``ks`` are the
    averages of the per-feature statistics weighted by the features' shares of mean |contribution|
    (``profile``, e.g. the champion's SHAP profile), over the features both know; ``features`` lists
    the ``top`` features by weight with their share, PSI and weighted PSI. A drifted feature the model
    barely reads moves this little; one it leans on moves it a lot."""
    weights = pd.Series({str(k): float(v) for k, v in profile.items()}, dtype=float)
    common = [f for f in feature_table.index if f in weights.index]
    if not common or weights[common].sum() <= 0:
        return {"psi": float("nan"), "ks": float("nan"), "coverage": 0.0, "features": []}
    share = weights[common] / weights[common].sum()
    table = feature_table.loc[common]
    ranked = share.sort_values(ascending=False).index[:top]
    return {
        "psi": float((share * table["psi"]).sum()),
        "ks": float((share * table["ks"]).sum()) if "ks" in table else float("nan"),
        "coverage": float(weights[common].sum() / weights.sum()),
        "features": [{"feature": f, "share": round(float(share[f]), 4), "psi": round(float(table.loc[f, "psi"]), 4),
                      "weighted_psi": round(float(share[f] * table.loc[f, "psi"]), 5)} for f in ranked],
    }


def profile_drift(reference: Mapping[str, float], current: Mapping[str, float], top: int = 10) -> dict:
    """How the model's reliance on its features moved between ``reference`` (mean |contribution| per
    feature where it was validated, e.g. the champion's holdout profile recorded at registration)
    and ``current`` (the same on new data). Both are turned into shares of their total:

    - ``shift``: total variation distance between the shares, 0 (the same reliance) to 1 (disjoint);
    - ``rank_corr``: Spearman correlation of the shares over the features both know;
    - ``top_overlap``: the share of the reference's ``top`` features still in the current top;
    - ``features``: the ``top`` features by current share, with both shares and the change.

    A model whose scores now come from other features than on its holdout is being read differently
    by the market it scores, even where each feature's distribution (PSI) moved little."""
    ref = pd.Series({str(k): float(v) for k, v in reference.items()}, dtype=float).abs()
    cur = pd.Series({str(k): float(v) for k, v in current.items()}, dtype=float).abs()
    if ref.sum() <= 0 or cur.sum() <= 0:
        return {"shift": float("nan"), "rank_corr": float("nan"), "top_overlap": float("nan"), "features": []}
    union = ref.index.union(cur.index)
    ref_share = (ref / ref.sum()).reindex(union, fill_value=0.0)
    cur_share = (cur / cur.sum()).reindex(union, fill_value=0.0)
    common = ref.index.intersection(cur.index)
    rank_corr = float(ref_share[common].rank().corr(cur_share[common].rank())) if len(common) >= 3 else float("nan")
    ref_top = set(ref_share.sort_values(ascending=False).index[:top])
    cur_ranked = cur_share.sort_values(ascending=False).index[:top]
    return {
        "shift": float(0.5 * (ref_share - cur_share).abs().sum()),
        "rank_corr": rank_corr,
        "top_overlap": float(len(ref_top & set(cur_ranked)) / max(len(ref_top), 1)),
        "features": [{"feature": f, "reference_share": round(float(ref_share[f]), 4), "current_share": round(float(cur_share[f]), 4),
                      "change": round(float(cur_share[f] - ref_share[f]), 4)} for f in cur_ranked],
    }
