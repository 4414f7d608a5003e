"""Issue 18 item 7 (and item 5's deleted champion artefacts): `plml serve-health` answers /healthz and
/readyz for probes, per component, without secrets; `plml status` says when the champion's files are
broken. Real parts: a SQLite MLflow store with logged pyfuncs, an Optuna SQLite storage, a Dagster
instance on a temp DAGSTER_HOME, and the server on loopback (in-process and as the `plml` command)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from plml_assets import cli
from plml_assets.health import Readiness, make_server
from plml_assets.resources.mlflow_registry import CHAMPION
from plml_assets.resources.optuna_storage import OptunaStorage
from plml_assets_tests.conftest import free_port
from plml_assets_tests.resources.test_registry_integrity import _artefact_folder, _registry_with_versions

BIN = Path(sys.executable).parent


def _get(url: str) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def served(plml_home):
    """A model with two registered versions, v2 the champion after v1, and a health server on it."""
    reg = _registry_with_versions(f"sqlite:///{plml_home / 'mlflow.db'}", plml_home / "mlartifacts", n=2)
    reg.promote("1", reason="first")
    reg.promote("2", reason="second")
    readiness = Readiness(registry=reg, storage=OptunaStorage(url=f"sqlite:///{plml_home / 'optuna.db'}"),
                          timeout_s=20, champion_cache_s=0)
    server = make_server(readiness, "127.0.0.1", 0)
    import threading

    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield reg, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_readyz_reports_each_component_and_a_broken_champion_until_rollback(served):
    reg, url = served
    code, body = _get(url + "/healthz")
    assert code == 200 and body["status"] == "ok" and body["pid"] == os.getpid()

    code, body = _get(url + "/readyz")
    assert code == 200 and body["status"] == "ready", body
    assert set(body["components"]) == {"dagster", "mlflow", "optuna", "champion"}
    assert all(c["ok"] for c in body["components"].values())
    assert "v2 loads; its artefacts match their registration checksum" in body["components"]["champion"]["detail"]
    assert body["components"]["champion"]["url"] == f"models:/{reg.model_name}@champion"

    # The champion's files are deleted on the artefact store: not ready, and the answer says which.
    shutil.rmtree(_artefact_folder(reg, "2"))
    code, body = _get(url + "/readyz")
    champion = body["components"]["champion"]
    assert code == 503 and body["status"] == "not_ready" and champion["ok"] is False
    assert "v2 cannot be served" in champion["detail"] and "none of its artefact files is left" in champion["detail"], champion
    assert all(body["components"][c]["ok"] for c in ("dagster", "mlflow", "optuna"))
    # A code location does not need a champion: ?skip=champion is ready.
    code, body = _get(url + "/readyz?skip=champion")
    assert code == 200 and "champion" not in body["components"] and body["skipped"] == ["champion"]
    code, body = _get(url + "/readyz?skip=nonsense")
    assert code == 400 and "nonsense" in body["error"]
    assert _get(url + "/metrics")[0] == 404

    # Rollback goes back to v1, whose files are intact: ready again.
    assert reg.rollback() == ("2", "1")
    code, body = _get(url + "/readyz")
    assert code == 200 and "v1 loads" in body["components"]["champion"]["detail"]


def test_readyz_without_a_champion_says_so(plml_home):
    reg = _registry_with_versions(f"sqlite:///{plml_home / 'mlflow.db'}", plml_home / "mlartifacts", n=1)
    body = Readiness(registry=reg, storage=OptunaStorage(url=f"sqlite:///{plml_home / 'optuna.db'}")).check()
    assert body["status"] == "not_ready"
    assert body["components"]["champion"] == {**body["components"]["champion"], "ok": False,
                                              "detail": f"model {reg.model_name!r} has no champion yet"}
    assert Readiness(registry=reg).check(("champion",))["status"] == "ready"


def test_plml_status_says_the_champions_artefacts_are_broken(served, monkeypatch, capsys):
    reg, _ = served
    monkeypatch.setenv("PLML_MODEL_NAME", reg.model_name)
    monkeypatch.setenv("PLML_MLFLOW_TRACKING_URI", reg.resolved_tracking_uri())
    assert cli.main(["status", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["champion"]["artifacts"]["ok"] is True
    (_artefact_folder(reg, "2") / "python_model.pkl").unlink()
    assert cli.main(["status"]) == 3
    out = capsys.readouterr().out
    assert "ARTEFACTS BROKEN" in out and "missing: python_model.pkl" in out and "plml rollback" in out
    assert cli.main(["status", "--json"]) == 3
    art = json.loads(capsys.readouterr().out)["champion"]["artifacts"]
    assert art["ok"] is False and "missing: python_model.pkl" in art["detail"]
    assert cli.main(["rollback"]) == 0
    assert reg.alias_version(CHAMPION).version == "1"
    assert cli.main(["status", "--json"]) == 0


def test_the_plml_command_serves_probes_masks_passwords_and_stops_on_sigterm(tmp_path):
    """`plml serve-health` as a process, its MLflow store a PostgreSQL URL on a port nothing listens
    on (with a password): /healthz answers, /readyz says 503 within the check timeout naming MLflow,
    and the password is in no answer and no log line."""
    password = "s3cr3t-health-pw"
    dead = free_port()
    env = {**os.environ, "PLML_HOME": str(tmp_path / "home"), "DAGSTER_HOME": str(tmp_path / "dagster"),
           "PLML_MLFLOW_TRACKING_URI": f"postgresql://plml:{password}@127.0.0.1:{dead}/mlflow",
           "PLML_OPTUNA_STORAGE": f"sqlite:///{tmp_path / 'optuna.db'}"}
    env.pop("PLML_OPTUNA_STORAGE_FILE", None)
    port = free_port()
    proc = subprocess.Popen([str(BIN / "plml"), "serve-health", "--port", str(port), "--check-timeout-s", "3"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                code, health = _get(f"http://127.0.0.1:{port}/healthz")
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, proc.stdout.read() if proc.poll() is not None else "no answer"
                time.sleep(0.3)
        assert code == 200 and health["pid"] == proc.pid
        start = time.monotonic()
        code, body = _get(f"http://127.0.0.1:{port}/readyz")
        assert code == 503 and time.monotonic() - start < 3 * 2 + 15
        mlflow = body["components"]["mlflow"]
        assert mlflow["ok"] is False and mlflow["url"] == f"postgresql://plml:***@127.0.0.1:{dead}/mlflow"
        assert body["components"]["optuna"]["ok"] is True and body["components"]["dagster"]["ok"] is True
        assert password not in json.dumps(body)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert "serving /healthz and /readyz" in out and "stopped" in out and password not in out
    assert "/readyz" in out  # the 503 is logged (the 200s are not)
