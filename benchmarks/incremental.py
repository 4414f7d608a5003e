"""Benchmark an incremental update of the champion against a full retrain, as time passes.

Simulated time (``H`` trading days per step, horizon 5): at ``T0`` a champion is fitted with
``fit_model`` on every labelled date known then; ``H`` new dates of labels arrive up to ``T1``;
then either

* (a) full retrain: ``fit_model`` on every labelled date up to ``T1``, or
* (b) update: ``update_model`` of the champion on the ``H`` new dates only (early stopping on
  their purged tail, target clipped at the champion's bounds),

and both, with the stale champion beside them, are scored on the next ``H`` labelled dates (the
holdout, purged by the horizon from the training dates). Several origins are run, each ``H`` dates
earlier than the one after it, so that the rank ICs are not one block's luck. Hyper-parameters are
``registry.resolve_params(family, quick=True)`` (1 thread); features are the first 30 base
feature columns of ``build_features`` (``--features all`` for every one).

    python benchmarks/incremental.py                               # sp500_5yr, xgboost + lightgbm
    python benchmarks/incremental.py --prices embedded             # the embedded panel, + lstm
    python benchmarks/incremental.py --prices ../shared/data/sp500_5yr.csv.gz --prices embedded --write

Fit times are wall-clock medians of ``--repeats`` runs of each fit, interleaved (retrain, update,
retrain, ...) so that other load on the machine falls on both alike; every repeat must give the
same predictions (checked). The champion is fitted once per origin and not timed in the table.
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import DOCS, cpu_name, write_section  # noqa: E402

from plml_assets.lib.data.labels import forward_returns  # noqa: E402
from plml_assets.lib.data.prices import load_embedded, load_file  # noqa: E402
from plml_assets.lib.features.base import build_features  # noqa: E402
from plml_assets.lib.models.registry import resolve_params  # noqa: E402
from plml_assets.lib.models.training import (  # noqa: E402
    best_iteration,
    design_matrix,
    excess_returns,
    fit_model,
    holdout_split,
    predict_rows,
    update_model,
)
from plml_assets.lib.validation.metrics import evaluate_predictions, per_date_ic  # noqa: E402

DATA = REPO.parent / "shared/data/sp500_5yr.csv.gz"
SECTION = "## Incremental vs full retrain"
HORIZON = 5
N_FEATURES = 30
TREES = ("xgboost", "lightgbm")


@dataclass
class Panel:
    name: str
    features: pd.DataFrame  # the chosen columns, every date (history for the nets)
    labels: pd.Series  # excess forward returns
    n_symbols: int
    n_dates: int


def load_panel(source: str, columns: str) -> Panel:
    if source == "embedded":
        prices, name = load_embedded(), "embedded (skfolio, 20 stocks, 1990-2022)"
    else:
        prices, name = load_file(source), Path(source).name
    features, _ = build_features(prices)
    chosen = list(features.columns if columns == "all" else features.columns[:N_FEATURES])
    labels = excess_returns(forward_returns(prices, HORIZON))
    dates = prices.index.get_level_values("date")
    return Panel(name, features[chosen], labels, prices.index.get_level_values("symbol").nunique(), dates.nunique())


@dataclass
class Origin:
    champion_dates: pd.DatetimeIndex  # labelled dates known at T0
    new_dates: pd.DatetimeIndex  # labelled dates that arrive between T0 and T1
    holdout_dates: pd.DatetimeIndex  # the H labelled dates after T1 (purged from the training dates)


def origins(labels: pd.Series, step: int, count: int) -> list[Origin]:
    """``count`` origins, the last one scoring the panel's last ``step`` labelled dates and each
    earlier one the ``step`` dates before; oldest first."""
    out = []
    for k in range(count):
        visible = labels
        if k:
            cut = np.sort(labels.dropna().index.get_level_values("date").unique())[-k * step]
            visible = labels[labels.index.get_level_values("date") < cut]
        split = holdout_split(visible, holdout_days=step, horizon=HORIZON)
        train = split.train_dates
        if len(train) < 2 * step + 50:
            break
        out.append(Origin(train[:-step], train[-step:], split.holdout_dates))
    return out[::-1]


def rank_ic_and_se(y: pd.Series, pred: np.ndarray, dates: pd.Index) -> tuple[float, float]:
    """Mean per-date rank IC and a rough standard error (per-date std over sqrt(dates / horizon):
    overlapping labels leave about one independent observation per horizon)."""
    ic = float(evaluate_predictions(y.to_numpy(), pred, dates)["rank_ic"])
    daily = per_date_ic(y.to_numpy(), pred, dates, method="spearman")
    return ic, float(daily.std() / np.sqrt(len(daily) / HORIZON))


def iterations(model) -> str:
    """Trees or epochs behind the model's predictions (best_iteration + 1)."""
    return str(best_iteration(model) + 1)


def run_family(panel: Panel, family: str, origin: Origin, repeats: int, log) -> dict:
    params = resolve_params(family, quick=True)
    X_champ, y_champ = design_matrix(panel.features, panel.labels, panel.features.columns, origin.champion_dates)
    X_new, y_new = design_matrix(panel.features, panel.labels, panel.features.columns, origin.new_dates)
    full_dates = origin.champion_dates.append(origin.new_dates)
    X_full, y_full = design_matrix(panel.features, panel.labels, panel.features.columns, full_dates)
    X_hold, y_hold = design_matrix(panel.features, panel.labels, panel.features.columns, origin.holdout_dates)
    # Holdout rows are scored with the feature history before them (the nets read a window of it).
    span = panel.features[panel.features.index.get_level_values("date") <= origin.holdout_dates[-1]]
    hold_rows = span.index.get_indexer(X_hold.index)
    hold_dates = X_hold.index.get_level_values("date")

    start = time.perf_counter()
    champion, _ = fit_model(family, params, X_champ, y_champ, HORIZON)
    champion_s = time.perf_counter() - start

    full_s, update_s, full_pred, update_pred = [], [], [], []
    for _ in range(repeats):
        start = time.perf_counter()
        full, _ = fit_model(family, params, X_full, y_full, HORIZON)
        full_s.append(time.perf_counter() - start)
        full_pred.append(predict_rows(full, span, hold_rows))
        start = time.perf_counter()
        updated, _ = update_model(champion, X_new, y_new, HORIZON)
        update_s.append(time.perf_counter() - start)
        update_pred.append(predict_rows(updated, span, hold_rows))
    for name, preds in (("full retrain", full_pred), ("update", update_pred)):
        if any(not np.array_equal(preds[0], p) for p in preds[1:]):
            raise AssertionError(f"{family} {name}: repeats gave different predictions")

    # The same update without early stopping: every one of the default rounds kept, fitted on all new rows.
    forced = copy.deepcopy(champion).fit_incremental((X_new, y_new.clip(*champion.target_clip_)))
    forced_ic, _ = rank_ic_and_se(y_hold, predict_rows(forced, span, hold_rows), hold_dates)
    stale_ic, stale_se = rank_ic_and_se(y_hold, predict_rows(champion, span, hold_rows), hold_dates)
    full_ic, full_se = rank_ic_and_se(y_hold, full_pred[0], hold_dates)
    update_ic, update_se = rank_ic_and_se(y_hold, update_pred[0], hold_dates)
    row = {
        "panel": panel.name,
        "family": family,
        "holdout": f"{origin.holdout_dates[0].date()}..{origin.holdout_dates[-1].date()}",
        "champion_rows": len(X_champ),
        "new_rows": len(X_new),
        "full_rows": len(X_full),
        "champion_fit_s": champion_s,
        "full_s": statistics.median(full_s),
        "update_s": statistics.median(update_s),
        "iters_champion": iterations(champion),
        "iters_update": iterations(updated),
        "iters_full": iterations(full),
        "iters_forced": iterations(forced),
        "ic_stale": stale_ic,
        "ic_update": update_ic,
        "ic_full": full_ic,
        "ic_forced": forced_ic,
        "se": float(np.median([stale_se, full_se, update_se])),
    }
    log(f"  {family:8s} holdout {row['holdout']}: full {row['full_s']:.2f} s, update {row['update_s']:.2f} s; "
        f"rank IC stale {stale_ic:+.4f}, update {update_ic:+.4f}, full {full_ic:+.4f}, forced update {forced_ic:+.4f} "
        f"(se ~{row['se']:.4f}); {iterations(champion)} / {iterations(updated)} / {iterations(full)} kept")
    return row


def _machine() -> str:
    import lightgbm
    import torch
    import xgboost

    return (f"{cpu_name()}, shared with other jobs; Python {platform.python_version()}, "
            f"XGBoost {xgboost.__version__}, LightGBM {lightgbm.__version__}, torch {torch.__version__}; 1 thread per fit")


def tables(rows: list[dict]) -> tuple[str, str]:
    frame = pd.DataFrame(rows)
    detail = ["| panel | family | holdout | rows: champion / new / full | full retrain s | update s | speed-up "
              "| trees or epochs: champion / update / full | rank IC stale | rank IC update | rank IC full "
              "| rank IC update, no early stopping | se |",
              "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        detail.append(
            f"| {r['panel']} | {r['family']} | {r['holdout']} | {r['champion_rows']:,} / {r['new_rows']:,} / {r['full_rows']:,} "
            f"| {r['full_s']:.2f} | {r['update_s']:.2f} | {r['full_s'] / r['update_s']:.1f}x "
            f"| {r['iters_champion']} / {r['iters_update']} / {r['iters_full']} "
            f"| {r['ic_stale']:+.4f} | {r['ic_update']:+.4f} | {r['ic_full']:+.4f} | {r['ic_forced']:+.4f} ({r['iters_forced']}) "
            f"| {r['se']:.4f} |"
        )
    summary = ["| panel | family | origins | median full retrain s | median update s | speed-up | mean rank IC stale "
               "| mean rank IC update | mean rank IC full | mean rank IC update, no early stopping | update - full (per origin) "
               "| updates that kept new rounds |",
               "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|"]
    for (panel, family), g in frame.groupby(["panel", "family"], sort=False):
        diffs = ", ".join(f"{d:+.4f}" for d in g["ic_update"] - g["ic_full"])
        summary.append(
            f"| {panel} | {family} | {len(g)} | {g['full_s'].median():.2f} | {g['update_s'].median():.2f} "
            f"| {g['full_s'].median() / g['update_s'].median():.1f}x | {g['ic_stale'].mean():+.4f} "
            f"| {g['ic_update'].mean():+.4f} | {g['ic_full'].mean():+.4f} | {g['ic_forced'].mean():+.4f} | {diffs} "
            f"| {int((g['iters_update'].astype(int) > g['iters_champion'].astype(int)).sum())} of {len(g)} |"
        )
    return "\n".join(summary), "\n".join(detail)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prices", action="append", default=None,
                        help=f"'embedded' or a CSV/Parquet panel; repeat for several (default: {DATA})")
    parser.add_argument("--families", default=None,
                        help="comma-separated (default: xgboost,lightgbm; plus lstm on the embedded panel)")
    parser.add_argument("--step", type=int, default=120, help="H: new dates per step, and holdout dates")
    parser.add_argument("--origins", type=int, default=3, help="time steps simulated per panel")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each fit (median reported)")
    parser.add_argument("--features", default="first30", choices=["first30", "all"])
    parser.add_argument("--write", action="store_true", help=f"replace '{SECTION}' in {DOCS.relative_to(REPO)}")
    args = parser.parse_args(argv)
    sources = args.prices or [str(DATA)]

    started, load = time.perf_counter(), os.getloadavg()[0]
    rows, panels = [], []
    for source in sources:
        panel = load_panel(source, args.features)
        panels.append(panel)
        families = (args.families.split(",") if args.families
                    else [*TREES, *(["lstm"] if source == "embedded" else [])])
        steps = origins(panel.labels, args.step, args.origins)
        print(f"{panel.name}: {panel.n_symbols} symbols, {panel.n_dates} dates, {panel.features.shape[1]} features; "
              f"{len(steps)} origins of H={args.step} dates", flush=True)
        for origin in steps:
            for family in families:
                rows.append(run_family(panel, family, origin, args.repeats, lambda m: print(m, flush=True)))
    wall = time.perf_counter() - started
    summary, detail = tables(rows)
    print("\n" + summary + "\n\n" + detail)
    print(f"\nwhole benchmark {wall / 60:.1f} min; 1-minute load average at the start {load:.1f}")

    if args.write:
        panels_line = "; ".join(f"{p.name}: {p.n_symbols} symbols, {p.n_dates} dates" for p in panels)
        body = "\n".join([
            SECTION,
            "",
            "`benchmarks/incremental.py`: a champion fitted at T0 is either refitted from scratch on everything up to "
            f"T1 = T0 + H (`fit_model`) or updated on the H new dates only (`update_model` -> `fit_incremental`: more trees "
            "from the kept ones, or fine-tuning epochs at 0.3 x lr); both, and the stale champion, are scored on the next "
            f"H labelled dates (purged by the {HORIZON}-day horizon). H = {args.step} trading days, {args.origins} origins "
            f"per panel, each H dates before the next. Panels: {panels_line}. Features: "
            + ("the first 30 base columns of `build_features`" if args.features == "first30" else "every base feature")
            + "; target: 5-day excess return; hyper-parameters `resolve_params(family, quick=True)`.",
            f"Machine: {_machine()}; 1-minute load average {load:.1f} at the start. Whole benchmark: {wall / 60:.1f} minutes.",
            "",
            summary,
            "",
            "Per origin (fit times: median of "
            f"{args.repeats} interleaved runs, identical predictions each time; rows are labelled rows; "
            "trees or epochs: `best_iteration + 1` of the model as it predicts; \"no early stopping\": "
            "`fit_incremental` on all the new rows without a validation slice, every default round kept (trees or epochs "
            "behind it in brackets), untimed; se: rough standard error of one block's mean rank IC, per-date std / "
            "sqrt(dates / horizon)):",
            "",
            detail,
            "",
            f"- Rerun: `python benchmarks/incremental.py {' '.join('--prices ' + _shown(s) for s in sources)} "
            f"--origins {args.origins} --repeats {args.repeats} --write` from the repository root.",
        ])
        write_section(SECTION, body)
        print(f"wrote '{SECTION}' in {DOCS}")
    return 0


def _shown(source: str) -> str:
    """A panel path as typed from the repository root (relative), 'embedded' as it is."""
    return source if source == "embedded" else os.path.relpath(source, REPO)



if __name__ == "__main__":
    sys.exit(main())
