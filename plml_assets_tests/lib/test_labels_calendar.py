"""The labels' calendar rule: a label whose future close is not exactly ``horizon`` panel dates
ahead (its symbol skipped a date in between) is unknown, so purging ``horizon`` dates suffices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plml_assets.lib.data.labels import forward_returns

SYMBOLS = ["AAPL", "JPM", "KO", "MSFT"]
GAPPY = "KO"


@pytest.fixture(scope="module")
def real_close(embedded_panel) -> pd.DataFrame:
    """Four real stocks over 2019 (252 dates), every symbol on every date."""
    panel = embedded_panel.loc["2019-01-01":"2019-12-31"]
    return panel[panel.index.get_level_values("symbol").isin(SYMBOLS)]


def drop_date(panel: pd.DataFrame, symbol: str, date: pd.Timestamp) -> pd.DataFrame:
    return panel.drop(index=(date, symbol))


def expected_labels(panel: pd.DataFrame, horizon: int) -> pd.Series:
    """Row by row: close h rows later over close, kept only when that row is h calendar dates on."""
    calendar = pd.DatetimeIndex(np.sort(panel.index.get_level_values("date").unique()))
    out = pd.Series(np.nan, index=panel.index)
    for symbol, rows in panel.groupby(level="symbol"):
        rows = rows.sort_index()
        dates = rows.index.get_level_values("date")
        close = rows["close"].to_numpy()
        for k in range(len(rows) - horizon):
            if calendar.get_loc(dates[k + horizon]) == calendar.get_loc(dates[k]) + horizon:
                out[(dates[k], symbol)] = close[k + horizon] / close[k] - 1
    return out


@pytest.mark.parametrize("horizon", [1, 3, 5])
def test_labels_reaching_over_a_skipped_date_are_unknown(real_close, horizon):
    calendar = pd.DatetimeIndex(np.sort(real_close.index.get_level_values("date").unique()))
    skipped_at = 100
    panel = drop_date(real_close, GAPPY, calendar[skipped_at])
    labels = forward_returns(panel, horizon=horizon)
    assert labels.index.equals(panel.index)

    gappy = labels.xs(GAPPY, level="symbol")
    gappy_close = panel.xs(GAPPY, level="symbol")["close"]
    # Rows dated in [skipped - h, skipped): their h-th next row lies h + 1 dates ahead -> NaN.
    blanked = calendar[skipped_at - horizon:skipped_at]
    assert gappy.loc[blanked].isna().all()
    # The only other unknown labels are the symbol's last h rows.
    assert gappy.isna().sum() == horizon + horizon
    # Before and after the window, the ordinary h-row return.
    known = gappy.dropna()
    rows = gappy_close.index
    for date in [calendar[0], calendar[skipped_at - horizon - 1], calendar[skipped_at + 1], rows[-horizon - 1]]:
        k = rows.get_loc(date)
        assert known[date] == pytest.approx(gappy_close.iloc[k + horizon] / gappy_close.iloc[k] - 1, rel=1e-12)
    pd.testing.assert_series_equal(labels, expected_labels(panel, horizon), check_names=False, rtol=1e-12)


def test_complete_symbols_are_unaffected_by_another_symbols_gap(real_close):
    calendar = pd.DatetimeIndex(np.sort(real_close.index.get_level_values("date").unique()))
    gappy = forward_returns(drop_date(real_close, GAPPY, calendar[100]), horizon=5)
    complete = forward_returns(real_close, horizon=5)
    for symbol in set(SYMBOLS) - {GAPPY}:
        pd.testing.assert_series_equal(gappy.xs(symbol, level="symbol"), complete.xs(symbol, level="symbol"))
        assert complete.xs(symbol, level="symbol").isna().sum() == 5


def test_calendar_rule_holds_for_a_symbol_first_panel(real_close):
    calendar = pd.DatetimeIndex(np.sort(real_close.index.get_level_values("date").unique()))
    panel = drop_date(real_close, GAPPY, calendar[50])
    date_first = forward_returns(panel, horizon=4)
    symbol_first = forward_returns(panel.swaplevel().sort_index(), horizon=4)
    pd.testing.assert_series_equal(symbol_first.swaplevel().sort_index(), date_first.sort_index())
    assert date_first.xs(GAPPY, level="symbol").loc[calendar[46:50]].isna().all()


def test_a_date_nobody_trades_is_not_a_gap():
    """The calendar is the panel's own dates: a market holiday missing for every symbol skips nothing."""
    dates = pd.bdate_range("2021-01-04", periods=30, name="date").delete(10)
    index = pd.MultiIndex.from_product([dates, ["A", "B", "C"]], names=["date", "symbol"])
    close = pd.Series(np.arange(1, len(index) + 1, dtype=float), index=index)
    labels = forward_returns(close.to_frame("close"), horizon=3)
    assert labels.isna().sum() == 3 * 3
    np.testing.assert_allclose(labels.xs("A", level="symbol").to_numpy()[:-3],
                               close.xs("A", level="symbol").to_numpy()[3:] / close.xs("A", level="symbol").to_numpy()[:-3] - 1)
