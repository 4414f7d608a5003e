"""Simulated market regimes for exercising the loop that runs itself (the daemon test, the soak
benchmark): real prices, transformed so that drift monitoring has something to find."""

from __future__ import annotations

import numpy as np
import pandas as pd


def volatility_regime(panel: pd.DataFrame, since: str | pd.Timestamp, factor: float = 4.0) -> pd.DataFrame:
    """The same symbols and trends, with every daily move's deviation from the symbol's mean move
    after ``since`` made ``factor`` times larger: a volatility regime a champion trained before
    ``since`` never saw. ``panel`` is long with ``date`` and ``symbol`` columns; open/high/low move
    with the close; prices stay positive (the moves are in logs)."""
    frame = panel.sort_values(["symbol", "date"]).copy()
    out = []
    for _, block in frame.groupby("symbol", sort=False):
        log_ret = np.log(block["close"]).diff().fillna(0.0).to_numpy()
        late = (block["date"] > pd.Timestamp(since)).to_numpy()
        if late.any():
            mean = log_ret[late].mean()
            log_ret[late] = mean + factor * (log_ret[late] - mean)
        close = float(block["close"].iloc[0]) * np.exp(np.cumsum(log_ret))
        ratio = close / block["close"].to_numpy()
        block = block.assign(close=close)
        for col in ("open", "high", "low"):
            if col in block:
                block[col] = block[col] * ratio
        out.append(block)
    return pd.concat(out).sort_values(["date", "symbol"]).reset_index(drop=True)
