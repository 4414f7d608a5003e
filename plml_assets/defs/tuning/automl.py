"""The AutoML study: one Optuna search over families, their hyper-parameters (an architecture search
for the recurrent nets) and the feature count, on the family studies' purged folds, under a
wall-clock budget (lib/tuning/automl.py)."""

import time

import dagster as dg
import pandas as pd
from optuna.trial import TrialState
from pydantic import Field

from plml_assets.defs.shared import TRAINING_RETRY, fail_fast_on_bad_input, fold_columns, step_tags, training_window
from plml_assets.defs.tuning.assets import trial_evidence
from plml_assets.lib import tuning
from plml_assets.lib.models.registry import resolve_params
from plml_assets.lib.models.training import folds_from_assignments
from plml_assets.lib.plots import markdown_image
from plml_assets.lib.registry.provenance import content_digest
from plml_assets.lib.tuning.automl import AUTOML_FAMILIES, AutoMLObjective, AutoMLSpace, choice_importances, run_automl
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.optuna_storage import OptunaStorage
from plml_assets.resources.settings import ExperimentSettings

#: wall-clock seconds per materialization by profile: the quick graph keeps within its 120 s on 2
#: cores (the study runs beside the other leaves), the full one within its 30 minutes on sp500_5yr
DEFAULT_BUDGET_S = {"quick": 10.0, "full": 240.0}
#: families whose defaults are tried first (cheap, and the reference a search must beat)
ENQUEUED_FAMILIES = ("elastic_net", "xgboost")


class AutoMLConfig(dg.Config):
    budget_s: float | None = Field(default=None, description="wall-clock budget of this materialization in seconds: no trial "
                                   "starts after it and a running one is pruned at its next fold; None: 10 s quick, 240 s full")
    families: list[str] = Field(default=list(AUTOML_FAMILIES), description="families searched among")
    top_k: list[int] = Field(default=[10, 20, 40], description="feature counts searched: each fold keeps its own k best-ranked "
                             "selected features (ranked on its training rows)")
    pruner: str = Field(default="hyperband", description="'hyperband' (successive halving on folds), 'median' or 'none'")
    sampler: str = Field(default="tpe", description="'tpe' or 'random'")
    scheme: str = Field(default="walk_forward", description="CV scheme of cv_splits: 'walk_forward' or 'kfold'")
    max_trials: int = Field(default=500, ge=1, description="trials the study holds at most (COMPLETE + PRUNED, across resumes)")
    study_name: str = Field(default="", description="Optuna study name; default: derived from the data, folds and space, so a "
                            "re-run resumes the same study (and spends a new budget) and new data starts a new one")


def _family_defaults(space: AutoMLSpace, family: str, k: int, quick: bool, seed: int) -> dict:
    params = resolve_params(family, quick=quick, seed=seed)
    return {"family": family, "top_k": k, **{f"{family}.{n}": params[n] for n in space.family_spaces[family].names if n in params}}


@dg.asset(
    group_name="tuning",
    op_tags=step_tags("automl_study"),
    kinds={"optuna"},
    retry_policy=TRAINING_RETRY,
    description="AutoML: one Optuna study over the model family (elastic net, XGBoost, LightGBM, LSTM, GRU), each family's "
    "hyper-parameters drawn only when that family is (the nets' part an architecture search: 1-4 layers, 16-256 units, "
    "windows 10-120), and the feature count (each fold's top-k selected features), on the family studies' purged folds, "
    "Hyperband-pruned fold by fold, within budget_s of wall clock; resumable from the Optuna storage. Reports the best "
    "configuration, the best per family, and which choices mattered (fANOVA). Its trials record per-date out-of-fold "
    "scores, as the family studies' do.",
)
def automl_study(
    context: dg.AssetExecutionContext,
    config: AutoMLConfig,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    cv_splits: pd.DataFrame,
    cv_fold_features: pd.DataFrame,
    settings: ExperimentSettings,
    optuna_storage: OptunaStorage,
    mlflow_registry: MlflowRegistry,
) -> dg.Output[dict]:
    start = time.perf_counter()
    with fail_fast_on_bad_input():
        budget = DEFAULT_BUDGET_S[settings.profile] if config.budget_s is None else float(config.budget_s)
        if budget <= 0:
            raise ValueError(f"budget_s must be > 0 seconds, got {budget}")
        if config.scheme not in ("walk_forward", "kfold"):
            raise ValueError(f"scheme must be 'walk_forward' or 'kfold', got {config.scheme!r}")
        space = AutoMLSpace(config.families, config.top_k, quick=settings.quick)
        X, y, _ = training_window(features, labels, settings)
        assignments = cv_splits[cv_splits["scheme"] == config.scheme]
        folds = folds_from_assignments(X, assignments)
        columns = fold_columns(cv_fold_features, config.scheme)
        fixed = {f: {k: v for k, v in resolve_params(f, quick=settings.quick, seed=settings.seed).items()
                     if k not in space.family_spaces[f].names} for f in space.families}
        objective = AutoMLObjective(X, y, folds, settings.horizon, columns, fixed)
        digest = content_digest(y, X, assignments, cv_fold_features, space.to_dict(), fixed, settings.horizon)
        name = config.study_name or f"{mlflow_registry.model_name}-automl-{digest}"
        widest = max(space.top_k)
        enqueue = []
        for family in (f for f in ENQUEUED_FAMILIES if f in space.families):
            candidate = _family_defaults(space, family, widest, settings.quick, settings.seed)
            try:
                space.check_params(candidate)
                enqueue.append(candidate)
            except ValueError as exc:
                context.log.warning(f"automl_study: the {family} defaults are outside the space ({exc}); not enqueued")
        context.log.info(f"automl_study {name}: budget {budget:.0f} s, families {space.families}, top_k {space.top_k}, "
                         f"{len(folds)} {config.scheme} folds on {len(X):,} rows, pruner {config.pruner}, "
                         f"storage {optuna_storage.display_url()}")
        result = run_automl(objective, space, storage_url=optuna_storage.checked_url(context.log.warning), study_name=name, budget_s=budget,
                            max_trials=config.max_trials, pruner=config.pruner, seed=settings.seed, enqueue=enqueue,
                            log=context.log.info)
    study = result.study
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))
    complete = [t for t in done if t.state == TrialState.COMPLETE]
    by_family = {}
    for family in space.families:
        mine = [t for t in done if t.params.get("family") == family]
        finished = [t for t in mine if t.state == TrialState.COMPLETE]
        best = max(finished, key=lambda t: t.value) if finished else None
        by_family[family] = {"trials": len(mine), "pruned": len(mine) - len(finished),
                             "best_rank_ic": round(float(best.value), 5) if best else None,
                             "best_params": AutoMLSpace.split(best.params)[2] if best else None,
                             "best_top_k": int(best.params["top_k"]) if best else None}
    best = max(complete, key=lambda t: t.value) if complete else None
    importances = choice_importances(study, seed=settings.seed)
    winner = None
    if best is not None:
        family, k, own = AutoMLSpace.split(best.params)
        winner = {"trial": best.number, "family": family, "top_k": k, "params": own, "rank_ic": float(best.value)}
    else:
        context.log.warning("automl_study: no trial completed within the budget")
    summary = {
        "study_name": name, "storage": optuna_storage.display_url(), "budget_s": budget, "metric": "rank_ic",
        "scheme": config.scheme, "pruner": config.pruner, "families": space.families, "top_k": space.top_k,
        "counts": {s: sum(t.state.name == s for t in study.get_trials(deepcopy=False)) for s in ("COMPLETE", "PRUNED", "FAIL")},
        "ran_this_time": result.ran, "winner": winner, "by_family": by_family, "importances": importances,
        # the winner's rank IC is the best of every trial on these folds: biased upward, not out of sample
        "winner_footing": "best of the study's trials on the walk-forward folds it was chosen on (selection-biased)",
        "search_space": space.to_dict(),
    }
    summary.update(trial_evidence(study, objective, "rank_ic"))
    summary["seconds"] = round(time.perf_counter() - start, 1)
    context.log.info(f"automl_study: {len(done)} trials ({summary['counts']['PRUNED']} pruned) in {summary['seconds']:.0f} s; "
                     + (f"best {winner['family']} top_k {winner['top_k']} rank IC {winner['rank_ic']:.4f}" if winner else "no winner"))
    table = pd.DataFrame(by_family).T.drop(columns=["best_params"])
    metadata = {
        "study_name": name,
        "winner_family": winner["family"] if winner else "none",
        "best_rank_ic": winner["rank_ic"] if winner else float("nan"),
        "best_rank_ic_footing": "best of N on the folds it was chosen on: selection-biased, not out of sample",
        "trials_complete": summary["counts"]["COMPLETE"],
        "trials_pruned": summary["counts"]["PRUNED"],
        "trials_run_now": int(sum(result.ran.values())),
        "budget_s": budget,
        "winner": dg.MetadataValue.json(winner or {}),
        "families": dg.MetadataValue.md(table.to_markdown()),
        "choice_importances": dg.MetadataValue.json(importances),
        "storage": summary["storage"],
        "seconds": summary["seconds"],
    }
    if complete:
        metadata["optimization_history"] = dg.MetadataValue.md(markdown_image(tuning.plot_optimization_history(study),
                                                                              "optimization history"))
    if importances.get("overall"):
        png = tuning.plot_param_importances(pd.Series(importances["overall"]).sort_values(ascending=False))
        metadata["choice_importances_plot"] = dg.MetadataValue.md(markdown_image(png, "which choices mattered (fANOVA)"))
    return dg.Output(summary, metadata=metadata)
