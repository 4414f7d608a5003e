"""The benchmark scripts still start against today's library: a renamed function once left
benchmarks/hpo.py unable to import for two issues. Each script parses its arguments (``--help``)
after its imports, so this catches import-time breaks (a missing or renamed name) without running a
measurement; what a measurement calls later is exercised only when the benchmark is run."""

from __future__ import annotations

import subprocess
import sys

import pytest

from plml_assets_tests.conftest import REPO

SCRIPTS = sorted(p for p in (REPO / "benchmarks").glob("*.py") if not p.name.startswith("_"))


def test_every_benchmark_script_is_checked():
    assert {p.stem for p in SCRIPTS} >= {"hpo", "drift", "incremental", "features", "feature_generation", "model_comparison"}


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.stem)
def test_benchmark_script_imports_and_parses_its_arguments(script):
    proc = subprocess.run([sys.executable, str(script), "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "usage:" in proc.stdout
