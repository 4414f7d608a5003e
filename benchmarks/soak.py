"""Soak: the loop that runs itself, over N simulated days (issue 18 item 11).

    python benchmarks/soak.py --days 6 --step-days 5 --weekly-every 3 --write

A fresh PLML_HOME: the first champion comes from the README's main command (`plml run --quick`) with
the as-of date set back ``days x step_days`` trading dates; then `dagster dev` (webserver + daemon)
runs on that instance and, each simulated day:

1. `plml advance --days STEP_DAYS`: that many new trading dates of prices arrive;
2. the weekday `data_refresh` schedule's run is launched through GraphQL (what its 18:30 tick would
   launch: same selection, same tags) and the daemon's drift sensor decides on retraining;
3. every WEEKLY_EVERY days the `weekly_retrain` schedule function itself is evaluated against the
   instance (it skips while a retrain is queued or running) and its RunRequest launched;
4. the soak waits until the instance has no queued or running run.

Cron ticks cannot be waited for in simulated time, so the schedules are evaluated by this script at
the simulated times; the sensors run in the daemon as they would in production. At the end it counts
run outcomes (success rate, goal >= 95 %), alias moves, and checks that registry and instance agree:
no run left queued or running, no two retrains overlapping, every version complete with its
checksum, the champion's and challenger's artefacts verified, the champion history consistent.
Writes the "Soak" section of docs/benchmarks.md with --write.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import REPO, cpu_name, write_section  # noqa: E402

SECTION = "## Soak: simulated days of the self-running loop (issue 18 item 11)"
BIN = Path(sys.executable).parent
ACTIVE = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED", "CANCELING")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _graphql(port: int, query: str, variables: dict | None = None) -> dict:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/graphql", headers={"Content-Type": "application/json"},
                                 data=json.dumps({"query": query, "variables": variables or {}}).encode())
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def _plml(env: dict[str, str], *args: str, timeout: float = 1800) -> str:
    proc = subprocess.run([str(BIN / "plml"), *args], env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise SystemExit(f"plml {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


@contextlib.contextmanager
def dagster_dev(env: dict[str, str], log_path: Path):
    port = _free_port()
    with open(log_path, "w") as log:
        proc = subprocess.Popen([str(BIN / "dagster"), "dev", "-w", str(REPO / "workspace.yaml"), "-p", str(port), "-h", "127.0.0.1"],
                                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 300
            while True:
                if proc.poll() is not None:
                    raise SystemExit(f"dagster dev exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
                with contextlib.suppress(OSError):
                    if _graphql(port, "{ assetNodes { id } }").get("data", {}).get("assetNodes"):
                        break
                if time.time() > deadline:
                    raise SystemExit(f"dagster dev served no asset graph in 300 s:\n{log_path.read_text()[-3000:]}")
                time.sleep(2)
            yield port
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=30)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def _wait_idle(instance, timeout_s: float, settle_s: float = 45.0) -> float:
    """Wait until no run is active for ``settle_s`` in a row (the drift sensor ticks every 30 s: a
    retrain it requests after a refresh shows up within that); returns the seconds waited."""
    import dagster as dg

    start, quiet_since = time.time(), None
    while time.time() - start < timeout_s:
        active = instance.get_runs(filters=dg.RunsFilter(statuses=[dg.DagsterRunStatus[s] for s in ACTIVE]))
        if active:
            quiet_since = None
        elif quiet_since is None:
            quiet_since = time.time()
        elif time.time() - quiet_since >= settle_s:
            return time.time() - start
        time.sleep(3)
    raise SystemExit(f"runs still active after {timeout_s:.0f} s")


def outcome(instance, run) -> str:
    """SUCCESS, CANCELED, FAILURE, or GATE_KEPT: a run whose only failed step is the promotion gate's
    blocking check (Dagster marks that run failed; the training worked and the gate kept the champion,
    which `plml run` reports as success too)."""
    status = run.status.value
    if status != "FAILURE":
        return status
    failed = [r.dagster_event.step_key for r in instance.all_logs(run.run_id)
              if r.dagster_event and r.dagster_event.event_type_value == "STEP_FAILURE"]
    return "GATE_KEPT" if failed and all("promotion_gate" in (s or "") for s in failed) else "FAILURE"


def _launch(client, keys, tags: dict[str, str]) -> str:
    return client.submit_job_execution("__ASSET_JOB", asset_selection=keys, tags=tags)


def consistency(instance, registry, started: float) -> dict[str, object]:
    """What must hold after the soak, each as (ok, detail)."""
    import dagster as dg

    from plml_assets.lib.registry.integrity import CHECKSUM_TAG, REGISTRATION_TAG
    from plml_assets.resources.mlflow_registry import CHALLENGER, CHAMPION

    checks: dict[str, tuple[bool, str]] = {}
    runs = instance.get_runs()
    active = [r.run_id for r in runs if r.status.value in ACTIVE]
    checks["no_run_left_active"] = (not active, f"active: {active}" if active else "none queued or running")
    records = instance.get_run_records(filters=dg.RunsFilter(tags={"plml/trigger": ["drift", "schedule"]}))
    spans = sorted((r.start_time, r.end_time, r.dagster_run.run_id, r.dagster_run.tags.get("plml/kind", "drift"))
                   for r in records if r.start_time and r.end_time and r.dagster_run.tags.get("plml/kind") != "data_refresh")
    overlaps = [(a[2], b[2]) for a, b in zip(spans, spans[1:]) if b[0] < a[1]]
    checks["no_two_retrains_at_once"] = (not overlaps, f"{len(spans)} retrains, overlapping: {overlaps}")
    versions = registry.versions()
    incomplete = [v.version for v in versions if v.tags.get(REGISTRATION_TAG) != "complete" or CHECKSUM_TAG not in v.tags]
    checks["every_version_complete_with_checksum"] = (not incomplete, f"{len(versions)} versions; incomplete: {incomplete}")
    aliases = registry.aliases()
    broken = []
    for alias in (CHAMPION, CHALLENGER):
        if alias in aliases:
            try:
                with registry.verified_artifacts(alias):
                    pass
            except Exception as exc:
                broken.append(f"{alias}: {exc}")
    checks["aliased_artefacts_verified"] = (not broken, "; ".join(broken) or f"aliases {aliases}")
    history = registry.champion_history()
    existing = {v.version for v in versions}
    ok = (not history and CHAMPION not in aliases) or (bool(history) and history[-1] == aliases.get(CHAMPION) and set(history) <= existing)
    checks["champion_history_consistent"] = (ok, f"history {history}, champion {aliases.get(CHAMPION)}")
    registered = instance.fetch_materializations(dg.AssetKey("registered_model"), limit=1000).records
    soak_versions = {str(r.asset_materialization.metadata["version"].value) for r in registered
                     if r.timestamp >= started and "version" in r.asset_materialization.metadata}
    checks["registrations_match_versions"] = (soak_versions <= existing, f"versions materialized: {sorted(soak_versions, key=int)}")
    return {name: {"ok": ok, "detail": detail} for name, (ok, detail) in checks.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--days", type=int, default=6, help="simulated days")
    parser.add_argument("--step-days", type=int, default=5, help="trading dates that arrive each simulated day")
    parser.add_argument("--weekly-every", type=int, default=3, help="the weekly retrain schedule is evaluated every this many days")
    parser.add_argument("--day-timeout-s", type=float, default=1800, help="longest wait for a day's runs to finish")
    parser.add_argument("--home", default=None, help="PLML_HOME to use (default: a fresh temp folder, removed unless --keep)")
    parser.add_argument("--keep", action="store_true", help="keep the temp PLML_HOME")
    parser.add_argument("--no-promote-first", dest="promote_first", action="store_false",
                        help="do not promote the first run's challenger by hand when the gate kept it back (then no drift retrain "
                             "can happen: the drift sensor compares against a champion)")
    parser.add_argument("--drift-from-day", type=int, default=None,
                        help="from this simulated day on, the prices that arrive are in a volatility regime 4x the "
                             "usual (lib/data/simulate.volatility_regime on the real panel): the drift sensor's case")
    parser.add_argument("--write", action="store_true", help="write the section of docs/benchmarks.md")
    args = parser.parse_args()

    home = Path(args.home or tempfile.mkdtemp(prefix="plml_soak_"))
    home.mkdir(parents=True, exist_ok=True)
    dagster_home = home / "dagster"
    dagster_home.mkdir(exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", dagster_home / "dagster.yaml")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLML_", "DAGSTER_", "MLFLOW_"))}
    env.update(PLML_HOME=str(home), DAGSTER_HOME=str(dagster_home), PLML_PROFILE="quick")
    if args.drift_from_day is not None:  # a prices file this script can rewrite when the regime changes
        from plml_assets.lib.data.prices import load_embedded

        prices_file = home / "prices.parquet"
        real = load_embedded().reset_index()
        real.to_parquet(prices_file)
        env["PLML_PRICES"] = str(prices_file)
    os.environ.update(PLML_HOME=str(home), DAGSTER_HOME=str(dagster_home))
    t0 = time.time()
    _plml(env, "advance", "--to", "2100-01-01")  # the latest date of the panel, then back
    print(_plml(env, "advance", "--days", str(-args.days * args.step_days)).strip(), flush=True)
    print(_plml(env, "run", "--quick").strip().splitlines()[-1], flush=True)
    first_wall = time.time() - t0
    first_promoted = None
    if args.promote_first:
        status = json.loads(_plml(env, "status", "--json"))
        if status["champion"] is None and status["challenger"] is not None:
            # what the run's summary tells a person to do when the gate kept the first model back
            first_promoted = status["challenger"]["version"]
            print(_plml(env, "promote", first_promoted).strip(), f"(by hand: the gate kept v{first_promoted} back)", flush=True)

    import dagster as dg
    from dagster_graphql import DagsterGraphQLClient

    from plml_assets.definitions import defs
    from plml_assets.defs.monitoring.schedules import DATA_REFRESH, weekly_retrain_schedule
    from plml_assets.defs.monitoring.sensors import RETRAIN_SELECTION
    from plml_assets.resources.mlflow_registry import MlflowRegistry

    registry = MlflowRegistry()
    graph = defs.resolve_asset_graph()
    refresh_keys, retrain_keys = list(DATA_REFRESH.resolve(graph)), list(RETRAIN_SELECTION.resolve(graph))
    history_before = registry.champion_history()
    days: list[dict[str, object]] = []
    started = time.time()
    with dagster_dev(env, home / "dagster_dev.log") as port, dg.DagsterInstance.get() as instance:
        client = DagsterGraphQLClient("127.0.0.1", port_number=port)
        for day in range(1, args.days + 1):
            day_start = time.time()
            if args.drift_from_day == day:
                from plml_assets.lib.data.simulate import volatility_regime

                as_of = (home / "as_of").read_text().strip()
                volatility_regime(real, as_of).to_parquet(prices_file)  # every date after today's: a new regime
                print(f"day {day}: the prices after {as_of} are now a 4x volatility regime", flush=True)
            moved = _plml(env, "advance", "--days", str(args.step_days)).strip()
            launched = [_launch(client, refresh_keys, {"plml/trigger": "schedule", "plml/kind": "data_refresh"})]
            weekly = "not due"
            if day % args.weekly_every == 0:
                with dg.build_schedule_context(instance=instance) as context:
                    request = weekly_retrain_schedule(context)
                if isinstance(request, dg.RunRequest):
                    launched.append(_launch(client, retrain_keys, dict(request.tags)))
                    weekly = "launched"
                else:
                    weekly = f"skipped: {request.skip_message}"
            _wait_idle(instance, args.day_timeout_s)
            records = instance.get_run_records(filters=dg.RunsFilter(created_after=_utc(day_start)))
            outcomes = {r.dagster_run.run_id: (outcome(instance, r.dagster_run), r.dagster_run.tags.get("plml/trigger", "manual"),
                                              r.dagster_run.tags.get("plml/kind", "drift_retrain" if r.dagster_run.tags.get("plml/trigger") == "drift" else "?"))
                       for r in records}
            days.append({"day": day, "advance": moved, "weekly": weekly, "wall_s": round(time.time() - day_start, 1),
                         "runs": outcomes, "champion": registry.aliases().get("champion")})
            print(f"day {day}: {moved}; weekly {weekly}; runs {[(s, k) for s, _, k in outcomes.values()]}; "
                  f"champion v{days[-1]['champion']} ({days[-1]['wall_s']:.0f} s)", flush=True)
        checks = consistency(instance, registry, started)
        all_runs = instance.get_run_records(filters=dg.RunsFilter(created_after=_utc(started)))
        finished = [(r, outcome(instance, r.dagster_run)) for r in all_runs
                    if r.dagster_run.status.value in ("SUCCESS", "FAILURE", "CANCELED")]
    succeeded = [r for r, o in finished if o in ("SUCCESS", "GATE_KEPT")]
    history = registry.champion_history()
    result = {
        "machine": cpu_name(), "drift_from_day": args.drift_from_day, "days": args.days, "step_days": args.step_days, "weekly_every": args.weekly_every,
        "first_run_s": round(first_wall, 1), "first_promoted_by_hand": first_promoted, "soak_s": round(time.time() - started, 1),
        "runs": len(finished), "succeeded": len(succeeded),
        "success_rate": round(len(succeeded) / len(finished), 4) if finished else None,
        "dagster_success_rate": round(sum(o == "SUCCESS" for _, o in finished) / len(finished), 4) if finished else None,
        "failed_runs": [r.dagster_run.run_id for r, o in finished if o not in ("SUCCESS", "GATE_KEPT")],
        "by_kind": _by_kind(finished),
        "champion_moves": max(len(history) - len(history_before), 0), "champion_history": history,
        "versions": [v.version for v in registry.versions()], "checks": checks, "days_detail": days,
    }
    print(json.dumps({k: v for k, v in result.items() if k != "days_detail"}, indent=2))
    if args.write:  # the drift soak has a section of its own beside the calm one
        heading = SECTION + (" with a volatility regime" if args.drift_from_day else "")
        write_section(heading, _markdown(result, heading))
    if not args.home and not args.keep:
        shutil.rmtree(home, ignore_errors=True)
    ok = all(c["ok"] for c in checks.values()) and (result["success_rate"] or 0) >= 0.95
    return 0 if ok else 1


def _utc(ts: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(ts, tz=timezone.utc)


def _by_kind(finished) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for r, result in finished:
        tags = r.dagster_run.tags
        kind = tags.get("plml/kind") or ("drift_retrain" if tags.get("plml/trigger") == "drift" else r.dagster_run.job_name)
        out.setdefault(kind, {}).setdefault(result, 0)
        out[kind][result] += 1
    return out


def _markdown(r: dict, heading: str = SECTION) -> str:
    rate = "n/a" if r["success_rate"] is None else f"{100 * r['success_rate']:.1f} %"
    lines = [heading, "",
             f"`python benchmarks/soak.py --days {r['days']} --step-days {r['step_days']} --weekly-every {r['weekly_every']}"
             f"{' --drift-from-day ' + str(r['drift_from_day']) if r.get('drift_from_day') else ''}` on "
             f"{r['machine']}, {time.strftime('%Y-%m-%d')}: embedded panel, quick profile, SQLite instance and stores, "
             f"`dagster dev` (webserver + daemon). The first champion came from `plml run --quick` ({r['first_run_s']:.0f} s); "
             f"the soak itself took {r['soak_s']:.0f} s."
             + (f" The gate kept that first model back; it was promoted by hand (`plml promote {r['first_promoted_by_hand']}`, "
                f"as the run's summary suggests), so that the drift sensor has a champion to watch." if r["first_promoted_by_hand"] else ""),
             "",
             f"- runs finished: {r['runs']}, trained to the end {r['succeeded']}: **success rate {rate}** (goal >= 95 %; a run "
             f"whose only failed step is the promotion gate refusing, GATE_KEPT, counts as a success, as `plml run` reports it; "
             f"Dagster's own success rate: {100 * (r['dagster_success_rate'] or 0):.1f} %); failed: {r['failed_runs'] or 'none'}",
             f"- by kind: {json.dumps(r['by_kind'])}",
             f"- champion moves during the soak: {r['champion_moves']} (history {r['champion_history']}); versions {r['versions']}",
             "", "| check | ok | detail |", "|---|---|---|"]
    lines += [f"| {name} | {'yes' if c['ok'] else 'NO'} | {str(c['detail']).replace('|', '/')[:300]} |" for name, c in r["checks"].items()]
    lines += ["", "| day | new dates | weekly retrain | runs (status, kind) | champion | wall s |", "|---|---|---|---|---|---|"]
    for d in r["days_detail"]:
        runs = ", ".join(f"{s} {k}" for s, _, k in d["runs"].values())
        lines.append(f"| {d['day']} | {d['advance'].split(';')[0].removeprefix('plml advance: ')} | {d['weekly']} | {runs} | "
                     f"v{d['champion']} | {d['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
