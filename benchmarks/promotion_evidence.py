"""What the promotion gate reads, on real data: runs the whole asset graph in process and prints the
evidence behind the gate's decision (pick, evidence dates, N and effective N, DSR, PBO, turnover per
day, net Sharpe of the pick and of each baseline, the gate's verdict).

    python benchmarks/promotion_evidence.py --prices embedded --out /tmp/after_embedded.json
    python benchmarks/promotion_evidence.py --prices ../shared/data/sp500_5yr.csv.gz --before 2016-01-01 \\
        --out /tmp/after_sp500.json
    python benchmarks/promotion_evidence.py --table /tmp/before_embedded.json /tmp/after_embedded.json ...

The extraction also reads the evidence the code before issue 13 produced (an XGBoost backtest
with ``xgboost:*`` columns and an ``xgboost_backtest`` block in the report), so the same script run
from a checkout of the older commit gives the "before" row. ``--table`` writes the "Promotion
evidence" section of docs/benchmarks.md from such JSON files.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def _sharpe(series) -> float:
    series = series.dropna()
    sd = series.std(ddof=1)
    return float(series.mean() / sd * math.sqrt(252)) if len(series) > 2 and sd > 0 else float("nan")


def extract(home: Path, gate_passed: bool, gate_text: str) -> dict:
    """The evidence from a finished run's asset files, new format or old."""
    import pandas as pd

    assets = home / "assets"
    report = json.loads((assets / "validation_report.json").read_text())
    board = json.loads((assets / "model_leaderboard.json").read_text())
    backtest = pd.read_parquet(assets / "backtest.parquet")
    out = {"pick": board["selection"].get("winner"), "verdict": report.get("verdict"), "reasons": report.get("reasons", []),
           "gate": ("promote" if gate_passed else "keep") + ": " + gate_text[:300],
           "leaderboard_validated": board["selection"].get("validated")}
    ev = report.get("evidence")
    if ev is not None:  # issue 13 and later
        out.update({k: ev.get(k) for k in ("candidate", "backtest_dates", "holdout_start", "nested", "trials",
                                             "effective_trials", "sharpe_trials_std", "dsr", "pbo", "pbo_metric",
                                             "turnover_per_day", "execution_lag_days", "cost_bps_per_side", "holding_days",
                                             "net_sharpe")})
        out["baseline_net_sharpe"] = ev.get("baseline_net_sharpe", {})
        return out
    # Before issue 13: the gate read an XGBoost backtest over every date (holdout included).
    xb = report.get("xgboost_backtest", {})
    traded = backtest["xgboost:long_short"].dropna()
    turnover = None
    if "xgboost:turnover" in backtest:
        turnover = float(backtest["xgboost:turnover"].mean())
    out.update({
        "candidate": "xgboost (backtest) / " + str(out["pick"]) + " (leaderboard)",
        "backtest_dates": [str(traded.index[0].date()), str(traded.index[-1].date())],
        "holdout_start": board.get("winner", {}).get("holdout", {}).get("holdout_start") if board.get("winner") else None,
        "nested": False,
        "trials": len(xb.get("pbo_configurations", [])) or None,
        "effective_trials": None,
        "dsr": xb.get("dsr", report.get("dsr")),
        "pbo": xb.get("pbo", report.get("pbo")),
        "pbo_metric": "sharpe",
        "turnover_per_day": turnover,
        "execution_lag_days": 0,
        "cost_bps_per_side": 5.0,
        "net_sharpe": _sharpe(traded),
        "baseline_net_sharpe": {c.split(":")[0]: _sharpe(backtest[c]) for c in backtest.columns
                                if c.endswith(":long_short") and not c.startswith("xgboost:")},
    })
    return out


def run(args) -> dict:
    home = Path(args.home or tempfile.mkdtemp(prefix="plml_evidence_"))
    (home / "dagster").mkdir(parents=True, exist_ok=True)
    prices = args.prices
    if args.before:
        import pandas as pd

        from plml_assets.lib.data.prices import load_embedded

        panel = load_embedded().reset_index() if prices == "embedded" else pd.read_csv(prices)
        panel = panel[pd.to_datetime(panel["date"]) < pd.Timestamp(args.before)]
        prices = str(home / "prices.parquet")
        panel.to_parquet(prices, index=False)
    os.environ.update({"PLML_HOME": str(home), "PLML_PRICES": prices, "PLML_PROFILE": args.profile})

    import dagster as dg

    from plml_assets.definitions import ASSETS, CHECKS, build_resources

    start = time.perf_counter()
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        result = dg.materialize([*ASSETS, *CHECKS], resources=build_resources(), instance=instance, raise_on_error=False)
        gates = [e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"]
        failures = [str(e.event_specific_data.error)[:400] for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    wall = time.perf_counter() - start
    gate = gates[0] if gates else None
    out = extract(home, bool(gate and gate.passed), gate.description if gate else "no gate ran")
    out.update({"label": args.label, "prices": args.prices, "before": args.before, "profile": args.profile,
                "wall_s": round(wall, 1), "step_failures": failures, "home": str(home)})
    return out


def fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(rows: list[dict]) -> str:
    from _common import cpu_name

    head = ("| run | pick | evidence dates | nested | N | effective N | DSR | PBO (metric) | turnover/day | "
            "net Sharpe pick | momentum | reversal | ridge | equal weight | verdict | gate |")
    lines = [head, "|" + "|".join(["---"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        b = r.get("baseline_net_sharpe") or {}
        dates = r.get("backtest_dates") or ["?", "?"]
        lines.append(
            f"| {r['label']} | {r['pick']} | {dates[0]}..{dates[1]} (holdout from {r.get('holdout_start')}) | {fmt(r.get('nested'))} | "
            f"{fmt(r.get('trials'))} | {fmt(r.get('effective_trials'))} | {fmt(r.get('dsr'))} | "
            f"{fmt(r.get('pbo'))} ({r.get('pbo_metric')}) | {fmt(r.get('turnover_per_day'))} | {fmt(r.get('net_sharpe'), 2)} | "
            f"{fmt(b.get('momentum_20d'), 2)} | {fmt(b.get('reversal_5d'), 2)} | {fmt(b.get('ridge'), 2)} | "
            f"{fmt(b.get('equal_weight'), 2)} | {r.get('verdict')} | {r['gate'].split(':')[0]} |"
        )
    return f"Machine: {cpu_name()}.\n\n" + "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prices", default="embedded", help="'embedded' or a CSV/Parquet panel path")
    parser.add_argument("--before", default=None, help="keep only dates before this one (e.g. 2016-01-01)")
    parser.add_argument("--profile", default="quick", choices=["quick", "full"])
    parser.add_argument("--home", default=None, help="PLML_HOME for this run (default: a new temp folder)")
    parser.add_argument("--label", default="run")
    parser.add_argument("--out", default=None, help="write the evidence as JSON here")
    parser.add_argument("--table", nargs="+", default=None, help="JSON files to tabulate instead of running")
    args = parser.parse_args()
    if args.table:
        rows = [json.loads(Path(p).read_text()) for p in args.table]
        print(table(rows))
        return 0
    out = run(args)
    text = json.dumps(out, indent=2, default=str)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
