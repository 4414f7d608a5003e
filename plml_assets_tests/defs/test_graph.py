"""The whole asset graph, in process, on a small real slice (8 symbols, 2006-2013), real MLflow store."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from plml_assets.definitions import ASSETS, CHECKS
from plml_assets.defs.registry.assets import score_holdout
from plml_assets.defs.shared import split_for
from plml_assets.lib.comparison.leaderboard import nested_walk_forward
from plml_assets.lib.ensemble.combine import METHODS
from plml_assets.lib.validation.metrics import per_date_ic
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets_tests.conftest import PLML_ENV_VARS, SLICE_SYMBOLS, fresh_postgres_database, postgres_url, slice_resources

pytestmark = pytest.mark.slow


FAMILIES = ("xgboost", "lightgbm", "lstm", "gru", "elastic_net")
ALL_KEYS = [k.to_user_string() for a in ASSETS for k in a.keys]
# Tests about the registry re-run the XGBoost chain, the ensembles and the leaderboard; the other
# families' outputs are then read from the first run's storage (the whole graph runs once, in first_run).
XGBOOST_CHAIN = [k for k in ALL_KEYS if not k.startswith(("lightgbm_", "lstm_", "gru_"))
                 and k not in ("model_comparison", "feature_importance", "xgboost_fold_importances", "feature_generation_report",
                               "shap_values", "shap_summary", "automl_study")]


def _materialize(resources, instance, run_config=None, selection=None):
    return dg.materialize(
        [*ASSETS, *CHECKS], resources=resources, instance=instance, raise_on_error=False, run_config=run_config,
        selection=selection,
    )


@pytest.fixture(scope="module")
def graph_home(tmp_path_factory):
    """One whole-graph run shared by the tests that read it, in the order they are written: the first
    only reads, the second re-runs the XGBoost chain, the third re-runs the registry against a bad
    champion, the last feeds newer prices (a whole-graph run costs minutes on 2 cores)."""
    home = tmp_path_factory.mktemp("graph") / "plml_home"
    (home / "dagster").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLML_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        for var in PLML_ENV_VARS:
            mp.delenv(var, raising=False)
        # The Dagster instance on the local PostgreSQL (a fresh database, dagster-postgres as
        # deploy/dagster-postgres.yaml configures it) wherever one answers, as in CI; SQLite otherwise.
        with fresh_postgres_database() as pg:
            overrides = {"storage": {"postgres": {"postgres_url": pg.replace("postgresql://", "postgresql+psycopg2://", 1)}}} if pg else None
            with dg.instance_for_test(temp_dir=str(home / "dagster"), overrides=overrides) as inst:
                resources = slice_resources(home)
                # Count CPU from here, as `plml run --workers 1` does: every step runs in this pytest worker,
                # whose earlier test files' CPU would otherwise be charged to the first step.
                from plml_assets.lib.analytics.metering import METER

                METER.reset()
                result = _materialize(resources, inst)
                yield home, inst, resources, result


@pytest.fixture
def first_run(graph_home, monkeypatch):
    home, _, resources, result = graph_home
    monkeypatch.setenv("PLML_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    return resources, result


@pytest.fixture
def graph_instance(graph_home):
    return graph_home[1]


@pytest.fixture
def graph_dir(graph_home) -> Path:
    return graph_home[0]


def test_the_whole_graph_ran_on_a_postgresql_instance_where_one_answers(first_run, graph_instance):
    _, result = first_run
    if postgres_url() is None:
        pytest.skip("PostgreSQL at 127.0.0.1:5432 is not reachable: the graph ran on SQLite")
    assert type(graph_instance.run_storage).__name__ == "PostgresRunStorage"
    assert type(graph_instance.event_log_storage).__name__ == "PostgresEventLogStorage"
    stored = graph_instance.get_run_by_id(result.run_id)
    assert stored.status == (dg.DagsterRunStatus.SUCCESS if result.success else dg.DagsterRunStatus.FAILURE)
    # every materialization of the run is in PostgreSQL's event log
    keys = {e.event_specific_data.materialization.asset_key for e in result.get_asset_materialization_events()}
    assert len(keys) > 30
    assert all(graph_instance.get_latest_materialization_event(k) is not None for k in keys)


def _gate(result) -> dg.AssetCheckEvaluation:
    return next(e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate")


def test_whole_graph_registers_a_gated_model_with_full_lineage(first_run, graph_dir):
    plml_home = graph_dir
    resources, result = first_run
    registry: MlflowRegistry = resources["mlflow_registry"]
    materialized = {e.materialization.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert {"market_prices", "labels", "base_features", "features", "feature_recipes", "feature_selection", "cv_splits",
            "cv_fold_features", "registered_model", "backtest", "cpcv_fold_features", "cpcv_paths", "validation_report", "model_comparison",
            "feature_generation_report", "feature_importance", "ensemble_model", "ensemble_predictions",
            "model_leaderboard"} <= materialized
    for family in FAMILIES:  # one lineage shape per family
        assert {f"{family}_study", f"{family}_cv_results", f"{family}_oof_predictions", f"{family}_model",
                f"{family}_holdout_predictions"} <= materialized

    sampled = 0
    # Studies: the trial budget was spent, the parameters every later asset uses come from the study,
    # and one MLflow run holds the trial table and plots.
    for family in FAMILIES:
        study = json.loads((plml_home / "assets" / f"{family}_study.json").read_text())
        expected = {"xgboost": 6, "lightgbm": 6, "elastic_net": 4}.get(family, 2)  # quick-profile budgets
        assert study["counts"]["COMPLETE"] + study["counts"]["PRUNED"] == expected
        assert set(study["tuned_params"]) <= set(study["params"]) and study["best_trial"] is not None
        for key, value in study["tuned_params"].items():
            assert study["params"][key] == value
        run = registry.client().get_run(study["mlflow_run_id"])
        assert run.data.tags["plml.kind"] == "study" and run.data.tags["plml.family"] == family
        trials = pd.read_csv(registry.client().download_artifacts(study["mlflow_run_id"], "trials.csv"))
        assert len(trials[trials["state"].isin(["COMPLETE", "PRUNED"])]) == expected
        cv_family = pd.read_parquet(plml_home / "assets" / f"{family}_cv_results.parquet")
        assert json.loads(cv_family["params"].iloc[0]) == json.loads(json.dumps(study["params"]))
        model_family = json.loads((plml_home / "assets" / f"{family}_model.json").read_text())
        assert model_family["family"] == family and model_family["tags"]["plml.cv_params_match"] == "true"
        # Issue 14: the training runs were open around the fits themselves (not only their logging), so
        # MLflow's own system metrics cover them: the model run lasted at least its fit, and a run open
        # for longer than one sampling interval (1 s) holds CPU and memory samples.
        fit_run = registry.client().get_run(model_family["run_id"])
        for r in (fit_run, run):
            assert r.info.status == "FINISHED"
        assert (fit_run.info.end_time - fit_run.info.start_time) / 1000 >= model_family["fit_seconds"]
        long_runs = [r for r in (fit_run, run) if (r.info.end_time - r.info.start_time) / 1000 > 3]
        sampled += len(long_runs)
        for r in long_runs:
            assert {"system/cpu_utilization_percentage", "system/system_memory_usage_megabytes"} <= set(r.data.metrics), (
                family, r.info.run_name, sorted(r.data.metrics))
        assert model_family["model_bytes"] > 0
    assert sampled > 0, "no training run lasted long enough to check its system metrics"

    # Every family on the same folds and holdout, side by side.
    comparison = pd.read_parquet(plml_home / "assets" / "model_comparison.parquet")
    assert sorted(comparison["family"]) == sorted(FAMILIES)
    for col in ("walk_forward_rank_ic_mean", "walk_forward_rank_ic_std", "kfold_rank_ic_mean", "holdout_rank_ic",
                "fit_seconds", "model_kib", "study_trials"):
        assert comparison[col].notna().all(), col
    xgb_row = comparison.set_index("family").loc["xgboost"]
    xgb_cv = pd.read_parquet(plml_home / "assets" / "xgboost_cv_results.parquet")
    assert xgb_row["walk_forward_rank_ic_mean"] == pytest.approx(
        xgb_cv.loc[xgb_cv["scheme"] == "walk_forward", "valid_rank_ic"].mean())

    # Generated features: a recipe for every generated column; the report counts them and measures them.
    recipes = json.loads((plml_home / "assets" / "feature_recipes.json").read_text())["recipes"]
    feats = pd.read_parquet(plml_home / "assets" / "features.parquet")
    base = pd.read_parquet(plml_home / "assets" / "base_features.parquet")
    assert recipes and list(feats.columns) == [*base.columns, *recipes]
    generation = json.loads((plml_home / "assets" / "feature_generation_report.json").read_text())
    assert generation["generated"] == len(recipes)
    assert set(generation["kept_in_final_selection"]) <= set(recipes)
    assert len(generation["cv_rank_ic_base"]) == len(generation["cv_rank_ic_enlarged"]) == 3
    assert generation["cv_rank_ic_change"] == pytest.approx(
        sum(generation["cv_rank_ic_enlarged"]) / 3 - sum(generation["cv_rank_ic_base"]) / 3)
    # Every pair of base features is generated; each fit may use the pairs of its own top-k only.
    spec = json.loads((plml_home / "assets" / "feature_recipes.json").read_text())["spec"]
    pairs = {n: r["inputs"] for n, r in recipes.items() if r["primitive"] in ("product", "ratio")}
    n_base = len({i for inputs in pairs.values() for i in inputs})
    assert len(pairs) == n_base * (n_base - 1)  # product and ratio of every pair
    fold_features = pd.read_parquet(plml_home / "assets" / "cv_fold_features.parquet")
    for (scheme, fold), block in fold_features.groupby(["scheme", "fold"]):
        used = {i for f in block["feature"] if f in pairs for i in pairs[f]}
        assert len(used) <= spec["top_k"], (scheme, fold, used)
    final = pd.read_parquet(plml_home / "assets" / "feature_selection.parquet")
    outside = final[final["reason"].str.contains(f"outside the top-{spec['top_k']} base features", regex=False)]
    assert len(outside) == len(pairs) - 2 * spec["top_k"] * (spec["top_k"] - 1) // 2

    # Importance: every family on every walk-forward fold; gain for trees only.
    importance = pd.read_parquet(plml_home / "assets" / "feature_importance.parquet")
    assert set(importance["family"]) == set(FAMILIES)
    assert (importance.groupby("family")["fold"].nunique() == 3).all()
    assert importance.loc[importance["family"].isin(["xgboost", "lightgbm"]), "gain"].notna().all()
    assert importance.loc[importance["family"].isin(["lstm", "gru"]), "gain"].isna().all()
    assert importance["permutation"].notna().all()

    # Leaderboard: every family, every ensemble rule and the baseline on the same folds and holdout.
    board = json.loads((plml_home / "assets" / "model_leaderboard.json").read_text())
    table = pd.DataFrame(board["table"]).set_index("candidate")
    assert set(table.index) == {*FAMILIES, *(f"ensemble_{m}" for m in METHODS), "momentum_20d"}
    assert table[["walk_forward_rank_ic_mean", "holdout_rank_ic", "holdout_sharpe", "oof_sharpe"]].notna().all().all()
    # One footing for singles and ensembles: a family's walk-forward score is nested (fold k scored by the
    # trial chosen on folds before k), not the best trial's mean on the very folds that chose it.
    xgb_study = json.loads((plml_home / "assets" / "xgboost_study.json").read_text())
    nested = nested_walk_forward(xgb_study)
    assert table.loc["xgboost", "walk_forward_rank_ic_mean"] == pytest.approx(np.mean(nested.fold_scores))
    assert nested.chosen[0] == min(t["number"] for t in xgb_study["trials"])  # fold 1: the first trial, chosen on nothing
    assert board["footing"]["xgboost"].startswith("nested") and board["footing"]["ensemble_mean"].startswith("nested")
    assert table.loc["xgboost", "configurations"] == 6 and table.loc["ensemble_mean", "configurations"] == 1
    assert int(table["selected"].sum()) == (board["winner"] is not None)
    assert board["selection"]["reason"] and board["selection"]["validation"]

    # An ensemble's pyfunc rebuilds every member's features (generated ones included) from raw prices
    # and serves the holdout scores it was evaluated with.
    ensembles = json.loads((plml_home / "assets" / "ensemble_model.json").read_text())
    weighted = ensembles["methods"]["weighted"]
    assert sum(weighted["fit"]["weights"].values()) == pytest.approx(1.0)
    labels = pd.read_parquet(plml_home / "assets" / "labels.parquet")
    served, _ = score_holdout(weighted["model_uri"], resources["price_source"].load(), labels, resources["settings"], registry)
    assert served["rank_ic"] == pytest.approx(weighted["holdout_metrics"]["rank_ic"], abs=1e-6)

    # Every blocking data check ran and passed on the real slice.
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert all(checks[f"prices_{n}"].passed for n in ("schema", "duplicates", "prices", "missing", "ranges", "history"))

    # CV results: both schemes, metrics per fold, an overfitting verdict.
    cv = pd.read_parquet(plml_home / "assets" / "xgboost_cv_results.parquet")
    assert set(cv["scheme"]) == {"walk_forward", "kfold"}
    for col in ("valid_ic", "valid_rank_ic", "valid_rmse", "valid_directional_accuracy", "rank_ic_gap", "overfit_flag"):
        assert cv[col].notna().all(), col
    assert (cv["valid_rmse"] > 0).all()
    # Walk-forward test blocks come after their training dates (dates are ISO strings).
    wf = cv[cv["scheme"] == "walk_forward"]
    assert (wf["train_end"] < wf["test_start"]).all()

    # The MLflow run carries params, metrics, features, fingerprint, dagster run id and the model.
    model_out = json.loads((plml_home / "assets" / "xgboost_model.json").read_text())
    run = registry.client().get_run(model_out["run_id"])
    assert run.data.tags["dagster.run_id"] == result.run_id
    assert run.data.tags["plml.data_fingerprint"] == model_out["data_fingerprint"]
    assert run.data.tags["plml.cv_params_match"] == "true"
    assert {"learning_rate", "max_depth", "horizon", "n_features"} <= set(run.data.params)
    assert {"holdout_rank_ic", "holdout_ic", "holdout_rmse", "holdout_directional_accuracy",
            "cv_walk_forward_rank_ic", "cv_kfold_rank_ic"} <= set(run.data.metrics)
    artifacts = {a.path for a in registry.client().list_artifacts(model_out["run_id"])}
    assert {"features.json", "holdout_window.json", "cv_results.csv"} <= artifacts
    with registry.tracking():
        info = mlflow.models.get_model_info(model_out["model_uri"])
    assert info.signature is not None and "close" in info.signature.inputs.input_names()
    assert info.saved_input_example_info is not None

    # Registry: version 1 is the leaderboard's pick, the challenger, tagged; the gate compared it with the
    # momentum baseline.
    board = json.loads((plml_home / "assets" / "model_leaderboard.json").read_text())
    winner = board["winner"]
    v1 = registry.version_info("1")
    assert "challenger" in v1.aliases
    assert v1.tags["plml.candidate"] == winner["name"] == board["selection"]["winner"]
    assert v1.run_id == winner["run_id"]
    assert v1.tags["plml.leaderboard_validated"] == str(board["selection"]["validated"]).lower()
    assert v1.tags["plml.code_version"]
    gate = _gate(result)
    assert "baseline momentum_20d" in gate.description
    report = json.loads((plml_home / "assets" / "validation_report.json").read_text())
    # The validation report judges the leaderboard's pick, on its own backtest and on everything tried.
    assert report["verdict"] in ("pass", "warn", "fail")
    assert report["subject"] == winner["name"] and report["leaderboard_run_id"] == board["mlflow_run_id"]
    evidence = report["evidence"]
    assert {"candidate", "backtest_dates", "holdout_start", "nested", "trials", "effective_trials", "sharpe_trials_std",
            "dsr", "pbo", "pbo_metric", "turnover_per_day", "execution_lag_days", "cost_bps_per_side"} <= set(evidence)
    assert evidence["candidate"] == winner["name"] and evidence["pbo_metric"] == "rank_ic"
    studies = {f: json.loads((plml_home / "assets" / f"{f}_study.json").read_text()) for f in FAMILIES}
    # N counts every trial of every study plus every ensemble rule; clustering only reduces it.
    n_trials = sum(len(s["trial_date_scores"]) for s in studies.values()) + len(METHODS)
    assert sum(len(s["trial_date_scores"]) for s in studies.values()) >= 6 + 6 + 2 + 2  # quick budgets
    assert evidence["trials"] == n_trials and 1 <= evidence["effective_trials"] <= n_trials
    assert report["dsr"] == evidence["dsr"] and 0.0 <= evidence["dsr"] <= 1.0
    assert 0.0 <= report["psr"] <= 1.0
    # The pick's backtest: a walk-forward segment on training dates, then the frozen holdout predictions.
    backtest = pd.read_parquet(plml_home / "assets" / "backtest.parquet")
    name = winner["name"]
    assert {f"{name}:long_short", f"{name}:long_only", "ridge:long_short", "momentum_20d:long_only",
            "reversal_5d:long_short", "equal_weight:benchmark", f"{name}:turnover"} <= set(backtest.columns)
    traded = backtest[f"{name}:long_short"].dropna()
    assert len(traded) > 250 and evidence["backtest_dates"] == [str(traded.index[0].date()), str(traded.index[-1].date())]
    assert set(backtest["segment"]) == {"walk_forward", "holdout"}
    assert str(backtest.index[backtest["segment"] == "holdout"][0].date()) == evidence["holdout_start"]
    wf_dates = backtest.index[backtest["segment"] == "walk_forward"]
    assert wf_dates.max() < pd.Timestamp(evidence["holdout_start"])  # the refitted segment stops before the holdout
    # The holdout segment is scored by the pick's frozen holdout predictions (what was registered), not a
    # refit: its per-date rank IC is exactly theirs. The walk-forward segment ends a purge before it.
    if name.startswith("ensemble_"):
        ens = pd.read_parquet(plml_home / "assets" / "ensemble_predictions.parquet")
        frozen = ens.loc[(ens["method"] == name[len("ensemble_"):]) & (ens["split"] == "holdout"), "prediction"]
    else:
        frozen = pd.read_parquet(plml_home / "assets" / f"{name}_holdout_predictions.parquet")["prediction"]
    y_all, split = split_for(labels, resources["settings"])
    frozen_ic = per_date_ic(y_all.reindex(frozen.index).to_numpy(), frozen.to_numpy(),
                            frozen.index.get_level_values("date"), method="spearman")
    held = backtest.loc[backtest["segment"] == "holdout", f"{name}:rank_ic"].dropna()
    assert len(held) > 20 and held.to_numpy() == pytest.approx(frozen_ic.reindex(held.index).to_numpy())
    # The walk-forward segment's signals are on training dates only (its books may still earn their
    # returns through the purge gap, which ends before the holdout).
    wf_signals = backtest.loc[backtest["segment"] == "walk_forward", f"{name}:rank_ic"].dropna().index
    assert wf_signals.isin(split.train_dates).all() and len(wf_signals) > 200
    assert evidence["execution_lag_days"] == 1 and evidence["cost_bps_per_side"] == 5.0
    held_returns = backtest.loc[backtest["segment"] == "holdout", f"{name}:long_short"].dropna()
    assert evidence["holdout_net_sharpe"] == pytest.approx(
        held_returns.mean() / held_returns.std(ddof=1) * np.sqrt(252), rel=1e-6)
    # CPCV paths are of the pick too (its members refitted per split), 3 paths in the quick profile.
    cpcv_meta = next(e.materialization.metadata for e in result.get_asset_materialization_events()
                     if e.materialization.asset_key.to_user_string() == "cpcv_paths")
    assert cpcv_meta["candidate"].value == name and cpcv_meta["paths"].value == 3
    assert np.isfinite(evidence["cpcv_path_sharpe_mean"])
    # Five overlapping tranches for the 5-day label: at most a fifth of a gross-2 book re-formed per day.
    assert 0.0 < evidence["turnover_per_day"] <= 0.4
    assert len(report["evidence"]["baseline_net_sharpe"]) == 4  # momentum, reversal, ridge, equal weight
    if report["verdict"] == "fail":  # the gate reads the verdict
        assert not gate.passed and "validation report on this candidate says fail" in gate.description
    if not board["selection"]["validated"]:  # the pick did not beat the baseline on the holdout: nothing new is promoted
        assert not gate.passed and "blocked by the leaderboard" in gate.description
    champion = registry.alias_version("champion")
    if gate.passed:
        assert champion is not None and champion.version == "1"
        assert "champion_model" in materialized
    else:  # the gate holds: nothing is promoted and the run says so
        assert champion is None and "champion_model" not in materialized and not result.success


def test_the_automl_study_searched_families_on_the_family_studies_folds(first_run, graph_dir):
    automl = json.loads((graph_dir / "assets" / "automl_study.json").read_text())
    xgb_study = json.loads((graph_dir / "assets" / "xgboost_study.json").read_text())
    assert automl["budget_s"] == 10.0 and sum(automl["ran_this_time"].values()) >= 2
    # The cheap families' defaults ran first, then the search went on within the budget.
    first, second = automl["trials"][:2]
    assert first["params"]["family"] == "elastic_net" and second["params"]["family"] == "xgboost"
    assert automl["by_family"]["elastic_net"]["trials"] >= 1 and automl["by_family"]["xgboost"]["trials"] >= 1
    winner = automl["winner"]
    assert winner["family"] in automl["families"] and winner["rank_ic"] == pytest.approx(max(
        f["best_rank_ic"] for f in automl["by_family"].values() if f["best_rank_ic"] is not None), abs=1e-5)
    # Same folds and dates as the family studies: its trials are comparable date by date.
    assert automl["oof_dates"] == xgb_study["oof_dates"]
    assert all(len(v) == len(automl["oof_dates"]) for v in automl["trial_date_scores"].values())


def test_explanations_cover_every_family_and_the_pick_and_add_up(first_run, graph_dir):
    """Issue 16: shap_values holds every family model's contributions on the holdout and the pick's
    (an ensemble's mapped from its members'), each block scoring exactly what its model scored."""
    _, result = first_run
    assets = graph_dir / "assets"
    values = pd.read_parquet(assets / "shap_values.parquet")
    summary = json.loads((assets / "shap_summary.json").read_text())
    pick = json.loads((assets / "model_leaderboard.json").read_text())["selection"]["winner"]
    assert set(FAMILIES) <= set(values["model"]) and summary["pick"] == pick
    if pick is not None:
        assert pick in set(values["model"])
    holdout = {f: pd.read_parquet(assets / f"{f}_holdout_predictions.parquet")["prediction"] for f in FAMILIES}
    for family in FAMILIES:
        block = values[values["model"] == family].drop(columns="model").dropna(axis=1, how="all")
        features = json.loads((assets / f"{family}_model.json").read_text())["features"]
        assert [c for c in block.columns if c not in ("base_value", "prediction", "nonlinear_residual")] == features
        exact = family in ("xgboost", "lightgbm", "elastic_net")  # TreeSHAP, and coef x z for the linear model
        if exact:
            assert block.index.equals(holdout[family].index)  # every holdout row
        else:
            assert 4 <= block.index.get_level_values("date").nunique() <= 20  # the quick profile's spread of dates
        np.testing.assert_allclose(block["prediction"].to_numpy(), holdout[family].reindex(block.index).to_numpy(), rtol=1e-6, atol=1e-12)
        gap = (block[features].sum(axis=1) + block["base_value"] - block["prediction"]).abs().max()
        assert gap <= (1e-4 if exact else 2e-2) * np.sqrt((block["prediction"] ** 2).mean())
        assert summary["models"][family]["exact"] is exact
    if pick is not None and pick.startswith("ensemble_"):
        block = values[values["model"] == pick]
        ens = pd.read_parquet(assets / "ensemble_predictions.parquet")
        served = ens[(ens["method"] == pick.removeprefix("ensemble_")) & (ens["split"] == "holdout")]["prediction"]
        np.testing.assert_allclose(block["prediction"].to_numpy(), served.reindex(block.index).to_numpy(), rtol=1e-9)
    checks = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert checks["shap_additivity"].passed, checks["shap_additivity"].description
    assert {"shap_stability", "shap_randomization"} <= set(checks)
    assert set(summary["randomization"]) == {"xgboost", "lightgbm"}
    if pick is not None:  # the plots on the pick's MLflow run too
        run_id = json.loads((assets / "model_leaderboard.json").read_text())["winner"]["run_id"]
        logged = {a.path for a in MlflowRegistry(tracking_uri=first_run[0]["mlflow_registry"].tracking_uri).client().list_artifacts(run_id, "plots")}
        assert {"plots/shap_summary.png", "plots/shap_waterfall.png"} <= logged


def test_every_registered_version_has_a_model_card_from_the_measured_facts(first_run, graph_dir):
    """Issue 16 item 7: the gate writes model_card.md on the version's run and a summary in the
    version's description, from the assets that measured each fact, and shows the card in the UI."""
    resources, result = first_run
    registry: MlflowRegistry = resources["mlflow_registry"]
    registered = json.loads((graph_dir / "assets" / "registered_model.json").read_text())
    report = json.loads((graph_dir / "assets" / "validation_report.json").read_text())
    summary = json.loads((graph_dir / "assets" / "shap_summary.json").read_text())
    client = registry.client()
    card = Path(client.download_artifacts(registered["run_id"], "model_card.md")).read_text()
    version = client.get_model_version(registry.model_name, registered["version"])
    gate = _gate(result)
    verdict = version.tags["plml.gate"]
    for section in ("## Data", "## Model", "### Features", "## Validation", "## Promotion evidence", "## Backtest, net of costs",
                    "## What drives the score", "## Gate"):
        assert section in card
    assert f"# {registry.model_name} v{registered['version']}: {registered['candidate']}" in card
    assert f"**{verdict}**" in card and gate.description in card
    top = next(iter(summary["models"][registered["candidate"]]["mean_abs"]))
    assert f"`{top}`" in card  # the pick's strongest feature by mean |contribution|
    assert f"| deflated Sharpe ratio | {report['evidence']['dsr']:.4f} |" in card
    assert f"{report['evidence']['trials']} (" in card  # N trials behind the pick
    assert f"holdout {registered['holdout_metrics']['rank_ic']:.4f} ± " in version.description
    assert f"gate {verdict}" in version.description and "model_card.md" in version.description
    assert gate.metadata["model_card"].value == card


def test_plml_reproduce_refits_a_tree_and_a_net_version_and_refuses_other_prices(first_run, graph_dir, tmp_path):
    """Issue 16 item 8: a version retrained from what it recorded scores its holdout as the registered
    model does (trees within 1e-6, nets within 1e-4 on the CPU), into a scratch folder, without
    touching the registry; prices that differ are refused with the first differing date and symbol."""
    import subprocess
    import sys

    from plml_assets.lib.registry.reproduce import DIGEST_ARTIFACT, ReproductionRefused, reproduce

    resources, _ = first_run
    # Versions under a model name of their own: the other tests count plml_test_model's versions.
    registry = MlflowRegistry(tracking_uri=resources["mlflow_registry"].tracking_uri, model_name="plml_reproduce_test")
    client = registry.client()
    prices = resources["price_source"].load()
    aliases_before = resources["mlflow_registry"].aliases()
    versions = {}
    for family in ("xgboost", "gru"):  # a family pick is registered from its model run, as registered_model does
        model = json.loads((graph_dir / "assets" / f"{family}_model.json").read_text())
        with registry.tracking():
            versions[family] = str(mlflow.register_model(model["model_uri"], registry.model_name, tags=model["tags"]).version)
    for family, version in versions.items():
        mv = client.get_model_version(registry.model_name, version)
        recorded = json.loads(Path(client.download_artifacts(mv.run_id, DIGEST_ARTIFACT, str(tmp_path))).read_text())
        with registry.tracking():
            scorer = mlflow.pyfunc.load_model(registry.model_uri(version)).unwrap_python_model()
        result = reproduce(scorer, {**client.get_run(mv.run_id).data.tags, **mv.tags}, recorded, prices, version, scratch=tmp_path / family)
        assert result.match, (family, result.max_abs_diff)
        assert result.tolerance == (1e-6 if family == "xgboost" else 1e-4) and result.rows > 0
        assert (tmp_path / family / family).is_dir()  # the refitted model, outside the registry
        changed = prices.copy()
        moved = changed.index[len(changed) // 2]
        changed.loc[moved, "close"] *= 1.01
        with pytest.raises(ReproductionRefused, match=f"first differing date {moved[0].date()}.*{moved[1]}"):
            reproduce(scorer, mv.tags, recorded, changed, version)
    # The CLI on the same prices, from a file: one JSON object; the registry's aliases never move.
    prices.reset_index().to_parquet(tmp_path / "prices.parquet")
    env = {**__import__("os").environ, "PLML_HOME": str(graph_dir), "PLML_PRICES": str(tmp_path / "prices.parquet"),
           "PLML_MLFLOW_TRACKING_URI": registry.resolved_tracking_uri(), "PLML_MODEL_NAME": registry.model_name}
    out = subprocess.run([sys.executable, "-m", "plml_assets.cli", "reproduce", versions["xgboost"], "--json"], env=env,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    payload = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(payload) == {"version", "max_abs_diff", "rows", "match"} and payload["match"] is True
    assert payload["version"] == versions["xgboost"] and payload["max_abs_diff"] <= 1e-6
    assert resources["mlflow_registry"].aliases() == aliases_before and registry.aliases() == {}
    missing = subprocess.run([sys.executable, "-m", "plml_assets.cli", "reproduce", "999"], env=env, capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "has no version '999'" in missing.stderr


def test_every_step_of_the_run_is_metered(first_run, graph_instance):
    """Issue 14: the IO manager records each step's CPU, peak RSS, threads and rows on its
    materializations (in-process executor here), and the report reads them back with the walls."""
    from plml_assets.defs.analytics.report import step_figures
    from plml_assets.lib.analytics import metering as an

    _, result = first_run
    steps, failed = step_figures(graph_instance, result.run_id)
    by_step = {s.step: s for s in steps}
    materialized = {e.step_key for e in result.get_asset_materialization_events()}
    assert materialized and materialized <= set(by_step)
    for key in materialized:
        figures = by_step[key]
        assert figures.cpu_s is not None and figures.cpu_s >= 0 and figures.peak_rss_mib > 50, key
        assert figures.wall_s > 0
    study = by_step["xgboost_study"]
    assert study.trials == 6 and study.rows_in > 10_000 and study.cpu_s > 0.5
    # One process ran every step in turn (its BLAS/torch pools may add threads here: no cap in tests), so
    # the CPU is at least a fifth of one core's worth and never above the two cores.
    report = an.run_report(result.run_id, steps, cores=2)
    cpu = sum(s.cpu_s for s in steps if s.cpu_s is not None)
    assert report["cpu_s"] == pytest.approx(cpu, abs=0.01)
    assert report["cpu_utilization"] == pytest.approx(cpu / (report["wall_s"] * 2), abs=1e-3)
    assert 0.1 < report["cpu_utilization"] <= 1.05
    assert report["cost_total"] > 0 and all(s.get("cost", 0) >= 0 for s in report["steps"])
    assert set(failed) <= {k for k in by_step if "promotion_gate" in k}


def test_rerun_is_reproducible_and_an_equal_challenger_is_not_promoted(first_run, graph_dir, graph_instance):
    plml_home, instance = graph_dir, graph_instance
    resources, first = first_run
    registry: MlflowRegistry = resources["mlflow_registry"]
    if registry.alias_version("champion") is None:
        registry.promote("1", reason="test setup: make v1 the champion")
    # The XGBoost chain and the chain of the family the leaderboard picked (so the pick is trained again,
    # whatever it is). The CPCV paths and the backtest are not re-run (minutes on 2 cores; no registry
    # input reads them): validation_report re-judges the new leaderboard's pick with their stored evidence.
    picked = json.loads((plml_home / "assets" / "model_leaderboard.json").read_text())["winner"]["family"]
    chain = dict.fromkeys(XGBOOST_CHAIN + [k for k in ALL_KEYS if k.startswith(f"{picked}_")])
    second = _materialize(resources, instance, selection=[k for k in chain if k not in ("cpcv_paths", "backtest")])
    gate = _gate(second)
    # The study resumed from the Optuna storage: its budget was already spent, nothing was re-searched.
    study = json.loads((plml_home / "assets" / "xgboost_study.json").read_text())
    assert study["ran_this_time"] == {} and study["best_trial"] is not None
    # Seeded end to end: the same data and config give the same model, so the margin is exactly zero.
    assert "champion v1" in gate.description and "margin +0.0000" in gate.description
    assert not gate.passed
    assert registry.alias_version("champion").version == "1"
    assert registry.alias_version("challenger").version == "2"
    materialized = {e.materialization.asset_key.to_user_string() for e in second.get_asset_materialization_events()}
    assert "champion_model" not in materialized
    m1 = registry.client().get_run(registry.version_info("1").run_id).data.metrics
    m2 = registry.client().get_run(registry.version_info("2").run_id).data.metrics
    assert m1["holdout_rank_ic"] == m2["holdout_rank_ic"]


def test_out_of_range_config_is_rejected_before_anything_runs(first_run, graph_dir, graph_instance):
    """On the shared run's stored inputs: the study refuses a bad hyper-parameter at once."""
    resources, _ = first_run
    registry: MlflowRegistry = resources["mlflow_registry"]
    versions = [v.version for v in registry.versions()]
    bad = {"ops": {"xgboost_study": {"config": {"fixed_params": '{"n_estimators": -3}'}}}}
    xgboost_steps = ["xgboost_study", "xgboost_cv_results", "xgboost_oof_predictions", "xgboost_model",
                     "xgboost_holdout_predictions"]
    result = _materialize(resources, graph_instance, run_config=bad, selection=xgboost_steps)
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "xgboost_study"  # the asset that reads the XGBoost hyper-parameters
    assert "n_estimators=-3" in str(failure.event_specific_data.error)
    # Bad input is not transient: no retry was spent on it, and nothing downstream ran or was registered.
    assert not [e for e in result.all_events if e.event_type_value == "STEP_UP_FOR_RETRY"]
    assert not list(result.get_asset_materialization_events())
    assert [v.version for v in registry.versions()] == versions


class ReversedOracle(mlflow.pyfunc.PythonModel):
    """A deliberately terrible champion: it scores each row with minus its own future return, so its
    holdout rank IC is exactly -1 and any real model must beat it."""

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        panel = model_input.set_index(["date", "symbol"]).sort_index()
        future = panel["close"].groupby(level="symbol").shift(-5)
        out = panel.index.to_frame(index=False)
        out["score"] = -(future / panel["close"] - 1.0).to_numpy()
        return out


def _register_reversed_oracle(registry: MlflowRegistry, prices: pd.DataFrame) -> str:
    example = prices.reset_index().head(50)
    signature = mlflow.models.infer_signature(example, ReversedOracle().predict(None, example), params={"all_dates": False})
    with registry.tracking():
        with mlflow.start_run(experiment_id=registry.experiment_id()):
            info = mlflow.pyfunc.log_model(name="model", python_model=ReversedOracle(), signature=signature,
                                           pip_requirements=["mlflow", "pandas"])
        mv = mlflow.register_model(info.model_uri, registry.model_name)
    registry.promote(str(mv.version), reason="test: a champion that every real model beats")
    return str(mv.version)


def test_better_challenger_replaces_the_champion(first_run, graph_dir, graph_instance):
    """On the shared run's registry (after the re-run test): a deliberately terrible champion is
    replaced by the leaderboard's pick when the registry part runs again, rolled back, and a rule no
    candidate passes registers nothing."""
    plml_home, instance = graph_dir, graph_instance
    resources, _ = first_run
    registry: MlflowRegistry = resources["mlflow_registry"]
    prices = resources["price_source"].load()
    oracle_version = _register_reversed_oracle(registry, prices)
    # This test is about the comparison with the champion: let a 'fail' validation verdict, and a pick
    # that does not beat the momentum baseline on this small slice, through.
    lenient = {"ops": {"registered_model_promotion_gate": {"config": {"block_on_validation_fail": False,
                                                                       "require_leaderboard_validation": False}}}}
    result = _materialize(resources, instance, run_config=lenient, selection=["registered_model", "champion_model"])
    gate = _gate(result)
    assert gate.passed, gate.description
    assert f"champion v{oracle_version}" in gate.description
    assert float(gate.metadata["reference_value"].value) == pytest.approx(-1.0)
    challenger = registry.alias_version("challenger").version
    assert challenger != oracle_version
    assert registry.alias_version("champion").version == challenger
    assert registry.champion_history()[-2:] == [oracle_version, challenger]
    assert registry.version_info(challenger).tags["plml.gate_champion"] == oracle_version

    # After a rollback the old gate verdict cannot promote the rolled-back version again.
    assert registry.rollback() == (challenger, oracle_version)
    again = dg.materialize([*ASSETS, *CHECKS], resources=resources, instance=instance, raise_on_error=False,
                           selection=["champion_model"])
    assert not again.success
    failure = next(e for e in again.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no passing promotion gate" in str(failure.event_specific_data.error)
    assert registry.alias_version("champion").version == oracle_version

    # A rule no candidate passes: the leaderboard picks nothing, says why, and nothing is registered or promoted.
    versions = [v.version for v in registry.versions()]
    strict = {"ops": {"model_leaderboard": {"config": {"max_gap": 0.0}}}}
    nothing = _materialize(resources, instance, run_config=strict,
                           selection=["model_leaderboard", "registered_model", "champion_model"])
    assert nothing.success
    materialized = {e.materialization.asset_key.to_user_string() for e in nothing.get_asset_materialization_events()}
    assert materialized == {"model_leaderboard"}
    board = json.loads((plml_home / "assets" / "model_leaderboard.json").read_text())
    assert board["winner"] is None and "no candidate passes every criterion" in board["selection"]["reason"]
    assert all(any("train/validation gap" in f for f in fails) for fails in board["selection"]["failures"].values())
    assert [v.version for v in registry.versions()] == versions
    assert registry.alias_version("champion").version == oracle_version

    # A new leaderboard without a new validation report: the report judged another leaderboard's pick,
    # so the gate (blocking on the validation verdict) refuses to promote on it.
    stale = {"ops": {"registered_model_promotion_gate": {"config": {"require_leaderboard_validation": False}}}}
    refused = _materialize(resources, instance, run_config=stale,
                           selection=["model_leaderboard", "registered_model", "champion_model"])
    gate = _gate(refused)
    assert not gate.passed and "validation_report and registered_model in one run" in gate.description, gate.description
    assert registry.alias_version("champion").version == oracle_version


def test_new_prices_flow_to_drift_metrics_and_the_sensor_acts_on_its_decision(first_run, graph_dir, graph_instance):
    """Three more years of prices arrive; the data assets and drift_metrics are rebuilt against the
    champion, and the drift sensor turns drift_metrics' decision into a retraining request or a skip."""
    from plml_assets.definitions import defs
    from plml_assets.defs.monitoring.sensors import drift_retraining_sensor

    plml_home, instance = graph_dir, graph_instance
    resources, _ = first_run
    registry: MlflowRegistry = resources["mlflow_registry"]
    registry.promote("1", reason="test setup: a real model is the champion (the previous test left the oracle)")
    champion = registry.alias_version("champion")
    later = {**resources, "price_source": slice_resources(plml_home, end_date="2016-12-30")["price_source"]}
    refresh = ["market_prices", "labels", "base_features", "features", "feature_recipes", "drift_metrics"]
    result = _materialize(later, instance, selection=refresh)
    assert result.success
    drift = json.loads((plml_home / "assets" / "drift_metrics.json").read_text())
    assert drift["champion"] == champion.version
    # The reference ends with the champion's holdout (the newest data it was validated on).
    assert drift["windows"]["reference_end"] == champion.tags["plml.holdout_end"] < drift["windows"]["recent_start"]
    assert drift["windows"]["recent_end"] == "2016-12-30"
    summary = drift["summary"]
    assert 0.0 <= summary["feature_drift_share"] <= 1.0 and summary["max_feature_psi"] >= 0.0
    assert summary["enough_dates"] is True  # three years of newly labelled dates after the holdout
    assert summary["age_days"] > 700
    assert set(drift["decision"]) >= {"retrain", "severity", "reasons"}
    # Issue 16: the champion's contribution profile (stored with its model card) weighs the feature drift.
    weighted = drift["contribution_weighted"]
    assert weighted is not None and weighted["coverage"] == pytest.approx(1.0)
    assert 0.0 <= weighted["psi"] <= summary["max_feature_psi"] and len(weighted["features"]) == 10
    # ... and the champion explained on the newest 20 dates, against that profile (its SHAP profile's drift).
    shap = drift["shap_profile"]
    symbols = pd.read_parquet(plml_home / "assets" / "market_prices.parquet").loc["2016-12-30"].shape[0] \
        if (plml_home / "assets" / "market_prices.parquet").exists() else None
    assert shap["dates"] == 20 and shap["window"][1] == "2016-12-30" and shap["rows"] > 0 and shap["rows"] % 20 == 0
    if symbols:
        assert shap["rows"] == 20 * symbols
    assert 0.0 <= shap["shift"] <= 1.0 and -1.0 <= shap["rank_corr"] <= 1.0 and len(shap["features"]) == 10
    assert sum(f["current_share"] for f in shap["features"]) <= 1.0 + 1e-3

    context = dg.build_sensor_context(instance=instance, definitions=defs)
    outcome = drift_retraining_sensor(context)
    if drift["decision"]["retrain"]:
        assert isinstance(outcome, dg.RunRequest)
        assert outcome.tags["plml/reason"] == "; ".join(drift["decision"]["reasons"])[:4000]
    else:
        assert isinstance(outcome, dg.SkipReason)

    # The features asset may stop generating what the champion reads (here: no generation at all);
    # drift_metrics rebuilds the champion's features from raw prices with the champion's own recipes.
    bare = {"ops": {"generated_features": {"config": {"enabled": False}}}}
    data = ["base_features", "features", "feature_recipes"]
    assert _materialize(later, instance, run_config=bare, selection=[*data, "drift_metrics"]).success
    again = json.loads((plml_home / "assets" / "drift_metrics.json").read_text())
    assert again["summary"]["n_features"] == drift["summary"]["n_features"]
    assert again["summary"]["max_feature_psi"] == pytest.approx(drift["summary"]["max_feature_psi"])
    assert _materialize(later, instance, selection=data).success  # generated features back for the next test


def test_incremental_mode_updates_a_same_family_champion_and_falls_back_otherwise(first_run, graph_dir, graph_instance):
    """After newer prices (previous test): with the XGBoost model as champion, xgboost_model in
    'incremental' mode continues its boosting on the dates after its training end, with its features;
    lightgbm_model, asked the same, cannot update an XGBoost champion and fits from scratch."""
    plml_home, instance = graph_dir, graph_instance
    resources, _ = first_run
    registry: MlflowRegistry = resources["mlflow_registry"]
    old = json.loads((plml_home / "assets" / "xgboost_model.json").read_text())
    with registry.tracking():
        version = mlflow.register_model(old["model_uri"], registry.model_name, tags=old["tags"]).version
    registry.promote(str(version), reason="test: the XGBoost model is the champion")
    incremental = {"ops": {f"{f}_training": {"config": {"mode": "incremental"}} for f in ("xgboost", "lightgbm")}}
    later = {**resources, "price_source": slice_resources(plml_home, end_date="2016-12-30")["price_source"]}
    result = _materialize(later, instance, run_config=incremental, selection=[
        "xgboost_model", "xgboost_holdout_predictions", "lightgbm_model", "lightgbm_holdout_predictions"])
    assert result.success
    new = json.loads((plml_home / "assets" / "xgboost_model.json").read_text())
    assert new["mode"] == "incremental" and new["tags"]["plml.updated_from"] == str(version)
    assert new["features"] == old["features"] and new["run_id"] != old["run_id"]
    params = registry.client().get_run(new["run_id"]).data.params
    old_params = registry.client().get_run(old["run_id"]).data.params
    assert int(params["train_rows"]) < int(old_params["train_rows"])  # only the dates after the champion's training end
    assert new["tags"]["plml.train_end"] > old["tags"]["plml.train_end"]
    assert json.loads((plml_home / "assets" / "lightgbm_model.json").read_text())["mode"] == "full"
    logs = [entry.user_message for entry in instance.all_logs(result.run_id)]
    assert any("incremental update impossible" in m and "not lightgbm" in m for m in logs)


def test_bad_prices_stop_the_whole_graph_before_anything_is_registered(plml_home, instance, embedded_panel, tmp_path):
    panel = embedded_panel[embedded_panel.index.get_level_values("symbol").isin(SLICE_SYMBOLS)].reset_index()
    panel = panel[panel["date"] >= "2010-01-01"]
    panel.loc[panel.index[100], "close"] = 0.0  # one non-positive price
    path = tmp_path / "bad.parquet"
    panel.to_parquet(path)
    resources = slice_resources(plml_home, source=str(path))
    result = _materialize(resources, instance, selection=XGBOOST_CHAIN)
    assert not result.success
    failed = [e for e in result.get_asset_check_evaluations() if not e.passed and e.severity == dg.AssetCheckSeverity.ERROR]
    assert [e.check_name for e in failed] == ["prices_prices"]
    assert "1 row(s)" in failed[0].description
    # Only warnings besides (AMD's real +52 % on 2016-04-22 looks like a 3:2 split to a price-only panel).
    warned = {e.check_name for e in result.get_asset_check_evaluations() if not e.passed} - {"prices_prices"}
    assert warned <= {"prices_splits", "prices_frozen"}, warned
    materialized = {e.materialization.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert materialized == {"market_prices"}
    registry: MlflowRegistry = resources["mlflow_registry"]
    assert registry.versions() == []
    assert registry.client().search_experiments(filter_string="name = 'plml'") == [] or not registry.client().search_runs(
        [registry.experiment_id()]
    )
