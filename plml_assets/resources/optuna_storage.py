"""Optuna storage: a SQLite file under PLML_HOME by default, PostgreSQL (or any RDB URL) by env."""

from __future__ import annotations

import sqlite3
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import dagster as dg
from pydantic import Field

from plml_assets.resources.paths import default_optuna_storage_url, plml_home, sqlite_schema_lock
from plml_assets.resources.secrets import env_value, mask_url


class DamagedStorageError(RuntimeError):
    """The Optuna SQLite file exists but is not a sound database."""


def sqlite_damage(path: Path) -> str | None:
    """What is wrong with the SQLite database at ``path`` (SQLite's own words), or None when it is
    sound or does not exist yet. Read-only: ``PRAGMA quick_check`` on a read-only connection."""
    if not path.exists() or path.stat().st_size == 0:
        return None
    try:
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=60)
        try:
            rows = con.execute("PRAGMA quick_check").fetchall()
        finally:
            con.close()
    except sqlite3.DatabaseError as exc:  # "file is not a database", "database disk image is malformed"
        return str(exc)
    problems = [str(r[0]) for r in rows if str(r[0]) != "ok"]
    return "; ".join(problems[:3]) or None


class OptunaStorage(dg.ConfigurableResource):
    url: str | None = Field(
        default=None,
        description="Optuna RDB storage URL; default sqlite:///$PLML_HOME/optuna.db (env PLML_OPTUNA_STORAGE, or a file "
        "named by PLML_OPTUNA_STORAGE_FILE); leave unset here when it holds a password, so that it stays out of the run config",
    )

    on_damaged: Literal["set_aside", "fail"] = Field(
        default="set_aside",
        description="a SQLite storage file that is not a sound database (truncated, overwritten): 'set_aside' renames it "
        "to <file>.damaged-<UTC time> (kept for inspection) and the studies start afresh in a new file, saying so in the "
        "log; 'fail' refuses, naming the file",
    )

    def resolved_url(self) -> str:
        return self.url or env_value("PLML_OPTUNA_STORAGE") or default_optuna_storage_url()

    def checked_url(self, warn: Callable[[str], None] | None = None, on_damaged: str | None = None) -> str:
        """The URL, after checking that a SQLite storage file is a sound database. A damaged one is
        set aside (renamed, never deleted) so that a new study starts in a fresh file, or refused
        (``on_damaged="fail"``) with DamagedStorageError naming the file and the ways out."""
        url = self.resolved_url()
        if not url.startswith("sqlite:///"):
            return url
        path = Path(url.removeprefix("sqlite:///"))
        with sqlite_schema_lock(url):  # one process checks and sets aside; the others then find the fresh file
            problem = sqlite_damage(path)
            if problem is None:
                return url
            if (on_damaged or self.on_damaged) == "fail":
                raise DamagedStorageError(
                    f"the Optuna storage {path} is damaged ({problem}): its studies cannot be read. Move it aside "
                    f"(mv {path} {path}.damaged) and re-run to start the studies afresh, or set the optuna_storage "
                    f"resource's on_damaged to 'set_aside' to do that automatically")
            moved = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
            path.rename(moved)
            for suffix in ("-wal", "-shm", "-journal"):  # SQLite's side files belong to the damaged database
                side = path.with_name(path.name + suffix)
                if side.exists():
                    side.rename(moved.with_name(moved.name + suffix))
        message = (f"the Optuna storage {path} was damaged ({problem}): set aside as {moved}; the studies start afresh "
                   f"in a new {path.name} (their earlier trials are in the set-aside file, not counted)")
        (warn or (lambda m: warnings.warn(m, stacklevel=2)))(message)
        return url

    def display_url(self) -> str:
        """The URL with any password masked, for logs and metadata."""
        return mask_url(self.resolved_url())

    def storage(self):
        import optuna

        url = self.checked_url(on_damaged="fail")
        if url.startswith("sqlite:///"):
            plml_home().mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna but needed to reap killed trials
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            with sqlite_schema_lock(url):  # RDBStorage creates its tables unguarded on first use
                return optuna.storages.RDBStorage(url=url, heartbeat_interval=60, grace_period=180)
