"""CPCV backtest paths: each path trades every date once, on its own dates only."""

import numpy as np
import pandas as pd

from plml_assets.lib.backtest.engine import cpcv_path_backtests
from plml_assets.lib.validation.splits import CombinatorialPurgedCV


def _slice(embedded_panel: pd.DataFrame) -> pd.DataFrame:
    panel = embedded_panel[embedded_panel.index.get_level_values("symbol").isin(["AAPL", "KO", "MSFT", "PG", "JPM", "CVX"])]
    dates = panel.index.get_level_values("date").unique()[-420:]
    return panel[panel.index.get_level_values("date").isin(dates)]


def _split_predictions(prices: pd.DataFrame, cv: CombinatorialPurgedCV, score: pd.Series) -> list[pd.Series]:
    dates = prices.index.get_level_values("date")
    return [score[dates.isin(test)] for _, test in cv.split_dates(dates.unique())]


def test_oracle_paths_win_and_cover_their_dates(embedded_panel):
    prices = _slice(embedded_panel)
    cv = CombinatorialPurgedCV(n_groups=4, n_test_groups=2, horizon=1, embargo=0)
    tomorrow = prices["close"].groupby(level="symbol").shift(-1) / prices["close"] - 1.0
    returns, stats = cpcv_path_backtests(_split_predictions(prices, cv, tomorrow.fillna(0.0)), cv.paths(prices.index.get_level_values("date").unique()), prices, cost_bps=0.0)
    assert list(returns.columns) == [f"path_{p}" for p in range(1, cv.n_paths + 1)]
    assert len(returns) == prices.index.get_level_values("date").nunique()  # every date once per path
    assert (stats["sharpe"] > 5).all()  # knowing tomorrow's return wins on every path


def test_a_reversed_oracle_loses_and_costs_lower_every_path(embedded_panel):
    prices = _slice(embedded_panel)
    cv = CombinatorialPurgedCV(n_groups=4, n_test_groups=2, horizon=1, embargo=0)
    dates = prices.index.get_level_values("date").unique()
    tomorrow = (prices["close"].groupby(level="symbol").shift(-1) / prices["close"] - 1.0).fillna(0.0)
    _, losing = cpcv_path_backtests(_split_predictions(prices, cv, -tomorrow), cv.paths(dates), prices, cost_bps=0.0)
    assert (losing["sharpe"] < -5).all()
    rng = np.random.default_rng(0)
    noise = pd.Series(rng.standard_normal(len(prices)), index=prices.index)
    _, free = cpcv_path_backtests(_split_predictions(prices, cv, noise), cv.paths(dates), prices, cost_bps=0.0)
    _, costly = cpcv_path_backtests(_split_predictions(prices, cv, noise), cv.paths(dates), prices, cost_bps=20.0)
    assert (costly["ann_return"] < free["ann_return"]).all()
