"""Issue 18 item 8: every champion move (promotion, rollback, manual) POSTs a notice to the promotion
webhook, retried with backoff, kept in an outbox that survives restarts. Real parts throughout: a
SQLite MLflow store with real versions, a real HTTP server on loopback, `plml notify` in a new process."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pandas as pd
import pytest

from plml_assets.lib.registry.notify import IDEMPOTENCY_HEADER, PAYLOAD_KEYS, Outbox, RetryPolicy, champion_event, flush
from plml_assets.resources.mlflow_registry import CHAMPION, MlflowRegistry
from plml_assets.resources.promotion_webhook import display_webhook_url
from plml_assets_tests.conftest import free_port

TOKEN = "Hk-s3cr3t-t0ken-9f2c"
BIN = Path(sys.executable).parent


class Constant(mlflow.pyfunc.PythonModel):
    def __init__(self, value: float):
        self.value = value

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        return pd.DataFrame({"score": [self.value] * len(model_input)})


class Hook:
    """A webhook receiver on loopback: answers ``fail_status`` to the first ``fail_first`` requests,
    200 afterwards, and records every request (headers, JSON body)."""

    def __init__(self, fail_first: int = 0, fail_status: int = 503):
        self.fail_first, self.fail_status = fail_first, fail_status
        self.requests: list[tuple[dict[str, str], dict]] = []
        self.server: ThreadingHTTPServer | None = None

    def start(self, port: int = 0) -> int:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.requests.append((dict(self.headers.items()), body))
                status = hook.fail_status if len(hook.requests) <= hook.fail_first else 200
                self.send_response(status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self.server.server_address[1]

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def bodies(self) -> list[dict]:
        return [body for _, body in self.requests]

    def delivered(self) -> list[dict]:
        """The bodies answered 200 (the failed answers came first)."""
        return self.bodies()[self.fail_first:]


@pytest.fixture
def hook():
    hooks: list[Hook] = []

    def make(**kwargs) -> Hook:
        hooks.append(Hook(**kwargs))
        return hooks[-1]

    yield make
    for h in hooks:
        h.stop()


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> dict[str, str]:
    """One SQLite store for the module (its schema takes seconds) with one logged pyfunc per value."""
    root = tmp_path_factory.mktemp("webhook_store")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLML_HOME", str(root / "home"))
        reg = MlflowRegistry(tracking_uri=f"sqlite:///{root / 'mlflow.db'}", artifact_root=(root / "artifacts").as_uri(),
                             system_metrics_interval_s=0)
        sources = []
        with reg.tracking():
            for k in range(3):
                with mlflow.start_run(experiment_id=reg.experiment_id()) as run:
                    sources.append((mlflow.pyfunc.log_model(name="model", python_model=Constant(float(k + 1))).model_uri, run.info.run_id))
    return {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "sources": sources}


@pytest.fixture
def home(tmp_path, monkeypatch) -> Path:
    home = tmp_path / "home"
    monkeypatch.setenv("PLML_HOME", str(home))
    for var in ("PLML_PROMOTION_WEBHOOK_URL", "PLML_PROMOTION_WEBHOOK_URL_FILE", "PLML_WEBHOOK_TOKEN", "PLML_WEBHOOK_TOKEN_FILE"):
        monkeypatch.delenv(var, raising=False)
    return home


def registry(store, url: str | None = None, **policy) -> MlflowRegistry:
    """A fresh model with versions 1..3 in the module's store, told of its moves at ``url``."""
    name = f"m_{uuid.uuid4().hex[:10]}"
    reg = MlflowRegistry(tracking_uri=store["tracking_uri"], model_name=name, system_metrics_interval_s=0,
                         promotion_webhook_url=url, **policy)
    with reg.tracking() as client:
        client.create_registered_model(name)
        for source, run_id in store["sources"]:
            client.create_model_version(name, source, run_id=run_id)
    return reg


def _url(port: int, token: bool = True) -> str:
    return f"http://127.0.0.1:{port}/hooks/plml" + (f"?token={TOKEN}" if token else "")


FAST = {"promotion_webhook_tries": 3, "promotion_webhook_backoff_s": 0.05, "promotion_webhook_timeout_s": 2.0}


def test_promotion_and_rollback_post_their_notice(store, home, hook, monkeypatch):
    monkeypatch.setenv("PLML_WEBHOOK_TOKEN", "bearer-xyz-123")
    server = hook()
    reg = registry(store, _url(server.start()), **FAST)
    reg.promote("1", reason="first champion")
    reg.promote("2", reason="beat v1 on the holdout")
    reg.promote("2", reason="again")  # the champion stays where it is: no move, no notice
    assert reg.rollback(reason="v2 misbehaves in production") == ("2", "1")

    bodies = server.bodies()
    assert [(b["event"], b["version"], b["previous_version"]) for b in bodies] == [
        ("promotion", "1", None), ("promotion", "2", "1"), ("rollback", "1", "2")]
    for (headers, body) in server.requests:
        assert set(body) == set(PAYLOAD_KEYS)
        assert body["model_name"] == reg.model_name and body["alias"] == CHAMPION
        assert isinstance(body["reasons"], list) and all(isinstance(r, str) for r in body["reasons"])
        assert headers[IDEMPOTENCY_HEADER] == body["event_id"] and str(uuid.UUID(body["event_id"])) == body["event_id"]
        assert headers["Content-Type"] == "application/json" and headers["Authorization"] == "Bearer bearer-xyz-123"
        when = datetime.fromisoformat(body["occurred_at"])
        assert when.utcoffset().total_seconds() == 0 and abs((datetime.now(timezone.utc) - when).total_seconds()) < 120
    assert [b["reasons"] for b in bodies] == [["first champion"], ["beat v1 on the holdout"], ["v2 misbehaves in production"]]
    assert len({b["event_id"] for b in bodies}) == 3
    outbox = reg.promotion_webhook().outbox
    assert outbox.path == home / "promotion_outbox.db"
    assert outbox.pending() == [] and [e.event_id for e in outbox.delivered()] == [b["event_id"] for b in reversed(bodies)]
    assert all(e.attempts == 1 for e in outbox.delivered())

    # A rollback without a reason says what moved.
    reg.promote("3", reason="third")
    reg.rollback()
    assert server.bodies()[-1]["reasons"] == ["rollback: v3 rolled back to the champion before it, v1"]


@pytest.mark.parametrize("status", [503, 500, 429])
def test_a_server_failing_the_first_tries_gets_the_notice_on_a_retry(store, home, hook, status):
    server = hook(fail_first=2, fail_status=status)
    reg = registry(store, _url(server.start()), **FAST)
    reg.promote("1", reason="first")
    assert len(server.requests) == 3 and len({b["event_id"] for b in server.bodies()}) == 1
    (event,) = reg.promotion_webhook().outbox.delivered()
    assert event.attempts == 3 and event.last_error.startswith(f"HTTP {status} ")  # the last failure is kept
    assert event.delivered_at is not None and reg.promotion_webhook().outbox.pending() == []


def test_a_closed_port_is_retried_until_the_server_starts(store, home, hook):
    """Nothing listens on the port at first (connection refused); the server starts after the first
    refused try: a later try of the same promotion delivers it."""
    port = free_port()
    reg = registry(store, _url(port), promotion_webhook_tries=5, promotion_webhook_backoff_s=0.2, promotion_webhook_timeout_s=2.0)
    server = hook()
    outbox = Outbox(home / "promotion_outbox.db")

    def start_after_first_refusal():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            pending = outbox.pending() if outbox.path.exists() else []
            if pending and pending[0].attempts >= 1:
                server.start(port)
                return
            time.sleep(0.01)

    starter = threading.Thread(target=start_after_first_refusal, daemon=True)
    starter.start()
    reg.promote("1", reason="first")
    starter.join(timeout=30)
    (event,) = outbox.delivered()
    assert 2 <= event.attempts <= 5 and "ConnectionRefusedError" in event.last_error
    assert [b["event_id"] for b in server.bodies()] == [event.event_id]


def test_a_webhook_down_for_every_try_fails_no_move_and_a_new_process_delivers_in_order(store, home, hook, caplog):
    port = free_port()
    reg = registry(store, _url(port), promotion_webhook_tries=2, promotion_webhook_backoff_s=0.05, promotion_webhook_timeout_s=1.0)
    caplog.set_level(logging.WARNING, logger="plml.promotion_webhook")
    reg.promote("1", reason="first")
    reg.promote("2", reason="second")
    assert reg.rollback() == ("2", "1")
    assert reg.alias_version(CHAMPION).version == "1" and reg.champion_history() == ["1"]

    pending = reg.promotion_webhook().outbox.pending()
    assert [(e.payload["event"], e.payload["version"]) for e in pending] == [("promotion", "1"), ("promotion", "2"), ("rollback", "1")]
    # Each flush retried the oldest notice first and stopped there: the later ones never overtook it.
    assert [e.attempts for e in pending] == [6, 0, 0]
    assert "ConnectionRefusedError" in pending[0].last_error
    assert "3 notice(s) pending" in caplog.text and "plml notify --flush" in caplog.text
    assert TOKEN not in caplog.text and "token=***" in caplog.text

    env = {**{k: v for k, v in os.environ.items() if not k.startswith(("PLML_", "MLFLOW_"))},
           "PLML_HOME": str(home), "PLML_PROMOTION_WEBHOOK_URL": _url(port)}

    def notify(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(BIN / "plml"), "notify", *args], env=env, capture_output=True, text=True, timeout=120)

    shown = notify()  # the webhook is still down: listed, not sent
    assert shown.returncode == 1, shown.stderr
    assert shown.stdout.count("pending #") == 3 and "6 attempt(s), last error: ConnectionRefusedError" in shown.stdout
    down = notify("--flush")
    assert down.returncode == 1 and "tries failed" in down.stderr
    server = hook()
    server.start(port)
    flushed = notify("--flush", "--json")
    assert flushed.returncode == 0, flushed.stdout + flushed.stderr
    report = json.loads(flushed.stdout)
    assert report["pending"] == [] and report["delivered_now"] == [e.event_id for e in pending]
    assert report["url"] == f"http://127.0.0.1:{port}/hooks/plml?token=***"
    assert [b["event_id"] for b in server.bodies()] == [e.event_id for e in pending]  # once each, in the moves' order
    assert [b["previous_version"] for b in server.bodies()] == [None, "1", "2"]
    again = notify("--flush")
    assert again.returncode == 0 and "no notice pending" in again.stdout and len(server.requests) == 3
    for proc in (shown, down, flushed, again):
        assert TOKEN not in proc.stdout + proc.stderr


def test_no_url_sends_nothing_and_writes_no_outbox(store, home):
    reg = registry(store)
    assert reg.promotion_webhook() is None
    reg.promote("1", reason="first")
    reg.promote("2", reason="second")
    assert reg.rollback() == ("2", "1")
    assert not (home / "promotion_outbox.db").exists()
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PLML_")}, "PLML_HOME": str(home)}
    shown = subprocess.run([str(BIN / "plml"), "notify", "--flush"], env=env, capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "none (PLML_PROMOTION_WEBHOOK_URL unset)" in shown.stdout and "no notice pending" in shown.stdout
    assert not (home / "promotion_outbox.db").exists()


def test_the_url_comes_from_the_environment_or_a_file(store, home, hook, tmp_path, monkeypatch):
    server = hook()
    port = server.start()
    secret_file = tmp_path / "webhook_url"
    secret_file.write_text(_url(port) + "\n")
    monkeypatch.setenv("PLML_PROMOTION_WEBHOOK_URL_FILE", str(secret_file))
    reg = registry(store, **FAST)
    reg.promote("1", reason="from the file")
    assert [b["version"] for b in server.bodies()] == ["1"]
    monkeypatch.setenv("PLML_PROMOTION_WEBHOOK_URL", _url(port, token=False))  # the variable wins over its _FILE
    assert reg.promotion_webhook().url == _url(port, token=False)


def test_the_webhook_url_is_shown_masked():
    assert display_webhook_url(f"https://hooks.example.com/p?token={TOKEN}&x=1") == "https://hooks.example.com/p?token=***&x=1"
    assert display_webhook_url("https://svc:pw@hooks.example.com/promote") == "https://svc:***@hooks.example.com/promote"
    assert display_webhook_url("https://hooks.example.com/services/T0123456789ABCDEFG/promote") == \
        "https://hooks.example.com/services/***/promote"
    assert display_webhook_url("http://127.0.0.1:8080/promotion-webhook") == "http://127.0.0.1:8080/promotion-webhook"


def test_retry_policy_is_bounded():
    policy = RetryPolicy()
    assert policy.delays() == [0.5, 1.0, 2.0] and policy.worst_case_s() <= 16
    assert RetryPolicy(tries=6, backoff_s=1.0).delays() == [1.0, 2.0, 4.0, 4.0, 4.0]
    with pytest.raises(ValueError):
        RetryPolicy(tries=0)


def _enqueue_many(path: str, tag: str, n: int, start) -> None:
    start.wait(timeout=60)
    outbox = Outbox(path)
    for k in range(n):
        outbox.enqueue(champion_event("promotion", tag, str(k), None, [f"{tag} #{k}"]))


def test_the_outbox_is_safe_under_concurrent_processes_and_flushers(tmp_path, hook):
    """Four processes write 25 events each at once: none is lost and each writer's order is kept.
    Then two flushers deliver at once: the delivery lock lets one POST each event, once, in order."""
    path = tmp_path / "outbox.db"
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [ctx.Process(target=_enqueue_many, args=(str(path), f"w{i}", 25, start)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    outbox = Outbox(path)
    pending = outbox.pending()
    assert len(pending) == 100 and len({e.event_id for e in pending}) == 100
    for i in range(4):
        assert [int(e.payload["version"]) for e in pending if e.payload["model_name"] == f"w{i}"] == list(range(25))

    server = hook()
    url = _url(server.start(), token=False)
    results = []
    flushers = [threading.Thread(target=lambda: results.append(flush(Outbox(path), url, RetryPolicy(tries=2, backoff_s=0.01))))
                for _ in range(2)]
    for t in flushers:
        t.start()
    for t in flushers:
        t.join(timeout=120)
    assert [b["event_id"] for b in server.bodies()] == [e.event_id for e in pending]
    assert sum(len(r.delivered) for r in results) == 100 and outbox.pending() == []
