"""Feature selection on the training window only (the holdout never informs it)."""


import time

import dagster as dg
import pandas as pd
from pydantic import Field

from plml_assets.defs.shared import split_for
from plml_assets.lib.selection import SelectionConfig, select_features
from plml_assets.lib.splits import PurgedWalkForward
from plml_assets.lib.training import design_matrix
from plml_assets.resources.settings import ExperimentSettings


class FeatureSelectionConfig(dg.Config):
    max_features: int = Field(default=30, ge=1, le=500, description="keep at most this many features")
    max_missing_ratio: float = Field(default=0.2, ge=0, le=1, description="drop features missing in more than this share of training rows")
    correlation_threshold: float = Field(default=0.95, gt=0, le=1, description="of a pair correlated above this, keep the more important")
    leakage_corr_threshold: float = Field(default=0.3, gt=0, le=1, description="|corr(feature, label)| above this raises the leakage alarm and drops the feature")
    importance: str = Field(default="gain", description="'gain' (XGBoost total gain) or 'permutation' (rank-IC drop on validation folds)")
    n_folds: int = Field(default=3, ge=2, le=20, description="purged walk-forward folds over the training window")
    n_estimators: int = Field(default=60, ge=5, le=2000, description="rounds of the importance models")
    sample_rows: int = Field(default=200_000, ge=1000, description="rows sampled (seeded) for the importance models")


@dg.asset(group_name="selection", kinds={"xgboost"}, description="Selected features with importances; dropped ones with reasons.")
def feature_selection(
    context: dg.AssetExecutionContext,
    config: FeatureSelectionConfig,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    settings: ExperimentSettings,
) -> dg.Output[pd.DataFrame]:
    start = time.perf_counter()
    y_all, split = split_for(labels, settings)
    X, y = design_matrix(features, y_all, features.columns, split.train_dates)
    splitter = PurgedWalkForward(n_splits=config.n_folds, horizon=settings.horizon, embargo=settings.embargo_days)
    folds = list(splitter.split(X, y, groups=X.index.get_level_values("date")))
    sel_config = SelectionConfig(
        max_features=config.max_features,
        max_missing_ratio=config.max_missing_ratio,
        correlation_threshold=config.correlation_threshold,
        leakage_corr_threshold=config.leakage_corr_threshold,
        importance=config.importance,
        n_estimators=config.n_estimators,
        seed=settings.seed,
        sample_rows=config.sample_rows,
        n_threads=1,
    )
    result = select_features(X, y, folds, sel_config, log=context.log.info)
    table = result.to_frame()
    selected = table[table["status"] == "selected"]
    dropped = table[table["status"] != "selected"]
    context.log.info(
        f"feature_selection: kept {len(result.selected)} of {features.shape[1]} features on "
        f"{len(X):,} training rows ({split.describe()['train_start']}..{split.describe()['train_end']}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return dg.Output(
        table,
        metadata={
            "selected_count": len(result.selected),
            "dropped_count": len(result.dropped),
            "selected": dg.MetadataValue.md(selected[["feature", "importance"]].to_markdown(index=False)),
            "dropped": dg.MetadataValue.md(dropped[["feature", "reason"]].to_markdown(index=False)),
            "training_window": dg.MetadataValue.json(split.describe()),
            "importance": config.importance,
        },
    )


def selected_features(table: pd.DataFrame) -> list[str]:
    return table.loc[table["status"] == "selected", "feature"].tolist()
