"""Benchmark `build_features` against a straightforward per-symbol pandas loop.

The reference below is deliberately plain: for each symbol it computes every feature with
ordinary pandas Series operations, concatenates the symbols, then derives the cross-sectional
features with a groupby on the date. It is also the independent check of the numbers: both
implementations must agree on every column they share.

    python benchmarks/features.py                 # print the table
    python benchmarks/features.py --runs 5 --reference-runs 1 --write   # and update docs/benchmarks.md

Times are wall-clock medians in this one process, after one untimed call of each implementation. Peak memory is
tracemalloc's peak of Python and NumPy allocations during one separate, untimed call (the input
panel, already in memory, is not counted; the returned frame is).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import DOCS, cpu_name, median_seconds, peak_mib, write_section  # noqa: E402

from plml_assets.lib.features.base import FEATURE_SET_VERSION, build_features  # noqa: E402

DATA = REPO.parent / "shared/data/sp500_5yr.csv.gz"
SECTION = "## Feature computation"
RTOL, ATOL = 1e-4, 1e-6


# --- reference: one symbol at a time ------------------------------------------------------------

def _ewm(series: pd.Series, *, span=None, alpha=None, min_periods: int) -> pd.Series:
    return series.ewm(span=span, alpha=alpha, adjust=True, min_periods=min_periods).mean()


def _one_symbol(rows: pd.DataFrame) -> dict[str, pd.Series]:
    close = rows["close"].where(rows["close"] > 0).ffill(limit=3)
    log_ret = np.log(close / close.shift(1))
    f: dict[str, pd.Series] = {}
    for w in (1, 3, 5, 10, 20, 60, 120, 250):
        f[f"ret_{w}d"] = close / close.shift(w) - 1
    f["mom_12_1m"] = close.shift(21) / close.shift(252) - 1
    f["mom_6_1m"] = close.shift(21) / close.shift(126) - 1
    for w in (5, 10, 20, 60, 120, 250):
        f[f"vol_{w}d"] = log_ret.rolling(w, min_periods=w).std()
    f["downside_vol_20d"] = np.sqrt((log_ret.clip(upper=0) ** 2).rolling(20, min_periods=20).mean())
    f["vol_ratio_20_120d"] = f["vol_20d"] / f["vol_120d"]
    f["skew_60d"] = log_ret.rolling(60, min_periods=60).skew()
    f["kurt_60d"] = log_ret.rolling(60, min_periods=60).kurt()
    f["sharpe_60d"] = log_ret.rolling(60, min_periods=60).mean() / f["vol_60d"]
    f["ret_1d_over_vol_20d"] = log_ret / f["vol_20d"]
    change = close.diff()
    for n in (7, 14, 28):
        gain = _ewm(change.clip(lower=0), alpha=1 / n, min_periods=n)
        loss = _ewm((-change).clip(lower=0), alpha=1 / n, min_periods=n)
        f[f"rsi_{n}"] = 100 * gain / (gain + loss)
    line = (_ewm(close, span=12, min_periods=12) - _ewm(close, span=26, min_periods=26)) / close
    f["macd_line"] = line
    f["macd_signal"] = _ewm(line, span=9, min_periods=9)
    f["macd_hist"] = line - f["macd_signal"]
    mid = close.rolling(20, min_periods=20).mean()
    sd = close.rolling(20, min_periods=20).std(ddof=0)
    f["bb_pos_20"] = (close - (mid - 2 * sd)) / (4 * sd)
    f["bb_width_20"] = 4 * sd / mid
    for w in (5, 10, 20, 50, 100, 200):
        f[f"ma_gap_{w}"] = close / close.rolling(w, min_periods=w).mean() - 1
    f["ma_cross_50_200"] = (close.rolling(50, min_periods=50).mean()
                            / close.rolling(200, min_periods=200).mean() - 1)
    for w in (20, 60, 250):
        f[f"drawdown_{w}d"] = close / close.rolling(w, min_periods=w).max() - 1
        f[f"dist_low_{w}d"] = close / close.rolling(w, min_periods=w).min() - 1
    high_250, low_250 = close.rolling(250, min_periods=250).max(), close.rolling(250, min_periods=250).min()
    f["close_pos_250d"] = (close - low_250) / (high_250 - low_250)

    if "volume" in rows:
        volume = rows["volume"].astype("float64").where(rows["volume"] >= 0)
        log_volume = np.log1p(volume)
        f["volume_z_20d"] = ((log_volume - log_volume.rolling(20, min_periods=20).mean())
                             / log_volume.rolling(20, min_periods=20).std())
        dollar_volume = close * volume
        f["log_dollar_volume_20d"] = np.log(dollar_volume.rolling(20, min_periods=20).mean())
        for short, long in ((5, 20), (20, 120)):
            f[f"volume_trend_{short}_{long}d"] = (volume.rolling(short, min_periods=short).mean()
                                                  / volume.rolling(long, min_periods=long).mean() - 1)
        impact = (close / close.shift(1) - 1).abs() / dollar_volume.where(dollar_volume > 0)
        f["log_amihud_20d"] = np.log(impact.rolling(20, min_periods=20).mean() * 1e10)
    if "high" in rows and "low" in rows:
        ok = rows["high"] >= rows["low"]
        high, low = rows["high"].where(ok), rows["low"].where(ok)
        f["hl_range_1d"] = (high - low) / close
        f["hl_range_20d"] = f["hl_range_1d"].rolling(20, min_periods=20).mean()
        f["parkinson_vol_20d"] = np.sqrt((np.log(high / low) ** 2).rolling(20, min_periods=20).mean()
                                         / (4 * np.log(2)))
        f["close_loc_1d"] = ((close - low) / (high - low)).clip(0, 1)
        prev = close.shift(1)
        true_range = pd.concat([high - low, (high - prev).abs(), (low - prev).abs()], axis=1).max(axis=1)
        true_range = true_range.where(high.notna() & low.notna())
        f["atr_14_pct"] = _ewm(true_range, alpha=1 / 14, min_periods=14) / close
    if "open" in rows:
        open_, prev = rows["open"], close.shift(1)
        f["overnight_gap_1d"] = open_ / prev - 1
        f["intraday_ret_1d"] = close / open_ - 1
        f["overnight_vol_20d"] = np.log(open_ / prev).rolling(20, min_periods=20).std()
        f["intraday_vol_20d"] = np.log(close / open_).rolling(20, min_periods=20).std()
    if {"open", "high", "low"} <= set(rows.columns):
        open_ = rows["open"]
        ok = rows["high"] >= rows["low"]
        high, low = rows["high"].where(ok), rows["low"].where(ok)
        gk = 0.5 * np.log(high / low) ** 2 - (2 * np.log(2) - 1) * np.log(close / open_) ** 2
        f["garman_klass_vol_20d"] = np.sqrt(gk.rolling(20, min_periods=20).mean().clip(lower=0))
        rs = np.log(high / close) * np.log(high / open_) + np.log(low / close) * np.log(low / open_)
        f["rogers_satchell_vol_20d"] = np.sqrt(rs.rolling(20, min_periods=20).mean().clip(lower=0))
    usable = close.notna()
    return {name: series.where(usable) for name, series in f.items()}


def reference_features(prices: pd.DataFrame) -> pd.DataFrame:
    parts = []
    for symbol, rows in prices.groupby(level="symbol", sort=False):
        one = pd.DataFrame(_one_symbol(rows.droplevel("symbol")))
        one["symbol"] = symbol
        parts.append(one.set_index("symbol", append=True))
    panel = pd.concat(parts).replace([np.inf, -np.inf], np.nan)
    by_date = panel.groupby(level="date")
    rank_of = ["ret_5d", "ret_20d", "ret_60d", "ret_250d", "mom_12_1m", "vol_20d", "vol_60d", "rsi_14"]
    if "log_dollar_volume_20d" in panel:
        rank_of.append("log_dollar_volume_20d")
    for name in rank_of:
        rank = by_date[name].rank(method="average")
        count = by_date[name].transform("count")
        panel[f"cs_rank_{name}"] = ((rank - 1) / (count - 1)).where(count > 1, 0.5).where(panel[name].notna())
    for name in ["ret_5d", "ret_20d", "mom_12_1m", "vol_20d", "ma_gap_50", "drawdown_250d"]:
        std = by_date[name].transform("std")
        panel[f"cs_z_{name}"] = (panel[name] - by_date[name].transform("mean")) / std.where(std > 0)
    out = panel.reindex(prices.index).astype("float32")
    return out.replace([np.inf, -np.inf], np.nan)


# --- measurement --------------------------------------------------------------------------------

def _compare(fast: pd.DataFrame, slow: pd.DataFrame) -> tuple[int, int, float]:
    """Shared columns, mismatching cells (values outside tolerance or NaN in one only), worst gap."""
    shared = [c for c in fast.columns if c in slow.columns]
    a, b = fast[shared].to_numpy(np.float64), slow[shared].to_numpy(np.float64)
    close = np.isclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True)
    both = ~np.isnan(a) & ~np.isnan(b)
    worst = float(np.max(np.abs(a - b)[both] / (ATOL + RTOL * np.abs(b[both])))) if both.any() else 0.0
    return len(shared), int((~close).sum()), worst


def _machine() -> str:
    return (f"{cpu_name()}, Python {platform.python_version()}, "
            f"pandas {pd.__version__}, NumPy {np.__version__}; 1-minute load average "
            f"{os.getloadavg()[0]:.1f} at the start (other work on the machine slows both sides)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of build_features (median)")
    parser.add_argument("--reference-runs", type=int, default=1,
                        help="timed runs of the per-symbol loop (median; it takes ~10-20 s a run)")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--write", action="store_true", help=f"update '{SECTION}' in {DOCS.relative_to(REPO)}")
    args = parser.parse_args(argv)
    if not args.data.exists():
        sys.exit(f"benchmark data {args.data} is absent: put sp500_5yr.csv.gz there or pass --data PATH")

    machine = _machine()
    prices = pd.read_csv(args.data, parse_dates=["date"]).set_index(["date", "symbol"]).sort_index()
    n_dates, n_symbols = prices.index.levshape
    rows = []
    for label, columns in [("OHLCV", ["open", "high", "low", "close", "volume"]), ("close only", ["close"])]:
        panel = prices[columns]
        # These first calls, for the comparison, are also the warm-up of the timed runs below.
        fast, _ = build_features(panel)
        slow = reference_features(panel)
        shared, mismatches, worst = _compare(fast, slow)
        if mismatches:
            print(f"warning: {label}: {mismatches} cells differ beyond rtol={RTOL}, atol={ATOL}", file=sys.stderr)
        fast_s = median_seconds(lambda: build_features(panel), args.runs)
        slow_s = median_seconds(lambda: reference_features(panel), args.reference_runs)
        rows.append({
            "panel": label, "features": fast.shape[1], "checked": f"{shared}/{fast.shape[1]}",
            "mismatches": mismatches, "worst": worst, "fast_s": fast_s, "slow_s": slow_s,
            "fast_mib": peak_mib(lambda: build_features(panel)), "slow_mib": peak_mib(lambda: reference_features(panel)),
            "output_mib": fast.memory_usage(index=False).sum() / 2**20,
        })
        print(f"{label}: done", file=sys.stderr)

    table = [
        "| panel | features | vectorized median | per-symbol loop median | speed-up | peak memory vectorized "
        "| peak memory loop | output (float32) | columns checked | cells outside tolerance | largest difference |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        table.append(
            f"| {r['panel']} | {r['features']} | {r['fast_s']:.2f} s | {r['slow_s']:.2f} s "
            f"| {r['slow_s'] / r['fast_s']:.1f}x | {r['fast_mib']:.0f} MiB | {r['slow_mib']:.0f} MiB "
            f"| {r['output_mib']:.0f} MiB | {r['checked']} | {r['mismatches']} | {r['worst']:.2g} x tolerance |"
        )
    body = "\n".join([
        SECTION,
        "",
        f"`build_features` (feature set {FEATURE_SET_VERSION}) on `../shared/data/sp500_5yr.csv.gz`: "
        f"{len(prices):,} rows, {n_symbols} symbols, {n_dates:,} dates.",
        f"Machine: {machine}.",
        "",
        *table,
        "",
        f"- Times: wall-clock median of {args.runs} runs (vectorized) and {args.reference_runs} runs (loop), "
        "after one untimed call each (the one compared below), in the same process.",
        "- Peak memory: `tracemalloc` peak of Python and NumPy allocations during one separate untimed call, "
        "the output frame included, the input panel not.",
        "- The per-symbol loop lives in `benchmarks/features.py`: plain pandas Series operations per symbol, "
        "concatenated, then a groupby on the date for the cross-sectional features. Both results are "
        f"compared cell by cell (`np.isclose`, rtol={RTOL}, atol={ATOL}, NaN positions equal) on every "
        "column they share; the largest difference is |a - b| / (atol + rtol |b|) over cells where both "
        "are numbers (0: the float32 values are identical).",
        f"- Rerun: `python benchmarks/features.py --runs {args.runs} --reference-runs {args.reference_runs} --write` "
        "from the repository root (about 4 minutes here, most of it the loop under tracemalloc).",
        "",
    ])
    print(body)
    if args.write:
        write_section(SECTION, body)
        print(f"updated {DOCS}", file=sys.stderr)
    return 1 if any(r["mismatches"] for r in rows) else 0



if __name__ == "__main__":
    raise SystemExit(main())
