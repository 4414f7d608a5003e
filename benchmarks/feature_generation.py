"""Benchmark `generate` (automated feature generation) against plain pandas groupby operations.

The base features are `build_features` on the S&P 500 five-year panel; `generate` then applies the
default `GenerationSpec` plus interactions among the top 4 base features by importance (here the
absolute correlation of each base feature with the 5-day forward return, which only decides which
pairs are formed). The reference is the idiomatic pandas way to write the same recipes: a
``groupby("symbol")`` shift / diff / rolling / ewm per recipe and a ``groupby("date")`` rank /
transform for the cross-sectional ones. It is also the independent check of the values: both
must agree on every generated cell.

    python benchmarks/feature_generation.py                          # print the table
    python benchmarks/feature_generation.py --runs 3 --write         # and update docs/benchmarks.md

Times are wall-clock medians in this one process, after one untimed call (the compared one). Peak
memory is tracemalloc's peak of Python and NumPy allocations during one separate, untimed call
(the input features, already in memory, are not counted; the returned frame is). Scaling rows use
every 4th / 2nd / every symbol (sorted by ticker), and bases of 3, 6 and 12 features, all with the
default spec; ratios are against the full run (all symbols, 6 base features).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import DOCS, cpu_name, median_seconds, peak_mib, write_section  # noqa: E402

from plml_assets.lib.features.base import build_features  # noqa: E402
from plml_assets.lib.features.generation import (  # noqa: E402
    DEFAULT_BASE,
    GENERATION_VERSION,
    GenerationSpec,
    generate,
)

DATA = REPO.parent / "shared/data/sp500_5yr.csv.gz"
SECTION = "## Feature generation"
RTOL, ATOL = 1e-4, 1e-6
HORIZON = 5
BASE_3 = ("ret_5d", "ret_20d", "vol_20d")
BASE_12 = (*DEFAULT_BASE, "ret_1d", "ret_60d", "vol_60d", "macd_hist", "bb_pos_20", "drawdown_60d")


# --- reference: pandas groupby per recipe -------------------------------------------------------

def reference_generate(features: pd.DataFrame, recipes: dict[str, dict]) -> pd.DataFrame:
    columns: dict[str, pd.Series] = {}

    def per_symbol(result: pd.Series) -> pd.Series:  # groupby().rolling/ewm prepend the group key
        return result.droplevel(0).reindex(features.index)

    for name, recipe in recipes.items():
        primitive, inputs, params = recipe["primitive"], recipe["inputs"], recipe["params"]
        x = features[inputs[0]].astype("float64")
        if primitive in ("product", "ratio"):
            y = features[inputs[1]].astype("float64")
            columns[name] = x * y if primitive == "product" else x / y.where(y.abs() > params["eps"])
            continue
        by_symbol, by_date = x.groupby(level="symbol", sort=False), x.groupby(level="date", sort=False)
        if primitive == "lag":
            columns[name] = by_symbol.shift(params["periods"])
        elif primitive == "diff":
            columns[name] = by_symbol.diff(params["periods"])
        elif primitive == "ewm":
            span = params["span"]
            columns[name] = per_symbol(by_symbol.ewm(span=span, adjust=True, min_periods=span).mean())
        elif primitive.startswith("rolling_"):
            window = params["window"]
            rolling = by_symbol.rolling(window, min_periods=window)
            if primitive == "rolling_mean":
                columns[name] = per_symbol(rolling.mean())
            else:
                std = per_symbol(rolling.std())
                columns[name] = std if primitive == "rolling_std" else \
                    (x - per_symbol(by_symbol.rolling(window, min_periods=window).mean())) / std.where(std > 0)
        elif primitive == "cs_rank":
            count = by_date.transform("count")
            rank = (by_date.rank(method="average") - 1) / (count - 1)
            columns[name] = rank.where(count > 1, 0.5).where(x.notna())
        elif primitive == "cs_z":
            std = by_date.transform("std")
            columns[name] = (x - by_date.transform("mean")) / std.where(std > 0)
        elif primitive == "cs_demean":
            columns[name] = x - by_date.transform("mean")
        else:
            raise ValueError(f"no reference for {primitive!r}")
    out = pd.DataFrame(columns, index=features.index).replace([np.inf, -np.inf], np.nan).astype("float32")
    return out.replace([np.inf, -np.inf], np.nan)


# --- measurement --------------------------------------------------------------------------------

def _compare(fast: pd.DataFrame, slow: pd.DataFrame) -> tuple[int, float]:
    """Mismatching cells (outside tolerance or NaN in one only) and the worst gap in tolerances."""
    a, b = fast.to_numpy(np.float64), slow[list(fast.columns)].to_numpy(np.float64)
    close = np.isclose(a, b, rtol=RTOL, atol=ATOL, equal_nan=True)
    both = ~np.isnan(a) & ~np.isnan(b)
    worst = float(np.max(np.abs(a - b)[both] / (ATOL + RTOL * np.abs(b[both])))) if both.any() else 0.0
    return int((~close).sum()), worst


def _importance(features: pd.DataFrame, prices: pd.DataFrame, base: Sequence[str]) -> dict[str, float]:
    close = prices["close"]
    forward = close.groupby(level="symbol").shift(-HORIZON) / close - 1.0
    return {name: abs(float(features[name].astype("float64").corr(forward))) for name in base}


def _machine() -> str:
    return (f"{cpu_name()}, shared with other work, Python "
            f"{platform.python_version()}, pandas {pd.__version__}, NumPy {np.__version__}; 1-minute load average "
            f"{os.getloadavg()[0]:.1f} at the start")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="timed runs of generate (median)")
    parser.add_argument("--reference-runs", type=int, default=1, help="timed runs of the groupby reference")
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--write", action="store_true", help=f"update '{SECTION}' in {DOCS.relative_to(REPO)}")
    args = parser.parse_args(argv)
    if not args.data.exists():
        print(f"skipped: benchmark data {args.data} is absent (put sp500_5yr.csv.gz there or pass --data PATH)")
        return 0

    started = time.perf_counter()
    machine = _machine()
    prices = pd.read_csv(args.data, parse_dates=["date"]).set_index(["date", "symbol"]).sort_index()
    build_start = time.perf_counter()
    features, _ = build_features(prices)
    build_s = time.perf_counter() - build_start
    importance = _importance(features, prices, BASE_12)
    spec = GenerationSpec()
    n_dates, n_symbols = prices.index.levshape

    # Main comparison: the default spec with interactions, all symbols.
    combined, recipes = generate(features, spec, importance)
    generated = combined[list(recipes)]
    slow = reference_generate(features, recipes)
    mismatches, worst = _compare(generated, slow)
    if mismatches:
        print(f"warning: {mismatches} cells differ beyond rtol={RTOL}, atol={ATOL}", file=sys.stderr)
    del combined, generated, slow
    fast_s = median_seconds(lambda: generate(features, spec, importance), args.runs)
    slow_s = median_seconds(lambda: reference_generate(features, recipes), args.reference_runs)
    fast_mib = peak_mib(lambda: generate(features, spec, importance))
    slow_mib = peak_mib(lambda: reference_generate(features, recipes))
    interactions = sum(r["primitive"] in ("product", "ratio") for r in recipes.values())
    print("main comparison: done", file=sys.stderr)

    symbols = features.index.get_level_values("symbol")
    tickers = sorted(symbols.unique())
    scaling = []
    for label, keep, base in [
        ("1/4 of symbols", tickers[::4], ()), ("1/2 of symbols", tickers[::2], ()), ("all symbols", tickers, ()),
        ("3 base features", tickers, BASE_3), ("12 base features", tickers, BASE_12),
    ]:
        subset = features[symbols.isin(keep)] if len(keep) < len(tickers) else features
        this_spec = GenerationSpec(base=base)
        _, planned = generate(subset, this_spec, importance)  # warm-up
        seconds = fast_s if label == "all symbols" else median_seconds(
            lambda: generate(subset, this_spec, importance), args.runs)
        peak = fast_mib if label == "all symbols" else peak_mib(lambda: generate(subset, this_spec, importance))
        scaling.append({"label": label, "rows": len(subset), "symbols": len(keep), "columns": len(planned),
                        "base": len({r["inputs"][0] for r in planned.values()}), "seconds": seconds, "mib": peak})
        print(f"{label}: done", file=sys.stderr)
    full = next(s for s in scaling if s["label"] == "all symbols")
    total_s = time.perf_counter() - started

    generated_mib = len(features) * len(recipes) * 4 / 2**20
    body = "\n".join([
        SECTION,
        "",
        f"`generate` (feature generation {GENERATION_VERSION}) on `../shared/data/sp500_5yr.csv.gz`: "
        f"{len(prices):,} rows, "
        f"{n_symbols} symbols, {n_dates:,} dates; base features from `build_features` ({features.shape[1]} columns, "
        f"{build_s:.1f} s here). Default `GenerationSpec` on the 6 default base features "
        f"({', '.join(f'`{b}`' for b in DEFAULT_BASE)}): {len(recipes)} generated columns, {interactions} of them "
        "interactions among the top 4 base features by |correlation with the 5-day forward return|.",
        f"Machine: {machine}. Whole benchmark: {total_s / 60:.1f} minutes.",
        "",
        "| implementation | median time | peak memory | generated cells outside tolerance | largest difference |",
        "|---|---:|---:|---:|---:|",
        f"| `generate` (wide per-symbol layout) | {fast_s:.2f} s | {fast_mib:.0f} MiB | {mismatches} | "
        f"{worst:.2g} x tolerance |",
        f"| pandas groupby per recipe (reference) | {slow_s:.2f} s | {slow_mib:.0f} MiB | – | – |",
        f"| ratio, reference / `generate` | {slow_s / fast_s:.1f}x | {slow_mib / fast_mib:.2f}x | | |",
        "",
        "Scaling of `generate` (default spec plus interactions; ratios against all symbols with 6 base features):",
        "",
        "| run | rows | symbols | base features | generated columns | median time | time ratio | size ratio "
        "(rows x columns) | peak memory | memory ratio |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(f"| {s['label']} | {s['rows']:,} | {s['symbols']} | {s['base']} | {s['columns']} | {s['seconds']:.2f} s "
          f"| {s['seconds'] / full['seconds']:.2f} | {s['rows'] * s['columns'] / (full['rows'] * full['columns']):.2f} "
          f"| {s['mib']:.0f} MiB | {s['mib'] / full['mib']:.2f} |" for s in scaling),
        "",
        f"- Times: wall-clock median of {args.runs} runs (`generate`) and {args.reference_runs} run(s) (reference), "
        "after one untimed call each, in the same process. `generate` returns the base features with the generated "
        f"columns appended, so its output is {features.shape[1] + len(recipes)} float32 columns "
        f"({len(features) * (features.shape[1] + len(recipes)) * 4 / 2**20:.0f} MiB, of which {generated_mib:.0f} MiB "
        "generated); the reference returns the generated columns only.",
        "- Peak memory: `tracemalloc` peak of Python and NumPy allocations during one separate untimed call, the "
        "output included, the input features not.",
        "- The reference (`reference_generate` in `benchmarks/feature_generation.py`) is one pandas groupby call per "
        "recipe: `groupby('symbol')` shift / diff / rolling / ewm, `groupby('date')` rank / transform. The cells are "
        f"compared one by one (`np.isclose`, rtol={RTOL}, atol={ATOL}, NaN positions equal); the largest difference is "
        "|a - b| / (atol + rtol |b|) over cells where both are numbers.",
        "- The machine is shared: other work moves the times between runs (scaling time ratios the most, e.g. "
        "0.22 and 0.33 for 1/4 of the symbols in two runs minutes apart); memory and the cell comparison do not move.",
        f"- Rerun: `python benchmarks/feature_generation.py --runs {args.runs} --write` from the repository root.",
        "",
    ])
    print(body)
    if args.write:
        write_section(SECTION, body)
        print(f"updated {DOCS}", file=sys.stderr)
    return 1 if mismatches else 0



if __name__ == "__main__":
    raise SystemExit(main())
