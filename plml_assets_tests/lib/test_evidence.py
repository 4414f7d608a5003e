"""Issue 13: the promotion evidence counts everything tried, in one metric, on one footing."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from plml_assets.lib.backtest import engine as bt
from plml_assets.lib.comparison.leaderboard import nested_walk_forward
from plml_assets.lib.registry.evidence import effective_observations, promotion_evidence, tried_configurations
from plml_assets.lib.validation import overfitting as of

DATES = pd.bdate_range("2015-01-01", periods=600)


def _trials(n_independent: int, copies: int, noise: float, seed: int = 0, skill: float = 0.0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    base = rng.normal(skill, 0.1, (len(DATES), n_independent))
    cols = {f"t{i * copies + j}": base[:, i] + rng.normal(0, noise, len(DATES)) for i in range(n_independent) for j in range(copies)}
    return pd.DataFrame(cols, index=DATES)


def test_near_duplicates_are_one_configuration_and_the_effective_count_is_the_independent_one():
    tried = _trials(n_independent=3, copies=4, noise=0.005)  # 12 trials, 3 decisions
    groups = of.near_duplicate_groups(tried, 0.95)
    assert len(groups) == 3 and sorted(len(g) for g in groups) == [4, 4, 4]
    clusters = of.cluster_trials(tried)
    assert clusters.n_trials == 12 and clusters.n_effective == 3
    assert "López de Prado (2019)" in clusters.method
    assert math.isfinite(clusters.sharpe_variance) and clusters.sharpe_variance > 0


def test_independent_trials_keep_their_count():
    tried = _trials(n_independent=6, copies=1, noise=0.0, seed=1)
    assert of.cluster_trials(tried).n_effective >= 4  # uncorrelated tries are (nearly) all independent


def test_pbo_over_copies_is_not_a_coin_flip():
    # One real decision, copied: the old PBO over the copies ranks noise (about 0.5); grouped, there is
    # nothing to choose between, so PBO is undefined rather than a fail.
    tried = _trials(n_independent=1, copies=6, noise=0.002, seed=2)
    raw = of.probability_of_backtest_overfitting(tried.to_numpy(), n_splits=16, metric="mean").pbo
    assert 0.2 < raw < 0.8
    pbo, details = of.trial_set_pbo(tried)
    assert math.isnan(pbo) and details["distinct"] == 1


def test_pbo_of_a_robust_best_is_low_and_runs_on_the_ranking_metric():
    tried = _trials(n_independent=4, copies=1, noise=0.0, seed=3)
    tried["t0"] += 0.05  # one configuration is genuinely better on every block
    pbo, details = of.trial_set_pbo(tried)
    assert pbo < 0.1 and details["blocks"] == 16


def test_dsr_deflates_over_the_effective_count_not_the_copies():
    skilled = pd.Series(np.random.default_rng(4).normal(0.012, 0.1, len(DATES)), index=DATES)
    copies = _trials(n_independent=2, copies=10, noise=0.004, seed=5)
    independent = _trials(n_independent=20, copies=1, noise=0.0, seed=5)
    few = promotion_evidence(copies, skilled)
    many = promotion_evidence(independent, skilled)
    assert few["trials"] == 20 and few["effective_trials"] == 2
    assert many["effective_trials"] > 10
    assert few["dsr"] > many["dsr"]  # 2 independent tries deflate less than 20


def test_tried_configurations_reads_every_study_trial_and_each_ensemble_rule():
    dates = [str(d.date()) for d in DATES[:30]]
    studies = {
        "xgboost": {"oof_dates": dates, "trial_date_scores": {"trial_0": [0.01] * 30, "trial_1": [None] + [0.02] * 29}},
        "lstm": {"oof_dates": dates, "trial_date_scores": {"trial_0": [0.0] * 30}},
    }
    ens = {"ensemble_mean": pd.Series(0.01, index=DATES[:30])}
    tried = tried_configurations(studies, ens)
    assert list(tried.columns) == ["xgboost:trial_0", "xgboost:trial_1", "lstm:trial_0", "ensemble_mean"]
    assert math.isnan(tried.iloc[0, 1])
    with pytest.raises(ValueError, match="re-materialize xgboost_study"):
        tried_configurations({"xgboost": {"oof_dates": dates[:3], "trial_date_scores": {"trial_0": [0.0]}}}, {})


def test_nested_walk_forward_scores_each_fold_by_a_choice_made_on_earlier_folds():
    # Pure-noise trials: the best trial's mean is the max of N noisy means (optimistic); the nested
    # score is not, and never uses the fold it scores to choose.
    rng = np.random.default_rng(6)
    folds = rng.normal(0.0, 0.02, (30, 3))
    study = {"scheme": "walk_forward", "trials": [{"number": i, "params": {}, "fold_scores": list(folds[i])} for i in range(30)]}
    nested = nested_walk_forward(study)
    assert nested.chosen[0] == 0  # fold 1: the first trial (the defaults), chosen on nothing
    assert nested.chosen[1] == int(np.argmax(folds[:, 0]))
    assert nested.chosen[2] == int(np.argmax(folds[:, :2].mean(axis=1)))
    best_of_n = folds.mean(axis=1).max()
    assert np.mean(nested.fold_scores) < best_of_n
    assert nested_walk_forward({"scheme": "kfold", "trials": study["trials"]}) is None


def test_tranches_and_lag_bring_turnover_down_to_what_a_5_day_label_supports(embedded_panel):
    scores = bt.momentum_scores(embedded_panel, 20)
    daily = bt.run_backtest(scores, embedded_panel)
    staggered = bt.run_backtest(scores, embedded_panel, holding_days=5, execution_lag=1)
    assert daily.metrics["avg_turnover"] > 0.3
    assert staggered.metrics["avg_turnover"] <= 0.25
    assert staggered.result.attrs["holding_days"] == 5 and staggered.result.attrs["execution_lag"] == 1


def test_execution_lag_trades_the_close_after_the_signal():
    dates = pd.bdate_range("2020-01-01", periods=6)
    idx = pd.MultiIndex.from_product([dates, ["A", "B"]], names=["date", "symbol"])
    prices = pd.DataFrame({"close": [100, 100, 110, 100, 121, 100, 121, 100, 121, 100, 121, 100]}, index=idx, dtype=float)
    signal = pd.Series([1.0, -1.0] + [np.nan] * 10, index=idx)  # one signal on day 0
    lag0 = bt.run_backtest(signal, prices, quantile=0.5, dates=dates[:1])
    lag1 = bt.run_backtest(signal, prices, quantile=0.5, dates=dates[:1], execution_lag=1)
    assert lag0.result["gross_return"].iloc[1] == pytest.approx(0.05)  # held from day 0's close: +10% * 0.5
    assert lag1.result["gross_return"].iloc[1] == 0.0  # bought at day 1's close: day 1's move is not earned
    assert lag1.result["gross_return"].iloc[2] == pytest.approx(0.05)
    targets = bt.staggered_targets(bt.long_short_weights(signal.fillna(np.nan), 0.5), prices, holding_days=2)
    assert targets.loc[dates[0], "A"] == pytest.approx(0.25) and targets.loc[dates[1], "A"] == pytest.approx(0.25)
    assert targets.loc[dates[2], "A"] == 0.0


def test_the_asset_defaults_trade_tranches_with_a_lag():
    from plml_assets.defs.backtest.assets import BacktestConfig
    from plml_assets.defs.comparison.assets import LeaderboardConfig
    from plml_assets.defs.validation.assets import CPCVConfig

    for config in (BacktestConfig(), LeaderboardConfig(), CPCVConfig()):
        assert config.holding_days is None and config.execution_lag_days == 1  # None: the label horizon


def _overlapping(rng: np.random.Generator, dates: pd.DatetimeIndex, h: int = 5) -> np.ndarray:
    """Per-date scores of a skill-less h-day label: the mean of h consecutive i.i.d. daily draws."""
    z = rng.normal(0, 1, len(dates) + h - 1)
    return np.stack([z[i:i + len(dates)] for i in range(h)]).mean(axis=0)


def test_effective_observations_of_overlapping_scores_are_about_one_in_h():
    rng = np.random.default_rng(11)
    dates = pd.bdate_range("2000-01-01", periods=5000)
    iid = pd.Series(rng.normal(0, 1, len(dates)), index=dates)
    ma = pd.Series(_overlapping(rng, dates), index=dates)
    assert effective_observations(iid, 5) == pytest.approx(5000, rel=0.1)
    assert effective_observations(ma, 5) == pytest.approx(1000, rel=0.2)
    assert effective_observations(ma, 1) == 5000


def test_overlapping_label_scores_do_not_pass_a_skill_less_pick():
    """A skill-less pick of 5-day-label scores, one effective trial (DSR = PSR against 0): counted as
    1,500 independent dates, about a quarter of such picks clear DSR 0.95 (sqrt(5) too confident);
    at their effective count about the nominal 5 %."""
    dates = pd.bdate_range("2000-01-01", periods=1500)
    rng = np.random.default_rng(0)
    passed = {1: 0, 5: 0}
    runs = 300
    for _ in range(runs):
        base = _overlapping(rng, dates)
        tried = pd.DataFrame({f"t{i}": base + rng.normal(0, 0.01, len(dates)) for i in range(3)}, index=dates)
        pick = pd.Series(_overlapping(rng, dates), index=dates)
        for h in passed:
            found = promotion_evidence(tried, pick, horizon=h)
            assert found["effective_trials"] == 1
            passed[h] += found["dsr"] > 0.95
    assert passed[1] / runs > 0.15  # the old, daily count
    assert passed[5] / runs < 0.10
