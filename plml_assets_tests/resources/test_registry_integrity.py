"""Issue 18 items 2 and 4 on real MLflow stores (SQLite; PostgreSQL where it answers): the artefacts
recorded at registration are the ones promoted and served, and alias moves from several processes at
once lose no history entry."""

from __future__ import annotations

import multiprocessing
import os
import time
import uuid
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from plml_assets.lib.registry.integrity import CHECKSUM_TAG, MANIFEST_TAG, ArtifactIntegrityError
from plml_assets.resources.mlflow_registry import CHAMPION, ChampionMoved, MlflowRegistry
from plml_assets_tests.conftest import fresh_postgres_database


class Constant(mlflow.pyfunc.PythonModel):
    def __init__(self, value: float):
        self.value = value

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"score": [self.value] * len(model_input)})


def _registry_with_versions(tracking_uri: str, artifact_root: Path, n: int, checksums: bool = True) -> MlflowRegistry:
    """A fresh model with versions 1..n, each its own logged pyfunc (its own artefact files)."""
    reg = MlflowRegistry(tracking_uri=tracking_uri, artifact_root=artifact_root.as_uri(), model_name=f"m_{uuid.uuid4().hex[:10]}",
                         experiment_name=f"e_{uuid.uuid4().hex[:8]}", system_metrics_interval_s=0)
    with reg.tracking() as client:
        client.create_registered_model(reg.model_name)
        for k in range(n):
            with mlflow.start_run(experiment_id=reg.experiment_id()) as run:
                logged = mlflow.pyfunc.log_model(name="model", python_model=Constant(float(k + 1)))
            mv = client.create_model_version(reg.model_name, logged.model_uri, run_id=run.info.run_id)
            if checksums:
                reg.record_checksum(str(mv.version), reg.version_manifest(str(mv.version)))
    return reg


def _artefact_folder(reg: MlflowRegistry, version: str) -> Path:
    """Where the version's files lie on disk (the store's local artefact root)."""
    source = reg.client().get_model_version_download_uri(reg.model_name, version)
    path = Path(source.removeprefix("file://"))
    assert path.is_dir(), source
    return path


@pytest.fixture
def sqlite_store(tmp_path, monkeypatch):
    monkeypatch.setenv("PLML_HOME", str(tmp_path / "home"))
    return f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path / "artifacts"


def test_a_registered_versions_artefacts_are_verified_before_serving_promotion_and_rollback(sqlite_store):
    reg = _registry_with_versions(*sqlite_store, n=3)
    info = reg.version_info("2")
    assert len(info.tags[CHECKSUM_TAG]) == 64 and "python_model.pkl" in info.tags[MANIFEST_TAG]
    # Untouched: served and promoted.
    model = reg.load_model("2")
    assert model.predict(pd.DataFrame({"x": [0, 1]}))["score"].tolist() == [2.0, 2.0]
    reg.promote("1", reason="first")
    reg.promote("2", reason="second")
    assert reg.load_model(CHAMPION).predict(pd.DataFrame({"x": [0]}))["score"].tolist() == [2.0]

    # A file of v3 changed on disk after registration: v3 is neither served nor promoted, and the
    # error names the file; the champion does not move.
    pickle = _artefact_folder(reg, "3") / "python_model.pkl"
    pickle.write_bytes(pickle.read_bytes() + b"\0")
    for attempt in (lambda: reg.load_model("3"), lambda: reg.promote("3", reason="tampered")):
        with pytest.raises(ArtifactIntegrityError, match=r"v3: artefacts differ from those recorded at registration.*changed: python_model\.pkl"):
            attempt()
    assert reg.alias_version(CHAMPION).version == "2" and reg.champion_history() == ["1", "2"]

    # v1 (the champion before) loses a file: a rollback to it refuses, naming the missing file.
    (_artefact_folder(reg, "1") / "MLmodel").unlink()
    with pytest.raises(ArtifactIntegrityError, match=r"v1: .*missing: MLmodel"):
        reg.rollback()
    assert reg.alias_version(CHAMPION).version == "2" and reg.champion_history() == ["1", "2"]
    # An added file is named too.
    (_artefact_folder(reg, "2") / "extra.bin").write_bytes(b"x")
    with pytest.raises(ArtifactIntegrityError, match=r"added: extra\.bin"):
        reg.load_model(CHAMPION)


def test_promotion_is_a_compare_and_set_on_the_champion(sqlite_store):
    reg = _registry_with_versions(*sqlite_store, n=3)
    reg.promote("1", reason="first", expect_champion="none")
    with pytest.raises(ChampionMoved, match=r"moved to 1 \(expected none\)"):
        reg.promote("2", reason="judged against no champion", expect_champion="none")
    reg.promote("3", reason="judged against v1", expect_champion="1")
    assert reg.alias_version(CHAMPION).version == "3" and reg.champion_history() == ["1", "3"]


def test_a_version_registered_without_a_checksum_still_loads(sqlite_store):
    """Versions registered by hand (or before checksums) have nothing to compare with: they load and
    promote as before, and their tags say that no checksum was recorded."""
    reg = _registry_with_versions(*sqlite_store, n=1, checksums=False)
    assert CHECKSUM_TAG not in reg.version_info("1").tags
    assert reg.load_model("1").predict(pd.DataFrame({"x": [0]}))["score"].tolist() == [1.0]
    assert reg.promote("1", reason="by hand").version == "1"


# ---- several processes moving the champion at once -------------------------------------------
READ_TO_WRITE_S = 0.15  # widens the read-modify-write window of the history tag, so that a race shows


def _mover(tracking_uri: str, model_name: str, plml_home: str, versions: list[str], rollbacks: int, out, start) -> None:
    os.environ["PLML_HOME"] = plml_home
    reg = MlflowRegistry(tracking_uri=tracking_uri, model_name=model_name, system_metrics_interval_s=0)
    original = MlflowRegistry.champion_history

    def slow_history(self):
        history = original(self)
        time.sleep(READ_TO_WRITE_S)
        return history

    MlflowRegistry.champion_history = slow_history
    reg.alias_version(CHAMPION)  # the store opened: the processes then start together
    start.wait(timeout=120)
    done = 0
    try:
        for k, version in enumerate(versions):
            reg.promote(version, reason=f"mover {os.getpid()} #{k}")
            done += 1
            if k < rollbacks:
                try:
                    reg.rollback()
                except LookupError:
                    pass
        out.put(("ok", done))
    except Exception as exc:  # reported to the test, which fails with it
        out.put(("error", f"{type(exc).__name__}: {exc}"))


def _race(uri: str, model_name: str, home: str, plan: list[tuple[list[str], int]]) -> list[int]:
    ctx = multiprocessing.get_context("spawn")  # no MLflow engine or pooled connection inherited from this process
    out, start = ctx.Queue(), ctx.Barrier(len(plan))
    procs = [ctx.Process(target=_mover, args=(uri, model_name, home, versions, rollbacks, out, start)) for versions, rollbacks in plan]
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=300) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    assert all(status == "ok" for status, _ in results), results
    return [done for _, done in results]


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_concurrent_promotions_and_rollbacks_lose_no_history_entry(backend, tmp_path, monkeypatch):
    """Processes moving the champion at once, each with a slowed read of the history tag between
    reading and writing it (where an unguarded read-modify-write loses an entry). First three
    processes promote disjoint versions in turn: every promotion is in the history, in each process's
    order. Then one promotes while another rolls back: the champion alias is always the history's
    last entry and no version follows itself."""
    monkeypatch.setenv("PLML_HOME", str(tmp_path / "home"))
    with fresh_postgres_database() as pg:
        if backend == "postgresql":
            if pg is None:
                pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
            uri = pg
        else:
            uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
        reg = _registry_with_versions(uri, tmp_path / "artifacts", n=6)
        plan = [(["1", "2", "1"], 0), (["3", "4", "3"], 0), (["5", "6", "5"], 0)]
        assert _race(uri, reg.model_name, str(tmp_path / "home"), plan) == [3, 3, 3]
        history = reg.champion_history()
        # (Without the lock, the same three processes kept 5 of 12 entries in a trial run.)
        assert len(history) == 9, history
        for versions, _ in plan:
            assert [v for v in history if v in set(versions)] == versions, history
        assert reg.alias_version(CHAMPION).version == history[-1]

        _race(uri, reg.model_name, str(tmp_path / "home"), [(["2", "1"], 0), (["4"], 1)])
        history = reg.champion_history()
        assert reg.alias_version(CHAMPION).version == history[-1], history
        assert all(a != b for a, b in zip(history, history[1:])), history
