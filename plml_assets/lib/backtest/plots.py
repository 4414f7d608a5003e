"""PNG plots of a backtest (matplotlib, Agg): equity, drawdown, rolling rank IC, yearly returns.

Inputs are the frames of ``lib.backtest``: a :func:`~plml_assets.lib.backtest.engine.simulate` result
(``gross_return``, ``net_return`` by date), an optional benchmark return Series on the same dates,
and per-date rank IC Series (``ic_stats(...).rank_ic``). Every function returns PNG bytes. Results
are drawn from their first trade on (``track_record``), like the metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

from plml_assets.lib.backtest.engine import track_record
from plml_assets.lib.plots import plt, to_png

__all__ = ["drawdown_plot", "equity_curve_plot", "rolling_ic_plot", "yearly_returns_plot"]


def _equity(returns: pd.Series) -> pd.Series:
    return (1.0 + returns.fillna(0.0)).cumprod()


def equity_curve_plot(result: pd.DataFrame, benchmark: pd.Series | None = None, title: str = "equity curve") -> bytes:
    """Growth of 1 invested: net and gross of costs, and the benchmark over the same dates."""
    result = track_record(result)
    fig, ax = plt.subplots(figsize=(8, 3.4))
    dates = pd.to_datetime(result.index)
    ax.plot(dates, _equity(result["net_return"]).to_numpy(), color="tab:blue", label="net")
    ax.plot(dates, _equity(result["gross_return"]).to_numpy(), color="tab:blue", ls="--", lw=0.9, label="gross")
    if benchmark is not None:
        bench = benchmark.reindex(result.index).fillna(0.0)
        ax.plot(dates, _equity(bench).to_numpy(), color="tab:gray", label="equal-weight benchmark")
    ax.axhline(1.0, color="black", lw=0.6)
    lo, hi = ax.get_ylim()
    if lo > 0 and hi / lo > 5:  # decades of compounding: a log axis keeps the early years readable
        ax.set_yscale("log")
    ax.set_ylabel("growth of 1" + (" (log scale)" if ax.get_yscale() == "log" else ""))
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return to_png(fig)


def drawdown_plot(result: pd.DataFrame, title: str = "drawdown (net)") -> bytes:
    """Net equity's distance below its running peak, in percent."""
    result = track_record(result)
    equity = _equity(result["net_return"])
    dd = equity / np.maximum(equity.cummax(), 1.0) - 1.0
    fig, ax = plt.subplots(figsize=(8, 2.6))
    dates = pd.to_datetime(result.index)
    ax.fill_between(dates, 100 * dd.to_numpy(), 0.0, color="tab:red", alpha=0.4)
    ax.set_ylabel("drawdown, %")
    ax.set_title(f"{title}: max {100 * dd.min():.1f}%")
    fig.autofmt_xdate()
    return to_png(fig)


def rolling_ic_plot(rank_ic: pd.Series | Mapping[str, pd.Series], window: int = 63, title: str = "rolling rank IC") -> bytes:
    """Rolling ``window``-date mean of per-date rank IC, one line per strategy."""
    series = {"rank IC": rank_ic} if isinstance(rank_ic, pd.Series) else dict(rank_ic)
    fig, ax = plt.subplots(figsize=(8, 3.0))
    for name, s in series.items():
        s = s.dropna().sort_index()
        rolled = s.rolling(window, min_periods=max(window // 2, 1)).mean()
        ax.plot(pd.to_datetime(rolled.index), rolled.to_numpy(), label=f"{name} (mean {s.mean():.4f})")
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_ylabel(f"{window}-date mean rank IC")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.autofmt_xdate()
    return to_png(fig)


def yearly_returns_plot(result: pd.DataFrame, benchmark: pd.Series | None = None, title: str = "returns by year") -> bytes:
    """Compounded net return per calendar year, beside the benchmark's."""
    result = track_record(result)
    years = pd.DatetimeIndex(result.index).year
    columns = {"net": result["net_return"]}
    if benchmark is not None:
        columns["benchmark"] = benchmark.reindex(result.index).fillna(0.0)
    yearly = pd.DataFrame(columns).groupby(years).apply(lambda g: (1.0 + g).prod() - 1.0)
    fig, ax = plt.subplots(figsize=(max(5.0, 0.5 * len(yearly) + 2), 3.0))
    x = np.arange(len(yearly))
    width = 0.8 / len(columns)
    for offset, (name, color) in enumerate(zip(yearly.columns, ("tab:blue", "tab:gray"))):
        ax.bar(x + (offset - (len(columns) - 1) / 2) * width, 100 * yearly[name].to_numpy(), width, color=color, label=name)
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xticks(x, [str(y) for y in yearly.index], fontsize=7, rotation=45)
    ax.set_ylabel("return, %")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return to_png(fig)
