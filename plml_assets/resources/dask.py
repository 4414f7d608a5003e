"""Dask for data-parallel boosting: when a scheduler address is configured, the xgboost and
lightgbm model assets train their final fit on that cluster's workers (lib/models/distributed.py);
otherwise they train in the step's own process. The asset metadata says which (``trained_on``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import dagster as dg
from pydantic import Field


class DaskResource(dg.ConfigurableResource):
    scheduler_address: str | None = Field(
        default=None, description="Dask scheduler address, e.g. tcp://dask-scheduler:8786 (env PLML_DASK_SCHEDULER); "
        "None: train locally")
    connect_timeout_s: float = Field(default=30.0, gt=0, description="how long to wait for the scheduler")

    def address(self) -> str | None:
        return self.scheduler_address or os.environ.get("PLML_DASK_SCHEDULER") or None

    @contextlib.contextmanager
    def client(self) -> Iterator[object | None]:
        """A ``distributed.Client`` on the configured scheduler, or None when none is configured."""
        address = self.address()
        if address is None:
            yield None
            return
        try:
            import distributed
        except ImportError as exc:
            raise RuntimeError(f"a Dask scheduler is configured ({address}) but dask.distributed is not installed: "
                               "pip install 'plml[scale]'") from exc
        try:
            client = distributed.Client(address, timeout=self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise RuntimeError(f"no Dask scheduler answers at {address} within {self.connect_timeout_s:.0f} s: {exc}") from exc
        with client:
            yield client


def describe(client) -> str:
    """``"dask: N workers"`` for a client, ``"local"`` for None (the trained_on metadata)."""
    if client is None:
        return "local"
    from plml_assets.lib.models.distributed import workers_of

    return f"dask: {workers_of(client)} workers"
