"""Dagster's orchestration overhead: `plml run --quick --workers 1`'s graph against direct calls.

The graph's wall ÷ the same library calls made directly (target ≤ 1.10), and where the difference
goes, step by step.

    python benchmarks/pipeline.py                       # full quick graph, medians of 3 runs per arm
    python benchmarks/pipeline.py --repeat 1 --out /tmp/section.md
    python benchmarks/pipeline.py --smoke --repeat 1    # data, features, labels, selection only

Two arms do the same work in this one process, one step after another, on one thread budget
(OMP/OpenBLAS/MKL threads = 1, set before numpy is imported, as `plml run` does for its steps):

- **dagster**: ``main_job().execute_in_process()``, the job `plml run --quick --workers 1` runs,
  against a Dagster instance in a fresh DAGSTER_HOME seeded with the project's dagster.yaml (SQLite
  run and event storage), with the project's resources: the Parquet/JSON IO manager under
  PLML_HOME/assets, the SQLite MLflow store and the SQLite Optuna storage under PLML_HOME, and the
  quick profile (PLML_PROFILE=quick). Its run config is empty, exactly as in the CLI.
- **direct**: every node of that same job (the same resolved AssetsDefinitions, with the same bound
  resources and the defaults of their ``dg.Config``), called with Dagster's direct invocation
  (``assets_def(build_asset_context(...), **upstream_values)``) in the job's topological order,
  upstream values held in memory: no executor, no IO manager, no run or event storage (an
  ephemeral instance). Multi-output ops (``generated_features``, ``<family>_study``, ``<family>_cv``,
  ``<family>_training``, ``ensembles``) are mapped output by output; asset checks (the price quality
  checks and the promotion gate) are nodes of the job and run in both arms, and a failed *blocking*
  check skips what depends on it in the direct arm as Dagster does, so both arms run the same steps.
  What the direct arm still does in place of the IO manager: a 1-column frame is handed to an input
  typed ``pd.Series`` as a Series, a Series output is kept as a frame, and a dict output is passed
  through ``json.dumps``/``json.loads`` (so downstream steps see the types they see after storage;
  its total is reported, it is milliseconds). Direct invocation has no run, so
  ``context.run`` (used for MLflow run names and tags) is a ``DagsterRun`` built here with a fresh
  run id (patched onto Dagster's direct-invocation context in this process only).

Each run gets its own fresh temporary PLML_HOME (MLflow store, Optuna storage, asset files,
DAGSTER_HOME), removed afterwards, so nothing is resumed (the Optuna studies would otherwise
resume from a storage that already has their trials). PLML_ASSET_DIR, PLML_MLFLOW_TRACKING_URI and
PLML_OPTUNA_STORAGE are dropped from the environment for the same reason; PLML_PRICES is honoured as
`plml run` honours it. Arms alternate (direct, dagster, direct, dagster, ...) so a slow spell of a
shared machine falls on both. Before the measured runs both arms run a small warm-up subgraph
(prices, checks, features, labels) untimed, so first-import and first-call costs fall on neither.

Reported per arm: the wall (dagster: the ``execute_in_process`` call, run creation and the final
run status included; direct: first call to last call, contexts and value hand-over included),
median of --repeat runs; the ratio dagster ÷ direct; the dagster run's time outside steps (run
wall − Σ step walls, STEP_START to STEP_SUCCESS/FAILURE from its event log,
``defs.analytics.report.step_figures``); and per step, dagster step wall − direct call wall (each a
median over the runs) for the steps with the largest difference. Per-step differences of the
long, stochastic steps (Optuna studies, model fits) are within their run-to-run noise on a busy
machine; the IO manager's Parquet writes and reads and the event-log writes are what is
systematic. Writes the "Orchestration overhead" section of docs/benchmarks.md with --write, or the
same markdown to --out PATH.
"""

from __future__ import annotations

import os

# Thread budget and profile before numpy / torch / plml are imported (resources are built at import).
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"
os.environ["PLML_PROFILE"] = "quick"
for _var in ("PLML_ASSET_DIR", "PLML_MLFLOW_TRACKING_URI", "PLML_OPTUNA_STORAGE", "PLML_HOME", "DAGSTER_HOME"):
    os.environ.pop(_var, None)

import argparse
import gc
import inspect
import json
import math
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import dagster as dg
import pandas as pd
from _common import cpu_name, write_section
from dagster._core.definitions.dependency import NodeHandle
from dagster._core.execution.context.invocation import DirectOpExecutionContext
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.utils import make_new_run_id

from plml_assets.definitions import main_job
from plml_assets.defs.analytics.report import step_figures
from plml_assets.lib.analytics.metering import METER, cpu_seconds

SECTION = "## Orchestration overhead"
BOUND = 1.10
#: --smoke: the data, features, labels and feature selection assets (with the price checks)
SMOKE_ASSETS = ("market_prices", "base_features", "labels", "features", "feature_recipes", "feature_selection")
#: untimed warm-up of both arms before the measured runs
WARMUP_ASSETS = ("market_prices", "base_features", "labels", "features", "feature_recipes")

# Direct invocation has no run: give context.run a real-looking one (fresh id per direct run), the
# only attribute of the run the assets read being its run_id.
_DIRECT_RUN: dict[str, DagsterRun] = {}
DirectOpExecutionContext.dagster_run = property(lambda self: _DIRECT_RUN["run"])  # type: ignore[assignment]


# ---------------------------------------------------------------------------------------------
def subset_job(assets: tuple[str, ...] | None) -> dg.JobDefinition:
    """plml_main, or its subset of ``assets`` with those assets' checks."""
    job = main_job()
    if assets is None:
        return job
    keys = {dg.AssetKey(a) for a in assets}
    checks = {k for k in job.asset_layer.asset_graph.asset_check_keys if k.asset_key in keys}
    return job.get_subset(asset_selection=keys, asset_check_selection=checks)


class FreshHome:
    """A fresh PLML_HOME (and DAGSTER_HOME under it, seeded with dagster.yaml), removed on exit."""

    def __init__(self, arm: str, keep: bool):
        self.arm, self.keep = arm, keep

    def __enter__(self) -> Path:
        self.path = Path(tempfile.mkdtemp(prefix=f"plml_pipeline_{self.arm}_"))
        (self.path / "dagster").mkdir()
        shutil.copyfile(REPO / "dagster.yaml", self.path / "dagster" / "dagster.yaml")
        os.environ["PLML_HOME"] = str(self.path)
        os.environ["DAGSTER_HOME"] = str(self.path / "dagster")
        if self.keep:
            print(f"{self.arm}: PLML_HOME={self.path}", flush=True)
        return self.path

    def __exit__(self, *exc) -> None:
        os.environ.pop("PLML_HOME", None)
        os.environ.pop("DAGSTER_HOME", None)
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def _outputs(node_def, result) -> tuple[dict[str, object], list[dg.AssetCheckResult]]:
    """{output name: value} of one direct invocation (a value, a tuple of them, Output /
    MaterializeResult / AssetCheckResult objects, or a generator of those), and its check results."""
    names = [o.name for o in node_def.output_defs]
    items: list[tuple[str | None, object]]
    if inspect.isgenerator(result):
        items = [(getattr(x, "output_name", None), x) for x in result]
    elif len(names) == 1:
        items = [(names[0], result)]
    else:
        items = list(zip(names, result))
    got: dict[str, object] = {}
    checks: list[dg.AssetCheckResult] = []
    for name, item in items:
        if isinstance(item, dg.AssetCheckResult):
            checks.append(item)
            continue
        if isinstance(item, dg.Output):
            got[item.output_name if name is None else name] = item.value
        elif isinstance(item, dg.MaterializeResult):
            got[name or names[0]] = None
        elif name is not None:
            got[name] = item
    return got, checks


def _handover(value: object) -> object:
    """What the IO manager would hand downstream, without a file: Series as a frame, dicts as JSON."""
    if isinstance(value, pd.Series):
        return value.to_frame()
    if isinstance(value, dict):
        return json.loads(json.dumps(value, default=str))
    return value


def _is_check_output(layer, node: str, output: str) -> bool:
    try:
        return isinstance(layer.get_entity_key_for_node_output(NodeHandle(node, None), output), dg.AssetCheckKey)
    except Exception:
        return False


def run_direct(job: dg.JobDefinition) -> dict:
    """Every node of ``job`` by direct invocation, in topological order, values in memory."""
    _DIRECT_RUN["run"] = DagsterRun(job_name=job.name, run_id=make_new_run_id())
    layer, deps = job.asset_layer, job.graph.dependency_structure
    values: dict[tuple[str, str], object] = {}  # (node, output) -> value
    missing: set[tuple[str, str]] = set()  # outputs not produced: failed, skipped or not yielded
    walls: dict[str, float] = {}
    cpus: dict[str, float] = {}
    status: dict[str, str] = {}
    handover_s = 0.0
    instance = dg.DagsterInstance.ephemeral()
    start, cpu_start = time.perf_counter(), time.process_time()
    for node in job.graph.nodes_in_topological_order:
        node_def = node.definition
        upstream = deps.input_to_upstream_outputs_for_node(node.name)
        if any((o.node_name, o.output_name) in missing for outs in upstream.values() for o in outs):
            status[node.name] = "skipped"
            missing.update((node.name, o.name) for o in node_def.output_defs)
            continue
        kwargs = {}
        for node_input, outs in upstream.items():
            input_def = node_def.input_def_named(node_input.input_name)
            if input_def.dagster_type.is_nothing:
                continue
            # an input of an asset with blocking checks also lists the checks' outputs (it waits on them)
            (out,) = [o for o in outs if not _is_check_output(layer, o.node_name, o.output_name)]
            value = values[(out.node_name, out.output_name)]
            if isinstance(value, pd.DataFrame) and value.shape[1] == 1 and input_def.dagster_type.typing_type is pd.Series:
                value = value.iloc[:, 0]
            kwargs[node_input.input_name] = value
        assets_def = layer.get_assets_def_for_node(NodeHandle(node.name, None))
        with dg.build_asset_context(instance=instance) as context:
            t0, c0 = time.perf_counter(), time.process_time()
            try:
                got, checks = _outputs(node_def, assets_def(context, **kwargs))
                ok = True
            except Exception as exc:  # a failing step: Dagster records STEP_FAILURE and skips downstream
                print(f"  direct: {node.name} failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
                got, checks, ok = {}, [], False
            walls[node.name] = time.perf_counter() - t0
            cpus[node.name] = time.process_time() - c0
        # A failed ERROR-severity blocking check fails its step in Dagster, which skips what waits on it.
        blocking = {spec.key.name for spec in getattr(assets_def, "check_specs", ()) if spec.blocking}
        if any(not c.passed and c.severity == dg.AssetCheckSeverity.ERROR and c.check_name in blocking for c in checks):
            ok = False
        status[node.name] = "success" if ok else "failure"
        t1 = time.perf_counter()
        for output_def in node_def.output_defs:
            key = (node.name, output_def.name)
            if not ok:
                missing.add(key)
            elif _is_check_output(layer, node.name, output_def.name):
                values[key] = None  # a check's output carries nothing (downstream waits on it)
            elif output_def.name in got:  # None: a MaterializeResult, stored as nothing by the IO manager too
                values[key] = None if got[output_def.name] is None else _handover(got[output_def.name])
            else:  # an optional output not yielded: Dagster skips what reads it
                missing.add(key)
        handover_s += time.perf_counter() - t1
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    instance.dispose()
    return {"wall": wall, "cpu": cpu, "walls": walls, "cpus": cpus, "status": status, "handover_s": handover_s,
            "outside": wall - sum(walls.values())}


def run_dagster(job: dg.JobDefinition) -> dict:
    """``job.execute_in_process`` on the Dagster instance of the fresh DAGSTER_HOME."""
    with dg.DagsterInstance.get() as instance:
        # the IO manager's CPU meter counts from its previous output: start it at this run, not at import
        METER.step, METER.last_cpu = None, cpu_seconds()
        start, cpu_start = time.perf_counter(), time.process_time()
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        steps, _ = step_figures(instance, result.run_id)
        skipped = {e.step_key for e in result.all_events if e.event_type_value == "STEP_SKIPPED"}
    walls = {s.step: s.wall_s for s in steps}
    # the IO manager's meter: CPU since the previous step's last output (lib/analytics/metering.py)
    cpus = {s.step: s.cpu_s for s in steps if s.cpu_s is not None}
    status = {s.step: s.status for s in steps} | {k: "skipped" for k in skipped}
    span = max(s.start + s.wall_s for s in steps) - min(s.start for s in steps) if steps else 0.0
    return {"wall": wall, "cpu": cpu, "walls": walls, "cpus": cpus, "status": status, "span": span, "outside": wall - sum(walls.values()),
            "success": bool(result.success)}


def one_run(arm: str, job: dg.JobDefinition, keep: bool) -> dict:
    gc.collect()
    with FreshHome(arm, keep):
        return run_direct(job) if arm == "direct" else run_dagster(job)


# ---------------------------------------------------------------------------------------------
def summarize(results: dict[str, list[dict]], top: int) -> dict:
    med = statistics.median
    direct, dagster = results["direct"], results["dagster"]
    steps = sorted(set(direct[0]["walls"]) & set(dagster[0]["walls"]))
    rows = []
    for step in steps:
        d = med(r["walls"][step] for r in direct if step in r["walls"])
        g = med(r["walls"][step] for r in dagster if step in r["walls"])
        dc = med(r["cpus"].get(step, float("nan")) for r in direct)
        gc_ = med(r["cpus"].get(step, float("nan")) for r in dagster)
        rows.append((step, d, g, g - d, dc, gc_))
    rows.sort(key=lambda r: -r[3])
    return {
        "direct_cpu": med(r["cpu"] for r in direct),
        "dagster_cpu": med(r["cpu"] for r in dagster),
        "direct_wall": med(r["wall"] for r in direct),
        "dagster_wall": med(r["wall"] for r in dagster),
        "direct_walls": [r["wall"] for r in direct],
        "dagster_walls": [r["wall"] for r in dagster],
        "dagster_outside": med(r["outside"] for r in dagster),
        "direct_outside": med(r["outside"] for r in direct),
        "handover_s": med(r["handover_s"] for r in direct),
        "step_overhead_sum": sum(r[3] for r in rows),
        "steps": rows,
        "n_steps": len(rows),
        "top": rows[:top],
        "bottom": [r for r in rows[top:] if r[3] < 0][-3:],
        "mismatch": {s for s in set(direct[0]["status"]) | set(dagster[0]["status"])
                     if direct[0]["status"].get(s) != dagster[0]["status"].get(s)},
        "statuses": dagster[0]["status"],
    }


def markdown(s: dict, args: argparse.Namespace, command: str) -> str:
    ratio = s["dagster_wall"] / s["direct_wall"]
    verdict = "within" if ratio <= BOUND else "**above**"
    failed = sorted(k for k, v in s["statuses"].items() if v != "success")
    lines = [
        SECTION, "",
        f"`{command}` ({'smoke subgraph: ' + ', '.join(SMOKE_ASSETS) if args.smoke else 'the whole plml_main job'}, "
        f"quick profile, {os.environ.get('PLML_PRICES', 'embedded')} panel; median of {args.repeat} run(s) per arm, "
        f"arms alternating, each run on a fresh PLML_HOME; one process, one thread budget). Machine: {cpu_name()}, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "- **direct**: every node of the job (assets and checks) called by Dagster's direct invocation in "
        "topological order, upstream values in memory; no executor, IO manager, event log or run storage.",
        "- **dagster**: `main_job().execute_in_process()` as `plml run --quick --workers 1` runs it: SQLite "
        "instance from the project's dagster.yaml, the Parquet/JSON IO manager, in-process executor.",
        "- Same resources (SQLite MLflow store and Optuna storage under each run's own PLML_HOME) and Config defaults "
        "in both; checks run in both; OMP/OpenBLAS/MKL threads 1; an untimed warm-up of both arms first. Direct "
        "invocation still binds resources and type-checks values, so the direct arm is a slight upper bound on plain "
        "calls.",
        "",
        "| arm | wall s (median) | runs s | process CPU s (median) | outside steps s |",
        "|---|---|---|---|---|",
        f"| direct | {s['direct_wall']:.1f} | {', '.join(f'{w:.1f}' for w in s['direct_walls'])} | {s['direct_cpu']:.1f} | "
        f"{s['direct_outside']:.2f} (of which value hand-over {s['handover_s']:.2f}) |",
        f"| dagster | {s['dagster_wall']:.1f} | {', '.join(f'{w:.1f}' for w in s['dagster_walls'])} | {s['dagster_cpu']:.1f} | "
        f"{s['dagster_outside']:.2f} (run wall − Σ step walls) |",
        "",
        f"**dagster ÷ direct = {ratio:.3f}** wall ({verdict} the {BOUND:.2f} bound), "
        f"{s['dagster_cpu'] / s['direct_cpu']:.3f} in process CPU seconds (less sensitive to other load on the "
        f"machine); dagster − direct = {s['dagster_wall'] - s['direct_wall']:+.1f} s, of which Σ over the "
        f"{s['n_steps']} steps of (step wall − direct call) = {s['step_overhead_sum']:+.1f} s and time outside steps "
        f"{s['dagster_outside'] - s['direct_outside']:+.1f} s.",
        "",
        "Steps with the largest dagster step wall − direct call wall (medians; a step wall runs from STEP_START to "
        "STEP_SUCCESS/FAILURE and so includes loading inputs from Parquet and storing outputs):",
        "",
        "| step | direct s | dagster s | overhead s | overhead % | direct CPU s | dagster CPU s |",
        "|---|---|---|---|---|---|---|",
    ]
    def num(x: float, fmt: str) -> str:
        return "" if math.isnan(x) else format(x, fmt)  # NaN (no figure): an empty cell

    for row in s["top"] + ([None] if s["bottom"] else []) + s["bottom"]:
        if row is None:  # the steps that came out fastest under Dagster follow
            lines.append("| … | | | | | | |")
            continue
        step, d, g, o, dc, gc_ = row
        pct = 100 * o / d if d > 0 else float("nan")
        lines.append(f"| {step} | {d:.2f} | {g:.2f} | {o:+.2f} | {num(pct, '+.0f')}{'' if math.isnan(pct) else '%'} | "
                     f"{num(dc, '.2f')} | {num(gc_, '.2f')} |")
    lines += ["", "Negative per-step figures are run-to-run noise of a step (Optuna trials, fits) on a shared "
              "machine, not Dagster making it faster; with one run per arm the smaller differences are noise too. The "
              "dagster CPU column is the IO manager's meter (CPU since the previous step's last output, so it includes "
              "the orchestration between steps)."]
    if failed:
        named = ", ".join(f"{k} ({s['statuses'][k]})" for k in failed)
        lines += ["", f"Steps of the dagster run that did not succeed: {named}."]
    if s["mismatch"]:
        lines += ["", f"Steps whose outcome differed between the arms: {', '.join(sorted(s['mismatch']))}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[5:8]))
    parser.add_argument("--repeat", type=int, default=3, help="runs per arm (median reported; default 3)")
    parser.add_argument("--smoke", action="store_true", help="only data, features, labels and feature selection (a quick check)")
    parser.add_argument("--top", type=int, default=10, help="steps listed in the per-step table")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run of both arms")
    parser.add_argument("--keep", action="store_true", help="keep the temporary PLML_HOMEs (paths printed)")
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    parser.add_argument("--out", type=Path, default=None, help="also write the markdown section to this file")
    parser.add_argument("--json", type=Path, default=None, help="write every run's per-step walls and CPU to this file")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be >= 1")
    job = subset_job(SMOKE_ASSETS if args.smoke else None)
    if not args.no_warmup:
        warm = subset_job(WARMUP_ASSETS)
        for arm in ("direct", "dagster"):
            r = one_run(arm, warm, keep=False)
            print(f"warm-up {arm}: {r['wall']:.1f} s", flush=True)
    results: dict[str, list[dict]] = {"direct": [], "dagster": []}
    for i in range(args.repeat):
        for arm in ("direct", "dagster"):  # alternating, so drift of a shared machine hits both
            r = one_run(arm, job, args.keep)
            results[arm].append(r)
            print(f"run {i + 1}/{args.repeat} {arm}: wall {r['wall']:.1f} s, Σ steps {sum(r['walls'].values()):.1f} s, "
                  f"outside steps {r['outside']:.2f} s", flush=True)
    summary = summarize(results, args.top)
    command = "python benchmarks/pipeline.py" + (" --smoke" if args.smoke else "") + f" --repeat {args.repeat}"
    body = markdown(summary, args, command)
    print()
    print(body)
    if args.out:
        args.out.write_text(body)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    if args.write:
        write_section(SECTION, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
