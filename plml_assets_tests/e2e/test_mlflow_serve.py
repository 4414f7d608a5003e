"""The reference prediction server: `mlflow models serve -m models:/NAME@champion` (README, "Serving
the champion over HTTP"), and `plml serve`, the same server on a checksum-verified copy, score a raw
price panel posted as ``dataframe_split`` to /invocations: one finite score per symbol, equal to what
``MlflowRegistry.load_model("champion").predict`` gives; `plml serve` refuses changed artefacts.

The champion is a real XGBoost fitted on the embedded prices, registered as the training assets log
it (PanelScorer, its artefact, model_signature, input example), without the whole graph: the cheapest
real registration (test_cli_and_serving's whole `plml run` covers the graph's own)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest

from plml_assets.lib.registry.serving import MODEL_ARTIFACT, PanelScorer, model_signature
from plml_assets.resources.mlflow_registry import CHAMPION, MlflowRegistry
from plml_assets_tests.conftest import SLICE_SYMBOLS, free_port, quick_xgboost, stop_process_group

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BIN = Path(sys.executable).parent
TRAIN_END, DATA_END = "2011-06-30", "2012-12-31"
READY_TIMEOUT_S = 180


def _register_champion(panel: pd.DataFrame, registry: MlflowRegistry) -> str:
    model, columns = quick_xgboost(panel, TRAIN_END)
    scorer = PanelScorer(columns, 5, list(panel.columns), training_symbols=SLICE_SYMBOLS, family="xgboost")
    scorer.model_ = model
    example = panel.reset_index().tail(400 * len(SLICE_SYMBOLS))
    signature = model_signature(scorer, example, scorer.score(example))
    del scorer.model_
    with registry.tracking(), tempfile.TemporaryDirectory() as tmp:
        model.save(Path(tmp) / MODEL_ARTIFACT)
        with mlflow.start_run(experiment_id=registry.experiment_id()):
            info = mlflow.pyfunc.log_model(name="model", python_model=scorer, artifacts={MODEL_ARTIFACT: str(Path(tmp) / MODEL_ARTIFACT)},
                                           signature=signature, input_example=example, pip_requirements=["mlflow", "xgboost", "pandas"])
        version = str(mlflow.register_model(info.model_uri, registry.model_name).version)
    registry.record_checksum(version, registry.version_manifest(version))
    registry.promote(version, reason="test: the champion mlflow models serve serves")
    return version


def _post(port: int, body: dict) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        return json.loads(response.read())


@pytest.fixture
def champion(plml_home, embedded_panel):
    panel = embedded_panel[embedded_panel.index.get_level_values("symbol").isin(SLICE_SYMBOLS)]
    panel = panel[(panel.index.get_level_values("date") >= "2009-01-01") & (panel.index.get_level_values("date") <= DATA_END)]
    tracking_uri = f"sqlite:///{plml_home / 'mlflow.db'}"
    registry = MlflowRegistry(tracking_uri=tracking_uri, artifact_root=(plml_home / "mlartifacts").as_uri(), system_metrics_interval_s=0)
    version = _register_champion(panel, registry)
    return registry, panel, version


def _request(panel: pd.DataFrame):
    """The request a prediction engine sends: the last 400 trading days of raw prices, dates as text."""
    dates = panel.index.get_level_values("date").unique()[-400:]
    recent = panel[panel.index.get_level_values("date").isin(dates)].reset_index()
    recent["date"] = recent["date"].dt.strftime("%Y-%m-%d")
    return dates, recent, {"dataframe_split": recent.to_dict(orient="split", index=False)}


def _serve_and_post(command: list[str], env: dict[str, str], port: int, body: dict, log_path: Path) -> dict:
    with open(log_path, "w") as log:
        proc = subprocess.Popen(command, cwd=log_path.parent, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + READY_TIMEOUT_S
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{command[:3]} exited with {proc.returncode}:\n{log_path.read_text()[-4000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=5) as ping:
                        if ping.status == 200:
                            break
                except OSError:
                    pass
                if time.time() > deadline:
                    pytest.fail(f"{command[:3]} did not answer /ping in {READY_TIMEOUT_S} s:\n{log_path.read_text()[-4000:]}")
                time.sleep(1)
            return _post(port, body)
        finally:
            stop_process_group(proc)


def _env(tracking_uri: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLML_", "MLFLOW_"))}
    env.update({"MLFLOW_TRACKING_URI": tracking_uri, "PATH": f"{BIN}:{env.get('PATH', '')}", **extra})
    return env


@pytest.mark.parametrize("server", ["mlflow models serve", "plml serve"])
def test_the_served_champion_scores_raw_prices_like_the_registry(tmp_path, champion, server):
    registry, panel, _ = champion
    dates, recent, body = _request(panel)
    port = free_port()
    tracking_uri = registry.resolved_tracking_uri()
    if server == "mlflow models serve":
        command = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{registry.model_name}@champion",
                   "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
        env = _env(tracking_uri)
    else:  # the same server on the checksum-verified copy
        command = [str(BIN / "plml"), "serve", "--port", str(port)]
        env = _env(tracking_uri, PLML_HOME=os.environ["PLML_HOME"], PLML_MLFLOW_TRACKING_URI=tracking_uri,
                   PLML_MODEL_NAME=registry.model_name)
    answer = _serve_and_post(command, env, port, body, tmp_path / "serve.log")

    served = pd.DataFrame(answer["predictions"])
    assert sorted(served["symbol"]) == sorted(SLICE_SYMBOLS)  # one row per symbol
    assert served["symbol"].is_unique and np.isfinite(served["score"]).all() and served["score"].std() > 0
    assert (pd.to_datetime(served["date"]) == dates[-1]).all()  # the latest date
    expected = registry.load_model(CHAMPION).predict(recent).set_index("symbol")["score"]
    got = served.set_index("symbol")["score"].reindex(expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-9, atol=1e-12)
    if server == "plml serve":
        assert "artefacts verified" in (tmp_path / "serve.log").read_text()


def test_plml_serve_refuses_a_champion_whose_files_changed(tmp_path, champion):
    registry, _, version = champion
    source = Path(registry.client().get_model_version_download_uri(registry.model_name, version).removeprefix("file://"))
    pickle = source / "python_model.pkl"
    pickle.write_bytes(pickle.read_bytes() + b"\0")
    tracking_uri = registry.resolved_tracking_uri()
    env = _env(tracking_uri, PLML_HOME=os.environ["PLML_HOME"], PLML_MLFLOW_TRACKING_URI=tracking_uri, PLML_MODEL_NAME=registry.model_name)
    proc = subprocess.run([str(BIN / "plml"), "serve", "--port", str(free_port())], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"plml serve: not serving {registry.model_name} champion" in proc.stderr and "changed: python_model.pkl" in proc.stderr
