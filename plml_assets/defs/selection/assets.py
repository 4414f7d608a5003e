"""Feature selection on the training window only (the holdout never informs it)."""

import time
from collections.abc import Callable

import dagster as dg
import numpy as np
import pandas as pd

from plml_assets.defs.shared import fail_fast_on_bad_input, training_window
from plml_assets.lib.selection import SelectionResult, select_features
from plml_assets.lib.splits import PurgedWalkForward

from plml_assets.resources.settings import ExperimentSettings, SelectionSettings


def run_selection(
    X: pd.DataFrame,
    y: pd.Series,
    selection: SelectionSettings,
    settings: ExperimentSettings,
    log: Callable[[str], None] | None = None,
) -> SelectionResult:
    """Select on these rows alone: importance models are fitted on purged walk-forward folds of them."""
    splitter = PurgedWalkForward(n_splits=selection.n_folds, horizon=settings.horizon, embargo=settings.embargo_days)
    folds = list(splitter.split(X, y, groups=X.index.get_level_values("date")))
    return select_features(X, y, folds, selection.selection_config(settings.seed), log=log)


def selector_for(
    X: pd.DataFrame, y: pd.Series, selection: SelectionSettings, settings: ExperimentSettings
) -> Callable[[np.ndarray], list[str]]:
    """What a CV fold calls with its training positions to choose its own features."""

    def select(train_positions: np.ndarray) -> list[str]:
        return run_selection(X.iloc[train_positions], y.iloc[train_positions], selection, settings).selected

    return select


@dg.asset(group_name="selection", kinds={"xgboost"}, description="Selected features with importances; dropped ones with reasons.")
def feature_selection(
    context: dg.AssetExecutionContext,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    settings: ExperimentSettings,
    selection: SelectionSettings,
) -> dg.Output[pd.DataFrame]:
    with fail_fast_on_bad_input():
        start = time.perf_counter()
        X, y, split = training_window(features, labels, settings)
        result = run_selection(X, y, selection, settings, log=context.log.info)
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
            "settings": dg.MetadataValue.json(selection.model_dump()),
        },
    )


def selected_features(table: pd.DataFrame) -> list[str]:
    return table.loc[table["status"] == "selected", "feature"].tolist()
