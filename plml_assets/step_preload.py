"""What every step process imports, imported once in the forkserver (the definitions' default executor:
``plml run --workers N`` and every run the daemon, the UI or GraphQL launches).

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
import os

# A thread budget of one per step process, set before numpy, torch and LightGBM are imported: every
# model already fits on its own ``nthread``/``n_jobs`` (1 by default), and BLAS/OpenMP would
# otherwise start one thread per core in each of the concurrent step processes and oversubscribe
# the cores. `plml run` sets the same; a deployment that wants more sets them in the environment.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

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
    "mlflow.store.tracking.sqlalchemy_store",  # ~0.6 s in every step that opens the SQLite MLflow store
    "mlflow.store.model_registry.sqlalchemy_store",
    "mlflow.tracing.processor.base_mlflow",
    "git",
    "torch",
    "torch._inductor.config",  # ~0.8 s: torch.use_deterministic_algorithms imports it in every net step
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


def _warm_mlflow_requirements_map() -> bool:
    """MLflow maps importable modules to their distributions once per process, the first time a
    model is logged (``importlib.metadata.packages_distributions()`` over site-packages: ~0.9 s in
    each of the quick profile's nine model-logging steps). Computed here, every step inherits it: a
    dict read from the installed packages' metadata, no file left open. MLflow's private helper,
    so a release that renames it costs only the time again."""
    try:
        from mlflow.utils import requirements_utils

        requirements_utils._init_modules_to_packages_map()
    except Exception:  # noqa: BLE001  (an optimization, never a reason for a step to fail)
        return False
    return requirements_utils._MODULES_TO_PACKAGES is not None


MLFLOW_REQUIREMENTS_MAP_WARM = _warm_mlflow_requirements_map()
