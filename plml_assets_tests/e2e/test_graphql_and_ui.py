"""What other services and people see of a running platform: one real `dagster dev` (webserver +
daemon, started from workspace.yaml) on a small real price slice; GraphQL serves the asset graph, a run
launched through Dagster's Python GraphQL client lands in the MLflow store, and the UI's global asset
lineage draws every asset group (screenshot kept)."""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster_graphql import DagsterGraphQLClient
from mlflow import MlflowClient

from plml_assets_tests.conftest import REPO, dagster_dev, graphql, slice_long_panel

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# The XGBoost study and everything upstream of it: a closed selection, cheapest path to an MLflow run.
SELECTION = ["market_prices", "labels", "base_features", "features", "feature_recipes", "cv_splits",
             "cv_fold_features", "xgboost_study"]
RUN_CONFIG = {"ops": {"xgboost_study": {"config": {"n_trials": 2}}}}
RUN_TIMEOUT_S = 360
ARTIFACTS = Path(os.environ.get("PLML_TEST_ARTIFACTS") or REPO / ".pytest-artifacts")
# Asset node labels in the lineage graph (CSS-module class names keep their readable prefix).
NODE_LABEL = "[class*='AssetNode_assetName']"
RUN_QUERY = """query ($runId: ID!) { runOrError(runId: $runId) { __typename
  ... on Run { status assetSelection { path } assetMaterializations { assetKey { path } } } } }"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, embedded_panel):
    work = tmp_path_factory.mktemp("dagster_dev")
    prices = work / "prices.parquet"
    slice_long_panel(embedded_panel, start="2010-01-01").to_parquet(prices)
    with dagster_dev(work, env={"PLML_PRICES": str(prices), "PLML_PROFILE": "quick"}) as dev:
        yield dev


def _wait_for_run(client: DagsterGraphQLClient, run_id: str, dev) -> dg.DagsterRunStatus:
    deadline = time.time() + RUN_TIMEOUT_S
    while True:
        status = client.get_run_status(run_id)
        if status in (dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED):
            return status
        if time.time() > deadline:
            pytest.fail(f"run {run_id} still {status.value} after {RUN_TIMEOUT_S} s:\n{dev.log_tail()}")
        time.sleep(3)


ASSET_NODES = """{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"""


def test_dagster_dev_serves_the_asset_graph_with_its_lineage(server):
    """What other services read through workspace.yaml and GraphQL: the nodes, their groups and edges."""
    nodes = graphql(server.port, ASSET_NODES)["data"]["assetNodes"]
    by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
    assert {"market_prices", "labels", "features", "feature_selection", "cv_splits", "xgboost_cv_results", "xgboost_model",
            "model_leaderboard", "validation_report", "registered_model", "champion_model"} <= set(by_key)

    def deps(key: str) -> set[str]:
        return {"/".join(d["path"]) for d in by_key[key]["dependencyKeys"]}

    assert deps("xgboost_model") >= {"features", "labels", "feature_selection", "xgboost_cv_results"}
    assert deps("validation_report") >= {"model_leaderboard", "backtest", "cpcv_paths"}  # it judges the leaderboard's pick
    assert deps("registered_model") >= {"model_leaderboard"}
    assert by_key["market_prices"]["groupName"] == "data"
    assert by_key["registered_model"]["groupName"] == "registry"


def test_graphql_client_launches_an_asset_selection_and_the_study_lands_in_mlflow(server):
    client = DagsterGraphQLClient("127.0.0.1", port_number=server.port)
    run_id = client.submit_job_execution(
        "__ASSET_JOB", run_config=RUN_CONFIG, asset_selection=[dg.AssetKey(k) for k in SELECTION]
    )
    status = _wait_for_run(client, run_id, server)
    assert status == dg.DagsterRunStatus.SUCCESS, f"run {run_id} ended {status.value}:\n{server.log_tail()}"

    run = graphql(server.port, RUN_QUERY, {"runId": run_id})["data"]["runOrError"]
    assert {"/".join(k["path"]) for k in run["assetSelection"]} == set(SELECTION)
    assert {"/".join(m["assetKey"]["path"]) for m in run["assetMaterializations"]} == set(SELECTION)  # nothing more

    mlflow = MlflowClient(tracking_uri=f"sqlite:///{server.plml_home / 'mlflow.db'}")
    experiment = mlflow.get_experiment_by_name("plml")
    assert experiment is not None, "no 'plml' experiment in the MLflow store"
    studies = mlflow.search_runs(
        [experiment.experiment_id],
        filter_string=f"tags.`plml.kind` = 'study' AND tags.`plml.family` = 'xgboost' AND tags.`dagster.run_id` = '{run_id}'",
    )
    assert len(studies) == 1, [r.data.tags for r in mlflow.search_runs([experiment.experiment_id])]
    assert studies[0].info.status == "FINISHED"
    assert studies[0].data.params["n_trials_budget"] == "2"  # the run config reached the asset


def test_ui_lineage_draws_every_asset_group(server):
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("Debian's chromium is not installed (.ci/run installs it: apt-get install chromium)")
    from playwright.sync_api import TimeoutError as PlaywrightTimeout
    from playwright.sync_api import sync_playwright

    from plml_assets.definitions import defs

    graph = defs.resolve_asset_graph()
    by_group: dict[str, list[str]] = {}
    for key in graph.get_all_asset_keys():
        by_group.setdefault(graph.get(key).group_name, []).append(key.to_user_string())
    n_assets = sum(len(keys) for keys in by_group.values())
    # Mark the first-visit community dialog as seen: on localhost it would cover the graph.
    assert graphql(server.port, "mutation { setNuxSeen }")["data"]["setNuxSeen"]

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "asset_graph.png"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, headless=True)
        try:
            context = browser.new_context(viewport={"width": 3600, "height": 2000}, device_scale_factor=1)
            # Top-down layout: the expanded graph then fits one landscape screen.
            context.add_init_script("window.localStorage.setItem('asset-graph-direction', JSON.stringify('vertical'))")
            page = context.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{server.url}/asset-groups")  # the global asset lineage
            page.get_by_text("Global asset lineage").first.wait_for()
            # Functions, not expression strings: the webserver's CSP forbids eval.
            page.wait_for_function("n => document.querySelectorAll('svg foreignObject').length >= n", arg=len(by_group))
            # With this many assets Dagster draws one node per group: expand them all (⌥E, "Expand all
            # groups" in the graph settings), then reload so the first layout zooms to fit the whole graph.
            page.keyboard.press("Alt+e")
            page.wait_for_url("**expanded=**")
            page.reload()
            with contextlib.suppress(PlaywrightTimeout):  # too few nodes: the assertions below say which
                page.wait_for_function("([sel, n]) => document.querySelectorAll(sel).length >= n", arg=[NODE_LABEL, n_assets])
            with contextlib.suppress(PlaywrightTimeout):  # materialization colours: cosmetic, not worth a failure
                page.wait_for_load_state("networkidle", timeout=15_000)
            labels = page.locator(NODE_LABEL).all_inner_texts()
            page.screenshot(path=str(shot), full_page=True)
        finally:
            browser.close()
    print(f"asset graph screenshot: {shot}")

    missing = {group: keys for group, keys in by_group.items() if not any(_shows(label, key) for key in keys for label in labels)}
    assert not missing, f"groups without a drawn asset node: {missing}; labels drawn: {labels}"
    assert len(labels) == n_assets, labels


def _shows(label: str, key: str) -> bool:
    """Minimal asset nodes elide the middle of long names: 'ensem…_predictions'."""
    head, sep, tail = label.strip().partition("…")
    return label.strip() == key or bool(sep) and key.startswith(head) and key.endswith(tail)
