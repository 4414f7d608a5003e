"""Overfitting statistics against published worked examples and simulations with a known answer."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps

from plml_assets.lib.validation.overfitting import (
    EULER_MASCHERONI,
    SharpeStats,
    ValidationBounds,
    deflated_sharpe_ratio,
    dsr,
    expected_max_sharpe,
    probabilistic_sharpe_ratio,
    probability_of_backtest_overfitting,
    psr,
    sharpe_ratio,
    train_validation_gap,
    trial_sharpe_variance,
    verdict,
)

# --------------------------------------------------------------------------------------------------
# PSR / DSR: the numerical example of Bailey & López de Prado (2014), "The Deflated Sharpe Ratio"
# --------------------------------------------------------------------------------------------------
# 100 trials, annualized variance of their Sharpe ratios 1/2, the selected one has an annualized SR
# of 2.5 over 5 years of daily returns (T = 1250, 250 per year), skewness -3 and kurtosis 10. The
# paper reports E[max SR] ≈ 0.1132 per period (1.79 annualized) and DSR ≈ 0.9004.
PAPER_YEAR = 250
PAPER_SR = 2.5 / math.sqrt(PAPER_YEAR)  # 0.1581 per day
PAPER = SharpeStats(sr=PAPER_SR, n=1250, skew=-3.0, kurtosis=10.0)


def test_expected_max_sharpe_reproduces_the_dsr_paper():
    per_day = expected_max_sharpe(0.5 / PAPER_YEAR, 100)
    assert per_day == pytest.approx(0.1132, abs=5e-5)
    assert per_day * math.sqrt(PAPER_YEAR) == pytest.approx(1.79, abs=5e-3)
    # and by hand from the formula, with the constants spelled out
    z = (1 - 0.5772156649) * sps.norm.ppf(0.99) + 0.5772156649 * sps.norm.ppf(1 - 1 / (100 * math.e))
    assert per_day == pytest.approx(math.sqrt(0.5 / 250) * z, rel=1e-9)
    assert EULER_MASCHERONI == pytest.approx(np.euler_gamma, rel=1e-15)


def test_deflated_sharpe_ratio_reproduces_the_dsr_paper():
    value = deflated_sharpe_ratio(PAPER, n_trials=100, sr_variance=0.5, periods_per_year=PAPER_YEAR)
    assert value == pytest.approx(0.9004, abs=5e-4)
    # by hand: PSR with SR* = E[max SR]
    sr0 = 0.113172
    z = (PAPER_SR - sr0) * math.sqrt(1249) / math.sqrt(1 + 3 * PAPER_SR + (10 - 1) / 4 * PAPER_SR**2)
    assert value == pytest.approx(sps.norm.cdf(z), abs=1e-5)
    # the raw per-period form and the annualized wrapper agree
    assert dsr(PAPER_SR, 1250, -3.0, 10.0, 100, 0.5 / PAPER_YEAR) == pytest.approx(value, rel=1e-12)
    assert deflated_sharpe_ratio(PAPER, 100, 0.5 / PAPER_YEAR, periods_per_year=None) == pytest.approx(value, rel=1e-12)


def test_psr_annualized_benchmark_is_converted_to_per_period():
    annual = probabilistic_sharpe_ratio(PAPER, benchmark_sr=1.0, periods_per_year=PAPER_YEAR)
    assert annual == pytest.approx(psr(PAPER_SR, 1.0 / math.sqrt(PAPER_YEAR), 1250, -3.0, 10.0), rel=1e-12)


def test_expected_max_sharpe_with_one_trial_is_zero_and_dsr_is_then_psr_against_zero():
    assert expected_max_sharpe(0.7, 1) == 0.0
    assert dsr(0.05, 500, -0.5, 5.0, 1, 0.7) == pytest.approx(psr(0.05, 0.0, 500, -0.5, 5.0))


@pytest.mark.parametrize("n_trials, n_sims", [(10, 20_000), (100, 20_000), (1000, 5_000)])
def test_expected_max_sharpe_matches_simulated_maxima_of_gaussians(n_trials, n_sims):
    """The formula is an extreme-value approximation: within 3% of the simulated E[max] of N
    standard normals (exact values: 1.539, 2.508, 3.241)."""
    maxima = np.random.default_rng(n_trials).standard_normal((n_sims, n_trials)).max(axis=1)
    assert expected_max_sharpe(1.0, n_trials) == pytest.approx(maxima.mean(), rel=0.03)
    assert expected_max_sharpe(4.0, n_trials) == pytest.approx(2 * expected_max_sharpe(1.0, n_trials))


def test_dsr_decreases_as_more_trials_were_run():
    values = [dsr(0.1, 1000, 0.0, 3.0, n, 0.002) for n in (1, 2, 5, 10, 100, 1000, 10_000)]
    assert all(a > b for a, b in zip(values, values[1:]))


def test_psr_increases_with_sharpe_and_track_record_length():
    by_sr = [psr(sr, 0.0, 500, -1.0, 6.0) for sr in (-0.05, 0.0, 0.02, 0.05, 0.1)]
    assert all(a < b for a, b in zip(by_sr, by_sr[1:]))
    by_n = [psr(0.05, 0.0, n, -1.0, 6.0) for n in (10, 100, 500, 2000)]
    assert all(a < b for a, b in zip(by_n, by_n[1:]))
    assert psr(0.05, 0.05, 500) == 0.5
    # negative skew and fat tails widen the Sharpe's error: PSR against a lower benchmark falls
    assert psr(0.1, 0.0, 500, -3.0, 10.0) < psr(0.1, 0.0, 500, 0.0, 3.0)


def test_psr_is_calibrated_when_the_true_sharpe_equals_the_benchmark():
    """Under the null (true SR = SR*), PSR is ~uniform: mean 0.5, 5% of values above 0.95."""
    rng = np.random.default_rng(7)
    true_sr = 0.05
    values = np.array([
        probabilistic_sharpe_ratio(rng.normal(true_sr, 1.0, 250), benchmark_sr=true_sr, periods_per_year=None)
        for _ in range(2000)
    ])
    assert values.mean() == pytest.approx(0.5, abs=0.03)
    assert np.mean(values > 0.95) == pytest.approx(0.05, abs=0.015)
    assert np.mean(values < 0.05) == pytest.approx(0.05, abs=0.015)


def test_sharpe_standard_error_in_psr_matches_simulation_of_skewed_returns():
    """The PSR denominator √((1 − γ3 SR + (γ4−1)/4 SR²)/(n−1)) is the Sharpe estimate's standard
    error for non-normal returns: check it on gamma returns (skew √2, kurtosis 6)."""
    rng = np.random.default_rng(3)
    shape, n, sr = 2.0, 500, 0.2
    returns = rng.gamma(shape, size=(4000, n)) - shape + sr * math.sqrt(shape)
    estimates = returns.mean(axis=1) / returns.std(axis=1, ddof=1)
    skew, kurt = 2 / math.sqrt(shape), 3 + 6 / shape
    predicted = math.sqrt((1 - skew * sr + (kurt - 1) / 4 * sr**2) / (n - 1))
    normal_theory = math.sqrt((1 + sr**2 / 2) / (n - 1))
    assert estimates.std() == pytest.approx(predicted, rel=0.05)
    assert abs(estimates.std() - predicted) < abs(estimates.std() - normal_theory) / 3


def test_sharpe_stats_from_returns_uses_non_excess_kurtosis():
    x = np.random.default_rng(0).normal(0.1, 2.0, 100_000)
    stats = SharpeStats.from_returns(x)
    assert stats.n == 100_000
    assert stats.sr == pytest.approx(0.05, abs=0.01)
    assert stats.kurtosis == pytest.approx(3.0, abs=0.1)
    assert stats.skew == pytest.approx(0.0, abs=0.05)
    assert sharpe_ratio(x, periods_per_year=252) == pytest.approx(stats.sr * math.sqrt(252))
    assert SharpeStats.from_returns([0.01, np.nan, 0.03, 0.02]).n == 3
    skewed = np.random.default_rng(1).lognormal(size=500)
    moments = SharpeStats.from_returns(skewed)
    assert moments.skew == pytest.approx(sps.skew(skewed), rel=1e-10)
    assert moments.kurtosis == pytest.approx(sps.kurtosis(skewed, fisher=False), rel=1e-10)
    assert moments.sr == pytest.approx(skewed.mean() / skewed.std(ddof=1), rel=1e-12)


def test_deflation_separates_a_selected_lucky_trial_from_real_skill():
    """Pick the best of 100 skill-less trials: its PSR against 0 looks significant, the DSR does
    not. Add one trial with real skill and the DSR of the pick is high."""
    psrs, dsrs = [], []
    for seed in range(10):
        trials = np.random.default_rng(seed).normal(0.0, 0.01, size=(1250, 100))
        best = trials[:, np.argmax(trials.mean(axis=0) / trials.std(axis=0, ddof=1))]
        variance = trial_sharpe_variance(trials, periods_per_year=252)
        psrs.append(probabilistic_sharpe_ratio(best, 0.0, 252))
        dsrs.append(deflated_sharpe_ratio(best, 100, variance, 252))
    assert np.mean(psrs) > 0.95
    assert np.mean(dsrs) < 0.8

    trials = np.random.default_rng(99).normal(0.0, 0.01, size=(1250, 100))
    trials[:, 0] += 0.002  # a per-period SR of 0.2 (3.2 annualized)
    variance = trial_sharpe_variance(trials, periods_per_year=252)
    assert deflated_sharpe_ratio(trials[:, 0], 100, variance, 252) > 0.99


def test_psr_rejects_inconsistent_moments_and_short_records():
    with pytest.raises(ValueError, match="inconsistent"):
        psr(1.0, 0.0, 100, skew=3.0, kurtosis=1.0)
    with pytest.raises(ValueError, match="at least 2"):
        psr(0.1, 0.0, 1)
    with pytest.raises(ValueError, match="n_trials"):
        expected_max_sharpe(0.1, 0)


@settings(max_examples=40, deadline=None)
@given(
    sr=st.floats(-0.5, 0.5),
    delta=st.floats(0.001, 0.3),
    n=st.integers(2, 5000),
    skew=st.floats(-3, 3),
    excess=st.floats(0, 20),
)
def test_psr_is_a_probability_and_monotone_in_sharpe(sr, delta, n, skew, excess):
    kurtosis = 1 + skew**2 + excess  # any real distribution has γ4 ≥ 1 + γ3²
    low, high = psr(sr, 0.0, n, skew, kurtosis), psr(sr + delta, 0.0, n, skew, kurtosis)
    assert 0.0 <= low <= 1.0 and 0.0 <= high <= 1.0
    assert high >= low


# --------------------------------------------------------------------------------------------------
# PBO by CSCV (Bailey, Borwein, López de Prado & Zhu 2017)
# --------------------------------------------------------------------------------------------------


def test_pbo_hand_checked_on_two_blocks():
    """S = 2 gives two combinations; values are constant per block so the metric is the mean.
    Block 1 means A 1, B 2, C 0; block 2 means A 3, B -1, C 1.
    IS = block 1: best B, OOS rank 1 of 3 -> ω 1/4, λ ln(1/3).
    IS = block 2: best A, OOS rank 2 of 3 -> ω 2/4, λ 0 (counts as overfit: λ ≤ 0)."""
    performance = pd.DataFrame({"A": [1, 1, 3, 3], "B": [2, 2, -1, -1], "C": [0, 0, 1, 1]}, dtype=float)
    result = probability_of_backtest_overfitting(performance, n_splits=2, metric="mean")
    assert result.n_combinations == 2
    np.testing.assert_array_equal(result.is_best, [1, 0])
    assert [result.configurations[i] for i in result.is_best] == ["B", "A"]
    np.testing.assert_allclose(result.oos_relative_ranks, [0.25, 0.5])
    np.testing.assert_allclose(result.logits, [math.log(1 / 3), 0.0], atol=1e-12)
    assert result.pbo == 1.0
    np.testing.assert_allclose(result.degradation_pairs, [[2, -1], [3, 1]])
    assert result.degradation_slope == pytest.approx(2.0)
    assert result.degradation_intercept == pytest.approx(-5.0)
    assert result.probability_of_loss == 0.5

    # the IS-best is also OOS-best in both halves: no overfitting
    robust = pd.DataFrame({"A": [1, 1, 3, 3], "B": [2, 2, 4, 4], "C": [0, 0, 1, 1]}, dtype=float)
    clean = probability_of_backtest_overfitting(robust, n_splits=2, metric="mean")
    np.testing.assert_allclose(clean.logits, [math.log(3.0)] * 2)
    assert clean.pbo == 0.0 and clean.probability_of_loss == 0.0


def test_pbo_of_skill_less_configurations_is_one_half():
    """Pure noise: IS and OOS are independent, the IS-best's OOS rank is uniform, E[PBO] = 0.5.
    One dataset's PBO spreads widely (sd ≈ 0.17: combinations share data), so average 20 seeds."""
    pbos = [
        probability_of_backtest_overfitting(np.random.default_rng(seed).normal(0, 0.01, (1000, 50)), n_splits=16).pbo
        for seed in range(20)
    ]
    assert np.mean(pbos) == pytest.approx(0.5, abs=0.1)


def test_pbo_is_zero_when_one_configuration_has_real_skill():
    performance = np.random.default_rng(1).normal(0, 0.01, (1000, 50))
    performance[:, 7] += 0.003  # per-period SR 0.3 in every period, far above the noise maxima
    result = probability_of_backtest_overfitting(performance)
    assert result.n_combinations == math.comb(16, 8)
    assert result.pbo <= 0.01
    assert np.mean(result.is_best == 7) > 0.99
    assert result.probability_of_loss == 0.0
    assert np.all(result.logits[result.is_best == 7] == pytest.approx(math.log(50)))


@pytest.mark.parametrize("metric", ["mean", "sharpe"])
def test_pbo_is_one_when_in_sample_gains_revert_out_of_sample(metric):
    """Every configuration's returns sum to zero over the whole sample, and halves are equal in
    size, so its OOS mean is minus its IS mean: the IS-best is exactly the OOS-worst."""
    performance = np.random.default_rng(2).normal(0, 0.01, (1024, 40))
    performance -= performance.mean(axis=0)
    result = probability_of_backtest_overfitting(performance, metric=metric)
    if metric == "mean":
        assert result.pbo == 1.0
        np.testing.assert_allclose(result.oos_relative_ranks, 1 / 41)
        np.testing.assert_allclose(result.oos_performance, -result.is_performance, atol=1e-15)
    assert result.pbo >= 0.99
    assert result.degradation_slope < -0.9
    assert result.probability_of_loss > 0.99


def test_pbo_vectorized_sharpe_matches_a_callable_metric():
    performance = np.random.default_rng(4).normal(0.0005, 0.01, (400, 12))

    def sharpe(block: np.ndarray) -> np.ndarray:
        return block.mean(axis=0) / block.std(axis=0, ddof=1)

    fast = probability_of_backtest_overfitting(performance, n_splits=8)
    slow = probability_of_backtest_overfitting(performance, n_splits=8, metric=sharpe)
    assert slow.metric == "sharpe" and fast.n_combinations == slow.n_combinations == 70
    np.testing.assert_array_equal(fast.is_best, slow.is_best)
    np.testing.assert_allclose(fast.is_performance, slow.is_performance, rtol=1e-10)
    np.testing.assert_allclose(fast.oos_performance, slow.oos_performance, rtol=1e-10)
    np.testing.assert_allclose(fast.logits, slow.logits)
    assert fast.pbo == slow.pbo


def test_pbo_sampled_combinations_are_deterministic_with_the_seed():
    performance = np.random.default_rng(5).normal(0, 0.01, (600, 20))
    a = probability_of_backtest_overfitting(performance, n_splits=20, max_combinations=500, seed=11)
    b = probability_of_backtest_overfitting(performance, n_splits=20, max_combinations=500, seed=11)
    c = probability_of_backtest_overfitting(performance, n_splits=20, max_combinations=500, seed=12)
    assert a.n_combinations == 500
    np.testing.assert_array_equal(a.logits, b.logits)
    assert a.pbo == b.pbo
    assert not np.array_equal(a.logits, c.logits)
    # below the cap every combination is used and the seed is irrelevant
    full = probability_of_backtest_overfitting(performance, n_splits=8, seed=1)
    assert full.n_combinations == 70
    np.testing.assert_array_equal(full.logits, probability_of_backtest_overfitting(performance, n_splits=8, seed=2).logits)


def test_pbo_handles_rows_not_divisible_by_splits_and_rejects_bad_input():
    performance = np.random.default_rng(6).normal(0, 0.01, (103, 5))
    assert 0.0 <= probability_of_backtest_overfitting(performance, n_splits=10).pbo <= 1.0
    with pytest.raises(ValueError, match="even"):
        probability_of_backtest_overfitting(performance, n_splits=5)
    with pytest.raises(ValueError, match="2 configurations"):
        probability_of_backtest_overfitting(performance[:, :1])
    with pytest.raises(ValueError, match="rows per block"):
        probability_of_backtest_overfitting(performance[:20], n_splits=16)
    with_nan = performance.copy()
    with_nan[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        probability_of_backtest_overfitting(with_nan, n_splits=4)
    with pytest.raises(ValueError, match="metric"):
        probability_of_backtest_overfitting(performance, n_splits=4, metric="sortino")


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), scale=st.floats(0.01, 100.0))
def test_pbo_ignores_column_order_and_return_scale(seed, scale):
    rng = np.random.default_rng(seed)
    performance = rng.normal(0.0002, 0.01, (240, 8))
    base = probability_of_backtest_overfitting(performance, n_splits=6)
    order = rng.permutation(8)
    permuted = probability_of_backtest_overfitting(performance[:, order] * scale, n_splits=6)
    assert 0.0 <= base.pbo <= 1.0
    assert permuted.pbo == base.pbo
    np.testing.assert_allclose(permuted.logits, base.logits)
    np.testing.assert_array_equal(order[permuted.is_best], base.is_best)


# --------------------------------------------------------------------------------------------------
# Train / validation gap and the verdict
# --------------------------------------------------------------------------------------------------


def folds(train, valid, metric="rank_ic") -> pd.DataFrame:
    return pd.DataFrame({"fold": range(1, len(train) + 1), f"train_{metric}": train, f"valid_{metric}": valid})


def test_train_validation_gap_hand_checked():
    # gaps 0.25, 0.26, 0.18: mean 0.23, sample std √0.0019, t = 0.23 / (std / √3)
    stats = train_validation_gap(folds([0.30, 0.25, 0.20], [0.05, -0.01, 0.02]))
    std = math.sqrt(0.0019)
    t = 0.23 / (std / math.sqrt(3))
    assert stats["metric"] == "rank_ic" and stats["n_folds"] == 3
    assert stats["train_mean"] == pytest.approx(0.25)
    assert stats["valid_mean"] == pytest.approx(0.02)
    assert stats["gap_mean"] == pytest.approx(0.23)
    assert stats["gap_std"] == pytest.approx(std)
    assert stats["gap_max"] == pytest.approx(0.26)
    assert stats["share_valid_below_zero"] == pytest.approx(1 / 3)
    assert stats["gap_t_stat"] == pytest.approx(t)
    # Student t with 2 degrees of freedom has a closed-form tail: (1 - t/√(t² + 2)) / 2
    assert stats["gap_p_value"] == pytest.approx((1 - t / math.sqrt(t**2 + 2)) / 2)


def test_train_validation_gap_for_lower_is_better_metrics_and_nan_folds():
    stats = train_validation_gap(folds([0.010, 0.012, np.nan], [0.014, 0.013, 0.02], "rmse"), metric="rmse")
    assert stats["n_folds"] == 2
    assert stats["gap_mean"] == pytest.approx(0.0025)  # valid - train: positive is worse
    assert stats["share_valid_below_zero"] == 0.0


def test_train_validation_gap_edge_cases():
    same = train_validation_gap(folds([0.2, 0.2], [0.1, 0.1]))
    assert same["gap_t_stat"] == math.inf and same["gap_p_value"] == 0.0
    one = train_validation_gap(folds([0.2], [0.1]))
    assert one["gap_mean"] == pytest.approx(0.1) and math.isnan(one["gap_std"]) and math.isnan(one["gap_t_stat"])
    with pytest.raises(ValueError, match="valid_ic"):
        train_validation_gap(folds([0.2], [0.1]), metric="ic")


def test_verdict_pass_warn_fail():
    good = {"pbo": 0.1, "dsr": 0.99, "gap_mean": 0.05, "share_valid_below_zero": 0.2}
    assert verdict(good) == ("pass", [])

    level, reasons = verdict({**good, "pbo": 0.3, "dsr": 0.9})
    assert level == "warn"
    assert reasons == [
        "warn: pbo 0.3 > pbo_warn 0.25 (probability of backtest overfitting)",
        "warn: dsr 0.9 < dsr_warn 0.95 (deflated Sharpe ratio)",
    ]

    level, reasons = verdict({**good, "pbo": 0.3, "gap_mean": 0.25, "share_valid_below_zero": 0.6})
    assert level == "fail"
    assert reasons == [
        "warn: pbo 0.3 > pbo_warn 0.25 (probability of backtest overfitting)",
        "fail: gap_mean 0.25 > gap_fail 0.2 (mean train-validation gap)",
        "warn: share_valid_below_zero 0.6 > valid_below_zero_warn 0.5 (share of folds validating below zero)",
    ]
    level, reasons = verdict({"dsr": 0.3})
    assert level == "fail" and reasons == ["fail: dsr 0.3 < dsr_fail 0.5 (deflated Sharpe ratio)"]


def test_verdict_bounds_are_strict_and_configurable():
    assert verdict({"pbo": 0.25, "dsr": 0.95, "gap_mean": 0.1})[0] == "pass"
    assert verdict({"pbo": 0.5})[0] == "warn"
    strict = ValidationBounds(pbo_warn=0.05, pbo_fail=0.2)
    assert verdict({"pbo": 0.1}, strict)[0] == "warn"
    assert verdict({"pbo": 0.3}, strict)[0] == "fail"
    no_dsr = ValidationBounds(dsr_warn=None, dsr_fail=None)
    assert verdict({"dsr": 0.0}, no_dsr) == ("pass", [])
    with pytest.raises(ValueError, match="pbo_warn"):
        ValidationBounds(pbo_warn=0.6, pbo_fail=0.5)
    with pytest.raises(ValueError, match="dsr_warn"):
        ValidationBounds(dsr_warn=0.4, dsr_fail=0.5)


def test_verdict_skips_absent_and_nan_stats_and_reads_the_helpers_outputs():
    assert verdict({"pbo": math.nan, "dsr": None, "unrelated": 5.0}) == ("pass", [])
    noise = np.random.default_rng(0).normal(0, 0.01, (400, 10))
    noise -= noise.mean(axis=0)  # in-sample gains revert: PBO = 1
    stats = {
        **probability_of_backtest_overfitting(noise, n_splits=8, metric="mean").summary(),
        **train_validation_gap(folds([0.30, 0.25, 0.20], [0.05, -0.01, 0.02])),
    }
    level, reasons = verdict(stats)
    assert level == "fail"
    assert [r.split(":")[1].split()[0] for r in reasons] == ["pbo", "gap_mean"]


def test_pbo_sharpe_of_constant_configurations_is_signed_infinity_or_zero():
    """A flat config (no trades) has Sharpe 0, a constant gain +inf: it wins both halves."""
    performance = np.random.default_rng(8).normal(0, 0.01, (200, 4))
    performance[:, 1] = 0.0
    performance[:, 2] = 0.001
    result = probability_of_backtest_overfitting(performance, n_splits=4)
    np.testing.assert_array_equal(result.is_best, 2)
    assert np.all(result.is_performance == np.inf) and result.pbo == 0.0
    assert math.isnan(result.degradation_slope)  # no finite pairs to regress
    assert sharpe_ratio([0.0, 0.0]) == 0.0 and sharpe_ratio([-1.0, -1.0]) == -math.inf
