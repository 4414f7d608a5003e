"""MlflowRegistry on a real SQLite MLflow store: champion aliases, rollback, failure modes, and
the fluent-API scope of ``tracking()``.

One store per module (creating an MLflow SQLite schema takes seconds); each test registers its
own model, three versions of one tiny logged pyfunc.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import mlflow
import mlflow.tracking._model_registry.utils as mlflow_registry_state
import mlflow.tracking._tracking_service.utils as mlflow_tracking_state
import pytest

from plml_assets.resources.mlflow_registry import CHAMPION, HISTORY_TAG, MlflowRegistry

URI_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


class Echo(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[str], params=None) -> list[str]:
        return model_input


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    """A SQLite tracking store with one logged model, PLML_HOME on a temp dir for the module."""
    root = tmp_path_factory.mktemp("mlflow_store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLML_HOME", str(root / "plml_home"))
        registry = MlflowRegistry(
            tracking_uri=f"sqlite:///{root}/mlflow.db", artifact_root=(root / "artifacts").as_uri()
        )
        with registry.tracking():
            with mlflow.start_run(experiment_id=registry.experiment_id()) as run:
                logged = mlflow.pyfunc.log_model(name="echo", python_model=Echo())
        yield {"root": str(root), "tracking_uri": registry.tracking_uri, "source": logged.model_uri, "run_id": run.info.run_id}


@pytest.fixture(autouse=True)
def isolated_mlflow_state(store, monkeypatch):
    """Keep PLML_HOME on the temp dir and put MLflow's process-wide URIs back after each test."""
    monkeypatch.setenv("PLML_HOME", str(Path(store["root"]) / "plml_home"))
    saved = (mlflow_tracking_state._tracking_uri, mlflow_registry_state._registry_uri)
    saved_env = {k: os.environ.get(k) for k in URI_ENV}
    yield
    mlflow_tracking_state._tracking_uri, mlflow_registry_state._registry_uri = saved
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def registry(store) -> MlflowRegistry:
    """A fresh registered model with versions 1, 2 and 3 and no alias."""
    reg = MlflowRegistry(tracking_uri=store["tracking_uri"], model_name=f"m_{uuid.uuid4().hex[:12]}")
    with reg.tracking() as client:  # resolving a logged model's source needs the fluent URI
        client.create_registered_model(reg.model_name)
        for _ in range(3):
            client.create_model_version(reg.model_name, store["source"], run_id=store["run_id"])
    assert [v.version for v in reg.versions()] == ["1", "2", "3"]
    return reg


# ---- promote / rollback ---------------------------------------------------------------------


def test_promote_points_champion_and_appends_to_history(registry):
    assert registry.champion_history() == []
    for version in (1, 2, 3):
        info = registry.promote(version, reason=f"gate passed for v{version}")
        assert info.version == str(version) and CHAMPION in info.aliases
        assert registry.alias_version(CHAMPION).version == str(version)
    assert registry.champion_history() == ["1", "2", "3"]
    registry.promote("3", reason="again")  # re-promoting the champion does not repeat it
    assert registry.champion_history() == ["1", "2", "3"]
    assert registry.version_info(2).tags["plml.promotion_reason"] == "gate passed for v2"
    assert registry.aliases() == {CHAMPION: "3"}
    tag = registry.client().get_registered_model(registry.model_name).tags[HISTORY_TAG]
    assert tag == "1,2,3"


def test_rollback_moves_champion_to_the_previous_one(registry):
    for version in (1, 2, 3):
        registry.promote(version, reason="test")
    assert registry.rollback() == ("3", "2")
    assert registry.alias_version(CHAMPION).version == "2"
    assert registry.champion_history() == ["1", "2"]
    rolled_back = registry.version_info(3).tags
    assert rolled_back["plml.rolled_back"] == "true" and rolled_back["plml.gate"] == "rolled_back"
    assert registry.rollback() == ("2", "1")
    assert registry.alias_version(CHAMPION).version == "1"


def test_rollback_skips_a_deleted_version(registry):
    for version in (1, 2, 3):
        registry.promote(version, reason="test")
    registry.client().delete_model_version(registry.model_name, "2")
    assert [v.version for v in registry.versions()] == ["1", "3"]
    assert registry.rollback() == ("3", "1")
    assert registry.alias_version(CHAMPION).version == "1"
    assert registry.champion_history() == ["1"]


def test_rollback_without_an_earlier_champion_raises(registry):
    with pytest.raises(LookupError, match="has no champion to roll back"):
        registry.rollback()
    registry.promote(1, reason="first")
    with pytest.raises(LookupError, match="champion v1 has no earlier champion"):
        registry.rollback()
    assert registry.alias_version(CHAMPION).version == "1"  # nothing moved


def test_rollback_when_every_earlier_champion_is_deleted_raises(registry):
    registry.promote(1, reason="test")
    registry.promote(3, reason="test")
    registry.client().delete_model_version(registry.model_name, "1")
    with pytest.raises(LookupError, match="earlier champions of v3 no longer exist"):
        registry.rollback()
    assert registry.alias_version(CHAMPION).version == "3"


# ---- alias_version: absent vs broken --------------------------------------------------------


def test_alias_version_is_none_for_an_unknown_alias_or_model(registry, store):
    assert registry.alias_version(CHAMPION) is None
    assert registry.alias_version("no_such_alias") is None
    unknown_model = MlflowRegistry(tracking_uri=store["tracking_uri"], model_name="never_registered")
    assert unknown_model.alias_version(CHAMPION) is None
    registry.client().set_registered_model_alias(registry.model_name, "challenger", "2")
    found = registry.alias_version("challenger")
    assert found.version == "2" and found.aliases == ["challenger"] and found.run_id == store["run_id"]


def _garbage_sqlite_file(root: Path) -> str:
    path = root / "garbage.db"
    path.write_text("this is not a SQLite database " * 100)
    return f"sqlite:///{path}"


def _sqlite_under_a_regular_file(root: Path) -> str:
    (root / "plain_file").write_text("x")
    return f"sqlite:///{root / 'plain_file' / 'mlflow.db'}"


@pytest.mark.parametrize("broken_uri", [_garbage_sqlite_file, _sqlite_under_a_regular_file])
def test_alias_version_raises_on_a_broken_store(tmp_path, broken_uri):
    registry = MlflowRegistry(tracking_uri=broken_uri(tmp_path), model_name="m")
    with pytest.raises(Exception) as raised:  # the driver's own error: anything but a silent None
        registry.alias_version(CHAMPION)
    assert not isinstance(raised.value, (AssertionError, LookupError))


def test_alias_version_raises_on_a_misconfigured_store_uri():
    registry = MlflowRegistry(tracking_uri="postgress://plml@127.0.0.1:5432/mlflow", model_name="m")
    with pytest.raises(Exception):
        registry.alias_version(CHAMPION)


# ---- tracking(): scoped fluent URIs ---------------------------------------------------------


@pytest.mark.parametrize("before", ["unset", "set"])
def test_tracking_restores_the_uri_environment_exactly(registry, monkeypatch, tmp_path, before):
    if before == "set":
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path}/elsewhere.db")
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path}/registry.db")
    else:
        for key in URI_ENV:
            monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(mlflow_tracking_state, "_tracking_uri", None)
    monkeypatch.setattr(mlflow_registry_state, "_registry_uri", None)
    env_before = {k: os.environ.get(k) for k in URI_ENV}
    assert mlflow.is_tracking_uri_set() is (before == "set")

    with registry.tracking() as client:
        assert mlflow.get_tracking_uri() == registry.tracking_uri
        assert mlflow.get_registry_uri() == registry.tracking_uri
        assert client.get_registered_model(registry.model_name).name == registry.model_name

    assert {k: os.environ.get(k) for k in URI_ENV} == env_before
    assert mlflow.is_tracking_uri_set() is (before == "set")
    if before == "set":
        assert mlflow.get_tracking_uri() == env_before["MLFLOW_TRACKING_URI"]


def test_tracking_restores_the_environment_when_the_block_raises(registry, monkeypatch):
    for key in URI_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(mlflow_tracking_state, "_tracking_uri", None)
    with pytest.raises(RuntimeError, match="boom"):
        with registry.tracking():
            raise RuntimeError("boom")
    assert all(k not in os.environ for k in URI_ENV)
    assert not mlflow.is_tracking_uri_set()


@pytest.mark.parametrize("before", ["nothing_set", "registry_env_set"])
def test_tracking_restores_mlflows_resolved_uris(registry, monkeypatch, tmp_path, before):
    for key in URI_ENV:
        monkeypatch.delenv(key, raising=False)
    if before == "registry_env_set":
        monkeypatch.setenv("MLFLOW_REGISTRY_URI", f"sqlite:///{tmp_path}/registry.db")
    monkeypatch.setattr(mlflow_tracking_state, "_tracking_uri", None)
    monkeypatch.setattr(mlflow_registry_state, "_registry_uri", None)
    uris_before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    assert uris_before[0]  # MLflow's default, never empty

    with registry.tracking():
        pass

    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == uris_before


def test_rollback_job_restores_the_previous_champion_and_fails_clearly_without_one(registry):
    from plml_assets.defs.registry.jobs import rollback_champion

    registry.promote("1", reason="test")
    registry.promote("2", reason="test")
    result = rollback_champion.execute_in_process(resources={"mlflow_registry": registry})
    assert result.success
    assert result.output_for_node("restore_previous_champion") == {"rolled_back": "2", "champion": "1"}
    assert registry.alias_version(CHAMPION).version == "1"
    again = rollback_champion.execute_in_process(resources={"mlflow_registry": registry}, raise_on_error=False)
    assert not again.success
    failure = next(e for e in again.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no earlier champion to roll back to" in str(failure.event_specific_data.error)
    assert registry.alias_version(CHAMPION).version == "1"


def test_training_run_logs_mlflows_system_metrics_while_it_is_open(registry):
    """Issue 14: a training run carries MLflow's own system metrics (psutil-backed CPU and memory; GPU
    where NVML sees one), sampled every ``system_metrics_interval_s`` while the block runs, and the
    sampling settings do not leak out of the block."""
    import threading
    import time

    fast = registry.model_copy(update={"system_metrics_interval_s": 0.5})
    before = {k: os.environ.get(k) for k in ("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING")}
    with fast.training_run("fit", {"plml.kind": "test"}) as run:
        assert [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]  # MLflow's sampler runs
        deadline = time.perf_counter() + 2.5
        while time.perf_counter() < deadline:  # busy, like a fit
            sum(i * i for i in range(10_000))
        run_id = run.info.run_id
    assert {k: os.environ.get(k) for k in before} == before
    got = registry.client().get_run(run_id)
    assert got.info.status == "FINISHED" and got.data.tags["plml.kind"] == "test"
    history = registry.client().get_metric_history(run_id, "system/cpu_utilization_percentage")
    assert len(history) >= 2 and all(0 <= m.value <= 100 * os.cpu_count() for m in history)
    assert registry.client().get_metric_history(run_id, "system/system_memory_usage_megabytes")[-1].value > 0
    # Switched off: no sampler, no system metrics.
    off = registry.model_copy(update={"system_metrics_interval_s": 0.0})
    with off.training_run("fit-off", {}) as run:
        assert not [t for t in threading.enumerate() if t.name == "SystemMetricsMonitor"]  # no sampler started
    assert not [k for k in registry.client().get_run(run.info.run_id).data.metrics if k.startswith("system/")]


def test_a_failed_fit_leaves_its_training_run_failed(registry):
    with pytest.raises(RuntimeError, match="fit blew up"):
        with registry.training_run("fit-fails", {}) as run:
            raise RuntimeError("fit blew up")
    assert registry.client().get_run(run.info.run_id).info.status == "FAILED"


def test_a_redone_fit_marks_the_killed_fits_leftover_run_killed(registry):
    """A fit whose process was killed leaves its MLflow run RUNNING (nothing ended it; a run created and
    never terminated is exactly that state). The fit that redoes it (a step retry in the same Dagster run,
    or a re-execution naming it as parent/root) marks it KILLED; runs of other assets or other Dagster
    runs, which may be alive, are left alone."""
    client = registry.client()
    exp = registry.experiment_id()

    def leftover(asset: str, dagster_run: str) -> str:
        return client.create_run(exp, tags={"dagster.asset": asset, "dagster.run_id": dagster_run}).info.run_id

    killed_same_run = leftover("xgboost_model", "run-a")
    killed_parent = leftover("xgboost_model", "run-root")
    other_asset = leftover("lightgbm_model", "run-a")
    other_run = leftover("xgboost_model", "run-elsewhere")
    tags = {"dagster.asset": "xgboost_model", "dagster.run_id": "run-b"}
    with registry.training_run("redo", tags, supersedes=("run-b", "run-a", "run-root")) as run:
        assert client.get_run(run.info.run_id).info.status == "RUNNING"
    status = {r: client.get_run(r).info.status for r in (killed_same_run, killed_parent, other_asset, other_run)}
    assert status == {killed_same_run: "KILLED", killed_parent: "KILLED", other_asset: "RUNNING", other_run: "RUNNING"}
    assert client.get_run(run.info.run_id).info.status == "FINISHED"


def test_training_run_restores_sampling_settings_a_user_had_set(registry, monkeypatch):
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "7")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "3")
    fast = registry.model_copy(update={"system_metrics_interval_s": 0.5})
    with fast.training_run("fit", {}):
        assert os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"] == "0.5"
    assert (os.environ["MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL"], os.environ["MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING"]) == ("7", "3")


def _first_use(uri: str, optuna_url: str, barrier, results) -> None:
    from plml_assets.resources.optuna_storage import OptunaStorage

    barrier.wait()  # every process reaches its first use of the new stores at the same moment
    try:
        MlflowRegistry(tracking_uri=uri, experiment_name="race").experiment_id()
        OptunaStorage(url=optuna_url).storage().get_all_studies()
        results.put("ok")
    except Exception as exc:  # reported to the test, which names it
        results.put(f"{type(exc).__name__}: {exc}"[:300])


def test_concurrent_first_use_of_new_sqlite_stores(tmp_path):
    """Step processes that start together on a fresh PLML_HOME (``plml run --workers 2``) all create
    the MLflow and Optuna schemas on first use; unguarded, one of them failed with "table experiments
    already exists". With the schema lock each opens the stores. Real processes, real SQLite."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    n = 4
    barrier, results = ctx.Barrier(n), ctx.Queue()
    uri, optuna_url = f"sqlite:///{tmp_path}/mlflow.db", f"sqlite:///{tmp_path}/optuna.db"
    procs = [ctx.Process(target=_first_use, args=(uri, optuna_url, barrier, results)) for _ in range(n)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=180) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    assert outcomes == ["ok"] * n, outcomes
    assert MlflowRegistry(tracking_uri=uri, experiment_name="race").client().get_experiment_by_name("race") is not None
