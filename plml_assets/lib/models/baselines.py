"""Simple reference predictors a trained model has to beat."""

from __future__ import annotations

import pandas as pd


def momentum_score(prices: pd.DataFrame, window: int = 20) -> pd.Series:
    """Trailing ``window``-day return per symbol: the classic momentum signal (no look-ahead)."""
    if window < 1:
        raise ValueError(f"momentum window must be >= 1, got {window}")
    close = prices["close"]
    past = close.groupby(level="symbol").shift(window)
    return (close / past - 1.0).rename(f"momentum_{window}d")
