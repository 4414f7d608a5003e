"""Fast TreeSHAP v2 (lib/explain/treeshap.py) gives the boosters' own TreeSHAP values: compared
with XGBoost's ``pred_contribs`` and LightGBM's ``pred_contrib`` on real fitted boosters, over data
with missing values, values equal to split thresholds, features split on twice on one path and
trees without a split; and where its tables do not serve (DART, too large) the library's own runs."""

from __future__ import annotations

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
import xgboost as xgb

from plml_assets.lib.explain import treeshap
from plml_assets.lib.models.registry import make_model

NAMES = [f"f{i}" for i in range(8)]


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(3)
    X = rng.normal(size=(3000, len(NAMES))).astype("float32")
    X[:, 2] = np.round(X[:, 2] * 2)  # few distinct values: rows sit exactly on split thresholds
    X[:, 3] = np.where(rng.random(len(X)) < 0.3, 0.0, X[:, 3])  # zeros, for LightGBM's zero_as_missing
    X[rng.random(X.shape) < 0.05] = np.nan
    clean = np.nan_to_num(X)
    # f0 twice on many paths (a hump), an interaction, a step on the discrete feature
    y = np.sin(2 * clean[:, 0]) + clean[:, 1] * (clean[:, 2] > 0) + 0.3 * clean[:, 2] + 0.3 * rng.normal(size=len(X))
    return X, y.astype("float32")


def _xgb_native(booster, X, rounds):
    return booster.predict(xgb.DMatrix(X, feature_names=NAMES), pred_contribs=True, iteration_range=(0, rounds))


@pytest.mark.parametrize("params", [{"max_depth": 6}, {"max_depth": 3, "subsample": 0.7, "colsample_bynode": 0.5}])
def test_xgboost_values_are_pred_contribs(data, params):
    X, y = data
    booster = xgb.train({"eta": 0.1, "nthread": 1, "seed": 0, **params}, xgb.DMatrix(X, label=y, feature_names=NAMES), 60)
    trees = treeshap.xgboost_trees(booster, 50, NAMES)  # the first 50 of 60 rounds, as iteration_range would
    assert trees is not None and len(trees.tree_start) == 50
    fast = treeshap.fast_contributions(trees, X, threads=2)
    native = _xgb_native(booster, X, 50)
    # XGBoost accumulates its values in float32
    np.testing.assert_allclose(fast, native[:, :-1], atol=2e-5 * np.abs(native).max())
    margin = booster.predict(xgb.DMatrix(X, feature_names=NAMES), output_margin=True, iteration_range=(0, 50))
    np.testing.assert_allclose(fast.sum(axis=1) + native[:, -1], margin, atol=1e-4)


@pytest.mark.parametrize("params", [{}, {"zero_as_missing": True}, {"use_missing": False}, {"max_depth": 3, "num_leaves": 8}])
def test_lightgbm_values_are_pred_contrib(data, params):
    X, y = data
    booster = lgb.train({"learning_rate": 0.1, "num_leaves": 31, "num_threads": 1, "verbose": -1, "seed": 0,
                         "min_data_in_leaf": 5, **params}, lgb.Dataset(X, label=y, feature_name=NAMES), 60)
    trees = treeshap.lightgbm_trees(booster, 45, NAMES)
    assert trees is not None
    fast = treeshap.fast_contributions(trees, X, threads=1)
    native = booster.predict(X, num_iteration=45, pred_contrib=True)
    np.testing.assert_allclose(fast, native[:, :-1], rtol=1e-9, atol=1e-12)


def test_results_do_not_depend_on_threads_and_stumps_only_move_the_base(data):
    X, y = data
    # A first round that cannot split (min_child_weight above the data's total hessian), then real trees.
    booster = xgb.train({"eta": 0.1, "nthread": 1, "min_child_weight": 1e9}, xgb.DMatrix(X, label=y, feature_names=NAMES), 1)
    booster = xgb.train({"eta": 0.1, "nthread": 1, "max_depth": 4, "min_child_weight": 1}, xgb.DMatrix(X, label=y, feature_names=NAMES), 20,
                        xgb_model=booster)
    trees = treeshap.xgboost_trees(booster, 21, NAMES)
    assert len(trees.tree_start) == 20  # the stump has no split: nothing to attribute
    one, two = treeshap.fast_contributions(trees, X, threads=1), treeshap.fast_contributions(trees, X, threads=2)
    np.testing.assert_array_equal(one, two)
    native = _xgb_native(booster, X, 21)
    np.testing.assert_allclose(one, native[:, :-1], atol=2e-5 * np.abs(native).max())


def test_unsupported_trees_fall_back_to_the_librarys_own(data, monkeypatch):
    X, y = data
    dart = xgb.train({"booster": "dart", "nthread": 1, "rate_drop": 0.1}, xgb.DMatrix(X, label=y, feature_names=NAMES), 10)
    assert treeshap.xgboost_trees(dart, 10, NAMES) is None
    calls = []

    def native(rows):
        calls.append(len(rows))
        return _xgb_native(dart, rows, 10)

    out = treeshap.tree_contributions("xgboost", dart, 10, NAMES, X, native, min_tree_rows=0)
    assert calls == [len(X)]
    np.testing.assert_array_equal(out, _xgb_native(dart, X, 10))
    # Tables over the memory cap: the library's own too.
    gbtree = xgb.train({"nthread": 1, "max_depth": 4}, xgb.DMatrix(X, label=y, feature_names=NAMES), 10)
    monkeypatch.setattr(treeshap, "MAX_TABLE_ENTRIES", 10)
    assert treeshap.xgboost_trees(gbtree, 10, NAMES) is None


@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
def test_the_models_use_the_fast_path_on_large_inputs_with_the_same_values(data, family, monkeypatch):
    X, y = data
    index = pd.MultiIndex.from_product([pd.bdate_range("2021-01-01", periods=150), [f"S{i:02d}" for i in range(20)]],
                                       names=["date", "symbol"])
    frame = pd.DataFrame(np.nan_to_num(X), index=index, columns=NAMES)
    model = make_model(family, n_estimators=40, seed=0).fit((frame, pd.Series(y, index=index)))
    native = model.contributions(frame)  # 3,000 rows x <= 40 trees: under the threshold, the library's own
    used = []
    real = treeshap.fast_contributions
    monkeypatch.setattr(treeshap, "fast_contributions", lambda *a, **k: used.append(1) or real(*a, **k))
    monkeypatch.setattr(treeshap, "FAST_MIN_TREE_ROWS", 1)
    fast = model.contributions(frame, threads=2)
    assert used, "the fast path was not taken"
    assert list(fast.columns) == list(native.columns) and fast.index.equals(native.index)
    np.testing.assert_allclose(fast.to_numpy(), native.to_numpy(), atol=2e-5 * np.abs(native.to_numpy()).max())
    np.testing.assert_allclose(fast.sum(axis=1).to_numpy(), model.predict(frame), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("table_max_d", [0, 3, treeshap.TABLE_MAX_D])
def test_deep_leaves_computed_directly_give_the_same_values(data, table_max_d, monkeypatch):
    """LightGBM's leaf-wise trees put more distinct features on a path than a 2^d table should hold:
    those leaves are computed per row from their polynomial (all of them with 0, some with 3)."""
    X, y = data
    booster = lgb.train({"learning_rate": 0.1, "num_leaves": 63, "num_threads": 1, "verbose": -1, "seed": 0,
                         "min_data_in_leaf": 3}, lgb.Dataset(X, label=y, feature_name=NAMES), 30)
    monkeypatch.setattr(treeshap, "TABLE_MAX_D", table_max_d)
    trees = treeshap.lightgbm_trees(booster, 30, NAMES)
    direct = int((trees.leaf_offset < 0).sum())
    assert (direct == len(trees.leaf_d)) if table_max_d == 0 else (0 < direct < len(trees.leaf_d)) if table_max_d == 3 else True
    fast = treeshap.fast_contributions(trees, X, threads=2)
    native = booster.predict(X, num_iteration=30, pred_contrib=True)
    np.testing.assert_allclose(fast, native[:, :-1], rtol=1e-9, atol=1e-11)
    xgb_booster = xgb.train({"eta": 0.1, "nthread": 1, "max_depth": 7}, xgb.DMatrix(X, label=y, feature_names=NAMES), 20)
    xgb_trees = treeshap.xgboost_trees(xgb_booster, 20, NAMES)
    native = _xgb_native(xgb_booster, X, 20)
    np.testing.assert_allclose(treeshap.fast_contributions(xgb_trees, X, threads=1), native[:, :-1], atol=2e-5 * np.abs(native).max())


def test_the_kernel_runs_on_numbas_own_thread_pool(data):
    """Not OpenMP: numba's 'omp' layer left threads that slowed torch's own OpenMP in the same process
    (the explanations step explains the nets after the trees)."""
    import os

    import numba

    X, y = data
    booster = xgb.train({"nthread": 1, "max_depth": 3}, xgb.DMatrix(X, label=y, feature_names=NAMES), 5)
    treeshap.fast_contributions(treeshap.xgboost_trees(booster, 5, NAMES), X, threads=2)
    expected = os.environ.get("NUMBA_THREADING_LAYER", "workqueue")
    assert numba.threading_layer() == expected
