"""`dagster dev` through workspace.yaml serves the asset graph over GraphQL (the API other services use)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from plml_assets_tests.conftest import REPO

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

EXPECTED = {"market_prices", "labels", "features", "feature_selection", "cv_splits", "xgboost_cv_results",
            "xgboost_model", "registered_model", "champion_model"}
QUERY = """{ assetNodes { assetKey { path } groupName dependencyKeys { path } } }"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str) -> dict:
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql", data=json.dumps({"query": query}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def test_dagster_dev_serves_the_asset_graph(tmp_path):
    port = _free_port()
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path / "dh"), "PLML_HOME": str(tmp_path / "plml")}
    (tmp_path / "dh").mkdir()
    log = open(tmp_path / "dev.log", "w")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"), "-p", str(port), "-h", "127.0.0.1"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        deadline = time.time() + 180
        nodes = None
        while time.time() < deadline:
            try:
                data = _graphql(port, QUERY)
                nodes = data.get("data", {}).get("assetNodes")
                if nodes:
                    break
            except OSError:
                pass
            time.sleep(2)
        assert nodes, (tmp_path / "dev.log").read_text()[-3000:]
        keys = {"/".join(n["assetKey"]["path"]) for n in nodes}
        assert EXPECTED <= keys
        by_key = {"/".join(n["assetKey"]["path"]): n for n in nodes}
        assert {"/".join(d["path"]) for d in by_key["xgboost_model"]["dependencyKeys"]} >= {"features", "labels", "feature_selection", "xgboost_cv_results"}
        assert by_key["market_prices"]["groupName"] == "data"
        assert by_key["registered_model"]["groupName"] == "registry"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
