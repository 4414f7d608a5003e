"""Where local state lives. ``PLML_HOME`` (default ``.plml`` under the working directory) holds the
SQLite MLflow store and its artefacts, the Optuna storage and the assets' Parquet files."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path


def plml_home() -> Path:
    return Path(os.environ.get("PLML_HOME") or ".plml").expanduser().resolve()


def default_mlflow_tracking_uri() -> str:
    return f"sqlite:///{plml_home() / 'mlflow.db'}"


def default_mlflow_artifact_root() -> str:
    return (plml_home() / "mlartifacts").as_uri()


def default_optuna_storage_url() -> str:
    return f"sqlite:///{plml_home() / 'optuna.db'}"


def as_of_file() -> Path:
    """Where `plml advance` keeps the simulated 'today': prices after it do not exist yet."""
    return plml_home() / "as_of"


def default_asset_dir() -> Path:
    return plml_home() / "assets"


def default_dagster_home() -> Path:
    return plml_home() / "dagster"


@contextlib.contextmanager
def sqlite_schema_lock(url: str) -> Iterator[None]:
    """Hold an exclusive lock beside a SQLite database (``sqlite:///path``) while its schema is
    created; other URLs pass straight through. MLflow and Optuna create their tables on a process's
    first use of a store, unguarded: two step processes touching a new database at once made the
    second fail with "table experiments already exists" (seen under ``plml run --workers 2``)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    database = Path(url.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(database.with_name(database.name + ".init.lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
