"""The model_comparison table (and with --leaderboard the model leaderboard) on a dataset.

Materializes the asset graph up to ``model_comparison`` in process (a fresh PLML_HOME under
``--home``), with the given study budgets, and prints the table as markdown plus the wall time of
each step. Run it on the embedded panel and on sp500_5yr::

    python benchmarks/model_comparison.py --prices embedded --profile quick
    python benchmarks/model_comparison.py --prices ../shared/data/sp500_5yr.csv.gz --profile quick \\
        --tree-trials 3 --net-trials 1

Numbers go to docs/benchmarks.md by hand, with the machine they were measured on.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prices", default="embedded", help="'embedded' or a CSV/Parquet panel path")
    parser.add_argument("--profile", default="quick", choices=["quick", "full"])
    parser.add_argument("--tree-trials", type=int, default=None, help="xgboost/lightgbm study budget (default: the profile's)")
    parser.add_argument("--net-trials", type=int, default=None, help="lstm/gru study budget (default: the profile's)")
    parser.add_argument("--home", default=None, help="PLML_HOME for this run (default: a new temp folder)")
    parser.add_argument("--leaderboard", action="store_true",
                        help="also build the ensembles, model_leaderboard and feature_generation_report, and print them")
    args = parser.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="plml_comparison_"))
    os.environ.update({"PLML_HOME": str(home), "PLML_PRICES": args.prices, "PLML_PROFILE": args.profile})
    (home / "dagster").mkdir(parents=True, exist_ok=True)

    import dagster as dg
    import pandas as pd

    from plml_assets.definitions import ASSETS, CHECKS, build_resources

    config = {}
    for family, trials in (("xgboost", args.tree_trials), ("lightgbm", args.tree_trials), ("lstm", args.net_trials), ("gru", args.net_trials)):
        if trials is not None:
            config[f"{family}_study"] = {"config": {"n_trials": trials}}
    start = time.perf_counter()
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        result = dg.materialize(
            [*ASSETS, *CHECKS], resources=build_resources(), instance=instance, run_config={"ops": config},
            selection=dg.AssetSelection.assets(
                "model_comparison", *(("model_leaderboard", "feature_generation_report") if args.leaderboard else ())).upstream(),
        )
        steps = {e.step_key: e.event_specific_data.duration_ms / 1000 for e in result.all_events
                 if e.event_type_value == "STEP_SUCCESS"}
    wall = time.perf_counter() - start
    table = pd.read_parquet(home / "assets" / "model_comparison.parquet").set_index("family")
    shown = table[["walk_forward_rank_ic_mean", "walk_forward_rank_ic_std", "kfold_rank_ic_mean", "kfold_rank_ic_std",
                   "holdout_rank_ic", "holdout_ic", "walk_forward_gap", "fit_seconds", "cv_fit_seconds", "model_kib",
                   "study_trials", "study_pruned", "study_best"]]
    print(f"\nprices={args.prices} profile={args.profile} wall {wall:.0f} s, home {home}\n")
    print(shown.round(4).to_markdown())
    if args.leaderboard:
        import json

        board = json.loads((home / "assets" / "model_leaderboard.json").read_text())
        lb = pd.DataFrame(board["table"]).set_index("candidate")
        print("\nmodel_leaderboard:\n")
        print(lb[["walk_forward_rank_ic_mean", "walk_forward_rank_ic_std", "positive_folds", "kfold_rank_ic_mean", "gap",
                  "oof_sharpe", "dsr", "holdout_rank_ic", "holdout_sharpe", "fit_seconds", "configurations", "selected"]]
              .round(4).to_markdown())
        print(f"\nselection: {board['selection']['reason']}; {board['selection']['validation']}; "
              f"PBO of the candidates {board['selection']['pbo']:.3f}")
        report = json.loads((home / "assets" / "feature_generation_report.json").read_text())
        print(f"\nfeature generation: {report['generated']} generated, {len(report['kept_in_final_selection'])} kept "
              f"({report['kept_per_fold']} per fold); walk-forward CV rank IC base {report['cv_rank_ic_base_mean']:.4f} -> "
              f"enlarged {report['cv_rank_ic_enlarged_mean']:.4f} ({report['cv_rank_ic_change']:+.4f})")
    print("\nstep seconds:")
    for step, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"  {step:24s} {seconds:7.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
