"""Prediction targets: forward returns over a horizon of trading days.

A label at (t, s) uses prices up to ``horizon`` rows after t, so it is known only ``horizon``
trading days later; splits must purge and embargo around it (see ``lib/splits``).
"""

from __future__ import annotations

from numbers import Integral

import pandas as pd


def forward_returns(prices: pd.DataFrame, horizon: int = 5) -> pd.Series:
    """Simple return from each row's close to the close ``horizon`` rows later for the same symbol.

    Rows are counted per symbol (its own trading days), so a symbol that starts late or skips a
    date is not shifted onto another symbol's calendar. The last ``horizon`` rows of each symbol,
    whose future is not known yet, are NaN. Same index and row order as ``prices``; named
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
    if ordered is not close:
        returns = returns.reindex(close.index)
    return returns.rename(f"fwd_ret_{horizon}")
