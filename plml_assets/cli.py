"""`plml`: the few verbs a person types.

    plml run [--quick]       materialize the whole asset graph locally, then print a summary
    plml reproduce VERSION   retrain a registered version from what it recorded; compare holdout scores
    plml status [--json]     the registered model: champion, challenger, metrics
    plml promote VERSION     point 'champion' at VERSION
    plml rollback            move 'champion' back to the previous champion
    plml notify [--flush]    the champion-move notices waiting for the promotion webhook; deliver them
    plml doctor              check that the Dagster instance, MLflow store and Optuna storage work
    plml analytics [--json]  wall, CPU, memory and cost of every step of the latest run, and trends
    plml advance [--days N | --to DATE | --clear]   move the simulated 'today' (new prices arrive)
    plml serve [--port P]    mlflow models serve on a checksum-verified copy of the champion
    plml serve-health        /healthz and /readyz for probes (stores reachable, champion loadable)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

from mlflow.exceptions import MlflowException

from plml_assets.health import bounded, store_missing
from plml_assets.lib.registry.integrity import ArtifactIntegrityError
from plml_assets.resources.mlflow_registry import CHALLENGER, CHAMPION, MlflowRegistry
from plml_assets.resources.optuna_storage import OptunaStorage
from plml_assets.resources.paths import default_dagster_home, plml_home
from plml_assets.resources.secrets import mask_secrets, mask_url


def _registry() -> MlflowRegistry:
    return MlflowRegistry(model_name=os.environ.get("PLML_MODEL_NAME", "plml_model"))  # the URI from the environment


def _ensure_dagster_home() -> Path:
    """DAGSTER_HOME, defaulting to $PLML_HOME/dagster, seeded with the project's dagster.yaml."""
    home = Path(os.environ.get("DAGSTER_HOME") or default_dagster_home()).resolve()
    if home.exists() and not home.is_dir():
        return home  # let the instance report it; doctor names it
    home.mkdir(parents=True, exist_ok=True)
    template = Path(__file__).resolve().parents[1] / "dagster.yaml"
    if not (home / "dagster.yaml").exists() and template.exists():
        shutil.copyfile(template, home / "dagster.yaml")
    os.environ["DAGSTER_HOME"] = str(home)
    return home


# ---------------------------------------------------------------------------------------------
def status_payload(registry: MlflowRegistry) -> dict[str, object]:
    versions = registry.versions()
    champion = registry.alias_version(CHAMPION)
    challenger = registry.alias_version(CHALLENGER)

    def metrics(info) -> dict[str, float]:
        if info is None:
            return {}
        return {k.removeprefix("plml.metric."): float(v) for k, v in info.tags.items() if k.startswith("plml.metric.")}

    def artifacts(info) -> dict[str, object] | None:
        """Whether the champion's files are still those registered (deleted or changed files make
        serving refuse: say so here, before the prediction engine finds out)."""
        if info is None:
            return None
        try:
            with registry.verified_artifacts(info.version):
                pass
        except ArtifactIntegrityError as exc:
            return {"ok": False, "detail": str(exc)}
        checked = "plml.artifact_sha256" in info.tags
        return {"ok": True, "detail": "match their registration checksum" if checked else "present (registered without a checksum)"}

    return {
        "model_name": registry.model_name,
        "tracking_uri": registry.display_tracking_uri(),
        "champion": None if champion is None else {
            "version": champion.version,
            "model_uri": registry.model_uri(CHAMPION),
            "run_id": champion.run_id,
            "metrics": metrics(champion),
            "gate": champion.tags.get("plml.gate_detail"),
            "data_fingerprint": champion.tags.get("plml.data_fingerprint"),
            "code_version": champion.tags.get("plml.code_version"),
            "artifacts": artifacts(champion),
        },
        "challenger": None if challenger is None else {
            "version": challenger.version,
            "metrics": metrics(challenger),
            "gate": challenger.tags.get("plml.gate_detail"),
        },
        "aliases": registry.aliases(),
        "champion_history": registry.champion_history(),
        "versions": [v.version for v in versions],
    }


def _metric_lines(m: dict[str, float]) -> list[str]:
    """Two lines, CV and holdout; a metric the model does not have (an ensemble has no K-fold score) is left out."""

    def parts(fields: tuple[tuple[str, str, str], ...]) -> str:
        return "  ".join(f"{label} {m[key]:{fmt}}" for label, key, fmt in fields if key in m and m[key] == m[key])

    cv = parts((("rank IC", "cv_walk_forward_rank_ic", ".4f"), ("IC", "cv_walk_forward_ic", ".4f"),
                ("dir.acc", "cv_walk_forward_directional_accuracy", ".3f"), ("(purged K-fold rank IC", "cv_kfold_rank_ic", ".4f")))
    if "cv_kfold_rank_ic" in m and m["cv_kfold_rank_ic"] == m["cv_kfold_rank_ic"]:
        cv += ")"
    holdout = parts((("rank IC", "holdout_rank_ic", ".4f"), ("IC", "holdout_ic", ".4f"),
                     ("dir.acc", "holdout_directional_accuracy", ".3f"), ("RMSE", "holdout_rmse", ".4f")))
    return [f"    CV (walk-forward): {cv or 'not recorded'}", f"    holdout:           {holdout or 'not recorded'}"]


def _print_status(payload: dict[str, object]) -> None:
    print(f"model {payload['model_name']}  ({payload['tracking_uri']})")
    champ = payload["champion"]
    if champ is None:
        print("  champion: none")
    else:
        print(f"  champion: v{champ['version']}  {champ['model_uri']}")
        art = champ.get("artifacts") or {}
        if not art.get("ok", True):
            print(f"    ARTEFACTS BROKEN: {art['detail']}: serving refuses it; `plml rollback` goes back to the previous champion")
        print("\n".join(_metric_lines(champ["metrics"])))
        if champ.get("gate"):
            print(f"    gate: {champ['gate']}")
    chal = payload["challenger"]
    if chal is not None and (champ is None or chal["version"] != champ["version"]):
        print(f"  challenger: v{chal['version']}")
        print("\n".join(_metric_lines(chal["metrics"])))
        print(f"    gate: {chal.get('gate') or 'not evaluated'}")
    print(f"  aliases: {payload['aliases']}  versions: {payload['versions']}")


def _existing_registry(verb: str) -> MlflowRegistry | None:
    registry = _registry()
    missing = store_missing(registry)
    if missing:
        print(f"plml {verb}: {missing}", file=sys.stderr)
        return None
    return registry


def cmd_status(args: argparse.Namespace) -> int:
    registry = _existing_registry("status")
    if registry is None:
        return 1
    try:
        payload = status_payload(registry)
    except MlflowException as exc:
        print(f"plml status: the MLflow store {registry.display_tracking_uri()} failed: {mask_secrets(exc)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(payload, indent=2))
    else:
        _print_status(payload)
    champion = payload["champion"]
    return 3 if champion is not None and not (champion.get("artifacts") or {}).get("ok", True) else 0


def cmd_promote(args: argparse.Namespace) -> int:
    registry = _existing_registry("promote")
    if registry is None:
        return 1
    try:
        before = registry.alias_version(CHAMPION)
        target = registry.version_info(args.version)
        gate = target.tags.get("plml.gate")
        if gate and gate != "promote":
            print(
                f"plml promote: warning: v{target.version} did not pass the promotion gate ({gate}: "
                f"{target.tags.get('plml.gate_detail', '')}); promoting it because you asked",
                file=sys.stderr,
            )
        info = registry.promote(args.version, reason=f"manual promotion by `plml promote {args.version}`")
    except (MlflowException, ArtifactIntegrityError, TimeoutError) as exc:
        print(f"plml promote: cannot promote version {args.version} of {registry.model_name}: {exc}", file=sys.stderr)
        return 2
    print(f"{registry.model_name}: champion v{before.version if before else 'none'} -> v{info.version}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    registry = _existing_registry("rollback")
    if registry is None:
        return 1
    try:
        old, new = registry.rollback(reason="manual rollback by `plml rollback`")
    except (LookupError, MlflowException, ArtifactIntegrityError, TimeoutError) as exc:
        print(f"plml rollback: {exc}", file=sys.stderr)
        return 2
    print(f"{registry.model_name}: champion rolled back v{old} -> v{new}")
    return 0


def cmd_notify(args: argparse.Namespace) -> int:
    """The champion-move notices of the promotion outbox (resources/promotion_webhook.py); --flush
    delivers the pending ones, oldest first. Exit 0: none pending; 1: some still pending; 2: no URL."""
    from plml_assets.lib.registry.notify import Outbox
    from plml_assets.resources.promotion_webhook import default_outbox_path, display_webhook_url

    try:
        webhook = _registry().promotion_webhook()
    except ValueError as exc:  # a _FILE variable naming an unreadable file
        print(f"plml notify: {mask_secrets(exc)}", file=sys.stderr)
        return 2
    outbox = webhook.outbox if webhook is not None else Outbox(default_outbox_path())
    delivered, error = [], None
    if args.flush and webhook is not None:
        result = webhook.flush()
        delivered, error = result.delivered, result.error or ("another process is delivering" if result.busy else None)
    pending = outbox.pending()
    if args.json:
        print(json.dumps({"url": display_webhook_url(webhook.url) if webhook else None, "outbox": str(outbox.path),
                          "delivered_now": delivered, "error": error, "pending": [e.to_json() for e in pending],
                          "recently_delivered": [e.to_json() for e in outbox.delivered(limit=10)]}, indent=2))
    else:
        print(f"promotion webhook: {display_webhook_url(webhook.url) if webhook else 'none (PLML_PROMOTION_WEBHOOK_URL unset)'}; "
              f"outbox {outbox.path}")
        if delivered:
            print(f"  delivered now: {len(delivered)} notice(s)")
        for e in pending:
            print(f"  pending #{e.seq} {e.payload['event']} {e.payload['model_name']} v{e.payload['previous_version'] or 'none'} -> "
                  f"v{e.payload['version']} at {e.payload['occurred_at']} ({e.event_id}): {e.attempts} attempt(s)"
                  + (f", last error: {e.last_error}" if e.last_error else ""))
        if not pending:
            print("  no notice pending")
        if error:
            print(f"plml notify: {error}", file=sys.stderr)
    if pending and webhook is None:
        if args.flush:
            print("plml notify: no promotion webhook URL configured (PLML_PROMOTION_WEBHOOK_URL): cannot deliver", file=sys.stderr)
        return 2
    return 1 if pending else 0


def cmd_advance(args: argparse.Namespace) -> int:
    """Simulate time passing over a fixed panel: prices after the as-of date do not exist yet, so
    moving it forward makes new data arrive for the data refresh, the automation and the drift sensor."""
    import pandas as pd

    from plml_assets.lib.data.prices import PriceDataError
    from plml_assets.resources.paths import as_of_file
    from plml_assets.resources.prices import PriceSource

    path = as_of_file()
    if args.clear:
        path.unlink(missing_ok=True)
        print("plml advance: as-of cleared: every date of the source is visible")
        return 0
    full = PriceSource(source=os.environ.get("PLML_PRICES", "embedded"), as_of="2262-01-01")
    try:
        dates = full.load().index.get_level_values("date").unique().sort_values()
    except PriceDataError as exc:
        print(f"plml advance: {exc}", file=sys.stderr)
        return 2
    current = PriceSource(source=full.source).effective_as_of()
    if args.to:
        try:
            target = pd.Timestamp(args.to)
        except ValueError:
            print(f"plml advance: --to {args.to!r} is not a date", file=sys.stderr)
            return 2
    elif args.days is not None:
        if current is None:
            print("plml advance: --days needs a starting as-of date: set one first with --to DATE", file=sys.stderr)
            return 2
        position = int(dates.searchsorted(pd.Timestamp(current), side="right")) - 1
        target = dates[min(max(position + args.days, 0), len(dates) - 1)]
    else:
        print(f"as of {current}" if current else "as of: not set (every date of the source is visible)")
        return 0
    visible = dates[dates <= target]
    if len(visible) == 0:
        print(f"plml advance: the source has no date on or before {target.date()} (first {dates[0].date()})", file=sys.stderr)
        return 2
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(str(visible[-1].date()))
    before = int((dates <= pd.Timestamp(current)).sum()) if current else None
    change = f" ({len(visible) - before:+d} trading dates)" if before is not None else ""
    print(f"plml advance: as of {current or 'unset'} -> {visible[-1].date()}{change}; {len(visible)} of {len(dates)} dates visible")
    return 0


# ---------------------------------------------------------------------------------------------
def _doctor_dagster() -> tuple[bool, str, str]:
    from dagster import DagsterInstance

    note = ""
    if not os.environ.get("DAGSTER_HOME"):
        note = " (DAGSTER_HOME unset: the default of `plml run`)"
    home = str(_ensure_dagster_home())
    try:
        instance = DagsterInstance.get()
        storage = instance.run_storage
        where = getattr(storage, "postgres_url", None) or getattr(storage, "mysql_url", None)
        url = f"{home} (run storage: {type(storage).__name__}{' at ' + mask_url(where) if where else ''})"
        instance.get_runs(limit=1)
        instance.run_storage.set_cursor_values({"plml_doctor_last_check": str(time.time())})
        instance.run_storage.get_cursor_values({"plml_doctor_last_check"})
        return True, url + note, "reachable and writable"
    except Exception as exc:
        return False, home + note, f"{type(exc).__name__}: {exc}"


def _doctor_mlflow() -> tuple[bool, str, str]:
    registry = _registry()
    url = registry.display_tracking_uri()
    try:
        exp_id = registry.experiment_id()
        registry.client().set_experiment_tag(exp_id, "plml.doctor_last_check", str(time.time()))
        return True, url, f"reachable and writable (experiment {registry.experiment_name!r} id {exp_id})"
    except Exception as exc:
        return False, url, f"{type(exc).__name__}: {exc}"


def _doctor_optuna() -> tuple[bool, str, str]:
    storage = OptunaStorage()
    url = storage.display_url()
    try:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        rdb = storage.storage()
        study = optuna.create_study(study_name=f"plml_doctor_{os.getpid()}", storage=rdb, load_if_exists=True)
        study.enqueue_trial({})
        optuna.delete_study(study_name=study.study_name, storage=rdb)
        return True, url, "reachable and writable"
    except Exception as exc:
        return False, url, f"{type(exc).__name__}: {exc}"


DOCTOR_TIMEOUT_S = float(os.environ.get("PLML_DOCTOR_TIMEOUT", "20"))


def _bounded(check, name: str, url_hint: str) -> tuple[bool, str, str]:
    return bounded(check, name, url_hint, DOCTOR_TIMEOUT_S)


def cmd_doctor(args: argparse.Namespace) -> int:
    results = {
        "dagster": _bounded(_doctor_dagster, "dagster", os.environ.get("DAGSTER_HOME", str(default_dagster_home()))),
        "mlflow": _bounded(_doctor_mlflow, "mlflow", _registry().display_tracking_uri()),
        "optuna": _bounded(_doctor_optuna, "optuna", OptunaStorage().display_url()),
    }
    # A driver's error message may quote the URL it was given (password included): mask every detail.
    results = {name: (ok, mask_secrets(url), mask_secrets(detail)) for name, (ok, url, detail) in results.items()}
    failed = [name for name, (ok, _, _) in results.items() if not ok]
    if args.json:
        print(json.dumps({k: {"ok": ok, "url": url, "detail": d} for k, (ok, url, d) in results.items()}, indent=2))
    else:
        for name, (ok, url, detail) in results.items():
            print(f"{'ok  ' if ok else 'FAIL'} {name:8s} {url}\n       {detail}")
    if failed:
        print(f"plml doctor: not working: {', '.join(failed)}", file=sys.stderr)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(1)  # a timed-out check may still hold a thread in a C call: do not wait for it
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """`mlflow models serve` on a verified copy of the champion (or --version): the files served are the
    ones whose SHA-256 matched the registration checksum, which `mlflow models serve -m models:/...`
    alone does not check."""
    registry = _existing_registry("serve")
    if registry is None:
        return 1
    target = args.version or CHAMPION
    try:
        with registry.verified_artifacts(target) as (info, path):
            served = plml_home() / "serving" / f"{registry.model_name}-v{info.version}"
            if served.exists():
                shutil.rmtree(served)
            served.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(path, served)
    except (LookupError, MlflowException, ArtifactIntegrityError) as exc:
        print(f"plml serve: not serving {registry.model_name} {target}: {mask_secrets(exc)}", file=sys.stderr)
        return 2
    command = [str(Path(sys.executable).parent / "mlflow"), "models", "serve", "-m", str(served), "--env-manager", "local",
               "-h", args.host, "-p", str(args.port), "-w", str(args.workers)]
    print(f"plml serve: {registry.model_name} v{info.version} ({target}), artefacts verified, copied to {served}; "
          f"POST raw prices to http://{args.host}:{args.port}/invocations", flush=True)
    os.execv(command[0], command)  # the server replaces this process: signals reach it directly
    return 0  # not reached


def cmd_serve_health(args: argparse.Namespace) -> int:
    """/healthz and /readyz over HTTP (plml_assets/health.py), or one readiness answer with --once."""
    import signal

    from plml_assets.health import Readiness, make_server

    _ensure_dagster_home()
    readiness = Readiness(timeout_s=args.check_timeout_s, champion_cache_s=args.champion_cache_s)
    skip = tuple(s for s in (args.skip or "").split(",") if s)
    if args.once:
        try:
            body = readiness.check(skip)
        except ValueError as exc:
            print(f"plml serve-health: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(body, indent=2))
        sys.stdout.flush()
        os._exit(0 if body["status"] == "ready" else 1)  # a timed-out check may still hold a thread in a C call
    try:
        server = make_server(readiness, args.host, args.port)
    except OSError as exc:
        print(f"plml serve-health: cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    host, port = server.server_address[:2]
    print(f"plml serve-health: serving /healthz and /readyz on http://{host}:{port} "
          f"(model {readiness.registry.model_name}, MLflow {readiness.registry.display_tracking_uri()})", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever(poll_interval=0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    print("plml serve-health: stopped", flush=True)
    return 0


# ---------------------------------------------------------------------------------------------
def _run_summary(result) -> tuple[bool, str, list[str], list]:
    """(success, run id, failed step keys, asset check evaluations) of a finished run."""
    events = result.all_events
    failed = [e.step_key for e in events if e.event_type_value == "STEP_FAILURE"]
    checks = [e.event_specific_data for e in events if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    return bool(result.success), result.run_id, failed, checks


def cmd_run(args: argparse.Namespace) -> int:
    """Materialize every asset (job plml_main) against the persistent local instance, then summarize."""
    if args.quick:
        os.environ["PLML_PROFILE"] = "quick"
    home = _ensure_dagster_home()
    plml_home().mkdir(parents=True, exist_ok=True)
    from dagster import DagsterInstance

    workers = args.workers if args.workers is not None else len(os.sched_getaffinity(0))
    if workers < 1:
        raise SystemExit(f"plml run: --workers must be >= 1, got {workers}")
    if os.environ.get("PLML_EXECUTOR"):
        # plml run chooses its own executor (--workers); PLML_EXECUTOR is for the code location
        # (e.g. k8s on a cluster) and would make the run config below invalid.
        print(f"plml run: PLML_EXECUTOR={os.environ['PLML_EXECUTOR']} ignored: plml run executes the steps here "
              f"({'in this process' if workers == 1 else f'{workers} step processes'})")
        os.environ.pop("PLML_EXECUTOR")
        if "plml_assets.definitions" in sys.modules:
            raise SystemExit("plml run: the definitions were loaded with PLML_EXECUTOR set; unset it and run again")
    from plml_assets.definitions import main_job

    # A thread budget of one per step: every model already fits on 1 thread; BLAS/OpenMP in numpy,
    # scikit-learn and torch would otherwise start one thread per core in each of the `workers`
    # concurrent step processes and oversubscribe the cores.
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")
    start = time.perf_counter()
    with DagsterInstance.get() as instance:
        if workers == 1:
            from plml_assets.lib.analytics.metering import METER

            METER.reset()  # every step runs in this process: the first is not charged the imports before it
            result = main_job().execute_in_process(instance=instance, raise_on_error=False)
            summary = _run_summary(result)
        else:
            # Independent steps (the four family chains, CPCV, backtest, importance, ...) run side by
            # side in their own processes, at most `workers` at a time; assets travel through the
            # Parquet/JSON IO manager, so nothing is shared in memory.
            from dagster import execute_job, reconstructable

            print(f"plml run: {workers} step processes at a time (--workers 1 runs every step in this process)")
            # The definitions' default executor (plml_assets/definitions.DEFAULT_EXECUTOR) forks each
            # step process from a forkserver that has already imported dagster and its instance
            # storage, pandas, torch, MLflow and plml (plml_assets/step_preload.py; seconds of CPU
            # per step with a fresh interpreter, ~1.6 s per step after a bare definitions preload).
            run_config = {"execution": {"config": {"multiprocess": {"max_concurrent": workers}}}}
            with execute_job(reconstructable(main_job), instance=instance, run_config=run_config,
                             raise_on_error=False) as result:
                summary = _run_summary(result)
        success, run_id, failed_steps, checks = summary
        elapsed = time.perf_counter() - start
        # What it cost, on the run that just finished (training_analytics and its regression check).
        from plml_assets.definitions import defs

        after = defs.resolve_job_def("plml_analytics").execute_in_process(instance=instance, raise_on_error=False)
        for event in after.all_events:
            if event.event_type_value == "ASSET_CHECK_EVALUATION" and not event.event_specific_data.passed:
                print(f"  check training_analytics:{event.event_specific_data.check_name}: "
                      f"{event.event_specific_data.description}")
    gate = [c for c in checks if c.check_name == "promotion_gate"]
    gate_only = bool(gate) and failed_steps and all("promotion_gate" in s for s in failed_steps)
    print()
    has_champion = _registry().alias_version(CHAMPION) is not None
    kept = "the promotion gate kept the champion" if has_champion else "the promotion gate promoted nothing (no champion yet)"
    outcome = "succeeded" if success else (f"succeeded; {kept}" if gate_only else "FAILED")
    print(f"plml run: {outcome} in {elapsed:.0f} s (run {run_id})")
    for check in checks:
        if not check.passed:
            print(f"  check {check.asset_key.to_user_string()}:{check.check_name} failed: {check.description}")
    if gate and gate[0].passed:
        print(f"  promotion gate: {gate[0].description}")
    if failed_steps and not gate_only:
        print(f"  failed steps: {', '.join(failed_steps)}", file=sys.stderr)
    print()
    _print_status(status_payload(_registry()))
    print()
    print("Where to look:")
    print(f"  DAGSTER_HOME={home} dagster dev            # asset graph, metadata, runs (workspace.yaml)")
    shown = _registry().display_tracking_uri()
    note = "   # password masked: it is in PLML_MLFLOW_TRACKING_URI" if shown != _registry().resolved_tracking_uri() else ""
    print(f"  mlflow ui --backend-store-uri {shown}{note}")
    if success or gate_only:
        if gate_only:
            challenger = _registry().alias_version(CHALLENGER)
            version = challenger.version if challenger else "?"
            if has_champion:
                print(f"\nThe promotion gate kept challenger v{version} out (reasons above): the champion stays.")
            else:
                print(
                    f"\nNo champion yet: the promotion gate kept challenger v{version} out (reasons above)."
                    f"\nInspect it (plml status, mlflow ui) and run `plml promote {version}` to serve it anyway."
                )
        return 0
    return 1


def cmd_analytics(args: argparse.Namespace) -> int:
    """Where the seconds, bytes and money of the latest run went (lib/analytics/metering.py)."""
    _ensure_dagster_home()
    from dagster import DagsterInstance

    from plml_assets.defs.analytics.report import analytics
    from plml_assets.lib.analytics.metering import RateCard

    defaults = RateCard()
    rates = RateCard(**{k: getattr(defaults, k) if getattr(args, k) is None else getattr(args, k)
                        for k in ("core_hour", "gib_hour", "gpu_hour")})
    with DagsterInstance.get() as instance:
        try:
            report = analytics(instance, runs=args.runs, rates=rates)
        except ValueError as exc:
            print(f"plml analytics: {exc}", file=sys.stderr)
            return 1
    if args.k8s_resources:
        from plml_assets.lib.deploy.k8s import sizing_from_report

        sizing = sizing_from_report(report)
        Path(args.k8s_resources).write_text(json.dumps(sizing, indent=2, sort_keys=True) + "\n")
        print(f"plml analytics: Kubernetes requests/limits of {len(sizing['steps'])} steps measured on run "
              f"{report['run_id']} written to {args.k8s_resources} ({sizing['rule']})")
        return 0
    if args.json:
        print(json.dumps(report, indent=2))
        return 0

    def num(value, fmt: str) -> str:
        return "-" if value is None else format(value, fmt)

    print(f"run {report['run_id']} ({report['job']}): wall {report['wall_s']:.0f} s on {report['cores']} cores, "
          f"CPU {num(report['cpu_s'], '.0f')} s, utilization {num(report['cpu_utilization'], '.0%')}, "
          f"peak RSS {num(report['peak_rss_mib'], '.0f')} MiB, cost {num(report['cost_total'], '.4f')} {report['currency']} "
          f"(rate card: {rates.core_hour}/core-h, {rates.gib_hour}/GiB-h: examples, set your own)")
    print(f"training success rate {num(report['success_rate'], '.0%')} over the last {report['success_rate_runs']} runs")
    for v in report.get("registered_models", []):
        print(f"registered {v['model']} v{v['version']} ({v['candidate']}): {num(report['cost_per_registered_model'], '.4f')} "
              f"{report['currency']} (this run's cost over the versions it registered)")
    for step, work in report.get("distributed", {}).items():
        workers = work.get("study_workers", [])
        if len(workers) > 1:
            print(f"{step}: {len(workers)} workers: " + "; ".join(f"{w['worker']} {w['finished']} trials" for w in workers))
        if str(work.get("trained_on", "local")) != "local":
            print(f"{step}: trained on {work['trained_on']}, {work.get('dask_tasks', '-')} tasks, {work.get('dask_compute_s', '-')} compute s")
    print(f"\n{'step':34s} {'wall s':>7s} {'cpu s':>7s} {'rss MiB':>8s} {'threads':>7s} {'rows in':>9s} {'cost':>9s}")
    for s in sorted(report["steps"], key=lambda s: -s["wall_s"]):
        print(f"{s['step'][:34]:34s} {s['wall_s']:7.1f} {num(s.get('cpu_s'), '7.1f'):>7s} {num(s.get('peak_rss_mib'), '8.0f'):>8s} "
              f"{num(s.get('threads'), '7d'):>7s} {num(s.get('rows_in'), '9d'):>9s} {num(s.get('cost'), '9.5f'):>9s}")
    if len(report["trend"]) > 1:
        print("\nearlier runs (newest first):")
        for r in report["trend"]:
            print(f"  {r['run_id'][:8]} {r['job']:20s} wall {r['wall_s']:7.0f} s  CPU {num(r['cpu_s'], '7.0f')} s  "
                  f"peak {num(r['peak_rss_mib'], '6.0f')} MiB  cost {num(r['cost_total'], '.4f')}  "
                  f"{'trained' if r['trained'] else 'FAILED'}")
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """One more process on a study a `<family>_study` asset started (defs/tuning/worker.py)."""
    from plml_assets.defs.tuning.worker import run_worker
    from plml_assets.resources.optuna_storage import DamagedStorageError, OptunaStorage

    storage = OptunaStorage(url=args.storage)
    try:
        out = run_worker(args.study, storage.checked_url(on_damaged="fail"), storage.display_url(), asset_dir=os.environ.get("PLML_ASSET_DIR"),
                         n_trials=args.n_trials, worker_index=args.worker_index, heartbeat_s=args.heartbeat_s,
                         timeout_s=args.timeout_s, log=lambda m: print(m, flush=True))
    except (ValueError, FileNotFoundError, DamagedStorageError) as exc:
        print(f"plml worker: {mask_secrets(exc)}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(out))
    return 0


def cmd_reproduce(args: argparse.Namespace) -> int:
    """Retrain VERSION from what it recorded (lib/registry/reproduce.py) into a scratch folder and
    compare its holdout scores with the registered model's; exit 1 when they differ."""
    registry = _existing_registry("reproduce")
    if registry is None:
        return 2
    import tempfile

    from plml_assets.definitions import build_resources
    from plml_assets.lib.registry.reproduce import DIGEST_ARTIFACT, ReproductionRefused, reproduce

    client = registry.client()
    try:
        mv = client.get_model_version(registry.model_name, str(args.version))
    except MlflowException as exc:
        print(f"plml reproduce: {registry.model_name} has no version {args.version!r} ({exc.message.splitlines()[0]})", file=sys.stderr)
        return 2
    run = client.get_run(mv.run_id)
    tags = {**run.data.tags, **(mv.tags or {})}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                recorded = json.loads(Path(client.download_artifacts(mv.run_id, DIGEST_ARTIFACT, tmp)).read_text())
            except (MlflowException, OSError) as exc:
                raise ReproductionRefused(f"v{mv.version} recorded no {DIGEST_ARTIFACT} (registered before plml recorded its prices): "
                                          "it cannot be checked against the prices available") from exc
        scorer = registry.load_model(str(mv.version)).unwrap_python_model()  # its artefacts verified first
        prices = build_resources()["price_source"].load()
        if not args.json:
            print(f"plml reproduce: refitting {registry.model_name} v{mv.version} ({tags.get('plml.candidate', tags.get('plml.family', '?'))}) "
                  f"from what it recorded; prices {build_resources()['price_source'].describe_source()}", flush=True)
        scratch = plml_home() / "reproduce" / f"v{mv.version}"
        result = reproduce(scorer, tags, recorded, prices, str(mv.version), scratch=scratch)
    except ReproductionRefused as exc:
        if args.json:
            print(json.dumps({"version": str(mv.version), "max_abs_diff": None, "rows": 0, "match": False, "refused": str(exc)}))
        print(f"plml reproduce: v{mv.version}: {exc}", file=sys.stderr)
        return 2
    code = tags.get("plml.code_version")
    from plml_assets.lib.registry.provenance import code_version

    if code and code != code_version():
        result.notes.append(f"recorded code version {code}, running {code_version()}")
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        for name, member in result.members.items():
            print(f"  {name} ({member['family']}): refitted on {member['training_rows']:,} rows, holdout max |diff| {member['max_abs_diff']:.3g}")
        for note in result.notes:
            print(f"  note: {note}")
        print(f"plml reproduce: v{result.version}: largest |registered - reproduced| score on {result.rows:,} holdout rows "
              f"{result.max_abs_diff:.3g} (tolerance {result.tolerance:g}): {'match' if result.match else 'DIFFERENT'}; "
              f"refitted models in {result.scratch} (the registry is untouched)")
    return 0 if result.match else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="plml", description="plml: prediction model learning on Dagster + MLflow")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run", help="materialize the whole asset graph locally and print a summary")
    p.add_argument("--quick", action="store_true", help="quick profile: smaller CV and boosting budgets, same steps")
    p.add_argument("--workers", type=int, default=None,
                   help="steps run at the same time, each in its own process (default: the cores this process may use; "
                        "1: every step in this process, one after another)")
    p.set_defaults(func=cmd_run)
    p = sub.add_parser("analytics", help="wall, CPU, memory and cost of every step of the latest run, and trends")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--runs", type=int, default=10, help="finished runs the trends and success rate cover")
    p.add_argument("--core-hour", type=float, default=None, help="cost of one core for an hour (default: lib/analytics/metering.RateCard's example)")
    p.add_argument("--gib-hour", type=float, default=None, help="cost of one GiB of memory for an hour (default: lib/analytics/metering.RateCard's example)")
    p.add_argument("--gpu-hour", type=float, default=None, help="cost of one GPU for an hour (default: lib/analytics/metering.RateCard's example)")
    p.add_argument("--k8s-resources", metavar="PATH", default=None,
                   help="write each step's Kubernetes requests/limits, derived from the latest run's peak RSS and CPU, to PATH "
                        "(plml_assets/defs/k8s_resources.json is what the asset definitions read)")
    p.set_defaults(func=cmd_analytics)
    p = sub.add_parser("worker", help="take trials of a running study (several workers share one PostgreSQL study)")
    p.add_argument("--study", required=True, help="the study name the <family>_study asset logged (metadata study_name)")
    p.add_argument("--storage", default=None, help="Optuna storage URL (default: PLML_OPTUNA_STORAGE, else $PLML_HOME/optuna.db)")
    p.add_argument("--n-trials", type=int, default=None, help="the study's budget (default: the one its asset set)")
    p.add_argument("--worker-index", type=int, default=None, help="seeds this worker's sampler (default: from the process id)")
    p.add_argument("--heartbeat-s", type=int, default=60, help="seconds between trial heartbeats; a trial silent for 3 is failed")
    p.add_argument("--timeout-s", type=float, default=None, help="stop starting trials after this many seconds")
    p.add_argument("--json", action="store_true", help="print what this worker did as one JSON object at the end")
    p.set_defaults(func=cmd_worker)
    p = sub.add_parser("status", help="champion, challenger and their metrics")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_status)
    p = sub.add_parser("promote", help="point 'champion' at VERSION")
    p.add_argument("version")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("reproduce", help="retrain VERSION from what it recorded and compare its holdout scores")
    p.add_argument("version")
    p.add_argument("--json", action="store_true", help='print {"version", "max_abs_diff", "rows", "match"}')
    p.set_defaults(func=cmd_reproduce)
    p = sub.add_parser("rollback", help="move 'champion' back to the previous champion")
    p.set_defaults(func=cmd_rollback)
    p = sub.add_parser("notify", help="the champion-move notices of the promotion webhook's outbox; --flush delivers the pending ones")
    p.add_argument("--flush", action="store_true", help="POST the pending notices now, oldest first")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_notify)
    p = sub.add_parser("doctor", help="check the Dagster instance, MLflow store and Optuna storage")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_doctor)
    p = sub.add_parser("serve", help="mlflow models serve on a checksum-verified copy of the champion (or VERSION)")
    p.add_argument("--version", default=None, help="serve this version instead of the champion")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on")
    p.add_argument("--port", type=int, default=5001, help="port")
    p.add_argument("--workers", type=int, default=1, help="server worker processes")
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("serve-health", help="answer /healthz (process up) and /readyz (stores reachable, champion loadable) over HTTP")
    p.add_argument("--host", default=os.environ.get("PLML_HEALTH_HOST", "127.0.0.1"),
                   help="address to listen on (0.0.0.0 in a pod; env PLML_HEALTH_HOST)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PLML_HEALTH_PORT", "8080")),
                   help="port (0: any free one, printed; env PLML_HEALTH_PORT)")
    p.add_argument("--check-timeout-s", type=float, default=5.0, help="seconds each component may take before it counts as down")
    p.add_argument("--champion-cache-s", type=float, default=300.0,
                   help="seconds a loaded champion counts as loadable before its artefacts are verified and loaded again")
    p.add_argument("--skip", default=None, help="with --once: components to leave out, comma-separated (e.g. champion)")
    p.add_argument("--once", action="store_true", help="print one /readyz answer as JSON and exit 0 if ready, else 1")
    p.set_defaults(func=cmd_serve_health)
    p = sub.add_parser("advance", help="move the simulated 'today' over the price panel: new data arrives")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--days", type=int, default=None, help="move forward (or back, negative) this many trading dates")
    group.add_argument("--to", default=None, help="set the as-of date (ISO)")
    group.add_argument("--clear", action="store_true", help="forget the as-of date: every date is visible")
    p.set_defaults(func=cmd_advance)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
