"""Check the GPU paths of the model families and time them against the CPU on the same data.

Data: the last ``--rows`` labelled rows of the 20-stock panel bundled in skfolio, features from
``build_features`` (computed on the full history, so the slice has warm windows), target the
5-day forward return in excess of the universe's mean, split by date into fit / early-stopping
rows with the horizon purged between (``lib.models.training.early_stopping_split``).

Runs: XGBoost with device="cpu" and "cuda", LightGBM on CPU (its PyPI wheel has no CUDA), LSTM
and GRU on "cpu" and "cuda". The networks train a fixed number of epochs (no early stopping) so
that both devices do the same work. Without CUDA the script says so and times the CPU paths only.

    python benchmarks/gpu_check.py --rows 20000 --threads 1               # a small, shared CPU box
    python benchmarks/gpu_check.py --rows 160000 --epochs 3 --hidden 64     # on a GPU machine

Times are wall-clock seconds of one fit and one prediction of the validation rows, after one
untimed warm-up of each device (CUDA context, kernels).
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd
import torch

try:  # the GPU machine may lack it: its CUDA wheel (132 MB) is too big to carry there
    import xgboost as xgb
except ImportError:
    xgb = None
try:
    import lightgbm  # noqa: F401
    HAS_LIGHTGBM = True
except ImportError:
    HAS_LIGHTGBM = False

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from plml_assets.lib.analytics.metering import GPU_MEM_KEY, GPU_UTIL_KEY, GpuSampler  # noqa: E402
from plml_assets.lib.data.labels import forward_returns  # noqa: E402
from plml_assets.lib.data.prices import load_embedded  # noqa: E402
from plml_assets.lib.features.base import build_features  # noqa: E402
from plml_assets.lib.models.registry import make_model  # noqa: E402
from plml_assets.lib.models.training import early_stopping_split, excess_returns  # noqa: E402
from plml_assets.lib.validation.metrics import evaluate_predictions  # noqa: E402

HORIZON = 5


def load_data(rows: int, panel_path: str | None = None) -> tuple[tuple[pd.DataFrame, pd.Series], tuple[pd.DataFrame, pd.Series]]:
    panel = pd.read_parquet(panel_path) if panel_path else load_embedded()
    features, _ = build_features(panel)
    target = excess_returns(forward_returns(panel, HORIZON)).reindex(features.index)
    known = target.notna().to_numpy()
    X, y = features[known], target[known]
    X, y = X.iloc[-rows:], y.iloc[-rows:]  # the panel is sorted by (date, symbol): the latest rows
    fit, stop = early_stopping_split(X.index.get_level_values("date").to_numpy(), HORIZON, fraction=0.2)
    return (X[fit], y[fit]), (X[stop], y[stop])


def xgboost_has_cuda() -> bool:
    return xgb is not None and bool(xgb.build_info().get("USE_CUDA", False))


def plan(args: argparse.Namespace, cuda: bool) -> list[tuple[str, str, dict[str, object]]]:
    cpu_threads = args.threads
    trees = {"n_estimators": args.trees, "early_stopping_rounds": 0}
    net = {"window": args.window, "hidden_size": args.hidden, "num_layers": args.layers, "batch_size": args.batch,
           "max_epochs": args.epochs, "patience": 0, "lr": 1e-3}
    runs: list[tuple[str, str, dict[str, object]]] = []
    if xgb is not None:
        runs.append(("xgboost", "cpu", {**trees, "max_depth": 6, "nthread": cpu_threads, "device": "cpu"}))
    if cuda and xgboost_has_cuda():
        runs.append(("xgboost", "cuda", {**trees, "max_depth": 6, "nthread": cpu_threads, "device": "cuda"}))
    if HAS_LIGHTGBM:
        runs.append(("lightgbm", "cpu", {**trees, "num_leaves": 63, "n_jobs": cpu_threads, "device": "cpu"}))
    for family in ("lstm", "gru"):
        runs.append((family, "cpu", {**net, "device": "cpu"}))
        if cuda:
            runs.append((family, "cuda", {**net, "device": "cuda"}))
    return runs


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def warm_up(train, valid, cuda: bool) -> None:
    """One tiny fit per device so that CUDA context creation is not timed."""
    small = (train[0].iloc[:2000], train[1].iloc[:2000])
    for device in ("cpu", "cuda") if cuda else ("cpu",):
        make_model("gru", window=4, hidden_size=4, max_epochs=1, device=device).fit(small)
        if device == "cuda" and xgboost_has_cuda():
            make_model("xgboost", n_estimators=2, device="cuda").fit(small)
        sync(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=40_000, help="latest labelled rows of the panel to use")
    parser.add_argument("--trees", type=int, default=200, help="boosting rounds (no early stopping)")
    parser.add_argument("--epochs", type=int, default=2, help="network epochs (no early stopping)")
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--layers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--panel", default=None, help="a Parquet (date, symbol) price panel instead of the embedded one")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="CPU threads of every CPU path: xgboost nthread, lightgbm n_jobs, torch "
                             "(default: all cores)")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be >= 1")
    torch.set_num_threads(args.threads)

    cuda = torch.cuda.is_available()
    print(f"python {platform.python_version()}, torch {torch.__version__}, "
          f"xgboost {xgb.__version__ if xgb is not None else 'not installed'}, lightgbm {'yes' if HAS_LIGHTGBM else 'not installed'}, "
          f"{os.cpu_count()} CPU cores, {args.threads} CPU thread(s) per model")
    if cuda:
        print(f"CUDA available: {torch.cuda.get_device_name(0)}; xgboost built with CUDA: {xgboost_has_cuda()}")
    else:
        print("CUDA not available here: timing the CPU paths only")

    start = time.perf_counter()
    train, valid = load_data(args.rows, args.panel)
    print(f"data: {len(train[0]):,} fit rows, {len(valid[0]):,} early-stopping rows, {train[0].shape[1]} features "
          f"({time.perf_counter() - start:.1f} s to load and build features)")
    warm_up(train, valid, cuda)

    rows = []
    for family, device, params in plan(args, cuda):
        model = make_model(family, **params)
        sync(device)
        sampler = GpuSampler(interval_s=0.2)  # what `plml analytics` records per step, here per fit
        sees_gpu = sampler.start()
        t0 = time.perf_counter()
        model.fit(train, valid)
        sync(device)
        t1 = time.perf_counter()
        sampler.sample()
        gpu_figures = sampler.figures()
        sampler.stop()
        if device == "cuda":
            if not (sees_gpu and gpu_figures.get(GPU_MEM_KEY, 0) > 0):
                print(f"FAILED: NVML did not see {family}'s CUDA fit (step GPU fields would be absent): {gpu_figures}", file=sys.stderr)
                return 1
            print(f"  {family:8s} cuda NVML: utilization {gpu_figures[GPU_UTIL_KEY]:.0f} %, "
                  f"this process's GPU memory peak {gpu_figures[GPU_MEM_KEY]:.0f} MiB")
        pred = model.predict(valid[0])
        sync(device)
        t2 = time.perf_counter()
        metrics = evaluate_predictions(valid[1], pred, valid[0].index.get_level_values("date"))
        work = f"{model.n_epochs_} epochs" if hasattr(model, "n_epochs_") else f"{model.n_rounds_} rounds"
        rows.append({"family": family, "device": device, "work": work, "fit_s": t1 - t0,
                     "predict_s": t2 - t1, "valid_rank_ic": metrics["rank_ic"]})
        print(f"  {family:8s} {device:4s} fit {t1 - t0:7.2f} s  predict {t2 - t1:6.2f} s", flush=True)
        if device == "cuda" and family in ("lstm", "gru"):
            # A net trained on the GPU must serve on a CPU-only host: save, load (weights_only, CPU), compare.
            import tempfile

            with tempfile.TemporaryDirectory() as tmp:
                model.save(tmp)
                on_cpu = type(model).load(tmp)
            reloaded = on_cpu.predict(valid[0])
            gap = float(abs(reloaded - pred).max())
            spread = float(pred.std())
            agree = float(pd.Series(reloaded).corr(pd.Series(pred), method="spearman"))
            print(f"  {family:8s} trained on cuda, reloaded on cpu ({on_cpu.device_}): max prediction difference "
                  f"{gap:.2e} (prediction std {spread:.2e}), rank correlation {agree:.6f}")
            # cuDNN (TF32 matmuls on Hopper) and the CPU kernels round differently: bound the
            # difference by the spread of the scores, which is what ranks the universe.
            if gap > 0.02 * spread + 1e-7 or agree < 0.999:
                print(f"FAILED: {family} predictions differ after the CPU reload", file=sys.stderr)
                return 1

    table = pd.DataFrame(rows)
    cpu_fit = table[table["device"] == "cpu"].set_index("family")["fit_s"]
    table["speedup_vs_cpu"] = [cpu_fit[f] / s for f, s in zip(table["family"], table["fit_s"], strict=True)]
    print()
    print(table.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
