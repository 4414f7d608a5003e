"""Feature importance of a model family across CV folds: gain (trees) and within-date permutation.

Permutation importance is the drop in mean per-date rank IC on a fold's validation rows when one
feature is shuffled *across symbols within each date*. Each date keeps its set of values and the
feature keeps its time profile (its cross-sectional level and spread on every date); only which
symbol holds which value is broken, which is exactly the information a cross-sectional ranker
uses. A plain row shuffle would also move values between dates, so a feature whose level drifts
over time would look important (or harmless) for reasons unrelated to ranking symbols.

Sequence nets read ``lookback_dates`` of history per scored row: the history rows are shuffled
with the same within-date rule, in the same frame, so a net never sees a shuffled present next to
an intact past.
"""

from __future__ import annotations

import itertools
import math
import time
import zlib
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd

from plml_assets.lib.models.base import Model
from plml_assets.lib.models.training import early_stopping_split, fit_model, predict_rows, spread_dates
from plml_assets.lib.validation.metrics import per_date_ic

__all__ = [
    "fold_importances",
    "importance_stability",
    "permutation_importance",
    "shuffle_within_dates",
    "summarize_importances",
]

Log = Callable[[str], None]


def _noop(_: str) -> None:
    return None


def _dates_of(X: pd.DataFrame) -> np.ndarray:
    return X.index.get_level_values("date").to_numpy()


def shuffle_within_dates(values: np.ndarray, dates: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A copy of ``values`` with each date's values permuted among that date's rows: every date
    keeps its multiset of values. Rows need not be sorted by date."""
    values = np.asarray(values)
    codes = pd.factorize(np.asarray(dates))[0]
    if len(codes) != len(values):
        raise ValueError(f"{len(values)} values but {len(codes)} dates; give one date per value")
    # Both orders list the rows date by date (same block sizes, same block order); within a date,
    # `slots` keeps the row order and `donors` is random, so slot k of a date gets a random value
    # of the same date.
    slots = np.argsort(codes, kind="stable")
    donors = np.lexsort((rng.random(len(codes)), codes))
    out = values.copy()
    out[slots] = values[donors]
    return out


def _feature_rng(seed: int, feature: str, *extra: int) -> np.random.Generator:
    """One stream per (seed, feature, ...): a feature's importance does not depend on which other
    features are scored or in what order. crc32, not hash(): str hashes change per process."""
    return np.random.default_rng([int(seed), zlib.crc32(feature.encode()), *map(int, extra)])


def _rows_read(dates: np.ndarray, scored: np.ndarray, lookback: int) -> np.ndarray:
    """Positions of the rows a model reads to score ``scored``: those rows alone, or for a model with
    history every row from ``lookback`` dates before the first scored date to the last (the span
    ``predict_rows`` passes), so scores match ``predict_rows`` on the whole panel."""
    if lookback == 0:
        return np.unique(scored)
    unique = np.unique(dates)
    wanted = dates[scored]
    first = unique[max(int(np.searchsorted(unique, wanted.min())) - lookback, 0)]
    return np.flatnonzero((dates >= first) & (dates <= wanted.max()))


def _mean_rank_ic(y: np.ndarray, predictions: np.ndarray, dates: np.ndarray) -> float:
    ic = per_date_ic(y, predictions, dates, method="spearman")
    return float(ic.mean()) if len(ic) else math.nan


def permutation_importance(
    model: Model,
    X: pd.DataFrame,
    y: pd.Series,
    rows: np.ndarray,
    *,
    features: Sequence[str] | None = None,
    repeats: int = 2,
    seed: int = 0,
    max_dates: int | None = 60,
) -> pd.Series:
    """Drop in mean per-date rank IC on the validation rows ``rows`` (positions in ``X``) when one
    feature is shuffled across symbols within each date, averaged over ``repeats`` seeded shuffles.

    Scores come from :func:`~plml_assets.lib.models.training.predict_rows`, so a sequence net gets its
    history; the feature is shuffled within date on the history rows too. ``max_dates`` keeps an
    evenly spread subsample of the validation dates (whole cross-sections) to bound the cost
    (None: all). ``features`` defaults to the model's own features. Returns a Series feature ->
    importance (positive: the feature helps), with ``attrs`` ``base_rank_ic`` and ``n_dates``.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if len(y) != len(X):
        raise ValueError(f"X has {len(X)} rows but y has {len(y)}")
    if features is None:
        features = list(getattr(model, "feature_names_", None) or X.columns)
    features = [str(f) for f in features]
    missing = [f for f in features if f not in X.columns]
    if missing:
        raise ValueError(f"feature(s) {missing[:10]} not in X")
    dates = _dates_of(X)
    scored = spread_dates(np.asarray(rows, dtype=np.int64), dates, max_dates)
    result = pd.Series(np.nan, index=pd.Index(features, name="feature"), name="permutation_importance")
    result.attrs.update(base_rank_ic=math.nan, n_dates=0)
    if len(scored) == 0:
        return result

    # The frame the model reads: the scored rows, plus for a net the dates of history before them.
    used = _rows_read(dates, scored, int(model.lookback_dates))
    frame = X.iloc[used].copy()
    local = np.searchsorted(used, scored)
    frame_dates = dates[used]
    y_scored = np.asarray(y, dtype="float64")[scored]
    scored_dates = dates[scored]

    base = _mean_rank_ic(y_scored, predict_rows(model, frame, local), scored_dates)
    result.attrs.update(base_rank_ic=base, n_dates=int(len(np.unique(scored_dates))))
    if not np.isfinite(base):
        return result
    for feature in features:
        original = frame[feature].to_numpy(copy=True)
        rng = _feature_rng(seed, feature)
        drops = []
        for _ in range(repeats):
            frame[feature] = shuffle_within_dates(original, frame_dates, rng)
            drops.append(base - _mean_rank_ic(y_scored, predict_rows(model, frame, local), scored_dates))
        frame[feature] = original
        result[feature] = float(np.nanmean(drops)) if np.isfinite(drops).any() else math.nan
    return result


def _normalised_gain(model: Model, columns: Sequence[str]) -> pd.Series:
    """Total gain per feature as a share of the model's total (trees); NaN for models without gain."""
    if not hasattr(model, "feature_importance"):
        return pd.Series(np.nan, index=list(columns), dtype="float64")
    # "total_gain": XGBoost's default kind; LightGBM maps it to its (total) "gain".
    gain = pd.Series(model.feature_importance("total_gain"), dtype="float64").reindex(list(columns)).fillna(0.0)
    total = gain.sum()
    return gain / total if total > 0 else gain  # a tree without a single split: all zeros


def fold_importances(
    family: str,
    params: dict,
    X: pd.DataFrame,
    y: pd.Series,
    folds: list[tuple[np.ndarray, np.ndarray]],
    fold_columns: list[list[str]],
    horizon: int,
    *,
    repeats: int = 2,
    max_dates: int | None = 60,
    seed: int = 0,
    log: Log | None = None,
) -> pd.DataFrame:
    """Fit one ``family`` model per fold on the fold's training rows and own columns with
    :func:`~plml_assets.lib.models.training.fit_model` (the recipe ``cross_validate`` uses: pass the same
    target, e.g. the excess return), then measure its gain importance (trees, normalised to sum 1;
    NaN for nets) and its within-date permutation importance on the fold's validation rows.

    Returns a long table, one row per fold x fold feature: ``fold`` (1-based), ``feature``,
    ``gain``, ``permutation``, ``rank_in_fold`` (1 = largest permutation importance in the fold),
    ``base_rank_ic`` (the fold's unshuffled validation rank IC on the scored dates).
    """
    log = log or _noop
    if len(fold_columns) != len(folds):
        raise ValueError(f"{len(fold_columns)} fold column lists for {len(folds)} folds")
    dates = _dates_of(X)
    parts = []
    for k, ((train_idx, test_idx), columns) in enumerate(zip(folds, fold_columns), start=1):
        columns = [str(c) for c in columns]
        if len(train_idx) == 0 or len(test_idx) == 0 or not columns:
            raise ValueError(
                f"fold {k}/{len(folds)} has {len(train_idx)} training rows, {len(test_idx)} test rows and "
                f"{len(columns)} columns: the folds do not match the data"
            )
        try:
            early_stopping_split(dates[train_idx], horizon)
        except ValueError as exc:
            raise ValueError(f"fold {k}/{len(folds)}: {exc}; use fewer folds or more history") from exc
        start = time.perf_counter()
        Xf = X[columns]
        model, _ = fit_model(family, params, Xf.iloc[train_idx], y.iloc[train_idx], horizon, calendar=np.unique(dates))
        part = fold_importance(model, Xf, y, test_idx, k, repeats=repeats, seed=seed, max_dates=max_dates)
        parts.append(part)
        log(describe_fold_importance(part, family, len(folds)) + f" ({time.perf_counter() - start:.1f} s)")
    return pd.concat(parts, ignore_index=True)


def fold_importance(model: Model, Xf: pd.DataFrame, y: pd.Series, test_idx: np.ndarray, fold: int, *, repeats: int = 2,
                    seed: int = 0, max_dates: int | None = 60) -> pd.DataFrame:
    """One fold's rows of :func:`fold_importances` for a ``model`` fitted on the fold's training rows
    of ``Xf`` (the fold's own columns): gain and within-date permutation importance on ``test_idx``,
    the permutations seeded ``seed + fold``. ``{family}_cv`` calls it on the walk-forward models it fits."""
    columns = [str(c) for c in Xf.columns]
    gain = _normalised_gain(model, columns)
    permutation = permutation_importance(model, Xf, y, test_idx, features=columns, repeats=repeats, seed=seed + fold, max_dates=max_dates)
    part = pd.DataFrame({
        "fold": fold,
        "feature": columns,
        "gain": gain.reindex(columns).to_numpy(),
        "permutation": permutation.reindex(columns).to_numpy(),
    })
    part["rank_in_fold"] = part["permutation"].rank(ascending=False, method="min")
    part["base_rank_ic"] = permutation.attrs["base_rank_ic"]
    part.attrs["n_dates"] = permutation.attrs["n_dates"]
    return part


def describe_fold_importance(part: pd.DataFrame, family: str, n_folds: int) -> str:
    top = part.nlargest(3, "permutation")
    return (f"fold {int(part['fold'].iloc[0])}/{n_folds}: {family} on {len(part)} features, validation rank IC "
            f"{float(part['base_rank_ic'].iloc[0]):.4f} on {part.attrs.get('n_dates')} dates; top by permutation: "
            + ", ".join(f"{r.feature} {r.permutation:+.4f}" for r in top.itertuples()))


def _spearman(a: pd.Series, b: pd.Series) -> float:
    ra, rb = a.rank(), b.rank()
    if ra.nunique() < 2 or rb.nunique() < 2:
        return math.nan
    return float(np.corrcoef(ra.to_numpy(), rb.to_numpy())[0, 1])


def importance_stability(table: pd.DataFrame, column: str = "permutation") -> dict[str, float]:
    """How much the folds agree on which features matter.

    ``mean_spearman`` / ``min_spearman``: mean and min over fold pairs of the Spearman correlation
    of ``column``, on the features both folds have (non-NaN) — pairs with fewer than 2 such
    features or a constant side are undefined and skipped (``n_pairs`` counts the defined ones).
    ``share_positive``: share of features whose mean ``column`` over folds is > 0. With fewer than
    two folds the correlations are NaN and ``too_few_folds`` is 1.0 (else 0.0).
    """
    if column not in table.columns:
        raise ValueError(f"column {column!r} not in the importance table (has {list(table.columns)})")
    wide = table.pivot_table(index="feature", columns="fold", values=column, aggfunc="mean", dropna=False)
    folds = list(wide.columns)
    correlations = []
    for a, b in itertools.combinations(folds, 2):
        both = wide[[a, b]].dropna()
        if len(both) >= 2:
            rho = _spearman(both[a], both[b])
            if np.isfinite(rho):
                correlations.append(rho)
    means = wide.mean(axis=1).dropna()
    return {
        "mean_spearman": float(np.mean(correlations)) if correlations else math.nan,
        "min_spearman": float(np.min(correlations)) if correlations else math.nan,
        "share_positive": float((means > 0).mean()) if len(means) else math.nan,
        "n_folds": float(table["fold"].nunique()),
        "n_pairs": float(len(correlations)),
        "too_few_folds": float(table["fold"].nunique() < 2),
    }


def summarize_importances(table: pd.DataFrame) -> pd.DataFrame:
    """Per feature: mean and (population, ddof=0) std over folds of ``gain`` and ``permutation``,
    ``folds_present`` (folds whose columns held the feature) and ``positive_share`` (share of those
    folds with a positive permutation importance); sorted by mean permutation importance,
    descending (NaN last). Indexed by feature."""
    grouped = table.groupby("feature", sort=False)
    summary = pd.DataFrame({
        "gain_mean": grouped["gain"].mean(),
        "gain_std": grouped["gain"].std(ddof=0),
        "permutation_mean": grouped["permutation"].mean(),
        "permutation_std": grouped["permutation"].std(ddof=0),
        "folds_present": grouped["fold"].nunique(),
        "positive_share": grouped["permutation"].apply(lambda s: float((s > 0).mean())),
    })
    summary.index.name = "feature"
    return summary.sort_values("permutation_mean", ascending=False, na_position="last", kind="stable")
