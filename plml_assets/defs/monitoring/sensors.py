"""The drift sensor: a retraining run when the latest drift_metrics crosses a threshold."""

import json
import os

import dagster as dg

from plml_assets.lib.drift import DriftThresholds, decide_retraining

DRIFT_KEY = dg.AssetKey("drift_metrics")
#: What a retraining run re-materializes: everything but the monitoring group itself, so the
#: features, studies, models, ensembles, leaderboard and registry all move to the new data.
RETRAIN_SELECTION = dg.AssetSelection.all() - dg.AssetSelection.groups("monitoring")


def retrain_run_config() -> dict:
    """Run config for the retraining runs this sensor launches, from ``PLML_RETRAIN_RUN_CONFIG`` (JSON,
    e.g. bigger study budgets, or the gate's tolerances on a small demo panel); empty by default."""
    raw = os.environ.get("PLML_RETRAIN_RUN_CONFIG", "").strip()
    if not raw:
        return {}
    try:
        config = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"PLML_RETRAIN_RUN_CONFIG is not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(config, dict):
        raise ValueError(f"PLML_RETRAIN_RUN_CONFIG must be a JSON object (a Dagster run config), got {type(config).__name__}")
    return config


def latest_drift_record(instance: dg.DagsterInstance):
    """The newest drift_metrics materialization record (storage id and event), or None."""
    records = instance.fetch_materializations(DRIFT_KEY, limit=1).records
    return records[0] if records else None


def _metadata_value(record, key: str):
    value = record.asset_materialization.metadata.get(key)
    return None if value is None else value.value


@dg.sensor(
    name="drift_retraining_sensor",
    target=RETRAIN_SELECTION,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reads each new materialization of drift_metrics once (the cursor is its storage id) and, when "
    "lib/drift.decide_retraining says so, requests a run that retrains and re-registers, with the reasons in the run tags.",
)
def drift_retraining_sensor(context: dg.SensorEvaluationContext):
    event = latest_drift_record(context.instance)
    if event is None:
        return dg.SkipReason("drift_metrics has never been materialized")
    if context.cursor and int(context.cursor) >= event.storage_id:
        return dg.SkipReason(f"no new drift_metrics since materialization {context.cursor}")
    context.update_cursor(str(event.storage_id))
    summary = _metadata_value(event, "summary") or {}
    thresholds = DriftThresholds(**(_metadata_value(event, "thresholds") or {}))
    if not summary:
        return dg.SkipReason(f"drift_metrics {event.storage_id} measured nothing (champion {_metadata_value(event, 'champion')})")
    decision = decide_retraining({k: (float("nan") if v is None else v) for k, v in summary.items()}, thresholds)
    if not decision.retrain:
        return dg.SkipReason(f"drift_metrics {event.storage_id}: {decision.severity}"
                             + (": " + "; ".join(decision.reasons) if decision.reasons else ", no threshold crossed"))
    context.log.info(f"retraining: {'; '.join(decision.reasons)}")
    return dg.RunRequest(run_key=f"drift-{event.storage_id}", run_config=retrain_run_config(),
                         tags={**decision.run_tags(), "plml/drift_event": str(event.storage_id)})
