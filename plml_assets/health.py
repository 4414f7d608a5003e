"""`plml serve-health`: the probes a load balancer, Kubernetes or the prediction engine calls.

    GET /healthz   200 while the process is up: {"status": "ok", "pid", "uptime_s"}
    GET /readyz    200 when every component answers, else 503, with one entry per component:
                   dagster (the instance's run storage answers), mlflow (the tracking store answers),
                   optuna (the study storage answers), champion (the registry's champion exists, its
                   artefacts match their registration checksum and it loads as a pyfunc)
    GET /readyz?skip=champion   the same without the champion (a code location is ready to run
                   before any model is registered; the Helm sidecar probes this)

Every check is read-only and bounded by a timeout (a store that is down answers "no answer within
N s" instead of hanging the probe); the champion is loaded once per version and re-verified after
``champion_cache_s``. No URL in an answer carries a password (resources/secrets.mask_secrets).
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from plml_assets.resources.mlflow_registry import CHAMPION, MlflowRegistry
from plml_assets.resources.optuna_storage import OptunaStorage
from plml_assets.resources.paths import default_dagster_home, plml_home
from plml_assets.resources.secrets import mask_secrets, mask_url

COMPONENTS = ("dagster", "mlflow", "optuna", "champion")

Check = tuple[bool, str, str]  # (ok, where (masked URL), detail)


def bounded(check, name: str, url_hint: str, timeout_s: float) -> Check:
    """Run one check in a daemon thread so an unreachable server cannot hang the caller
    (MLflow's SQL store retries a refused connection for minutes)."""
    box: list[Check] = []

    def target() -> None:
        try:
            box.append(check())
        except Exception as exc:  # a check names its own failures; this is the last resort
            box.append((False, url_hint, f"{type(exc).__name__}: {exc}"))

    thread = threading.Thread(target=target, name=f"check-{name}", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if box:
        return box[0]
    return False, url_hint, f"no answer within {timeout_s:.0f} s (server down or unreachable?)"


def store_missing(registry: MlflowRegistry) -> str | None:
    """A SQLite store that does not exist yet would be created empty by MLflow: say so instead."""
    uri = registry.resolved_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return f"no MLflow store at {uri} (PLML_HOME={plml_home()}): run `plml run` first or set PLML_HOME"
    return None


class Readiness:
    """The read-only checks behind /readyz, with what is costly to build (the Dagster instance,
    the Optuna storage, the loaded champion) kept between probes."""

    def __init__(self, registry: MlflowRegistry | None = None, storage: OptunaStorage | None = None,
                 timeout_s: float = 5.0, champion_cache_s: float = 300.0):
        self.registry = registry or MlflowRegistry(model_name=os.environ.get("PLML_MODEL_NAME", "plml_model"))
        self.optuna = storage or OptunaStorage()
        self.timeout_s = float(timeout_s)
        self.champion_cache_s = float(champion_cache_s)
        self._instance = None
        self._rdb = None
        self._champion: tuple[str, str, float, Check] | None = None  # (version, checksum, when, result)
        self._lock = threading.Lock()

    # ---- the components ------------------------------------------------------------------------
    def dagster(self) -> Check:
        from dagster import DagsterInstance

        home = os.environ.get("DAGSTER_HOME") or str(default_dagster_home())
        if self._instance is None:
            if not (Path(home) / "dagster.yaml").exists() and not Path(home).is_dir():
                return False, home, f"no Dagster instance at DAGSTER_HOME={home}"
            os.environ.setdefault("DAGSTER_HOME", home)
            self._instance = DagsterInstance.get()
        storage = self._instance.run_storage
        where = getattr(storage, "postgres_url", None) or getattr(storage, "mysql_url", None)
        url = f"{home} (run storage: {type(storage).__name__}{' at ' + mask_url(where) if where else ''})"
        try:
            self._instance.get_runs(limit=1)
        except Exception as exc:
            return False, url, f"the run storage failed: {type(exc).__name__}: {exc}"
        return True, url, "run storage answers"

    def mlflow(self) -> Check:
        url = self.registry.display_tracking_uri()
        missing = store_missing(self.registry)
        if missing:
            return False, url, missing
        try:
            self.registry.client().search_experiments(max_results=1)
        except Exception as exc:
            return False, url, f"the tracking store failed: {type(exc).__name__}: {exc}"
        return True, url, "tracking store answers"

    def optuna_storage(self) -> Check:
        url = self.optuna.display_url()
        try:
            if self._rdb is None:
                self._rdb = self.optuna.storage()
            try:
                self._rdb.get_study_id_from_name("plml-readyz-probe")  # one query; the study need not exist
            except KeyError:
                pass
        except Exception as exc:
            self._rdb = None
            return False, url, f"the study storage failed: {type(exc).__name__}: {exc}"
        return True, url, "study storage answers"

    def champion(self) -> Check:
        where = self.registry.model_uri(CHAMPION)
        missing = store_missing(self.registry)
        if missing:
            return False, where, missing
        info = self.registry.alias_version(CHAMPION)
        if info is None:
            return False, where, f"model {self.registry.model_name!r} has no champion yet"
        checksum = info.tags.get("plml.artifact_sha256", "")
        cached = self._champion
        if cached and cached[0] == info.version and cached[1] == checksum and time.monotonic() - cached[2] < self.champion_cache_s:
            return cached[3]
        try:
            self.registry.load_model(CHAMPION)
            result: Check = (True, where, f"v{info.version} loads; its artefacts match their registration checksum"
                             if checksum else f"v{info.version} loads (registered without a checksum)")
        except Exception as exc:
            result = (False, where, f"v{info.version} cannot be served: {type(exc).__name__}: {exc}")
        self._champion = (info.version, checksum, time.monotonic(), result)
        return result

    # ---- the answer ------------------------------------------------------------------------------
    def check(self, skip: tuple[str, ...] = ()) -> dict[str, object]:
        unknown = sorted(set(skip) - set(COMPONENTS))
        if unknown:
            raise ValueError(f"unknown component(s) to skip: {unknown} (components: {list(COMPONENTS)})")
        checks = {"dagster": self.dagster, "mlflow": self.mlflow, "optuna": self.optuna_storage, "champion": self.champion}
        hints = {"dagster": os.environ.get("DAGSTER_HOME") or str(default_dagster_home()),
                 "mlflow": self.registry.display_tracking_uri(), "optuna": self.optuna.display_url(),
                 "champion": self.registry.model_uri(CHAMPION)}
        components: dict[str, dict[str, object]] = {}
        with self._lock:  # probes arriving together share one round of checks rather than piling up
            for name, fn in checks.items():
                if name in skip:
                    continue
                start = time.monotonic()
                ok, url, detail = bounded(fn, name, hints[name], self.timeout_s)
                components[name] = {"ok": ok, "url": mask_secrets(url), "detail": mask_secrets(detail),
                                    "seconds": round(time.monotonic() - start, 3)}
        ready = all(c["ok"] for c in components.values())
        return {"status": "ready" if ready else "not_ready", "model_name": self.registry.model_name,
                "checked_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "skipped": sorted(skip), "components": components}


def make_server(readiness: Readiness, host: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    started = time.monotonic()

    class Handler(BaseHTTPRequestHandler):
        server_version = "plml-health"

        def _answer(self, code: int, body: dict[str, object]) -> None:
            data = (json.dumps(body, indent=2) + "\n").encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            url = urlparse(self.path)
            if url.path == "/healthz":
                self._answer(200, {"status": "ok", "pid": os.getpid(), "uptime_s": round(time.monotonic() - started, 1)})
            elif url.path == "/readyz":
                skip = tuple(s for value in parse_qs(url.query).get("skip", []) for s in value.split(",") if s)
                try:
                    body = readiness.check(skip)
                except ValueError as exc:
                    self._answer(400, {"status": "bad_request", "error": str(exc)})
                    return
                self._answer(200 if body["status"] == "ready" else 503, body)
            else:
                self._answer(404, {"status": "not_found", "error": f"no route {url.path!r}: try /healthz or /readyz"})

        def log_request(self, code="-", size="-") -> None:  # probes every few seconds: log only what is not 200
            if str(getattr(code, "value", code)) != "200":
                super().log_request(code, size)

        def log_message(self, format: str, *args) -> None:  # masked, on stdout
            print(mask_secrets(f"plml serve-health: {self.address_string()} {format % args}"), flush=True)

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server
