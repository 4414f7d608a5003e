"""How long the explanations take on the sp500_5yr holdout (issue 16 item 6: the boosters' SHAP in
<= 30 s on 2 cores), against the same models' plain predictions in the same process.

    python benchmarks/shap_speed.py --data ../shared/data/sp500_5yr.csv.gz --repeat 3 --write

The panel's base features (the first 30 columns), the 5-day excess forward return, the graph's
holdout split (250 dates, purged). XGBoost and LightGBM with plml's full-profile defaults
(learning rate 0.05, every one of the 400 rounds used: the worst case), fitted once, untimed; then, timed (median of ``--repeat``): ``predict`` and ``contributions`` on every
holdout row: the boosters' own TreeSHAP on 2 threads (once: the reference), plml's Fast TreeSHAP v2
(lib/explain/treeshap.py) on 1 and 2 threads, and the largest difference between the two; a GRU (window 20, 2 epochs) explained by
integrated gradients (32 path points) on 40 holdout dates, as the ``explanations`` step does.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_name, write_section  # noqa: E402

from plml_assets.lib.data.labels import forward_returns  # noqa: E402
from plml_assets.lib.data.prices import load_file  # noqa: E402
from plml_assets.lib.explain import treeshap  # noqa: E402
from plml_assets.lib.explain.contributions import additivity, explain_rows  # noqa: E402
from plml_assets.lib.features.base import build_features  # noqa: E402
from plml_assets.lib.models.registry import resolve_params  # noqa: E402
from plml_assets.lib.models.training import excess_returns, fit_model, holdout_split  # noqa: E402

SECTION = "## Explanations: SHAP speed on the sp500_5yr holdout"
FAST_DEFAULT = treeshap.FAST_MIN_TREE_ROWS
DATA = Path(__file__).resolve().parents[2] / "shared/data/sp500_5yr.csv.gz"


def timed(func, repeat: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = func()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--write", action="store_true", help=f"replace '{SECTION}' in docs/benchmarks.md")
    args = parser.parse_args()
    if not args.data.exists():
        raise SystemExit(f"{args.data} not found (the sp500_5yr panel lives in ../shared/data)")
    began = time.perf_counter()
    prices = load_file(args.data)
    base, _ = build_features(prices)
    columns = list(base.columns[:30])
    y = excess_returns(forward_returns(prices, 5))
    split = holdout_split(y.dropna(), 250, 5)
    dates = base.index.get_level_values("date")
    train = dates.isin(split.train_dates) & y.notna().to_numpy()
    X_train, y_train = base.loc[train, columns], y[train]
    hold_rows = np.flatnonzero(dates.isin(split.holdout_dates))
    print(f"{len(X_train):,} training rows, {len(hold_rows):,} holdout rows, {len(columns)} features", flush=True)
    rows, frames = [], {}
    for family in ("xgboost", "lightgbm"):
        # Every one of the 400 rounds, the worst case of a full-profile model: on this raw target early
        # stopping keeps 1-2 trees, which would time nothing.
        params = resolve_params(family, overrides={"early_stopping_rounds": 400})
        model, _ = fit_model(family, params, X_train, y_train, 5)
        model.best_iteration_ = int(model.n_rounds_) - 1
        X_hold = base[columns].iloc[hold_rows]
        for method, threads in (("library's own", 2), ("fast TreeSHAP v2", 1), ("fast TreeSHAP v2", 2)):
            if family == "xgboost":
                model.booster_.set_param({"nthread": threads})
            else:
                model.n_jobs = threads
            # The library's own TreeSHAP is the reference, timed once (minutes); the fast path is the default.
            treeshap.FAST_MIN_TREE_ROWS = 10**18 if method == "library's own" else FAST_DEFAULT
            repeat = 1 if method == "library's own" else args.repeat
            predict_s, _ = timed(lambda: model.predict(X_hold), args.repeat)
            shap_s, frame = timed(lambda: model.contributions(X_hold, threads=threads), repeat)
            reference = frames.setdefault(family, frame.copy())
            diff = float(np.abs(frame.to_numpy() - reference.to_numpy()).max())
            frame["prediction"] = model.predict(X_hold)
            err = additivity(frame)["relative_error"]
            rows.append((family, method, threads, len(hold_rows), model.best_iteration_ + 1, predict_s, shap_s, err, diff))
            print(rows[-1], flush=True)
        treeshap.FAST_MIN_TREE_ROWS = FAST_DEFAULT
    gru_params = resolve_params("gru", overrides={"max_epochs": 2})
    gru, _ = fit_model("gru", gru_params, X_train, y_train, 5)
    spread = split.holdout_dates[np.unique(np.linspace(0, len(split.holdout_dates) - 1, 40).round().astype(int))]
    net_rows = hold_rows[np.isin(dates[hold_rows], spread)]
    span = base.loc[dates <= split.holdout_dates[-1], columns]
    net_rows_in_span = span.index.get_indexer(base.index[net_rows])
    gru_s, gru_frame = timed(lambda: explain_rows(gru, span, net_rows_in_span, threads=2, steps=32), args.repeat)
    gru_err = additivity(gru_frame)["relative_error"]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table = ["| model | TreeSHAP | threads | rows | trees kept | predict s | contributions s | contributions ÷ predict "
             "| additivity error (÷ RMS) | max abs diff vs library's |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for family, method, threads, n, trees, p, s, err, diff in rows:
        table.append(f"| {family} | {method} | {threads} | {n:,} | {trees} | {p:.2f} | **{s:.2f}** | {s / p:.1f} | {err:.1e} | {diff:.1e} |")
    speedups = []
    for family in ("xgboost", "lightgbm"):
        own = next(r[6] for r in rows if r[0] == family and r[1] == "library's own")
        fast = next(r[6] for r in rows if r[0] == family and r[1] != "library's own" and r[2] == 2)
        speedups.append(f"{family} {own / fast:.1f}x")
    table.append(f"| gru | integrated gradients, 32 points, 40 dates | 2 | {len(net_rows):,} | – | – | {gru_s:.2f} | – | {gru_err:.1e} | – |")
    body = (f"{SECTION}\n\n`python benchmarks/shap_speed.py --data {args.data.name} --repeat {args.repeat}`: {len(X_train):,} training "
            f"rows, the {len(columns)} first base features, plml's full-profile defaults with all 400 rounds used (the worst case; early stopping keeps 1-2 on this raw target), fitted untimed; median of {args.repeat} "
            f"timed calls each. Machine: {cpu_name()}; whole benchmark {(time.perf_counter() - began) / 60:.1f} minutes, peak RSS "
            f"{peak:,.0f} MiB.\n\n" + "\n".join(table) + "\n\nTarget: the boosters' SHAP on the holdout in <= 30 s on 2 cores. "
            "Additivity: the largest |base value + contributions - prediction| over the rows, divided by the predictions' RMS "
            "(XGBoost accumulates in float32). Fast TreeSHAP v2 (lib/explain/treeshap.py, the default on large inputs) "
            f"against the library's own on 2 threads, same process: {', '.join(speedups)}.\n")
    print(body)
    if args.write:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
