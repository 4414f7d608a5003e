"""cpcv_fold_features makes the CPCV splits and each split's own feature selection once, before the
leaderboard; each family's {family}_cpcv_predictions step fits it on exactly those splits and refuses
ones made for another training window; the nested walk-forward table is read back only for the trials
the study chooses now; cpcv_paths recombines the pick's members'
stored split predictions into paths and refuses predictions that do not match the splits. The assets
are invoked directly on a small synthetic panel."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from plml_assets.defs.validation.assets import CPCV_PREDICTIONS, CPCVConfig, CPCVSplitConfig, CVSplitsConfig, cpcv_fold_features, cpcv_paths, cv_splits
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


def _refits(made, features, labels, settings=SETTINGS, family="xgboost"):
    """The family's {family}_cpcv_predictions step, invoked directly."""
    context = dg.build_asset_context(resources={"settings": settings})
    step = next(a for a in CPCV_PREDICTIONS if a.op.name == f"{family}_cpcv_predictions")
    return step(context, features=features, labels=labels, cpcv_fold_features=made, study=STUDIES[f"{family}_study"])


def test_the_refits_refuse_splits_made_for_another_training_window():
    made, features, labels = _fold_features()
    other = ExperimentSettings(horizon=5, holdout_days=90, profile="quick")  # a later holdout start: another window
    with pytest.raises(dg.Failure, match="re-materialize cpcv_fold_features"):  # bad input: fails fast, no retry
        _refits(made, features, labels, settings=other)
    with pytest.raises(dg.Failure, match="re-materialize cpcv_fold_features"):  # cpcv_paths checks it too
        _cpcv(made, features, labels, settings=other, predictions={"xgboost_cpcv_predictions": pd.DataFrame()})


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


def _cpcv(made, features, labels, settings=SETTINGS, prices=None, predictions=None):
    context = dg.build_asset_context(resources={"settings": settings})
    board = {"selection": {"winner": "xgboost"}, "table": []}
    if predictions is None:
        predictions = {"xgboost_cpcv_predictions": _refits(made, features, labels, settings).value}
    empty = {f"{f}_cpcv_predictions": pd.DataFrame() for f in ("lightgbm", "lstm", "gru")}
    return cpcv_paths(context, config=CPCVConfig(cost_bps=0.0), market_prices=prices if prices is not None else pd.DataFrame(), features=features, labels=labels,
                      model_leaderboard=board, cpcv_fold_features=made, **empty, **predictions, ensemble_model=NO_ENSEMBLE)


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


def test_the_refits_and_cpcv_paths_refuse_splits_selected_on_other_features_or_labels():
    made, features, labels = _fold_features()
    stored = _refits(made, features, labels).value
    changed = features.copy()
    changed.iloc[0, 0] += 1.0  # one value changed since the selections were made
    with pytest.raises(dg.Failure, match="other features or labels"):
        _refits(made, changed, labels)
    with pytest.raises(dg.Failure, match="other features or labels"):
        _cpcv(made, changed, labels, predictions={"xgboost_cpcv_predictions": stored})


def test_cpcv_paths_refuses_stored_predictions_that_do_not_match_the_splits():
    made, features, labels = _fold_features()
    stored = _refits(made, features, labels).value
    assert sorted(stored["split"].unique()) == list(range(1, len(made["columns"]) + 1))
    with pytest.raises(dg.Failure, match=r"xgboost_cpcv_predictions split 2 holds .* re-materialize xgboost_cpcv_predictions"):
        short = np.flatnonzero(stored["split"].to_numpy() == 2)[:3]  # three rows of split 2 lost (the same rows of other splits kept)
        _cpcv(made, features, labels, predictions={"xgboost_cpcv_predictions": stored.iloc[np.setdiff1d(np.arange(len(stored)), short)]})
    with pytest.raises(dg.Failure, match=r"holds splits \[1, 2, 3, 4, 5\], the splitter makes 6"):
        _cpcv(made, features, labels, predictions={"xgboost_cpcv_predictions": stored[stored["split"] < 6]})


def test_cpcv_paths_names_chosen_features_that_no_longer_exist():
    made, features, labels = _fold_features()
    legacy = {**made, "data_digest": None}  # as stored before the digest existed: the column check still guards
    renamed = features.rename(columns={c: f"{c}_v2" for c in features.columns})
    with pytest.raises(dg.Failure, match=r"no longer has: \['f"):
        _refits(legacy, renamed, labels)


def test_the_nested_refits_are_read_back_only_for_the_trials_the_study_chooses_now():
    from plml_assets.defs.backtest.assets import nested_predictions_table, stored_nested_predictions
    from plml_assets.defs.shared import training_window
    from plml_assets.lib.models.training import folds_from_assignments

    _, features, labels = _fold_features()
    X, y, _ = training_window(features, labels, SETTINGS)
    context = dg.build_asset_context(resources={"settings": SETTINGS})
    splits = cv_splits(context, config=CVSplitsConfig(), labels=labels).value
    wf = splits[splits["scheme"] == "walk_forward"]
    every = pd.DataFrame([{"scheme": "walk_forward", "fold": k, "feature": c, "rank": r}
                          for k in sorted(wf["fold"].unique()) for r, c in enumerate(features.columns, start=1)])
    table, made_how = nested_predictions_table("xgboost", STUDIES["xgboost_study"], X, y, splits, every, SETTINGS.horizon, lambda m: None)
    folds = folds_from_assignments(X, wf)
    assert made_how["fits_reused"] == 0 and list(table.columns) == ["fold", "prediction", "trial"] and (table["trial"] == -1).all()
    preds, fold, how = stored_nested_predictions(table, "xgboost", STUDIES["xgboost_study"], X, folds)
    assert len(preds) == sum(len(test) for _, test in folds) and preds.index.equals(fold.index) and preds.index.is_monotonic_increasing
    assert how == {"trials_used": [None] * len(folds), "nested": False}  # no trial records: the study's parameters on every fold
    assert made_how["trials_used"] == [None] * len(folds)
    with pytest.raises(ValueError, match=r"fold 1 was refitted with trial 7's parameters, xgboost_study now chooses trial None"):
        stored_nested_predictions(table.assign(trial=7), "xgboost", STUDIES["xgboost_study"], X, folds)
    lost = np.flatnonzero(table["fold"].to_numpy() == 2)[0]  # one test row of fold 2 missing
    with pytest.raises(ValueError, match=r"fold 2 holds .* re-materialize xgboost_study with xgboost_nested_predictions"):
        stored_nested_predictions(table.drop(table.index[lost]), "xgboost", STUDIES["xgboost_study"], X, folds)
