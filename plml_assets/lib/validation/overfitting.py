"""How much of a backtest's or a tuning study's performance is selection luck?

Four families of statistics, each from its paper:

* **Probabilistic Sharpe ratio (PSR)**: Bailey, D. H. and López de Prado, M. (2012), "The Sharpe
  Ratio Efficient Frontier", *Journal of Risk* 15(2). The probability that the true Sharpe ratio
  exceeds a benchmark ``SR*``, given the observed one, the track-record length and the skewness and
  kurtosis of the returns::

      PSR(SR*) = Φ( (SR − SR*) · √(n − 1) / √(1 − γ3·SR + (γ4 − 1)/4 · SR²) )

  ``SR`` is per period (not annualized), ``γ3`` the skewness and ``γ4`` the *non-excess* kurtosis
  (3 for a normal). The denominator is the standard error of the Sharpe estimate under non-normal
  i.i.d. returns (Mertens 2002; Lo 2002 for the normal case).
* **Expected maximum Sharpe ratio and deflated Sharpe ratio (DSR)**: Bailey, D. H. and López de
  Prado, M. (2014), "The Deflated Sharpe Ratio: Correcting for Selection Bias, Backtest Overfitting
  and Non-Normality", *Journal of Portfolio Management* 40(5), 94-107. Of ``N`` independent trials
  with no skill whose Sharpe estimates have variance ``V``, the best one is expected at::

      E[max SR] ≈ √V · ( (1 − γ) · Φ⁻¹(1 − 1/N) + γ · Φ⁻¹(1 − 1/(N·e)) ),   γ ≈ 0.5772 (Euler-Mascheroni)

  and ``DSR = PSR(SR* = E[max SR])``: the probability that the selected strategy beats the best of
  ``N`` skill-less trials.
* **Probability of backtest overfitting (PBO)** by combinatorially symmetric cross-validation
  (CSCV): Bailey, D. H., Borwein, J., López de Prado, M. and Zhu, Q. J. (2017), "The Probability of
  Backtest Overfitting", *Journal of Computational Finance* 20(4) (SSRN 2326253, 2014). See
  :func:`probability_of_backtest_overfitting`.
* **Train/validation gap** over cross-validation folds, and a :func:`verdict` that turns all of
  them into pass / warn / fail against :class:`ValidationBounds`.

Units: every Sharpe ratio inside the raw formulas (:func:`psr`, :func:`dsr`,
:func:`expected_max_sharpe`) is *per period*. The convenience wrappers take annualized benchmarks
and variances when ``periods_per_year`` is given and convert them: ``SR_period = SR_year / √p`` and
``V_period = V_year / p``.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from plml_assets.lib.validation.metrics import LOWER_IS_BETTER

__all__ = [
    "EULER_MASCHERONI",
    "BacktestOverfitting",
    "SharpeStats",
    "ValidationBounds",
    "deflated_sharpe_ratio",
    "dsr",
    "expected_max_sharpe",
    "probabilistic_sharpe_ratio",
    "probability_of_backtest_overfitting",
    "psr",
    "sharpe_ratio",
    "train_validation_gap",
    "trial_sharpe_variance",
    "verdict",
    "worst_verdict",
]

EULER_MASCHERONI = 0.5772156649015329

ArrayLike = Any  # a 1-D sequence / ndarray / Series of per-period returns


# --------------------------------------------------------------------------------------------------
# Sharpe ratio and its moments
# --------------------------------------------------------------------------------------------------


def _clean_returns(returns: ArrayLike) -> np.ndarray:
    values = np.asarray(returns, dtype=float).ravel()
    values = values[~np.isnan(values)]
    if values.size < 2:
        raise ValueError(f"need at least 2 non-NaN returns, got {values.size}")
    return values


def sharpe_ratio(returns: ArrayLike, periods_per_year: float | None = None) -> float:
    """Sample Sharpe ratio ``mean / std`` (std with ddof=1) of per-period (excess) returns.

    Per period when ``periods_per_year`` is None, else annualized by ``√periods_per_year``.
    NaNs are dropped. Constant returns give ``±inf`` (or 0 for all-zero returns).
    """
    values = _clean_returns(returns)
    sr = _ratio(values.mean(), values.std(ddof=1))
    return sr * math.sqrt(periods_per_year) if periods_per_year else sr


def _ratio(mean: float, std: float) -> float:
    if std > 0:
        return float(mean / std)
    return 0.0 if mean == 0 else math.copysign(math.inf, mean)


@dataclass(frozen=True)
class SharpeStats:
    """What PSR/DSR need from a return series: per-period Sharpe ``sr``, length ``n``, ``skew``
    and non-excess ``kurtosis`` (3 for a normal)."""

    sr: float
    n: int
    skew: float = 0.0
    kurtosis: float = 3.0

    @classmethod
    def from_returns(cls, returns: ArrayLike) -> SharpeStats:
        """Moments by the plain (biased, population) estimators, as in scipy's defaults and the
        papers' examples; NaNs dropped."""
        values = _clean_returns(returns)
        mean = values.mean()
        deviations = values - mean
        m2 = np.mean(deviations**2)
        std = math.sqrt(m2 * values.size / (values.size - 1))
        if m2 == 0:
            return cls(_ratio(mean, 0.0), int(values.size), 0.0, 3.0)
        # scipy.stats.skew / kurtosis(fisher=False) with bias=True, without their per-call overhead
        return cls(
            sr=_ratio(mean, std),
            n=int(values.size),
            skew=float(np.mean(deviations**3) / m2**1.5),
            kurtosis=float(np.mean(deviations**4) / m2**2),
        )


def _as_stats(returns: ArrayLike | SharpeStats) -> SharpeStats:
    return returns if isinstance(returns, SharpeStats) else SharpeStats.from_returns(returns)


def _per_period(value: float, periods_per_year: float | None, power: float) -> float:
    """Convert an annualized Sharpe (power 0.5) or Sharpe variance (power 1) to per period."""
    if periods_per_year is None:
        return float(value)
    if periods_per_year <= 0:
        raise ValueError(f"periods_per_year must be positive or None, got {periods_per_year}")
    return float(value) / periods_per_year**power


# --------------------------------------------------------------------------------------------------
# PSR / DSR
# --------------------------------------------------------------------------------------------------


def psr(sr: float, sr_benchmark: float, n: int, skew: float = 0.0, kurtosis: float = 3.0) -> float:
    """Probabilistic Sharpe ratio, raw form (Bailey & López de Prado 2012, eq. for PSR)::

        PSR = Φ( (SR − SR*) √(n − 1) / √(1 − γ3·SR + (γ4 − 1)/4 · SR²) )

    ``sr`` and ``sr_benchmark`` per period (not annualized), ``n`` the number of return
    observations, ``skew`` = γ3, ``kurtosis`` = γ4 non-excess (normal: 3). The radicand equals
    ``(1 − γ3·SR/2)² + (γ4 − 1 − γ3²)·SR²/4``, non-negative for any distribution (γ4 ≥ 1 + γ3²);
    inconsistent moments that make it non-positive raise ``ValueError``.
    """
    if n < 2:
        raise ValueError(f"n must be at least 2, got {n}")
    if not (math.isfinite(sr) and math.isfinite(sr_benchmark)):
        raise ValueError(f"sr and sr_benchmark must be finite, got {sr} and {sr_benchmark}")
    radicand = 1.0 - skew * sr + (kurtosis - 1.0) / 4.0 * sr**2
    if not radicand > 0:
        raise ValueError(
            f"1 - skew*SR + (kurtosis-1)/4*SR^2 = {radicand:.4g} is not positive (skew {skew}, kurtosis {kurtosis}, "
            f"SR {sr}): the moments are inconsistent (kurtosis must be at least 1 + skew^2; pass non-excess kurtosis)"
        )
    z = (sr - sr_benchmark) * math.sqrt(n - 1) / math.sqrt(radicand)
    return float(sps.norm.cdf(z))


def probabilistic_sharpe_ratio(
    returns: ArrayLike | SharpeStats,
    benchmark_sr: float = 0.0,
    periods_per_year: float | None = 252,
) -> float:
    """PSR of a per-period return series (or its :class:`SharpeStats`) against ``benchmark_sr``.

    ``benchmark_sr`` is annualized when ``periods_per_year`` is given (converted to per period as
    ``benchmark_sr / √periods_per_year``) and per period when it is None. Bailey & López de Prado
    (2012): PSR = Φ((SR − SR*)√(n−1) / √(1 − γ3 SR + (γ4−1)/4 SR²)), SR per period, γ4 non-excess.
    """
    stats = _as_stats(returns)
    return psr(stats.sr, _per_period(benchmark_sr, periods_per_year, 0.5), stats.n, stats.skew, stats.kurtosis)


def expected_max_sharpe(sr_variance: float, n_trials: float) -> float:
    """Expected maximum Sharpe ratio of ``n_trials`` independent skill-less trials (Bailey & López
    de Prado 2014, from the extreme value theory of Gaussian maxima)::

        E[max SR] ≈ √V · ( (1 − γ)·Φ⁻¹(1 − 1/N) + γ·Φ⁻¹(1 − 1/(N·e)) ),   γ = Euler-Mascheroni

    ``sr_variance`` = V, the variance of the trials' Sharpe estimates, in the unit you want the
    answer in (per period gives a per-period SR). ``n_trials`` may be fractional (an effective
    number of independent trials); one trial has no selection, so ``E[max SR] = 0``.
    """
    if sr_variance < 0 or not math.isfinite(sr_variance):
        raise ValueError(f"sr_variance must be finite and >= 0, got {sr_variance}")
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}")
    if n_trials == 1:
        return 0.0
    g = EULER_MASCHERONI
    z = (1 - g) * sps.norm.ppf(1 - 1 / n_trials) + g * sps.norm.ppf(1 - 1 / (n_trials * math.e))
    return float(math.sqrt(sr_variance) * z)


def dsr(sr: float, n: int, skew: float, kurtosis: float, n_trials: float, sr_variance: float) -> float:
    """Deflated Sharpe ratio, raw form, all per period (Bailey & López de Prado 2014)::

        DSR = PSR(SR* = E[max SR]) with E[max SR] = expected_max_sharpe(sr_variance, n_trials)
    """
    return psr(sr, expected_max_sharpe(sr_variance, n_trials), n, skew, kurtosis)


def deflated_sharpe_ratio(
    returns: ArrayLike | SharpeStats,
    n_trials: float,
    sr_variance: float,
    periods_per_year: float | None = 252,
) -> float:
    """DSR of the selected strategy's per-period returns (or its :class:`SharpeStats`).

    ``n_trials``: how many configurations were tried before this one was picked (all of them,
    including the failures). ``sr_variance``: the variance across those trials of their Sharpe
    ratios, annualized when ``periods_per_year`` is given (converted as ``V / periods_per_year``),
    per period when it is None; :func:`trial_sharpe_variance` computes it from the trials' returns.
    DSR = PSR(SR* = E[max SR]) (Bailey & López de Prado 2014).
    """
    stats = _as_stats(returns)
    variance = _per_period(sr_variance, periods_per_year, 1.0)
    return dsr(stats.sr, stats.n, stats.skew, stats.kurtosis, n_trials, variance)


def trial_sharpe_variance(trial_returns: pd.DataFrame | np.ndarray, periods_per_year: float | None = 252) -> float:
    """Variance (ddof=1) across trials of their Sharpe ratios; columns are trials, rows periods.

    Annualized when ``periods_per_year`` is given, matching :func:`deflated_sharpe_ratio`'s input.
    """
    matrix = np.asarray(trial_returns, dtype=float)
    if matrix.ndim != 2 or matrix.shape[1] < 2:
        raise ValueError(f"trial_returns must be a 2-D (periods x trials) array with >= 2 trials, got shape {matrix.shape}")
    srs = np.array([sharpe_ratio(matrix[:, j], periods_per_year) for j in range(matrix.shape[1])])
    srs = srs[np.isfinite(srs)]
    if srs.size < 2:
        raise ValueError("fewer than 2 trials have a finite Sharpe ratio")
    return float(srs.var(ddof=1))


# --------------------------------------------------------------------------------------------------
# PBO by combinatorially symmetric cross-validation
# --------------------------------------------------------------------------------------------------

Metric = Callable[[np.ndarray], np.ndarray]
_NAMED_METRICS = ("sharpe", "mean")


@dataclass(frozen=True)
class BacktestOverfitting:
    """CSCV results (Bailey, Borwein, López de Prado & Zhu 2017), one entry per combination ``c``.

    ``is_best[c]``: column position of the in-sample best configuration n*; ``oos_relative_ranks[c]``:
    its out-of-sample relative rank ω = rank/(N+1) (1 = worst rank, N = best); ``logits[c]``:
    λ = ln(ω/(1−ω)); ``is_performance[c]``/``oos_performance[c]``: the metric of n* in and out of
    sample (the performance-degradation pairs). ``degradation_slope``/``_intercept``: least squares
    of OOS on IS over those pairs (a negative slope is the paper's sign of overfitting).
    ``probability_of_loss``: share of combinations where n*'s OOS metric is below zero.
    """

    pbo: float
    logits: np.ndarray
    oos_relative_ranks: np.ndarray
    is_best: np.ndarray
    is_performance: np.ndarray
    oos_performance: np.ndarray
    degradation_slope: float
    degradation_intercept: float
    probability_of_loss: float
    n_splits: int
    n_combinations: int
    n_configurations: int
    metric: str
    configurations: tuple = field(default=(), repr=False)

    @property
    def degradation_pairs(self) -> np.ndarray:
        """(n_combinations, 2) array of (IS metric, OOS metric) of the IS-best configuration."""
        return np.column_stack([self.is_performance, self.oos_performance])

    def summary(self) -> dict[str, float]:
        """Scalars for logs and asset metadata (keys usable by :func:`verdict`)."""
        return {
            "pbo": self.pbo,
            "probability_of_loss": self.probability_of_loss,
            "degradation_slope": self.degradation_slope,
            "degradation_intercept": self.degradation_intercept,
            "logit_median": float(np.median(self.logits)),
            "n_combinations": float(self.n_combinations),
            "n_configurations": float(self.n_configurations),
            "n_splits": float(self.n_splits),
        }


def _combinations(n_splits: int, max_combinations: int | None, seed: int) -> np.ndarray:
    """Boolean (C, S) in-sample masks: all C(S, S/2) choices, or ``max_combinations`` distinct
    ones drawn with ``seed`` when there are more, sorted so the order does not depend on draws."""
    half = n_splits // 2
    total = math.comb(n_splits, half)
    if max_combinations is None or total <= max_combinations:
        chosen = list(itertools.combinations(range(n_splits), half))
    else:
        rng = np.random.default_rng(seed)
        picked: set[tuple[int, ...]] = set()
        while len(picked) < max_combinations:
            picked.add(tuple(sorted(int(b) for b in rng.choice(n_splits, half, replace=False))))
        chosen = sorted(picked)
    blocks = np.array(chosen, dtype=np.intp).reshape(len(chosen), half)
    masks = np.zeros((len(chosen), n_splits), dtype=bool)
    masks[np.arange(len(chosen))[:, None], blocks] = True
    return masks


def _sharpe_from_sums(s1: np.ndarray, s2: np.ndarray, count: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """Sharpe (ddof=1) from sums of the shifted values ``x - shift``; constant columns give
    ±inf, or 0 when their mean is 0 (as :func:`sharpe_ratio`)."""
    mean_shifted = s1 / count
    var = np.maximum(s2 - s1 * mean_shifted, 0.0) / (count - 1)
    mean = mean_shifted + shift
    std = np.sqrt(var)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = mean / std
    constant = std == 0
    if constant.any():
        flat_mean = np.broadcast_to(mean, out.shape)[constant]
        out[constant] = np.where(flat_mean > 0, np.inf, np.where(flat_mean < 0, -np.inf, 0.0))
    return out


def _vectorized_metrics(
    matrix: np.ndarray, bounds: list[tuple[int, int]], masks: np.ndarray, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """IS and OOS metric (C, N) from per-block sums: the sums of a union of blocks are a matrix
    product, so no combination is sliced. Values are centred per column first so the variance
    from sums does not lose precision."""
    shift = matrix.mean(axis=0)
    centred = matrix - shift
    s1 = np.stack([centred[a:b].sum(axis=0) for a, b in bounds])
    s2 = np.stack([(centred[a:b] ** 2).sum(axis=0) for a, b in bounds])
    count = np.array([b - a for a, b in bounds], dtype=float)
    weights = masks.astype(float)
    results = []
    for w in (weights, 1.0 - weights):
        n = (w @ count)[:, None]
        sum1, sum2 = w @ s1, w @ s2
        if metric == "mean":
            results.append(sum1 / n + shift)
        else:
            results.append(_sharpe_from_sums(sum1, sum2, np.broadcast_to(n, sum1.shape), shift))
    return results[0], results[1]


def _looped_metrics(
    matrix: np.ndarray, bounds: list[tuple[int, int]], masks: np.ndarray, metric: Metric
) -> tuple[np.ndarray, np.ndarray]:
    block_rows = [np.arange(a, b) for a, b in bounds]
    n_cols = matrix.shape[1]
    is_metric = np.empty((len(masks), n_cols))
    oos_metric = np.empty((len(masks), n_cols))
    for c, mask in enumerate(masks):
        is_rows = np.concatenate([block_rows[s] for s in np.flatnonzero(mask)])
        oos_rows = np.concatenate([block_rows[s] for s in np.flatnonzero(~mask)])
        for target, rows in ((is_metric, is_rows), (oos_metric, oos_rows)):
            values = np.asarray(metric(matrix[rows]), dtype=float).ravel()
            if values.shape != (n_cols,):
                raise ValueError(f"metric must return one value per configuration ({n_cols}), got shape {values.shape}")
            target[c] = values
    return is_metric, oos_metric


def probability_of_backtest_overfitting(
    performance: pd.DataFrame | np.ndarray,
    n_splits: int = 16,
    metric: str | Metric = "sharpe",
    max_combinations: int | None = 20_000,
    seed: int = 0,
) -> BacktestOverfitting:
    """Probability of backtest overfitting by CSCV (Bailey, Borwein, López de Prado & Zhu 2017).

    ``performance`` is a T×N matrix: rows are periods in time order, columns the N configurations
    (trials) that were compared, values their per-period returns (or any per-period score, e.g. a
    daily rank IC with ``metric="mean"``). The algorithm:

    1. split the rows into ``n_splits`` = S contiguous blocks (``np.array_split``: sizes differ by
       at most one row when S does not divide T);
    2. for each of the C(S, S/2) ways to pick S/2 blocks: in-sample (IS) = the picked blocks,
       out-of-sample (OOS) = the others, both kept in time order;
    3. n* = argmax of the IS metric (first column on ties); ω = rank of n*'s OOS metric among the
       N OOS metrics (1 = worst, average ranks on ties) / (N + 1); λ = ln(ω / (1 − ω));
    4. PBO = share of combinations with λ ≤ 0, i.e. the IS-best configuration is at or below the
       OOS median. Skill-less configurations give PBO ≈ 0.5; a robust best gives ≈ 0.

    ``metric``: ``"sharpe"`` (mean/std, ddof=1; default) or ``"mean"``, computed vectorized, or a
    callable mapping a (rows × N) array to N values (higher is better). Non-finite values rank as
    given (NaN ranks lowest). When C(S, S/2) exceeds ``max_combinations`` (None: never), that many
    distinct combinations are drawn with ``seed``; S = 16 (12,870) is used in full by default.
    """
    configurations = tuple(performance.columns) if isinstance(performance, pd.DataFrame) else ()
    matrix = np.asarray(performance, dtype=float)
    if matrix.ndim != 2:
        raise ValueError(f"performance must be 2-D (periods x configurations), got {matrix.ndim}-D")
    n_rows, n_cols = matrix.shape
    if n_cols < 2:
        raise ValueError(f"need at least 2 configurations (columns) to compare, got {n_cols}")
    if n_splits < 2 or n_splits % 2:
        raise ValueError(f"n_splits must be an even number >= 2, got {n_splits}")
    if n_rows < 2 * n_splits:
        raise ValueError(f"need at least 2 rows per block: {n_rows} rows for {n_splits} splits")
    if np.isnan(matrix).any():
        raise ValueError("performance has NaN values; CSCV needs every configuration on every period (fill or drop rows)")
    if max_combinations is not None and max_combinations < 1:
        raise ValueError(f"max_combinations must be >= 1 or None, got {max_combinations}")

    edges = np.cumsum([0] + [len(part) for part in np.array_split(np.arange(n_rows), n_splits)])
    bounds = [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]
    masks = _combinations(n_splits, max_combinations, seed)
    if callable(metric):
        metric_name = getattr(metric, "__name__", "custom")
        is_metric, oos_metric = _looped_metrics(matrix, bounds, masks, metric)
    elif metric in _NAMED_METRICS:
        metric_name = metric
        is_metric, oos_metric = _vectorized_metrics(matrix, bounds, masks, metric)
    else:
        raise ValueError(f"metric must be one of {_NAMED_METRICS} or a callable, got {metric!r}")

    is_for_ranking = np.where(np.isnan(is_metric), -np.inf, is_metric)
    oos_for_ranking = np.where(np.isnan(oos_metric), -np.inf, oos_metric)
    rows = np.arange(len(masks))
    best = np.argmax(is_for_ranking, axis=1)
    best_oos = oos_for_ranking[rows, best][:, None]
    below = (oos_for_ranking < best_oos).sum(axis=1)
    equal = (oos_for_ranking == best_oos).sum(axis=1)  # includes n* itself
    rank = below + (equal + 1) / 2.0
    omega = rank / (n_cols + 1)
    logits = np.log(omega / (1 - omega))

    is_best_values = is_metric[rows, best]
    oos_best_values = oos_metric[rows, best]
    finite = np.isfinite(is_best_values) & np.isfinite(oos_best_values)
    slope = intercept = math.nan
    if finite.sum() >= 2 and np.ptp(is_best_values[finite]) > 0:
        slope, intercept = (float(v) for v in np.polyfit(is_best_values[finite], oos_best_values[finite], 1))

    return BacktestOverfitting(
        pbo=float(np.mean(logits <= 0)),
        logits=logits,
        oos_relative_ranks=omega,
        is_best=best,
        is_performance=is_best_values,
        oos_performance=oos_best_values,
        degradation_slope=slope,
        degradation_intercept=intercept,
        probability_of_loss=float(np.mean(oos_best_values < 0)),
        n_splits=n_splits,
        n_combinations=len(masks),
        n_configurations=n_cols,
        metric=metric_name,
        configurations=configurations,
    )


# --------------------------------------------------------------------------------------------------
# Train / validation gap over CV folds
# --------------------------------------------------------------------------------------------------


def train_validation_gap(fold_metrics: pd.DataFrame, metric: str = "rank_ic") -> dict[str, Any]:
    """Per-fold overfitting gap statistics from a cross-validation table.

    ``fold_metrics`` has one row per fold with ``train_<metric>`` and ``valid_<metric>`` columns
    (as :func:`plml_assets.lib.models.training.cross_validate` writes). The gap follows
    :func:`plml_assets.lib.validation.metrics.overfitting_gap`: positive when validation is worse,
    ``train − valid`` for higher-is-better metrics, ``valid − train`` for those in
    ``LOWER_IS_BETTER``. Folds with a NaN on either side are dropped.

    Returns ``metric``, ``n_folds``, ``train_mean``, ``valid_mean``, ``gap_mean``, ``gap_std``
    (ddof=1), ``gap_max``, ``share_valid_below_zero`` (share of folds whose validation metric is
    below zero), ``gap_t_stat`` = gap_mean / (gap_std / √n_folds) (one-sample t against 0; ±inf
    when every fold has the same non-zero gap, NaN with fewer than 2 folds) and ``gap_p_value``,
    the one-sided p-value of that t-test for "gap > 0".
    """
    columns = [f"train_{metric}", f"valid_{metric}"]
    missing = [c for c in columns if c not in fold_metrics.columns]
    if missing:
        raise ValueError(f"fold_metrics lacks {missing}; it has {list(fold_metrics.columns)}")
    frame = fold_metrics[columns].astype(float).dropna()
    train, valid = frame[columns[0]].to_numpy(), frame[columns[1]].to_numpy()
    gaps = valid - train if metric in LOWER_IS_BETTER else train - valid
    n = int(gaps.size)
    nan = math.nan
    result: dict[str, Any] = {
        "metric": metric,
        "n_folds": n,
        "train_mean": float(train.mean()) if n else nan,
        "valid_mean": float(valid.mean()) if n else nan,
        "gap_mean": float(gaps.mean()) if n else nan,
        "gap_std": float(gaps.std(ddof=1)) if n >= 2 else nan,
        "gap_max": float(gaps.max()) if n else nan,
        "share_valid_below_zero": float(np.mean(valid < 0)) if n else nan,
        "gap_t_stat": nan,
        "gap_p_value": nan,
    }
    if n >= 2:
        mean, std = result["gap_mean"], result["gap_std"]
        if std > 0:
            t = mean / (std / math.sqrt(n))
        else:
            t = 0.0 if mean == 0 else math.copysign(math.inf, mean)
        result["gap_t_stat"] = float(t)
        result["gap_p_value"] = float(sps.t.sf(t, df=n - 1))
    return result


# --------------------------------------------------------------------------------------------------
# Verdict
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ValidationBounds:
    """Where an overfitting statistic turns a model from pass to warn to fail. None disables a bound.

    A bound is breached strictly: ``pbo > pbo_*``, ``gap_mean > gap_*``,
    ``share_valid_below_zero > valid_below_zero_*``, ``dsr < dsr_*``.

    * ``pbo_warn = 0.25``, ``pbo_fail = 0.5``: 0.5 is what selecting among skill-less
      configurations gives (the IS-best is as likely below the OOS median as above); beyond it the
      selection process is worse than a coin. A quarter is already a lot of lost rank.
    * ``dsr_warn = 0.95``: the one-sided 5% level the DSR paper tests at; ``dsr_fail = 0.5``: the
      observed Sharpe is more likely below than above the expected best of ``N`` skill-less trials.
    * ``gap_warn = 0.1`` (the default of :func:`plml_assets.lib.validation.metrics.overfitting_gap`),
      ``gap_fail = 0.2``: mean train − validation rank IC. Honest daily equity models validate at a
      rank IC of 0.01-0.05, so a 0.1 gap means the fit is mostly memorized noise.
    * ``valid_below_zero_warn = 0.5``: more than half the folds validate below zero; no fail bound.
    """

    pbo_warn: float | None = 0.25
    pbo_fail: float | None = 0.5
    dsr_warn: float | None = 0.95
    dsr_fail: float | None = 0.5
    gap_warn: float | None = 0.1
    gap_fail: float | None = 0.2
    valid_below_zero_warn: float | None = 0.5
    valid_below_zero_fail: float | None = None

    def __post_init__(self) -> None:
        for name, higher_is_worse in _CHECKS.values():
            warn, fail = getattr(self, f"{name}_warn"), getattr(self, f"{name}_fail")
            if warn is None or fail is None:
                continue
            if (warn > fail) if higher_is_worse else (warn < fail):
                relation = "<=" if higher_is_worse else ">="
                raise ValueError(f"{name}_warn ({warn}) must be {relation} {name}_fail ({fail})")


#: stat key -> (bound prefix in ValidationBounds, higher is worse)
_CHECKS: dict[str, tuple[str, bool]] = {
    "pbo": ("pbo", True),
    "dsr": ("dsr", False),
    "gap_mean": ("gap", True),
    "share_valid_below_zero": ("valid_below_zero", True),
}

_DESCRIPTIONS = {
    "pbo": "probability of backtest overfitting",
    "dsr": "deflated Sharpe ratio",
    "gap_mean": "mean train-validation gap",
    "share_valid_below_zero": "share of folds validating below zero",
}


VERDICTS = ("pass", "warn", "fail")


def worst_verdict(*verdicts: str) -> str:
    """The most severe of several verdicts (``fail`` > ``warn`` > ``pass``)."""
    unknown = [v for v in verdicts if v not in VERDICTS]
    if unknown or not verdicts:
        raise ValueError(f"verdicts must be among {VERDICTS}, got {list(verdicts)}")
    return max(verdicts, key=VERDICTS.index)


def verdict(stats: Mapping[str, Any], bounds: ValidationBounds | None = None) -> tuple[str, list[str]]:
    """``("pass" | "warn" | "fail", reasons)`` for overfitting statistics against ``bounds``.

    Reads ``pbo``, ``dsr``, ``gap_mean`` and ``share_valid_below_zero`` from ``stats`` (e.g.
    ``{**pbo_result.summary(), "dsr": dsr_value, **train_validation_gap(folds)}``); a stat that is
    absent or NaN is not judged. Each breached bound gives one reason naming the stat, its value
    and the bound (a stat past its fail bound is reported once, as a fail). Fail if any fail bound
    is breached, else warn if any warn bound is, else pass.
    """
    bounds = bounds or ValidationBounds()
    level, reasons = "pass", []
    for key, (name, higher_is_worse) in _CHECKS.items():
        value = stats.get(key)
        if value is None or isinstance(value, bool):
            continue
        value = float(value)
        if math.isnan(value):
            continue
        for severity in ("fail", "warn"):
            bound = getattr(bounds, f"{name}_{severity}")
            if bound is None:
                continue
            breached = value > bound if higher_is_worse else value < bound
            if breached:
                sign = ">" if higher_is_worse else "<"
                reasons.append(f"{severity}: {key} {value:.4g} {sign} {name}_{severity} {bound:.4g} ({_DESCRIPTIONS[key]})")
                if severity == "fail":
                    level = "fail"
                elif level == "pass":
                    level = "warn"
                break
    return level, reasons


# --------------------------------------------------------------------------------------------------
# Everything that was tried: near-duplicates, effective number of trials, trial-set PBO and DSR
# --------------------------------------------------------------------------------------------------


def near_duplicate_groups(series: pd.DataFrame, threshold: float = 0.95) -> list[list[str]]:
    """Columns of ``series`` (periods x trials) grouped so that every pair correlated at or above
    ``threshold`` (pairwise-complete Pearson correlation of the per-period scores) ends in one group
    (single linkage: connected components of the "near-duplicate" graph). A group is one decision
    tried several times (the same configuration resampled, or two settings the model ignores), not
    several independent chances; groups keep the columns' order, largest first."""
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    names = [str(c) for c in series.columns]
    corr = series.corr(min_periods=8).to_numpy()
    parent = list(range(len(names)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            if np.isfinite(corr[i, j]) and corr[i, j] >= threshold:
                parent[root(j)] = root(i)
    groups: dict[int, list[str]] = {}
    for i, name in enumerate(names):
        groups.setdefault(root(i), []).append(name)
    return sorted(groups.values(), key=lambda g: (-len(g), names.index(g[0])))


@dataclass(frozen=True)
class TrialClusters:
    """The trials grouped into effectively independent clusters (see :func:`cluster_trials`)."""

    labels: dict[str, int]  # trial -> cluster id (0..K-1)
    cluster_series: pd.DataFrame  # periods x K: each cluster's mean per-period score
    sharpe: pd.Series  # annualized Sharpe of each cluster's series
    n_trials: int
    method: str

    @property
    def n_effective(self) -> int:
        return int(self.cluster_series.shape[1])

    @property
    def sharpe_variance(self) -> float:
        finite = self.sharpe[np.isfinite(self.sharpe)]
        return float(finite.var(ddof=1)) if len(finite) >= 2 else math.nan


def cluster_trials(
    series: pd.DataFrame, duplicate_corr: float = 0.95, cluster_corr: float = 0.5, periods_per_year: float = 252
) -> TrialClusters:
    """Reduce N trials to an effective number K of independent ones by clustering their per-period
    out-of-fold scores, then deflate over the clusters: the multiple-testing correction of López de
    Prado, M. (2019), "A Data Science Solution to the Multiple-Testing Crisis in Financial
    Research", *Journal of Financial Data Science* 1(1), 99-110 (cluster the trials, count the
    clusters as the independent trials, take the variance of the clusters' Sharpe ratios).

    Steps:

    1. near-duplicates (correlation >= ``duplicate_corr``) are merged first (:func:`near_duplicate_groups`);
    2. the groups' mean series are clustered hierarchically, average linkage on the correlation
       distance ``d = sqrt((1 - rho) / 2)`` (the distance of López de Prado's ONC, López de Prado and
       Lewis (2019), *Quantitative Finance* 19(9)), and the tree is cut where the average
       correlation between clusters falls below ``cluster_corr``. The paper picks the number of
       clusters by ONC's silhouette search instead; with the 6-100 trials of a study that search is
       unstable and cannot return "every trial is its own cluster" (k = N), so uncorrelated trials
       would be merged and the deflation understated. A correlation cut keeps K = N for independent
       trials and K = 1 for copies;
    3. each cluster is represented by the equal-weight mean of its members' series (the paper uses
       a minimum-variance aggregate; the mean is the robust choice with few, noisy trials) and its
       annualized Sharpe ratio is measured.

    The deflated Sharpe then uses ``K = n_effective`` trials and the variance of the K cluster
    Sharpe ratios (:attr:`TrialClusters.sharpe_variance`): the expected best of K independent
    skill-less tries, not of N near-copies nor of a hand-picked few.
    """
    from scipy.cluster.hierarchy import fcluster, linkage
    from scipy.spatial.distance import squareform

    if not 0 < cluster_corr <= duplicate_corr:
        raise ValueError(f"cluster_corr must be in (0, duplicate_corr={duplicate_corr}], got {cluster_corr}")
    frame = series.astype(float)
    if frame.shape[1] == 0:
        raise ValueError("cluster_trials needs at least one trial (column)")
    groups = near_duplicate_groups(frame, duplicate_corr)
    grouped = pd.DataFrame({f"g{i}": frame[g].mean(axis=1) for i, g in enumerate(groups)}, index=frame.index)
    n_groups = len(groups)
    assignment = np.arange(n_groups)
    if n_groups > 1:
        corr = grouped.corr(min_periods=8).fillna(0.0).to_numpy()
        np.fill_diagonal(corr, 1.0)
        distance = np.sqrt(np.clip((1.0 - corr) / 2.0, 0.0, 1.0))
        np.fill_diagonal(distance, 0.0)
        tree = linkage(squareform(distance, checks=False), method="average")
        assignment = fcluster(tree, t=math.sqrt((1.0 - cluster_corr) / 2.0), criterion="distance") - 1
    labels: dict[str, int] = {}
    order = {c: i for i, c in enumerate(dict.fromkeys(assignment.tolist()))}
    for gi, members in enumerate(groups):
        for m in members:
            labels[m] = order[assignment[gi]]
    clusters = {f"cluster_{cid}": frame[[m for m, c in labels.items() if c == cid]].mean(axis=1) for cid in range(len(order))}
    cluster_series = pd.DataFrame(clusters, index=frame.index)
    sharpe = pd.Series({c: sharpe_ratio(cluster_series[c].dropna(), periods_per_year) for c in cluster_series})
    method = (f"López de Prado (2019): near-duplicates (rho >= {duplicate_corr}) merged into {n_groups} group(s), "
              f"average-linkage clusters on sqrt((1 - rho) / 2) cut at rho {cluster_corr}: {len(order)} cluster(s); "
              "cluster series = mean of members")
    return TrialClusters(labels, cluster_series, sharpe, int(frame.shape[1]), method)


def trial_set_pbo(
    series: pd.DataFrame, duplicate_corr: float = 0.95, max_blocks: int = 16, min_block_days: int = 20
) -> tuple[float, dict[str, Any]]:
    """PBO by CSCV over the trials' per-period out-of-fold scores in the metric the selection rule
    ranks by (e.g. daily rank IC, ranked by its mean), after merging near-duplicates
    (correlation >= ``duplicate_corr``) into one column each: choosing among copies of one decision
    is a coin flip that says nothing about overfitting. Only trials scored on every period take part
    (a pruned trial never ran the later folds). Returns (PBO, details); PBO is NaN with fewer than 2
    distinct configurations or too few periods."""
    complete = series.loc[:, series.notna().mean() >= 0.95].fillna(0.0)
    details: dict[str, Any] = {"configurations": int(series.shape[1]), "complete": int(complete.shape[1])}
    if complete.shape[1] < 2:
        details["reason"] = "fewer than 2 trials ran every fold"
        return math.nan, details
    groups = near_duplicate_groups(complete, duplicate_corr)
    distinct = pd.DataFrame({g[0]: complete[g].mean(axis=1) for g in groups})
    details["distinct"] = int(distinct.shape[1])
    n_blocks = min(max_blocks, (len(distinct) // min_block_days) // 2 * 2)
    details["blocks"] = int(n_blocks)
    if distinct.shape[1] < 2 or n_blocks < 2:
        details["reason"] = "fewer than 2 distinct configurations" if distinct.shape[1] < 2 else "too few periods"
        return math.nan, details
    result = probability_of_backtest_overfitting(distinct.to_numpy(), n_splits=n_blocks, metric="mean")
    details["probability_of_loss"] = float(result.probability_of_loss)
    return float(result.pbo), details
