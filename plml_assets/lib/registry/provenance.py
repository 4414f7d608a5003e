"""Identifiers that tie a model version to the exact code, data and features that made it."""

from __future__ import annotations

import hashlib
import subprocess
from importlib import metadata
from pathlib import Path


def code_version() -> str:
    """Package version, plus the git commit when running from a checkout."""
    try:
        version = metadata.version("plml")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    repo = Path(__file__).resolve().parents[3]
    try:
        sha = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5
        ).stdout.strip()
        return f"{version}+g{sha}{'.dirty' if dirty else ''}"
    except (OSError, subprocess.SubprocessError):
        return version


def feature_list_hash(features: list[str]) -> str:
    return hashlib.sha256("\n".join(features).encode()).hexdigest()[:12]


def content_digest(*parts: object) -> str:
    """A short digest of DataFrames/Series (values, index and column names) and JSON-able values,
    e.g. to name an Optuna study after exactly the data and setup it searched on."""
    import json

    import pandas as pd

    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, (pd.DataFrame, pd.Series)):
            h.update(pd.util.hash_pandas_object(part, index=True).to_numpy().tobytes())
            if isinstance(part, pd.DataFrame):
                h.update(",".join(map(str, part.columns)).encode())
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()[:12]
