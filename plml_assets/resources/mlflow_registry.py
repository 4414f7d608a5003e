"""MLflow tracking and registry as a typed resource.

dagster-mlflow's ``mlflow_tracking`` is a legacy resource without aliases or typed config, so this
wraps ``MlflowClient``. MLflow's fluent API (``mlflow.start_run``, ``log_model``) reads a process-wide
tracking URI; :meth:`MlflowRegistry.tracking` sets it only for the duration of a block and restores
the previous value, so assets never change global state.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow
import mlflow.tracking._model_registry.utils as _registry_utils
import mlflow.tracking._tracking_service.utils as _tracking_utils
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from pydantic import Field

from plml_assets.lib.registry.integrity import CHECKSUM_TAG, REGISTRATION_TAG, ArtifactIntegrityError, artifact_manifest, checksum_tags, compare
from plml_assets.lib.registry.locks import file_lock
from plml_assets.resources.paths import default_mlflow_artifact_root, default_mlflow_tracking_uri, plml_home, sqlite_schema_lock
from plml_assets.resources.promotion_webhook import LOG as WEBHOOK_LOG
from plml_assets.resources.promotion_webhook import PromotionWebhook
from plml_assets.resources.promotion_webhook import resolve as resolve_webhook
from plml_assets.resources.secrets import env_value, mask_secrets, mask_url


def _is_not_found(exc: MlflowException) -> bool:
    """MLflow reports a missing alias as INVALID_PARAMETER_VALUE, the same code as a malformed store
    URI: only a 'not found' message means absence."""
    if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
        return True
    return exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in str(exc).lower()
CHAMPION = "champion"
CHALLENGER = "challenger"
HISTORY_TAG = "plml.champion_history"
_LOCK = threading.RLock()  # re-entrant: training_run holds it for a whole fit
_REGISTRY_LOCK = threading.RLock()  # alias moves of this process's threads (registry_lock adds the other processes)
_INITIALIZED: set[str] = set()  # SQLite store URIs whose schema this process has seen created
_SYSTEM_METRICS_ENV = ("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING")


@dataclass(frozen=True)
class VersionInfo:
    name: str
    version: str
    run_id: str | None
    aliases: list[str]
    tags: dict[str, str]
    source: str


def _info(name: str, mv) -> VersionInfo:
    # MLflow 3 returns versions as int from some stores and str from others: normalize to str.
    return VersionInfo(name, str(mv.version), mv.run_id, list(mv.aliases or []), dict(mv.tags or {}), mv.source)


class ChampionMoved(RuntimeError):
    """The champion is not the one a promotion was decided against (someone else moved it)."""


class MlflowRegistry(dg.ConfigurableResource):
    tracking_uri: str | None = Field(
        default=None, description="MLflow tracking URI; default sqlite:///$PLML_HOME/mlflow.db (env PLML_MLFLOW_TRACKING_URI, or a file "
        "named by PLML_MLFLOW_TRACKING_URI_FILE); leave unset here when it holds a password, so that it stays out of the run config"
    )
    registry_uri: str | None = Field(default=None, description="registry URI; default: the tracking URI")
    artifact_root: str | None = Field(
        default=None, description="artefact root for new experiments; default $PLML_HOME/mlartifacts"
    )
    experiment_name: str = Field(default="plml", description="MLflow experiment for training runs")
    model_name: str = Field(default="plml_model", description="registered model name (models:/<name>@champion)")
    system_metrics_interval_s: float = Field(
        default=1.0, ge=0.0,
        description="seconds between MLflow system-metrics samples (CPU, memory, disk, network; GPU where NVML sees one) "
        "on every training run; 0 turns them off",
    )
    promotion_webhook_url: str | None = Field(
        default=None, description="URL POSTed a JSON notice on every champion move (promotion, rollback, manual); default env "
        "PLML_PROMOTION_WEBHOOK_URL (or the file PLML_PROMOTION_WEBHOOK_URL_FILE names): leave unset here when it holds a token. "
        "None: no notice",
    )
    promotion_outbox: str | None = Field(default=None, description="SQLite file of the notices; default $PLML_HOME/promotion_outbox.db")
    promotion_webhook_tries: int = Field(default=4, ge=1, description="POSTs of a notice per delivery attempt before it is left pending")
    promotion_webhook_backoff_s: float = Field(default=0.5, ge=0.0, description="seconds before the 2nd try, doubling (at most 4 s)")
    promotion_webhook_timeout_s: float = Field(default=3.0, gt=0.0, description="timeout of one POST, seconds")

    # ---- locations -------------------------------------------------------------------------
    def resolved_tracking_uri(self) -> str:
        return self.tracking_uri or env_value("PLML_MLFLOW_TRACKING_URI") or default_mlflow_tracking_uri()

    def display_tracking_uri(self) -> str:
        """The tracking URI with any password masked: what logs, metadata and `plml status` show."""
        return mask_url(self.resolved_tracking_uri())

    def resolved_registry_uri(self) -> str:
        return self.registry_uri or self.resolved_tracking_uri()

    def client(self) -> MlflowClient:
        uri = self.resolved_tracking_uri()
        if uri.startswith("sqlite:///"):
            plml_home().mkdir(parents=True, exist_ok=True)
        if not uri.startswith("sqlite:///") or uri in _INITIALIZED:
            return MlflowClient(tracking_uri=uri, registry_uri=self.resolved_registry_uri())
        with sqlite_schema_lock(uri):  # the client's first use of the store creates (or migrates) the tables
            client = MlflowClient(tracking_uri=uri, registry_uri=self.resolved_registry_uri())
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        _INITIALIZED.add(uri)
        return client

    def experiment_id(self) -> str:
        client = self.client()
        exp = client.get_experiment_by_name(self.experiment_name)
        if exp is not None:
            return exp.experiment_id
        root = self.artifact_root or (default_mlflow_artifact_root() if self.resolved_tracking_uri().startswith("sqlite") else None)
        try:
            return client.create_experiment(self.experiment_name, artifact_location=root)
        except MlflowException:  # created concurrently by another process
            return client.get_experiment_by_name(self.experiment_name).experiment_id

    @contextlib.contextmanager
    def tracking(self) -> Iterator[MlflowClient]:
        """Point MLflow's fluent API at this store for the duration of the block."""
        with _LOCK:
            saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
            saved_globals = (_tracking_utils._tracking_uri, _registry_utils._registry_uri)
            client = self.client()
            mlflow.set_tracking_uri(self.resolved_tracking_uri())
            mlflow.set_registry_uri(self.resolved_registry_uri())
            try:
                yield client
            finally:
                # MLflow has no public "unset": put its module globals and env vars back exactly,
                # so that code after the block sees MLflow's own defaults (or what it had set).
                _tracking_utils._tracking_uri, _registry_utils._registry_uri = saved_globals
                for key, value in saved_env.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value


    @contextlib.contextmanager
    def training_run(self, run_name: str, tags: dict[str, str],
                     supersedes: tuple[str, ...] = ()) -> Iterator[mlflow.ActiveRun]:
        """An MLflow run open around a whole fit (not only its logging), with MLflow's own system-metrics
        logging sampling every ``system_metrics_interval_s`` seconds, so the run's ``system/*`` metrics
        show what the fit used. A run shorter than one interval gets no sample (MLflow publishes a sample
        only after waiting one interval). Log into it with the fluent API inside the block.

        A fit whose process was killed leaves its run RUNNING for ever. ``supersedes`` names the Dagster
        run ids this fit redoes (its own run's, for a step retry, and the parent and root run ids of a
        re-execution): runs of the same ``dagster.asset`` still RUNNING under one of them are marked
        KILLED first, so the tracking UI shows one live run per fit."""
        interval = self.system_metrics_interval_s
        with self.tracking():
            self._kill_superseded(tags.get("dagster.asset"), supersedes)
            saved = {k: os.environ.get(k) for k in _SYSTEM_METRICS_ENV}
            if interval > 0:
                mlflow.set_system_metrics_sampling_interval(interval)
                mlflow.set_system_metrics_samples_before_logging(1)
            try:
                with mlflow.start_run(experiment_id=self.experiment_id(), run_name=run_name, tags=tags,
                                      log_system_metrics=interval > 0) as run:
                    yield run
            finally:
                for key, value in saved.items():
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value

    def _kill_superseded(self, asset: str | None, dagster_run_ids: tuple[str, ...]) -> list[str]:
        ids = sorted({r for r in dagster_run_ids if r})
        if not asset or not ids:
            return []
        stale = [run for dagster_run in ids for run in self.client().search_runs(  # MLflow has no IN for tags
            [self.experiment_id()], max_results=100,
            filter_string=f"tags.`dagster.asset` = '{asset}' AND attributes.status = 'RUNNING' AND tags.`dagster.run_id` = '{dagster_run}'")]
        for run in stale:
            self.client().set_terminated(run.info.run_id, status="KILLED")
        return [run.info.run_id for run in stale]

    # ---- registry --------------------------------------------------------------------------
    def version_info(self, version: str | int) -> VersionInfo:
        mv = self.client().get_model_version(self.model_name, str(version))
        return _info(self.model_name, mv)

    def alias_version(self, alias: str) -> VersionInfo | None:
        """The version behind ``alias``; None only when the model or alias does not exist (a store
        that is locked or down raises, so a gate never mistakes an outage for "no champion")."""
        try:
            mv = self.client().get_model_version_by_alias(self.model_name, alias)
        except MlflowException as exc:
            if _is_not_found(exc):
                return None
            raise
        return _info(self.model_name, mv)

    def model_uri(self, alias_or_version: str) -> str:
        sep = "/" if str(alias_or_version).isdigit() else "@"
        return f"models:/{self.model_name}{sep}{alias_or_version}"

    def versions(self) -> list[VersionInfo]:
        client = self.client()
        found = client.search_model_versions(f"name='{self.model_name}'")
        out = [_info(self.model_name, mv) for mv in found]
        return sorted(out, key=lambda v: int(v.version))

    def version_profile(self, version: VersionInfo) -> dict[str, float] | None:
        """The version's mean |contribution| per feature (``shap_profile.json`` on its run, written
        with its model card); None for a version registered before there were explanations."""
        if not version.run_id:
            return None
        import json
        import tempfile

        try:
            with tempfile.TemporaryDirectory() as tmp:
                path = self.client().download_artifacts(version.run_id, "shap_profile.json", tmp)
                return {str(k): float(v) for k, v in json.loads(Path(path).read_text())["mean_abs"].items()}
        except (MlflowException, OSError, KeyError, ValueError):
            return None

    def aliases(self) -> dict[str, str]:
        try:
            return {k: str(v) for k, v in self.client().get_registered_model(self.model_name).aliases.items()}
        except MlflowException as exc:
            if _is_not_found(exc):
                return {}
            raise

    def champion_history(self) -> list[str]:
        try:
            rm = self.client().get_registered_model(self.model_name)
        except MlflowException as exc:
            if _is_not_found(exc):
                return []
            raise
        raw = rm.tags.get(HISTORY_TAG, "")
        return [v for v in raw.split(",") if v]

    # ---- integrity: what was registered is what is promoted and served ---------------------
    def download_artifacts(self, model_uri: str, dst: str | Path) -> Path:
        """A local copy of a model's artefacts (``models:/...``, ``runs:/...``) from this store."""
        with self.tracking():
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=str(dst)))

    def version_manifest(self, version: str) -> dict[str, str]:
        with tempfile.TemporaryDirectory() as tmp:
            return artifact_manifest(self.download_artifacts(self.model_uri(str(version)), tmp))

    def record_checksum(self, version: str, manifest: dict[str, str]) -> str:
        """Record the SHA-256 manifest of ``version``'s artefacts on the version; returns the digest."""
        tags = checksum_tags(manifest)
        for key, value in tags.items():
            self.client().set_model_version_tag(self.model_name, str(version), key, value)
        return tags[CHECKSUM_TAG]

    def _resolve(self, alias_or_version: str | int) -> VersionInfo:
        if str(alias_or_version).isdigit():
            return self.version_info(alias_or_version)
        info = self.alias_version(str(alias_or_version))
        if info is None:
            raise LookupError(f"model {self.model_name!r} has no alias {alias_or_version!r}")
        return info

    @contextlib.contextmanager
    def verified_artifacts(self, alias_or_version: str | int) -> Iterator[tuple[VersionInfo, Path]]:
        """``(version, local folder)`` of a version of this registry's model whose artefacts hash to
        the checksum recorded at registration; ArtifactIntegrityError (naming the files) otherwise.
        A version registered without a checksum (by hand, or before checksums) has nothing to be
        compared with and is yielded as it is (``CHECKSUM_TAG`` absent from its tags says so)."""
        info = self._resolve(alias_or_version)
        if info.tags.get(REGISTRATION_TAG) == "incomplete":
            raise ArtifactIntegrityError(f"{self.model_name} v{info.version}: its registration did not finish (tag "
                                         f"{REGISTRATION_TAG}=incomplete, no checksum recorded): re-run registered_model to resume it")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                path = self.download_artifacts(self.model_uri(info.version), tmp)
            except (MlflowException, OSError) as exc:
                raise ArtifactIntegrityError(f"{self.model_name} v{info.version}: its artefacts cannot be read "
                                             f"({type(exc).__name__}: {str(exc)[:300]})") from exc
            if CHECKSUM_TAG in info.tags:
                compare(info.tags, artifact_manifest(path), f"{self.model_name} v{info.version}")
            yield info, path

    def load_model(self, alias_or_version: str | int):
        """The pyfunc of a version (or alias) of this registry's model, as the prediction engine loads
        it, after its artefacts were checked against their registration checksum. Only this
        registry's model is loaded: no arbitrary URI or path."""
        with self.verified_artifacts(alias_or_version) as (_, path):
            with self.tracking():
                return mlflow.pyfunc.load_model(str(path))

    # ---- champion-move notices (resources/promotion_webhook.py, lib/registry/notify.py) -----
    def promotion_webhook(self) -> PromotionWebhook | None:
        """The webhook told of every champion move; None when no URL is configured."""
        return resolve_webhook(self.promotion_webhook_url, self.promotion_outbox, self.promotion_webhook_tries,
                               self.promotion_webhook_backoff_s, self.promotion_webhook_timeout_s)

    def _enqueue_move(self, event: str, version: str, previous: str | None, reasons: list[str]) -> PromotionWebhook | None:
        """Called under the registry lock right after the alias moved, so the outbox keeps the moves' order."""
        if previous == version:
            return None  # the champion stayed where it was: nothing for the prediction engine to reload
        try:
            webhook = self.promotion_webhook()
            if webhook is not None:
                webhook.enqueue(event, self.model_name, version, previous, reasons)
            return webhook
        except Exception as exc:  # the alias has moved: report, do not undo or fail it
            WEBHOOK_LOG.error(f"{self.model_name}: champion moved to v{version} but its notice could not be written to the outbox "
                              f"({type(exc).__name__}: {mask_secrets(exc)}): the prediction engine is not told")
            return None

    # ---- alias moves: one at a time across processes ---------------------------------------
    @contextlib.contextmanager
    def registry_lock(self, timeout_s: float = 120.0) -> Iterator[None]:
        """Serialize alias and history changes of this model across threads and processes: a
        PostgreSQL/MySQL store takes an advisory lock in its own database (every host sharing the
        store sees it); a SQLite store, a file lock beside the database; an MLflow server, a file
        lock under PLML_HOME (one host: processes on other hosts are not serialized)."""
        uri = self.resolved_registry_uri()
        key = f"plml-registry:{self.model_name}"
        with _REGISTRY_LOCK:
            if uri.startswith(("postgresql", "mysql")):
                with _database_lock(uri, key, timeout_s):
                    yield
                return
            if uri.startswith("sqlite:///"):
                path = Path(uri.removeprefix("sqlite:///") + f".{hashlib.sha1(key.encode()).hexdigest()[:10]}.lock")
            else:
                plml_home().mkdir(parents=True, exist_ok=True)
                path = plml_home() / f"registry-{hashlib.sha1((uri + key).encode()).hexdigest()[:12]}.lock"
            with _file_lock(path, timeout_s, f"the registry of {self.model_name!r}"):
                yield

    def promote(self, version: str | int, reason: str, expect_champion: str | None = None) -> VersionInfo:
        """Point ``champion`` at ``version`` and remember it, so rollback can go back. Its artefacts
        must match their registration checksum. With ``expect_champion`` ("none" for no champion)
        it is a compare-and-set: ChampionMoved if the champion is no longer that one. With a
        promotion webhook, the move is queued in its outbox and delivered after the lock is released."""
        with self.registry_lock():
            client = self.client()
            info = self.version_info(version)  # raises if the version does not exist
            with self.verified_artifacts(info.version):
                pass
            current = self.alias_version(CHAMPION)
            if expect_champion is not None:
                now = current.version if current is not None else "none"
                if now != str(expect_champion):
                    raise ChampionMoved(f"the champion of {self.model_name!r} moved to {now} (expected {expect_champion}): "
                                        f"not promoting v{info.version} over a champion it was not compared with")
            client.set_registered_model_alias(self.model_name, CHAMPION, info.version)
            webhook = self._enqueue_move("promotion", info.version, current.version if current is not None else None, [reason])
            history = self.champion_history()
            if not history or history[-1] != info.version:
                history.append(info.version)
            client.set_registered_model_tag(self.model_name, HISTORY_TAG, ",".join(history[-50:]))
            client.set_model_version_tag(self.model_name, info.version, "plml.promotion_reason", reason[:4000])
            promoted = self.version_info(info.version)
        if webhook is not None:
            webhook.deliver_quietly()
        return promoted

    def rollback(self, reason: str | None = None) -> tuple[str, str]:
        """Move ``champion`` back to the version that held it before. Returns (from, to). With a
        promotion webhook, the move is queued in its outbox and delivered after the lock is released."""
        with self.registry_lock():
            moved, webhook = self._rollback(reason)
        if webhook is not None:
            webhook.deliver_quietly()
        return moved

    def _rollback(self, reason: str | None = None) -> tuple[tuple[str, str], PromotionWebhook | None]:
        client = self.client()
        current = self.alias_version(CHAMPION)
        if current is None:
            raise LookupError(f"model {self.model_name!r} has no champion to roll back")
        history = self.champion_history()
        while history and history[-1] == current.version:
            history.pop()
        if not history:
            raise LookupError(
                f"model {self.model_name!r}: champion v{current.version} has no earlier champion to roll back to"
            )
        existing = {v.version for v in self.versions()}
        while history and history[-1] not in existing:  # a deleted version cannot come back
            history.pop()
        if not history:
            raise LookupError(
                f"model {self.model_name!r}: the earlier champions of v{current.version} no longer exist"
            )
        previous = history[-1]
        with self.verified_artifacts(previous):  # the champion it goes back to must still be what was registered
            pass
        client.set_registered_model_alias(self.model_name, CHAMPION, previous)
        webhook = self._enqueue_move("rollback", previous, current.version,
                                     [reason or f"rollback: v{current.version} rolled back to the champion before it, v{previous}"])
        client.set_registered_model_tag(self.model_name, HISTORY_TAG, ",".join(history))
        client.set_model_version_tag(self.model_name, current.version, "plml.rolled_back", "true")
        # A gate verdict given before the rollback must not let champion_model promote it again.
        client.set_model_version_tag(self.model_name, current.version, "plml.gate", "rolled_back")
        return (current.version, previous), webhook


@contextlib.contextmanager
def _file_lock(path: Path, timeout_s: float, what: str) -> Iterator[None]:
    with file_lock(path, timeout_s) as held:
        if not held:
            raise TimeoutError(f"{what} stayed locked for {timeout_s:.0f} s ({path}): another promotion or rollback "
                               f"is running, or a process holding the lock hangs")
        yield


@contextlib.contextmanager
def _database_lock(uri: str, key: str, timeout_s: float) -> Iterator[None]:
    """An advisory lock in the store's own database, held on one connection for the block."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    engine = sa.create_engine(uri, poolclass=NullPool)
    postgres = uri.startswith("postgresql")
    lock_id = int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big", signed=True)
    try:
        with engine.connect() as conn:
            deadline = time.monotonic() + timeout_s
            while True:
                got = (conn.execute(sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": lock_id}).scalar() if postgres
                       else conn.execute(sa.text("SELECT GET_LOCK(:k, 0)"), {"k": key[:64]}).scalar() == 1)
                conn.commit()
                if got:
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the registry lock {key!r} stayed taken for {timeout_s:.0f} s: another promotion or "
                                       f"rollback is running")
                time.sleep(0.05)
            try:
                yield
            finally:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)") if postgres else sa.text("SELECT RELEASE_LOCK(:k)"),
                             {"k": lock_id} if postgres else {"k": key[:64]})
                conn.commit()
    finally:
        engine.dispose()
