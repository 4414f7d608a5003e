"""The promotion webhook through Dagster: champion_model and the rollback_champion job notify it,
and promotion_webhook_sensor (registered, running by default) skips when no URL or nothing is
pending, and delivers what a promotion left in the outbox once the webhook answers again."""

from __future__ import annotations

import dagster as dg
import pytest

from plml_assets.definitions import defs
from plml_assets.defs.registry.assets import champion_model
from plml_assets.defs.registry.jobs import rollback_champion
from plml_assets.defs.registry.sensors import promotion_webhook_sensor
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets_tests.conftest import free_port
from plml_assets_tests.resources.test_promotion_webhook import Hook, registry, store  # noqa: F401  (the module's store fixture)


def _tick(reg: MlflowRegistry, instance) -> dg.SkipReason:
    context = dg.build_sensor_context(instance=instance, resources={"mlflow_registry": reg})
    result = promotion_webhook_sensor(context)
    assert isinstance(result, dg.SkipReason)  # it never launches a run
    return result


def test_the_sensor_is_registered_and_running_by_default():
    sensor = defs.get_sensor_def("promotion_webhook_sensor")
    assert sensor.default_status == dg.DefaultSensorStatus.RUNNING and sensor.minimum_interval_seconds == 30


def test_the_sensor_delivers_what_a_promotion_left_pending(store, tmp_path, monkeypatch):  # noqa: F811
    home = tmp_path / "home"
    monkeypatch.setenv("PLML_HOME", str(home))
    for var in ("PLML_PROMOTION_WEBHOOK_URL", "PLML_PROMOTION_WEBHOOK_URL_FILE"):
        monkeypatch.delenv(var, raising=False)
    with dg.instance_for_test() as instance:
        assert "no promotion webhook configured" in _tick(registry(store), instance).skip_message
        assert not (home / "promotion_outbox.db").exists()

        port = free_port()
        reg = registry(store, f"http://127.0.0.1:{port}/hook?token=tok-abc-123456", promotion_webhook_tries=2,
                       promotion_webhook_backoff_s=0.01, promotion_webhook_timeout_s=1.0)
        reg.promote("1", reason="first")  # the webhook is down: pending
        reg.promote("2", reason="second")
        down = _tick(reg, instance)
        assert "0 delivered, 2 pending" in down.skip_message and "ConnectionRefusedError" in down.skip_message
        assert "tok-abc-123456" not in down.skip_message
        server = Hook()
        server.start(port)
        try:
            up = _tick(reg, instance)
            assert "delivered 2 champion-move notice(s) to http://127.0.0.1:" in up.skip_message and "token=***" in up.skip_message
            assert [(b["version"], b["previous_version"]) for b in server.bodies()] == [("1", None), ("2", "1")]
            assert "no champion-move notice pending" in _tick(reg, instance).skip_message
            assert len(server.requests) == 2
        finally:
            server.stop()


def test_champion_model_and_the_rollback_job_notify_the_webhook(store, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.setenv("PLML_HOME", str(tmp_path / "home"))
    server = Hook()
    port = server.start()
    try:
        reg = registry(store, f"http://127.0.0.1:{port}/hook", promotion_webhook_tries=2, promotion_webhook_backoff_s=0.01)
        reg.promote("1", reason="first champion")
        client = reg.client()
        client.set_registered_model_alias(reg.model_name, "challenger", "2")
        for key, value in (("plml.gate", "promote"), ("plml.gate_champion", "1"), ("plml.gate_detail", "promote: v2 beats v1")):
            client.set_model_version_tag(reg.model_name, "2", key, value)
        with dg.instance_for_test() as instance:
            result = dg.materialize([champion_model], resources={"mlflow_registry": reg}, instance=instance)
            (materialization,) = result.asset_materializations_for_node("champion_model")
            assert materialization.metadata["promotion_notice"].value == f"delivered: none pending for http://127.0.0.1:{port}/hook"
            run = rollback_champion.execute_in_process(resources={"mlflow_registry": reg}, instance=instance)
        assert [(b["event"], b["version"], b["previous_version"]) for b in server.bodies()] == [
            ("promotion", "1", None), ("promotion", "2", "1"), ("rollback", "1", "2")]
        assert server.bodies()[1]["reasons"] == ["promote: v2 beats v1"]
        assert server.bodies()[2]["reasons"] == [f"rollback by the rollback_champion job (run {run.run_id})"]
    finally:
        server.stop()


@pytest.fixture(autouse=True)
def _no_token(monkeypatch):
    monkeypatch.delenv("PLML_WEBHOOK_TOKEN", raising=False)
