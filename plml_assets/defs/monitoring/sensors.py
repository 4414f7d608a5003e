"""The drift sensor: a retraining run when the latest drift_metrics crosses a threshold.

One retraining run per price version at most: a retrain that fails, or whose challenger the gate
refuses, must not start another one on the same data (drift persists until new prices or a new
champion change it), and no second run starts while one is in progress.
"""

import json
import os

import dagster as dg

from plml_assets.defs.shared import FAMILIES, json_object
from plml_assets.lib.monitoring.drift import DriftThresholds, decide_retraining, retrain_mode

DRIFT_KEY = dg.AssetKey("drift_metrics")
PRICES_KEY = dg.AssetKey("market_prices")
TRIGGER_TAG = "plml/trigger"
#: What a retraining run re-materializes: the training side (selection, CV, studies, models,
#: ensembles, leaderboard, registry), not the data assets, which the refresh and the automation keep
#: current; so a retrain leaves drift_metrics' inputs untouched and cannot re-trigger itself.
RETRAIN_SELECTION = dg.AssetSelection.all() - dg.AssetSelection.groups("monitoring") - dg.AssetSelection.groups("data")
ACTIVE = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def active_retrain(instance: dg.DagsterInstance) -> dg.DagsterRun | None:
    """A retraining run (drift or weekly) that is queued or running, or None."""
    for tags in ({TRIGGER_TAG: "drift"}, {"plml/kind": "full_retrain"}):
        records = instance.get_run_records(dg.RunsFilter(tags=tags, statuses=ACTIVE), limit=1)
        if records:
            return records[0].dagster_run
    return None


def retrain_run_config() -> dict:
    """Run config for the retraining runs this sensor launches, from ``PLML_RETRAIN_RUN_CONFIG`` (JSON,
    e.g. bigger study budgets, or the gate's tolerances on a small demo panel); empty by default."""
    return json_object(os.environ.get("PLML_RETRAIN_RUN_CONFIG", ""), "PLML_RETRAIN_RUN_CONFIG")


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for key, value in extra.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def retrain_request_config(mode: str) -> dict:
    """The policy's mode for every family's model step, under ``PLML_RETRAIN_RUN_CONFIG`` (which wins)."""
    policy = {"ops": {f"{family}_training": {"config": {"mode": mode}} for family in FAMILIES}}
    return _merge(policy, retrain_run_config())


def latest_record(instance: dg.DagsterInstance, key: dg.AssetKey = DRIFT_KEY):
    """The newest materialization record of ``key`` (storage id and event), or None."""
    records = instance.fetch_materializations(key, limit=1).records
    return records[0] if records else None


latest_drift_record = latest_record


def _metadata_value(record, key: str):
    value = record.asset_materialization.metadata.get(key)
    return None if value is None else value.value


def _cursor(raw: str | None) -> dict:
    if not raw:
        return {}
    if raw.isdigit():  # the first cursor format: the drift storage id alone
        return {"drift": int(raw)}
    return json.loads(raw)


@dg.sensor(
    name="drift_retraining_sensor",
    target=RETRAIN_SELECTION,
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Reads each new materialization of drift_metrics once and, when lib/monitoring/drift.decide_retraining says so, "
    "requests a run that retrains and re-registers, with the reasons in the run tags; at most one retrain per price "
    "version, never two at once.",
)
def drift_retraining_sensor(context: dg.SensorEvaluationContext):
    event = latest_record(context.instance)
    if event is None:
        return dg.SkipReason("drift_metrics has never been materialized")
    cursor = _cursor(context.cursor)
    if cursor.get("drift", -1) >= event.storage_id:
        return dg.SkipReason(f"no new drift_metrics since materialization {cursor['drift']}")
    active = active_retrain(context.instance)
    if active is not None:
        return dg.SkipReason(f"retraining run {active.run_id} is still in progress; drift_metrics "
                             f"{event.storage_id} will be read when it ends")
    prices = latest_record(context.instance, PRICES_KEY)
    # The price version is the panel's content fingerprint: a refresh that brought no new prices is
    # the same version (the storage id when the fingerprint is not recorded).
    fingerprint = _metadata_value(prices, "fingerprint") if prices is not None else None
    data_version = str(fingerprint) if fingerprint else (prices.storage_id if prices is not None else 0)
    context.update_cursor(json.dumps({**cursor, "drift": event.storage_id}))
    summary = _metadata_value(event, "summary") or {}
    thresholds = DriftThresholds(**(_metadata_value(event, "thresholds") or {}))
    if not summary:
        return dg.SkipReason(f"drift_metrics {event.storage_id} measured nothing (champion {_metadata_value(event, 'champion')})")
    decision = decide_retraining({k: (float("nan") if v is None else v) for k, v in summary.items()}, thresholds)
    if not decision.retrain:
        return dg.SkipReason(f"drift_metrics {event.storage_id}: {decision.severity}"
                             + (": " + "; ".join(decision.reasons) if decision.reasons else ", no threshold crossed"))
    if cursor.get("retrained_data") == data_version:
        return dg.SkipReason(f"drift persists ({'; '.join(decision.reasons)}) but a retrain already ran on these prices "
                             f"(market_prices {data_version}); the next one waits for new prices")
    context.update_cursor(json.dumps({"drift": event.storage_id, "retrained_data": data_version}))
    mode = retrain_mode(decision)
    context.log.info(f"retraining ({mode}): {'; '.join(decision.reasons)}")
    return dg.RunRequest(run_key=f"drift-{event.storage_id}", run_config=retrain_request_config(mode),
                         tags={**decision.run_tags(), "plml/mode": mode, "plml/drift_event": str(event.storage_id),
                               "plml/prices": str(data_version)})
