"""How wall time falls with workers: Optuna workers on one PostgreSQL study, and Dask workers for
one data-parallel boosting fit, each against one worker in the same process run, with the efficiency
(speed-up / workers).

* ``optuna``: one study of ``--trials`` trials of the ``<family>_study`` objective (XGBoost,
  ``cv_objective`` over 3 purged walk-forward folds of the embedded panel's 1995-2012 rows, the first 30
  base features, quick parameters, seeded random sampler, no pruning) run by 1 process, then by 2
  processes started together on a fresh PostgreSQL study (each `run_study` with its own worker
  index); wall from start to the last worker's exit.
* ``dask``: one ``fit_model("xgboost", ...)`` with ``dask_client`` on a ``LocalCluster`` of 1 and
  of 2 single-threaded worker processes (``--prices``: sp500_5yr when present, else the embedded
  panel), early stopping off so both do the same rounds; the one-process local fit is the reference.

Runs are interleaved (1, 2, 2, 1, ...), the median of ``--repeat`` is reported. On the 2-core
development machine the ceiling is 2x, and every process also pays its own start-up.

    python benchmarks/scale_out.py --write       # both, into docs/benchmarks.md
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from _common import cpu_name, write_section  # noqa: E402

SECTION = "## Scale-out: Optuna workers and Dask workers"
HORIZON = 5


def _optuna_inputs():
    from plml_assets.lib.data.labels import forward_returns
    from plml_assets.lib.data.prices import load_embedded
    from plml_assets.lib.features.base import build_features
    from plml_assets.lib.models.training import design_matrix, excess_returns
    from plml_assets.lib.validation.splits import PurgedWalkForward

    prices = load_embedded().loc["1995-01-01":"2012-12-31"]
    features, _ = build_features(prices)
    y = excess_returns(forward_returns(prices, horizon=HORIZON))
    dates = np.sort(y.dropna().index.get_level_values("date").unique())
    X, yy = design_matrix(features, y, list(features.columns[:30]), dates)
    folds = list(PurgedWalkForward(n_splits=3, horizon=HORIZON).split(X, yy, groups=X.index.get_level_values("date")))
    return X, yy, folds


def worker_main(url: str, name: str, trials: int, index: int) -> None:
    from plml_assets.lib import tuning
    from plml_assets.lib.models.registry import resolve_params

    X, y, folds = _optuna_inputs()
    fixed = {k: v for k, v in resolve_params("xgboost", quick=True, seed=0).items() if k not in tuning.DEFAULT_SPACES["xgboost"].names}
    objective = tuning.cv_objective(tuning.family_fit_predict("xgboost", HORIZON, **{**fixed, "early_stopping_rounds": 0}),
                                    X, y, folds, HORIZON)
    tuning.run_study(objective, tuning.DEFAULT_SPACES["xgboost"], storage_url=url, study_name=name, sampler="random",
                     pruner="none", n_trials=trials, seed=0, worker=index)


def _fresh_db() -> tuple[str, callable]:
    import psycopg2

    db = f"plml_bench_{uuid.uuid4().hex[:10]}"
    conn = psycopg2.connect(host="127.0.0.1", port=5432, user=os.environ.get("PGUSER", "postgres"), dbname="test")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')

    def drop():
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        conn.close()
    return f"postgresql://{os.environ.get('PGUSER', 'postgres')}@127.0.0.1:5432/{db}", drop


def optuna_wall(workers: int, trials: int) -> float:
    url, drop = _fresh_db()
    try:
        name = "bench"
        # the study and schema first, so both workers start on an existing study
        subprocess.run([sys.executable, __file__, "--_worker", url, name, "0", "0"], check=True, capture_output=True)
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, __file__, "--_worker", url, name, str(trials), str(k)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for k in range(workers)]
        for p in procs:
            _, err = p.communicate()
            if p.returncode:
                raise RuntimeError(err.decode()[-2000:])
        wall = time.perf_counter() - start
        import optuna

        done = [t for t in optuna.load_study(study_name=name, storage=url).get_trials() if t.state.name in ("COMPLETE", "PRUNED")]
        assert len(done) == trials, (len(done), trials)
        return wall
    finally:
        drop()


def dask_walls(prices_path: str | None, repeat: int, rounds: int) -> dict[str, float]:
    import distributed

    from plml_assets.lib.data.labels import forward_returns
    from plml_assets.lib.data.prices import load_embedded, load_file
    from plml_assets.lib.features.base import build_features
    from plml_assets.lib.models.registry import resolve_params
    from plml_assets.lib.models.training import design_matrix, excess_returns, fit_model

    prices = load_file(prices_path) if prices_path else load_embedded()
    features, _ = build_features(prices)
    y = excess_returns(forward_returns(prices, horizon=HORIZON))
    dates = np.sort(y.dropna().index.get_level_values("date").unique())
    X, yy = design_matrix(features, y, list(features.columns[:30]), dates)
    params = {**resolve_params("xgboost", quick=True, seed=0), "n_estimators": rounds, "early_stopping_rounds": 0}
    times: dict[str, list[float]] = {"local": [], "1": [], "2": []}
    clusters = {n: distributed.LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                                            dashboard_address=":0") for n in (1, 2)}
    try:
        clients = {n: distributed.Client(c) for n, c in clusters.items()}
        order = ["local", "1", "2"]
        for r in range(repeat):
            for key in (order if r % 2 == 0 else order[::-1]):
                client = None if key == "local" else clients[int(key)]
                if client is not None:
                    client.run(lambda: None)  # warm
                start = time.perf_counter()
                fit_model("xgboost", params, X, yy, HORIZON, dask_client=client)
                times[key].append(time.perf_counter() - start)
    finally:
        for c in clients.values():
            c.close()
        for c in clusters.values():
            c.close()
    return {k: statistics.median(v) for k, v in times.items()} | {"rows": len(X)}


def agreement() -> list[str]:
    """Holdout rank IC of the local fit and of the fit on 2 Dask workers, embedded panel 2000-2012,
    the first 20 base features as they are (continuous) and binned to 64 training quantiles."""
    import distributed

    from plml_assets.lib.data.labels import forward_returns
    from plml_assets.lib.data.prices import load_embedded
    from plml_assets.lib.features.base import build_features
    from plml_assets.lib.features.scaling import bin_by_training_quantiles
    from plml_assets.lib.models.registry import resolve_params
    from plml_assets.lib.models.training import design_matrix, excess_returns, fit_model, holdout_split
    from plml_assets.lib.validation.metrics import evaluate_predictions

    prices = load_embedded().loc["2000-01-01":"2012-12-31"]
    features, _ = build_features(prices)
    y = excess_returns(forward_returns(prices, horizon=HORIZON))
    split = holdout_split(y, holdout_days=250, horizon=HORIZON)
    cols = list(features.columns[:20])
    Xt, yt = design_matrix(features, y, cols, split.train_dates)
    Xh, yh = design_matrix(features, y, cols, split.holdout_dates)
    rows = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        for features_kind, (A, B) in (("continuous", (Xt, Xh)), ("binned to 64 levels", bin_by_training_quantiles(Xt, Xh))):
            for family in ("xgboost", "lightgbm"):
                for subsample in (1.0, 0.8):
                    params = {**resolve_params(family, quick=True, seed=0), "subsample": subsample}
                    local, _ = fit_model(family, params, A, yt, HORIZON)
                    on_dask, _ = fit_model(family, params, A, yt, HORIZON, dask_client=client)
                    ic = [evaluate_predictions(yh.to_numpy(), m.predict(B), B.index.get_level_values("date"))["rank_ic"] for m in (local, on_dask)]
                    corr = float(np.corrcoef(local.predict(B), on_dask.predict(B))[0, 1])
                    rows.append(f"| {family} | {features_kind} | {subsample} | {ic[0]:+.4f} ({local.best_iteration_ + 1}) | "
                                f"{ic[1]:+.4f} ({on_dask.best_iteration_ + 1}) | {abs(ic[0] - ic[1]):.4f} | {corr:.4f} |")
                    print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--_worker", nargs=4, help=argparse.SUPPRESS)
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=100, help="boosting rounds of the Dask fit")
    parser.add_argument("--prices", default=None, help="panel for the Dask fit (default: ../shared/data/sp500_5yr.csv.gz when present)")
    parser.add_argument("--parts", default="optuna,dask,agreement")
    parser.add_argument("--write", action="store_true")
    args = parser.parse_args()
    if args._worker:
        url, name, trials, index = args._worker
        worker_main(url, name, int(trials), int(index))
        return
    parts = args.parts.split(",")
    rows = []
    if "optuna" in parts:
        walls = {1: [], 2: []}
        for r in range(args.repeat):
            for n in ((1, 2) if r % 2 == 0 else (2, 1)):
                walls[n].append(optuna_wall(n, args.trials))
                print(f"optuna {n} worker(s): {walls[n][-1]:.1f} s", flush=True)
        one, two = statistics.median(walls[1]), statistics.median(walls[2])
        rows.append(f"| Optuna study, {args.trials} trials (XGBoost CV objective, embedded panel) | {one:.1f} | {two:.1f} | "
                    f"{one / two:.2f}x | {one / two / 2:.0%} |")
    if "dask" in parts:
        path = args.prices
        if path is None and (REPO.parent / "shared/data/sp500_5yr.csv.gz").exists():
            path = str(REPO.parent / "shared/data/sp500_5yr.csv.gz")
        d = dask_walls(path, args.repeat, args.rounds)
        print(json.dumps(d), flush=True)
        label = Path(path).name if path else "embedded panel"
        rows.append(f"| XGBoost fit on Dask, {args.rounds} rounds, {d['rows']:,} rows x 30 features ({label}); one process locally: "
                    f"{d['local']:.1f} s | {d['1']:.1f} | {d['2']:.1f} | {d['1'] / d['2']:.2f}x | {d['1'] / d['2'] / 2:.0%} |")
    agree = agreement() if "agreement" in parts else []
    body = "\n".join([
        SECTION, "",
        f"`python benchmarks/scale_out.py --write` on {cpu_name()}, {os.cpu_count()} cores; median of {args.repeat} interleaved runs. "
        "Wall seconds with 1 and with 2 workers; efficiency = speed-up / workers (2 cores here: 2x is the ceiling).", "",
        "| work | 1 worker, s | 2 workers, s | speed-up | efficiency |", "|---|---:|---:|---:|---:|", *rows, "",
        *([
            "Does a fit on 2 Dask workers equal the local fit? Holdout rank IC (rounds kept) of each, embedded panel "
            "2000-2012, 20 base features, quick parameters, holdout the last 250 dates:", "",
            "| family | features | subsample | local | dask, 2 workers | difference | prediction correlation |",
            "|---|---|---:|---:|---:|---:|---:|", *agree, "",
            "With features of at most 255 distinct values (binned) and every row sampled, both boosters build the same "
            "bins on every worker and the distributed fit is the local one. On continuous features each worker's quantile "
            "sketch (XGBoost) or bin finding (LightGBM) sees its own rows, the bins differ a little and so do the trees; "
            "with row subsampling each worker also samples its own rows. The differences are then of the size a change "
            "of seed makes on this weak signal.", "",
        ] if agree else []),
    ])
    print(body)
    if args.write:
        write_section(SECTION, body)


if __name__ == "__main__":
    main()
