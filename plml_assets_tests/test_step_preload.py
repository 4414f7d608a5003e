"""The forkserver preload of ``plml run``: every module it names exists in the pinned releases (a
Dagster upgrade that moves one is noticed here, not as a silently slower run), and importing it
starts no thread and opens no connection, so forking step processes from it stays safe."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, os, sys, threading
import plml_assets.step_preload as preload
def target(fd):
    try:
        return os.readlink(f'/proc/self/fd/{fd}')
    except OSError:  # the descriptor listdir itself had open
        return ''
fds = sorted(os.listdir('/proc/self/fd'))
print(json.dumps({
    "listed": list(preload.STEP_MODULES),
    "preloaded": preload.PRELOADED,
    "threads": [t.name for t in threading.enumerate()],
    "torch": "torch" in sys.modules,
    "mlflow_map": preload.MLFLOW_REQUIREMENTS_MAP_WARM,
    "sockets": sum(1 for fd in fds if target(fd).startswith('socket:')),
}))
"""


def test_step_preload_imports_every_listed_module_without_threads_or_sockets():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=300, check=True)
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["preloaded"] == probe["listed"], f"not importable: {sorted(set(probe['listed']) - set(probe['preloaded']))}"
    assert probe["torch"]
    assert probe["mlflow_map"], "MLflow's module-to-package map was not precomputed (its private helper moved?)"
    assert probe["threads"] == ["MainThread"], probe["threads"]
    assert probe["sockets"] == 0


JOB_MODULE = """
import json, os, sys
from pathlib import Path
import dagster as dg
from plml_assets.definitions import DEFAULT_EXECUTOR

@dg.asset
def probe():
    parent = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().replace(b"\\0", b" ").decode()
    Path(os.environ["PROBE_OUT"]).write_text(json.dumps({
        "preloaded": "plml_assets.step_preload" in sys.modules, "torch": "torch" in sys.modules,
        "omp": os.environ.get("OMP_NUM_THREADS"), "parent": parent}))

def job():
    defs = dg.Definitions(assets=[probe], jobs=[dg.define_asset_job("probe_job")], executor=DEFAULT_EXECUTOR)
    return defs.resolve_job_def("probe_job")

if __name__ == "__main__":
    with dg.instance_for_test() as instance:
        with dg.execute_job(dg.reconstructable(job), instance=instance, run_config=json.loads(sys.argv[1])) as result:
            assert result.success
"""


def _probe_step(tmp_path, run_config: dict, env_extra: dict | None = None) -> dict:
    import os

    (tmp_path / "probe_job.py").write_text(JOB_MODULE)
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}
    env.update({"PROBE_OUT": str(tmp_path / "probe.json"), "PYTHONPATH": str(tmp_path), **(env_extra or {})})
    out = subprocess.run([sys.executable, "-m", "probe_job", json.dumps(run_config)], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp_path / "probe.json").read_text())


def test_runs_that_name_no_executor_fork_their_steps_from_the_preload(tmp_path):
    """The definitions' default executor (every run the daemon, UI, GraphQL or `plml run --workers N`
    launches): a real run's step process was forked from the forkserver, with the preload's modules
    already imported and a thread budget of one, without the run config naming any of it."""
    step = _probe_step(tmp_path, {})
    assert "forkserver" in step["parent"], step["parent"]
    assert step["preloaded"] and step["torch"]
    assert step["omp"] == "1"
    # `plml run --workers N`'s run config (max_concurrent only) keeps the forkserver too.
    step = _probe_step(tmp_path, {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}})
    assert "forkserver" in step["parent"] and step["preloaded"]


def test_an_explicit_start_method_or_thread_budget_is_kept(tmp_path):
    step = _probe_step(tmp_path, {"execution": {"config": {"multiprocess": {"start_method": {"spawn": {}}}}}},
                       env_extra={"OMP_NUM_THREADS": "2"})
    assert "forkserver" not in step["parent"]
    assert not step["preloaded"]  # a fresh interpreter per step, as asked
    assert step["omp"] == "2"


def test_with_forkserver_adds_the_start_method_only_where_none_is_named():
    from plml_assets.definitions import FORKSERVER, with_forkserver

    assert with_forkserver({}) == {"multiprocess": {"start_method": FORKSERVER}}
    assert with_forkserver(None) == {"multiprocess": {"start_method": FORKSERVER}}
    assert with_forkserver({"multiprocess": {"max_concurrent": 3}}) == {"multiprocess": {"max_concurrent": 3, "start_method": FORKSERVER}}
    assert with_forkserver({"multiprocess": {"start_method": {"spawn": {}}}}) == {"multiprocess": {"start_method": {"spawn": {}}}}
    assert with_forkserver({"in_process": {}}) == {"in_process": {}}


def test_a_bad_execution_config_is_refused_by_dagster_naming_the_field():
    import dagster as dg
    import pytest

    from plml_assets.definitions import DEFAULT_EXECUTOR

    @dg.asset
    def tiny():
        return 1

    job = dg.Definitions(assets=[tiny], executor=DEFAULT_EXECUTOR).resolve_implicit_global_asset_job_def()
    with pytest.raises(dg.DagsterInvalidConfigError, match="max_concurent"):
        dg.validate_run_config(job, {"execution": {"config": {"multiprocess": {"max_concurent": 2}}}})
    with pytest.raises(dg.DagsterInvalidConfigError, match="threads"):
        dg.validate_run_config(job, {"execution": {"config": {"multiprocess": {"start_method": {"threads": {}}}}}})
    assert dg.validate_run_config(job, {"execution": {"config": {"multiprocess": {"max_concurrent": 2}}}})
