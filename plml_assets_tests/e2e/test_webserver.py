"""`dagster dev` through workspace.yaml serves the asset graph over GraphQL (the API other services use)."""

from __future__ import annotations

import pytest

from plml_assets_tests.conftest import dagster_dev, graphql

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXPECTED = {"market_prices", "labels", "features", "feature_selection", "cv_splits", "xgboost_cv_results",
            "xgboost_model", "registered_model", "champion_model"}
QUERY = """{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"""


def test_dagster_dev_serves_the_asset_graph(tmp_path):
    with dagster_dev(tmp_path) as dev:
        nodes = graphql(dev.port, QUERY)["data"]["assetNodes"]
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert EXPECTED <= keys
        by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        assert {"/".join(d["path"]) for d in by_key["xgboost_model"]["dependencyKeys"]} >= {"features", "labels", "feature_selection", "xgboost_cv_results"}
        assert by_key["market_prices"]["groupName"] == "data"
        assert by_key["registered_model"]["groupName"] == "registry"
