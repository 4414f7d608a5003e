"""Config and helpers that several asset groups share."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import dagster as dg
import pandas as pd
from pydantic import Field

from plml_assets.lib.models.xgboost_model import XGBoostModel
from plml_assets.lib.training import HoldoutSplit, design_matrix, excess_returns, holdout_split
from plml_assets.resources.settings import ExperimentSettings

TRAINING_RETRY = dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL)


@contextlib.contextmanager
def fail_fast_on_bad_input() -> Iterator[None]:
    """Bad input or config is not transient: fail at once instead of spending the retry policy on it."""
    try:
        yield
    except (ValueError, TypeError, KeyError, LookupError) as exc:
        raise dg.Failure(description=f"{type(exc).__name__}: {exc}", allow_retries=False) from exc


class XGBoostConfig(dg.Config):
    """XGBoost hyper-parameters (the quick profile caps the rounds)."""

    n_estimators: int = Field(default=400, description="maximum boosting rounds")
    learning_rate: float = Field(default=0.05, description="shrinkage per round")
    max_depth: int = Field(default=5, description="tree depth")
    min_child_weight: float = Field(default=50.0, description="minimum hessian per leaf")
    subsample: float = Field(default=0.8, description="row subsample per tree")
    colsample_bytree: float = Field(default=0.8, description="column subsample per tree")
    reg_lambda: float = Field(default=5.0, description="L2 regularisation")
    early_stopping_rounds: int = Field(default=40, description="stop after this many rounds without improvement on the purged early-stopping slice")
    device: str = Field(default="cpu", description="'cpu' or 'cuda'")
    nthread: int = Field(
        default=1,
        description="XGBoost threads; 1 by default: on 2 shared cores a second OpenMP thread was measured 10x slower under contention",
    )

    def params(self, settings: ExperimentSettings) -> dict[str, object]:
        values = {k: v for k, v in self.model_dump().items() if k in XGBoostConfig.model_fields}
        XGBoostModel(**values)  # validates every value, naming the bad ones
        if settings.quick:
            values["n_estimators"] = min(values["n_estimators"], 150)
            values["learning_rate"] = max(values["learning_rate"], 0.1)
        return {**values, "seed": settings.seed}


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
