"""The install is what pyproject and the constraints file promise (DESIGN.md pitfalls)."""

from __future__ import annotations

import importlib
import re
import tomllib
from importlib.metadata import version

import pytest

from plml_assets_tests.conftest import REPO

CORE = ["dagster", "dagster-webserver", "dagster-graphql", "dagster-pipes", "dagster-shared"]
INTEGRATIONS = ["dagster-k8s", "dagster-mlflow", "dagster-postgres"]


def test_dagster_family_is_one_release():
    core = {pkg: version(pkg) for pkg in CORE}
    assert len(set(core.values())) == 1, core
    major, minor, patch = next(iter(core.values())).split(".")
    expected = f"0.{int(minor) + 16}.{patch}"
    assert {pkg: version(pkg) for pkg in INTEGRATIONS} == dict.fromkeys(INTEGRATIONS, expected)


@pytest.mark.parametrize(
    "module",
    ["dagster", "dagster_webserver", "dagster_graphql", "dagster_pipes", "dagster_shared", "dagster_k8s",
     "dagster_mlflow", "dagster_postgres", "mlflow", "xgboost", "lightgbm", "sklearn", "optuna",
     "optuna_integration", "pandas", "pyarrow", "torch", "shap", "skfolio", "psycopg2", "psycopg"],
)
def test_each_dependency_imports(module):
    assert importlib.import_module(module) is not None


def test_torch_is_the_pinned_cpu_build():
    import torch

    constraints = (REPO / "deploy" / "constraints.txt").read_text()
    pinned = re.search(r"^torch==(\S+)", constraints, flags=re.M).group(1)
    assert torch.__version__.split("+")[0] == pinned


def test_pyproject_pins_match_constraints():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = [d for extra in project.get("optional-dependencies", {}).values() for d in extra]
    deps = {re.split(r"[=<>\[ ]", d, maxsplit=1)[0]: d for d in [*project["dependencies"], *extras]}
    constraints = dict(
        line.split("==") for line in (REPO / "deploy" / "constraints.txt").read_text().splitlines()
        if line and not line.startswith("#")
    )
    for pkg, pin in constraints.items():
        assert deps[pkg] == f"{pkg}=={pin}", pkg
    assert project["scripts"]["plml"] == "plml_assets.cli:main"


def test_top_level_layout():
    expected = {"plml_assets", "plml_assets_tests", "workspace.yaml", "dagster.yaml", "pyproject.toml", "deploy",
                "README.md", ".ci"}
    present = {p.name for p in REPO.iterdir()}
    assert expected <= present
    assert (REPO / ".ci" / "run").exists()
