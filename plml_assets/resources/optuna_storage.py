"""Optuna storage: a SQLite file under PLML_HOME by default, PostgreSQL (or any RDB URL) by env."""

from __future__ import annotations

import warnings

import dagster as dg
from pydantic import Field

from plml_assets.resources.paths import default_optuna_storage_url, plml_home, sqlite_schema_lock
from plml_assets.resources.secrets import env_value, mask_url


class OptunaStorage(dg.ConfigurableResource):
    url: str | None = Field(
        default=None,
        description="Optuna RDB storage URL; default sqlite:///$PLML_HOME/optuna.db (env PLML_OPTUNA_STORAGE, or a file "
        "named by PLML_OPTUNA_STORAGE_FILE); leave unset here when it holds a password, so that it stays out of the run config",
    )

    def resolved_url(self) -> str:
        return self.url or env_value("PLML_OPTUNA_STORAGE") or default_optuna_storage_url()

    def display_url(self) -> str:
        """The URL with any password masked, for logs and metadata."""
        return mask_url(self.resolved_url())

    def storage(self):
        import optuna

        url = self.resolved_url()
        if url.startswith("sqlite:///"):
            plml_home().mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna but needed to reap killed trials
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            with sqlite_schema_lock(url):  # RDBStorage creates its tables unguarded on first use
                return optuna.storages.RDBStorage(url=url, heartbeat_interval=60, grace_period=180)
