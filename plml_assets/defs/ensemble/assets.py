"""Ensembles of the tuned families, fitted on out-of-fold predictions only, logged as one pyfunc each."""

import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
from pydantic import Field

import plml_assets
from plml_assets.defs.shared import ENSEMBLE_FAMILIES, FAMILIES, fail_fast_on_bad_input, split_for, step_tags
from plml_assets.defs.training.assets import _input_example, _pip_requirements
from plml_assets.lib.data import prices as price_lib
from plml_assets.lib.ensemble.combine import METHODS, ensemble_oof_scores, fit_ensemble
from plml_assets.lib.registry.provenance import code_version
from plml_assets.lib.registry.reproduce import DIGEST_ARTIFACT
from plml_assets.lib.registry.serving import EnsembleScorer, member_artifact, model_signature
from plml_assets.lib.validation.metrics import evaluate_predictions
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.settings import ExperimentSettings

_INS = {
    **{f"{f}_oof_predictions": dg.AssetIn(f"{f}_oof_predictions") for f in FAMILIES},
    **{f"{f}_holdout_predictions": dg.AssetIn(f"{f}_holdout_predictions") for f in FAMILIES},
    **{f"{f}_model": dg.AssetIn(f"{f}_model") for f in FAMILIES},
}


class EnsembleConfig(dg.Config):
    methods: list[str] = Field(default=list(METHODS), description=f"ensemble rules to build, of {METHODS}")
    members: list[str] = Field(default=list(ENSEMBLE_FAMILIES), description="families combined (at least 2; default the "
                               "learned ones: the elastic net stays on the leaderboard alone, as the interpretable reference)")
    shrinkage: float = Field(default=0.5, ge=0, le=1, description="weighted: pull of the optimized weights toward equal weights")
    objective: str = Field(default="ic", description="weighted: 'ic' (maximize mean per-date IC) or 'mse'")


def _member_frame(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.DataFrame({name: frame["prediction"] for name, frame in frames.items()}).dropna()


@dg.multi_asset(
    group_name="ensemble",
    op_tags=step_tags("ensembles"),
    outs={
        "ensemble_model": dg.AssetOut(
            kinds={"mlflow"},
            description="One ensemble per rule (mean, rank mean, optimized non-negative weights with shrinkage, purged-"
            "validated ridge stacking), fitted on the families' walk-forward out-of-fold predictions, each logged to "
            "MLflow as one pyfunc that carries its members and their feature pipelines.",
        ),
        "ensemble_predictions": dg.AssetOut(
            kinds={"pandas"},
            description="Each ensemble's out-of-fold predictions (per fold, fitted only on earlier folds' OOF rows, "
            "purged) and holdout predictions.",
        ),
    },
    ins=_INS,
)
def ensembles(
    context: dg.AssetExecutionContext,
    config: EnsembleConfig,
    market_prices: pd.DataFrame,
    labels: pd.DataFrame,
    feature_recipes: dict,
    settings: ExperimentSettings,
    mlflow_registry: MlflowRegistry,
    **inputs,
):
    with fail_fast_on_bad_input():
        unknown = [m for m in config.methods if m not in METHODS] + [f for f in config.members if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown ensemble method(s) or member(s) {unknown}: methods are {METHODS}, members {FAMILIES}")
        if len(set(config.members)) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {config.members}")
        if config.objective not in ("ic", "mse"):
            raise ValueError(f"objective must be 'ic' or 'mse', got {config.objective!r}")
        start = time.perf_counter()
        members = list(dict.fromkeys(config.members))
        y_all, split = split_for(labels, settings)
        wf = {f: inputs[f"{f}_oof_predictions"] for f in members}
        wf = {f: frame[frame["scheme"] == "walk_forward"] for f, frame in wf.items()}
        folds = {f: frame["fold"] for f, frame in wf.items()}
        oof = _member_frame(wf)
        if oof.empty:
            raise ValueError(f"the members' walk-forward out-of-fold predictions share no row: re-materialize {members}' CV")
        fold_of_row = folds[members[0]].reindex(oof.index)
        y = y_all.reindex(oof.index)
        holdout = _member_frame({f: inputs[f"{f}_holdout_predictions"] for f in members})
        y_hold = y_all.reindex(holdout.index)
        models = {f: inputs[f"{f}_model"] for f in members}
        results: dict[str, dict] = {}
        parts = []
        for method in config.methods:
            kwargs = {"shrinkage": config.shrinkage, "objective": config.objective, "horizon": settings.horizon, "seed": settings.seed}
            oof_scores, per_fold = ensemble_oof_scores(method, oof, y, fold_of_row, **kwargs)
            fit = fit_ensemble(method, oof, y, **kwargs)
            hold_scores = fit.combine(holdout).reindex(holdout.index)
            hold_m = evaluate_predictions(y_hold.to_numpy(), hold_scores.to_numpy(), holdout.index.get_level_values("date"))
            context.log.info(
                f"ensemble {method}: walk-forward rank IC per fold {[round(v, 4) for v in per_fold['rank_ic']]}, "
                f"holdout rank IC {hold_m['rank_ic']:.4f}, weights {json.dumps({k: round(v, 3) for k, v in fit.weights.items()})}"
            )
            results[method] = {"fit": fit.to_dict(), "per_fold": per_fold.to_dict("records"),
                               "holdout_metrics": {k: float(v) for k, v in hold_m.items()}}
            parts.append(pd.DataFrame({"method": method, "split": "oof", "fold": fold_of_row.reindex(oof_scores.index).to_numpy(),
                                       "prediction": oof_scores.to_numpy()}, index=oof_scores.index))
            parts.append(pd.DataFrame({"method": method, "split": "holdout", "fold": 0, "prediction": hold_scores.to_numpy()},
                                      index=hold_scores.index))
        logged = _log_ensembles(context, results, models, members, market_prices, feature_recipes, settings, mlflow_registry, split)
    for method, info in logged.items():
        results[method].update(info)
    out = {
        "members": members,
        "methods": results,
        "holdout": split.describe(),
        "fit_seconds": float(sum(float(m["fit_seconds"]) for m in models.values())),
    }
    table = pd.DataFrame({
        method: {"wf_rank_ic_mean": pd.DataFrame(r["per_fold"])["rank_ic"].mean(),
                 "holdout_rank_ic": r["holdout_metrics"]["rank_ic"],
                 **{f"w_{k}": v for k, v in r["fit"]["weights"].items()}}
        for method, r in results.items()
    }).T
    yield dg.Output(out, output_name="ensemble_model", metadata={
        "table": dg.MetadataValue.md(table.round(4).to_markdown()),
        "members": ", ".join(members),
        "model_uris": dg.MetadataValue.json({m: r["model_uri"] for m, r in results.items()}),
        "seconds": round(time.perf_counter() - start, 1),
    })
    yield dg.Output(pd.concat(parts), output_name="ensemble_predictions", metadata={"methods": ", ".join(results)})


def _log_ensembles(context, results, models, members, market_prices, feature_recipes, settings, mlflow_registry, split) -> dict[str, dict]:
    """One MLflow run and pyfunc per ensemble rule, carrying the members' saved models."""
    logged = {}
    example = _input_example(market_prices, feature_recipes["recipes"])
    digests = price_lib.panel_digests(market_prices)
    with mlflow_registry.tracking(), tempfile.TemporaryDirectory() as tmp:
        artifacts, fitted = {}, {}
        for f in members:
            fitted[f] = mlflow.pyfunc.load_model(models[f]["model_uri"]).unwrap_python_model().model_
            folder = Path(tmp) / member_artifact(f)
            fitted[f].save(folder)
            artifacts[member_artifact(f)] = str(folder)
        specs = {f: {"family": models[f]["family"], "features": models[f]["features"]} for f in members}
        symbols = sorted(set().union(*(set(models[f].get("training_symbols", [])) for f in members)))
        for method, result in results.items():
            scorer = EnsembleScorer(specs, result["fit"], settings.horizon, list(market_prices.columns),
                                    training_symbols=symbols or None, recipes=feature_recipes["recipes"])
            scorer.models_ = fitted
            signature = model_signature(scorer, example, scorer.score(example))
            del scorer.models_  # rebuilt from the artefacts in load_context
            tags = {
                "plml.family": "ensemble", "plml.ensemble_method": method, "plml.members": ",".join(members),
                "plml.code_version": code_version(), "plml.horizon": str(settings.horizon),
                "plml.holdout_start": str(split.holdout_dates[0].date()), "plml.holdout_end": str(split.holdout_dates[-1].date()),
                "plml.train_end": str(split.train_dates[-1].date()),
                "dagster.run_id": context.run.run_id, "dagster.asset": "ensemble_model",
                **{f"plml.run.{f}": str(models[f]["run_id"]) for f in members},
            }
            with mlflow.start_run(experiment_id=mlflow_registry.experiment_id(),
                                  run_name=f"ensemble-{method}-{context.run.run_id[:8]}", tags=tags) as run:
                mlflow.log_dict(result["fit"], "ensemble.json")
                mlflow.log_dict(digests, DIGEST_ARTIFACT)  # what `plml reproduce` checks the prices against
                mlflow.log_text(pd.DataFrame(result["per_fold"]).to_csv(index=False), "ensemble_folds.csv")
                mlflow.log_metrics({f"holdout_{k}": v for k, v in result["holdout_metrics"].items() if pd.notna(v)})
                mlflow.log_params({"method": method, **{f"weight.{k}": round(v, 6) for k, v in result["fit"]["weights"].items()}})
                requirements = sorted(set().union(*(_pip_requirements(models[f]["family"]) for f in members)))
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=scorer, artifacts=artifacts,
                    code_paths=[str(Path(plml_assets.__file__).parent)], input_example=example, signature=signature,
                    pip_requirements=requirements,
                )
                logged[method] = {"run_id": run.info.run_id, "model_uri": info.model_uri, "tags": tags}
    return logged
