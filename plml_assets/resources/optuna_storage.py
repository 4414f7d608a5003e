"""Optuna storage: a SQLite file under PLML_HOME by default, PostgreSQL (or any RDB URL) by env."""

from __future__ import annotations

import os
import warnings

import dagster as dg
from pydantic import Field

from plml_assets.resources.paths import default_optuna_storage_url, plml_home, sqlite_schema_lock


class OptunaStorage(dg.ConfigurableResource):
    url: str | None = Field(
        default=None,
        description="Optuna RDB storage URL; default sqlite:///$PLML_HOME/optuna.db (env PLML_OPTUNA_STORAGE)",
    )

    def resolved_url(self) -> str:
        return self.url or os.environ.get("PLML_OPTUNA_STORAGE") or default_optuna_storage_url()

    def display_url(self) -> str:
        """The URL with any password masked, for logs and metadata."""
        from sqlalchemy.engine import make_url

        try:
            return make_url(self.resolved_url()).render_as_string(hide_password=True)
        except Exception:  # not an SQLAlchemy URL: show only its scheme
            return self.resolved_url().split(":", 1)[0] + ":…"

    def storage(self):
        import optuna

        url = self.resolved_url()
        if url.startswith("sqlite:///"):
            plml_home().mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna but needed to reap killed trials
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            with sqlite_schema_lock(url):  # RDBStorage creates its tables unguarded on first use
                return optuna.storages.RDBStorage(url=url, heartbeat_interval=60, grace_period=180)
