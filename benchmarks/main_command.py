"""`plml run --quick` end to end, serial (--workers 1) against concurrent step processes (--workers N):
graph wall, the sum of the step walls, their ratio, and the busiest steps.

    python benchmarks/main_command.py --workers 1 2 --repeat 2

Each run is a fresh PLML_HOME (so nothing is resumed) in a subprocess, exactly the README's main
command; step walls are read from the run's events in its Dagster instance. Writes the "Main command:
serial vs concurrent steps" section of docs/benchmarks.md with --write.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import cpu_name, write_section  # noqa: E402

SECTION = "## Main command: serial vs concurrent steps"


def step_walls(dagster_home: Path) -> tuple[float, dict[str, float]]:
    """(run wall from its first step start to its last step end, {step: wall s}) of the latest
    plml_main run there (plml_assets.defs.analytics.report.step_figures)."""
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    from dagster import DagsterInstance, RunsFilter

    from plml_assets.defs.analytics.report import step_figures

    with DagsterInstance.get() as instance:
        (run,) = instance.get_runs(filters=RunsFilter(job_name="plml_main"), limit=1)
        steps, _ = step_figures(instance, run.run_id)
    span = max(s.start + s.wall_s for s in steps) - min(s.start for s in steps)
    return span, {s.step: s.wall_s for s in steps}


def one_run(workers: int, prices: str) -> dict:
    home = Path(tempfile.mkdtemp(prefix=f"plml_main_w{workers}_"))
    env = {**os.environ, "PLML_HOME": str(home), "DAGSTER_HOME": str(home / "dagster"), "PLML_PRICES": prices}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "plml_assets.cli", "run", "--quick", "--workers", str(workers)],
                          env=env, capture_output=True, text=True)
    command_wall = time.perf_counter() - start
    if "plml run: succeeded" not in proc.stdout:
        raise SystemExit(f"plml run --workers {workers} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    graph_wall, walls = step_walls(home / "dagster")
    return {"workers": workers, "command_wall": command_wall, "graph_wall": graph_wall, "step_sum": sum(walls.values()),
            "walls": walls}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--prices", default="embedded")
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()
    results: dict[int, list[dict]] = {w: [] for w in args.workers}
    for _ in range(args.repeat):
        for w in args.workers:  # interleaved, so a slow spell of the machine hits both
            r = one_run(w, args.prices)
            print(f"workers {w}: command {r['command_wall']:.0f} s, graph {r['graph_wall']:.0f} s, "
                  f"sum of steps {r['step_sum']:.0f} s, ratio {r['graph_wall'] / r['step_sum']:.2f}", flush=True)
            results[w].append(r)
    rows = []
    base = statistics.median(r["graph_wall"] for r in results[args.workers[0]])
    for w, runs in results.items():
        graph = statistics.median(r["graph_wall"] for r in runs)
        total = statistics.median(r["step_sum"] for r in runs)
        command = statistics.median(r["command_wall"] for r in runs)
        top = sorted(runs[0]["walls"].items(), key=lambda kv: -kv[1])[:6]
        rows.append(f"| {w} | {command:.0f} | {graph:.0f} | {total:.0f} | {graph / total:.2f} | {graph / base:.2f} | "
                    + ", ".join(f"{k} {v:.0f}" for k, v in top) + " |")
    table = ("| workers | command wall s | graph wall s | sum of step walls s | graph ÷ sum | graph ÷ serial | slowest steps (s, first run) |\n"
             "|---|---|---|---|---|---|---|\n" + "\n".join(rows))
    print(table)
    if args.write:
        body = (f"{SECTION}\n\n`python benchmarks/main_command.py --workers {' '.join(map(str, args.workers))} --repeat {args.repeat}`"
                f" ({args.prices} panel, quick profile, fresh PLML_HOME each run, medians of {args.repeat}). Machine: "
                f"{cpu_name()}. Graph wall: first step start to last step end; a step's wall is its STEP_START to "
                f"STEP_SUCCESS/FAILURE in the run's events (with concurrent steps each one is slower than alone, as they "
                f"share memory bandwidth and caches).\n\n{table}\n")
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
