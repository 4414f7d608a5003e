"""End to end through the real commands: the README main command, the deployment contract in a fresh
process, the plml verbs, and a killed `dagster asset materialize` run that is re-run."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from plml_assets.lib.data.prices import load_embedded
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets_tests.conftest import REPO, SLICE_END, SLICE_START, SLICE_SYMBOLS, postgres_url

pytestmark = [pytest.mark.e2e, pytest.mark.slow]
BIN = Path(sys.executable).parent


def _env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PLML_", "MLFLOW_", "DAGSTER_"))}
    env.update({"PLML_HOME": str(home), "PATH": f"{BIN}:{env.get('PATH', '')}", "PYTHONUNBUFFERED": "1"})
    env.update(extra)
    return env


def _plml(home: Path, *args: str, **extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "plml"), *args], env=_env(home, **extra), capture_output=True, text=True, timeout=300)


def readme_main_command() -> str:
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no bash block"
    return blocks[0].strip()


def _slice_panel() -> pd.DataFrame:
    panel = load_embedded()
    sub = panel[panel.index.get_level_values("symbol").isin(SLICE_SYMBOLS)]
    dates = sub.index.get_level_values("date")
    return sub[(dates >= SLICE_START) & (dates <= SLICE_END)]


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess]:
    """The README's first command, verbatim (install included), with the quick profile and a temp
    PLML_HOME, on the small real slice the graph tests use (PLML_PRICES): on the whole embedded panel it
    takes about 10 minutes on 2 cores, which docs/benchmarks.md measures; here the command and every
    step of the graph are under test, not the data's size."""
    work = tmp_path_factory.mktemp("readme")
    home = work / "plml"
    prices = work / "slice.csv.gz"
    _slice_panel().reset_index().to_csv(prices, index=False)
    command = readme_main_command()
    assert "plml run" in command and "pip install" in command
    proc = subprocess.run(
        # PLML_EXECUTOR=k8s as a shell set up for the cluster has it: plml run still runs the steps here
        ["bash", "-c", command], cwd=REPO, env=_env(home, PLML_PROFILE="quick", PLML_PRICES=str(prices), PLML_HOLDOUT_DAYS="120",
                                                    PLML_EXECUTOR="k8s"),
        capture_output=True, text=True, timeout=1500,
    )
    return home, proc


def _registry(home: Path) -> MlflowRegistry:
    return MlflowRegistry(tracking_uri=f"sqlite:///{home / 'mlflow.db'}")


def test_readme_main_command_runs_the_graph_and_prints_a_summary(readme_run):
    home, proc = readme_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "plml run: succeeded" in out
    assert "PLML_EXECUTOR=k8s ignored: plml run executes the steps here" in out
    assert re.search(r"champion: (v\d+|none)", out)
    assert "holdout:" in out and "CV (walk-forward)" in out
    assert "dagster dev" in out and "mlflow ui --backend-store-uri" in out
    assert (home / "mlflow.db").exists() and (home / "dagster").is_dir()
    # `plml analytics --json`: the contract other tools read, with the step processes' own figures.
    analytics = json.loads(_plml(home, "analytics", "--json").stdout)
    if len(os.sched_getaffinity(0)) > 1:  # the default: one step process per core, steps side by side
        assert f"plml run: {len(os.sched_getaffinity(0))} step processes at a time" in out
        assert len({s["pid"] for s in analytics["steps"]}) > 1, "every step ran in one process"
        spans = sorted((s["start_offset_s"], s["start_offset_s"] + s["wall_s"]) for s in analytics["steps"])
        assert any(later < end for (_, end), (later, _) in zip(spans, spans[1:])), "no two steps overlapped"
    assert {"run_id", "wall_s", "cores", "cpu_utilization", "cost_total", "steps", "success_rate"} <= set(analytics)
    assert analytics["success_rate"] == 1.0 and analytics["cores"] == len(os.sched_getaffinity(0))
    assert 0.0 < analytics["cpu_utilization"] <= 1.05 and analytics["cost_total"] > 0
    steps = {s["step"]: s for s in analytics["steps"]}
    for key in ("market_prices", "xgboost_study", "cpcv_paths", "backtest", "validation_report"):
        assert {"step", "wall_s", "cpu_s", "peak_rss_mib", "cost"} <= set(steps[key]), key
        assert steps[key]["cpu_s"] > 0 and steps[key]["peak_rss_mib"] > 50
    assert steps["xgboost_study"]["trials"] == 6 and steps["xgboost_study"]["trials_per_s"] > 0
    assert not any(k.startswith("gpu_") for s in analytics["steps"] for k in s)  # no GPU here: absent, not zero
    # The run registered v1: what that model cost is the run's cost (one version registered).
    assert [v["version"] for v in analytics["registered_models"]] == ["1"]
    assert analytics["cost_per_registered_model"] == pytest.approx(analytics["cost_total"], rel=1e-6)
    tag = _registry(home).client().get_model_version("plml_model", "1").tags["plml.training_cost"]
    assert tag.endswith(" USD") and float(tag.split()[0]) > 0
    # `plml run` then materialized training_analytics on that finished run.
    stored = json.loads((home / "assets" / "training_analytics.json").read_text())
    assert stored["run_id"] == analytics["run_id"] and stored["success_rate"] == 1.0
    families = {r["family"]: r for r in stored["families"]}
    assert set(families) == {"xgboost", "lightgbm", "lstm", "gru", "elastic_net"}
    assert all(r["cost"] > 0 and r["steps"] >= 3 for r in families.values())
    assert sum(r["cost_share"] for r in families.values()) == pytest.approx(1.0, abs=1e-3)
    text = _plml(home, "analytics").stdout
    assert "utilization" in text and "cpcv_paths" in text and "training success rate 100%" in text
    assert "registered plml_model v1" in text
    status = json.loads(_plml(home, "status", "--json").stdout)
    assert status["model_name"] == "plml_model"
    assert status["versions"] == ["1"]
    if status["champion"]:
        assert status["champion"]["version"] == "1"
        assert {"holdout_rank_ic", "cv_walk_forward_rank_ic"} <= set(status["champion"]["metrics"])
        assert "champion: v1" in out


def _ensure_champion(home: Path) -> None:
    registry = _registry(home)
    if registry.alias_version("champion") is None:  # the gate kept none: promote by hand, as a person would
        assert _plml(home, "promote", "1").returncode == 0


SERVE_SCRIPT = """
import json, sys
import mlflow, pandas as pd
panel = pd.read_parquet(sys.argv[1])
model = mlflow.pyfunc.load_model("models:/plml_model@champion")
out = model.predict(panel)
print(json.dumps({"rows": out.assign(date=out["date"].astype(str)).to_dict("records")}))
"""


def test_champion_scores_raw_prices_in_a_fresh_process(readme_run, tmp_path):
    home, proc = readme_run
    assert proc.returncode == 0
    _ensure_champion(home)
    panel = _slice_panel()  # the prices the README run was given
    dates = panel.index.get_level_values("date").unique()[-400:]
    recent = panel[panel.index.get_level_values("date").isin(dates)].reset_index()
    path = tmp_path / "recent.parquet"
    recent.to_parquet(path)
    env = _env(home, MLFLOW_TRACKING_URI=f"sqlite:///{home / 'mlflow.db'}")
    served = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, str(path)], env=env, capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stderr[-3000:]
    rows = pd.DataFrame(json.loads(served.stdout.strip().splitlines()[-1])["rows"])
    assert sorted(rows["symbol"]) == sorted(recent["symbol"].unique())  # one score per symbol
    assert (rows["date"] == str(dates[-1].date()) + " 00:00:00").all() or (rows["date"].str[:10] == str(dates[-1].date())).all()
    assert np.isfinite(rows["score"]).all() and rows["score"].std() > 0

    # No training/serving skew: the same scores as the champion's own fitted models on the features
    # asset (built from full history, generated features included); 400 days of history reproduce
    # them to float32 precision. The champion is whatever the leaderboard picked: one model or an ensemble.
    feats = pd.read_parquet(home / "assets" / "features.parquet")
    registry = _registry(home)
    import mlflow

    from plml_assets.lib.registry.serving import _predict

    with registry.tracking():
        scorer = mlflow.pyfunc.load_model("models:/plml_model@champion").unwrap_python_model()
    history = feats[feats.index.get_level_values("date") <= dates[-1]]
    members = scorer.members()
    scores = pd.DataFrame({name: _predict(model, history[columns], dates[-1]) for name, (model, columns) in members.items()},
                          index=history.xs(dates[-1], level="date", drop_level=False).index)
    expected = pd.Series(scorer.combine(scores), index=scores.index.get_level_values("symbol"))
    got = rows.set_index("symbol")["score"].reindex(expected.index)
    np.testing.assert_allclose(got.to_numpy(), expected.to_numpy(), rtol=1e-4, atol=1e-6)


def test_status_promote_and_rollback_move_the_champion(readme_run):
    home, proc = readme_run
    assert proc.returncode == 0
    _ensure_champion(home)
    registry = _registry(home)
    v1 = registry.version_info("1")
    with registry.tracking() as client:  # resolving a logged-model source reads the fluent tracking URI
        client.create_model_version("plml_model", source=v1.source, run_id=v1.run_id)  # a second version

    promoted = _plml(home, "promote", "2")
    assert promoted.returncode == 0, promoted.stderr
    assert "v1 -> v2" in promoted.stdout
    assert json.loads(_plml(home, "status", "--json").stdout)["aliases"]["champion"] == "2"

    back = _plml(home, "rollback")
    assert back.returncode == 0 and "v2 -> v1" in back.stdout
    status = json.loads(_plml(home, "status", "--json").stdout)
    assert status["champion"]["version"] == "1"
    assert status["champion_history"][-1] == "1"

    again = _plml(home, "rollback")
    assert again.returncode == 2 and "no earlier champion" in again.stderr
    missing = _plml(home, "promote", "99")
    assert missing.returncode == 2 and "cannot promote version 99" in missing.stderr
    assert json.loads(_plml(home, "status", "--json").stdout)["champion"]["version"] == "1"


def test_doctor_reports_each_store_with_its_url(tmp_path):
    home = tmp_path / "plml"
    (tmp_path / "dh").mkdir()
    ok = _plml(home, "doctor", DAGSTER_HOME=str(tmp_path / "dh"))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    for name, url in (("dagster", str(tmp_path / "dh")), ("mlflow", f"sqlite:///{home}/mlflow.db"), ("optuna", f"sqlite:///{home}/optuna.db")):
        assert re.search(rf"ok\s+{name}\s+{re.escape(url)}", ok.stdout), ok.stdout

    bad = _plml(home, "doctor", "--json", DAGSTER_HOME=str(tmp_path / "dh"),
                PLML_MLFLOW_TRACKING_URI="postgresql://plml@127.0.0.1:1/nowhere", PLML_DOCTOR_TIMEOUT="8")
    assert bad.returncode == 1
    report = json.loads(bad.stdout)
    assert not report["mlflow"]["ok"] and report["mlflow"]["url"].endswith("127.0.0.1:1/nowhere")
    assert report["dagster"]["ok"] and report["optuna"]["ok"]
    assert "not working: mlflow" in bad.stderr

    default = _plml(home, "doctor")  # DAGSTER_HOME unset: the same default as `plml run`
    assert default.returncode == 0 and f"{home}/dagster" in default.stdout and "(DAGSTER_HOME unset" in default.stdout

    not_dir = tmp_path / "a_file"
    not_dir.write_text("")
    broken = _plml(home, "doctor", DAGSTER_HOME=str(not_dir))
    assert broken.returncode == 1 and "not working: dagster" in broken.stderr


def test_doctor_with_optuna_on_real_postgresql(tmp_path):
    url = postgres_url()
    if url is None:
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    proc = _plml(tmp_path / "plml", "doctor", "--json", PLML_OPTUNA_STORAGE=url)
    report = json.loads(proc.stdout)
    assert report["optuna"] == {"ok": True, "url": url, "detail": "reachable and writable"}


def test_no_command_prints_a_store_password(tmp_path):
    """Issue 18 item 1: the Dagster instance (deploy/dagster-postgres.yaml, password from the
    environment), the MLflow store and the Optuna storage all on the local PostgreSQL with URLs that
    carry a password (trust auth accepts any), and one store that is down: `plml doctor`, `plml status`
    (text and --json) and `plml worker` name every store, with the password masked, in every output."""
    if postgres_url() is None:
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    from plml_assets_tests.conftest import fresh_postgres_database

    secret = "Zq8-s3cr3t-pw"
    home, dh = tmp_path / "plml", tmp_path / "dh"
    dh.mkdir()
    (dh / "dagster.yaml").write_text((REPO / "deploy" / "dagster-postgres.yaml").read_text())
    with fresh_postgres_database() as dagster_db, fresh_postgres_database() as mlflow_db, fresh_postgres_database() as optuna_db:
        def with_pw(url: str) -> str:
            return url.replace("@", f":{secret}@", 1)

        user = dagster_db.split("//", 1)[1].split("@", 1)[0]
        stores = dict(DAGSTER_HOME=str(dh), PLML_DAGSTER_PG_HOST="127.0.0.1", PLML_DAGSTER_PG_PORT="5432", PLML_DAGSTER_PG_USER=user,
                      PLML_DAGSTER_PG_PASSWORD=secret, PLML_DAGSTER_PG_DB=dagster_db.rsplit("/", 1)[1],
                      PLML_MLFLOW_TRACKING_URI=with_pw(mlflow_db), PLML_OPTUNA_STORAGE=with_pw(optuna_db))
        outputs = {}
        doctor = _plml(home, "doctor", **stores)
        assert doctor.returncode == 0, doctor.stdout + doctor.stderr
        outputs["doctor"] = doctor
        masked_mlflow, masked_optuna = (url.replace("@", ":***@", 1) for url in (mlflow_db, optuna_db))
        for name, shown in (("mlflow", masked_mlflow), ("optuna", masked_optuna)):
            assert re.search(rf"ok\s+{name}\s+{re.escape(shown)}\n", doctor.stdout), doctor.stdout
        assert re.search(r"ok\s+dagster\s+.*PostgresRunStorage at postgresql\+psycopg2://\w+:\*\*\*@127\.0\.0\.1:5432/", doctor.stdout), doctor.stdout
        report = _plml(home, "doctor", "--json", **stores)
        outputs["doctor --json"] = report
        assert json.loads(report.stdout)["mlflow"] == {"ok": True, "url": masked_mlflow, "detail": json.loads(report.stdout)["mlflow"]["detail"]}
        status = _plml(home, "status", **stores)
        assert status.returncode == 0 and f"({masked_mlflow})" in status.stdout and "champion: none" in status.stdout, status.stdout + status.stderr
        outputs["status"] = status
        as_json = _plml(home, "status", "--json", **stores)
        assert json.loads(as_json.stdout)["tracking_uri"] == masked_mlflow
        outputs["status --json"] = as_json
        # A store that is down: the failure detail (the driver's own message) and the URL are masked too.
        down = {**stores, "PLML_MLFLOW_TRACKING_URI": f"postgresql://{user}:{secret}@127.0.0.1:1/nowhere", "PLML_DOCTOR_TIMEOUT": "8"}
        failed = _plml(home, "doctor", "--json", **down)
        assert failed.returncode == 1 and json.loads(failed.stdout)["mlflow"]["url"] == f"postgresql://{user}:***@127.0.0.1:1/nowhere"
        outputs["doctor, mlflow down"] = failed
        worker = _plml(home, "worker", "--study", "no_such_study", **stores)
        assert worker.returncode == 2 and f"no study 'no_such_study' in {masked_optuna}" in worker.stderr, worker.stderr
        outputs["worker"] = worker
    for what, proc in outputs.items():
        assert secret not in proc.stdout + proc.stderr, f"`plml {what}` printed the password:\n{proc.stdout}\n{proc.stderr}"


def test_killed_materialize_run_resumes_its_study_and_completes(tmp_path):
    """Kill `dagster asset materialize` in the middle of the XGBoost study (SIGKILL to its process
    group), run it again: the study resumes from the Optuna storage without losing or repeating
    finished trials, and the rest of the graph completes."""
    import optuna
    from optuna.trial import TrialState

    sub = _slice_panel()
    csv = tmp_path / "slice.csv.gz"
    sub.reset_index().to_csv(csv, index=False)
    home = tmp_path / "plml"
    env = _env(home, PLML_PRICES=str(csv), PLML_PROFILE="quick", PLML_HOLDOUT_DAYS="120", DAGSTER_HOME=str(tmp_path / "dh"))
    (tmp_path / "dh").mkdir()
    n_trials = 8
    # The XGBoost chain up to its model (both outputs of each multi-asset step), not the whole graph.
    cmd = [str(BIN / "dagster"), "asset", "materialize", "--select", "*xgboost_model,xgboost_oof_predictions,xgboost_holdout_predictions",
           "-m", "plml_assets.definitions",
           "--config-json", json.dumps({"ops": {"xgboost_study": {"config": {"n_trials": n_trials}}}})]
    victim = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    seen = []
    deadline = time.time() + 600
    killed = False
    for line in victim.stdout:  # type: ignore[union-attr]
        seen.append(line)
        if re.search(r"xgboost_study - trial 2 (COMPLETE|PRUNED)", line):
            os.killpg(victim.pid, signal.SIGKILL)
            killed = True
            break
        if time.time() > deadline:
            break
    victim.wait(timeout=60)
    assert killed, "".join(seen[-30:])
    assert not (home / "assets" / "xgboost_study.json").exists()
    assert not (home / "assets" / "xgboost_model.json").exists()
    storage = f"sqlite:///{home / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    before = {t.number: t.params for t in optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
              if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
    assert len(before) >= 3

    rerun = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=900)
    output = rerun.stdout + rerun.stderr
    # The re-run completes every step, up to the model logged in MLflow.
    assert rerun.returncode == 0, output[-3000:]
    model_out = json.loads((home / "assets" / "xgboost_model.json").read_text())
    assert _registry(home).client().get_run(model_out["run_id"]).info.status == "FINISHED"
    # The study went on from where it was killed: finished trials kept, none repeated, budget exact.
    assert f"{len(before)} of {n_trials} trials done" in output
    trials = optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    assert {t.number: t.params for t in finished if t.number in before} == before
    assert sum(t.state == TrialState.FAIL for t in trials) <= 1  # the trial the kill interrupted, if any
    keys = [tuple(sorted(t.params.items())) for t in finished]
    assert len(keys) == len(set(keys))
    study_out = json.loads((home / "assets" / "xgboost_study.json").read_text())
    assert study_out["counts"]["COMPLETE"] + study_out["counts"]["PRUNED"] == n_trials
    # No half-written asset files were left behind by the killed run.
    assert not list((home / "assets").glob("**/*.tmp"))
