"""Data-parallel training of the sequence nets with torch DistributedDataParallel: ``world_size``
processes on this machine (gloo on the CPU, NCCL on GPUs), each fitting the same model on the same
rows; every rank draws the same seeded global batches and trains on its share of each, DDP averages
the gradients, so each step is the one-process step on the whole batch and the loss curve is the
one-process curve (up to float summation order, and a last batch of an odd size weighs its two
shares slightly differently). Dropout draws its masks per rank: with dropout the curve differs from
one process the way another seed's does. Rank 0 writes the fitted model; the caller gets it back.
On a cluster, the same ranks run as pods (torchrun) with a TCP rendezvous instead of loopback."""

from __future__ import annotations

import socket
import tempfile
from pathlib import Path

import pandas as pd

from plml_assets.lib.models.base import Dataset
from plml_assets.lib.models.registry import load_model
from plml_assets.lib.models.sequence import SequenceModel


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank(rank: int, world_size: int, port: int, backend: str, model: SequenceModel, train: Dataset, valid: Dataset | None,
          calendar, out: str) -> None:
    import torch
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        if backend == "nccl":
            model.device = f"cuda:{rank}"
            torch.cuda.set_device(rank)
        model._ddp = (rank, world_size)
        model.fit(train, valid, calendar=calendar)
        del model._ddp
        if rank == 0:
            model.save(out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


def fit_ddp(model: SequenceModel, train: Dataset, valid: Dataset | None = None, *, world_size: int = 2,
            backend: str | None = None, calendar: pd.Index | None = None) -> SequenceModel:
    """``model`` fitted by ``world_size`` DDP processes (``backend``: "gloo" on the CPU, "nccl" when
    CUDA has a GPU per rank; None picks). Returns the fitted model as rank 0 saved it."""
    import torch
    import torch.multiprocessing as mp

    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() and torch.cuda.device_count() >= world_size else "gloo"
    if backend == "nccl" and torch.cuda.device_count() < world_size:
        raise ValueError(f"nccl needs a GPU per rank: {world_size} ranks, {torch.cuda.device_count()} GPU(s)")
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "model")
        mp.spawn(_rank, args=(world_size, _free_port(), backend, model, train, valid, calendar, out), nprocs=world_size, join=True)
        return load_model(model.family, out)
