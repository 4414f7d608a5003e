"""The loop that runs itself, end to end with the daemon: drifted prices arrive, the data refresh
rebuilds drift_metrics, the drift sensor's tick requests a retraining run, and that run retrains,
registers and re-promotes, all inside `dagster dev` (webserver + daemon) on a temp instance: on the
local PostgreSQL (deploy/dagster-postgres.yaml, a fresh database) wherever one answers, as in CI, on
SQLite otherwise."""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import cloudpickle
import dagster as dg
import mlflow
import pandas as pd
import pytest
from dagster_graphql import DagsterGraphQLClient
from mlflow.models import infer_signature

from plml_assets.definitions import defs
from plml_assets.defs.monitoring.schedules import DATA_REFRESH
from plml_assets.lib.data.simulate import volatility_regime
from plml_assets.lib.registry.serving import MODEL_ARTIFACT, PanelScorer
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets_tests.conftest import REPO, dagster_dev, fresh_postgres_database, postgres_instance_env, quick_xgboost, slice_long_panel

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRAIN_END, HOLDOUT_END, DATA_END = "2011-06-30", "2011-12-30", "2012-12-31"
RETRAIN_TIMEOUT_S = 900
# The demo panel is small and synthetic after the drift: let the leaderboard pick a candidate and the
# gate judge the challenger against the champion alone (both are tested on real data elsewhere).
# Budgets are cut to the bone: the loop is under test here, not the models.
LENIENT_GATE = {"ops": {
    "cv_splits": {"config": {"walk_forward_splits": 2, "kfold_splits": 2}},
    **{f"{family}_study": {"config": {"n_trials": 1}} for family in ("xgboost", "lightgbm", "lstm", "gru")},
    **{f"{family}_cv": {"config": {"permutation_max_dates": 20}} for family in ("xgboost", "lightgbm", "lstm", "gru")},
    "feature_importance": {"config": {"families": ["xgboost"]}},
    "model_leaderboard": {"config": {"min_positive_folds": None, "max_gap": None}},
    "registered_model_promotion_gate": {"config": {"block_on_validation_fail": False, "require_leaderboard_validation": False}},
}}


class ReversedOracleScorer(PanelScorer):
    """A real model behind the pyfunc interface (drift_metrics reads its features and scores), whose
    served score is minus each row's own future return: a holdout rank IC of -1 that any retrained
    challenger beats, whatever the data."""

    def score(self, panel: pd.DataFrame, all_dates: bool = False) -> pd.DataFrame:
        out = super().score(panel, all_dates=all_dates)
        frame = panel.reset_index() if "date" not in panel.columns else panel
        close = frame.assign(date=pd.to_datetime(frame["date"])).set_index(["date", "symbol"])["close"].sort_index()
        future = close.groupby(level="symbol").shift(-5) / close - 1.0
        out["score"] = -future.reindex(pd.MultiIndex.from_frame(out[["date", "symbol"]])).fillna(0.0).to_numpy()
        return out


def _register_bad_champion(prices: pd.DataFrame, registry: MlflowRegistry) -> str:
    """A real pyfunc champion (an XGBoost fitted until TRAIN_END, serving reversed oracle scores),
    tagged like the pipeline's models so that drift_metrics can read its training window."""
    panel = prices.set_index(["date", "symbol"]).sort_index()
    panel = panel[panel.index.get_level_values("date") <= pd.Timestamp(HOLDOUT_END)]
    model, columns = quick_xgboost(panel, TRAIN_END)
    scorer = ReversedOracleScorer(columns, 5, list(panel.columns), family="xgboost")
    scorer.model_ = model
    example = panel.reset_index().tail(400)
    signature = infer_signature(example, scorer.score(example), params={"all_dates": False})
    del scorer.model_
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the daemon's steps need not import this test
    with registry.tracking(), tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / MODEL_ARTIFACT)
        with mlflow.start_run(experiment_id=registry.experiment_id()):
            info = mlflow.pyfunc.log_model(name="model", python_model=scorer, artifacts={MODEL_ARTIFACT: str(Path(tmp) / MODEL_ARTIFACT)},
                                           signature=signature, pip_requirements=["mlflow", "xgboost", "pandas"])
        version = mlflow.register_model(info.model_uri, registry.model_name, tags={
            "plml.train_end": TRAIN_END, "plml.holdout_start": "2011-07-08", "plml.holdout_end": HOLDOUT_END,
            "plml.horizon": "5", "plml.metric.holdout_rank_ic": "0.02"}).version
    registry.promote(str(version), reason="test: a champion trained to rank backwards")
    return str(version)


def _runs(client_port: int, tag: tuple[str, str] | None = None) -> list[dict]:
    from plml_assets_tests.conftest import graphql

    query = """query { runsOrError(limit: 50) { ... on Runs { results { runId status tags { key value } } } } }"""
    runs = graphql(client_port, query)["data"]["runsOrError"]["results"]
    if tag is None:
        return runs
    return [r for r in runs if {"key": tag[0], "value": tag[1]} in r["tags"]]


def test_drifted_prices_make_the_daemon_retrain_and_repromote(tmp_path, embedded_panel):
    calm = slice_long_panel(embedded_panel, start="2009-01-01")
    calm = calm[calm["date"] <= pd.Timestamp(DATA_END)]
    prices_file = tmp_path / "prices.parquet"
    calm[calm["date"] <= pd.Timestamp(HOLDOUT_END)].to_parquet(prices_file)
    env = {"PLML_PRICES": str(prices_file), "PLML_PROFILE": "quick", "PLML_HOLDOUT_DAYS": "120",
           "PLML_RETRAIN_RUN_CONFIG": json.dumps(LENIENT_GATE)}
    with fresh_postgres_database() as pg, dagster_dev(
            tmp_path, env={**env, **(postgres_instance_env(pg) if pg else {})},
            instance_yaml=REPO / "deploy" / "dagster-postgres.yaml" if pg else REPO / "dagster.yaml") as dev:
        registry = MlflowRegistry(tracking_uri=f"sqlite:///{dev.plml_home / 'mlflow.db'}")
        old = _register_bad_champion(calm, registry)

        # A year of new prices lands, in a volatility regime the champion never saw; the data refresh
        # (the weekday schedule's selection, launched now instead of at 18:30) rebuilds drift_metrics.
        volatility_regime(calm, HOLDOUT_END).to_parquet(prices_file)
        client = DagsterGraphQLClient("127.0.0.1", port_number=dev.port)
        keys = [k for k in DATA_REFRESH.resolve(defs.resolve_asset_graph())]
        refresh = client.submit_job_execution("__ASSET_JOB", asset_selection=keys)

        deadline, retrain = time.time() + RETRAIN_TIMEOUT_S, None
        while time.time() < deadline:
            status = client.get_run_status(refresh)
            assert status != dg.DagsterRunStatus.FAILURE, f"the data refresh failed:\n{dev.log_tail()}"
            triggered = _runs(dev.port, ("plml/trigger", "drift"))
            if triggered:
                retrain = triggered[0]
                if retrain["status"] in ("SUCCESS", "FAILURE", "CANCELED"):
                    break
            time.sleep(5)
        assert retrain is not None, f"the drift sensor requested no run in {RETRAIN_TIMEOUT_S} s:\n{dev.log_tail()}"
        tags = {t["key"]: t["value"] for t in retrain["tags"]}
        assert "feature_drift" in tags["plml/causes"] and "PSI" in tags["plml/reason"]
        assert retrain["status"] == "SUCCESS", f"retraining run {retrain['runId']} ended {retrain['status']}:\n{dev.log_tail()}"

        drift = json.loads((dev.plml_home / "assets" / "drift_metrics.json").read_text())
        assert drift["champion"] == old and drift["decision"]["retrain"] is True
        new = registry.alias_version("champion")
        assert new is not None and new.version != old, "the retrained challenger was not promoted"
        assert registry.champion_history()[-2:] == [old, new.version]
        assert new.tags["plml.train_end"] > TRAIN_END  # trained on the newer data
        if pg:  # the runs and their events were in PostgreSQL, not in a SQLite file beside the instance
            import psycopg2

            with psycopg2.connect(pg) as conn, conn.cursor() as cur:
                cur.execute("SELECT run_id FROM runs")
                stored = {r[0] for r in cur.fetchall()}
            assert {refresh, retrain["runId"]} <= stored
            assert not list(dev.dagster_home.rglob("runs.db"))
