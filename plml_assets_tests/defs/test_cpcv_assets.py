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


def _fold_features(settings=SETTINGS, panel=None):
    features, labels = panel or _panel()
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


STUDIES = {f"{f}_study": {"params": {"n_estimators": 20, "max_depth": 2, "learning_rate": 0.3, "seed": 0}}
           for f in ("xgboost", "lightgbm", "lstm", "gru")}
NO_ENSEMBLE = {"members": [], "methods": {}}


def _priced_panel(seed: int = 5):
    """Prices of random walks; labels their 5-day forward returns; f0 a noisy reading of the return a
    portfolio traded one day later earns (what the path backtests trade on), correlated with the label
    about 0.25, under the selection's leakage alarm (0.3); f1..f5 noise."""
    rng = np.random.default_rng(seed)
    log_ret = pd.DataFrame(rng.normal(0, 0.01, (len(DATES), len(SYMBOLS))), index=DATES, columns=SYMBOLS)
    close = 100.0 * np.exp(log_ret.cumsum())
    h = SETTINGS.horizon
    label = close.shift(-h) / close - 1.0
    traded = close.shift(-h - 1) / close.shift(-1) - 1.0
    f0 = (traded / traded.stack().std()).fillna(0.0) + rng.normal(0, 2.5, traded.shape)
    long = lambda wide: wide.stack().rename_axis(["date", "symbol"]).sort_index()  # noqa: E731
    features = pd.DataFrame({"f0": long(f0)})
    for i in range(1, 6):
        features[f"f{i}"] = rng.normal(size=len(features))
    features = features.astype("float32")
    labels = long(label).rename("fwd_return_5d").to_frame().dropna()
    features = features.loc[labels.index]
    prices = long(close).rename("close").to_frame()
    for col in ("open", "high", "low"):
        prices[col] = prices["close"]
    prices["volume"] = 1e6
    return features, labels, prices[["open", "high", "low", "close", "volume"]]


def _cpcv(made, features, labels, settings=SETTINGS, prices=None):
    context = dg.build_asset_context(resources={"settings": settings})
    board = {"selection": {"winner": "xgboost"}, "table": []}
    return cpcv_paths(context, config=CPCVConfig(cost_bps=0.0), market_prices=prices if prices is not None else pd.DataFrame(), features=features, labels=labels,
                      model_leaderboard=board, cpcv_fold_features=made, **STUDIES, ensemble_model=NO_ENSEMBLE)


def test_cpcv_paths_refits_the_pick_on_every_split_and_trades_every_path():
    features, labels, prices = _priced_panel()
    made, _, _ = _fold_features(panel=(features, labels))
    assert all("f0" in chosen for chosen in made["columns"])  # every split found the signal on its own rows
    out = _cpcv(made, features, labels, prices=prices)
    n_paths = math.comb(3, 1)  # C(N-1, k-1) with N=4, k=2
    assert list(out.value.columns) == [f"path_{p}" for p in range(1, n_paths + 1)]
    assert out.metadata["splits"].value == len(made["columns"]) and out.metadata["paths"].value == n_paths
    assert out.metadata["candidate"].value == "xgboost"
    assert out.metadata["split_rank_ic_mean"].value > 0.1  # f0 carries the label: every refit finds it
    assert out.metadata["path_sharpe_min"].value > 0  # and every path earns on it


def test_cpcv_paths_refuses_splits_selected_on_other_features_or_labels():
    made, features, labels = _fold_features()
    changed = features.copy()
    changed.iloc[0, 0] += 1.0  # one value changed since the selections were made
    with pytest.raises(dg.Failure, match="other features or labels"):
        _cpcv(made, changed, labels)


def test_cpcv_paths_names_chosen_features_that_no_longer_exist():
    made, features, labels = _fold_features()
    legacy = {**made, "data_digest": None}  # as stored before the digest existed: the column check still guards
    renamed = features.rename(columns={c: f"{c}_v2" for c in features.columns})
    with pytest.raises(dg.Failure, match=r"no longer has: \['f"):
        _cpcv(legacy, renamed, labels)
