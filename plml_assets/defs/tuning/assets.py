"""Optuna studies: one per model family, over the purged CV folds, stored in the Optuna RDB."""

import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
from optuna.trial import TrialState
from pydantic import Field

from plml_assets.defs.shared import FAMILIES, FAMILY_KIND, TRAINING_RETRY, fail_fast_on_bad_input, fold_columns, json_object, redone_runs, step_tags, training_window
from plml_assets.lib import tuning
from plml_assets.lib.models.registry import resolve_params
from plml_assets.lib.models.training import folds_from_assignments
from plml_assets.lib.plots import markdown_image
from plml_assets.lib.registry.provenance import content_digest
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.optuna_storage import OptunaStorage
from plml_assets.resources.settings import ExperimentSettings

#: Trials per study (COMPLETE + PRUNED) by profile, and a wall-clock cap per materialization (one
#: deadline: no trial starts after it, a running one is pruned at its next fold). On the embedded
#: panel the trial budget binds and results are reproducible; on sp500_5yr the nets' cap binds (a
#: GRU trial there costs 100-600 s), which bounds the step at the cap plus one fold.
#: Measured on the embedded panel, one 2-core machine: a boosting trial over 5 walk-forward folds
#: costs ~5 s, a sequence-net trial ~20 s.
DEFAULT_BUDGETS = {
    "full": {"xgboost": (16, 240.0), "lightgbm": (16, 240.0), "lstm": (4, 300.0), "gru": (4, 300.0), "elastic_net": (12, 120.0)},
    "quick": {"xgboost": (6, 90.0), "lightgbm": (6, 90.0), "lstm": (2, 120.0), "gru": (2, 120.0), "elastic_net": (4, 60.0)},
}


class StudyConfig(dg.Config):
    n_trials: int | None = Field(
        default=None, description="trials the study holds when done (COMPLETE + PRUNED), counted across resumes "
        "and workers; None: the family's default for the profile (0: no search, the defaults are used)"
    )
    timeout_s: float | None = Field(default=None, description="wall-clock cap of this materialization in seconds; None: the family's default")
    sampler: str = Field(default="tpe", description="'tpe' (Bayesian, constant liar for parallel workers) or 'random'")
    pruner: str = Field(default="median", description="'median', 'hyperband' (resource: folds) or 'none'")
    metric: str = Field(default="rank_ic", description="per-fold validation metric averaged by the objective: 'rank_ic' or 'ic'")
    objectives: list[str] = Field(
        default=["rank_ic"], description="['rank_ic'] (single objective), or multi-objective ['rank_ic', 'gap'] / "
        "['rank_ic', 'turnover']: the Pareto front is reported and PickRule chooses the trial"
    )
    pick_bound: float = Field(default=0.1, description="multi-objective: highest metric among Pareto trials with gap/turnover <= this")
    scheme: str = Field(default="walk_forward", description="CV scheme of cv_splits the objective runs on: 'walk_forward' or 'kfold'")
    search_space: str = Field(default="", description="JSON search space replacing the family's default, e.g. "
                              '{"max_depth": {"type": "int", "low": 2, "high": 6}}')
    fixed_params: str = Field(default="", description="JSON hyper-parameters fixed during the search and in the final model")
    monotone_constraints: str = Field(default="", description="boosters only: JSON {feature: 1 | -1} declaring that the "
                                      "score may only rise (1) or only fall (-1) with a feature, the others held, e.g. "
                                      '{"mom_20": 1}; a fold whose selection lacks a declared feature leaves it out')
    monotone_search: bool = Field(default=True, description="with monotone_constraints: search whether to apply them "
                                  "(a categorical trial parameter, the unconstrained default enqueued first); False: always apply")
    study_name: str = Field(default="", description="Optuna study name; default: derived from the family, data, folds and "
                            "search setup, so a re-run resumes the same study and new data starts a new one")
    worker: int = Field(default=0, description="index of this worker when several processes share the study (distinct seeds)")
    wait_for_workers_s: float = Field(default=300.0, ge=0, description="its own trials done, how long to wait for trials "
                                      "other workers (`plml worker`) are still running before picking (0: pick at once)")


def _study_objective(config: StudyConfig, family: str, X, y, folds, columns, fixed: dict, settings: ExperimentSettings):
    # The first objective is the CV metric, whichever of 'rank_ic' / 'ic' the list names.
    objectives = [config.metric if o in ("rank_ic", "ic") else o for o in config.objectives]
    return tuning.cv_objective(
        tuning.family_fit_predict(family, settings.horizon, **fixed), X, y, folds, settings.horizon,
        metric=config.metric, objectives=objectives, fold_columns=columns,
    )


#: Optuna study user attribute: what `plml worker --study NAME` needs to rebuild the study's objective
#: from the stored assets (family, the asset's config, the settings, the model name, the trial budget).
WORKER_SPEC_ATTR = "plml.worker_spec"


@dataclass(frozen=True)
class PreparedStudy:
    """A study ready to run: its objective on the CV folds, search space, name and budget."""

    name: str
    objective: tuning.CVObjective
    space: tuning.SearchSpace
    n_trials: int
    timeout: float
    enqueue: list[dict]
    rule: tuning.PickRule | None
    fixed: dict
    defaults: dict
    folds: list
    rows: int
    digest: str  # of the data, folds and search setup: a worker must arrive at the same one


#: families whose models take monotone constraints (lib/models/base.monotone_constraints)
MONOTONE_FAMILIES = ("xgboost", "lightgbm")


def monotone_option(family: str, config: StudyConfig, space: tuning.SearchSpace, fixed: dict,
                    columns) -> tuple[tuning.SearchSpace, dict, bool]:
    """The study's space and fixed parameters with the declared monotone constraints: a categorical
    choice between none and the declaration (``monotone_search``) or fixed on. Returns (space,
    fixed, whether the choice is searched); unchanged without a declaration."""
    from plml_assets.lib.models.base import monotone_constraints

    declared = monotone_constraints(config.monotone_constraints)
    if declared is None:
        return space, fixed, False
    if family not in MONOTONE_FAMILIES:
        raise ValueError(f"monotone_constraints apply to the boosters {list(MONOTONE_FAMILIES)}, not to {family}")
    unknown = sorted(set(declared) - {str(c) for c in columns})
    if unknown:
        raise ValueError(f"monotone_constraints name feature(s) {unknown} that the features asset does not have")
    if "monotone_constraints" in fixed or "monotone_constraints" in space.names:
        raise ValueError("monotone constraints are declared in the config's monotone_constraints, not in fixed_params or search_space")
    text = json.dumps(declared, sort_keys=True)
    if not config.monotone_search:
        return space, {**fixed, "monotone_constraints": text}, False
    choice = tuning.ParamSpec.from_dict("monotone_constraints", {"type": "categorical", "choices": ["", text]})
    return tuning.SearchSpace([*space.params, choice]), fixed, True


def prepare_study(family: str, config: StudyConfig, features: pd.DataFrame, labels: pd.DataFrame, cv_splits: pd.DataFrame,
                  cv_fold_features: pd.DataFrame, settings: ExperimentSettings, model_name: str,
                  warn=lambda message: None) -> PreparedStudy:
    """What the `<family>_study` asset and a `plml worker` both build from the same inputs: the same
    objective, space and (digest-derived) study name, so a worker on other data cannot join."""
    default_trials, default_timeout = DEFAULT_BUDGETS[settings.profile][family]
    n_trials = default_trials if config.n_trials is None else config.n_trials
    timeout = default_timeout if config.timeout_s is None else config.timeout_s
    if config.scheme not in ("walk_forward", "kfold"):
        raise ValueError(f"scheme must be 'walk_forward' or 'kfold', got {config.scheme!r}")
    if n_trials < 0 or (timeout is not None and timeout <= 0):
        raise ValueError(f"n_trials must be >= 0 and timeout_s > 0; got {n_trials} and {timeout}")
    fixed = json_object(config.fixed_params, "fixed_params")
    space = (tuning.SearchSpace.from_dict(json_object(config.search_space, "search_space"))
             if config.search_space.strip() else tuning.default_space(family, quick=settings.quick))
    space, fixed, searched_monotone = monotone_option(family, config, space, fixed, features.columns)
    clash = sorted(set(fixed) & set(space.names))
    if clash:
        raise ValueError(f"fixed_params {clash} are also in the search space: fix them or search them, not both")
    base = resolve_params(family, overrides=fixed, quick=settings.quick, seed=settings.seed)
    fixed_during_search = {k: v for k, v in base.items() if k not in space.names}
    X, y, _ = training_window(features, labels, settings)
    assignments = cv_splits[cv_splits["scheme"] == config.scheme]
    folds = folds_from_assignments(X, assignments)
    columns = fold_columns(cv_fold_features, config.scheme)
    objective = _study_objective(config, family, X, y, folds, columns, fixed_during_search, settings)
    digest = content_digest(y, X, assignments, cv_fold_features, space.to_dict(),
                            fixed_during_search, list(objective.names), config.metric, settings.horizon)
    name = config.study_name or f"{model_name}-{family}-{digest}"
    defaults = {k: v for k, v in base.items() if k in space.names}
    if searched_monotone:
        defaults["monotone_constraints"] = ""  # the unconstrained model is the first trial
    try:
        space.check_params(defaults)
        enqueue = [defaults] if len(defaults) == len(space) else []
    except ValueError as exc:
        warn(f"{family}_study: the default configuration is outside the search space ({exc}); not enqueued")
        enqueue = []
    rule = (tuning.PickRule(primary=objective.names[0], bounded=objective.names[1], bound=config.pick_bound)
            if len(objective.names) > 1 else None)
    return PreparedStudy(name, objective, space, n_trials, timeout, enqueue, rule, fixed, defaults, folds, len(X), digest)


def worker_spec(family: str, config: StudyConfig, settings: ExperimentSettings, model_name: str, n_trials: int,
                digest: str) -> str:
    return json.dumps({"family": family, "config": config.model_dump(), "settings": settings.model_dump(),
                       "model_name": model_name, "n_trials": n_trials, "digest": digest}, sort_keys=True, default=str)


def _study_run_tags(context: dg.AssetExecutionContext, family: str, study_name: str) -> dict[str, str]:
    return {"plml.kind": "study", "plml.family": family, "plml.study_name": study_name,
            "dagster.run_id": context.run.run_id, "dagster.asset": f"{family}_study"}


def _log_study_run(run, frame: pd.DataFrame, plots: dict[str, bytes], summary: dict, space: tuning.SearchSpace) -> str:
    """One MLflow run per study materialization (``run``, open since before the first trial, so its
    system metrics cover the search): the trial table, plots and chosen parameters (not a nested run
    per trial: the trials live in the Optuna storage; see lib/tuning)."""
    with tempfile.TemporaryDirectory() as tmp:
        mlflow.log_params({f"best.{k}": v for k, v in summary["tuned_params"].items()}
                          | {"n_trials_budget": summary["n_trials"], "sampler": summary["sampler"],
                             "pruner": summary["pruner"], "objectives": ",".join(summary["objectives"])})
        mlflow.log_metrics({k: float(v) for k, v in summary["best_values"].items()}
                           | {f"trials_{k.lower()}": float(v) for k, v in summary["counts"].items()})
        mlflow.log_text(frame.to_csv(index=False), "trials.csv")
        mlflow.log_dict(space.to_dict(), "search_space.json")
        mlflow.log_dict(summary, "study.json")
        for name, png in plots.items():
            (Path(tmp) / f"{name}.png").write_bytes(png)
            mlflow.log_artifact(str(Path(tmp) / f"{name}.png"), "plots")
    return run.info.run_id


def trial_evidence(study, objective: tuning.CVObjective, metric: str) -> dict:
    """What the promotion evidence needs of every trial tried (not only the best): its parameters, its
    per-fold scores and its per-date out-of-fold scores on the study's validation dates. The deflated
    Sharpe counts these trials, PBO ranks them, and nested choices (the leaderboard's footing, the
    walk-forward backtest) pick among them using earlier dates only."""
    dates = objective.oof_dates()
    scores = tuning.trial_date_scores(study, dates)
    trials = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        folds = t.user_attrs.get(f"fold_{metric}")
        if folds is None:
            continue
        trials.append({"number": t.number, "state": t.state.name, "params": dict(t.params), "fold_scores": list(folds)})
    fold_starts = [str(pd.Timestamp(d[0]).date()) for d in objective._fold_dates if len(d)]
    return {
        "oof_dates": [str(pd.Timestamp(d).date()) for d in dates],
        "fold_test_starts": fold_starts,
        "trial_date_scores": {c: [None if pd.isna(v) else float(v) for v in scores[c].to_numpy()] for c in scores.columns},
        "trials": trials,
    }


def _kept_fits(prepared: PreparedStudy, study) -> Callable[[int, int, dict], np.ndarray | None]:
    """``kept(trial, fold, params)`` for :func:`nested_member_predictions`: the test predictions the
    study's objective kept for that trial and walk-forward fold, when it ran the trial in this step with
    exactly ``params`` (its fixed parameters under the trial's own), else None (refitted)."""
    kept = prepared.objective.kept_predictions or {}
    fixed = dict(prepared.objective.fit_predict.fixed)
    trial_params = {t.number: dict(t.params) for t in study.get_trials(deepcopy=False)}

    def lookup(trial: int, fold: int, params: dict):
        stored = kept.get(trial, {}).get(fold)
        return stored if stored is not None and params == {**fixed, **trial_params.get(trial, {})} else None

    return lookup


_STUDY_INPUTS = [dg.AssetKey(k) for k in ("features", "labels", "cv_splits", "cv_fold_features")]


def build_study_asset(family: str) -> dg.AssetsDefinition:
    study_key, nested_key = f"{family}_study", f"{family}_nested_predictions"

    @dg.multi_asset(
        name=study_key,
        op_tags=step_tags("study", family),
        outs={
            study_key: dg.AssetOut(
                group_name="tuning", is_required=False,
                kinds={"optuna", FAMILY_KIND[family]},
                description=f"Optuna search over the {family} hyper-parameters: mean validation rank IC over the purged CV "
                "folds of cv_splits (each fold on the features it selected on its own training rows), pruned fold by "
                f"fold, resumable from the Optuna storage. Outputs the parameters every later {family} asset uses.",
            ),
            nested_key: dg.AssetOut(
                group_name="validation", is_required=False, kinds={"pandas"},
                description=f"{family} on every walk-forward fold with the parameters its study would have chosen on the "
                "earlier folds only (fold 1: the first trial): the fold's test predictions (columns fold, prediction, "
                "trial), the backtest's walk-forward segment. The study's own fit of that trial on that fold is reused "
                "when this step ran it (same parameters, folds and features), else the fold is refitted.",
            ),
        },
        can_subset=True,
        # the nested table reads the study's choices (lineage and staleness: it is downstream of the study)
        internal_asset_deps={study_key: set(_STUDY_INPUTS), nested_key: {*_STUDY_INPUTS, dg.AssetKey(study_key)}},
        retry_policy=TRAINING_RETRY,
    )
    def _study(
        context: dg.AssetExecutionContext,
        config: StudyConfig,
        features: pd.DataFrame,
        labels: pd.DataFrame,
        cv_splits: pd.DataFrame,
        cv_fold_features: pd.DataFrame,
        settings: ExperimentSettings,
        optuna_storage: OptunaStorage,
        mlflow_registry: MlflowRegistry,
    ):
        selected = {k.to_user_string() for k in context.selected_asset_keys}
        if nested_key in selected and study_key not in selected:
            # the nested table is made from the trials this very step runs or resumes: alone it would move the
            # Optuna study on without the stored study asset, and the backtest would then refuse the pair
            with fail_fast_on_bad_input():
                raise ValueError(f"{nested_key} is made by the {study_key} step together with {study_key}: select both")
        with contextlib.ExitStack() as open_run:  # the MLflow run is open from the first trial to the logging
            with fail_fast_on_bad_input():
                start = time.perf_counter()
                prepared = prepare_study(family, config, features, labels, cv_splits, cv_fold_features, settings,
                                         mlflow_registry.model_name, warn=context.log.warning)
                objective, space, name, n_trials, timeout = (prepared.objective, prepared.space, prepared.name,
                                                             prepared.n_trials, prepared.timeout)
                fixed, defaults, rule = prepared.fixed, prepared.defaults, prepared.rule
                if nested_key in selected and config.scheme == "walk_forward":
                    # the trials' walk-forward fits are the nested ones: keep their test predictions to reuse
                    objective.kept_predictions = {}
                context.log.info(
                    f"{family}_study {name}: budget {n_trials} trials / {timeout:.0f} s, {len(prepared.folds)} {config.scheme} folds on "
                    f"{prepared.rows:,} rows, sampler {config.sampler}, pruner {config.pruner}, objectives {list(objective.names)}, "
                    f"storage {optuna_storage.display_url()}; more workers: `plml worker --study {name}`"
                )
                run = open_run.enter_context(mlflow_registry.training_run(
                    f"{family}-study-{context.run.run_id[:8]}", _study_run_tags(context, family, name), supersedes=redone_runs(context)))
                result = tuning.run_study(
                    objective, space, storage_url=optuna_storage.checked_url(context.log.warning), study_name=name,
                    sampler=config.sampler, pruner=config.pruner, n_trials=n_trials, timeout_s=timeout,
                    seed=settings.seed, worker=config.worker, enqueue=prepared.enqueue, pick_rule=rule, log=context.log.info,
                    study_attrs={WORKER_SPEC_ATTR: worker_spec(family, config, settings, mlflow_registry.model_name, n_trials, prepared.digest)},
                    # `plml worker` trials still running: wait for them (a dead one's is failed after its heartbeat
                    # grace, 120 s) so the parameters picked are the whole budget's
                    wait_for_others_s=config.wait_for_workers_s,
                )
            study = result.study
            tuned = result.best_params if result.best is not None else {}
            params = resolve_params(family, tuned=tuned, overrides=fixed, quick=settings.quick, seed=settings.seed)
            frame = tuning.trials_frame(study, rule)
            names = study.metric_names or [f"objective_{i}" for i in range(len(study.directions))]
            best_values = dict(zip(names, result.best.values)) if result.best is not None else {}
            counts = {state: int((frame["state"] == state).sum()) for state in ("COMPLETE", "PRUNED", "FAIL")} if len(frame) else {}
            plots: dict[str, bytes] = {}
            if result.best is not None:
                plots["optimization_history"] = tuning.plot_optimization_history(study)
                importances = tuning.param_importances(study, seed=settings.seed)
                if len(importances):
                    plots["param_importances"] = tuning.plot_param_importances(importances)
                if len(study.directions) > 1:
                    plots["pareto_front"] = tuning.plot_pareto_front(study, rule)
            else:
                importances = pd.Series(dtype=float)
                context.log.warning(f"{family}_study: no trial completed; the {family} defaults are used")
            summary = {
                "family": family,
                "study_name": name,
                "storage": optuna_storage.display_url(),
                "n_trials": n_trials,
                "counts": counts,
                "sampler": config.sampler,
                "pruner": config.pruner,
                "objectives": list(objective.names),
                "metric": config.metric,
                "scheme": config.scheme,
                "pick_rule": rule.describe() if rule else f"highest mean validation {config.metric}",
                "best_trial": result.best.number if result.best is not None else None,
                "best_values": best_values,
                "tuned_params": tuned,
                "default_value": tuning.trial_value_of(frame, defaults, names[0]),
                "params": params,
                "search_space": space.to_dict(),
                "ran_this_time": result.ran,
                # every process that took trials of this study (this step and any `plml worker`)
                "workers": tuning.worker_progress(study),
            }
            mlflow_run_id = _log_study_run(run, frame, plots, summary, space)
        summary["mlflow_run_id"] = mlflow_run_id
        summary.update(trial_evidence(study, objective, config.metric))
        summary["seconds"] = round(time.perf_counter() - start, 1)
        shown = [c for c in frame.columns if c in ("number", "state", "last_step", "duration_s", "picked", *names)
                 or c.startswith("param_")]
        metadata = {
            "study_name": name,
            "best_trial": summary["best_trial"] if summary["best_trial"] is not None else -1,
            **{f"best_{k}": float(v) for k, v in best_values.items()},
            "default_config_value": summary["default_value"] if summary["default_value"] is not None else float("nan"),
            "trials_complete": counts.get("COMPLETE", 0),
            "trials_pruned": counts.get("PRUNED", 0),
            "trials_failed": counts.get("FAIL", 0),
            "trials_run_now": int(sum(result.ran.values())),
            "pruned_share": counts.get("PRUNED", 0) / max(len(frame), 1),
            "best_params": dg.MetadataValue.json(tuned),
            "params_used": dg.MetadataValue.json(params),
            "pick_rule": summary["pick_rule"],
            "trials": dg.MetadataValue.md(frame[shown].round(4).head(60).to_markdown(index=False) if len(frame) else "no trials"),
            "param_importances": dg.MetadataValue.json({k: round(float(v), 4) for k, v in importances.items()}),
            "storage": summary["storage"],
            "workers": dg.MetadataValue.json(summary["workers"]),
            "mlflow_run_id": mlflow_run_id,
            "seconds": summary["seconds"],
        }
        for plot_name, png in plots.items():
            metadata[plot_name] = dg.MetadataValue.md(markdown_image(png, plot_name.replace("_", " ")))
        if study_key in selected:
            yield dg.Output(summary, output_name=study_key, metadata=metadata)
        if nested_key in selected:
            yield _nested_output(context, family, prepared, study, summary, cv_splits, cv_fold_features, settings)

    return _study


def _nested_output(context, family: str, prepared: PreparedStudy, study, summary: dict, cv_splits, cv_fold_features,
                   settings: ExperimentSettings) -> dg.Output:
    from plml_assets.defs.backtest.assets import nested_predictions_table

    start = time.perf_counter()
    with fail_fast_on_bad_input():
        # the very training window the objective fitted on (no second copy of it)
        X, y = prepared.objective.X, prepared.objective.y
        table, how = nested_predictions_table(family, summary, X, y, cv_splits, cv_fold_features, settings.horizon,
                                              context.log.info, kept=_kept_fits(prepared, study))
    seconds = time.perf_counter() - start
    folds = int(table["fold"].nunique())
    context.log.info(f"{family}_nested_predictions: {folds} walk-forward folds with trials {how['trials_used']}, "
                     f"{how['fits_reused']} of the study's own fits reused, {folds - how['fits_reused']} refitted, in {seconds:.1f} s")
    return dg.Output(table, output_name=f"{family}_nested_predictions", metadata={
        "folds": folds, "rows": len(table), "trials_used": dg.MetadataValue.json(how["trials_used"]),
        "nested": bool(how["nested"]), "fits_reused": int(how["fits_reused"]), "seconds": round(seconds, 1)})


STUDIES = [build_study_asset(family) for family in FAMILIES]
