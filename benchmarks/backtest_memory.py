"""Peak memory of the ridge baseline's feature normalization (the backtest step's largest allocation).

The ``backtest`` asset rank-normalizes every feature column of the panel per date for its ridge
baseline. On sp500_5yr (616k rows x 183 columns) the full profile's backtest step peaked at 7,140 MiB.
This measures, each arm in a fresh subprocess (peak RSS is per process), the peak RSS of:

* ``frame``: the former whole-frame ``groupby(date).rank`` / ``transform("count")`` arithmetic in
  float64 (kept here as the reference);
* ``columns``: ``lib.backtest.engine.rank_normalize`` (float32, one column at a time into one block);

on the features the graph builds (base + generated, as ``features``), with the baseline peak of just
holding those features, and checks that both give the same values (to float32 precision). Median of
``--repeat`` runs per arm, arms alternating.

    python benchmarks/backtest_memory.py --data ../shared/data/sp500_5yr.csv.gz --repeat 3
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _frame_rank_normalize(X):
    grouped = X.groupby(level="date", sort=False)
    ranks = grouped.rank(method="average")
    count = grouped.transform("count")
    return ((ranks - 1.0) / (count - 1.0).where(count > 1)).fillna(0.5)


def _features(data: str):
    """base + generated features as the graph builds them (build_features, then generate with every pair)."""
    import pandas as pd

    from plml_assets.lib.features.base import build_features
    from plml_assets.lib.features.generation import GenerationSpec, generate

    prices = pd.read_csv(data, parse_dates=["date"]).set_index(["date", "symbol"]).sort_index()
    base, _ = build_features(prices)
    features, _ = generate(base, GenerationSpec(), all_pairs=True)
    return features


def child(arm: str, data: str, cache: str) -> None:
    import numpy as np
    import pandas as pd

    features = pd.read_parquet(cache)
    held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    if arm == "frame":
        out = _frame_rank_normalize(features)
    else:
        from plml_assets.lib.backtest.engine import rank_normalize

        out = rank_normalize(features)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    checksum = float(np.nansum(out.to_numpy(dtype="float64")[:: 97]))
    print(json.dumps({"arm": arm, "held_mib": held, "peak_mib": peak, "seconds": seconds, "checksum": checksum,
                      "shape": list(out.shape)}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sp500_5yr.csv.gz"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cache", default="/tmp/plml_backtest_memory_features.parquet")
    parser.add_argument("--child", choices=("frame", "columns"))
    args = parser.parse_args()
    if args.child:
        child(args.child, args.data, args.cache)
        return
    if not Path(args.cache).exists():
        _features(args.data).to_parquet(args.cache)
    results: dict[str, list[dict]] = {"frame": [], "columns": []}
    for _ in range(args.repeat):
        for arm in ("frame", "columns"):
            out = subprocess.run([sys.executable, __file__, "--child", arm, "--data", args.data, "--cache", args.cache],
                                 capture_output=True, text=True, check=True)
            results[arm].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print("| arm | rows x columns | features held MiB | peak RSS MiB | added MiB | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    for arm, runs in results.items():
        held = statistics.median(r["held_mib"] for r in runs)
        peak = statistics.median(r["peak_mib"] for r in runs)
        secs = statistics.median(r["seconds"] for r in runs)
        print(f"| {arm} | {runs[0]['shape'][0]:,} x {runs[0]['shape'][1]} | {held:,.0f} | {peak:,.0f} | {peak - held:,.0f} | {secs:.1f} |")
    a, b = results["frame"][0]["checksum"], results["columns"][0]["checksum"]
    print(f"\nchecksum frame {a:.3f}, columns {b:.3f}, relative difference {abs(a - b) / max(abs(a), 1e-12):.2e}")


if __name__ == "__main__":
    main()
