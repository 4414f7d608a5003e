"""MLflow as it runs on a cluster (deploy/k8s/mlflow.yaml): a real `mlflow server` process with a
PostgreSQL backend store (a fresh database on the local PostgreSQL) and proxied artifacts, on a free
loopback port. plml's registry contract over HTTP: register, promote, promote again, roll back, and
load the champion by alias through the server. Skips when no PostgreSQL answers (CI has one)."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import pytest

from plml_assets.resources.mlflow_registry import CHAMPION, MlflowRegistry
from plml_assets_tests.conftest import fresh_postgres_database, mlflow_server

pytestmark = pytest.mark.e2e


class Doubler(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input: list[float], params=None) -> list[float]:
        return [2 * x for x in model_input]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with fresh_postgres_database() as pg:
        if pg is None:
            pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
        root = tmp_path_factory.mktemp("mlflow_server")
        with mlflow_server(pg, root, "--artifacts-destination", (root / "artifacts").as_uri(), "--serve-artifacts") as url:
            yield {"url": url, "pg": pg, "root": root}


def test_registration_promotion_and_rollback_through_a_server_on_postgresql(server, monkeypatch, tmp_path):
    monkeypatch.setenv("PLML_HOME", str(tmp_path / "plml_home"))
    registry = MlflowRegistry(tracking_uri=server["url"], model_name=f"plml_{uuid.uuid4().hex[:8]}")
    versions = []
    with registry.training_run("fit", {"plml.kind": "test"}) as run:  # as the training assets open it
        logged = mlflow.pyfunc.log_model(name="model", python_model=Doubler())
    for _ in range(2):
        with registry.tracking():
            versions.append(str(mlflow.register_model(logged.model_uri, registry.model_name, tags={"plml.candidate": "x"}).version))
    assert versions == ["1", "2"]
    assert registry.client().get_run(run.info.run_id).info.status == "FINISHED"

    registry.promote("1", "first champion")
    registry.promote("2", "better on the holdout")
    assert registry.alias_version(CHAMPION).version == "2"
    assert registry.champion_history() == ["1", "2"]
    previous, restored = registry.rollback()
    assert (previous, restored) == ("2", "1") and registry.alias_version(CHAMPION).version == "1"

    # The champion loads by alias through the server (artifacts proxied: the client has no store path).
    with registry.tracking():
        model = mlflow.pyfunc.load_model(registry.model_uri(CHAMPION))
    assert model.predict([1.0, 2.5]) == [2.0, 5.0]

    # It was all stored in PostgreSQL, not in a local file.
    import psycopg2

    with psycopg2.connect(server["pg"]) as conn, conn.cursor() as cur:
        cur.execute("SELECT version FROM model_versions WHERE name = %s ORDER BY version", (registry.model_name,))
        assert [str(r[0]) for r in cur.fetchall()] == ["1", "2"]
        cur.execute("SELECT alias, version FROM registered_model_aliases WHERE name = %s", (registry.model_name,))
        assert cur.fetchall() == [(CHAMPION, 1)]
    assert not list(Path(tmp_path).rglob("mlflow.db"))
