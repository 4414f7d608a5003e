"""`training_analytics`: where the seconds, bytes and money of the last training runs went, as an
asset with plots, and a non-blocking check that names a step that became slow."""


import dagster as dg
from mlflow.exceptions import MlflowException
from pydantic import Field

from plml_assets.defs.analytics.report import analytics
from plml_assets.defs.shared import FAMILIES
from plml_assets.lib.analytics import metering as an
from plml_assets.lib.plots import markdown_image
from plml_assets.resources.mlflow_registry import MlflowRegistry

_RATES = an.RateCard()


class AnalyticsConfig(dg.Config):
    runs: int = Field(default=10, ge=1, description="finished training runs the trends and success rate cover")
    core_hour: float = Field(default=_RATES.core_hour, ge=0, description="cost of one core for an hour (an example, not a truth)")
    gib_hour: float = Field(default=_RATES.gib_hour, ge=0, description="cost of one GiB of memory for an hour (an example)")
    gpu_hour: float = Field(default=_RATES.gpu_hour, ge=0, description="cost of one GPU for an hour (an example)")
    success_gate: float = Field(default=0.95, ge=0, le=1, description="the project's quality gate on the training success rate")


@dg.asset(
    group_name="analytics",
    kinds={"dagster"},
    description="The latest finished training run step by step (wall, CPU s, peak RSS, threads, rows/s, trials/s, cost "
    "by a rate card), CPU utilization and idle share, trends and the training success rate over the last runs, read from "
    "the Dagster instance; a timeline (Gantt) and a trend plot. Materialized by `plml run` after the graph, or by hand.",
)
def training_analytics(context: dg.AssetExecutionContext, config: AnalyticsConfig, model_leaderboard: dict,
                       mlflow_registry: MlflowRegistry) -> dg.Output[dict]:
    rates = an.RateCard(core_hour=config.core_hour, gib_hour=config.gib_hour, gpu_hour=config.gpu_hour)
    try:
        report = analytics(context.instance, runs=config.runs, rates=rates)
    except ValueError as exc:  # a fresh instance: nothing has run to completion yet
        context.log.info(f"training_analytics: {exc}")
        return dg.Output({"run_id": None, "reason": str(exc), "steps": [], "step_history": {}},
                         metadata={"run_id": "none", "reason": str(exc)})
    steps = report["steps"]
    # What each family cost against what it bought: its walk-forward CV rank IC over the baseline's.
    board = {row["candidate"]: row for row in model_leaderboard["table"]}
    baseline = model_leaderboard.get("baseline") or "momentum_20d"
    base_ic = board.get(baseline, {}).get("walk_forward_rank_ic_mean")
    gains = {f: board[f]["walk_forward_rank_ic_mean"] - base_ic for f in FAMILIES
             if f in board and base_ic is not None and board[f].get("walk_forward_rank_ic_mean") is not None}
    report["families"] = an.family_costs(steps, list(FAMILIES), gains, baseline=baseline)
    report["recommendations"] = [r["recommendation"] for r in report["families"] if r.get("recommendation")]
    cost_tag = f"{report['cost_per_registered_model']} {report['currency']}" if report["cost_per_registered_model"] is not None else None
    for version in report["registered_models"] if cost_tag else []:  # shown beside the version in the MLflow registry
        try:
            mlflow_registry.client().set_model_version_tag(version["model"], version["version"], "plml.training_cost", cost_tag)
        except MlflowException as exc:  # e.g. the version was deleted since: the analytics still stand
            context.log.warning(f"training_analytics: could not tag {version['model']} v{version['version']} "
                                f"with its cost: {exc.message}")
    context.log.info(
        f"training_analytics: run {report['run_id'][:8]} wall {report['wall_s']:.0f} s on {report['cores']} cores, "
        f"CPU utilization {report['cpu_utilization']}, cost {report['cost_total']} {report['currency']}, "
        f"success rate {report['success_rate']:.0%} over {report['success_rate_runs']} runs; "
        + (f"{len(report['registered_models'])} model version(s) registered at {cost_tag} each" if cost_tag else "no model version registered")
    )
    slow = sorted(steps, key=lambda s: -s["wall_s"])
    columns = ["wall_s", "cpu_s", "peak_rss_mib", "threads", "rows_in", "rows_per_s", "trials_per_s", "cost"]
    columns += [c for c in ("gpu_utilization_pct", "gpu_memory_peak_mib") if any(c in s for s in steps)]  # only with a GPU
    table = "\n".join(["| step | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
                      + [f"| {s['step']} | " + " | ".join(str(s.get(c, "-")) for c in columns) + " |" for s in slow])
    metadata = {
        "run_id": report["run_id"],
        "wall_s": report["wall_s"],
        "cores": report["cores"],
        "step_wall_sum_s": report["step_wall_sum_s"],
        "success_rate": report["success_rate"],
        "success_rate_runs": report["success_rate_runs"],
        "meets_success_gate": bool(report["success_rate"] >= config.success_gate),
        "steps": dg.MetadataValue.md(table),
        "timeline": dg.MetadataValue.md(markdown_image(an.gantt_png(steps, f"run {report['run_id'][:8]}"), "timeline")),
        "trend": dg.MetadataValue.md(markdown_image(an.trend_png(report["trend"]), "trend")),
        "rate_card": dg.MetadataValue.json(report["rate_card"]),
        "families": dg.MetadataValue.json(report["families"]),
        "recommendations": dg.MetadataValue.md("\n".join(f"- {r}" for r in report["recommendations"]) or "none"),
    }
    if report.get("distributed"):  # study workers and Dask fits of the latest run
        metadata["distributed"] = dg.MetadataValue.json(report["distributed"])
    if report["registered_models"]:
        metadata["registered_models"] = dg.MetadataValue.json(report["registered_models"])
    for key in ("cpu_s", "cpu_utilization", "idle_share", "peak_rss_mib", "cost_total", "cost_per_registered_model"):
        if report[key] is not None:  # absent, not zero, for runs from before the metering
            metadata[key] = report[key]
    return dg.Output(report, metadata=metadata)


@dg.asset_check(asset=training_analytics, blocking=False,
                description="Warns when a step of the latest run took more than 1.5x its median wall over the 5 earlier "
                "runs that ran it (a performance regression), naming the step.")
def step_regression(training_analytics: dict) -> dg.AssetCheckResult:
    latest = {s["step"]: s["wall_s"] for s in training_analytics["steps"]}
    slow = an.regressions(latest, training_analytics.get("step_history", {}), factor=1.5, runs=5)
    if not slow:
        compared = sum(1 for k in latest if len(training_analytics.get("step_history", {}).get(k, [])) >= 2)
        return dg.AssetCheckResult(passed=True, description=f"no step above 1.5x its median ({compared} steps compared)",
                                   metadata={"steps_compared": compared})
    names = ", ".join(f"{r['step']} {r['wall_s']:.0f} s = {r['ratio']:.1f}x its median {r['median_s']:.0f} s" for r in slow)
    return dg.AssetCheckResult(passed=False, severity=dg.AssetCheckSeverity.WARN,
                               description=f"slower than 1.5x the median of the last runs: {names}",
                               metadata={"regressions": dg.MetadataValue.json(slow)})
