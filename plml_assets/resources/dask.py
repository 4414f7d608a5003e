"""Dask for data-parallel boosting: when a scheduler address is configured, the xgboost and
lightgbm model assets train their final fit on that cluster's workers (lib/models/distributed.py);
otherwise they train in the step's own process. The asset metadata says which (``trained_on``)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import dagster as dg
from pydantic import Field

from plml_assets.resources.secrets import mask_secrets, mask_url


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
            raise RuntimeError(f"a Dask scheduler is configured ({mask_url(address)}) but dask.distributed is not installed: "
                               "pip install 'plml[scale]'") from exc
        try:
            client = distributed.Client(address, timeout=self.connect_timeout_s)
        except (OSError, TimeoutError) as exc:
            raise RuntimeError(f"no Dask scheduler answers at {mask_url(address)} within {self.connect_timeout_s:.0f} s: {mask_secrets(exc)}") from exc
        with client:
            try:  # a scheduler without workers would make a fit wait for ever
                client.wait_for_workers(1, timeout=self.connect_timeout_s)
            except TimeoutError as exc:
                raise RuntimeError(f"the Dask scheduler at {address} has no worker after {self.connect_timeout_s:.0f} s") from exc
            yield client


def describe(client) -> str:
    """``"dask: N workers"`` for a client, ``"local"`` for None (the trained_on metadata)."""
    if client is None:
        return "local"
    from plml_assets.lib.models.distributed import workers_of

    return f"dask: {workers_of(client)} workers"


@contextlib.contextmanager
def task_totals(client) -> Iterator[dict]:
    """Record the Dask task stream while the block runs; on exit the yielded dict holds the tasks
    run, their compute seconds, and both per worker (empty without a client)."""
    totals: dict = {}
    if client is None:
        yield totals
        return
    import distributed

    with distributed.get_task_stream(client=client) as stream:
        yield totals
    per_worker: dict[str, dict[str, float]] = {}
    for task in stream.data:
        seconds = sum(s["stop"] - s["start"] for s in task.get("startstops", []) if s.get("action") == "compute")
        row = per_worker.setdefault(str(task.get("worker")), {"tasks": 0, "compute_s": 0.0})
        row["tasks"] += 1
        row["compute_s"] += seconds
    totals.update({"tasks": sum(r["tasks"] for r in per_worker.values()),
                   "compute_s": round(sum(r["compute_s"] for r in per_worker.values()), 3),
                   "workers": {w: {"tasks": r["tasks"], "compute_s": round(r["compute_s"], 3)} for w, r in sorted(per_worker.items())}})
