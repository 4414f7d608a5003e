"""Feature selection for panel models.

The pipeline runs in a fixed order so that every decision is explainable:

1. quality filters on training rows: too many missing values, near-constant, leakage alarm
   (a feature that correlates with the forward-return label more than any honest signal could);
2. importance from XGBoost models fitted on each fold's training rows only
   (total gain, or the drop in validation rank-IC when the feature is permuted);
3. a greedy correlation filter: of a highly correlated pair, the more important feature stays;
4. a cut at ``max_features``.

Every input feature ends in exactly one of ``SelectionResult.selected`` / ``SelectionResult.dropped``.
Validation rows are only ever touched by the permutation mode, and only to score a model that was
fitted without them: selection must not peek at the periods the models are later evaluated on.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real

import numpy as np
import pandas as pd
import xgboost as xgb

IMPORTANCE_MODES = ("gain", "permutation", "shap_stable")
CORRELATION_METHODS = ("spearman", "pearson")

Fold = tuple[np.ndarray, np.ndarray]
Log = Callable[[str], None]

# Bounds memory of the missing-value scan on very long panels.
_MISSING_SCAN_CHUNK = 100_000


@dataclass(frozen=True)
class SelectionConfig:
    """Knobs of :func:`select_features`; call :meth:`validate` before use (``select_features`` does)."""

    max_features: int = 30
    # Share of training rows (with a known label) where the feature is missing or non-finite.
    max_missing_ratio: float = 0.2
    # Near-constant: zero spread, or the most frequent value covers more than this share of the
    # feature's non-missing training rows.
    max_mode_share: float = 0.99
    correlation_threshold: float = 0.95
    correlation_method: str = "spearman"
    # |corr(feature, label)| on training rows above this is treated as look-ahead leakage: real
    # return predictors have rank-ICs of a few hundredths.
    leakage_corr_threshold: float = 0.3
    importance: str = "gain"
    permutation_repeats: int = 1
    # "shap_stable": importance is the mean |TreeSHAP contribution| share on each fold's validation
    # rows, and a feature whose share varies across the folds by more than this coefficient of
    # variation (std / mean) is dropped: what the model credits it with does not hold from fold to fold.
    shap_max_cv: float = 1.0
    n_estimators: int = 60
    max_depth: int = 4
    learning_rate: float = 0.1
    # Histogram bins per feature of the importance models: a ranking of features needs far fewer
    # than a model that predicts (64 bins: 0.31 s per 40 rounds on 25k x 143 features, 256: 0.58 s).
    max_bin: int = 64
    n_threads: int = 1
    seed: int = 0
    # Seeded subsample of each fold's training (and, for permutation, validation) rows.
    sample_rows: int | None = 200_000
    # Seeded subsample of training rows for the near-constant, leakage and correlation statistics.
    stats_rows: int = 50_000

    def validate(self) -> None:
        _require_int(self, "max_features", minimum=1)
        _require_real(self, "max_missing_ratio", 0.0, 1.0, "[0, 1]")
        _require_real(self, "max_mode_share", 0.0, 1.0, "(0, 1]", low_open=True)
        _require_real(self, "correlation_threshold", 0.0, 1.0, "(0, 1]", low_open=True)
        _require_real(self, "leakage_corr_threshold", 0.0, 1.0, "(0, 1]", low_open=True)
        _require_choice(self, "correlation_method", CORRELATION_METHODS)
        _require_choice(self, "importance", IMPORTANCE_MODES)
        _require_int(self, "permutation_repeats", minimum=1)
        _require_real(self, "shap_max_cv", 0.0, float("inf"), "(0, inf)", low_open=True)
        _require_int(self, "n_estimators", minimum=1)
        _require_int(self, "max_depth", minimum=1)
        _require_int(self, "max_bin", minimum=2)
        _require_real(self, "learning_rate", 0.0, 1.0, "(0, 1]", low_open=True)
        _require_int(self, "n_threads", minimum=1)
        _require_int(self, "seed", minimum=0)
        if self.sample_rows is not None:
            _require_int(self, "sample_rows", minimum=2)
        _require_int(self, "stats_rows", minimum=3)


def _require_int(config: SelectionConfig, name: str, minimum: int) -> None:
    value = getattr(config, name)
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"SelectionConfig.{name} must be an integer >= {minimum}, got {value!r}")


def _require_real(
    config: SelectionConfig, name: str, low: float, high: float, shown: str, low_open: bool = False
) -> None:
    value = getattr(config, name)
    ok = isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value)
    ok = ok and (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise ValueError(f"SelectionConfig.{name} must be a number in {shown}, got {value!r}")


def _require_choice(config: SelectionConfig, name: str, allowed: Sequence[str]) -> None:
    value = getattr(config, name)
    if value not in allowed:
        raise ValueError(f"SelectionConfig.{name} must be one of {list(allowed)}, got {value!r}")


@dataclass
class SelectionResult:
    selected: list[str]
    # Features that reached the importance stage, normalized to sum 1, in descending order.
    importances: dict[str, float]
    # Feature -> human-readable reason, in the order the stages dropped them.
    dropped: dict[str, str]
    config: SelectionConfig = field(default_factory=SelectionConfig)

    def to_frame(self) -> pd.DataFrame:
        """One row per input feature: selected first (by importance), then dropped."""
        rows = [
            {"feature": name, "status": "selected", "importance": self.importances[name], "reason": ""}
            for name in self.selected
        ]
        rows += [
            {
                "feature": name,
                "status": "dropped",
                "importance": self.importances.get(name, np.nan),
                "reason": reason,
            }
            for name, reason in self.dropped.items()
        ]
        frame = pd.DataFrame(rows, columns=["feature", "status", "importance", "reason"])
        return frame.astype({"importance": "float64"})


def select_features(
    X: pd.DataFrame,
    y: pd.Series,
    folds: Sequence[Fold],
    config: SelectionConfig = SelectionConfig(),
    log: Log | None = None,
) -> SelectionResult:
    """Select features for ``y`` from ``X`` using only the folds' training rows for every fit.

    ``folds`` holds (train_positions, valid_positions) integer row positions into ``X``; rows whose
    label is NaN are ignored everywhere.
    """
    config.validate()
    emit: Log = log or (lambda _message: None)
    features = _check_frame(X, y)
    values = X.to_numpy(dtype=np.float32, copy=True)
    values[~np.isfinite(values)] = np.nan  # XGBoost and the statistics treat inf as missing
    labels = y.to_numpy(dtype=np.float64, na_value=np.nan)
    need_valid = config.importance in ("permutation", "shap_stable")
    fold_rows = _check_folds(folds, labelled=np.isfinite(labels), need_valid=need_valid)
    seeds = np.random.SeedSequence(config.seed).spawn(1 + len(fold_rows))
    train_rows = np.unique(np.concatenate([train for train, _ in fold_rows]))

    dropped: dict[str, str] = {}
    stats_rows = _subsample(train_rows, config.stats_rows, np.random.default_rng(seeds[0]))
    # Ranks (Spearman) of the statistics rows, once: a column's ranks do not depend on the others,
    # so the leakage check and the correlation filter read their columns from the same matrix.
    prepared = _prepare(values[stats_rows], config.correlation_method)
    candidates = _quality_filter(values, labels, features, train_rows, stats_rows, prepared, config, dropped)
    emit(
        f"quality filters on {train_rows.size:,} training rows: kept {len(candidates)} of "
        f"{len(features)} features, dropped {len(dropped)}"
    )
    if not candidates:
        counts = _reason_counts(dropped)
        raise ValueError(f"every feature was dropped ({counts}); nothing left to select")

    columns = np.array([features.index(name) for name in candidates], dtype=np.int64)
    importance, variation = _importance(values[:, columns], labels, X.index, fold_rows, seeds[1:], config, emit)
    if variation is not None:  # shap_stable: drop what the folds do not agree on
        unstable = [i for i in range(len(candidates)) if variation[i] > config.shap_max_cv]
        for i in unstable:
            dropped[candidates[i]] = (f"SHAP contribution unstable across {len(fold_rows)} folds "
                                      f"(coefficient of variation {variation[i]:.2f} > {config.shap_max_cv:g})")
        emit(f"SHAP stability across folds: dropped {len(unstable)} of {len(candidates)} features")
        keep = [i for i in range(len(candidates)) if i not in set(unstable)]
        if not keep:
            raise ValueError(f"every feature's SHAP contribution is unstable across the folds (shap_max_cv={config.shap_max_cv:g})")
        candidates, importance = [candidates[i] for i in keep], importance[keep]
    order = sorted(range(len(candidates)), key=lambda i: (-importance[i], i))
    ranked = [candidates[i] for i in order]
    importances = {candidates[i]: float(importance[i]) for i in order}

    kept = _correlation_filter(prepared, features, ranked, config, dropped)
    emit(
        f"correlation filter (|{config.correlation_method}| > {config.correlation_threshold}): "
        f"kept {len(kept)} of {len(ranked)}"
    )
    for rank, name in enumerate(kept[config.max_features :], start=config.max_features + 1):
        dropped[name] = f"beyond max_features={config.max_features} (rank {rank})"
    selected = kept[: config.max_features]
    emit(f"selected {len(selected)} of {len(features)} features; top: {', '.join(selected[:5])}")
    return SelectionResult(selected=selected, importances=importances, dropped=dropped, config=config)


def _check_frame(X: pd.DataFrame, y: pd.Series) -> list[str]:
    if not isinstance(X, pd.DataFrame):
        raise TypeError(f"X must be a pandas DataFrame, got {type(X).__name__}")
    if not isinstance(y, pd.Series):
        raise TypeError(f"y must be a pandas Series, got {type(y).__name__}")
    if X.shape[1] == 0:
        raise ValueError("X has no feature columns")
    if not X.index.equals(y.index):
        raise ValueError(
            f"X and y are misaligned: X has {len(X):,} rows, y has {len(y):,}, and their indexes "
            "differ; align them on the same (date, symbol) index first"
        )
    features = [str(column) for column in X.columns]
    duplicates = sorted(name for name, count in Counter(features).items() if count > 1)
    if duplicates:
        raise ValueError(f"X has duplicate feature names: {duplicates}")
    non_numeric = [str(c) for c, dtype in X.dtypes.items() if not pd.api.types.is_numeric_dtype(dtype)]
    if non_numeric:
        raise ValueError(f"X has non-numeric features: {non_numeric}")
    return features


def _check_folds(
    folds: Sequence[Fold], labelled: np.ndarray, need_valid: bool
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Validate positions and keep only labelled rows of each fold."""
    if folds is None or len(folds) == 0:
        raise ValueError("no folds given: select_features needs at least one (train, valid) fold")
    n_rows = labelled.size
    checked = []
    for number, fold in enumerate(folds, start=1):
        where = f"fold {number}/{len(folds)}"
        if len(fold) != 2:
            raise ValueError(f"{where}: expected a (train_positions, valid_positions) pair")
        parts = []
        for kind, positions in zip(("training", "validation"), fold):
            positions = np.asarray(positions)
            integer = np.issubdtype(positions.dtype, np.integer)
            if positions.size and (positions.ndim != 1 or not integer):
                raise ValueError(f"{where}: {kind} positions must be a 1-D integer array")
            positions = positions.astype(np.int64).ravel()
            if positions.size and (positions.min() < 0 or positions.max() >= n_rows):
                raise ValueError(f"{where}: {kind} positions fall outside 0..{n_rows - 1}")
            parts.append(np.unique(positions[labelled[positions]]))
        train, valid = parts
        if train.size == 0:
            raise ValueError(f"{where}: training set is empty (no rows with a known label)")
        if need_valid and valid.size == 0:
            raise ValueError(f"{where}: validation set is empty, permutation importance needs one")
        overlap = np.intersect1d(train, valid, assume_unique=True)
        if overlap.size:
            raise ValueError(
                f"{where}: {overlap.size:,} rows are in both training and validation positions"
            )
        checked.append((train, valid))
    return checked


def _subsample(rows: np.ndarray, limit: int | None, rng: np.random.Generator) -> np.ndarray:
    if limit is None or rows.size <= limit:
        return rows
    return np.sort(rng.choice(rows, size=limit, replace=False))


def _reason_counts(dropped: dict[str, str]) -> str:
    counts = Counter(reason.split(":")[0].split(" ")[0] for reason in dropped.values())
    return ", ".join(f"{count} {kind}" for kind, count in counts.most_common())


# ---------------------------------------------------------------------------------------- quality


def _quality_filter(
    values: np.ndarray,
    labels: np.ndarray,
    features: list[str],
    train_rows: np.ndarray,
    stats_rows: np.ndarray,
    prepared: np.ndarray,
    config: SelectionConfig,
    dropped: dict[str, str],
) -> list[str]:
    missing = np.zeros(values.shape[1], dtype=np.int64)
    for start in range(0, train_rows.size, _MISSING_SCAN_CHUNK):
        missing += np.isnan(values[train_rows[start : start + _MISSING_SCAN_CHUNK]]).sum(axis=0)
    missing_ratio = missing / train_rows.size

    sample = values[stats_rows].astype(np.float64)
    remaining: list[int] = []
    for j, name in enumerate(features):
        if missing_ratio[j] > config.max_missing_ratio:
            dropped[name] = (
                f"missing {missing_ratio[j]:.1%} of training rows > {config.max_missing_ratio:.1%}"
            )
            continue
        reason = _near_constant_reason(sample[:, j], config.max_mode_share)
        if reason:
            dropped[name] = reason
            continue
        remaining.append(j)
    if not remaining:
        return []

    label_corr = _pairwise_corr(
        prepared[:, remaining], _prepare(labels[stats_rows][:, None], config.correlation_method)
    )[:, 0]
    kept = []
    for j, corr in zip(remaining, label_corr):
        if np.isfinite(corr) and abs(corr) > config.leakage_corr_threshold:
            dropped[features[j]] = (
                f"leakage alarm: |corr with label| {abs(corr):.2f} > {config.leakage_corr_threshold:.2f}"
            )
        else:
            kept.append(features[j])
    return kept


def _near_constant_reason(column: np.ndarray, max_mode_share: float) -> str | None:
    present = column[~np.isnan(column)]
    if present.size == 0 or np.ptp(present) == 0:
        return "near-constant: a single value on training rows"
    uniques, counts = np.unique(present, return_counts=True)
    top = int(np.argmax(counts))
    share = counts[top] / present.size
    if share > max_mode_share:
        return (
            f"near-constant: value {uniques[top]:.4g} covers {share:.1%} of training rows "
            f"> {max_mode_share:.1%}"
        )
    return None


# ------------------------------------------------------------------------------------ correlation


def _prepare(matrix: np.ndarray, method: str) -> np.ndarray:
    """Ranks (Spearman) or raw values (Pearson), NaN kept, as float64."""
    if method == "spearman":
        return _column_ranks(np.asarray(matrix, dtype=np.float64))
    return np.asarray(matrix, dtype=np.float64)


def _column_ranks(matrix: np.ndarray) -> np.ndarray:
    """Each column's ranks among its non-missing values, 1-based, ties averaged, NaN kept: what
    ``DataFrame.rank(na_option="keep")`` gives, about twice as fast."""
    out = np.full(matrix.shape, np.nan)
    for j in range(matrix.shape[1]):
        column = matrix[:, j]
        present = ~np.isnan(column)
        values = column[present]
        order = np.argsort(values, kind="stable")
        ordered = values[order]
        bounds = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1], True])  # where each run of ties starts
        ranks = np.empty(values.size)
        ranks[order] = np.repeat((bounds[:-1] + bounds[1:] + 1) / 2.0, np.diff(bounds))
        out[present, j] = ranks
    return out


def _pairwise_corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation of every column of ``a`` with every column of ``b`` on pairwise-complete rows.

    Vectorized through masked sums, so it costs a few matrix products instead of one pass per pair.
    For Spearman the ranks come from each column's own non-missing rows, a close approximation
    once the missing filter has run.
    """
    a = a - np.nanmean(a, axis=0)  # centring keeps the sums below well conditioned
    b = b - np.nanmean(b, axis=0)
    mask_a, mask_b = ~np.isnan(a), ~np.isnan(b)
    a0, b0 = np.where(mask_a, a, 0.0), np.where(mask_b, b, 0.0)
    ma, mb = mask_a.astype(np.float64), mask_b.astype(np.float64)
    n = ma.T @ mb
    sum_a, sum_b = a0.T @ mb, ma.T @ b0
    cov = n * (a0.T @ b0) - sum_a * sum_b
    var_a = n * ((a0 * a0).T @ mb) - sum_a**2
    var_b = n * (ma.T @ (b0 * b0)) - sum_b**2
    with np.errstate(divide="ignore", invalid="ignore"):
        corr = cov / np.sqrt(var_a * var_b)
    corr[(n < 3) | ~(var_a > 1e-12) | ~(var_b > 1e-12)] = np.nan
    return np.clip(corr, -1.0, 1.0)


def _correlation_filter(
    prepared: np.ndarray,
    features: list[str],
    ranked: list[str],
    config: SelectionConfig,
    dropped: dict[str, str],
) -> list[str]:
    """Walk features by importance; drop one whose |corr| with an already kept feature is too high.
    ``prepared`` holds every feature's column of the statistics rows, prepared by :func:`_prepare`."""
    position = {name: j for j, name in enumerate(features)}
    columns = prepared[:, [position[name] for name in ranked]]
    corr = np.abs(_pairwise_corr(columns, columns))
    kept: list[int] = []
    for i, name in enumerate(ranked):
        if kept:
            with_kept = corr[i, kept]
            worst = int(np.nanargmax(with_kept)) if np.isfinite(with_kept).any() else -1
            if worst >= 0 and with_kept[worst] > config.correlation_threshold:
                partner = ranked[kept[worst]]
                dropped[name] = f"|corr| {with_kept[worst]:.3f} with {partner} (more important)"
                continue
        kept.append(i)
    return [ranked[i] for i in kept]


# ------------------------------------------------------------------------------------- importance


def _importance(
    values: np.ndarray,
    labels: np.ndarray,
    index: pd.Index,
    fold_rows: list[tuple[np.ndarray, np.ndarray]],
    fold_seeds: Sequence[np.random.SeedSequence],
    config: SelectionConfig,
    emit: Log,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Importance per column of ``values``, averaged over folds, clipped at 0 and normalized to sum 1;
    with ``shap_stable``, also each column's coefficient of variation of its share across the folds
    (else None)."""
    n_features = values.shape[1]
    dates = index.get_level_values(0) if isinstance(index, pd.MultiIndex) else index
    total = np.zeros(n_features, dtype=np.float64)
    shares: list[np.ndarray] = []
    reference: xgb.QuantileDMatrix | None = None  # the first fold's histogram cuts, reused by the others
    for number, ((train, valid), seed) in enumerate(zip(fold_rows, fold_seeds), start=1):
        rng = np.random.default_rng(seed)
        rows = _subsample(train, config.sample_rows, rng)
        started = time.perf_counter()
        booster, matrix = _fit(values[rows], labels[rows], config, reference)
        reference = reference or matrix
        elapsed = time.perf_counter() - started
        message = f"fold {number}/{len(fold_rows)}: fitted on {rows.size:,} rows in {elapsed:.1f} s"
        if config.importance == "gain":
            scores = booster.get_score(importance_type="total_gain")
            total += np.array([scores.get(f"f{k}", 0.0) for k in range(n_features)])
        elif config.importance == "shap_stable":
            valid_rows = _subsample(valid, config.sample_rows, rng)
            contributions = booster.predict(xgb.DMatrix(values[valid_rows], nthread=config.n_threads), pred_contribs=True)[:, :-1]
            profile = np.abs(contributions).mean(axis=0)
            share = profile / profile.sum() if profile.sum() > 0 else np.zeros(n_features)
            shares.append(share)
            total += share
            message += f"; mean |SHAP| on {valid_rows.size:,} validation rows"
        else:
            valid_rows = _subsample(valid, config.sample_rows, rng)
            drops, base_ic = _permutation_drops(
                booster, values[valid_rows], labels[valid_rows], dates[valid_rows], config, rng
            )
            total += drops
            message += f"; validation rank-IC {base_ic:.3f} on {valid_rows.size:,} rows"
        emit(message)
    importance = np.clip(total / len(fold_rows), 0.0, None)
    variation = None
    if shares:
        matrix = np.vstack(shares)
        mean = matrix.mean(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            variation = np.where(mean > 0, matrix.std(axis=0) / mean, np.inf)  # never credited: unstable by definition
    if importance.sum() > 0:
        return importance / importance.sum(), variation
    emit("no feature carried importance on any fold; importances are uniform")
    return np.full(n_features, 1.0 / n_features), variation


def _fit(features: np.ndarray, labels: np.ndarray, config: SelectionConfig,
         reference: xgb.QuantileDMatrix | None = None) -> tuple[xgb.Booster, xgb.QuantileDMatrix]:
    # Anonymous f0..fn names: real feature names may hold characters XGBoost rejects. With a
    # ``reference``, its histogram cuts are reused: binning without sketching again halves the cost of
    # building the matrix (the cuts come from the same call's training rows, so nothing leaks).
    train = xgb.QuantileDMatrix(features, label=labels, nthread=config.n_threads, ref=reference, max_bin=config.max_bin)
    params = {
        "objective": "reg:squarederror",
        "tree_method": "hist",
        "max_bin": config.max_bin,
        "max_depth": config.max_depth,
        "eta": config.learning_rate,
        "nthread": config.n_threads,
        "seed": config.seed,
        "verbosity": 0,
    }
    return xgb.train(params, train, num_boost_round=config.n_estimators), train


def _permutation_drops(
    booster: xgb.Booster,
    features: np.ndarray,
    labels: np.ndarray,
    dates: pd.Index,
    config: SelectionConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, float]:
    """Drop in mean per-date rank-IC on validation rows when each feature is shuffled across symbols
    within each date (a shuffle across all rows would also move values between dates, so a feature
    that only trends over time would look important)."""
    from plml_assets.lib.selection.importance import shuffle_within_dates

    codes, uniques = pd.factorize(dates)
    scorer = _RankIC(labels, codes, len(uniques))
    base = scorer(booster.inplace_predict(features))
    drops = np.zeros(features.shape[1], dtype=np.float64)
    for j in range(features.shape[1]):
        original = features[:, j].copy()
        for _ in range(config.permutation_repeats):
            features[:, j] = shuffle_within_dates(original, codes, rng)
            drops[j] += base - scorer(booster.inplace_predict(features))
        features[:, j] = original
    return drops / config.permutation_repeats, base


class _RankIC:
    """Mean over dates of the Spearman correlation between predictions and labels of that date."""

    def __init__(self, labels: np.ndarray, codes: np.ndarray, n_dates: int) -> None:
        self.codes, self.n_dates = codes, n_dates
        self.label_rank = self._centred_ranks(labels)
        self.label_var = np.bincount(codes, self.label_rank**2, n_dates)

    def _centred_ranks(self, values: np.ndarray) -> np.ndarray:
        ranks = pd.Series(values).groupby(self.codes).rank().to_numpy(dtype=np.float64)
        counts = np.bincount(self.codes, minlength=self.n_dates)
        means = np.bincount(self.codes, ranks, self.n_dates) / np.maximum(counts, 1)
        return ranks - means[self.codes]

    def __call__(self, predictions: np.ndarray) -> float:
        ranks = self._centred_ranks(predictions)
        cov = np.bincount(self.codes, ranks * self.label_rank, self.n_dates)
        var = np.bincount(self.codes, ranks**2, self.n_dates)
        usable = (var > 0) & (self.label_var > 0)
        if not usable.any():
            return 0.0
        return float(np.mean(cov[usable] / np.sqrt(var[usable] * self.label_var[usable])))
