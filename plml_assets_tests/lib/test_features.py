"""Feature set on real prices: shape, names, values and, above all, no look-ahead."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from skfolio.datasets import load_sp500_dataset

from plml_assets.lib.features.base import (
    FEATURE_LOOKBACK_DAYS,
    FEATURE_SET_VERSION,
    PRICE_HOLE_FILL_LIMIT,
    build_features,
    feature_names,
)

SP500_5YR = Path(__file__).resolve().parents[2].parent / "shared/data/sp500_5yr.csv.gz"
OHLCV_SYMBOLS = ["AAPL", "MSFT", "XOM", "JPM", "EBAY", "DHR", "O", "UA", "FTV", "APTV", "BHF", "WRK", "CHD"]
LATE_SYMBOL, LATE_START_ROW = "BBY", 400
HOLE_SYMBOL, HOLE_ROW, OUTAGE_ROWS = "XOM", 600, slice(900, 910)  # XOM has a row on every date
GAP_SYMBOL, GAP_ROWS = "JPM", slice(697, 700)  # rows missing: windows count JPM's own rows
CLOSE_ONLY_SKIPPED = {
    "volume": "column 'volume' absent",
    "range": "columns 'high','low' absent",
    "gap": "column 'open' absent",
    "ohlc": "columns 'open','high','low' absent",
}


def _long_panel(wide: pd.DataFrame) -> pd.DataFrame:
    panel = wide.rename_axis(index="date", columns="symbol").stack(future_stack=True).dropna()
    return panel.rename("close").to_frame().sort_index()


@pytest.fixture(scope="module")
def close_panel() -> pd.DataFrame:
    """Twenty real adjusted closes since 2014: one symbol starts late, one has NaN closes, one
    misses three dates."""
    wide = load_sp500_dataset().loc["2014-01-01":].astype("float64")
    panel = _long_panel(wide)
    late_dates = wide.index[:LATE_START_ROW]
    panel = panel.drop(index=pd.MultiIndex.from_product([late_dates, [LATE_SYMBOL]]))
    panel = panel.drop(index=panel.xs(GAP_SYMBOL, level="symbol", drop_level=False).index[GAP_ROWS])
    hole_rows = panel.xs(HOLE_SYMBOL, level="symbol", drop_level=False).index
    panel.loc[hole_rows[HOLE_ROW], "close"] = np.nan  # one bad tick
    panel.loc[hole_rows[OUTAGE_ROWS], "close"] = np.nan  # a ten-day outage, longer than the fill limit
    return panel


@pytest.fixture(scope="module")
def close_features(close_panel):
    return build_features(close_panel)


@pytest.fixture(scope="module")
def ohlcv_panel() -> pd.DataFrame:
    if not SP500_5YR.exists():
        pytest.skip(f"{SP500_5YR} absent")
    prices = pd.read_csv(SP500_5YR, parse_dates=["date"])
    prices = prices[prices["symbol"].isin(OHLCV_SYMBOLS)]
    return prices.set_index(["date", "symbol"]).sort_index()


def _perturbed_after(panel: pd.DataFrame, cutoff: pd.Timestamp, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    later = panel.index.get_level_values("date") > cutoff
    perturbed = panel.astype("float64")
    factors = rng.uniform(0.5, 1.5, size=(int(later.sum()), panel.shape[1]))
    perturbed.loc[later] = panel.loc[later].to_numpy() * factors
    return perturbed


def _assert_same_up_to(cutoff, expected: pd.DataFrame, actual: pd.DataFrame) -> None:
    upto = expected.index.get_level_values("date") <= cutoff
    left, right = expected.loc[upto], actual.loc[actual.index.get_level_values("date") <= cutoff]
    assert left.index.equals(right.index)
    # Exact: a feature that moved by one ulp has read a future price.
    np.testing.assert_array_equal(left.to_numpy(), right.to_numpy())


def test_close_only_panel_gives_at_least_40_named_float32_features(close_panel, close_features):
    features, skipped = close_features
    assert features.shape[1] >= 40
    assert list(features.columns) == feature_names(["close"])
    assert features.columns.is_unique
    assert set(features.dtypes) == {np.dtype("float32")}
    for name in ["ret_5d", "vol_20d", "rsi_14", "macd_hist", "bb_pos_20", "ma_gap_50", "drawdown_250d",
                 "mom_12_1m", "cs_rank_ret_20d", "cs_z_vol_20d"]:
        assert name in features.columns
    assert skipped == CLOSE_ONLY_SKIPPED
    assert FEATURE_SET_VERSION and FEATURE_LOOKBACK_DAYS >= 253


def test_features_keep_the_input_index_and_have_no_inf(close_panel, close_features):
    features, _ = close_features
    assert features.index.equals(close_panel.index)
    assert not np.isinf(features.to_numpy()).any()
    # Once every window is full, a clean symbol has every feature.
    last_year = features.xs("AAPL", level="symbol").iloc[-250:]
    assert last_year.notna().all().all()


def test_early_rows_are_nan_until_the_window_is_full(close_features):
    features, _ = close_features
    late = features.xs(LATE_SYMBOL, level="symbol")
    assert late["ret_5d"].iloc[:5].isna().all() and late["ret_5d"].iloc[5:50].notna().all()
    assert late["vol_20d"].iloc[:20].isna().all() and late["vol_20d"].iloc[20:50].notna().all()
    assert late["drawdown_250d"].iloc[:249].isna().all() and late["drawdown_250d"].iloc[249:].notna().all()
    assert late["mom_12_1m"].iloc[:252].isna().all() and late["mom_12_1m"].iloc[252:].notna().all()


def test_price_holes_are_bridged_only_up_to_the_fill_limit(close_panel, close_features):
    features, _ = close_features
    hole = features.xs(HOLE_SYMBOL, level="symbol")
    assert hole.iloc[HOLE_ROW][["ret_1d", "vol_20d", "rsi_14", "ma_gap_50"]].notna().all()
    outage = hole.iloc[OUTAGE_ROWS]
    assert outage.iloc[:PRICE_HOLE_FILL_LIMIT]["ret_5d"].notna().all()
    assert outage.iloc[PRICE_HOLE_FILL_LIMIT:].isna().all().all()


@pytest.mark.parametrize("symbol", [LATE_SYMBOL, GAP_SYMBOL, HOLE_SYMBOL])
def test_time_series_features_do_not_depend_on_other_symbols(close_panel, close_features, symbol):
    features, _ = close_features
    alone, _ = build_features(close_panel.xs(symbol, level="symbol", drop_level=False))
    time_series = [c for c in features.columns if not c.startswith("cs_")]
    in_panel = features.xs(symbol, level="symbol", drop_level=False)
    pd.testing.assert_frame_equal(alone[time_series], in_panel[time_series], check_exact=True)


def test_cross_sectional_ranks_span_0_to_1_on_every_date(close_features):
    features, _ = close_features
    ranks = features[[c for c in features.columns if c.startswith("cs_rank_")]]
    assert len(ranks.columns) >= 5
    per_date = ranks.groupby(level="date")
    low, high, count = per_date.min(), per_date.max(), per_date.count()
    assert ((low >= 0) | low.isna()).all().all() and ((high <= 1) | high.isna()).all().all()
    many = count >= 2
    assert ((low == 0) | ~many).all().all() and ((high == 1) | ~many).all().all()


def test_cross_sectional_values_on_one_date(close_features):
    features, _ = close_features
    day = features.xs(features.index.get_level_values("date")[-1], level="date")
    ret_20d = day["ret_20d"].astype("float64")
    expected_z = (ret_20d - ret_20d.mean()) / ret_20d.std(ddof=1)
    np.testing.assert_allclose(day["cs_z_ret_20d"], expected_z, rtol=1e-5, atol=1e-6)
    order = ret_20d.rank(method="average")
    np.testing.assert_allclose(day["cs_rank_ret_20d"], (order - 1) / (len(order) - 1), atol=1e-7)


def _hand_ewm(values: np.ndarray, alpha: float) -> float:
    """Weighted mean with weights (1 - alpha)^age over all non-NaN values."""
    kept = values[~np.isnan(values)]
    weights = (1.0 - alpha) ** np.arange(len(kept))[::-1]
    return float(np.dot(weights, kept) / weights.sum())


@pytest.mark.parametrize("symbol", ["AAPL", GAP_SYMBOL])
def test_values_match_hand_written_formulas(close_panel, close_features, symbol):
    """Hand-written over the symbol's own rows; for GAP_SYMBOL t=700 is just after its gap."""
    features, _ = close_features
    close = close_panel.xs(symbol, level="symbol")["close"].to_numpy()
    mine = features.xs(symbol, level="symbol")
    log_ret = np.diff(np.log(close))
    for t in [60, 260, 700, len(close) - 1]:
        row = mine.iloc[t]
        assert row["ret_5d"] == pytest.approx(close[t] / close[t - 5] - 1, rel=1e-5)
        if t >= 252:
            assert row["mom_12_1m"] == pytest.approx(close[t - 21] / close[t - 252] - 1, rel=1e-5)
        else:
            assert np.isnan(row["mom_12_1m"])
        assert row["vol_20d"] == pytest.approx(np.std(log_ret[t - 20:t], ddof=1), rel=1e-5)
        changes = np.diff(close[: t + 1])
        gain = _hand_ewm(np.maximum(changes, 0), 1 / 14)
        loss = _hand_ewm(np.maximum(-changes, 0), 1 / 14)
        assert row["rsi_14"] == pytest.approx(100 * gain / (gain + loss), rel=1e-5)
        macd = (_hand_ewm(close[: t + 1], 2 / 13) - _hand_ewm(close[: t + 1], 2 / 27)) / close[t]
        assert row["macd_line"] == pytest.approx(macd, rel=1e-4, abs=1e-7)
        window = close[t - 19: t + 1]
        assert row["bb_pos_20"] == pytest.approx(
            (close[t] - (window.mean() - 2 * window.std())) / (4 * window.std()), rel=1e-4)
        assert row["ma_gap_50"] == pytest.approx(close[t] / close[t - 49: t + 1].mean() - 1, rel=1e-4, abs=1e-7)
        if t >= 249:
            assert row["drawdown_250d"] == pytest.approx(close[t] / close[t - 249: t + 1].max() - 1, abs=1e-7)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cutoff_row=st.integers(min_value=0, max_value=1800), seed=st.integers(0, 2**16))
@example(cutoff_row=HOLE_ROW, seed=0)  # a filled hole must be filled from the past, not the next day
@example(cutoff_row=OUTAGE_ROWS.start + 1, seed=1)
def test_no_look_ahead_on_close_only_panel(close_panel, close_features, cutoff_row, seed):
    dates = close_panel.index.get_level_values("date").unique()
    cutoff = dates[cutoff_row]
    features, _ = close_features
    perturbed, _ = build_features(_perturbed_after(close_panel, cutoff, seed))
    _assert_same_up_to(cutoff, features, perturbed)


def test_history_cut_at_a_date_gives_the_same_features_up_to_it(close_panel, close_features):
    cutoff = close_panel.index.get_level_values("date").unique()[1000]
    features, _ = close_features
    truncated, _ = build_features(close_panel[close_panel.index.get_level_values("date") <= cutoff])
    _assert_same_up_to(cutoff, features, truncated)


def test_lookback_days_of_history_reproduce_the_latest_features(close_panel, close_features):
    """What serving relies on: the last FEATURE_LOOKBACK_DAYS rows are enough for today's features."""
    features, _ = close_features
    dates = close_panel.index.get_level_values("date").unique()
    recent = close_panel[close_panel.index.get_level_values("date") >= dates[-FEATURE_LOOKBACK_DAYS]]
    served, _ = build_features(recent)
    today = dates[-1]
    expected, actual = features.xs(today, level="date"), served.xs(today, level="date")
    ranks = [c for c in features.columns if c.startswith("cs_rank_")]
    values = [c for c in features.columns if c not in ranks]
    np.testing.assert_allclose(actual[values], expected[values], rtol=1e-4, atol=1e-5)
    assert (actual[ranks] == expected[ranks]).to_numpy().mean() > 0.99


def test_ohlcv_panel_adds_volume_range_gap_features(ohlcv_panel):
    features, skipped = build_features(ohlcv_panel)
    assert skipped == {}
    assert list(features.columns) == feature_names(ohlcv_panel.columns)
    assert features.shape[1] > len(feature_names(["close"]))
    assert features.index.equals(ohlcv_panel.index)
    assert not np.isinf(features.to_numpy()).any()  # zero-volume days and missing opens included
    for name in ["volume_z_20d", "log_dollar_volume_20d", "hl_range_1d", "close_loc_1d", "overnight_gap_1d",
                 "garman_klass_vol_20d", "parkinson_vol_20d"]:
        assert features[name].notna().mean() > 0.9, name
    assert features["close_loc_1d"].between(0, 1).sum() == features["close_loc_1d"].notna().sum()
    # Range-based volatility agrees with close-to-close volatility in scale.
    ratio = (features["parkinson_vol_20d"] / features["vol_20d"]).median()
    assert 0.5 < ratio < 1.5


@pytest.mark.parametrize(
    "columns, expected_skipped",
    [
        (["close", "volume"], {"range", "gap", "ohlc"}),
        (["close", "high", "low"], {"volume", "gap", "ohlc"}),
        (["close", "open"], {"volume", "range", "ohlc"}),
        (["open", "high", "low", "close"], {"volume"}),
    ],
)
def test_groups_follow_the_columns_present(ohlcv_panel, columns, expected_skipped):
    panel = ohlcv_panel[columns].loc[ohlcv_panel.index.get_level_values("symbol").isin(["AAPL", "APTV"])]
    features, skipped = build_features(panel)
    assert set(skipped) == expected_skipped
    assert all(reason.endswith("absent") for reason in skipped.values())
    assert list(features.columns) == feature_names(columns)


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(cutoff_row=st.integers(min_value=0, max_value=1200), seed=st.integers(0, 2**16))
def test_no_look_ahead_on_ohlcv_panel(ohlcv_panel, cutoff_row, seed):
    dates = ohlcv_panel.index.get_level_values("date").unique()
    cutoff = dates[cutoff_row]
    features, _ = build_features(ohlcv_panel)
    perturbed, _ = build_features(_perturbed_after(ohlcv_panel, cutoff, seed))
    _assert_same_up_to(cutoff, features, perturbed)


def test_row_order_of_the_input_does_not_matter(close_panel, close_features):
    features, _ = close_features
    shuffled = close_panel.sample(frac=1.0, random_state=3)
    from_shuffled, _ = build_features(shuffled)
    assert from_shuffled.index.equals(shuffled.index)
    pd.testing.assert_frame_equal(from_shuffled, features.reindex(shuffled.index), check_exact=True)


def test_is_deterministic(ohlcv_panel):
    first, _ = build_features(ohlcv_panel)
    second, _ = build_features(ohlcv_panel)
    pd.testing.assert_frame_equal(first, second)


@pytest.mark.parametrize(
    "mangle, message",
    [
        (lambda p: p.drop(columns="close"), "close"),
        (lambda p: p.reset_index("symbol"), "MultiIndex"),
        (lambda p: pd.concat([p, p.iloc[:1]]), "duplicate"),
    ],
)
def test_rejects_malformed_panels(close_panel, mangle, message):
    with pytest.raises(ValueError, match=message):
        build_features(mangle(close_panel.iloc[:200]))


def test_empty_panel_gives_empty_features(close_panel):
    features, skipped = build_features(close_panel.iloc[:0])
    assert features.empty and list(features.columns) == feature_names(["close"])
    assert skipped == CLOSE_ONLY_SKIPPED
