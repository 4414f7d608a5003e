"""Linear growth: 2x the rows costs <= 2.2x the time (sp500_5yr halves vs whole).

Each heavy library stage of the pipeline is timed on half the panel (half the symbols, a seeded
choice, every date: each date's cross-section halves and so do the rows) and on the whole panel,
called as the assets call it (``defs/``), with the profile's settings (``--profile``, default
quick):

* ``features``: ``build_features(prices)`` (the ``base_features`` asset);
* ``generation``: ``generate(base_features, GenerationSpec(), all_pairs=True)`` (``generated_features``);
* ``labels``: ``forward_returns(prices, horizon)`` (``labels``);
* ``design_matrix``: ``training_window(features, labels, settings)`` (excess target, purged holdout
  split, every feature column on the training dates; what the selection, CV and study assets start with);
* ``selection``: ``run_selection(X, y, selection_plan(SelectionSettings(), settings), feature_recipes=...)``
  on the training window (``feature_selection``);
* ``xgboost_cv`` / ``lightgbm_cv``: one ``cross_validate`` over the purged walk-forward folds of
  ``cv_splits`` (``<family>_cv``), each fold on the same 30 columns (the first 30 base features,
  ``SelectionSettings.max_features``), parameters ``resolve_params(family, quick=...)`` with early
  stopping off (``early_stopping_rounds=0``: every fold fits the same number of rounds at both sizes,
  checked, so the ratio measures scaling and not where early stopping stopped);
* ``optuna``: ``run_study`` of the ``<family>_study`` objective (``cv_objective`` over the same folds
  and columns, XGBoost, the defaults enqueued first, then seeded random draws; no pruning, early
  stopping off), ``--trials`` trials in a fresh SQLite study;
* ``rank_ic``: ``evaluate_predictions`` and ``per_date_ic(method="spearman")`` of model-like scores on
  the training window (what every CV fold and trial computes);
* ``backtest``: ``run_backtest`` of model-like scores (long-short and long-only, 5-day tranches,
  one-day execution lag, 5 bps), as the ``backtest`` asset runs each signal (``simulate`` inside).

Model-like scores: the excess target plus seeded Gaussian noise 20x its spread (rank IC ~0.05).
Every library runs on one thread (``nthread=1``, ``n_jobs=1``, ``OMP_NUM_THREADS=1`` and the BLAS
equivalents, set before NumPy loads) so that parallelism cannot hide the growth. Each stage's
inputs are prepared untimed for both sizes; runs are interleaved (half, whole, then whole, half,
...) and the median of ``--repeat`` runs is reported. The verdict reads the time ratio scaled to
exactly 2x the rows (``2 ** (log time ratio / log rows ratio)``; the seeded half holds ~50 % of the
rows, not exactly): <= 2.2 is linear-ish.

    python benchmarks/scaling.py                                   # print the table
    python benchmarks/scaling.py --stages features,labels --repeat 1
    python benchmarks/scaling.py --out /tmp/scaling_section.md     # the section, to a file
    python benchmarks/scaling.py --write                           # the section, into docs/benchmarks.md
"""

from __future__ import annotations

import os

# One thread per library, before NumPy / XGBoost / LightGBM load their thread pools.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS",
             "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import math
import platform
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from _common import DOCS, cpu_name, write_section

from plml_assets.defs.selection.assets import selection_plan
from plml_assets.defs.shared import training_window
from plml_assets.lib import tuning
from plml_assets.lib.backtest import engine as bt
from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.data.prices import load_file
from plml_assets.lib.features.base import build_features
from plml_assets.lib.features.generation import GenerationSpec, generate
from plml_assets.lib.models.registry import resolve_params
from plml_assets.lib.models.training import (
    cross_validate,
    excess_returns,
    fold_assignments,
    folds_from_assignments,
)
from plml_assets.lib.selection.pipeline import run_selection
from plml_assets.lib.validation.metrics import evaluate_predictions, per_date_ic
from plml_assets.lib.validation.splits import PurgedWalkForward
from plml_assets.resources.settings import ExperimentSettings, SelectionSettings

DATA = REPO.parent / "shared/data/sp500_5yr.csv.gz"
SECTION = "## Scaling: half the panel against the whole"
LINEAR_BOUND = 2.2  # time ratio allowed for 2x the rows
N_COLUMNS = 30  # SelectionSettings.max_features: the width of one fold's model
NOISE = 20.0  # model-like scores: target + NOISE x its std of Gaussian noise
GAP_BOUND = 0.10  # CVResultsConfig.gap_bound
#: cv_splits: walk-forward folds by profile (CVSplitsConfig default 5, capped at 3 when quick).
WF_SPLITS = {"quick": 3, "full": 5}


@dataclass
class Panel:
    """One size's inputs, prepared untimed, as the upstream assets hand them on."""

    name: str
    prices: pd.DataFrame
    settings: ExperimentSettings
    base: pd.DataFrame = None
    features: pd.DataFrame = None
    recipes: dict = None
    labels: pd.DataFrame = None
    X: pd.DataFrame = None
    y: pd.Series = None
    y_all: pd.Series = None
    folds: list = None
    scores: pd.Series = None
    train_scores: np.ndarray = None
    checks: dict = field(default_factory=dict)

    @property
    def symbols(self) -> int:
        return self.prices.index.get_level_values("symbol").nunique()

    @property
    def columns(self) -> list[str]:
        return list(self.base.columns[:N_COLUMNS])


def prepare(name: str, prices: pd.DataFrame, settings: ExperimentSettings, seed: int, log) -> Panel:
    start = time.perf_counter()
    p = Panel(name, prices, settings)
    p.base, _ = build_features(prices)
    p.features, recipes = generate(p.base, GenerationSpec(), all_pairs=True)
    p.recipes = {"recipes": recipes, "spec": GenerationSpec().to_dict()}
    p.labels = forward_returns(prices, settings.horizon).to_frame()
    p.X, p.y, split = training_window(p.features, p.labels, settings)
    p.y_all = excess_returns(p.labels.iloc[:, 0])
    splitter = PurgedWalkForward(n_splits=WF_SPLITS[settings.profile], horizon=settings.horizon,
                                 embargo=settings.embargo_days)
    p.folds = folds_from_assignments(p.X, fold_assignments(splitter, split.train_dates, "walk_forward"))
    rng = np.random.default_rng(seed)
    known = p.y_all.dropna()
    p.scores = (known + rng.normal(0.0, NOISE * known.std(), len(known))).rename("score")
    p.train_scores = p.scores.reindex(p.X.index).to_numpy()
    log(f"{name}: {p.symbols} symbols, {len(prices):,} price rows, {p.features.shape[1]} feature columns "
        f"({p.base.shape[1]} base), {len(p.X):,} training rows, {len(p.folds)} walk-forward folds; "
        f"prepared in {time.perf_counter() - start:.1f} s")
    return p


# --- the stages -------------------------------------------------------------------------------
# Each takes a Panel and returns the number of rows it worked on.

def stage_features(p: Panel) -> int:
    build_features(p.prices)
    return len(p.prices)


def stage_generation(p: Panel) -> int:
    generate(p.base, GenerationSpec(), all_pairs=True)
    return len(p.base)


def stage_labels(p: Panel) -> int:
    forward_returns(p.prices, p.settings.horizon)
    return len(p.prices)


def stage_design_matrix(p: Panel) -> int:
    X, _, _ = training_window(p.features, p.labels, p.settings)
    return len(X)


def stage_selection(p: Panel) -> int:
    plan = selection_plan(SelectionSettings(), p.settings)
    result = run_selection(p.X, p.y, plan, feature_recipes=p.recipes)
    p.checks["selection"] = f"{len(result.selected)} selected"
    return len(p.X)


def _tree_params(family: str, p: Panel) -> dict:
    return resolve_params(family, overrides={"early_stopping_rounds": 0}, quick=p.settings.quick, seed=p.settings.seed)


def _cv(family: str, p: Panel) -> int:
    params = _tree_params(family, p)
    columns = p.columns
    per_fold, _ = cross_validate(params, p.X[columns], p.y, p.folds, p.settings.horizon, GAP_BOUND, family=family,
                                 fold_columns=[columns] * len(p.folds))
    rounds = sorted({int(r) + 1 for r in per_fold["best_iteration"]})
    if rounds != [int(params["n_estimators"])]:
        raise AssertionError(f"{family}: folds kept {rounds} rounds, expected {params['n_estimators']} (early stopping off)")
    p.checks[family] = f"{rounds[0]} rounds x {len(p.folds)} folds"
    return len(p.X)


def stage_xgboost_cv(p: Panel) -> int:
    return _cv("xgboost", p)


def stage_lightgbm_cv(p: Panel) -> int:
    return _cv("lightgbm", p)


TRIALS = 2  # set from --trials


def stage_optuna(p: Panel) -> int:
    family = "xgboost"
    space = tuning.DEFAULT_SPACES[family]
    base = _tree_params(family, p)
    fixed = {k: v for k, v in base.items() if k not in space.names}
    columns = p.columns
    objective = tuning.cv_objective(tuning.family_fit_predict(family, p.settings.horizon, **fixed), p.X[columns], p.y,
                                    p.folds, p.settings.horizon, metric="rank_ic", objectives=["rank_ic"],
                                    fold_columns=[columns] * len(p.folds))
    defaults = {k: v for k, v in base.items() if k in space.names}
    with tempfile.TemporaryDirectory() as tmp:
        result = tuning.run_study(objective, space, storage_url=f"sqlite:///{tmp}/study.db", study_name="scaling",
                                  sampler="random", pruner="none", n_trials=TRIALS, seed=p.settings.seed,
                                  enqueue=[defaults])
        done = len(result.study.trials)
    p.checks["optuna"] = f"{done} trials x {len(p.folds)} folds x {fixed['n_estimators']} rounds"
    return len(p.X)


def stage_rank_ic(p: Panel) -> int:
    dates = p.X.index.get_level_values("date")
    evaluate_predictions(p.y.to_numpy(), p.train_scores, dates)
    per_date_ic(p.y.to_numpy(), p.train_scores, dates, method="spearman")
    return len(p.X)


def stage_backtest(p: Panel) -> int:
    signal_dates = p.scores.index.get_level_values("date").unique().sort_values()
    k = max(1, min(10, p.symbols // 2))  # BacktestConfig.top_k, capped at half the universe
    for construction in ("long_short", "long_only"):
        bt.run_backtest(p.scores, p.prices, construction=construction, quantile=0.2, k=k, cost_bps=5.0,
                        forward_returns=p.y_all, dates=signal_dates, holding_days=p.settings.horizon, execution_lag=1)
    return len(p.scores)


@dataclass(frozen=True)
class Stage:
    run: Callable[[Panel], int]
    call: str
    #: From reading its code: what could make it grow faster than the rows (read when superlinear) ...
    grows: str
    #: ... and what does not grow with them (read when sublinear).
    fixed: str
    #: Cheap enough for one untimed warm-up call per size before the timed runs.
    warm_up: bool = True


STAGES: dict[str, Stage] = {
    "features": Stage(stage_features, "`build_features`",
                      "per-date cross-sectional ranks and z-scores sort each date's cross-section (n log n per date); "
                      "the 75 float32 output columns outgrow the CPU caches",
                      "per-column and per-group call overhead (75 columns, a few groupbys) weighs more on the half"),
    "generation": Stage(stage_generation, "`generate(all_pairs=True)`",
                        "per-date rank / z across symbols sorts each cross-section; wide date x symbol copies are "
                        "memory-bound",
                        "per-recipe overhead (108 recipes) weighs more on the half"),
    "labels": Stage(stage_labels, "`forward_returns`",
                    "factorizing the object-dtype symbol level and the hash tables grow with the rows and fall out of "
                    "cache (a 0.1 s stage: cache misses, not arithmetic)",
                    "per-call overhead of a 0.1 s stage"),
    "design_matrix": Stage(stage_design_matrix, "`training_window`",
                           "it copies every feature column of the training rows (`features.loc[mask, columns]`: 183 "
                           "float32 columns, ~350 MB on the whole panel): memory-bound, and each call page-faults a "
                           "fresh allocation of that size",
                           "per-call overhead"),
    "selection": Stage(stage_selection, "`run_selection`",
                       "n log n ranks of the statistics rows",
                       "capped by design: `stats_rows` and `sample_rows` subsample the rows for the statistics and the "
                       "importance models (quick: 20,000 and 50,000), so the whole panel does not cost twice the half",
                       warm_up=False),
    "xgboost_cv": Stage(stage_xgboost_cv, "`cross_validate` xgboost",
                        "the quantile sketch sorts each feature (n log n); gradient and histogram arrays outgrow the "
                        "CPU caches",
                        "a per-round cost that does not depend on the rows (tree bookkeeping over 30 features x 256 "
                        "bins), and the in-sample score capped at 250 dates, not rows", warm_up=False),
    "lightgbm_cv": Stage(stage_lightgbm_cv, "`cross_validate` lightgbm",
                         "gradient and histogram arrays outgrow the CPU caches",
                         "binning reads at most `bin_construct_sample_cnt` = 200,000 rows, histogram subtraction "
                         "works per bin, and the in-sample score is capped at 250 dates", warm_up=False),
    "optuna": Stage(stage_optuna, "`run_study` xgboost objective",
                    "as xgboost_cv (its fits are the same recipe)",
                    "as xgboost_cv, plus the study's SQLite bookkeeping", warm_up=False),
    "rank_ic": Stage(stage_rank_ic, "`evaluate_predictions` + `per_date_ic`",
                     "groupby(date).rank sorts each cross-section (n log n per date) and the dates are factorized "
                     "again for every groupby (`nunique`, `transform`, `sum`)",
                     "per-call overhead"),
    "backtest": Stage(stage_backtest, "`run_backtest` x 2",
                      "per-date ranks of the scores (n log n per date)",
                      "`_hold` is a Python loop over the 1,259 dates (the same count at both sizes), each step one "
                      "vector operation over the symbols"),
}


# --- measurement ------------------------------------------------------------------------------

def at_twice(time_ratio: float, rows_ratio: float) -> float:
    """The time ratio scaled to exactly 2x the rows, assuming time ~ rows^k."""
    if rows_ratio <= 1 or time_ratio <= 0:
        return math.nan
    return 2.0 ** (math.log(time_ratio) / math.log(rows_ratio))


def verdict(stage: str, scaled: float) -> str:
    if not math.isfinite(scaled):
        return "n/a"
    if scaled > LINEAR_BOUND:
        return f"**superlinear**; likely: {STAGES[stage].grows}"
    if scaled < 1.7:
        return f"linear-ish (sublinear: {STAGES[stage].fixed})"
    return "linear-ish"


def measure(panels: dict[str, Panel], stages: list[str], repeat: int, log) -> list[dict]:
    times = {(s, n): [] for s in stages for n in panels}
    rows = {}
    for s in stages:  # page faults of a first allocation, lazy imports: not what the ratio is about
        if STAGES[s].warm_up:
            for panel in panels.values():
                STAGES[s].run(panel)
    log("  warm-up done (one untimed call per size of: "
        + (", ".join(s for s in stages if STAGES[s].warm_up) or "none") + ")")
    for r in range(repeat):
        order = ["half", "whole"] if r % 2 == 0 else ["whole", "half"]
        for s in stages:
            for n in order:
                start = time.perf_counter()
                rows[(s, n)] = STAGES[s].run(panels[n])
                times[(s, n)].append(time.perf_counter() - start)
                log(f"  run {r + 1}/{repeat} {s:14s} {n:5s} {times[(s, n)][-1]:7.2f} s")
    out = []
    for s in stages:
        half, whole = statistics.median(times[(s, "half")]), statistics.median(times[(s, "whole")])
        ratio, rows_ratio = whole / half, rows[(s, "whole")] / rows[(s, "half")]
        scaled = at_twice(ratio, rows_ratio)
        spread = max(max(times[(s, n)]) / statistics.median(times[(s, n)]) - 1 for n in panels)
        out.append({"stage": s, "rows_half": rows[(s, "half")], "rows_whole": rows[(s, "whole")],
                    "s_half": half, "s_whole": whole, "ratio": ratio, "rows_ratio": rows_ratio, "scaled": scaled,
                    "spread": spread,
                    "verdict": verdict(s, scaled)})
    return out


def _s(seconds: float) -> str:
    return f"{seconds:.3f}" if seconds < 1 else f"{seconds:.2f}"


def table(results: list[dict]) -> str:
    lines = [("| stage | call | rows half | rows whole | seconds half | seconds whole | slowest run | ratio "
              "| ratio at 2x rows | verdict |"),
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in results:
        lines.append(f"| {r['stage']} | {STAGES[r['stage']].call} | {r['rows_half']:,} | {r['rows_whole']:,} "
                     f"| {_s(r['s_half'])} | {_s(r['s_whole'])} | +{r['spread']:.0%} | {r['ratio']:.2f} | {r['scaled']:.2f} | {r['verdict']} |")
    if len(results) > 1:
        half = sum(r["s_half"] for r in results)
        whole = sum(r["s_whole"] for r in results)
        price_ratio = max(r["rows_ratio"] for r in results if r["stage"] in ("features", "labels")) if any(
            r["stage"] in ("features", "labels") for r in results) else statistics.median(r["rows_ratio"] for r in results)
        scaled = at_twice(whole / half, price_ratio)
        word = "linear-ish" if scaled <= LINEAR_BOUND else "**superlinear**"
        lines.append(f"| **sum** | | | | {half:.2f} | {whole:.2f} | | {whole / half:.2f} | {scaled:.2f} | {word} |")
    return "\n".join(lines)


def _machine() -> str:
    import lightgbm
    import optuna
    import xgboost

    return (f"{cpu_name()}, shared with other jobs; Python {platform.python_version()}, pandas {pd.__version__}, "
            f"NumPy {np.__version__}, XGBoost {xgboost.__version__}, LightGBM {lightgbm.__version__}, "
            f"Optuna {optuna.__version__}; one thread per library")


def section(results: list[dict], panels: dict[str, Panel], args, wall: float, load: float, peak_mib: float) -> str:
    half, whole = panels["half"], panels["whole"]
    superlinear = [r["stage"] for r in results if math.isfinite(r["scaled"]) and r["scaled"] > LINEAR_BOUND]
    checks = sorted({f"{k}: {v}" for p in panels.values() for k, v in p.checks.items()
                     if k in ("xgboost", "lightgbm", "optuna")})
    shown = os.path.relpath(args.data, REPO)
    rerun = (f"python benchmarks/scaling.py --data {shown} --profile {args.profile} --repeat {args.repeat} "
             f"--trials {args.trials}" + (f" --stages {args.stages}" if args.stages else "") + " --write")
    intro = (
        f"`benchmarks/scaling.py`: every heavy library stage, called as its asset calls it ({args.profile} profile), on "
        f"half the panel and on the whole: {args.data.name}, the half {half.symbols} of {whole.symbols} symbols (seeded "
        f"choice, seed {args.seed}) over every date, so each date's cross-section halves. Target: linear growth, 2x the "
        f"rows costs <= {LINEAR_BOUND}x the time. Tree CV and the study fit {N_COLUMNS} columns (the first base "
        "features) with early stopping off, so both sizes fit the same rounds "
        f"({'; '.join(checks) if checks else 'no tree stage run'})."
    )
    machine = (
        f"Machine: {_machine()}; 1-minute load average {load:.1f} at the start. Seconds: median of {args.repeat} "
        "interleaved runs (half, whole, then whole, half, ...) after one untimed warm-up call per size of the stages "
        "that take seconds, not minutes; inputs prepared untimed. Whole benchmark "
        f"{wall / 60:.1f} minutes, peak RSS {peak_mib:,.0f} MiB (`getrusage`, the process: both panels and every "
        "stage's inputs held at once)."
    )
    columns = (
        "- ratio: seconds whole / seconds half; ratio at 2x rows: the same scaled to exactly twice the rows "
        "(`2 ** (log ratio / log rows ratio)`, time ~ rows^k), since the seeded half holds "
        f"{len(half.prices) / len(whole.prices):.1%} of the price rows. Rows: what the stage reads (price rows, "
        "feature rows, training-window rows, or scored rows for the backtest). Slowest run: how far the slowest timed "
        "run of the stage lay above its size's median (the larger of the two sizes): the machine's noise on that line."
    )
    flagged = (
        f"- Superlinear (> {LINEAR_BOUND}): " + (", ".join(superlinear) if superlinear else "none") + ". The machine "
        "is shared, so a ratio within the slowest run's margin of the bound is not a finding on its own; the likely "
        "causes in the verdicts come from reading each stage's code, not from a profile of this run."
    )
    return "\n".join([
        SECTION, "", intro, machine, "", table(results), "", columns, flagged,
        f"- Rerun: `{rerun}` from the repository root (`--out PATH` writes this section to a file instead).",
    ])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="stages: " + ", ".join(STAGES))
    parser.add_argument("--data", type=Path, default=DATA, help=f"the price panel (default: {DATA})")
    parser.add_argument("--stages", default="", help="comma-separated stages to time (default: all)")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per stage and size (median reported)")
    parser.add_argument("--profile", default="quick", choices=["quick", "full"],
                        help="ExperimentSettings.profile: CV folds, boosting rounds, selection caps")
    parser.add_argument("--trials", type=int, default=2, help="trials of the optuna stage (the defaults, then random)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the half's symbols and of the scores' noise")
    parser.add_argument("--symbols", type=int, default=None, help="use only this many (seeded) symbols as the whole "
                        "panel (a quick smoke run; the published figures use every symbol)")
    parser.add_argument("--write", action="store_true", help=f"replace '{SECTION}' in {DOCS.relative_to(REPO)}")
    parser.add_argument("--out", type=Path, default=None, help="write the section's markdown to this file instead")
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()] or list(STAGES)
    unknown = [s for s in stages if s not in STAGES]
    if unknown:
        parser.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGES)}")
    if args.repeat < 1 or args.trials < 1:
        parser.error("--repeat and --trials must be >= 1")
    if not args.data.exists():
        print(f"skipped: benchmark data {args.data} is absent (put sp500_5yr.csv.gz there or pass --data PATH)")
        return 0
    global TRIALS
    TRIALS = args.trials

    def log(message: str) -> None:
        print(message, flush=True)

    started, load = time.perf_counter(), os.getloadavg()[0]
    prices = load_file(args.data)
    symbols = np.sort(prices.index.get_level_values("symbol").unique().to_numpy())
    rng = np.random.default_rng(args.seed)
    if args.symbols:
        symbols = np.sort(rng.choice(symbols, size=min(args.symbols, len(symbols)), replace=False))
        prices = prices[prices.index.get_level_values("symbol").isin(symbols)]
    chosen = np.sort(rng.choice(symbols, size=len(symbols) // 2, replace=False))
    half_prices = prices[prices.index.get_level_values("symbol").isin(chosen)]
    settings = ExperimentSettings(profile=args.profile)
    log(f"{args.data.name}: {len(symbols)} symbols, {len(prices):,} rows; half: {len(chosen)} symbols, "
        f"{len(half_prices):,} rows; stages {', '.join(stages)}; {args.repeat} repeat(s), {args.profile} profile")
    panels = {"half": prepare("half", half_prices, settings, args.seed, log),
              "whole": prepare("whole", prices, settings, args.seed, log)}
    results = measure(panels, stages, args.repeat, log)
    wall = time.perf_counter() - started
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    body = section(results, panels, args, wall, load, peak_mib)
    print("\n" + body)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(body + "\n")
        print(f"\nwrote the section to {args.out}")
    elif args.write:
        write_section(SECTION, body)
        print(f"\nwrote '{SECTION}' in {DOCS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
