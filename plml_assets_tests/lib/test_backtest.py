"""Backtest engine: hand-computed answers on tiny panels, invariants on a real slice."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from skfolio.datasets import load_sp500_dataset

from plml_assets.lib.backtest import engine as bt
from plml_assets.lib.backtest import plots as bp
from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.data.prices import wide_to_panel
from plml_assets.lib.features.base import build_features

SYMBOLS = ["AAPL", "AMD", "BAC", "CVX", "JPM", "KO", "MSFT", "PG"]


def panel(closes: dict[str, list[float]], start: str = "2024-01-01") -> pd.DataFrame:
    """A price panel from per-symbol closes on consecutive business days (NaN = no row)."""
    n = len(next(iter(closes.values())))
    wide = pd.DataFrame(closes, index=pd.bdate_range(start, periods=n))
    return wide_to_panel(wide).dropna()


def panel_series(values: dict[str, list[float]], prices: pd.DataFrame, name: str = "score") -> pd.Series:
    dates = prices.index.get_level_values("date").unique()
    wide = pd.DataFrame(values, index=dates).rename_axis(index="date", columns="symbol")
    return wide.stack(future_stack=True).rename(name).reindex(prices.index)


@pytest.fixture(scope="module")
def real_prices() -> pd.DataFrame:
    """8 real adjusted closes, 2012-2017 (about 1500 dates)."""
    return wide_to_panel(load_sp500_dataset()[SYMBOLS].loc["2012-01-01":"2017-12-31"])


@pytest.fixture(scope="module")
def real_xy(real_prices) -> tuple[pd.DataFrame, pd.Series]:
    features, _ = build_features(real_prices)
    return features, forward_returns(real_prices, horizon=5)


# --- portfolio construction -------------------------------------------------------------------


def test_long_short_weights_are_dollar_neutral_equal_weight_top_and_bottom_quantile():
    dates = pd.bdate_range("2024-01-01", periods=3)
    symbols = [f"S{i}" for i in range(10)]
    index = pd.MultiIndex.from_product([dates, symbols], names=["date", "symbol"])
    scores = pd.Series(np.tile(np.arange(10.0), 3), index=index)
    scores.loc[(dates[1], slice(None))] = [np.nan] * 6 + [1.0, 2.0, 3.0, 4.0]  # 4 scored: floor(0.8) = 0 per leg
    weights = bt.long_short_weights(scores, quantile=0.2)

    first = weights.xs(dates[0], level="date")
    assert first.sum() == pytest.approx(0.0) and first.abs().sum() == pytest.approx(1.0)
    assert first[["S8", "S9"]].tolist() == [0.25, 0.25]  # top 20 %: 2 symbols at 0.5 / 2
    assert first[["S0", "S1"]].tolist() == [-0.25, -0.25]
    assert (first.drop(["S0", "S1", "S8", "S9"]) == 0).all()
    assert (weights.xs(dates[1], level="date") == 0).all()  # too few symbols: no position
    assert weights.index.equals(scores.index)


@settings(max_examples=40, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.integers(-3, 3)), min_size=1, max_size=25),
    quantile=st.sampled_from([0.1, 0.2, 0.3, 0.5]),
)
def test_long_short_book_is_neutral_gross_one_or_flat_never_both_legs(values, quantile):
    index = pd.MultiIndex.from_product([[pd.Timestamp("2024-01-02")], [f"S{i:02d}" for i in range(len(values))]],
                                       names=["date", "symbol"])
    scores = pd.Series([np.nan if v is None else float(v) for v in values], index=index)
    weights = bt.long_short_weights(scores, quantile)
    assert weights.sum() == pytest.approx(0.0, abs=1e-12)
    assert weights.abs().sum() == pytest.approx(1.0) or (weights == 0).all()
    if (weights != 0).any():  # every long scores at least as high as every short
        assert scores[weights > 0].min() >= scores[weights < 0].max()
        assert (weights > 0).sum() == math.floor(scores.count() * quantile + 1e-9)


def test_long_only_topk_holds_the_k_best_at_one_over_k_and_skips_thin_dates():
    dates = pd.bdate_range("2024-01-01", periods=2)
    index = pd.MultiIndex.from_product([dates, ["A", "B", "C", "D", "E"]], names=["date", "symbol"])
    scores = pd.Series([5, 1, 4, 2, 3, np.nan, np.nan, np.nan, 2, 1], index=index, dtype=float)
    weights = bt.long_only_topk_weights(scores, k=3)
    first = weights.xs(dates[0], level="date")
    assert first.to_dict() == pytest.approx({"A": 1 / 3, "B": 0.0, "C": 1 / 3, "D": 0.0, "E": 1 / 3})
    assert first.sum() == pytest.approx(1.0)
    assert (weights.xs(dates[1], level="date") == 0).all()  # 2 scored symbols < k


# --- timing: positions at t earn t+1 ----------------------------------------------------------


def test_positions_decided_at_t_earn_the_return_of_t_plus_1_hand_computed():
    prices = panel({"A": [100.0, 110.0, 99.0], "B": [50.0, 50.0, 55.0]})
    # Close of day 1: all in A. Close of day 2: all in B. Close of day 3: still B.
    weights = panel_series({"A": [1.0, 0.0, 0.0], "B": [0.0, 1.0, 1.0]}, prices, "weight")
    result = bt.simulate(weights, prices, cost_bps=10.0)
    # Day 2: A's +10 % (held since day 1). Day 3: B's +10 % (bought at the close of day 2). Had the
    # weights earned their own day's return (look-ahead), day 2 would be 0 and day 3 A's -10 %.
    np.testing.assert_allclose(result["gross_return"], [0.0, 0.10, 0.10])
    np.testing.assert_allclose(result["turnover"], [1.0, 2.0, 0.0])  # buy A; sell A + buy B; hold
    np.testing.assert_allclose(result["cost"], [0.001, 0.002, 0.0])
    np.testing.assert_allclose(result["net_return"], [-0.001, 0.098, 0.10])
    np.testing.assert_allclose(result["long_return"], result["gross_return"])
    assert result.index.equals(prices.index.get_level_values("date").unique())


def test_an_oracle_of_the_next_days_return_wins_and_the_same_score_one_day_late_does_not(real_prices):
    close = real_prices["close"]
    today = close / close.groupby(level="symbol").shift(1) - 1.0
    tomorrow = today.groupby(level="symbol").shift(-1)  # known only at t+1: a cheat
    oracle = bt.run_backtest(tomorrow, real_prices, quantile=0.25, cost_bps=0.0).metrics
    late = bt.run_backtest(today, real_prices, quantile=0.25, cost_bps=0.0).metrics
    assert oracle["sharpe"] > 15 and oracle["hit_rate"] > 0.95
    assert abs(late["sharpe"]) < 3 and late["hit_rate"] < 0.6


def test_prices_after_a_date_do_not_change_results_up_to_it(real_prices):
    cut = real_prices.index.get_level_values("date").unique()[700]
    shocked = real_prices.copy()
    later = shocked.index.get_level_values("date") > cut
    shocked.loc[later, "close"] *= np.random.default_rng(0).uniform(0.5, 1.5, later.sum())

    def run(prices):
        return bt.simulate(bt.long_short_weights(bt.momentum_scores(prices, 20)), prices, rebalance_every=3)

    pd.testing.assert_frame_equal(run(real_prices).loc[:cut], run(shocked).loc[:cut])


# --- turnover and costs -----------------------------------------------------------------------


def test_daily_rebalance_trades_back_the_drift_hand_computed():
    prices = panel({"A": [100.0, 120.0, 120.0], "B": [100.0, 100.0, 100.0]})
    weights = panel_series({"A": [0.5, 0.5, 0.5], "B": [0.5, 0.5, 0.5]}, prices, "weight")
    result = bt.simulate(weights, prices, cost_bps=5.0)
    # Day 2: the book returns 0.5 * 20 % = 10 %; A drifts to 0.6 / 1.1, B to 0.5 / 1.1, and
    # selling A / buying B back to 50/50 trades 2 * (0.6 / 1.1 - 0.5) = 1 / 11.
    np.testing.assert_allclose(result["gross_return"], [0.0, 0.10, 0.0])
    np.testing.assert_allclose(result["turnover"], [1.0, 1 / 11, 0.0])
    np.testing.assert_allclose(result["cost"], result["turnover"] * 5e-4)
    np.testing.assert_allclose(result["net_return"], result["gross_return"] - result["cost"])
    # Held, not rebalanced: the drift is kept, nothing trades after day 1.
    held = bt.simulate(weights, prices, rebalance_every=10)
    np.testing.assert_allclose(held["turnover"], [1.0, 0.0, 0.0])
    np.testing.assert_allclose(held["gross_return"], [0.0, 0.10, 0.0])


def test_a_constant_position_has_zero_turnover_after_day_one(real_prices):
    one = real_prices.xs("KO", level="symbol", drop_level=False)
    result = bt.simulate(pd.Series(1.0, index=one.index), real_prices)  # always 100 % KO: drift keeps it
    assert result["turnover"].iloc[0] == pytest.approx(1.0)
    assert result["turnover"].iloc[1:].abs().max() < 1e-12
    assert result["cost"].iloc[1:].abs().max() < 1e-12
    ko = one["close"].to_numpy()
    np.testing.assert_allclose(result["gross_return"].iloc[1:], ko[1:] / ko[:-1] - 1, rtol=1e-10)

    equal = pd.Series(1 / len(SYMBOLS), index=real_prices.index)
    kept = bt.simulate(equal, real_prices, drift=False)  # weights kept, not drifted
    assert kept["turnover"].iloc[1:].abs().max() < 1e-12
    daily = bt.simulate(equal, real_prices)  # drifted then re-weighted: trades every day
    assert (daily["turnover"].iloc[1:] > 0).mean() > 0.99


def test_rebalance_every_n_trades_only_on_schedule_dates(real_prices):
    scores = bt.reversal_scores(real_prices, 5)
    result = bt.simulate(bt.long_short_weights(scores), real_prices, rebalance_every=5)
    first = int(np.flatnonzero(result["rebalanced"])[0])
    schedule = np.zeros(len(result), dtype=bool)
    schedule[first::5] = True
    np.testing.assert_array_equal(result["rebalanced"], schedule)
    assert (result["turnover"][~schedule] == 0).all()
    assert result.attrs == {"cost_bps": 5.0, "rebalance_every": 5, "drift": True}
    daily = bt.simulate(bt.long_short_weights(scores), real_prices)
    assert result["turnover"].mean() < daily["turnover"].mean()


# --- benchmark, drawdown, performance ---------------------------------------------------------


def test_equal_weight_benchmark_hand_computed_with_a_late_symbol():
    prices = panel({"A": [100.0, 110.0, 121.0], "B": [50.0, 45.0, 45.0], "C": [np.nan, 10.0, 20.0]})
    benchmark = bt.equal_weight_benchmark(prices)
    # Day 2: A +10 %, B -10 % (C has no close before). Day 3: A +10 %, B 0 %, C +100 %.
    np.testing.assert_allclose(benchmark.to_numpy(), [0.0, 0.0, (0.10 + 0.0 + 1.0) / 3], atol=1e-15)
    assert benchmark.name == "benchmark_return" and benchmark.index.name == "date"


def test_max_drawdown_of_a_hand_made_equity_curve():
    equity = np.array([1.0, 1.2, 0.9, 1.1, 0.6, 0.8, 1.3])
    returns = pd.Series(equity[1:] / equity[:-1] - 1)
    assert bt.max_drawdown(returns) == pytest.approx(0.6 / 1.2 - 1)  # -50 %: peak 1.2, trough 0.6
    np.testing.assert_allclose(bt.drawdown(returns), [0, -0.25, -1 / 12, -0.5, -1 / 3, 0.0])
    assert bt.max_drawdown(pd.Series([-0.1, -0.1])) == pytest.approx(0.81 - 1)  # from the initial 1
    assert bt.max_drawdown(pd.Series([0.01, 0.02])) == 0.0


def _result(net: list[float], turnover: list[float], exposure: list[float]) -> pd.DataFrame:
    index = pd.bdate_range("2024-01-01", periods=len(net), name="date")
    frame = pd.DataFrame({"net_return": net, "turnover": turnover, "gross_exposure": exposure}, index=index)
    frame["cost"] = frame["turnover"] * 1e-4
    frame["gross_return"] = frame["net_return"] + frame["cost"]
    frame["net_exposure"] = 0.0
    return frame


def test_performance_matches_the_formulas_and_starts_at_the_first_trade():
    net = [0.0, 0.0, -0.0001, 0.01, -0.005, 0.02, 0.0, -0.01]  # two idle days before the first trade
    result = _result(net, [0, 0, 1, 0.5, 0.5, 0.2, 0, 0.3], [0, 0, 1, 1, 1, 1, 1, 1])
    benchmark = pd.Series([0.5, 0.5, 0.001, 0.002, 0.0, 0.01, -0.01, 0.0], index=result.index)
    m = bt.performance(result, benchmark, periods_per_year=252)
    live = np.array(net[2:])
    active = live - benchmark.to_numpy()[2:]
    assert m["n_days"] == 6
    assert m["sharpe"] == pytest.approx(live.mean() / live.std(ddof=1) * math.sqrt(252))
    assert m["ann_volatility"] == pytest.approx(live.std(ddof=1) * math.sqrt(252))
    assert m["ann_return"] == pytest.approx(np.prod(1 + live) ** (252 / 6) - 1)
    assert m["total_return"] == pytest.approx(np.prod(1 + live) - 1)
    assert m["hit_rate"] == pytest.approx(2 / 6)
    assert m["avg_turnover"] == pytest.approx(2.5 / 6)
    assert m["excess_return"] == pytest.approx(active.mean() * 252)
    assert m["information_ratio"] == pytest.approx(active.mean() / active.std(ddof=1) * math.sqrt(252))
    assert m["information_ratio_vs_cash"] == pytest.approx(m["sharpe"])
    assert m["max_drawdown"] == pytest.approx(bt.max_drawdown(pd.Series(live)))
    assert math.isnan(bt.performance(result)["information_ratio"])  # no benchmark, no IR


def test_ic_stats_tstat_is_mean_over_std_times_sqrt_n():
    dates = pd.bdate_range("2024-01-01", periods=3)
    index = pd.MultiIndex.from_product([dates, ["A", "B", "C"]], names=["date", "symbol"])
    scores = pd.Series([1, 2, 3, 1, 2, 3, 1, 2, 3], index=index, dtype=float)
    future = pd.Series([1, 2, 3, 3, 2, 1, 1, 3, 2], index=index, dtype=float)
    stats = bt.ic_stats(scores, future)
    np.testing.assert_allclose(stats.rank_ic, [1.0, -1.0, 0.5])
    np.testing.assert_allclose(stats.ic, [1.0, -1.0, 0.5])
    ics = np.array([1.0, -1.0, 0.5])
    s = stats.summary
    assert s["rank_ic_mean"] == pytest.approx(ics.mean())
    assert s["rank_ic_std"] == pytest.approx(ics.std(ddof=1))
    assert s["rank_ic_ir"] == pytest.approx(ics.mean() / ics.std(ddof=1))
    assert s["rank_ic_tstat"] == pytest.approx(ics.mean() / ics.std(ddof=1) * math.sqrt(3))
    assert s["n_ic_dates"] == 3


# --- attribution ------------------------------------------------------------------------------


def test_attribution_hand_computed_and_additive():
    prices = panel({"A": [100.0, 110.0, 99.0, 99.0], "B": [50.0, 50.0, 55.0, 44.0]})
    weights = panel_series({"A": [0.5, -0.5, 0.0, 0.0], "B": [-0.5, 0.5, 0.0, 0.0]}, prices, "weight")
    result = bt.simulate(weights, prices, cost_bps=0.0)
    parts = bt.attribution(result, weights, prices)
    # Day 2: +0.5 * 10 % (A) - 0.5 * 0 % (B). Day 3, after the flip: -0.5 * -10 % (A) + 0.5 * 10 % (B).
    by_symbol = parts["by_symbol"]
    assert by_symbol.loc["A", "contribution"] == pytest.approx(0.05 + 0.05)
    assert by_symbol.loc["B", "contribution"] == pytest.approx(0.0 + 0.05)
    assert by_symbol.loc["A", "long_contribution"] == pytest.approx(0.05)
    assert by_symbol.loc["A", "short_contribution"] == pytest.approx(0.05)
    assert by_symbol["contribution"].sum() == pytest.approx(result["gross_return"].sum())
    legs = parts["legs"]
    assert legs.loc["long", "contribution"] + legs.loc["short", "contribution"] == pytest.approx(legs.loc["total", "contribution"])
    assert parts["by_year"].loc[2024, "net_return"] == pytest.approx((1 + result["net_return"]).prod() - 1)


def test_attribution_by_symbol_sums_to_the_gross_on_real_data(real_prices):
    weights = bt.long_short_weights(bt.momentum_scores(real_prices, 20), 0.25)
    result = bt.simulate(weights, real_prices, rebalance_every=5)
    parts = bt.attribution(result, weights, real_prices)
    assert parts["by_symbol"]["contribution"].sum() == pytest.approx(result["gross_return"].sum(), rel=1e-9)
    yearly = parts["by_year"]
    assert yearly.index.min() == 2012 and yearly.index.max() == 2017
    assert yearly["cost"].sum() == pytest.approx(result["cost"].sum())


# --- walk-forward ------------------------------------------------------------------------------


def _toy_xy(n_dates: int = 40, symbols: int = 3) -> tuple[pd.DataFrame, pd.Series]:
    dates = pd.bdate_range("2024-01-01", periods=n_dates)
    index = pd.MultiIndex.from_product([dates, [f"S{i}" for i in range(symbols)]], names=["date", "symbol"])
    rng = np.random.default_rng(1)
    return pd.DataFrame({"x": rng.normal(size=len(index))}, index=index), pd.Series(rng.normal(size=len(index)), index=index)


@pytest.mark.parametrize("max_train_dates", [None, 12])
def test_walk_forward_never_trains_on_a_label_that_reaches_the_prediction_dates(max_train_dates):
    X, y = _toy_xy()
    dates = X.index.get_level_values("date").unique()
    y.iloc[:2] = np.nan  # unlabelled rows are never trained on
    calls = []

    def fake(X_train, y_train, X_test):
        calls.append((X_train.index.get_level_values("date").unique(), X_test.index.get_level_values("date").unique()))
        assert y_train.notna().all() and y_train.index.equals(X_train.index)
        return np.full(len(X_test), float(len(calls)))

    wf = bt.walk_forward_scores(fake, X, y, retrain_every=7, min_train_dates=10, horizon=5, max_train_dates=max_train_dates)
    assert len(calls) == len(wf.windows) == 4  # retrains at date indices 15, 22, 29, 36
    for k, (train_dates, test_dates) in enumerate(calls):
        start = dates.get_loc(test_dates[0])
        assert start == 15 + 7 * k
        assert all(dates.get_loc(d) + 5 < start for d in train_dates)
        assert dates.get_loc(train_dates[-1]) + 5 == start - 1  # ... and everything up to that is used
        assert len(train_dates) == (min(start - 5, max_train_dates) if max_train_dates else start - 5)
        np.testing.assert_array_equal(wf.scores.loc[test_dates], k + 1)
    assert wf.windows["n_train_rows"].iloc[0] == 10 * 3 - 2
    first = wf.windows.loc[0]
    assert first["n_train_dates"] == 10 and first["test_start"] == dates[15] and first["n_test_rows"] == 21
    assert wf.scores.loc[: dates[14]].isna().all() and wf.scores.loc[dates[15]:].notna().all()


def test_walk_forward_predictions_ignore_labels_not_yet_known(real_xy):
    X, y = real_xy
    X = X.loc[: X.index.get_level_values("date").unique()[330]]
    dates = X.index.get_level_values("date").unique()
    fit_predict = bt.ridge_fit_predict(alpha=1.0)
    clean = bt.walk_forward_scores(fit_predict, X, y, retrain_every=500, min_train_dates=300, horizon=5).scores
    # Corrupt every label whose window reaches the first prediction date (index 305).
    leaked = y.copy()
    leaked[leaked.index.get_level_values("date") >= dates[300]] = 1e3
    dirty = bt.walk_forward_scores(fit_predict, X, leaked, retrain_every=500, min_train_dates=300, horizon=5).scores
    pd.testing.assert_series_equal(clean, dirty)
    assert clean.loc[dates[305]:].notna().all()


@pytest.mark.parametrize(
    "builder",
    [
        pytest.param(lambda: bt.ridge_fit_predict(alpha=1.0), id="ridge"),
        pytest.param(lambda: bt.xgboost_fit_predict({"n_estimators": 40, "max_depth": 3, "early_stopping_rounds": 10}), id="xgboost"),
    ],
)
def test_builders_give_varying_out_of_sample_scores_that_backtest(builder, real_prices, real_xy):
    X, y = real_xy
    wf = bt.walk_forward_scores(builder(), X, y, retrain_every=250, min_train_dates=500, horizon=5)
    dates = X.index.get_level_values("date").unique()
    assert list(wf.windows["retrain_date"]) == [dates[i] for i in range(505, len(dates), 250)]
    assert (wf.windows["train_end"] < wf.windows["retrain_date"]).all()
    oos = wf.scores.loc[dates[505]:]
    assert np.isfinite(oos).all() and wf.scores.loc[: dates[504]].isna().all()
    assert (oos.groupby(level="date").nunique() > 1).mean() > 0.8
    report = bt.run_backtest(wf.scores, real_prices, quantile=0.25, forward_returns=y)
    assert report.metrics["n_days"] == len(dates) - 505
    assert np.isfinite(report.metrics["sharpe"]) and -1 < report.metrics["rank_ic_mean"] < 1


def test_xgboost_builder_fits_without_early_stopping_when_the_block_is_too_short():
    X, y = _toy_xy(n_dates=30, symbols=5)
    fit_predict = bt.xgboost_fit_predict({"n_estimators": 5, "min_child_weight": 1.0}, horizon=2)
    wf = bt.walk_forward_scores(fit_predict, X, y, retrain_every=10, min_train_dates=10, horizon=2)
    assert list(wf.windows["n_train_dates"]) == [10, 20]  # 10 dates: too few for a purged tail
    assert wf.scores.notna().sum() == (30 - 12) * 5 and np.isfinite(wf.scores.dropna()).all()
    with pytest.raises(ValueError, match="max_depth"):
        bt.xgboost_fit_predict({"max_depth": 0})


def test_rank_normalize_per_date_scaled_ranks_with_missing_at_half():
    dates = pd.bdate_range("2024-01-01", periods=2)
    index = pd.MultiIndex.from_product([dates, ["A", "B", "C"]], names=["date", "symbol"])
    X = pd.DataFrame({"f": [3.0, 1.0, 2.0, np.nan, 7.0, np.nan], "g": [1.0, 1.0, 5.0, 2.0, 2.0, 2.0]}, index=index)
    ranked = bt.rank_normalize(X)
    np.testing.assert_allclose(ranked["f"], [1.0, 0.0, 0.5, 0.5, 0.5, 0.5])
    np.testing.assert_allclose(ranked["g"], [0.25, 0.25, 1.0, 0.5, 0.5, 0.5])


# --- baselines, comparison, plots -------------------------------------------------------------


def test_baseline_scores_are_trailing_returns():
    prices = panel({"A": [100.0, 101.0, 102.0, 103.0, 104.0, 105.0, 90.0]})
    reversal = bt.reversal_scores(prices, 5)
    momentum = bt.momentum_scores(prices, 5)
    assert reversal.name == "reversal_5d" and momentum.name == "momentum_5d"
    np.testing.assert_allclose(reversal.to_numpy()[5:], [-(105 / 100 - 1), -(90 / 101 - 1)])
    np.testing.assert_allclose(momentum.to_numpy()[5:], -reversal.to_numpy()[5:])
    assert reversal.iloc[:5].isna().all()


def test_compare_table_and_sentences():
    model = {"sharpe": 0.41, "ann_return": 0.051, "max_drawdown": -0.12, "rank_ic_mean": 0.021, "n_days": 500.0}
    momentum = {"sharpe": 0.12, "ann_return": 0.02, "max_drawdown": -0.203, "rank_ic_mean": 0.008, "n_days": 500.0}
    reversal = {"sharpe": 0.5, "ann_return": 0.06, "max_drawdown": -0.1, "rank_ic_mean": float("nan"), "n_days": 500.0}
    table = bt.compare({"xgboost": model, "momentum_20d": momentum, "reversal_5d": reversal})
    assert list(table.index) == ["xgboost", "momentum_20d", "reversal_5d"]
    assert list(table.columns[:3]) == ["sharpe", "ann_return", "max_drawdown"]
    assert bt.comparison_sentences(table) == [
        "xgboost: net Sharpe 0.41 vs momentum_20d 0.12 (+0.29), net annual return 5.1% vs 2.0% (+3.1 pts), "
        "max drawdown -12.0% vs -20.3% (+8.3 pts), mean rank IC 0.021 vs 0.008 (+0.013)",
        "xgboost: net Sharpe 0.41 vs reversal_5d 0.50 (-0.09), net annual return 5.1% vs 6.0% (-0.9 pts), "
        "max drawdown -12.0% vs -10.0% (-2.0 pts)",
    ]


def test_plots_are_png(real_prices):
    scores = bt.momentum_scores(real_prices, 20)
    report = bt.run_backtest(scores, real_prices, forward_returns=forward_returns(real_prices, 5))
    pngs = [
        bp.equity_curve_plot(report.result, report.benchmark),
        bp.drawdown_plot(report.result),
        bp.rolling_ic_plot({"momentum_20d": report.ic.rank_ic, "flat": report.ic.rank_ic * 0}, window=63),
        bp.yearly_returns_plot(report.result, report.benchmark),
    ]
    assert all(png.startswith(b"\x89PNG") and len(png) > 5000 for png in pngs)


def test_backtest_lib_does_not_import_dagster():
    code = ("import sys, plml_assets.lib.backtest.engine, plml_assets.lib.backtest.plots; "
            "sys.exit(int(any(m.split('.')[0] == 'dagster' for m in sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


def test_ridge_on_a_panel_normalized_once_scores_as_normalizing_every_window(real_xy):
    """rank_normalize works date by date, so normalizing the panel once (what the backtest asset does)
    gives the scores of normalizing each training and test window again."""
    X, y = real_xy
    X = X.loc[: X.index.get_level_values("date").unique()[420]]
    windowed = bt.walk_forward_scores(bt.ridge_fit_predict(alpha=1.0), X, y, retrain_every=40, min_train_dates=300, horizon=5)
    once = bt.walk_forward_scores(bt.ridge_fit_predict(alpha=1.0, normalized=True), bt.rank_normalize(X), y,
                                  retrain_every=40, min_train_dates=300, horizon=5)
    assert windowed.scores.notna().sum() > 900  # three refits
    np.testing.assert_allclose(once.scores.to_numpy(), windowed.scores.to_numpy(), rtol=1e-9, atol=1e-12, equal_nan=True)
