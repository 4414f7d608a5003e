"""Shared fixtures: real resources on temp dirs (SQLite MLflow store, temp DAGSTER_HOME)."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg
import pandas as pd
import pytest

from plml_assets.lib.prices import load_embedded
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
    for var in ("PLML_MLFLOW_TRACKING_URI", "PLML_OPTUNA_STORAGE", "PLML_PRICES", "PLML_PROFILE", "MLFLOW_TRACKING_URI"):
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
