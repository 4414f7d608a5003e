"""Training analytics read from a Dagster instance: the steps of the latest runs with their walls
(from the run's step events) and what the IO manager recorded on their materializations (CPU, peak
RSS, threads, rows; lib/analytics/metering.py). Used by `plml analytics`."""

from __future__ import annotations

import os

import dagster as dg

from plml_assets.lib.analytics import metering as an

#: the asset whose materializations are the registered model versions (metadata: model, version, candidate)
REGISTERED_KEY = dg.AssetKey("registered_model")

#: steps whose failure is the promotion gate holding the champion, not a failed training (as in `plml run`)
GATE_STEP_MARK = "promotion_gate"


def _value(entry) -> object:
    return getattr(entry, "value", entry)


def step_figures(instance: dg.DagsterInstance, run_id: str) -> tuple[list[an.StepFigures], list[str]]:
    """The finished steps of one run, and the keys of the steps that failed."""
    starts: dict[str, float] = {}
    pids: dict[str, int] = {}
    ends: dict[str, tuple[float, str]] = {}
    recorded: dict[str, dict] = {}
    for record in instance.all_logs(run_id):
        event = record.dagster_event
        if event is None or not event.step_key:
            continue
        kind = event.event_type
        if kind == dg.DagsterEventType.STEP_START:
            starts[event.step_key] = record.timestamp
            if event.pid is not None:
                pids[event.step_key] = event.pid
        elif kind in (dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.STEP_FAILURE):
            ends[event.step_key] = (record.timestamp, "success" if kind == dg.DagsterEventType.STEP_SUCCESS else "failure")
        elif kind == dg.DagsterEventType.ASSET_MATERIALIZATION:
            meta = {k: _value(v) for k, v in event.event_specific_data.materialization.metadata.items()}
            mine = recorded.setdefault(event.step_key, {})
            for key in (an.CPU_KEY, an.RSS_KEY, an.THREADS_KEY, an.ROWS_IN_KEY, an.GPU_MEM_KEY, an.GPUS_KEY):  # cumulative: the largest
                if key in meta:
                    mine[key] = max(mine.get(key, 0), meta[key])
            if an.ROWS_OUT_KEY in meta:
                mine[an.ROWS_OUT_KEY] = mine.get(an.ROWS_OUT_KEY, 0) + meta[an.ROWS_OUT_KEY]
            if an.GPU_UTIL_KEY in meta:  # the mean over the step so far: the latest output's
                mine[an.GPU_UTIL_KEY] = meta[an.GPU_UTIL_KEY]
            if "trials_run_now" in meta:
                mine["trials"] = int(meta["trials_run_now"])
    steps = []
    for key, (end, status) in ends.items():
        if key not in starts:
            continue
        got = recorded.get(key, {})
        steps.append(an.StepFigures(
            step=key, wall_s=round(end - starts[key], 3), status=status, start=starts[key],
            cpu_s=got.get(an.CPU_KEY), peak_rss_mib=got.get(an.RSS_KEY), threads=got.get(an.THREADS_KEY),
            rows_in=got.get(an.ROWS_IN_KEY), rows_out=got.get(an.ROWS_OUT_KEY), trials=got.get("trials"), pid=pids.get(key),
            gpu_utilization_pct=got.get(an.GPU_UTIL_KEY), gpu_memory_peak_mib=got.get(an.GPU_MEM_KEY), gpus=got.get(an.GPUS_KEY),
        ))
    failed = [k for k, (_, status) in ends.items() if status == "failure"]
    return steps, failed


def distributed_work(instance: dg.DagsterInstance, run_id: str) -> dict[str, dict]:
    """Per step of one run, the work done outside its own process: the study workers (every process
    that took trials, with trials finished, failed, running and heartbeat age: the study assets'
    ``workers``) and where a model trained (``trained_on``, with the Dask task stream totals)."""
    out: dict[str, dict] = {}
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION):
        event = record.dagster_event
        meta = {k: _value(v) for k, v in event.event_specific_data.materialization.metadata.items()}
        entry = {}
        if isinstance(meta.get("workers"), list):
            entry["study_workers"] = meta["workers"]
        if "trained_on" in meta:
            entry["trained_on"] = meta["trained_on"]
            for key in ("dask_tasks", "dask_compute_s", "dask_workers"):
                if key in meta:
                    entry[key] = meta[key]
        if entry:
            out.setdefault(event.step_key, {}).update(entry)
    return out


def registered_versions(instance: dg.DagsterInstance, limit: int = 200) -> dict[str, list[dict]]:
    """The model versions each run registered, by run id, from ``registered_model``'s materializations.
    A materialization that reused a version an earlier run registered (``newly_registered`` false, e.g.
    the re-run of a killed run) is not counted again: the version's cost is the run's that made it."""
    out: dict[str, list[dict]] = {}
    result = instance.fetch_materializations(REGISTERED_KEY, limit=limit)
    for record in result.records:
        meta = {k: _value(v) for k, v in record.asset_materialization.metadata.items()}
        if "version" in meta and meta.get("newly_registered", True):
            out.setdefault(record.run_id, []).append(
                {"model": meta.get("model"), "version": str(meta["version"]), "candidate": meta.get("candidate")})
    return out


def training_succeeded(failed_steps: list[str], status: dg.DagsterRunStatus) -> bool:
    """A run trained successfully when it succeeded, or when its only failure is the promotion gate
    keeping the champion (a decision, not a failure of training)."""
    if status == dg.DagsterRunStatus.SUCCESS:
        return True
    return (status == dg.DagsterRunStatus.FAILURE and bool(failed_steps)
            and all(GATE_STEP_MARK in step for step in failed_steps))


def analytics(instance: dg.DagsterInstance, runs: int = 10, rates: an.RateCard | None = None,
              cores: int | None = None, ignore_steps: frozenset[str] = frozenset({"training_analytics"})) -> dict:
    """The latest finished run's per-step report, plus trends, each step's walls in the earlier runs
    (``step_history``, newest first) and the training success rate over the last ``runs`` finished
    runs that trained something (steps of ``ignore_steps`` and their checks, e.g. the analytics asset,
    are left out, and a run of nothing else is not a training run)."""
    if runs < 1:
        raise ValueError(f"runs must be >= 1, got {runs}")
    rates = rates or an.RateCard()
    cores = cores or len(os.sched_getaffinity(0))
    finished = instance.get_runs(
        filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE]), limit=4 * runs)
    reports, outcomes = [], []
    versions = registered_versions(instance)
    for run in finished:
        if len(reports) == runs:
            break
        steps, failed = step_figures(instance, run.run_id)
        steps = [s for s in steps if not any(s.step == k or s.step.startswith(f"{k}_") for k in ignore_steps)]
        if not steps:
            continue
        report = an.run_report(run.run_id, steps, cores, rates)
        report["job"] = run.job_name
        report["trained"] = training_succeeded(failed, run.status)
        # What a registered model cost: the whole run that trained, validated and registered it (idle cores
        # included), split evenly over the versions it registered.
        report["registered_models"] = versions.get(run.run_id, [])
        n = len(report["registered_models"])
        report["cost_per_registered_model"] = (round(report["cost_total"] / n, 6)
                                               if n and report["cost_total"] is not None else None)
        reports.append(report)
        outcomes.append(report["trained"])
    if not reports:
        raise ValueError("no finished run with steps in this Dagster instance: run `plml run` first")
    latest = dict(reports[0])
    latest["distributed"] = distributed_work(instance, latest["run_id"])
    latest["success_rate"] = an.success_rate(outcomes)
    latest["success_rate_runs"] = len(outcomes)
    history: dict[str, list[float]] = {}
    for r in reports[1:]:
        for s in r["steps"]:
            history.setdefault(s["step"], []).append(s["wall_s"])
    latest["step_history"] = history
    latest["trend"] = [{k: r[k] for k in ("run_id", "job", "wall_s", "cpu_s", "cpu_utilization", "peak_rss_mib",
                                          "cost_total", "cost_per_registered_model", "trained")}
                       for r in reports]
    return latest
