"""Backtest of cross-sectional scores: portfolios, daily P&L with costs, metrics, walk-forward.

Timing convention (the one rule every function here keeps):

- A score at (t, s) uses data dated <= t. Weights decided from it are traded at the close of t.
- Those positions earn the close-to-close return from t to t+1. In the result frame, the row of
  date ``D`` holds the return *realized* at the close of D by the book held since the close of the
  previous date, and the trades (turnover, cost) made at the close of D. So the gross return of a
  row never uses that row's weights: ``gross_return[D] = sum_s held[D-1, s] * r[D, s]``.

Returns are simple close-to-close returns on the panel's date calendar. A close missing on a date
is carried forward (the position is marked flat that day and catches up when the symbol trades
again); before a symbol's first close its return is 0 and it cannot be held (it has no score).
Weights are fractions of the portfolio's value (NAV); whatever is not invested is cash at a zero
rate, so a dollar-neutral book's return is its excess return over cash.

Between rebalances positions are held, not re-weighted: each weight drifts with its own return,
``w * (1 + r) / (1 + portfolio return)`` (``drift=True``, the default), which is what an untouched
book does. ``drift=False`` keeps the last target weights instead, as if the book were re-weighted
back to them for free every day; it exists for comparisons with backtesters that work that way.

Costs are per side: every unit of notional bought or sold pays ``cost_bps`` basis points, so
``cost = turnover * cost_bps / 1e4`` with ``turnover = sum_s |w[t, s] - drifted w[t-1, s]|``
(both legs, buys and sells). Opening a gross-1 book has turnover 1; a full round trip costs
``2 * cost_bps``. Costs are charged on the trade date: ``net_return = gross_return - cost``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from plml_assets.lib.models.baselines import momentum_score
from plml_assets.lib.validation.metrics import per_date_ic

__all__ = [
    "Backtest",
    "ICStats",
    "WalkForward",
    "attribution",
    "compare",
    "comparison_sentences",
    "daily_returns",
    "drawdown",
    "equal_weight_benchmark",
    "held_weights",
    "ic_stats",
    "long_only_topk_weights",
    "long_short_weights",
    "max_drawdown",
    "momentum_scores",
    "performance",
    "rank_normalize",
    "reversal_scores",
    "ridge_fit_predict",
    "run_backtest",
    "simulate",
    "staggered_targets",
    "track_record",
    "walk_forward_scores",
    "xgboost_fit_predict",
]

PERIODS_PER_YEAR = 252
FitPredict = Callable[[pd.DataFrame, pd.Series, pd.DataFrame], np.ndarray]

RESULT_COLUMNS = (
    "gross_return", "cost", "net_return", "turnover", "long_return", "short_return",
    "gross_exposure", "net_exposure", "n_long", "n_short", "rebalanced",
)


# --------------------------------------------------------------------------------------------
# Panel <-> wide helpers
# --------------------------------------------------------------------------------------------


def _check_panel_index(obj: pd.Series | pd.DataFrame, what: str) -> None:
    index = obj.index
    if not isinstance(index, pd.MultiIndex) or list(index.names[:2]) != ["date", "symbol"]:
        raise ValueError(f"{what} needs a (date, symbol) MultiIndex; got levels {list(index.names)}")
    if not index.is_unique:
        raise ValueError(f"{what} has duplicate (date, symbol) rows")


def _wide(values: pd.Series, what: str) -> pd.DataFrame:
    """A (date, symbol) Series as a date x symbol frame (sorted)."""
    _check_panel_index(values, what)
    return values.astype("float64").unstack("symbol").sort_index().sort_index(axis=1)


def _close_wide(prices: pd.DataFrame) -> pd.DataFrame:
    if "close" not in prices.columns:
        raise ValueError(f"prices need a 'close' column; got {sorted(prices.columns)}")
    close = _wide(prices["close"], "prices")
    return close.where(close > 0)


def daily_returns(prices: pd.DataFrame) -> pd.DataFrame:
    """Close-to-close simple returns, date x symbol, on the panel's calendar.

    ``r[t, s] = close[t, s] / close[t-1, s] - 1`` with missing closes carried forward (a skipped
    date earns 0 and the next traded date the whole move). 0 before a symbol's first close and on
    the first date.
    """
    close = _close_wide(prices).ffill()
    returns = close / close.shift(1) - 1.0
    return returns.fillna(0.0)


def _target_matrix(weights: pd.Series | pd.DataFrame, close: pd.DataFrame) -> pd.DataFrame:
    """Target weights on the prices' date x symbol grid (NaN and absent rows are 0)."""
    wide = weights if not isinstance(weights.index, pd.MultiIndex) else _wide(weights, "weights")
    if isinstance(wide, pd.Series):
        raise ValueError("weights must be a (date, symbol) Series or a date x symbol DataFrame")
    extra_dates = wide.index.difference(close.index)
    extra_symbols = wide.columns.difference(close.columns)
    if len(extra_dates) or len(extra_symbols):
        raise ValueError(
            f"weights hold {len(extra_dates)} date(s) and {len(extra_symbols)} symbol(s) absent from the "
            f"prices (e.g. {list(extra_dates[:3]) + list(extra_symbols[:3])}); a position needs a price"
        )
    return wide.reindex(index=close.index, columns=close.columns).fillna(0.0)


# --------------------------------------------------------------------------------------------
# Portfolio construction
# --------------------------------------------------------------------------------------------


def _ranked(scores: pd.Series) -> tuple[pd.Series, pd.Series, pd.Series]:
    """Per date: valid-score count, distinct-score count, and 1-based rank from the top.

    Ties are broken by row order (symbol order within a date), so the result is deterministic
    and a symbol never sits in both legs.
    """
    _check_panel_index(scores, "scores")
    values = scores.astype("float64").where(np.isfinite(scores.astype("float64")))
    grouped = values.groupby(level="date", sort=False)
    count = grouped.transform("count")
    distinct = grouped.transform("nunique")
    from_top = grouped.rank(method="first", ascending=False)
    return count, distinct, from_top


def long_short_weights(scores: pd.Series, quantile: float = 0.2, min_per_leg: int = 1) -> pd.Series:
    """Dollar-neutral book per date: long the top ``quantile`` of scores, short the bottom one.

    Each leg holds ``n_leg = floor(n * quantile)`` symbols (``n`` = symbols with a finite score
    that date) at equal weight, gross 0.5 per leg: ``+0.5 / n_leg`` and ``-0.5 / n_leg``, so the
    weights sum to 0 and their absolute values to 1. Dates with ``n_leg < min_per_leg`` or with
    fewer than 2 distinct scores (no ordering information) get no position (all weights 0).
    Returns a Series named ``weight`` on the scores' index (0 for unselected or NaN scores).
    """
    if not 0 < quantile <= 0.5:
        raise ValueError(f"quantile must be in (0, 0.5], got {quantile}")
    if min_per_leg < 1:
        raise ValueError(f"min_per_leg must be >= 1, got {min_per_leg}")
    count, distinct, from_top = _ranked(scores)
    n_leg = np.floor(count * quantile + 1e-9)  # guard 0.3 * 10 = 2.9999... style round-off
    tradable = (n_leg >= min_per_leg) & (distinct >= 2)
    is_long = tradable & (from_top <= n_leg)
    is_short = tradable & (from_top > count - n_leg)
    leg_weight = 0.5 / n_leg.where(tradable)
    weights = leg_weight.where(is_long, 0.0) - leg_weight.where(is_short, 0.0)
    return weights.fillna(0.0).rename("weight")


def long_only_topk_weights(scores: pd.Series, k: int = 10) -> pd.Series:
    """Long-only book per date: the ``k`` highest scores at ``1 / k`` each (weights sum to 1).

    Dates with fewer than ``k`` finite scores, or fewer than 2 distinct ones, get no position
    (all weights 0: the book is in cash). Returns a Series named ``weight`` on the scores' index.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    count, distinct, from_top = _ranked(scores)
    selected = (count >= k) & (distinct >= 2) & (from_top <= k)
    return pd.Series(np.where(selected, 1.0 / k, 0.0), index=scores.index, name="weight")


# --------------------------------------------------------------------------------------------
# Simulation
# --------------------------------------------------------------------------------------------


def _hold(targets: np.ndarray, returns: np.ndarray, rebalance_every: int, drift: bool):
    """Post-trade held weights, pre-trade (drifted) weights, gross returns and rebalance flags.

    The rebalance schedule starts on the first date with a nonzero target (so a warm-up period
    without scores does not shift it) and repeats every ``rebalance_every`` dates; on a scheduled
    date the book is set to the target, even an all-zero one (the book is closed).
    """
    n_dates, n_symbols = targets.shape
    held = np.zeros((n_dates, n_symbols))
    pre_trade = np.zeros((n_dates, n_symbols))
    gross = np.zeros(n_dates)
    rebalanced = np.zeros(n_dates, dtype=bool)
    active = np.flatnonzero(np.any(targets != 0.0, axis=1))
    if len(active):
        rebalanced[active[0]::rebalance_every] = True
    book = np.zeros(n_symbols)
    for k in range(n_dates):
        if k > 0 and book.any():
            gross[k] = book @ returns[k]
            if drift:
                nav = 1.0 + gross[k]
                # A book that lost everything holds nothing: there is no NAV to weight.
                book = book * (1.0 + returns[k]) / nav if nav > 0 else np.zeros(n_symbols)
        pre_trade[k] = book
        if rebalanced[k]:
            book = targets[k]
        held[k] = book
    return held, pre_trade, gross, rebalanced


def _validated_rebalance(rebalance_every: int) -> int:
    if isinstance(rebalance_every, bool) or not isinstance(rebalance_every, (int, np.integer)) or rebalance_every < 1:
        raise ValueError(f"rebalance_every must be a positive integer, got {rebalance_every!r}")
    return int(rebalance_every)


def staggered_targets(
    weights: pd.Series | pd.DataFrame, prices: pd.DataFrame, holding_days: int = 1, execution_lag: int = 0
) -> pd.DataFrame:
    """Target weights as traded: decided at each date's close, executed ``execution_lag`` dates later,
    and held in ``holding_days`` overlapping tranches (Jegadeesh and Titman, 1993).

    Each date forms a new tranche of ``1 / holding_days`` of the book from that date's weights and
    keeps it for ``holding_days`` dates, so the book on date ``t`` is the mean of the last
    ``holding_days`` dates' (lagged) weights: a fifth of the book is re-formed each day for a 5-day
    label, which is what a 5-day forecast supports, instead of re-forming the whole book daily.
    During the first ``holding_days - 1`` dates the book ramps up (missing tranches are cash), and
    after the last signal it runs off the same way. ``execution_lag=1`` trades at the close after the
    signal's own close (the signal's close is not a price anyone could still trade at once the signal
    is computed). Returns a date x symbol frame on the prices' grid, ready for :func:`simulate`.
    """
    for name, value, low in (("holding_days", holding_days, 1), ("execution_lag", execution_lag, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    close = _close_wide(prices)
    targets = _target_matrix(weights, close)
    if execution_lag:
        targets = targets.shift(int(execution_lag)).fillna(0.0)
    if holding_days > 1:
        targets = targets.rolling(int(holding_days), min_periods=1).sum() / float(holding_days)
    return targets


def held_weights(
    weights: pd.Series | pd.DataFrame, prices: pd.DataFrame, rebalance_every: int = 1, drift: bool = True
) -> pd.DataFrame:
    """The book actually held after the close of each date (date x symbol), as in :func:`simulate`."""
    close = _close_wide(prices)
    targets = _target_matrix(weights, close)
    held, _, _, _ = _hold(targets.to_numpy(), daily_returns(prices).to_numpy(), _validated_rebalance(rebalance_every), drift)
    return pd.DataFrame(held, index=close.index, columns=close.columns)


def simulate(
    weights: pd.Series | pd.DataFrame,
    prices: pd.DataFrame,
    cost_bps: float = 5.0,
    rebalance_every: int = 1,
    drift: bool = True,
) -> pd.DataFrame:
    """Daily P&L of target weights (see the module docstring for timing, holding and costs).

    ``weights``: target weights decided at each date's close, a (date, symbol) Series (e.g. from
    :func:`long_short_weights`) or a date x symbol frame; absent or NaN means 0.

    Returns one row per price date (index ``date``) with columns:
    ``gross_return`` (realized at this close by the book held since the previous close),
    ``cost`` (``turnover * cost_bps / 1e4``), ``net_return`` (gross - cost), ``turnover``
    (``sum |post-trade - drifted pre-trade weights|`` of today's trades), ``long_return`` /
    ``short_return`` (the long and short positions' contributions, summing to the gross return),
    ``gross_exposure`` / ``net_exposure`` (sum of |w| and of w of the book after today's trades),
    ``n_long`` / ``n_short`` (positions after today's trades) and ``rebalanced`` (a scheduled
    rebalance date). ``attrs`` records ``cost_bps``, ``rebalance_every`` and ``drift``.
    """
    if cost_bps < 0:
        raise ValueError(f"cost_bps must be >= 0, got {cost_bps}")
    rebalance_every = _validated_rebalance(rebalance_every)
    close = _close_wide(prices)
    targets = _target_matrix(weights, close).to_numpy()
    returns = daily_returns(prices).to_numpy()
    held, pre_trade, gross, rebalanced = _hold(targets, returns, rebalance_every, drift)

    before = np.vstack([np.zeros((1, held.shape[1])), held[:-1]])  # the book that earned each row
    contribution = before * returns
    turnover = np.abs(held - pre_trade).sum(axis=1)
    cost = turnover * cost_bps / 1e4
    result = pd.DataFrame(
        {
            "gross_return": gross,
            "cost": cost,
            "net_return": gross - cost,
            "turnover": turnover,
            "long_return": np.where(before > 0, contribution, 0.0).sum(axis=1),
            "short_return": np.where(before < 0, contribution, 0.0).sum(axis=1),
            "gross_exposure": np.abs(held).sum(axis=1),
            "net_exposure": held.sum(axis=1),
            "n_long": (held > 0).sum(axis=1),
            "n_short": (held < 0).sum(axis=1),
            "rebalanced": rebalanced,
        },
        index=close.index.rename("date"),
    )
    result.attrs.update({"cost_bps": float(cost_bps), "rebalance_every": rebalance_every, "drift": bool(drift)})
    return result


def equal_weight_benchmark(prices: pd.DataFrame) -> pd.Series:
    """Daily return of the equal-weight portfolio of the universe, rebalanced every close, no costs.

    At each close the book holds ``1/N`` of each of the ``N`` symbols that have a close that day;
    the row of date ``t`` is the return it earns to the close of ``t`` (a symbol that does not
    trade at ``t`` counts flat). 0 on the first date and on dates with nothing held before.
    Named ``benchmark_return``, indexed by ``date``.
    """
    close = _close_wide(prices)
    held_before = close.notna().shift(1, fill_value=False)
    returns = daily_returns(prices).where(held_before)
    return returns.mean(axis=1).fillna(0.0).rename("benchmark_return").rename_axis("date")


# --------------------------------------------------------------------------------------------
# Performance
# --------------------------------------------------------------------------------------------


def drawdown(returns: pd.Series) -> pd.Series:
    """Drawdown of the compounded equity curve: ``equity / running peak - 1`` (<= 0).

    The peak starts at the initial capital of 1, so a curve that only ever falls is in drawdown
    from its first row.
    """
    equity = (1.0 + returns.fillna(0.0)).cumprod()
    peak = np.maximum(equity.cummax(), 1.0)
    return (equity / peak - 1.0).rename("drawdown")


def max_drawdown(returns: pd.Series) -> float:
    """Deepest drawdown of the compounded equity curve, as a negative fraction (0 if none)."""
    return float(drawdown(returns).min()) if len(returns) else math.nan


def track_record(result: pd.DataFrame) -> pd.DataFrame:
    """The result from its first trade on: a leading period without positions (e.g. a walk-forward
    warm-up) is not a track record, and metrics, attribution and plots all start there."""
    traded = (result["gross_exposure"] > 0) | (result["turnover"] > 0)
    if not traded.any():
        return result.iloc[0:0]
    return result.loc[traded.idxmax():]


def _ann_growth(returns: pd.Series, periods_per_year: int) -> float:
    if len(returns) == 0:
        return math.nan
    growth = float(np.prod(1.0 + returns.to_numpy()))
    return growth ** (periods_per_year / len(returns)) - 1.0 if growth > 0 else -1.0


def _ratio(mean: float, std: float, periods_per_year: int) -> float:
    return mean / std * math.sqrt(periods_per_year) if std > 1e-12 and math.isfinite(std) else math.nan


def performance(
    result: pd.DataFrame, benchmark: pd.Series | None = None, periods_per_year: int = PERIODS_PER_YEAR
) -> dict[str, float]:
    """Headline metrics of a :func:`simulate` result, from its first trade to its last row.

    Returns (floats; returns are fractions, annualized with ``periods_per_year``):
    ``ann_return`` (compounded net growth per year), ``ann_volatility`` (net, ``std * sqrt(ppy)``),
    ``sharpe`` (net, ``mean / std * sqrt(ppy)``, zero risk-free rate: a dollar-neutral book is
    self-financing), ``gross_ann_return``, ``gross_sharpe``, ``total_return``, ``max_drawdown``
    (net, negative), ``avg_turnover`` (mean daily turnover), ``ann_cost`` (mean daily cost * ppy),
    ``hit_rate`` (share of days with a positive net return), ``avg_gross_exposure``,
    ``avg_net_exposure``, ``n_days``.

    Versus the benchmark (NaN without one): ``excess_return`` (annualized mean of net minus
    benchmark return), ``tracking_error``, ``information_ratio``, ``beta``, ``benchmark_ann_return``,
    ``benchmark_sharpe``. Versus cash (the relevant yardstick for a dollar-neutral long-short book;
    for long-only, read the benchmark ones): ``excess_return_vs_cash`` (annualized mean net return)
    and ``information_ratio_vs_cash`` (equal to the Sharpe ratio, cash earning zero).
    """
    rows = track_record(result)
    net, gross = rows["net_return"], rows["gross_return"]
    n = len(rows)
    mean, std = (float(net.mean()), float(net.std(ddof=1))) if n > 1 else (math.nan, math.nan)
    metrics: dict[str, float] = {
        "ann_return": _ann_growth(net, periods_per_year),
        "ann_volatility": std * math.sqrt(periods_per_year),
        "sharpe": _ratio(mean, std, periods_per_year),
        "gross_ann_return": _ann_growth(gross, periods_per_year),
        "gross_sharpe": _ratio(float(gross.mean()), float(gross.std(ddof=1)), periods_per_year) if n > 1 else math.nan,
        "total_return": float(np.prod(1.0 + net.to_numpy()) - 1.0) if n else math.nan,
        "max_drawdown": max_drawdown(net),
        "avg_turnover": float(rows["turnover"].mean()) if n else math.nan,
        "ann_cost": float(rows["cost"].mean()) * periods_per_year if n else math.nan,
        "hit_rate": float((net > 0).mean()) if n else math.nan,
        "avg_gross_exposure": float(rows["gross_exposure"].mean()) if n else math.nan,
        "avg_net_exposure": float(rows["net_exposure"].mean()) if n else math.nan,
        "n_days": float(n),
        "excess_return_vs_cash": mean * periods_per_year,
        "information_ratio_vs_cash": _ratio(mean, std, periods_per_year),
    }
    bench_keys = ("excess_return", "tracking_error", "information_ratio", "beta", "benchmark_ann_return", "benchmark_sharpe")
    metrics.update(dict.fromkeys(bench_keys, math.nan))
    if benchmark is not None and n > 1:
        bench = benchmark.reindex(rows.index)
        if bench.isna().any():
            raise ValueError(f"benchmark lacks {int(bench.isna().sum())} of the backtest's dates")
        active = net - bench
        active_std = float(active.std(ddof=1))
        bench_var = float(bench.var(ddof=1))
        metrics.update(
            {
                "excess_return": float(active.mean()) * periods_per_year,
                "tracking_error": active_std * math.sqrt(periods_per_year),
                "information_ratio": _ratio(float(active.mean()), active_std, periods_per_year),
                "beta": float(np.cov(net, bench, ddof=1)[0, 1] / bench_var) if bench_var > 0 else math.nan,
                "benchmark_ann_return": _ann_growth(bench, periods_per_year),
                "benchmark_sharpe": _ratio(float(bench.mean()), float(bench.std(ddof=1)), periods_per_year),
            }
        )
    return metrics


@dataclass(frozen=True)
class ICStats:
    """Per-date information coefficients of scores against forward returns, and their summary."""

    ic: pd.Series
    rank_ic: pd.Series
    summary: dict[str, float]


def _ic_summary(series: pd.Series, prefix: str) -> dict[str, float]:
    n = len(series)
    mean = float(series.mean()) if n else math.nan
    std = float(series.std(ddof=1)) if n > 1 else math.nan
    icir = mean / std if std > 1e-12 and math.isfinite(std) else math.nan
    return {
        f"{prefix}_mean": mean,
        f"{prefix}_std": std,
        f"{prefix}_ir": icir,
        f"{prefix}_tstat": icir * math.sqrt(n) if math.isfinite(icir) else math.nan,
    }


def ic_stats(scores: pd.Series, forward_returns: pd.Series) -> ICStats:
    """Per-date Pearson IC and Spearman rank IC (``lib.validation.metrics.per_date_ic``) with mean, std
    (ddof=1), ICIR (``mean / std``, per date, not annualized) and t-stat (``mean / std * sqrt(n)``).

    Summary keys: ``ic_mean``, ``ic_std``, ``ic_ir``, ``ic_tstat`` and the same for ``rank_ic``,
    plus ``n_ic_dates``. With an ``h``-day forward return, consecutive ICs share ``h - 1`` days of
    return, so the t-stat overstates significance by about ``sqrt(h)``; read it as an upper bound.
    """
    _check_panel_index(scores, "scores")
    _check_panel_index(forward_returns, "forward_returns")
    joined = pd.concat({"pred": scores, "true": forward_returns}, axis=1, join="inner").dropna()
    dates = joined.index.get_level_values("date")
    ic = per_date_ic(joined["true"], joined["pred"], dates, method="pearson")
    rank_ic = per_date_ic(joined["true"], joined["pred"], dates, method="spearman")
    summary = {**_ic_summary(ic, "ic"), **_ic_summary(rank_ic, "rank_ic"), "n_ic_dates": float(len(rank_ic))}
    return ICStats(ic=ic, rank_ic=rank_ic, summary=summary)


# --------------------------------------------------------------------------------------------
# Attribution
# --------------------------------------------------------------------------------------------


def attribution(
    result: pd.DataFrame,
    weights: pd.Series | pd.DataFrame,
    prices: pd.DataFrame,
    rebalance_every: int | None = None,
    drift: bool | None = None,
    periods_per_year: int = PERIODS_PER_YEAR,
) -> dict[str, pd.DataFrame]:
    """Where the returns came from.

    ``weights`` are the target weights given to :func:`simulate`; the held book is rebuilt with the
    result's ``rebalance_every`` and ``drift`` (from ``result.attrs``, or the arguments when given).

    All from the first trade on (:func:`track_record`).

    - ``by_year``: per calendar year, compounded ``gross_return`` and ``net_return``, summed
      ``cost``, ``long_return`` and ``short_return`` contributions, mean ``turnover``.
    - ``by_symbol``: per symbol, ``contribution`` = sum over t of ``held[t, s] * r[t+1, s]``
      (additive: the symbols' contributions sum to the summed gross return), split into
      ``long_contribution`` / ``short_contribution``, with ``avg_weight``, ``days_long`` and
      ``days_short`` (the book after each close); sorted by contribution, best first.
    - ``legs``: for ``long``, ``short`` and ``total`` (gross), the summed contribution, its
      annualized mean and volatility, Sharpe and hit rate.
    """
    rebalance_every = rebalance_every if rebalance_every is not None else result.attrs.get("rebalance_every", 1)
    drift = drift if drift is not None else result.attrs.get("drift", True)
    held = held_weights(weights, prices, rebalance_every, drift).reindex(result.index)
    returns = daily_returns(prices).reindex(result.index)
    before = held.shift(1).fillna(0.0)
    rows = track_record(result)
    held, before, contribution = held.loc[rows.index], before.loc[rows.index], (before * returns).loc[rows.index]

    year = rows.index.year
    compounded = rows[["gross_return", "net_return"]].groupby(year).apply(lambda g: (1.0 + g).prod() - 1.0)
    summed = rows[["cost", "long_return", "short_return"]].groupby(year).sum()
    by_year = pd.concat([compounded, summed, rows["turnover"].groupby(year).mean()], axis=1)
    by_year.index.name = "year"

    by_symbol = pd.DataFrame(
        {
            "contribution": contribution.sum(),
            "long_contribution": contribution.where(before > 0, 0.0).sum(),
            "short_contribution": contribution.where(before < 0, 0.0).sum(),
            "avg_weight": held.mean(),
            "days_long": (held > 0).sum(),
            "days_short": (held < 0).sum(),
        }
    ).sort_values("contribution", ascending=False)
    by_symbol.index.name = "symbol"

    legs = {}
    for leg, column in (("long", "long_return"), ("short", "short_return"), ("total", "gross_return")):
        series = rows[column]
        mean = float(series.mean()) if len(series) else math.nan
        std = float(series.std(ddof=1)) if len(series) > 1 else math.nan
        legs[leg] = {
            "contribution": float(series.sum()),
            "ann_mean": mean * periods_per_year,
            "ann_volatility": std * math.sqrt(periods_per_year),
            "sharpe": _ratio(mean, std, periods_per_year),
            "hit_rate": float((series > 0).mean()) if len(series) else math.nan,
        }
    return {"by_year": by_year, "by_symbol": by_symbol, "legs": pd.DataFrame(legs).T.rename_axis("leg")}


# --------------------------------------------------------------------------------------------
# Walk-forward out-of-sample scores
# --------------------------------------------------------------------------------------------


class WalkForward(NamedTuple):
    """Out-of-sample scores (NaN before the first retrain) and one row per retrain window."""

    scores: pd.Series
    windows: pd.DataFrame


def walk_forward_scores(
    fit_predict: FitPredict,
    X: pd.DataFrame,
    y: pd.Series,
    retrain_every: int = 63,
    min_train_dates: int = 252,
    horizon: int = 5,
    max_train_dates: int | None = None,
) -> WalkForward:
    """Out-of-sample scores from a model refitted every ``retrain_every`` dates.

    On the sorted unique dates of ``X`` (index ``i``), the label of date ``i`` spans
    ``(i, i + horizon]``. A retrain date ``d`` fits on the rows of dates ``i`` with
    ``i + horizon < index(d)`` (label fully known before d) and a known label, at most the last
    ``max_train_dates`` such dates, and predicts every row of the dates ``[d, next retrain)``
    (rows without a label too: that is how the model is used). The first retrain is at index
    ``min_train_dates + horizon``, so the first fit sees exactly ``min_train_dates`` dates; the
    following ones every ``retrain_every`` dates after it.

    ``fit_predict(X_train, y_train, X_test)`` returns one score per row of ``X_test``.
    Returns :class:`WalkForward` ``(scores, windows)``: scores on ``X.index`` named ``score``;
    windows with ``retrain_date``, ``train_start``, ``train_end``, ``n_train_dates``,
    ``n_train_rows``, ``test_start``, ``test_end``, ``n_test_dates``, ``n_test_rows``,
    ``fit_seconds``.
    """
    for name, value, minimum in (("retrain_every", retrain_every, 1), ("min_train_dates", min_train_dates, 1), ("horizon", horizon, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if max_train_dates is not None and max_train_dates < min_train_dates:
        raise ValueError(f"max_train_dates ({max_train_dates}) must be >= min_train_dates ({min_train_dates})")
    _check_panel_index(X, "X")
    codes, dates = pd.factorize(X.index.get_level_values("date"), sort=True)
    labels = y.reindex(X.index)
    labelled = labels.notna().to_numpy()
    first = min_train_dates + horizon
    if first >= len(dates):
        raise ValueError(
            f"{len(dates)} dates cannot hold {min_train_dates} training dates, a {horizon}-date purge and a test date"
        )
    scores = np.full(len(X), np.nan)
    windows = []
    starts = list(range(first, len(dates), retrain_every))
    for start, stop in zip(starts, starts[1:] + [len(dates)]):
        train_stop = start - horizon  # exclusive: i + horizon < start
        train_start = 0 if max_train_dates is None else max(0, train_stop - max_train_dates)
        train_rows = np.flatnonzero((codes >= train_start) & (codes < train_stop) & labelled)
        test_rows = np.flatnonzero((codes >= start) & (codes < stop))
        if len(train_rows) == 0:
            raise ValueError(f"no labelled training rows before {dates[start].date()} (dates {train_start}..{train_stop - 1})")
        began = time.perf_counter()
        predicted = np.asarray(fit_predict(X.iloc[train_rows], labels.iloc[train_rows], X.iloc[test_rows]), dtype="float64")
        if predicted.shape != (len(test_rows),):
            raise ValueError(f"fit_predict returned shape {predicted.shape} for {len(test_rows)} test rows")
        scores[test_rows] = predicted
        windows.append(
            {
                "retrain_date": dates[start],
                "train_start": dates[train_start],
                "train_end": dates[train_stop - 1],
                "n_train_dates": int(np.unique(codes[train_rows]).size),
                "n_train_rows": len(train_rows),
                "test_start": dates[start],
                "test_end": dates[stop - 1],
                "n_test_dates": stop - start,
                "n_test_rows": len(test_rows),
                "fit_seconds": round(time.perf_counter() - began, 3),
            }
        )
    return WalkForward(pd.Series(scores, index=X.index, name="score"), pd.DataFrame(windows))


def rank_normalize(X: pd.DataFrame, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """Per-date cross-sectional rank of every column (or of ``columns``) scaled to [0, 1] (lowest 0,
    highest 1, ties averaged, a lone value 0.5), NaN filled with 0.5 (the neutral middle). Uses each
    date's own rows only, so it cannot leak across dates. Float32, one column at a time into one
    output block: the whole-frame groupby held about seven float64 copies of the panel at once
    (gigabytes on sp500_5yr's 183 columns)."""
    from plml_assets.lib.validation.metrics import group_ranks

    columns = list(X.columns if columns is None else columns)
    codes, keys = pd.factorize(X.index.get_level_values("date"))
    out = np.empty((len(X), len(columns)), dtype="float32")
    for j, column in enumerate(columns):
        ranks, per_date, _ = group_ranks(X[column].to_numpy(dtype="float64"), codes, len(keys))
        count = per_date[codes].astype("float64")
        with np.errstate(invalid="ignore", divide="ignore"):
            # A lone value (count 1) divides by zero and, like a missing one, lands on 0.5.
            scaled = np.where(count > 1, (ranks - 1.0) / (count - 1.0), np.nan)
        out[:, j] = np.where(np.isnan(scaled), 0.5, scaled)
    return pd.DataFrame(out, index=X.index, columns=columns)


def _fit_target(y: pd.Series, excess_target: bool) -> tuple[pd.Series, tuple[float, float]]:
    from plml_assets.lib.models.training import excess_returns, winsorize_bounds

    target = excess_returns(y) if excess_target else y
    return target, winsorize_bounds(target)


def ridge_fit_predict(alpha: float = 1.0, excess_target: bool = True, normalized: bool = False) -> FitPredict:
    """A ``fit_predict`` for :func:`walk_forward_scores`: scikit-learn Ridge on per-date
    rank-normalized features (:func:`rank_normalize`). The target is the forward return minus its
    date mean (``excess_target``) clipped at its 1 % / 99 % quantiles, both from the training rows
    alone; the model is fitted on the training rows only. ``normalized``: the frames it is given
    went through :func:`rank_normalize` already (it works date by date, so normalizing the whole
    panel once gives the same values as normalizing every training window again, minutes faster)."""
    from sklearn.linear_model import Ridge

    prepare = (lambda X: X) if normalized else rank_normalize

    def fit_predict(X_train: pd.DataFrame, y_train: pd.Series, X_test: pd.DataFrame) -> np.ndarray:
        target, (lo, hi) = _fit_target(y_train, excess_target)
        model = Ridge(alpha=alpha).fit(prepare(X_train).to_numpy(), target.clip(lo, hi).to_numpy())
        return model.predict(prepare(X_test).to_numpy())

    return fit_predict


def xgboost_fit_predict(params: Mapping[str, Any] | None = None, horizon: int = 5, excess_target: bool = True) -> FitPredict:
    """A ``fit_predict`` for :func:`walk_forward_scores` with ``lib.models.xgboost_model.XGBoostModel``.

    Fitted with ``lib.models.training.fit_model``: early stopping on the last 15 % of the training
    dates, ``horizon`` dates purged before them, target clipped at quantiles of the fitting rows.
    A training block too short for that split is fitted without early stopping. ``params`` are
    XGBoostModel hyper-parameters (``nthread`` defaults to 1). The target is the date-demeaned
    forward return when ``excess_target`` (see ``lib.models.training.excess_returns``).
    """
    from plml_assets.lib.models.training import early_stopping_split, fit_model
    from plml_assets.lib.models.xgboost_model import XGBoostModel

    chosen = {"nthread": 1, **(params or {})}
    XGBoostModel(**chosen)  # fail now on a bad hyper-parameter, not in the first window

    def fit_predict(X_train: pd.DataFrame, y_train: pd.Series, X_test: pd.DataFrame) -> np.ndarray:
        target, (lo, hi) = _fit_target(y_train, excess_target)
        try:
            early_stopping_split(X_train.index.get_level_values("date").to_numpy(), horizon)
        except ValueError:  # too few dates to hold out a purged early-stopping tail
            return XGBoostModel(**chosen).fit((X_train, target.clip(lo, hi))).predict(X_test)
        model, _ = fit_model("xgboost", dict(chosen), X_train, target, horizon)
        return model.predict(X_test)

    return fit_predict


# --------------------------------------------------------------------------------------------
# Baselines and the one-call backtest
# --------------------------------------------------------------------------------------------


def momentum_scores(prices: pd.DataFrame, window: int = 20) -> pd.Series:
    """Trailing ``window``-day return (``lib.models.baselines.momentum_score``): winners keep winning."""
    return momentum_score(prices, window)


def reversal_scores(prices: pd.DataFrame, window: int = 5) -> pd.Series:
    """Minus the trailing ``window``-day return: short-term losers bounce back. Named ``reversal_{w}d``."""
    return (-momentum_score(prices, window)).rename(f"reversal_{window}d")


@dataclass(frozen=True)
class Backtest:
    """Everything one scored strategy produced; ``metrics`` feeds :func:`compare`."""

    weights: pd.Series
    result: pd.DataFrame
    benchmark: pd.Series
    metrics: dict[str, float]
    ic: ICStats | None


def run_backtest(
    scores: pd.Series,
    prices: pd.DataFrame,
    *,
    construction: str = "long_short",
    quantile: float = 0.2,
    k: int = 10,
    cost_bps: float = 5.0,
    rebalance_every: int = 1,
    forward_returns: pd.Series | None = None,
    dates: pd.Index | Sequence | None = None,
    periods_per_year: int = PERIODS_PER_YEAR,
    holding_days: int = 1,
    execution_lag: int = 0,
) -> Backtest:
    """Scores -> weights (``construction``: ``long_short`` or ``long_only``) -> simulation ->
    metrics vs the equal-weight benchmark, plus IC statistics when ``forward_returns`` is given.

    ``dates`` restricts the signals (and ICs) to those dates, e.g. the model's out-of-sample dates,
    so that a model and its baselines are measured over the same period. ``holding_days`` and
    ``execution_lag`` stagger the book (see :func:`staggered_targets`); ``Backtest.weights`` are then
    the book as traded (date x symbol), not the signal's own weights.
    """
    if dates is not None:
        scores = scores.where(scores.index.get_level_values("date").isin(pd.Index(dates)))
    if construction == "long_short":
        weights = long_short_weights(scores, quantile)
    elif construction == "long_only":
        weights = long_only_topk_weights(scores, k)
    else:
        raise ValueError(f"construction must be 'long_short' or 'long_only', got {construction!r}")
    if holding_days != 1 or execution_lag != 0:
        weights = staggered_targets(weights, prices, holding_days, execution_lag).stack().rename("weight")
    result = simulate(weights, prices, cost_bps=cost_bps, rebalance_every=rebalance_every)
    result.attrs.update({"holding_days": int(holding_days), "execution_lag": int(execution_lag)})
    benchmark = equal_weight_benchmark(prices)
    metrics = performance(result, benchmark, periods_per_year)
    ic = ic_stats(scores, forward_returns) if forward_returns is not None else None
    if ic is not None:
        metrics.update(ic.summary)
    return Backtest(weights, result, benchmark, metrics, ic)


# --------------------------------------------------------------------------------------------
# Comparison with the baselines
# --------------------------------------------------------------------------------------------

# The metrics the comparison shows first, in this order; any other numeric metric follows.
LEADING_METRICS = (
    "sharpe", "ann_return", "ann_volatility", "max_drawdown", "gross_sharpe", "avg_turnover", "ann_cost",
    "hit_rate", "excess_return", "information_ratio", "rank_ic_mean", "rank_ic_ir", "rank_ic_tstat",
)

# (key, label, kind) for the sentences: kind picks the number format.
SENTENCE_METRICS = (
    ("sharpe", "net Sharpe", "ratio"),
    ("ann_return", "net annual return", "percent"),
    ("max_drawdown", "max drawdown", "percent"),
    ("rank_ic_mean", "mean rank IC", "ic"),
)


def compare(results: Mapping[str, Mapping[str, Any] | Backtest]) -> pd.DataFrame:
    """One row per strategy (in the given order; the model first, then its baselines), one column
    per numeric metric, leading with :data:`LEADING_METRICS`. Values may be metric dicts (from
    :func:`performance`, optionally updated with ``ic_stats(...).summary``) or :class:`Backtest`s."""
    rows = {}
    for name, value in results.items():
        metrics = value.metrics if isinstance(value, Backtest) else value
        rows[name] = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float, np.number)) and not isinstance(v, bool)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    leading = [c for c in LEADING_METRICS if c in table.columns]
    table = table[leading + [c for c in table.columns if c not in leading]]
    table.index.name = "strategy"
    return table


def _fmt(value: float, kind: str, signed: bool = False) -> str:
    sign = "+" if signed else ""
    if kind == "percent":
        return f"{value * 100:{sign}.1f}" + (" pts" if signed else "%")
    if kind == "ic":
        return f"{value:{sign}.3f}"
    return f"{value:{sign}.2f}"


def comparison_sentences(table: pd.DataFrame, model: str | None = None) -> list[str]:
    """One sentence per baseline saying how ``model`` (default: the first row of ``table``, as
    built by :func:`compare`) compares, e.g. ``"xgboost: net Sharpe 0.41 vs momentum_20d 0.12
    (+0.29), net annual return 5.1% vs 2.0% (+3.1 pts), ..."``. Differences are model minus
    baseline (percentages in points); metrics missing or NaN on either side are left out."""
    if table.empty:
        return []
    model = model if model is not None else str(table.index[0])
    if model not in table.index:
        raise ValueError(f"model {model!r} is not a row of the comparison table ({list(table.index)})")
    mine = table.loc[model]
    sentences = []
    for baseline in (name for name in table.index if name != model):
        theirs = table.loc[baseline]
        parts = []
        for key, label, kind in SENTENCE_METRICS:
            if key not in table.columns or not (np.isfinite(mine[key]) and np.isfinite(theirs[key])):
                continue
            a, b = float(mine[key]), float(theirs[key])
            other = f"{baseline} {_fmt(b, kind)}" if not parts else _fmt(b, kind)
            parts.append(f"{label} {_fmt(a, kind)} vs {other} ({_fmt(a - b, kind, signed=True)})")
        if parts:
            sentences.append(f"{model}: " + ", ".join(parts))
    return sentences


# --------------------------------------------------------------------------------------------
# CPCV backtest paths
# --------------------------------------------------------------------------------------------


def cpcv_path_backtests(
    split_predictions: Sequence[pd.Series],
    paths: Sequence[Sequence[tuple[int, Any]]],
    prices: pd.DataFrame,
    forward_returns: pd.Series | None = None,
    *,
    quantile: float = 0.2,
    cost_bps: float = 5.0,
    periods_per_year: int = PERIODS_PER_YEAR,
    holding_days: int = 1,
    execution_lag: int = 0,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trade each Combinatorial Purged CV backtest path long-short.

    ``split_predictions[s]`` holds split ``s``'s out-of-sample scores; ``paths`` lists, per path, the
    ``(split, group dates)`` pairs that cover every date once (``CombinatorialPurgedCV.paths``).
    Returns (daily net returns per path on the path's own dates, one stats row per path). Only the
    path's dates count: the simulation runs to the last price date, and flat days after the
    training window would dilute a path's Sharpe.
    """
    from plml_assets.lib.validation.overfitting import sharpe_ratio

    returns: dict[str, pd.Series] = {}
    stats = []
    for p, path in enumerate(paths, start=1):
        parts = [split_predictions[s][split_predictions[s].index.get_level_values("date").isin(group)] for s, group in path]
        scores = pd.concat(parts).sort_index()
        path_dates = scores.index.get_level_values("date").unique()
        run = run_backtest(scores, prices, construction="long_short", quantile=quantile, cost_bps=cost_bps,
                           forward_returns=forward_returns, dates=path_dates, periods_per_year=periods_per_year,
                           holding_days=holding_days, execution_lag=execution_lag)
        active = run.result["net_return"][run.result.index.isin(path_dates)]
        returns[f"path_{p}"] = active
        stats.append({
            "path": p,
            "sharpe": sharpe_ratio(active, periods_per_year=periods_per_year),
            "ann_return": float(active.mean() * periods_per_year),
            "max_drawdown": max_drawdown(active),
            "rank_ic_mean": run.metrics.get("rank_ic_mean", float("nan")),
        })
    return pd.DataFrame(returns), pd.DataFrame(stats).set_index("path")
