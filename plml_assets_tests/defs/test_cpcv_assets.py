"""cpcv_fold_features makes the CPCV splits and each split's own feature selection once, before the
leaderboard; cpcv_paths refits the pick on exactly those splits and refuses ones made for another
training window. The assets are invoked directly on a small synthetic panel."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from plml_assets.defs.validation.assets import CPCVConfig, CPCVSplitConfig, cpcv_fold_features, cpcv_paths
from plml_assets.lib.validation.splits import CombinatorialPurgedCV
from plml_assets.resources.settings import ExperimentSettings, SelectionSettings

DATES = pd.bdate_range("2016-01-01", periods=420, name="date")
SYMBOLS = [f"S{i:02d}" for i in range(12)]


def _panel(seed: int = 3):
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product([DATES, SYMBOLS], names=["date", "symbol"])
    features = pd.DataFrame(rng.normal(size=(len(index), 6)), index=index, columns=[f"f{i}" for i in range(6)]).astype("float32")
    labels = pd.DataFrame({"fwd_return_5d": 0.01 * features["f0"].to_numpy() + rng.normal(0, 0.02, len(index))}, index=index)
    return features, labels


SETTINGS = ExperimentSettings(horizon=5, holdout_days=60, profile="quick")
SELECTION = SelectionSettings(max_features=4, n_folds=2, n_estimators=10)


def _fold_features(settings=SETTINGS):
    features, labels = _panel()
    context = dg.build_asset_context(resources={"settings": settings, "selection": SELECTION})
    out = cpcv_fold_features(context, config=CPCVSplitConfig(), features=features, feature_recipes={"recipes": {}, "spec": {}},
                             labels=labels)
    return out.value, features, labels


def test_the_splits_and_their_selections_are_made_once_with_the_splitter_that_made_them():
    made, features, _ = _fold_features()
    assert made["splitter"]["n_groups"] == 4 and made["splitter"]["n_test_groups"] == 2  # quick profile: N=4
    assert len(made["columns"]) == math.comb(4, 2)
    assert all(1 <= len(c) <= 4 and set(c) <= set(features.columns) for c in made["columns"])
    assert made["train_dates"] == len(DATES) - SETTINGS.holdout_days - SETTINGS.horizon  # the holdout and its purge gap out
    # The same splitter rebuilt from the stored description gives the same number of splits.
    splitter = CombinatorialPurgedCV(**{k: made["splitter"][k] for k in ("n_groups", "n_test_groups", "horizon", "embargo")})
    assert splitter.n_splits == len(made["columns"])


def test_cpcv_paths_refuses_splits_made_for_another_training_window():
    made, features, labels = _fold_features()
    other = ExperimentSettings(horizon=5, holdout_days=90, profile="quick")  # a later holdout start: another window
    context = dg.build_asset_context(resources={"settings": other})
    board = {"selection": {"winner": "xgboost"}, "table": []}
    with pytest.raises(dg.Failure, match="re-materialize cpcv_fold_features"):  # bad input: fails fast, no retry
        cpcv_paths(context, config=CPCVConfig(), market_prices=pd.DataFrame(), features=features, labels=labels,
                   model_leaderboard=board, cpcv_fold_features=made,
                   **{f"{f}_study": {"params": {}} for f in ("xgboost", "lightgbm", "lstm", "gru")},
                   ensemble_model={"members": [], "methods": {}})
