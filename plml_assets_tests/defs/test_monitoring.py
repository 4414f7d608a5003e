"""The drift sensor on a real Dagster instance: it reads each drift_metrics materialization once and
requests a retraining run only when lib/monitoring/drift.decide_retraining says so; schedules and automation."""

from __future__ import annotations

import json

import dagster as dg
import pytest

from plml_assets.definitions import defs
from plml_assets.defs.monitoring.sensors import RETRAIN_SELECTION, drift_retraining_sensor, latest_drift_record
from plml_assets.lib.monitoring.drift import DriftThresholds

THRESHOLDS = DriftThresholds().__dict__
CALM = {"feature_drift_share": 0.05, "max_feature_psi": 0.12, "top_drifted": ["vol_20d"], "prediction_psi": 0.02,
        "realized_rank_ic": 0.03, "decay": 0.0, "enough_dates": True, "age_days": 300, "n_features": 20, "n_drifted": 1}
DRIFTED = {**CALM, "feature_drift_share": 0.6, "max_feature_psi": 1.4, "n_drifted": 12, "top_drifted": ["vol_20d", "ret_20d"]}


def _report(instance, summary: dict) -> int:
    instance.report_runless_asset_event(dg.AssetMaterialization(
        "drift_metrics", metadata={"summary": dg.MetadataValue.json(summary), "thresholds": dg.MetadataValue.json(THRESHOLDS),
                                   "champion": "v1"}))
    return latest_drift_record(instance).storage_id


def _tick(instance, cursor=None):
    context = dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs)
    return drift_retraining_sensor(context), context.cursor


def test_no_drift_metrics_yet_is_a_skip(instance):
    result, _ = _tick(instance)
    assert isinstance(result, dg.SkipReason) and "never been materialized" in result.skip_message


def test_drift_requests_one_retraining_run_with_the_reason_then_waits_for_new_metrics(instance):
    storage_id = _report(instance, DRIFTED)
    request, cursor = _tick(instance)
    assert isinstance(request, dg.RunRequest)
    assert request.run_key == f"drift-{storage_id}" and json.loads(cursor)["drift"] == storage_id
    assert request.tags["plml/trigger"] == "drift" and "feature_drift" in request.tags["plml/causes"]
    assert "12 of 20 features" in request.tags["plml/reason"] and all(isinstance(v, str) for v in request.tags.values())
    again, _ = _tick(instance, cursor)  # the same materialization is not acted on twice
    assert isinstance(again, dg.SkipReason) and "no new drift_metrics" in again.skip_message
    _report(instance, CALM)
    calm, _ = _tick(instance, cursor)
    assert isinstance(calm, dg.SkipReason) and "drift_metrics" in calm.skip_message


def _prices(instance, fingerprint: str) -> None:
    instance.report_runless_asset_event(dg.AssetMaterialization("market_prices", metadata={"fingerprint": fingerprint}))


def test_one_retrain_per_price_version_and_never_two_at_once(instance):
    """A retrain that fails or is refused must not start another on the same prices (drift persists),
    a refresh that brought no new prices is the same version, and no retrain starts while one (drift
    or weekly) runs."""
    _prices(instance, "v1")
    _report(instance, DRIFTED)
    first, cursor = _tick(instance)
    assert isinstance(first, dg.RunRequest) and first.tags["plml/prices"] == "v1"
    _report(instance, DRIFTED)  # the same prices, still drifted (e.g. the challenger was refused)
    again, cursor = _tick(instance, cursor)
    assert isinstance(again, dg.SkipReason) and "already ran on these prices" in again.skip_message
    _prices(instance, "v1")  # the weekday refresh ran, but no new prices came
    _report(instance, DRIFTED)
    same, cursor = _tick(instance, cursor)
    assert isinstance(same, dg.SkipReason) and "already ran on these prices" in same.skip_message
    _prices(instance, "v2")  # new prices arrive
    _report(instance, DRIFTED)
    for tags in ({"plml/trigger": "drift"}, {"plml/kind": "full_retrain"}):
        run = instance.create_run_for_job(dg.GraphDefinition("busy").to_job(), tags=tags)
        busy, cursor = _tick(instance, cursor)
        assert isinstance(busy, dg.SkipReason) and f"retraining run {run.run_id} is still in progress" in busy.skip_message
        instance.report_run_failed(run)
    retried, _ = _tick(instance, cursor)
    assert isinstance(retried, dg.RunRequest) and retried.tags["plml/prices"] == "v2"


@pytest.mark.parametrize(("change", "cause", "mode"), [
    ({"prediction_psi": 0.6}, "prediction", "full"),
    ({"realized_rank_ic": -0.04, "decay": 0.07}, "performance", "incremental"),
    ({"feature_drift_share": 0.6, "realized_rank_ic": -0.04, "decay": 0.07}, "feature_drift", "full"),
])
def test_each_kind_of_drift_triggers_with_the_policy_mode(instance, change, cause, mode):
    """Staleness or a performance slip is answered by updating the champion; drifted inputs or
    scores by a full retrain."""
    _report(instance, {**CALM, **change})
    request, _ = _tick(instance)
    assert isinstance(request, dg.RunRequest), request
    assert cause in request.tags["plml/causes"] and request.tags["plml/mode"] == mode
    assert {request.run_config["ops"][f"{f}_training"]["config"]["mode"] for f in ("xgboost", "lightgbm", "lstm", "gru")} == {mode}


def test_retraining_targets_everything_but_monitoring_and_schedules_have_a_timezone():
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in RETRAIN_SELECTION.resolve(graph)}
    assert {"feature_selection", "xgboost_study", "ensemble_model", "model_leaderboard", "registered_model", "champion_model"} <= keys
    assert not keys & {"drift_metrics", "market_prices", "labels", "features"}  # a retrain cannot re-trigger itself
    repo = defs.get_repository_def()
    schedules = {s.name: s for s in repo.schedule_defs}
    assert schedules["data_refresh"].cron_schedule == "30 18 * * 1-5"
    assert schedules["weekly_retrain"].cron_schedule == "0 6 * * 6"
    assert {s.execution_timezone for s in schedules.values()} == {"America/New_York"}
    sensors = {s.name: s for s in repo.sensor_defs}
    assert sensors["plml_automation"].default_status == dg.DefaultSensorStatus.RUNNING
    assert sensors["drift_retraining_sensor"].default_status == dg.DefaultSensorStatus.RUNNING
    automated = {k.to_user_string() for k, node in ((n.key, n) for n in graph.asset_nodes) if node.automation_condition is not None}
    assert automated == {"labels", "base_features", "features", "feature_recipes", "drift_metrics"}


def test_retraining_runs_carry_the_configured_run_config(instance, monkeypatch):
    config = {"ops": {"xgboost_study": {"config": {"n_trials": 12}}, "gru_training": {"config": {"mode": "full", "device": "cpu"}}}}
    monkeypatch.setenv("PLML_RETRAIN_RUN_CONFIG", json.dumps(config))
    _report(instance, DRIFTED)
    request, _ = _tick(instance)
    assert request.run_config["ops"]["xgboost_study"] == config["ops"]["xgboost_study"]
    assert request.run_config["ops"]["gru_training"] == {"config": {"mode": "full", "device": "cpu"}}  # the env wins
    assert request.run_config["ops"]["xgboost_training"] == {"config": {"mode": "full"}}  # feature drift: full retrain
    monkeypatch.setenv("PLML_RETRAIN_RUN_CONFIG", "[1, 2]")
    _report(instance, DRIFTED)
    with pytest.raises(ValueError, match="must be a JSON object"):
        _tick(instance)


def test_the_weekly_retrain_and_the_drift_sensor_fired_together_start_one_retrain(instance):
    """Issue 18 item 4: both fire at once. Whichever launches first, the other skips while that run is
    queued or running, naming it; and the run coordinator of both instance files admits one run
    tagged plml/trigger at a time, so even runs submitted together are serialized."""
    import yaml

    from plml_assets.defs.monitoring.schedules import weekly_retrain_schedule
    from plml_assets_tests.conftest import REPO

    _prices(instance, "v1")
    _report(instance, DRIFTED)
    schedule_context = dg.build_schedule_context(instance=instance, scheduled_execution_time=None)
    # The schedule first: its run is queued; the sensor's tick then skips.
    weekly = weekly_retrain_schedule.evaluate_tick(schedule_context).run_requests
    assert len(weekly) == 1 and weekly[0].tags["plml/kind"] == "full_retrain"
    run = instance.create_run_for_job(dg.GraphDefinition("weekly").to_job(), tags=weekly[0].tags)
    busy, cursor = _tick(instance)
    assert isinstance(busy, dg.SkipReason) and f"retraining run {run.run_id} is still in progress" in busy.skip_message
    instance.report_run_failed(run)
    # The sensor first: its retrain is queued; the schedule's tick then skips, naming it.
    request, cursor = _tick(instance, cursor)
    assert isinstance(request, dg.RunRequest) and request.tags["plml/trigger"] == "drift"
    drift_run = instance.create_run_for_job(dg.GraphDefinition("drift").to_job(), tags=request.tags)
    skipped = weekly_retrain_schedule.evaluate_tick(schedule_context)
    assert not skipped.run_requests and f"retraining run {drift_run.run_id} (drift) is still in progress" in skipped.skip_message
    instance.report_run_failed(drift_run)
    assert len(weekly_retrain_schedule.evaluate_tick(schedule_context).run_requests) == 1  # free again
    for path in (REPO / "dagster.yaml", REPO / "deploy" / "dagster-postgres.yaml"):
        limits = yaml.safe_load(path.read_text())["run_coordinator"]["config"]["tag_concurrency_limits"]
        assert {"key": "plml/trigger", "limit": 1} in limits, path
