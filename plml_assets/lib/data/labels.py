"""Prediction targets: forward returns over a horizon of trading days.

A label at (t, s) uses prices up to ``horizon`` rows after t, so it is known only ``horizon``
trading days later; splits must purge and embargo around it (see ``lib/validation/splits``).
"""

from __future__ import annotations

from numbers import Integral

import pandas as pd


def forward_returns(prices: pd.DataFrame, horizon: int = 5) -> pd.Series:
    """Simple return from each row's close to the close ``horizon`` rows later for the same symbol.

    Rows are counted per symbol (its own trading days), so a symbol that starts late is not shifted
    onto another symbol's calendar; a label whose future close is not exactly ``horizon`` dates of
    the panel calendar ahead (the symbol skipped a date in between) is NaN, so that purging by
    ``horizon`` panel dates is always enough. The last ``horizon`` rows of each symbol, whose future
    is not known yet, are NaN. Same index and row order as ``prices``; named
    ``fwd_ret_{horizon}``.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, Integral) or horizon < 1:
        raise ValueError(f"horizon must be a positive whole number of trading days; got {horizon!r}")
    if "close" not in prices.columns:
        raise ValueError("price panel needs a 'close' column; got columns " + repr(sorted(prices.columns)))
    if not {"date", "symbol"} <= set(prices.index.names):
        raise ValueError(f"price panel needs 'date' and 'symbol' index levels; got {list(prices.index.names)}")

    close = prices["close"].astype("float64")
    # groupby.shift follows row order, which must be date order within each symbol: sorting a
    # (date, symbol) or a (symbol, date) index gives that.
    ordered = close if close.index.is_monotonic_increasing else close.sort_index()
    future = ordered.groupby(level="symbol", sort=False).shift(-int(horizon))
    returns = future / ordered - 1.0
    # Every purge in plml counts `horizon` dates of the panel calendar. A symbol that skips dates
    # would reach further than that in calendar time, into a test or holdout block, so its label
    # is left unknown unless the future close is exactly `horizon` panel dates ahead.
    row_dates = pd.Series(ordered.index.get_level_values("date"), index=ordered.index)
    future_dates = row_dates.groupby(level="symbol", sort=False).shift(-int(horizon))
    calendar = pd.DatetimeIndex(row_dates.unique()).sort_values()
    position = calendar.get_indexer(row_dates)
    target = position + int(horizon)
    expected = pd.Series(
        calendar[target.clip(max=len(calendar) - 1)].to_numpy(), index=ordered.index
    ).where(target < len(calendar))
    returns = returns.where(future_dates.eq(expected))
    if ordered is not close:
        returns = returns.reindex(close.index)
    return returns.rename(f"fwd_ret_{horizon}")
