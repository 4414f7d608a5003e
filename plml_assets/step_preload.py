"""What every step process of ``plml run --workers N`` imports, imported once in the forkserver.

The multiprocess executor forks each step's process from a forkserver that imported this module,
so a step starts with these modules already in memory instead of importing them again: measured
on the 2-core machine, a step process otherwise spent ~0.6 s importing Dagster's instance storage
(SQLAlchemy, Alembic, the run coordinator) and ~1 s importing torch (every step that fits or loads a
sequence net), about 30 s of CPU over the quick profile's 37 steps, beside the steps themselves.

Only imports, no state: nothing here opens a file, a connection or a thread pool (torch starts its
threads at the first operation, in the step process), so forking after it is safe.
"""

from __future__ import annotations

import importlib

import plml_assets.definitions  # noqa: F401  (the code location the steps are reconstructed from)

#: Modules the step processes were seen importing after the fork (``PYTHONPROFILEIMPORTTIME``).
#: Dagster's internal module paths change between releases, so a missing one is skipped: the step
#: process then imports what it needs itself, as before.
STEP_MODULES = (
    "dagster._core.storage.base_storage",
    "dagster._core.storage.root",
    "dagster._core.storage.migration.utils",
    "dagster._core.instance.factory",
    "dagster._core.definitions.repository_definition.repository_data_builder",
    "dagster._core.workspace.autodiscovery",
    "dagster._core.system_config.composite_descent",
    "dagster._core.secrets.env_file",
    "dagster._core.storage.sqlite_storage",
    "dagster._core.storage.event_log.sqlite.sqlite_event_log",
    "dagster._core.storage.runs.sqlite.sqlite_run_storage",
    "dagster._core.storage.schedules.sqlite.sqlite_schedule_storage",
    "watchdog.observers.polling",
    "dagster._utils.test.definitions",
    "upath",
    "upath.implementations.local",
    "pandas.core.arrays.arrow.extension_types",
    "pyarrow.parquet",
    "pyarrow.dataset",
    "pynvml",
    "torch",
    "lightgbm",
    "skfolio.datasets",
    "plml_assets.lib.models.sequence",
    "plml_assets.lib.models.xgboost_model",
    "plml_assets.lib.models.lightgbm_model",
)

PRELOADED: list[str] = []
for _name in STEP_MODULES:
    try:
        importlib.import_module(_name)
    except ImportError:
        continue
    PRELOADED.append(_name)
