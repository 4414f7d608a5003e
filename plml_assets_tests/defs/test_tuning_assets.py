"""The study assets on the real slice: budgets that resume, multi-objective output, bad config."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from plml_assets.definitions import ASSETS, CHECKS
from plml_assets.lib import tuning
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.optuna_storage import OptunaStorage
from plml_assets_tests.conftest import PLML_ENV_VARS, slice_resources

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


def _study_and_nested(prepared, family: str, **config):
    """The study step with both its outputs selected: (study summary, nested table, nested metadata,
    the same table refitted from scratch, the walk-forward test rows)."""
    from plml_assets.defs.backtest.assets import nested_predictions_table
    from plml_assets.defs.shared import training_window
    from plml_assets.resources.io import load_stored

    home, resources, instance = prepared
    result = dg.materialize([*ASSETS, *CHECKS], resources=resources, instance=instance, run_config={"ops": {f"{family}_study": {"config": config}}},
                            selection=[f"{family}_study", f"{family}_nested_predictions"])
    assert result.success
    study = load_stored(f"{family}_study", home / "assets")
    nested = load_stored(f"{family}_nested_predictions", home / "assets")
    metadata = result.asset_materializations_for_node(f"{family}_study")
    metadata = next(m.metadata for m in metadata if m.asset_key.to_user_string() == f"{family}_nested_predictions")
    X, y, _ = training_window(load_stored("features", home / "assets"), load_stored("labels", home / "assets"), resources["settings"])
    refit, how = nested_predictions_table(family, study, X, y, load_stored("cv_splits", home / "assets"),
                                          load_stored("cv_fold_features", home / "assets"), resources["settings"].horizon, lambda m: None)
    assert how["fits_reused"] == 0
    return study, nested, metadata, refit


def test_the_nested_walk_forward_predictions_reuse_the_studys_own_fits_and_equal_a_refit(prepared):
    """Every fold's chosen trial ran in this step on that fold (same parameters, rows, features): its kept
    test predictions are the nested ones, exactly what refitting the trial gives (trees are deterministic)."""
    study, nested, metadata, refit = _study_and_nested(prepared, "xgboost", n_trials=3, study_name="nested-reuse", sampler="random")
    folds = int(nested["fold"].nunique())
    assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == 3 and folds >= 3
    assert metadata["fits_reused"].value == folds  # no refit at all
    assert metadata["trials_used"].value[0] == study["trials"][0]["number"]  # fold 1: the first trial
    pd.testing.assert_frame_equal(nested.sort_index(), refit.sort_index(), check_exact=True)
    # Resumed later in another step, the trials are no longer fitted here: every fold is refitted, to the same values.
    again, renested, metadata, _ = _study_and_nested(prepared, "xgboost", n_trials=3, study_name="nested-reuse", sampler="random")
    assert sum(again["ran_this_time"].values()) == 0 and metadata["fits_reused"].value == 0
    pd.testing.assert_frame_equal(renested.sort_index(), nested.sort_index(), check_exact=True)


def test_the_nested_predictions_alone_are_refused_since_the_study_step_makes_both(prepared):
    home, resources, instance = prepared
    result = dg.materialize([*ASSETS, *CHECKS], resources=resources, instance=instance, raise_on_error=False,
                            selection=["xgboost_nested_predictions"])
    assert "xgboost_nested_predictions is made by the xgboost_study step together with xgboost_study: select both" in _failure(result)
    assert not list(result.get_asset_materialization_events())


def test_a_sequence_family_study_runs_on_the_same_folds_and_its_nested_fits_are_reused(prepared):
    study, nested, metadata, refit = _study_and_nested(prepared, "gru", n_trials=1)
    assert study["family"] == "gru" and study["counts"]["COMPLETE"] == 1
    assert {"window", "hidden_size"} <= set(study["params"]) and study["params"]["max_epochs"] <= 3  # quick cap
    assert metadata["fits_reused"].value == nested["fold"].nunique()
    # The same seeded fit on CPU: equal up to float32 batch arithmetic (the study scored test and in-sample rows together).
    both = nested.join(refit, rsuffix="_refit", how="outer")
    assert both.notna().all().all() and (both["trial"] == both["trial_refit"]).all()
    np.testing.assert_allclose(both["prediction"], both["prediction_refit"], rtol=0, atol=1e-5)


# ---- `plml worker`: more processes on the asset's study, one of them killed --------------------
def _worker(study: str, storage: str, asset_dir: Path, *extra: str) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in PLML_ENV_VARS}
    env["PLML_ASSET_DIR"] = str(asset_dir)
    return subprocess.Popen([str(Path(sys.executable).parent / "plml"), "worker", "--study", study, "--storage", storage,
                             "--heartbeat-s", "1", "--json", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def test_plml_workers_share_the_assets_postgresql_study_and_a_killed_ones_trial_is_failed_and_replaced(prepared, fresh_postgres_url):
    """The study asset starts the study on PostgreSQL; two `plml worker` processes join it with a larger
    budget; one is killed (SIGKILL) in the middle of a trial. Its trial stays RUNNING until its heartbeat
    goes stale, then the next worker to start a trial marks it FAIL, and a replacement worker (what the
    Kubernetes Job does for a dead pod) finishes the budget: exactly the budget of finished trials, each
    trial number once, and the asset, re-materialized, sees every worker's trials and runs none again."""
    home, resources, instance = prepared
    resources = {**resources, "optuna_storage": OptunaStorage(url=fresh_postgres_url)}
    # Every trial runs its whole round budget (no early stopping), so a trial lasts long enough for
    # the poll below to see it RUNNING and kill its worker mid-trial (with early stopping after 20
    # idle rounds a trial took 0.7 s and the worker could finish unseen on a loaded machine).
    run_config = {"ops": {"xgboost_study": {"config": {"n_trials": 1, "fixed_params": '{"early_stopping_rounds": 0}'}}}}
    first = dg.materialize([*ASSETS, *CHECKS], resources=resources, instance=instance, run_config=run_config, selection=["xgboost_study"])
    name = first.asset_materializations_for_node("xgboost_study")[0].metadata["study_name"].value
    budget = 6
    workers = [_worker(name, fresh_postgres_url, home / "assets", "--n-trials", str(budget), "--worker-index", str(k)) for k in (1, 2)]
    try:
        deadline, killed = time.monotonic() + 180, None
        while killed is None and time.monotonic() < deadline:
            assert workers[0].poll() is None, workers[0].stdout.read()[-3000:]
            running = [t for t in optuna.load_study(study_name=name, storage=fresh_postgres_url).get_trials()
                       if t.state == TrialState.RUNNING and f":{workers[0].pid}:" in t.user_attrs.get("worker", "")]
            if running:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed = running[0].number
            time.sleep(0.05)
        assert killed is not None, "worker 1 never ran a trial"
        workers[0].wait(timeout=30)
        study = optuna.load_study(study_name=name, storage=fresh_postgres_url)
        dead = next(w for w in tuning.worker_progress(study) if f":{workers[0].pid}:" in w["worker"])
        # Nobody has failed the trial yet unless its heartbeat already went stale (3 s): then the
        # other worker failed it first, which the end state below checks either way.
        if dead["running"] is not None:
            assert dead["running"] == killed and dead["heartbeat_age_s"] is not None and dead["heartbeat_age_s"] >= 0
        out = workers[1].communicate(timeout=300)[0]
        assert workers[1].returncode == 0, out[-3000:]
        replacement = _worker(name, fresh_postgres_url, home / "assets", "--n-trials", str(budget), "--worker-index", "3")
        out3 = replacement.communicate(timeout=300)[0]
        assert replacement.returncode == 0, out3[-3000:]
    finally:
        for p in workers:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    trials = optuna.load_study(study_name=name, storage=fresh_postgres_url).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == budget
    assert trials[killed].state == TrialState.FAIL and not trials[killed].user_attrs.get("over_budget")
    assert [t.number for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get("over_budget")] == [killed]
    assert len({t.number for t in trials}) == len(trials)
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    assert "budget 6 trials" in out and json.loads(out.strip().splitlines()[-1])["trials_by_this_worker"] >= 1
    # The asset with the same budget sees the workers' trials and runs none of its own.
    again = dg.materialize([*ASSETS, *CHECKS], resources=resources, instance=instance, selection=["xgboost_study"],
                           run_config={"ops": {"xgboost_study": {"config": {"n_trials": budget, "fixed_params": '{"early_stopping_rounds": 0}'}}}})
    metadata = again.asset_materializations_for_node("xgboost_study")[0].metadata
    assert metadata["study_name"].value == name and metadata["trials_run_now"].value == 0
    assert metadata["trials_complete"].value + metadata["trials_pruned"].value == budget
    # The asset's own process, the killed worker and worker 2 at least (the replacement only if trials were left).
    progress = {w["worker"]: w for w in metadata["workers"].value}
    assert len(progress) >= 3 and sum(w["finished"] for w in progress.values()) == budget
    assert [w["failed"] for w in progress.values() if f":{workers[0].pid}:" in w["worker"]] == [1]
    # training_analytics reads the same table from the run (plml analytics prints it).
    from plml_assets.defs.analytics.report import distributed_work

    assert len(distributed_work(instance, again.run_id)["xgboost_study"]["study_workers"]) == len(progress)


def test_a_worker_is_refused_for_an_unknown_study_or_one_no_asset_started(prepared, tmp_path):
    home, _, _ = prepared
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    optuna.create_study(study_name="handmade", storage=storage)
    unknown = _worker("nope", storage, home / "assets")
    assert unknown.wait(timeout=120) == 2 and "no study 'nope'" in unknown.stdout.read()
    handmade = _worker("handmade", storage, home / "assets")
    assert handmade.wait(timeout=120) == 2 and "not started by a plml <family>_study asset" in handmade.stdout.read()


def test_declared_monotone_constraints_are_a_searched_choice_of_a_booster_study(prepared):
    """Issue 16 item 4: a feature declared monotone in the study's config becomes a categorical
    trial parameter (none, or the declaration), the unconstrained default enqueued first; with
    monotone_search off it is fixed on. Unknown features and non-booster families are refused."""
    home, resources, _ = prepared
    feature = pd.read_parquet(home / "assets" / "features.parquet").columns[0]
    declared = json.dumps({feature: 1})
    result, out = _study(prepared, n_trials=3, sampler="random", monotone_constraints=declared, study_name="monotone")
    assert result.success, _failure(result)
    study = optuna.load_study(study_name="monotone", storage=resources["optuna_storage"].storage())
    first = study.trials[0]
    assert first.params["monotone_constraints"] == ""
    assert first.distributions["monotone_constraints"].choices == ("", json.dumps({feature: 1}, sort_keys=True))
    assert out["params"]["monotone_constraints"] in ("", json.dumps({feature: 1}, sort_keys=True))
    result, out = _study(prepared, n_trials=1, monotone_constraints=declared, monotone_search=False, study_name="monotone_fixed")
    assert result.success and out["params"]["monotone_constraints"] == json.dumps({feature: 1}, sort_keys=True)
    unknown, _ = _study(prepared, n_trials=1, monotone_constraints='{"no_such_feature": -1}')
    assert "monotone_constraints name feature(s) ['no_such_feature']" in _failure(unknown)
    net, _ = _study(prepared, "lstm", n_trials=1, monotone_constraints=declared)
    assert "monotone_constraints apply to the boosters ['xgboost', 'lightgbm'], not to lstm" in _failure(net)


def test_a_study_on_password_bearing_stores_records_the_password_nowhere(prepared, monkeypatch):
    """Issue 18 item 1, inside a run: the Optuna storage, the MLflow store and the Dagster instance on
    the local PostgreSQL with URLs that carry a password, given the way a deployment gives them (the
    environment). The study asset's event log (every message and metadata entry), its metadata, the
    MLflow run's params, tags and study record, and a `plml worker` on that study show the URLs masked
    and the password nowhere."""
    from dagster._serdes import serialize_value
    from mlflow.tracking import MlflowClient

    from plml_assets_tests.conftest import fresh_postgres_database

    home, resources, _ = prepared
    secret = "Zq8-s3cr3t-pw"
    with fresh_postgres_database() as optuna_db, fresh_postgres_database() as mlflow_db, fresh_postgres_database() as dagster_db:
        if optuna_db is None:
            pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable")

        def with_pw(url: str) -> str:
            return url.replace("@", f":{secret}@", 1)

        monkeypatch.setenv("PLML_OPTUNA_STORAGE", with_pw(optuna_db))
        monkeypatch.setenv("PLML_MLFLOW_TRACKING_URI", with_pw(mlflow_db))
        stores = {**resources, "optuna_storage": OptunaStorage(), "mlflow_registry": MlflowRegistry(model_name="plml_test_model")}
        overrides = {"storage": {"postgres": {"postgres_url": with_pw(dagster_db).replace("postgresql://", "postgresql+psycopg2://", 1)}}}
        (home / "dagster_pw").mkdir(exist_ok=True)
        with dg.instance_for_test(temp_dir=str(home / "dagster_pw"), overrides=overrides) as instance:
            result = dg.materialize([*ASSETS, *CHECKS], resources=stores, instance=instance, selection=["xgboost_study"],
                                    run_config={"ops": {"xgboost_study": {"config": {"n_trials": 2}}}})
            assert result.success
            metadata = result.asset_materializations_for_node("xgboost_study")[0].metadata
            assert metadata["storage"].value == optuna_db.replace("@", ":***@", 1)
            logs = instance.all_logs(result.run_id)
            assert len(logs) > 10 and any("storage" in (r.user_message or "") for r in logs)
            leaked = [r.user_message[:200] for r in logs if secret in serialize_value(r)]
            assert not leaked, leaked
        client = MlflowClient(tracking_uri=with_pw(mlflow_db))
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        assert runs, "the study logged no MLflow run"
        for run in runs:
            assert secret not in repr(run.data.params) + repr(run.data.tags), run.info.run_id
            study_record = client.download_artifacts(run.info.run_id, "study.json", str(home / f"dl_{run.info.run_id}"))
            assert secret not in Path(study_record).read_text()
        env = {k: v for k, v in os.environ.items() if k not in PLML_ENV_VARS}
        env.update(PLML_ASSET_DIR=str(home / "assets"), PLML_OPTUNA_STORAGE=with_pw(optuna_db))
        worker = subprocess.run([str(Path(sys.executable).parent / "plml"), "worker", "--study", metadata["study_name"].value,
                                 "--n-trials", "3", "--json"], env=env, capture_output=True, text=True, timeout=300)
        assert worker.returncode == 0, worker.stdout[-2000:] + worker.stderr[-2000:]
        assert optuna_db.replace("@", ":***@", 1) in worker.stdout
        assert secret not in worker.stdout + worker.stderr


def test_a_study_asset_on_a_damaged_optuna_file_sets_it_aside_and_starts_afresh(prepared):
    """Issue 18 item 5 through the asset: the optuna.db the studies share is overwritten on disk; the
    next study step warns, naming the set-aside file, and runs its whole budget in a fresh file.
    (Last in this module: it replaces the module's shared optuna.db.)"""
    home, _, instance = prepared
    first, _ = _study(prepared, n_trials=2, study_name="damaged")
    assert first.success
    db = home / "optuna.db"
    db.write_bytes(b"\0" * 100 + db.read_bytes()[100:])
    again, out = _study(prepared, n_trials=2, study_name="damaged")
    assert again.success, _failure(again)
    assert sum(out["ran_this_time"].values()) == 2  # afresh: the damaged file's trials are not counted
    (aside,) = home.glob("optuna.db.damaged-*")
    warnings = [r.user_message for r in instance.all_logs(again.run_id) if "was damaged" in (r.user_message or "")]
    assert len(warnings) == 1 and str(aside) in warnings[0], warnings
