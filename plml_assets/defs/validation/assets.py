"""Purged time-series cross-validation on the training window."""


import json
import time

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from plml_assets.defs.selection.assets import selector_for
from plml_assets.defs.shared import TRAINING_RETRY, fail_fast_on_bad_input, XGBoostConfig, split_for
from plml_assets.lib.metrics import summarize_folds
from plml_assets.lib.plots import fold_metrics_plot, markdown_image
from plml_assets.lib.splits import PurgedKFold, PurgedWalkForward
from plml_assets.lib.training import cross_validate, design_matrix, fold_assignments, folds_from_assignments
from plml_assets.resources.settings import ExperimentSettings, SelectionSettings

SCHEMES = ("walk_forward", "kfold")
METRICS = ("ic", "rank_ic", "rmse", "directional_accuracy")


class CVSplitsConfig(dg.Config):
    walk_forward_splits: int = Field(default=5, ge=2, le=50, description="purged walk-forward (expanding) folds")
    kfold_splits: int = Field(default=5, ge=2, le=50, description="purged K-fold folds")


@dg.asset(group_name="validation", kinds={"pandas"}, description="Date-level fold assignments: purged walk-forward and purged K-fold, with embargo.")
def cv_splits(
    context: dg.AssetExecutionContext, config: CVSplitsConfig, labels: pd.DataFrame, settings: ExperimentSettings
) -> dg.Output[pd.DataFrame]:
    _, split = split_for(labels, settings)
    wf_splits = min(config.walk_forward_splits, 3) if settings.quick else config.walk_forward_splits
    kf_splits = min(config.kfold_splits, 3) if settings.quick else config.kfold_splits
    splitters = {
        "walk_forward": PurgedWalkForward(n_splits=wf_splits, horizon=settings.horizon, embargo=settings.embargo_days),
        "kfold": PurgedKFold(n_splits=kf_splits, horizon=settings.horizon, embargo=settings.embargo_days),
    }
    table = pd.concat([fold_assignments(s, split.train_dates, name) for name, s in splitters.items()], ignore_index=True)
    summary = (
        table.groupby(["scheme", "fold", "role"])["date"].agg(["min", "max", "count"]).unstack("role")
    )
    summary.columns = [f"{role}_{stat}" for stat, role in summary.columns]
    context.log.info(f"cv_splits: {len(summary)} folds over {len(split.train_dates)} training dates")
    return dg.Output(
        table,
        metadata={
            "folds": dg.MetadataValue.md(summary.astype(str).to_markdown()),
            "horizon_days": settings.horizon,
            "embargo_days": settings.embargo_days,
            "training_window": dg.MetadataValue.json(split.describe()),
            "splitters": dg.MetadataValue.json({k: v.describe() for k, v in splitters.items()}),
        },
    )


class CVResultsConfig(XGBoostConfig):
    gap_bound: float = Field(default=0.10, description="flag overfitting when train rank IC exceeds validation rank IC by more than this")


@dg.asset(
    group_name="validation",
    kinds={"xgboost"},
    retry_policy=TRAINING_RETRY,
    description="XGBoost metrics per fold and aggregate for each CV scheme, with an overfitting flag; feature selection is re-run inside every fold on its training rows.",
)
def xgboost_cv_results(
    context: dg.AssetExecutionContext,
    config: CVResultsConfig,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    cv_splits: pd.DataFrame,
    settings: ExperimentSettings,
    selection: SelectionSettings,
) -> dg.Output[pd.DataFrame]:
    with fail_fast_on_bad_input():
        start = time.perf_counter()
        y_all, split = split_for(labels, settings)
        X, y = design_matrix(features, y_all, features.columns, split.train_dates)
        unknown = set(cv_splits["date"]) - set(split.train_dates)
        if unknown:
            raise ValueError(
                f"cv_splits holds {len(unknown)} date(s) outside the current training window "
                f"{split.describe()['train_start']}..{split.describe()['train_end']}: re-materialize cv_splits"
            )
        select = selector_for(X, y, selection, settings)
        params = config.params(settings)
        if not 0 <= config.gap_bound <= 2:
            raise ValueError(f"gap_bound must be between 0 and 2, got {config.gap_bound}")
        frames = []
        for scheme in SCHEMES:
            folds = folds_from_assignments(X, cv_splits[cv_splits["scheme"] == scheme])
            context.log.info(f"{scheme}: {len(folds)} folds on {len(X):,} rows x {X.shape[1]} features")
            per_fold, _ = cross_validate(
                params, X, y, folds, settings.horizon, config.gap_bound, select=select, log=context.log.info
            )
            per_fold.insert(0, "scheme", scheme)
            frames.append(per_fold)
        results = pd.concat(frames, ignore_index=True)
        results["params"] = json.dumps(params, sort_keys=True)
        chosen = pd.Series([f for fs in results["features"] for f in fs.split(",") if f]).value_counts()
        stability = (chosen / len(results)).rename("share_of_folds").to_frame()
        metadata: dict[str, object] = {}
        for scheme, block in results.groupby("scheme"):
            agg = summarize_folds(block[[f"valid_{m}" for m in METRICS] + ["rank_ic_gap"]].to_dict("records"))
            for m in METRICS:
                metadata[f"{scheme}_{m}"] = float(agg[f"valid_{m}_mean"])
            metadata[f"{scheme}_rank_ic_std"] = float(agg["valid_rank_ic_std"])
            metadata[f"{scheme}_rank_ic_gap"] = float(agg["rank_ic_gap_mean"])
            metadata[f"{scheme}_overfit_folds"] = int(block["overfit_flag"].sum())
        overfit = bool(results["overfit_flag"].any())
        if overfit:
            context.log.warning(
                f"overfitting flag: {int(results['overfit_flag'].sum())} fold(s) with train-validation rank IC gap > {config.gap_bound}"
            )
        metadata.update(
            {
                "overfit_flag": overfit,
                "gap_bound": config.gap_bound,
                "per_fold": dg.MetadataValue.md(
                    results[["scheme", "fold", "test_start", "test_end", "valid_ic", "valid_rank_ic", "valid_rmse",
                             "valid_directional_accuracy", "train_rank_ic", "rank_ic_gap", "best_iteration"]]
                    .round(4).to_markdown(index=False)
                ),
                "fold_plot": dg.MetadataValue.md(markdown_image(fold_metrics_plot(results), "rank IC per fold")),
                "feature_stability": dg.MetadataValue.md(stability.head(40).round(2).to_markdown()),
                "features_per_fold": float(results["n_features"].mean()),
                "seconds": round(time.perf_counter() - start, 1),
                "params": dg.MetadataValue.json(params),
            }
        )
        return dg.Output(results, metadata=metadata)


def cv_summary(results: pd.DataFrame, scheme: str = "walk_forward") -> dict[str, float]:
    block = results[results["scheme"] == scheme]
    out = {f"cv_{scheme}_{m}": float(np.nanmean(block[f"valid_{m}"])) for m in METRICS}
    out[f"cv_{scheme}_rank_ic_gap"] = float(np.nanmean(block["rank_ic_gap"]))
    return out
