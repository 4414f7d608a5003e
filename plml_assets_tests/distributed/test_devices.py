"""Device choice of the final fits: 'auto' takes CUDA where a device is visible. This machine has no
GPU, so the CUDA case is simulated by patching torch.cuda.is_available and XGBoost's build info (the
one mock here, saying what a GPU host reports); benchmarks/gpu_check.py runs the real CUDA fits on a
machine with a GPU."""

from __future__ import annotations

import pytest

from plml_assets.defs.training import assets as training


def test_auto_stays_on_the_cpu_without_a_gpu():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert training._device("xgboost", "auto") is None and training._device("lightgbm", "auto") is None
    assert training._device("lstm", "auto") == "auto"  # the net resolves it itself (CPU here)


def test_auto_picks_cuda_for_xgboost_where_a_gpu_is_visible(monkeypatch):
    import torch
    import xgboost as xgb

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(xgb, "build_info", lambda: {"USE_CUDA": True})
    assert training._device("xgboost", "auto") == "cuda"
    assert training._device("lightgbm", "auto") is None  # the PyPI wheel has no CUDA
    assert training._device("xgboost", "cpu") == "cpu"  # asked for the CPU: the CPU
    monkeypatch.setattr(xgb, "build_info", lambda: {"USE_CUDA": False})  # a CPU-only XGBoost build
    assert training._device("xgboost", "auto") is None


def test_a_bad_device_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda"):
        training._device("xgboost", "tpu")
