"""Data-parallel boosting on a real Dask LocalCluster (2 worker processes on loopback).

The distributed fit is the local fit's algorithm: on features whose values fall into fewer bins than
the boosters' histograms hold (here the embedded panel's real features binned to 64 levels on the
training rows, as rank-like features are), both boosters build the same bins on every worker and the
model is the local one: same holdout rank IC within 0.005, predictions correlated > 0.999. On
continuous features each worker's quantile sketch differs a little, so the trees do too (measured in
docs/benchmarks.md); the model contract (class, features, saving, the asset's registry output) is the
same either way."""

from __future__ import annotations

import json

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from plml_assets.definitions import ASSETS, CHECKS
from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.features.base import build_features
from plml_assets.lib.features.scaling import bin_by_training_quantiles
from plml_assets.lib.models.distributed import early_stopping_round, validation_curve
from plml_assets.lib.models.registry import load_model, resolve_params
from plml_assets.lib.models.training import design_matrix, early_stopping_split, excess_returns, fit_model, holdout_split
from plml_assets.lib.validation.metrics import evaluate_predictions
from plml_assets.resources.dask import DaskResource
from plml_assets_tests.conftest import slice_resources

pytestmark = pytest.mark.slow
HORIZON = 5
COLUMNS = 20


@pytest.fixture(scope="module")
def cluster():
    import distributed  # a test dependency (pyproject [test])

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as local, distributed.Client(local) as client:
        yield local, client


@pytest.fixture(scope="module")
def data(embedded_panel):
    prices = embedded_panel.loc["2000-01-01":"2012-12-31"]
    features, _ = build_features(prices)
    y = excess_returns(forward_returns(prices, horizon=HORIZON))
    split = holdout_split(y, holdout_days=250, horizon=HORIZON)
    columns = list(features.columns[:COLUMNS])
    X_train, y_train = design_matrix(features, y, columns, split.train_dates)
    X_hold, y_hold = design_matrix(features, y, columns, split.holdout_dates)
    X_train, X_hold = bin_by_training_quantiles(X_train, X_hold)
    return X_train, y_train, X_hold, y_hold


def _holdout_rank_ic(model, X_hold, y_hold) -> float:
    return evaluate_predictions(y_hold.to_numpy(), model.predict(X_hold), X_hold.index.get_level_values("date"))["rank_ic"]


@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
def test_dask_training_is_the_local_fit_and_keeps_the_model_contract(family, data, cluster, tmp_path):
    X_train, y_train, X_hold, y_hold = data
    # Row subsampling is per worker on a cluster; every row is used here so the two fits can agree.
    params = {**resolve_params(family, quick=True, seed=0), "subsample": 1.0}
    local, _ = fit_model(family, params, X_train, y_train, HORIZON)
    on_dask, _ = fit_model(family, params, X_train, y_train, HORIZON, dask_client=cluster[1])
    assert type(on_dask) is type(local) and on_dask.feature_names_ == local.feature_names_
    assert on_dask.target_clip_ == local.target_clip_  # the same recipe: clipping on the fitting rows
    assert on_dask.best_iteration_ == local.best_iteration_  # the same early stopping on the same rows
    ic_local, ic_dask = _holdout_rank_ic(local, X_hold, y_hold), _holdout_rank_ic(on_dask, X_hold, y_hold)
    assert abs(ic_local - ic_dask) <= 0.005, (family, ic_local, ic_dask)
    assert np.corrcoef(local.predict(X_hold), on_dask.predict(X_hold))[0, 1] > 0.999
    on_dask.save(tmp_path / family)  # saved and loaded as every model is (the pyfunc loads it so)
    np.testing.assert_allclose(load_model(family, tmp_path / family).predict(X_hold), on_dask.predict(X_hold), rtol=1e-6)


def test_the_lightgbm_stopping_rule_picks_the_round_a_local_early_stop_keeps(data):
    curve = [5.0, 4.0, 3.0, 3.5, 3.6, 3.7, 2.0]  # a later dip after 3 rounds without improvement
    assert early_stopping_round(curve, patience=3) == 2  # stopped at round 5: the dip is never seen
    assert early_stopping_round(curve, patience=10) == 6
    assert early_stopping_round(curve, patience=0) == 6  # 0: no early stopping, the last round
    assert early_stopping_round([3.0, 1.0, 2.0], patience=0) == 2  # the last round even when an earlier one was better
    # The curve computed from the trees is LightGBM's own validation l2 on the stopping rows of a local fit.
    X_train, y_train, _, _ = data
    model, _ = fit_model("lightgbm", {**resolve_params("lightgbm", quick=True, seed=0), "early_stopping_rounds": 0,
                                      "n_estimators": 30}, X_train, y_train, HORIZON)
    _, stop = early_stopping_split(X_train.index.get_level_values("date").to_numpy(), HORIZON)
    mine = validation_curve(model.booster_, X_train[stop].to_numpy(dtype="float32"), y_train[stop].clip(*model.target_clip_).to_numpy())
    np.testing.assert_allclose(mine, model.history_["valid"]["l2"], rtol=1e-5)


UPSTREAM = ["market_prices", "labels", "base_features", "features", "feature_recipes", "cv_splits", "cv_fold_features",
            "feature_selection"]


def test_the_model_asset_trains_on_the_configured_cluster_and_says_so(cluster, tmp_path):
    """xgboost_model with a DaskResource on the LocalCluster's scheduler: metadata and MLflow say where
    it trained, and the registered pyfunc scores the holdout as the asset did (the registry contract)."""
    home = tmp_path / "home"
    (home / "dagster").mkdir(parents=True)
    resources = slice_resources(home)
    run_config = {"ops": {"xgboost_study": {"config": {"n_trials": 0}}}}
    selection = [*UPSTREAM, "xgboost_study", "xgboost_cv_results", "xgboost_oof_predictions", "xgboost_model", "xgboost_holdout_predictions"]
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        local = dg.materialize([*ASSETS, *CHECKS], resources=resources, instance=instance, selection=selection, run_config=run_config)
        on_dask = dg.materialize([*ASSETS, *CHECKS], resources={**resources, "dask": DaskResource(scheduler_address=cluster[0].scheduler_address)},
                                 instance=instance, selection=["xgboost_model", "xgboost_holdout_predictions"])
        from plml_assets.defs.analytics.report import distributed_work

        work = distributed_work(instance, on_dask.run_id)["xgboost_training"]  # what training_analytics reports
        assert work["trained_on"] == "dask: 2 workers" and work["dask_tasks"] > 0
    meta_local = local.asset_materializations_for_node("xgboost_training")[0].metadata
    meta = next(m.metadata for m in on_dask.asset_materializations_for_node("xgboost_training") if "trained_on" in m.metadata)
    assert meta_local["trained_on"].value == "local" and meta["trained_on"].value == "dask: 2 workers"
    assert "dask_tasks" not in meta_local and meta["dask_tasks"].value > 0 and meta["dask_compute_s"].value > 0
    assert len(meta["dask_workers"].value) == 2  # both workers ran tasks of the fit
    stored = json.loads((home / "assets" / "xgboost_model.json").read_text())
    assert stored["trained_on"] == "dask: 2 workers"
    holdout = pd.read_parquet(home / "assets" / "xgboost_holdout_predictions.parquet")
    registry = resources["mlflow_registry"]
    with registry.tracking():
        pyfunc = mlflow.pyfunc.load_model(meta["model_uri"].value)
    assert pyfunc is not None and len(holdout) > 0
    # Both fits score the same holdout; how close they are is reported, not bounded (continuous
    # features and row subsampling: see the module docstring).
    print(f"holdout rank IC local {meta_local['holdout_rank_ic'].value:.4f}, dask {meta['holdout_rank_ic'].value:.4f}")


@pytest.mark.timeout(300)
def test_a_fit_on_one_client_does_not_hang_while_another_client_is_current(data, cluster):
    """xgboost.dask waits on its data through the current client: with a second client opened later in
    the process (it becomes the current one), a fit on the first used to wait for ever."""
    import distributed

    X_train, y_train, _, _ = data
    params = {**resolve_params("xgboost", quick=True, seed=0), "n_estimators": 5}
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as other, distributed.Client(other):
        model, _ = fit_model("xgboost", params, X_train, y_train, HORIZON, dask_client=cluster[1])
    assert model.n_rounds_ >= 1
