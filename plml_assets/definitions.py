"""The one entry point: Definitions assembled from the asset groups and the resource map."""

from __future__ import annotations

import dagster as dg

from plml_assets.defs.analytics import assets as analytics_assets
from plml_assets.defs.backtest import assets as backtest_assets
from plml_assets.defs.comparison import assets as comparison_assets
from plml_assets.defs.data import assets as data_assets
from plml_assets.defs.data import checks as data_checks
from plml_assets.defs.ensemble import assets as ensemble_assets
from plml_assets.defs.explain import assets as explain_assets
from plml_assets.defs.explain import checks as explain_checks
from plml_assets.defs.importance import assets as importance_assets
from plml_assets.defs.monitoring import assets as monitoring_assets
from plml_assets.defs.monitoring.schedules import data_refresh_schedule, weekly_retrain_schedule
from plml_assets.defs.monitoring.sensors import drift_retraining_sensor
from plml_assets.defs.registry import assets as registry_assets
from plml_assets.defs.registry.jobs import rollback_champion
from plml_assets.defs.registry.sensors import promotion_webhook_sensor
from plml_assets.defs.selection import assets as selection_assets
from plml_assets.defs.training import assets as training_assets
from plml_assets.defs.tuning import assets as tuning_assets
from plml_assets.defs.tuning import automl as automl_assets
from plml_assets.defs.validation import assets as validation_assets
from plml_assets.resources.dask import DaskResource
from plml_assets.resources.io import ParquetIOManager
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.optuna_storage import OptunaStorage
from plml_assets.resources.prices import PriceSource
from plml_assets.resources.settings import ExperimentSettings, SelectionSettings


def _env_int(name: str, default: int) -> int:
    import os

    raw = os.environ.get(name)
    if not raw:
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def build_resources() -> dict[str, object]:
    """Local defaults that need no server; env vars point each one at a server instead."""
    import os

    return {
        "io_manager": ParquetIOManager(base_dir=os.environ.get("PLML_ASSET_DIR")),
        "price_source": PriceSource(source=os.environ.get("PLML_PRICES", "embedded")),
        "settings": ExperimentSettings(
            horizon=_env_int("PLML_HORIZON", 5),
            holdout_days=_env_int("PLML_HOLDOUT_DAYS", 250),
            profile=os.environ.get("PLML_PROFILE", "full"),
        ),
        "selection": SelectionSettings(max_features=_env_int("PLML_MAX_FEATURES", 30)),
        # The store URLs may carry a password: they are read from the environment when used
        # (PLML_MLFLOW_TRACKING_URI, PLML_OPTUNA_STORAGE or their _FILE), never copied into the
        # resource config, which the Dagster UI and the run's config show.
        "mlflow_registry": MlflowRegistry(model_name=os.environ.get("PLML_MODEL_NAME", "plml_model")),
        "optuna_storage": OptunaStorage(),
        "dask": DaskResource(scheduler_address=os.environ.get("PLML_DASK_SCHEDULER")),
    }


ASSETS = dg.load_assets_from_modules(
    [data_assets, selection_assets, validation_assets, tuning_assets, automl_assets, backtest_assets, training_assets,
     comparison_assets, ensemble_assets, importance_assets, monitoring_assets, registry_assets, analytics_assets, explain_assets]
)
CHECKS = dg.load_asset_checks_from_modules([data_checks, registry_assets, analytics_assets, explain_checks])

# Declarative automation: the data assets and drift_metrics carry AutomationConditions (eager,
# gated by the blocking price checks); this sensor evaluates them.
AUTOMATION = dg.AutomationConditionSensorDefinition(
    "plml_automation", target=dg.AssetSelection.all(), default_status=dg.DefaultSensorStatus.RUNNING, minimum_interval_seconds=30,
)

#: The whole asset graph as one named job: what `plml run` executes (several steps at a time in their
#: own processes), and what a user launches from the UI or GraphQL to rebuild everything.
MAIN_JOB = dg.define_asset_job(
    "plml_main", selection=dg.AssetSelection.all() - dg.AssetSelection.assets("training_analytics"),
    description="Every asset and check of plml: data, features, studies, CV, models, ensembles, leaderboard, "
    "backtest, validation, registry and promotion gate, drift metrics.",
)

#: What the last training runs cost: run after plml_main (by `plml run`), never inside it, so that it
#: reports on finished runs.
ANALYTICS_JOB = dg.define_asset_job(
    "plml_analytics", selection=dg.AssetSelection.assets("training_analytics"),
    description="training_analytics and its step_regression check, on the runs finished so far.",
)

#: ``PLML_EXECUTOR``: how a run's steps execute. Unset: one process per step, several at a time
#: (Dagster's multi-or-in-process executor, forking each step from a preloaded forkserver: see
#: ``DEFAULT_EXECUTOR``; `plml run --workers N` sets how many). ``in_process``: every step in the
#: run's process. ``multiprocess``: Dagster's plain multiprocess executor (a fresh interpreter per
#: step). ``k8s``: one Kubernetes Job per step (dagster-k8s's k8s_job_executor, on a cluster whose
#: run launcher is the K8sRunLauncher; each heavy step's pod gets the resources of its
#: ``dagster-k8s/config`` tag). See docs/deploy.md.
EXECUTORS = ("in_process", "multiprocess", "k8s")

#: What every step process imports before it is forked (plml_assets/step_preload.py).
PRELOAD_MODULES = ["plml_assets.step_preload"]
FORKSERVER = {"forkserver": {"preload_modules": PRELOAD_MODULES}}


def with_forkserver(config: dict | None) -> dict:
    """Run config for Dagster's multi-or-in-process executor, with the forkserver start method when
    a multiprocess run names none: ``{}`` and ``{"multiprocess": {"max_concurrent": 2}}`` gain
    ``start_method: forkserver`` preloading PRELOAD_MODULES; an explicit ``start_method`` (spawn,
    a forkserver with other modules) and ``{"in_process": ...}`` are kept as given."""
    config = dict(config or {})
    if "in_process" in config:
        return config
    multiprocess = dict(config.get("multiprocess") or {})
    multiprocess.setdefault("start_method", FORKSERVER)
    return {**config, "multiprocess": multiprocess}


#: The executor of every run that names none: the runs the daemon's sensors and schedules launch,
#: those launched from the UI or GraphQL, and `plml run --workers N`. Dagster's default starts each
#: step in a fresh interpreter (measured in `dagster dev` on the 2-core machine: ~4 s from
#: STEP_WORKER_STARTING to STEP_START, importing Dagster, pandas, torch and MLflow again per step);
#: forked from the preloaded forkserver a step starts in well under a second. The run config's
#: ``execution.config`` takes the same shape as Dagster's default executor's (checked by it, after
#: ``with_forkserver``).
DEFAULT_EXECUTOR = dg.multi_or_in_process_executor.configured(
    with_forkserver, config_schema=dg.Permissive(), name="plml_multiprocess")


def select_executor(name: str | None) -> dg.ExecutorDefinition:
    if not name:
        return DEFAULT_EXECUTOR
    if name == "in_process":
        return dg.in_process_executor
    if name == "multiprocess":
        return dg.multiprocess_executor
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"PLML_EXECUTOR={name!r}: expected one of {', '.join(EXECUTORS)} (or unset for plml's default)")


def _executor_from_env() -> dg.ExecutorDefinition:
    import os

    return select_executor(os.environ.get("PLML_EXECUTOR"))


defs = dg.Definitions(
    assets=ASSETS,
    asset_checks=CHECKS,
    jobs=[rollback_champion, MAIN_JOB, ANALYTICS_JOB],
    schedules=[data_refresh_schedule, weekly_retrain_schedule],
    sensors=[drift_retraining_sensor, AUTOMATION, promotion_webhook_sensor],
    resources=build_resources(),
    executor=_executor_from_env(),
)


def main_job() -> dg.JobDefinition:
    """``plml_main`` resolved: a module-level function so that ``dagster.reconstructable(main_job)``
    can rebuild the job in each step process of the multiprocess executor."""
    return defs.resolve_job_def("plml_main")
