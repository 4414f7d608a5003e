"""Config and helpers that several asset groups share."""

from __future__ import annotations

import contextlib
import functools
import json
import os
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pandas as pd

from plml_assets.lib.models.training import HoldoutSplit, design_matrix, excess_returns, holdout_split
from plml_assets.resources.settings import ExperimentSettings

TRAINING_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)

#: Which ready step the multiprocess executor starts first when the cores are taken (Dagster's
#: ``dagster/priority`` op tag, higher first; untagged steps are 0). The chain to the leaderboard and
#: the CPCV of its pick go first; the per-family CPCV refits ({family}_cpcv_predictions) and the CPCV
#: selections they need, read only after the leaderboard, come next, and the leaves no other step reads
#: (importance, generation report, comparison, drift) fill idle cores. The explanations are on the
#: chain to the promotion gate (its model card reads them), so they rank with the registration. The
#: generation report, the longest leaf (~7 s), waits for no refit: at the leaves' rank it started last
#: and ran alone after the gate; at 0 it fills a gap before the leaderboard.
#: Simulated on the step walls of a measured run (embedded panel, 2 cores): 306 s -> 288 s.
STEP_PRIORITY = {"study": 4, "cv": 3, "cpcv_paths": 3, "training": 2, "ensembles": 2, "model_leaderboard": 2, "backtest": 2,
                 "cpcv_fold_features": 1, "cpcv_predictions": 1, "feature_importance": -2, "feature_generation_report": 0,
                 "model_comparison": -2, "drift_metrics": -2, "explanations": 2, "automl_study": -1}


#: Steps heavy enough to get their own requests and limits on Kubernetes (the ``dagster-k8s/config``
#: op tag, read by the K8sRunLauncher and the k8s_job_executor); the others take the run launcher's defaults.
K8S_SIZED_KINDS = ("study", "cv", "training", "cpcv_predictions", "cpcv_paths", "cpcv_fold_features", "backtest", "ensembles")
#: the kinds of step there is one of per family ({family}_{kind})
FAMILY_KINDS = ("study", "cv", "training", "cpcv_predictions")
#: families whose per-family steps (FAMILY_KINDS) ask for a GPU on Kubernetes (the recurrent nets)
GPU_FAMILIES = ("lstm", "gru")
#: per-step sizing measured on a finished run (`plml analytics --k8s-resources` writes it)
K8S_SIZING_PATH = Path(__file__).with_name("k8s_resources.json")


@functools.cache
def _k8s_sizing() -> dict:
    """The measured sizing file, read once per process (every heavy asset's tags read it at load time)."""
    from plml_assets.lib.deploy import k8s

    return k8s.load_sizing(K8S_SIZING_PATH)


def step_tags(kind: str, family: str | None = None) -> dict[str, str]:
    """The op tags of a step of this kind (a key of STEP_PRIORITY), for ``family`` where the asset is
    one per family: its priority and, for the heavy kinds, its Kubernetes resources (measured, see
    lib/deploy/k8s.py; nets' steps with one GPU)."""
    from plml_assets.lib.deploy import k8s

    tags = {"dagster/priority": str(STEP_PRIORITY[kind])}
    if kind in K8S_SIZED_KINDS:
        step = f"{family}_{kind}" if family else kind
        measured = _k8s_sizing()["steps"].get(step, {}).get("resources", k8s.DEFAULT_RESOURCES)
        # PLML_K8S_GPU=0: no GPU on the cluster, the nets' pods ask for none (else they would stay Pending)
        gpu = family in GPU_FAMILIES and kind in FAMILY_KINDS and os.environ.get("PLML_K8S_GPU", "1") != "0"
        tags[k8s.K8S_CONFIG_TAG] = json.dumps(k8s.step_k8s_config(measured, gpu=gpu), sort_keys=True)
    return tags



def redone_runs(context: dg.AssetExecutionContext) -> tuple[str, ...]:
    """The Dagster run ids a step's fit redoes: its own run's (a step retry) and, for a re-execution,
    the parent and root runs'. MlflowRegistry.training_run marks their leftover RUNNING runs KILLED."""
    run = context.run
    return tuple(r for r in (run.run_id, run.parent_run_id, run.root_run_id) if r)


#: how a registry step waits for an MLflow store that does not answer: tries after the first, and the
#: first wait (doubling each time); env PLML_MLFLOW_RETRIES / PLML_MLFLOW_RETRY_DELAY_S
MLFLOW_RETRIES = int(os.environ.get("PLML_MLFLOW_RETRIES", "3"))
MLFLOW_RETRY_DELAY_S = float(os.environ.get("PLML_MLFLOW_RETRY_DELAY_S", "15"))


class MlflowUnavailable(RuntimeError):
    """The MLflow store did not answer through every retry of a registry step."""


@contextlib.contextmanager
def retry_when_store_unreachable(context: dg.AssetExecutionContext, store: str, what: str) -> Iterator[None]:
    """An MLflow store that does not answer (resources/mlflow_faults.is_unreachable) retries the step
    with exponential backoff (MLFLOW_RETRIES tries after the first, MLFLOW_RETRY_DELAY_S doubling);
    after the last, MlflowUnavailable names the store and says what was left. Other errors pass as they are.
    The steps that use it resume cleanly: a re-run picks up what an interrupted one left."""
    from plml_assets.resources.mlflow_faults import is_unreachable
    from plml_assets.resources.secrets import mask_secrets

    try:
        yield
    except (dg.Failure, dg.RetryRequested):
        raise
    except Exception as exc:
        if not is_unreachable(exc):
            raise
        cause = mask_secrets(f"{type(exc).__name__}: {str(exc)[:300]}")
        attempt = context.retry_number
        if attempt < MLFLOW_RETRIES:
            wait = MLFLOW_RETRY_DELAY_S * 2 ** attempt
            context.log.warning(f"{what}: the MLflow store {store} does not answer ({cause}); "
                                f"retry {attempt + 1} of {MLFLOW_RETRIES} in {wait:.0f} s")
            raise dg.RetryRequested(max_retries=MLFLOW_RETRIES, seconds_to_wait=wait) from exc
        raise MlflowUnavailable(
            f"{what}: the MLflow store {store} did not answer through {MLFLOW_RETRIES + 1} tries ({cause}). Nothing usable "
            f"was left half-done: a version whose registration did not finish is tagged plml.registration=incomplete and "
            f"is neither served nor promoted; re-run this step once the store answers (it resumes)"
        ) from exc


@contextlib.contextmanager
def fail_fast_on_bad_input() -> Iterator[None]:
    """Bad input or config is not transient: fail at once instead of spending the retry policy on it."""
    try:
        yield
    except (ValueError, TypeError, KeyError, LookupError) as exc:
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc


#: The model families that get their own study, CV results and model assets.
FAMILIES = ("xgboost", "lightgbm", "lstm", "gru", "elastic_net")
#: the ensembles' default members: the learned families. The elastic net stands on the leaderboard on
#: its own, the interpretable reference the others must beat (``ensembles`` config ``members`` adds it).
ENSEMBLE_FAMILIES = ("xgboost", "lightgbm", "lstm", "gru")
#: the Dagster kind tag of each family's assets (the library it runs on)
FAMILY_KIND = {"xgboost": "xgboost", "lightgbm": "lightgbm", "lstm": "pytorch", "gru": "pytorch", "elastic_net": "sklearn"}


def json_object(text: str, field: str) -> dict:
    """A Config field holding a JSON object ('' means empty), with an error that names the field."""
    if not text or not text.strip():
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{field} is not valid JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{field} must be a JSON object, got {type(value).__name__}: {text!r}")
    return value


def fold_columns(cv_fold_features: pd.DataFrame, scheme: str) -> list[list[str]]:
    """The features each fold of ``scheme`` selected on its own training rows, in fold order."""
    block = cv_fold_features[cv_fold_features["scheme"] == scheme]
    if block.empty:
        raise ValueError(f"cv_fold_features holds no fold of scheme {scheme!r}: re-materialize cv_fold_features")
    return [list(g.sort_values("rank")["feature"]) for _, g in block.groupby("fold", sort=True)]


def split_for(labels: pd.DataFrame, settings: ExperimentSettings) -> tuple[pd.Series, HoldoutSplit]:
    """The learning target (excess forward return) and the holdout split every asset shares."""
    y = excess_returns(labels.iloc[:, 0])
    return y, holdout_split(y, settings.holdout_days, settings.horizon)


def training_window(
    features: pd.DataFrame, labels: pd.DataFrame, settings: ExperimentSettings
) -> tuple[pd.DataFrame, pd.Series, HoldoutSplit]:
    """Every feature column and the target on the labelled dates before the purged holdout."""
    y_all, split = split_for(labels, settings)
    X, y = design_matrix(features, y_all, features.columns, split.train_dates)
    return X, y, split
