"""The study assets on the real slice: budgets that resume, multi-objective output, bad config."""

from __future__ import annotations

import json

import dagster as dg
import pandas as pd
import pytest

from plml_assets.definitions import ASSETS, CHECKS
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets_tests.conftest import slice_resources

pytestmark = pytest.mark.slow
UPSTREAM = ["market_prices", "labels", "base_features", "features", "feature_recipes", "cv_splits", "cv_fold_features"]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    home = tmp_path_factory.mktemp("tuning_assets")
    (home / "dagster").mkdir()
    resources = slice_resources(home)
    with dg.instance_for_test(temp_dir=str(home / "dagster")) as instance:
        result = dg.materialize([*ASSETS, *CHECKS], resources=resources, instance=instance, selection=UPSTREAM)
        assert result.success
        yield home, resources, instance


def _study(prepared, family: str = "xgboost", **config):
    home, resources, instance = prepared
    run_config = {"ops": {f"{family}_study": {"config": config}}}
    result = dg.materialize([*ASSETS, *CHECKS], resources=resources, instance=instance, raise_on_error=False,
                            run_config=run_config, selection=[f"{family}_study"])
    out = json.loads((home / "assets" / f"{family}_study.json").read_text()) if result.success else None
    return result, out


def _failure(result) -> str:
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]  # config errors are not retried
    return str(failure.event_specific_data.error)


def test_a_study_budget_grows_by_resuming_the_same_study(prepared):
    first, out1 = _study(prepared, n_trials=2, study_name="grow")
    assert first.success and out1["counts"]["COMPLETE"] + out1["counts"]["PRUNED"] == 2
    second, out2 = _study(prepared, n_trials=4, study_name="grow")
    assert second.success
    assert sum(out2["ran_this_time"].values()) == 2  # only the missing trials ran
    assert out2["counts"]["COMPLETE"] + out2["counts"]["PRUNED"] == 4
    # The first trial is the enqueued default configuration, so the search is compared with it.
    assert out2["default_value"] is not None
    materialization = second.asset_materializations_for_node("xgboost_study")[0]
    assert materialization.metadata["trials_run_now"].value == 2
    assert "optimization_history" in materialization.metadata


def test_the_derived_study_name_changes_with_the_search_setup(prepared):
    _, a = _study(prepared, n_trials=0)
    _, b = _study(prepared, n_trials=0, metric="ic")
    assert a["study_name"] != b["study_name"] and a["study_name"].startswith("plml_test_model-xgboost-")
    assert a["tuned_params"] == {} and a["best_trial"] is None  # no search: the defaults are used
    assert a["params"]["max_depth"] == 5


def test_multi_objective_study_reports_its_pareto_front_and_pick_rule(prepared):
    home, resources, _ = prepared
    result, out = _study(prepared, n_trials=4, sampler="random", objectives=["rank_ic", "gap"], pick_bound=0.5,
                         study_name="pareto")
    assert result.success
    assert out["objectives"] == ["rank_ic", "gap"] and "gap <= 0.5" in out["pick_rule"]
    assert set(out["best_values"]) == {"rank_ic", "gap"}
    metadata = result.asset_materializations_for_node("xgboost_study")[0].metadata
    assert "pareto_front" in metadata
    registry: MlflowRegistry = resources["mlflow_registry"]
    artifacts = {a.path for a in registry.client().list_artifacts(out["mlflow_run_id"], "plots")}
    assert "plots/pareto_front.png" in artifacts
    trials = pd.read_csv(registry.client().download_artifacts(out["mlflow_run_id"], "trials.csv"))
    assert trials["picked"].sum() == 1 and {"rank_ic", "gap"} <= set(trials.columns)


@pytest.mark.parametrize(
    "config,message",
    [
        ({"fixed_params": "{max_depth: 3"}, "fixed_params is not valid JSON"),
        ({"fixed_params": '{"max_depth": 3}'}, "fixed_params ['max_depth'] are also in the search space"),
        ({"search_space": '{"max_depth": {"type": "int", "low": 9, "high": 2}}'}, "max_depth"),
        ({"scheme": "random_split"}, "scheme must be 'walk_forward' or 'kfold'"),
        ({"sampler": "grid", "n_trials": 1}, "grid"),
    ],
)
def test_bad_study_config_fails_at_once_naming_the_problem(prepared, config, message):
    result, _ = _study(prepared, **config)
    assert message in _failure(result)


def test_a_sequence_family_study_runs_on_the_same_folds(prepared):
    result, out = _study(prepared, family="gru", n_trials=1)
    assert result.success and out["family"] == "gru" and out["counts"]["COMPLETE"] == 1
    assert {"window", "hidden_size"} <= set(out["params"]) and out["params"]["max_epochs"] <= 3  # quick cap
