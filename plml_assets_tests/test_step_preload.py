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


def test_plml_run_forks_its_step_processes_from_the_preload():
    import inspect

    from plml_assets import cli

    source = inspect.getsource(cli.cmd_run)
    assert '"preload_modules": ["plml_assets.step_preload"]' in source
