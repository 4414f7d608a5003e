"""Forward-return labels on real prices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skfolio.datasets import load_sp500_dataset

from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.features.base import build_features

LATE_SYMBOL, LATE_START_ROW = "BBY", 300


@pytest.fixture(scope="module")
def close_panel() -> pd.DataFrame:
    """Twenty real adjusted closes since 2018, one symbol starting late."""
    wide = load_sp500_dataset().loc["2018-01-01":].astype("float64")
    wide.iloc[:LATE_START_ROW, wide.columns.get_loc(LATE_SYMBOL)] = np.nan
    panel = wide.rename_axis(index="date", columns="symbol").stack(future_stack=True).dropna().rename("close").to_frame()
    return panel.sort_index()


def test_value_is_the_close_horizon_rows_later_over_today(close_panel):
    labels = forward_returns(close_panel, horizon=5)
    assert labels.name == "fwd_ret_5"
    assert labels.index.equals(close_panel.index)
    for symbol in ["AAPL", LATE_SYMBOL]:
        close = close_panel.xs(symbol, level="symbol")["close"].to_numpy()
        mine = labels.xs(symbol, level="symbol").to_numpy()
        np.testing.assert_allclose(mine[:-5], close[5:] / close[:-5] - 1, rtol=1e-12)


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(horizon=st.integers(min_value=1, max_value=400))
def test_exactly_the_last_horizon_rows_of_each_symbol_are_unknown(close_panel, horizon):
    labels = forward_returns(close_panel, horizon=horizon)
    rows = close_panel.groupby(level="symbol").size()
    missing = labels.isna().groupby(level="symbol").sum()
    pd.testing.assert_series_equal(missing, rows.clip(upper=horizon), check_names=False)
    # ... and they are the tail: the NaNs sit at the end of each symbol's history.
    tail = labels.groupby(level="symbol").tail(horizon)
    assert tail.isna().all()


def test_label_is_the_trailing_return_seen_horizon_days_later(close_panel):
    """The label at t is exactly the ret_5d feature at t+5: known then, not before."""
    labels = forward_returns(close_panel, horizon=5)
    features, _ = build_features(close_panel)
    for symbol in ["AAPL", LATE_SYMBOL]:
        label = labels.xs(symbol, level="symbol").to_numpy()
        later_feature = features.xs(symbol, level="symbol")["ret_5d"].to_numpy()
        np.testing.assert_allclose(label[:-5], later_feature[5:], rtol=1e-6)


def test_unsorted_and_symbol_first_panels_give_the_same_labels(close_panel):
    expected = forward_returns(close_panel, horizon=3)
    shuffled = close_panel.sample(frac=1.0, random_state=7)
    pd.testing.assert_series_equal(forward_returns(shuffled, horizon=3), expected.reindex(shuffled.index))
    symbol_first = close_panel.swaplevel().sort_index()
    pd.testing.assert_series_equal(
        forward_returns(symbol_first, horizon=3), expected.swaplevel().sort_index()
    )


def test_accepts_numpy_integer_horizon(close_panel):
    assert forward_returns(close_panel.iloc[:100], horizon=np.int64(2)).name == "fwd_ret_2"


@pytest.mark.parametrize("horizon", [0, -1, 2.5, True, "5"])
def test_rejects_a_horizon_that_is_not_a_positive_integer(close_panel, horizon):
    with pytest.raises(ValueError, match="horizon"):
        forward_returns(close_panel, horizon=horizon)


def test_rejects_a_panel_without_close(close_panel):
    with pytest.raises(ValueError, match="'close'"):
        forward_returns(close_panel.rename(columns={"close": "price"}))
