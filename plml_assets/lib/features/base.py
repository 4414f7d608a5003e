"""Model features from a price panel, computed without look-ahead.

A panel is a long DataFrame indexed by a sorted (``date``, ``symbol``) MultiIndex with a ``close``
column and optional ``open``, ``high``, ``low``, ``volume``. Every feature at (t, s) depends only on
rows dated <= t: time-series features on symbol s's own history, cross-sectional features
(``cs_rank_*``, ``cs_z_*``) on the other symbols' values at date t alone.

Each column is pivoted once to a wide frame with one column per symbol, so every rolling or
exponential operation runs once for all symbols instead of once per symbol; the results are
gathered back to the panel rows by integer position, which keeps the output aligned row for row
with the input (late-starting symbols included).

Conventions shared by all features:
- Windows count each symbol's own rows (trading days), like the labels' horizon: a date on which
  a symbol has no row is skipped, not treated as a missing price.
- Returns are simple returns; volatilities are standard deviations of daily log returns, not
  annualized; ratios are fractions (``ma_gap_50 = 0.03``: 3 % above the 50-day mean).
- A rolling window of ``w`` days needs ``w`` valid observations (``min_periods=w``), so early rows
  are NaN rather than estimated from a shorter history. Exponential averages need as many
  observations as their span/length.
- A missing close (NaN) is carried forward for at most ``PRICE_HOLE_FILL_LIMIT`` rows, which uses
  the past only and keeps one bad tick from blanking a 250-day window; rows whose close is still
  unknown get NaN features. Open/high/low/volume are not filled.
- +/-inf (zero prices or volumes) become NaN; the output is float32.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pandas as pd

FEATURE_SET_VERSION = "1.0.0"

RETURN_WINDOWS = (1, 3, 5, 10, 20, 60, 120, 250)
# Momentum that skips the most recent month, whose short-term reversal blurs the signal.
MOMENTUM_SKIP_DAYS = 21
MOMENTUM_LOOKBACKS = {"mom_12_1m": 252, "mom_6_1m": 126}
VOL_WINDOWS = (5, 10, 20, 60, 120, 250)
DOWNSIDE_VOL_WINDOW = 20
VOL_RATIO_WINDOWS = (20, 120)
MOMENT_WINDOW = 60
RSI_LENGTHS = (7, 14, 28)
MACD_FAST, MACD_SLOW, MACD_SIGNAL = 12, 26, 9
BOLLINGER_WINDOW = 20
BOLLINGER_WIDTH_SDS = 2.0
MA_WINDOWS = (5, 10, 20, 50, 100, 200)
MA_CROSS_WINDOWS = (50, 200)
EXTREME_WINDOWS = (20, 60, 250)
RANGE_POSITION_WINDOW = 250
ATR_LENGTH = 14
SHORT_WINDOW = 20
VOLUME_TREND_WINDOWS = ((5, 20), (20, 120))
PRICE_HOLE_FILL_LIMIT = 3

CS_RANK_OF = ("ret_5d", "ret_20d", "ret_60d", "ret_250d", "mom_12_1m", "vol_20d", "vol_60d", "rsi_14")
CS_Z_OF = ("ret_5d", "ret_20d", "mom_12_1m", "vol_20d", "ma_gap_50", "drawdown_250d")

# Longest finite window: mom_12_1m reads the close 252 rows back (253 rows). The exponential
# averages (RSI, MACD, ATR) have infinite memory; with 320 rows the weight left outside the window
# is below 1e-5 even for rsi_28, so features rebuilt from this much history (serving) match the
# full-history values to ~1e-5 relative.
FEATURE_LOOKBACK_DAYS = 320

INDEX_NAMES = ("date", "symbol")
_PANEL_COLUMNS = ("open", "high", "low", "close", "volume")
DOLLAR_VOLUME_FEATURE = f"log_dollar_volume_{SHORT_WINDOW}d"
_CROSS_SECTION_INPUTS = frozenset(CS_RANK_OF) | frozenset(CS_Z_OF) | {DOLLAR_VOLUME_FEATURE}


# A group's compute yields (name, values): a frame in the per-symbol row layout of `_Layout`, or
# for cross-sectional features a vector already aligned with the panel's rows.
_Computed = Iterator[tuple[str, "pd.DataFrame | np.ndarray"]]


@dataclass(frozen=True)
class _Group:
    """Features that share their required input columns; skipped as a whole when one is absent."""

    name: str
    required: tuple[str, ...]
    names: tuple[str, ...]
    compute: Callable[[_Layout], _Computed]


class _Layout:
    """The panel's columns as wide frames, built once and shared by the groups.

    Time-series layout: one column per symbol, row k holding that symbol's k-th row in date order
    (padded with NaN after its last row). A rolling or exponential operation then runs once for all
    symbols and counts each symbol's own trading days, as the labels do, so a symbol that starts
    late or misses a few dates is handled like in a per-symbol loop. Cross-sectional statistics
    use a second, date x symbol layout, in which a date holds only the symbols that trade on it.
    """

    def __init__(self, prices: pd.DataFrame, columns: Iterable[str]):
        date_codes, dates = pd.factorize(prices.index.get_level_values("date"), sort=True)
        symbol_codes, symbols = pd.factorize(prices.index.get_level_values("symbol"), sort=True)
        rows_per_symbol = np.bincount(symbol_codes, minlength=len(symbols))
        symbol_major = np.lexsort((date_codes, symbol_codes))
        first_row = np.cumsum(rows_per_symbol) - rows_per_symbol
        row_codes = np.empty(len(prices), dtype=np.intp)
        row_codes[symbol_major] = np.arange(len(prices)) - np.repeat(first_row, rows_per_symbol)
        self._by_row = (row_codes, symbol_codes)
        self._by_date = (date_codes, symbol_codes)
        self.shape = (int(rows_per_symbol.max()), len(symbols))
        self._date_shape = (len(dates), len(symbols))
        self._raw = {column: self._pivot(prices[column]) for column in columns}

        exists = np.arange(self.shape[0])[:, None] < rows_per_symbol[None, :]
        close = self._raw["close"].where(self._raw["close"] > 0)
        self.close = close.ffill(limit=PRICE_HOLE_FILL_LIMIT).where(exists)
        self.log_ret = np.log(self.close / self.close.shift(1))
        # Rows without a usable close get no features, which also keeps the stale values that
        # exponential averages carry over missing prices out of the cross-sectional statistics.
        self._usable = self.close.notna().to_numpy()
        self._usable_rows = self._usable[self._by_row]
        self._kept: dict[str, np.ndarray] = {}

    def _pivot(self, column: pd.Series) -> pd.DataFrame:
        values = np.full(self.shape, np.nan, order="F")  # pandas then keeps each symbol contiguous
        values[self._by_row] = column.to_numpy(dtype=np.float64, na_value=np.nan)
        return pd.DataFrame(values)

    def raw(self, column: str) -> pd.DataFrame:
        return self._raw[column]

    def high_low(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """The day's high and low, NaN where the feed prints a high below the low."""
        high, low = self._raw["high"], self._raw["low"]
        consistent = (high >= low).to_numpy()
        return high.where(consistent), low.where(consistent)

    def to_panel(self, name: str, values: pd.DataFrame | np.ndarray) -> np.ndarray:
        """Gather a feature to the panel's rows, blanking rows without a usable close."""
        if isinstance(values, pd.DataFrame):
            column = values.to_numpy(dtype=np.float64)[self._by_row]
        else:
            column = np.asarray(values, dtype=np.float64)
        column = np.where(self._usable_rows, column, np.nan)
        if name in _CROSS_SECTION_INPUTS:
            self._kept[name] = column
        return column

    def across_symbols(self, name: str, statistic: Callable[[pd.DataFrame], pd.DataFrame]) -> np.ndarray:
        """Apply a per-date statistic to an already computed feature; panel-aligned result."""
        by_date = np.full(self._date_shape, np.nan)
        by_date[self._by_date] = self._kept[name]
        return statistic(pd.DataFrame(by_date)).to_numpy()[self._by_date]


def _rolling(wide: pd.DataFrame, window: int):
    return wide.rolling(window, min_periods=window)


def _ewm_mean(wide: pd.DataFrame, *, span: int | None = None, alpha: float | None = None,
              min_periods: int) -> pd.DataFrame:
    # adjust=True: early values are exact weighted means of the history available, no seed bias.
    return wide.ewm(span=span, alpha=alpha, adjust=True, min_periods=min_periods).mean()


def _cs_pct_rank(wide: pd.DataFrame) -> pd.DataFrame:
    """Per-date rank scaled to [0, 1] (lowest 0, highest 1, a lone symbol 0.5); ties averaged.

    Same result as ``wide.rank(axis=1, pct=False)`` rescaled, by one row-wise argsort: pandas'
    row-wise rank is several times slower on a dates x symbols frame.
    """
    values = wide.to_numpy(dtype=np.float64)
    values = np.where(np.isfinite(values), values, np.nan)
    n_cols = values.shape[1]
    order = np.argsort(values, axis=1, kind="stable")  # NaN sorts last
    ordered = np.take_along_axis(values, order, axis=1)
    starts = np.ones(values.shape, dtype=bool)
    starts[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    ends = np.ones(values.shape, dtype=bool)
    ends[:, :-1] = starts[:, 1:]
    position = np.arange(n_cols, dtype=np.float64)
    first = np.maximum.accumulate(np.where(starts, position, 0.0), axis=1)
    last = np.minimum.accumulate(np.where(ends, position, n_cols)[:, ::-1], axis=1)[:, ::-1]
    ranks = np.empty_like(values)
    np.put_along_axis(ranks, order, (first + last) / 2.0, axis=1)  # 0-based, ties averaged
    counts = np.isfinite(values).sum(axis=1)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        scaled = np.where(counts > 1, ranks / (counts - 1), 0.5)
    scaled[np.isnan(values)] = np.nan
    return pd.DataFrame(scaled, index=wide.index, columns=wide.columns)


def _cs_zscore(wide: pd.DataFrame) -> pd.DataFrame:
    """Per-date z-score across symbols (sample standard deviation); NaN with fewer than 2 symbols."""
    std = wide.std(axis=1, ddof=1)
    return wide.sub(wide.mean(axis=1), axis=0).div(std.where(std > 0), axis=0)


# --- groups from close alone -------------------------------------------------------------------

def _returns(w: _Layout) -> _Computed:
    close = w.close
    for window in RETURN_WINDOWS:
        yield f"ret_{window}d", close / close.shift(window) - 1.0
    recent = close.shift(MOMENTUM_SKIP_DAYS)
    for name, lookback in MOMENTUM_LOOKBACKS.items():
        yield name, recent / close.shift(lookback) - 1.0


def _volatility(w: _Layout) -> _Computed:
    log_ret = w.log_ret
    vols = {}
    for window in VOL_WINDOWS:
        vols[window] = _rolling(log_ret, window).std()
        yield f"vol_{window}d", vols[window]
    downside_sq = log_ret.clip(upper=0.0) ** 2
    yield f"downside_vol_{DOWNSIDE_VOL_WINDOW}d", np.sqrt(_rolling(downside_sq, DOWNSIDE_VOL_WINDOW).mean())
    short, long = VOL_RATIO_WINDOWS
    yield f"vol_ratio_{short}_{long}d", vols[short] / vols[long]
    moments = _rolling(log_ret, MOMENT_WINDOW)
    yield f"skew_{MOMENT_WINDOW}d", moments.skew()
    yield f"kurt_{MOMENT_WINDOW}d", moments.kurt()
    yield f"sharpe_{MOMENT_WINDOW}d", moments.mean() / vols[MOMENT_WINDOW]
    yield f"ret_1d_over_vol_{SHORT_WINDOW}d", log_ret / vols[SHORT_WINDOW]


def _oscillators(w: _Layout) -> _Computed:
    close = w.close
    change = close.diff()
    gains, losses = change.clip(lower=0.0), (-change).clip(lower=0.0)
    for length in RSI_LENGTHS:
        avg_gain = _ewm_mean(gains, alpha=1.0 / length, min_periods=length)
        avg_loss = _ewm_mean(losses, alpha=1.0 / length, min_periods=length)
        yield f"rsi_{length}", 100.0 * avg_gain / (avg_gain + avg_loss)
    fast = _ewm_mean(close, span=MACD_FAST, min_periods=MACD_FAST)
    slow = _ewm_mean(close, span=MACD_SLOW, min_periods=MACD_SLOW)
    # Divided by the close so that the MACD is comparable across price levels and symbols.
    line = (fast - slow) / close
    signal = _ewm_mean(line, span=MACD_SIGNAL, min_periods=MACD_SIGNAL)
    yield "macd_line", line
    yield "macd_signal", signal
    yield "macd_hist", line - signal


def _trend(w: _Layout) -> _Computed:
    close = w.close
    band = _rolling(close, BOLLINGER_WINDOW)
    mid, spread = band.mean(), BOLLINGER_WIDTH_SDS * band.std(ddof=0)
    # 0 on the lower band, 0.5 on the moving average, 1 on the upper band.
    yield f"bb_pos_{BOLLINGER_WINDOW}", (close - (mid - spread)) / (2.0 * spread)
    yield f"bb_width_{BOLLINGER_WINDOW}", 2.0 * spread / mid
    means = {}
    for window in MA_WINDOWS:
        means[window] = mid if window == BOLLINGER_WINDOW else _rolling(close, window).mean()
        yield f"ma_gap_{window}", close / means[window] - 1.0
    short, long = MA_CROSS_WINDOWS
    yield f"ma_cross_{short}_{long}", means[short] / means[long] - 1.0


def _extremes(w: _Layout) -> _Computed:
    close = w.close
    highs, lows = {}, {}
    for window in EXTREME_WINDOWS:
        highs[window] = _rolling(close, window).max()
        yield f"drawdown_{window}d", close / highs[window] - 1.0
    for window in EXTREME_WINDOWS:
        lows[window] = _rolling(close, window).min()
        yield f"dist_low_{window}d", close / lows[window] - 1.0
    high, low = highs[RANGE_POSITION_WINDOW], lows[RANGE_POSITION_WINDOW]
    yield f"close_pos_{RANGE_POSITION_WINDOW}d", (close - low) / (high - low)


def _cross_section(w: _Layout) -> _Computed:
    for name in CS_RANK_OF:
        yield f"cs_rank_{name}", w.across_symbols(name, _cs_pct_rank)
    for name in CS_Z_OF:
        yield f"cs_z_{name}", w.across_symbols(name, _cs_zscore)


# --- groups that need optional columns ---------------------------------------------------------

def _volume(w: _Layout) -> _Computed:
    volume = w.raw("volume").where(lambda v: v >= 0)
    log_volume = np.log1p(volume)
    recent = _rolling(log_volume, SHORT_WINDOW)
    yield f"volume_z_{SHORT_WINDOW}d", (log_volume - recent.mean()) / recent.std()
    dollar_volume = w.close * volume
    yield DOLLAR_VOLUME_FEATURE, np.log(_rolling(dollar_volume, SHORT_WINDOW).mean())
    for short, long in VOLUME_TREND_WINDOWS:
        trend = _rolling(volume, short).mean() / _rolling(volume, long).mean() - 1.0
        yield f"volume_trend_{short}_{long}d", trend
    # Amihud illiquidity: price impact per dollar traded, in basis points per million dollars.
    impact = (w.close / w.close.shift(1) - 1.0).abs() / dollar_volume.where(dollar_volume > 0)
    yield f"log_amihud_{SHORT_WINDOW}d", np.log(_rolling(impact, SHORT_WINDOW).mean() * 1e10)
    # Generators run lazily: the dollar volume yielded above has been gathered and kept by now.
    yield f"cs_rank_{DOLLAR_VOLUME_FEATURE}", w.across_symbols(DOLLAR_VOLUME_FEATURE, _cs_pct_rank)


def _range(w: _Layout) -> _Computed:
    close, (high, low) = w.close, w.high_low()
    day_range = (high - low) / close
    yield "hl_range_1d", day_range
    yield f"hl_range_{SHORT_WINDOW}d", _rolling(day_range, SHORT_WINDOW).mean()
    log_hl_sq = np.log(high / low) ** 2
    parkinson = np.sqrt(_rolling(log_hl_sq, SHORT_WINDOW).mean() / (4.0 * np.log(2.0)))
    yield f"parkinson_vol_{SHORT_WINDOW}d", parkinson
    # Clipped because some feeds print a close outside the day's high-low range.
    yield "close_loc_1d", ((close - low) / (high - low)).clip(0.0, 1.0)
    prev_close = close.shift(1)
    # fmax skips a missing previous close: the first day's true range is its high - low.
    true_range = np.fmax(high - low, np.fmax((high - prev_close).abs(), (low - prev_close).abs()))
    true_range = true_range.where(high.notna() & low.notna())
    atr = _ewm_mean(true_range, alpha=1.0 / ATR_LENGTH, min_periods=ATR_LENGTH)
    yield f"atr_{ATR_LENGTH}_pct", atr / close


def _gap(w: _Layout) -> _Computed:
    close, open_ = w.close, w.raw("open")
    prev_close = close.shift(1)
    yield "overnight_gap_1d", open_ / prev_close - 1.0
    yield "intraday_ret_1d", close / open_ - 1.0
    yield f"overnight_vol_{SHORT_WINDOW}d", _rolling(np.log(open_ / prev_close), SHORT_WINDOW).std()
    yield f"intraday_vol_{SHORT_WINDOW}d", _rolling(np.log(close / open_), SHORT_WINDOW).std()


def _ohlc(w: _Layout) -> _Computed:
    close, open_, (high, low) = w.close, w.raw("open"), w.high_low()
    log_hl, log_co = np.log(high / low), np.log(close / open_)
    garman_klass = 0.5 * log_hl**2 - (2.0 * np.log(2.0) - 1.0) * log_co**2
    # Clipped at 0: with high/low that do not bracket open/close the estimator can go negative.
    yield f"garman_klass_vol_{SHORT_WINDOW}d", np.sqrt(_rolling(garman_klass, SHORT_WINDOW).mean().clip(lower=0.0))
    rogers_satchell = np.log(high / close) * np.log(high / open_) + np.log(low / close) * np.log(low / open_)
    yield (f"rogers_satchell_vol_{SHORT_WINDOW}d",
           np.sqrt(_rolling(rogers_satchell, SHORT_WINDOW).mean().clip(lower=0.0)))


def _names_returns() -> tuple[str, ...]:
    return (*(f"ret_{w}d" for w in RETURN_WINDOWS), *MOMENTUM_LOOKBACKS)


def _names_volatility() -> tuple[str, ...]:
    short, long = VOL_RATIO_WINDOWS
    return (*(f"vol_{w}d" for w in VOL_WINDOWS), f"downside_vol_{DOWNSIDE_VOL_WINDOW}d",
            f"vol_ratio_{short}_{long}d", f"skew_{MOMENT_WINDOW}d", f"kurt_{MOMENT_WINDOW}d",
            f"sharpe_{MOMENT_WINDOW}d", f"ret_1d_over_vol_{SHORT_WINDOW}d")


_GROUPS: tuple[_Group, ...] = (
    _Group("returns", ("close",), _names_returns(), _returns),
    _Group("volatility", ("close",), _names_volatility(), _volatility),
    _Group("oscillators", ("close",),
           (*(f"rsi_{n}" for n in RSI_LENGTHS), "macd_line", "macd_signal", "macd_hist"), _oscillators),
    _Group("trend", ("close",),
           (f"bb_pos_{BOLLINGER_WINDOW}", f"bb_width_{BOLLINGER_WINDOW}", *(f"ma_gap_{w}" for w in MA_WINDOWS),
            f"ma_cross_{MA_CROSS_WINDOWS[0]}_{MA_CROSS_WINDOWS[1]}"), _trend),
    _Group("extremes", ("close",),
           (*(f"drawdown_{w}d" for w in EXTREME_WINDOWS), *(f"dist_low_{w}d" for w in EXTREME_WINDOWS),
            f"close_pos_{RANGE_POSITION_WINDOW}d"), _extremes),
    _Group("cross_section", ("close",),
           (*(f"cs_rank_{n}" for n in CS_RANK_OF), *(f"cs_z_{n}" for n in CS_Z_OF)), _cross_section),
    _Group("volume", ("volume",),
           (f"volume_z_{SHORT_WINDOW}d", DOLLAR_VOLUME_FEATURE,
            *(f"volume_trend_{s}_{l}d" for s, l in VOLUME_TREND_WINDOWS), f"log_amihud_{SHORT_WINDOW}d",
            f"cs_rank_{DOLLAR_VOLUME_FEATURE}"), _volume),
    _Group("range", ("high", "low"),
           ("hl_range_1d", f"hl_range_{SHORT_WINDOW}d", f"parkinson_vol_{SHORT_WINDOW}d", "close_loc_1d",
            f"atr_{ATR_LENGTH}_pct"), _range),
    _Group("gap", ("open",),
           ("overnight_gap_1d", "intraday_ret_1d", f"overnight_vol_{SHORT_WINDOW}d",
            f"intraday_vol_{SHORT_WINDOW}d"), _gap),
    _Group("ohlc", ("open", "high", "low"),
           (f"garman_klass_vol_{SHORT_WINDOW}d", f"rogers_satchell_vol_{SHORT_WINDOW}d"), _ohlc),
)


def _absent_reason(missing: list[str]) -> str:
    quoted = ",".join(f"'{column}'" for column in missing)
    return f"column {quoted} absent" if len(missing) == 1 else f"columns {quoted} absent"


def _plan(columns: Iterable[str]) -> tuple[list[_Group], dict[str, str]]:
    available = set(columns)
    if "close" not in available:
        raise ValueError("price panel needs a 'close' column; got columns " + repr(sorted(available)))
    active, skipped = [], {}
    for group in _GROUPS:
        missing = [column for column in group.required if column not in available]
        if missing:
            skipped[group.name] = _absent_reason(missing)
        else:
            active.append(group)
    return active, skipped


def feature_names(columns: Iterable[str]) -> list[str]:
    """Names, in order, of the features `build_features` returns for a panel with these columns."""
    active, _ = _plan(columns)
    return [name for group in active for name in group.names]


def feature_inputs(names: Iterable[str]) -> list[str]:
    """The panel columns the named features are computed from: ``close`` always, plus the columns
    each named feature's group requires (``volume_z_20d``: ``volume``); a name that is no base
    feature (a generated one) adds nothing. A group's values depend on these columns only, so a
    panel without the others gives the same values for these features."""
    wanted = set(names)
    needed = {"close"}
    for group in _GROUPS:
        if wanted.intersection(group.names):
            needed.update(group.required)
    return [column for column in _PANEL_COLUMNS if column in needed]


def _validate(prices: pd.DataFrame) -> None:
    index = prices.index
    if not isinstance(index, pd.MultiIndex) or not set(INDEX_NAMES) <= set(index.names):
        raise ValueError(f"price panel needs a MultiIndex with levels {INDEX_NAMES}; got {list(index.names)}")
    if not index.is_unique:
        raise ValueError("price panel has duplicate (date, symbol) rows")


def build_features(prices: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    """Compute the feature set for a price panel.

    Returns the features (float32, same index and row order as ``prices``, columns in the order of
    ``feature_names(prices.columns)``) and ``{group: reason}`` for the feature groups skipped
    because the panel lacks the columns they need.
    """
    active, skipped = _plan(prices.columns)
    _validate(prices)
    names = [name for group in active for name in group.names]
    # Column-major so each feature is written contiguously; its transpose is pandas' block layout.
    out = np.empty((len(prices), len(names)), dtype=np.float32, order="F")
    if len(prices):
        used = sorted({column for group in active for column in group.required})
        position = 0
        with np.errstate(divide="ignore", invalid="ignore"):
            layout = _Layout(prices, used)
            for group in active:
                computed = _write(group, layout, out, position)
                if computed != list(group.names):
                    raise AssertionError(f"group {group.name!r} computed {computed}, declared {group.names}")
                position += len(computed)
    return pd.DataFrame(out, index=prices.index, columns=names, copy=False), skipped


def _write(group: _Group, layout: _Layout, out: np.ndarray, start: int) -> list[str]:
    """Compute one group's features into ``out`` from column ``start``; return their names."""
    names = []
    for offset, (name, values) in enumerate(group.compute(layout)):
        column = out[:, start + offset]
        column[:] = layout.to_panel(name, values)
        column[np.isinf(column)] = np.nan  # also catches values beyond float32's range
        names.append(name)
    return names
