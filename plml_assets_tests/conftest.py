"""Shared fixtures: real resources on temp dirs (SQLite MLflow store, temp DAGSTER_HOME)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from plml_assets.lib.data.prices import load_embedded
from plml_assets.resources.dask import DaskResource
from plml_assets.resources.io import ParquetIOManager
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.optuna_storage import OptunaStorage
from plml_assets.resources.prices import PriceSource
from plml_assets.resources.settings import ExperimentSettings, SelectionSettings

REPO = Path(__file__).resolve().parents[1]
SP500_5YR = REPO.parent / "shared" / "data" / "sp500_5yr.csv.gz"
# A small real slice of the embedded panel: enough for every step, quick on 2 cores.
SLICE_SYMBOLS = ["AAPL", "AMD", "BAC", "CVX", "JPM", "KO", "MSFT", "PG"]
SLICE_START, SLICE_END = "2006-01-01", "2013-12-31"
# Variables that would point a test's resources at someone's real stores instead of its temp dirs.
PLML_ENV_VARS = ("PLML_MLFLOW_TRACKING_URI", "PLML_OPTUNA_STORAGE", "PLML_DASK_SCHEDULER", "PLML_EXECUTOR", "PLML_PRICES", "PLML_PROFILE", "MLFLOW_TRACKING_URI")


@pytest.fixture(scope="session")
def embedded_panel() -> pd.DataFrame:
    return load_embedded()


@pytest.fixture
def sp500_path() -> Path:
    if not SP500_5YR.exists():
        pytest.skip(f"{SP500_5YR} is absent")
    return SP500_5YR


@pytest.fixture
def plml_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "plml_home"
    home.mkdir()
    monkeypatch.setenv("PLML_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    (home / "dagster").mkdir()
    for var in PLML_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    return home


def slice_resources(home: Path, source: str = "embedded", **price_kwargs) -> dict[str, object]:
    prices = {"symbols": SLICE_SYMBOLS, "start_date": SLICE_START, "end_date": SLICE_END} if source == "embedded" else {}
    prices.update(price_kwargs)
    return {
        "io_manager": ParquetIOManager(base_dir=str(home / "assets")),
        "price_source": PriceSource(source=source, **prices),
        "settings": ExperimentSettings(horizon=5, holdout_days=120, profile="quick"),
        "selection": SelectionSettings(),
        "mlflow_registry": MlflowRegistry(tracking_uri=f"sqlite:///{home / 'mlflow.db'}", model_name="plml_test_model"),
        "optuna_storage": OptunaStorage(url=f"sqlite:///{home / 'optuna.db'}"),
        "dask": DaskResource(),
    }


@pytest.fixture
def instance(plml_home: Path):
    with dg.instance_for_test(temp_dir=str(plml_home / "dagster")) as inst:
        yield inst


def postgres_url(db: str = "test") -> str | None:
    """The local PostgreSQL (trust auth) when it answers; None otherwise."""
    try:
        import psycopg2

        conn = psycopg2.connect(host="127.0.0.1", port=5432, user=os.environ.get("PGUSER", "postgres"), dbname=db, connect_timeout=3)
        conn.close()
    except Exception:
        return None
    return f"postgresql://{os.environ.get('PGUSER', 'postgres')}@127.0.0.1:5432/{db}"


@contextlib.contextmanager
def fresh_postgres_database() -> Iterator[str | None]:
    """A new, empty PostgreSQL database (dropped afterwards), or None when no PostgreSQL answers."""
    if postgres_url() is None:
        yield None
        return
    import uuid

    import psycopg2

    name = f"plml_t_{uuid.uuid4().hex[:12]}"
    user = os.environ.get("PGUSER", "postgres")
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user=user, dbname="test", connect_timeout=3)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield f"postgresql://{user}@127.0.0.1:5432/{name}"
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        conn.close()


@pytest.fixture
def fresh_postgres_url():
    """A new, empty PostgreSQL database for one test (dropped afterwards), so a test that starts
    several processes on it also meets the race of all of them creating the schema at once; skips
    when no PostgreSQL answers."""
    with fresh_postgres_database() as url:
        if url is None:
            pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")
        yield url


def postgres_instance_env(url: str) -> dict[str, str]:
    """The environment deploy/dagster-postgres.yaml reads its connection from, for ``url``."""
    from sqlalchemy.engine import make_url

    u = make_url(url)
    return {"PLML_DAGSTER_PG_HOST": u.host or "127.0.0.1", "PLML_DAGSTER_PG_PORT": str(u.port or 5432),
            "PLML_DAGSTER_PG_USER": u.username or "postgres", "PLML_DAGSTER_PG_PASSWORD": u.password or "",
            "PLML_DAGSTER_PG_DB": u.database}


def quick_xgboost(panel: pd.DataFrame, train_end: str, n_features: int = 12, horizon: int = 5):
    """(model, columns): an XGBoost with the quick parameters fitted on the panel's first
    ``n_features`` base features up to ``train_end``: the cheapest real model a serving or
    registration test can put behind the pyfunc."""
    from plml_assets.lib.data.labels import forward_returns
    from plml_assets.lib.features.base import build_features
    from plml_assets.lib.models.registry import resolve_params
    from plml_assets.lib.models.training import design_matrix, excess_returns, fit_model

    features, _ = build_features(panel)
    columns = list(features.columns[:n_features])
    y = excess_returns(forward_returns(panel, horizon))
    dates = y.index.get_level_values("date").unique()
    X, target = design_matrix(features, y, columns, dates[dates <= pd.Timestamp(train_end)])
    model, _ = fit_model("xgboost", resolve_params("xgboost", quick=True), X, target, horizon)
    return model, columns


@contextlib.contextmanager
def mlflow_server(backend_store_uri: str, root: Path, *extra: str, ready_timeout_s: float = 180) -> Iterator[str]:
    """A real `mlflow server` on a free loopback port over ``backend_store_uri`` (log in ``root``),
    yielding its URL once /health answers; the process group is killed on exit."""
    port = free_port()
    log_path = root / "server.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--backend-store-uri", backend_store_uri, "--workers", "1", *extra],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env={**os.environ, "MLFLOW_TRACKING_URI": ""},
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.time() + ready_timeout_s
            while True:
                assert proc.poll() is None, log_path.read_text()[-3000:]
                with contextlib.suppress(OSError):
                    if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                        break
                assert time.time() < deadline, f"mlflow server did not answer /health in {ready_timeout_s:.0f} s:\n" + log_path.read_text()[-3000:]
                time.sleep(1)
            yield url
        finally:
            stop_process_group(proc)


def slice_long_panel(panel: pd.DataFrame, start: str = "2010-01-01") -> pd.DataFrame:
    """The SLICE_SYMBOLS rows of a (date, symbol) panel from ``start`` on, as a long frame ready for a
    CSV/Parquet price file (``PLML_PRICES``)."""
    frame = panel[panel.index.get_level_values("symbol").isin(SLICE_SYMBOLS)].reset_index()
    return frame[frame["date"] >= start]


# ---- `dagster dev` in a subprocess (e2e tests) ------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    """One raw GraphQL request to a local webserver."""
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


@dataclass(frozen=True)
class DagsterDev:
    port: int
    dagster_home: Path
    plml_home: Path
    log_path: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


def stop_process_group(proc: subprocess.Popen, grace_s: float = 20) -> None:
    """SIGTERM the process group ``proc`` leads (started with ``start_new_session=True``), wait up to
    ``grace_s``, then SIGKILL whatever is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


@contextlib.contextmanager
def dagster_dev(workdir: Path, env: dict[str, str] | None = None, ready_timeout_s: float = 180,
                instance_yaml: Path = REPO / "dagster.yaml") -> Iterator[DagsterDev]:
    """``dagster dev`` (webserver + daemon, so queued runs start) through workspace.yaml on a free
    localhost port, with a temp DAGSTER_HOME (``instance_yaml`` as its dagster.yaml: the repo's SQLite
    one, or deploy/dagster-postgres.yaml with its PLML_DAGSTER_PG_* in ``env``) and PLML_HOME under
    ``workdir``. Yields once the code location serves its asset graph; kills the whole process group on exit."""
    dev = DagsterDev(free_port(), workdir / "dagster_home", workdir / "plml_home", workdir / "dagster_dev.log")
    dev.dagster_home.mkdir(parents=True, exist_ok=True)
    dev.plml_home.mkdir(parents=True, exist_ok=True)
    shutil.copy(instance_yaml, dev.dagster_home / "dagster.yaml")
    full_env = {k: v for k, v in os.environ.items() if k not in PLML_ENV_VARS}
    full_env.update({"DAGSTER_HOME": str(dev.dagster_home), "PLML_HOME": str(dev.plml_home), **(env or {})})
    with open(dev.log_path, "w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"),
             "-p", str(dev.port), "-h", "127.0.0.1"],
            cwd=REPO, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        try:
            deadline = time.time() + ready_timeout_s
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"dagster dev exited with {proc.returncode}:\n{dev.log_tail()}")
                try:
                    if graphql(dev.port, "{ assetNodes { id } }").get("data", {}).get("assetNodes"):
                        break
                except OSError:
                    pass
                if time.time() > deadline:
                    pytest.fail(f"dagster dev served no asset graph in {ready_timeout_s:.0f} s:\n{dev.log_tail()}")
                time.sleep(2)
            yield dev
        finally:
            # dagster dev shuts its children down on SIGTERM, but the daemon can linger: kill what is left.
            stop_process_group(proc)
