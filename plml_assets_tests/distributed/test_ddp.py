"""The sequence nets trained data-parallel with torch DistributedDataParallel on 2 local processes
(gloo, loopback): the same loss curves as one process, the same predictions, the same model contract.
On a machine with 2 GPUs the same runs on NCCL (benchmarks/gpu_check.py); without one this is CPU only."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plml_assets.lib.models.ddp import fit_ddp
from plml_assets.lib.models.registry import make_model

pytestmark = pytest.mark.slow


def _panel(n_dates: int = 160, n_symbols: int = 16, seed: int = 0):
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2016-01-04", periods=n_dates, name="date")
    index = pd.MultiIndex.from_product([dates, [f"S{k:02d}" for k in range(n_symbols)]], names=["date", "symbol"])
    X = pd.DataFrame(rng.normal(size=(len(index), 4)).astype("float32"), index=index, columns=["a", "b", "c", "d"])
    y = pd.Series(0.5 * X["a"].to_numpy() + rng.normal(scale=1.0, size=len(index)), index=index, name="y")
    return X, y


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_two_gloo_processes_give_the_one_process_loss_curve(family, tmp_path):
    X, y = _panel()
    dates = X.index.get_level_values("date")
    cut = dates.unique()[120]
    train, valid = (X[dates < cut], y[dates < cut]), (X[dates >= cut], y[dates >= cut])
    # No dropout (each rank would draw its own masks). 1,025 windows in batches of 100: the last batch
    # of 25 splits 13 / 12, which the loss scaling weighs exactly as one process does.
    params = {"window": 10, "hidden_size": 16, "num_layers": 1, "dropout": 0.0, "max_epochs": 3, "batch_size": 100,
              "epoch_samples": 1025, "patience": 0, "seed": 0, "num_threads": 1}
    one = make_model(family, **params).fit(train, valid)
    two = fit_ddp(make_model(family, **params), train, valid, world_size=2)
    assert type(two) is type(one) and two.feature_names_ == one.feature_names_ and two.n_epochs_ == one.n_epochs_ == 3
    np.testing.assert_allclose(two.history_["train"], one.history_["train"], rtol=1e-4)
    np.testing.assert_allclose(two.history_["valid"], one.history_["valid"], rtol=1e-4)
    assert one.history_["train"][-1] < one.history_["train"][0]  # it learned something: the curves are not flat
    np.testing.assert_allclose(two.predict(valid[0]), one.predict(valid[0]), rtol=1e-3, atol=1e-5)


def test_a_world_of_nothing_is_refused():
    X, y = _panel(n_dates=40, n_symbols=4)
    with pytest.raises(ValueError, match="world_size must be >= 1"):
        fit_ddp(make_model("lstm"), (X, y), world_size=0)
