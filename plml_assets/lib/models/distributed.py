"""Data-parallel boosting on a Dask cluster: the same fit as :func:`lib.models.training.fit_model`
(same rows, target clipping, early-stopping rows and rule), with the rows split over the cluster's
workers, through ``xgboost.dask`` and ``lightgbm.dask``. The result is the family's ordinary model
object (a local booster), so saving, the MLflow pyfunc and serving are unchanged.

- XGBoost: ``xgb.dask.train`` with early stopping on the validation rows (a distributed hist
  tree: histograms are all-reduced across workers).
- LightGBM: ``lightgbm.dask`` has no early-stopping callback, so every round is trained, the
  validation curve (l2 on every validation row) is computed from the trees afterwards, and the
  early-stopping rule of the local fit is applied to it (the best round of the prefix where
  ``early_stopping_rounds`` rounds brought no improvement): the round the local fit keeps, given the
  same trees.

Rows are dealt to the workers in a seeded random order. With every row sampled (``subsample`` and
``colsample_bytree`` 1) the trees are the local fit's (measured: prediction correlation 1.0 on the
embedded panel with binned features); with row or column subsampling each worker samples on its own
and the model differs from the local one by about as much as another seed does.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from plml_assets.lib.models.base import Dataset, Model

DASK_FAMILIES = ("xgboost", "lightgbm")


def workers_of(client) -> int:
    return len(client.scheduler_info().get("workers", {}))


def _chunks(n_rows: int, n_workers: int) -> int:
    return max(1, int(np.ceil(n_rows / max(n_workers, 1))))


def _arrays(client, X: pd.DataFrame, y: pd.Series, shuffle_seed: int | None = 0):
    """The rows as Dask arrays, one block per worker. Rows are dealt to the blocks in a seeded random
    order (boosting does not depend on row order): each worker then holds a sample of every period,
    not a run of consecutive dates, so the feature bins LightGBM builds from each worker's rows match
    the bins of the whole set."""
    import dask.array as da

    values, target = X.to_numpy(dtype="float32"), np.asarray(y, dtype="float32")
    if shuffle_seed is not None:
        order = np.random.default_rng(shuffle_seed).permutation(len(values))
        values, target = values[order], target[order]
    chunk = _chunks(len(X), workers_of(client))
    dX = da.from_array(values, chunks=(chunk, X.shape[1]))
    dy = da.from_array(target, chunks=(chunk,))
    return client.persist(dX), client.persist(dy)


def early_stopping_round(curve: list[float], patience: int) -> int:
    """The 0-based best round a local early-stopped fit keeps on this validation curve (lower is
    better): training stops once ``patience`` rounds bring no improvement on the best so far."""
    if not patience:  # no early stopping: the local fit keeps its last round
        return len(curve) - 1
    best, best_value = 0, np.inf
    for r, value in enumerate(curve):
        if value < best_value:
            best, best_value = r, value
        elif r - best >= patience:
            break
    return best


def validation_curve(booster, X: np.ndarray, y: np.ndarray) -> list[float]:
    """Mean squared error on (X, y) after each boosting round of a LightGBM booster, from each tree's
    own contribution added up (one pass per tree, not one prediction per prefix)."""
    rounds = booster.current_iteration()
    score = np.zeros(len(y))
    curve = []
    for r in range(rounds):
        score += booster.predict(X, start_iteration=r, num_iteration=1, raw_score=True)
        curve.append(float(np.mean((score - y) ** 2)))
    return curve


def fit_xgboost_dask(model: Model, train: Dataset, valid: Dataset, client) -> Model:
    import xgboost as xgb
    import xgboost.dask  # noqa: F401  (not imported by `import xgboost`)

    start = time.perf_counter()
    X = model._fit_scaling(train[0])
    Xv = model._apply_scaling(valid[0])
    dtrain = xgb.dask.DaskDMatrix(client, *_arrays(client, X, train[1]), feature_names=list(X.columns))
    dvalid = xgb.dask.DaskDMatrix(client, *_arrays(client, Xv, valid[1]), feature_names=list(X.columns))
    params = {**model._booster_params(list(X.columns)), "nthread": model.nthread}
    out = xgb.dask.train(client, params, dtrain, num_boost_round=model.n_estimators,
                         evals=[(dtrain, "train"), (dvalid, "valid")],
                         early_stopping_rounds=model.early_stopping_rounds or None, verbose_eval=False)
    booster = out["booster"]
    model.booster_ = booster
    model.feature_names_ = list(X.columns)
    model.best_iteration_ = int(getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1))
    model.n_rounds_ = booster.num_boosted_rounds()
    model.history_ = out["history"]
    model.incremental_updates_ = 0
    model.fit_seconds_ = time.perf_counter() - start
    return model


def fit_lightgbm_dask(model: Model, train: Dataset, valid: Dataset, client) -> Model:
    import lightgbm as lgb

    start = time.perf_counter()
    X = model._fit_scaling(train[0])
    Xv = model._apply_scaling(valid[0])
    params = {k: v for k, v in model._booster_params(list(X.columns)).items() if k not in ("metric", "verbose", "objective")}
    estimator = lgb.DaskLGBMRegressor(client=client, n_estimators=model.n_estimators, objective="regression",
                                      verbose=-1, **params)
    dX, dy = _arrays(client, X, train[1])
    estimator.fit(dX, dy, feature_name=[str(c) for c in X.columns])
    booster = estimator.to_local().booster_
    # The validation curve on every validation row (lightgbm.dask would report one worker's share).
    curve = validation_curve(booster, Xv.to_numpy(dtype="float32"), np.asarray(valid[1], dtype="float64"))
    model.booster_ = booster
    model.feature_names_ = list(booster.feature_name())
    model.best_iteration_ = early_stopping_round(curve, model.early_stopping_rounds)
    model.n_rounds_ = booster.current_iteration()
    model.history_ = {"valid": {"l2": curve}}
    model.incremental_updates_ = 0
    model.fit_seconds_ = time.perf_counter() - start
    return model


def fit_on_dask(model: Model, train: Dataset, valid: Dataset, client) -> Model:
    fits = {"xgboost": fit_xgboost_dask, "lightgbm": fit_lightgbm_dask}
    if model.family not in fits:
        raise ValueError(f"{model.family} does not train on Dask (only {', '.join(DASK_FAMILIES)})")
    # ``client`` is made the current one for the fit: xgboost.dask waits on the data's futures through
    # the current client, and with another client current in this process it waits for ever.
    with client.as_current():
        return fits[model.family](model, train, valid, client)
