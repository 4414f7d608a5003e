"""LightGBM behind the model interface: leaf-wise trees, early stopping on the validation slice.

Determinism: ``deterministic=True`` with ``force_row_wise=True`` and one ``seed`` (LightGBM derives
its bagging, feature-fraction and data seeds from it) gives bit-identical models for the same data,
parameters and ``n_jobs``.

Reusing a ``lgb.Dataset`` (the same trio as the XGBoost adapter's DMatrix: ``matrix``,
``fit_matrix``, ``predict_matrix``): binning the features is a large share of a small fit, so a
caller that fits many models on the same rows (an Optuna study, several seeds, a CV fold's
trials) builds the Datasets once with :meth:`LightGBMModel.matrix` and passes them to
:meth:`LightGBMModel.fit_matrix`. The Dataset is built with ``feature_pre_filter=False``: with
LightGBM's default (``True``) the binning would drop features that cannot be split under the
*first* model's ``min_child_samples``, and a later model with a smaller value would fail on the
reused Dataset. Dataset-level settings (``max_bin``) are therefore fixed at construction and are
not hyper-parameters of the model. A validation Dataset is binned with its training Dataset's bins
(``reference``) and belongs to that training Dataset: do not pair it with another. Raw values are
kept (``free_raw_data=False``) so that :meth:`LightGBMModel.predict_matrix` can score a Dataset.
Pre-built Datasets bypass the ``scaling`` hyper-parameter, so ``fit_matrix`` refuses a model with
scaling; :meth:`LightGBMModel.fit` scales (scaler fitted on the training rows) and builds them.

:meth:`LightGBMModel.fit` reuses Datasets by itself: the last :data:`DATASET_CACHE_SIZE` training
sets it binned (and their validation sets) are kept, keyed by a hash of their values, labels and
column names, so the trials of a study, which fit the same fold's rows again and again through
``training.fit_model``, bin each fold once (binning was 5.9 of the quick lightgbm_study's 10.5 s
of fitting). Binning is deterministic, so a reused Dataset fits the model a fresh one would.

Incremental update (:meth:`LightGBMModel.fit_incremental`): training continues (``init_model``)
from the rounds that predictions use (those after ``best_iteration_`` were rejected by early
stopping and are dropped first); the new rows are binned on their own, which only affects the
new trees' split candidates, since the kept trees split on raw thresholds.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from pathlib import Path
from typing import Self

import lightgbm as lgb
import numpy as np
import pandas as pd

from plml_assets.lib.models.base import Dataset, Model, monotone_vector
from plml_assets.lib.models.base import monotone_constraints as normalize_monotone

MAX_BIN = 255
#: training Datasets :meth:`LightGBMModel.fit` keeps for reuse (a study's folds), with their validation sets
DATASET_CACHE_SIZE = 3
_DATASETS: OrderedDict[str, tuple[lgb.Dataset, dict[str, lgb.Dataset]]] = OrderedDict()


def _content_key(X: pd.DataFrame, y: pd.Series | np.ndarray | None) -> str:
    digest = hashlib.blake2b(digest_size=16)
    digest.update("\x1f".join(str(c) for c in X.columns).encode())
    digest.update(np.ascontiguousarray(X.to_numpy(dtype="float32")).tobytes())
    if y is not None:
        digest.update(np.ascontiguousarray(np.asarray(y, dtype="float64")).tobytes())
    return digest.hexdigest()


def clear_dataset_cache() -> None:
    """Drop the Datasets :meth:`LightGBMModel.fit` kept for reuse."""
    _DATASETS.clear()
# Importance names shared with the XGBoost adapter map onto LightGBM's two kinds.
_IMPORTANCE_KINDS = {"gain": "gain", "total_gain": "gain", "split": "split", "weight": "split"}
_DEVICES = ("cpu", "gpu", "cuda")


def _whole(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _dataset_params() -> dict[str, object]:
    return {"max_bin": MAX_BIN, "feature_pre_filter": False, "verbose": -1}


class LightGBMModel(Model):
    family = "lightgbm"

    _PARAM_NAMES = (
        "n_estimators", "learning_rate", "num_leaves", "max_depth", "min_child_samples", "subsample",
        "subsample_freq", "colsample_bytree", "reg_lambda", "early_stopping_rounds", "n_jobs", "seed", "device",
        "scaling", "monotone_constraints",
    )

    def __init__(
        self,
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        num_leaves: int = 31,
        max_depth: int = -1,
        min_child_samples: int = 50,
        subsample: float = 0.8,
        subsample_freq: int = 1,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 5.0,
        early_stopping_rounds: int = 40,
        n_jobs: int = 1,
        seed: int = 0,
        device: str = "cpu",
        scaling: str = "none",
        monotone_constraints: dict[str, int] | str | None = None,
    ) -> None:
        self.monotone_constraints = normalize_monotone(monotone_constraints)
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.num_leaves = num_leaves
        self.max_depth = max_depth
        self.min_child_samples = min_child_samples
        self.subsample = subsample
        self.subsample_freq = subsample_freq
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.n_jobs = n_jobs
        self.seed = seed
        self.device = device
        self.scaling = scaling
        self._validate()

    def _validate(self) -> None:
        checks = {
            "n_estimators": lambda v: _whole(v) and v >= 1,
            "learning_rate": lambda v: 0 < v <= 1,
            "num_leaves": lambda v: _whole(v) and 2 <= v <= 131072,
            # -1: no limit (LightGBM grows leaf-wise and num_leaves bounds the tree).
            "max_depth": lambda v: _whole(v) and (v == -1 or 1 <= v <= 64),
            "min_child_samples": lambda v: _whole(v) and v >= 1,
            "subsample": lambda v: 0 < v <= 1,
            "subsample_freq": lambda v: _whole(v) and v >= 0,
            "colsample_bytree": lambda v: 0 < v <= 1,
            "reg_lambda": lambda v: v >= 0,
            "early_stopping_rounds": lambda v: _whole(v) and v >= 0,
            "n_jobs": lambda v: _whole(v) and v >= 1,
            "seed": lambda v: _whole(v) and v >= 0,
            "device": lambda v: v in _DEVICES,
            "scaling": self._valid_scaling,
        }
        bad = []
        for name, check in checks.items():
            try:
                ok = bool(check(getattr(self, name)))
            except (TypeError, ValueError):  # a value of the wrong type is invalid too
                ok = False
            if not ok:
                bad.append(name)
        if bad:
            raise ValueError(
                "invalid LightGBM hyper-parameter(s): " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
                + f" (device is one of {_DEVICES}; max_depth is -1 for no limit)"
            )

    def get_params(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self._PARAM_NAMES}

    def _booster_params(self, columns: list[str] | None = None) -> dict[str, object]:
        vector = monotone_vector(self.monotone_constraints, list(columns or []))
        return ({} if vector is None else {"monotone_constraints": vector}) | {
            "objective": "regression",
            "metric": "l2",
            "learning_rate": self.learning_rate,
            "num_leaves": self.num_leaves,
            "max_depth": self.max_depth,
            "min_data_in_leaf": self.min_child_samples,
            "bagging_fraction": self.subsample,
            "bagging_freq": self.subsample_freq if self.subsample < 1 else 0,
            "feature_fraction": self.colsample_bytree,
            "lambda_l2": self.reg_lambda,
            "num_threads": self.n_jobs,
            "seed": self.seed,
            "deterministic": True,
            "force_row_wise": True,
            "device_type": self.device,
            "verbose": -1,
            **_dataset_params(),
        }

    @staticmethod
    def matrix(
        X: pd.DataFrame, y: pd.Series | np.ndarray | None = None, reference: lgb.Dataset | None = None
    ) -> lgb.Dataset:
        """Build a Dataset once (binned lazily, on first use); pass the training Dataset as
        ``reference`` for a validation Dataset so that both share the training bins."""
        label = None if y is None else np.asarray(y, dtype="float64")
        return lgb.Dataset(
            X.to_numpy(dtype="float32"),
            label=label,
            feature_name=[str(c) for c in X.columns],
            reference=reference,
            params=_dataset_params(),
            free_raw_data=False,
        )

    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        X, y = train
        X = self._fit_scaling(X)  # the scaler learns from the training rows only
        key = _content_key(X, y)
        if key in _DATASETS:
            _DATASETS.move_to_end(key)
            dtrain, validations = _DATASETS[key]
        else:
            dtrain, validations = self.matrix(X, y), {}
            _DATASETS[key] = (dtrain, validations)
            while len(_DATASETS) > DATASET_CACHE_SIZE:
                _DATASETS.popitem(last=False)
        dvalid = None
        if valid is not None:
            Xv = self._apply_scaling(valid[0])
            valid_key = _content_key(Xv, valid[1])
            dvalid = validations.get(valid_key)
            if dvalid is None:  # binned with (and belonging to) this training Dataset
                if len(validations) >= DATASET_CACHE_SIZE:
                    validations.pop(next(iter(validations)))
                dvalid = validations[valid_key] = self.matrix(Xv, valid[1], reference=dtrain)
        return self._fit_matrix(dtrain, dvalid)

    def fit_matrix(self, dtrain: lgb.Dataset, dvalid: lgb.Dataset | None = None) -> Self:
        """Fit on pre-built Datasets (no scaling: a model with ``scaling`` set must use :meth:`fit`)."""
        self._no_scaling("fit_matrix")
        return self._fit_matrix(dtrain, dvalid)

    def _fit_matrix(self, dtrain: lgb.Dataset, dvalid: lgb.Dataset | None = None) -> Self:
        start = time.perf_counter()
        history: dict[str, dict[str, list[float]]] = {}
        callbacks = [lgb.record_evaluation(history)]
        valid_sets, valid_names = [dtrain], ["train"]
        if dvalid is not None:
            valid_sets.append(dvalid)
            valid_names.append("valid")
            if self.early_stopping_rounds:
                callbacks.append(lgb.early_stopping(self.early_stopping_rounds, first_metric_only=True, verbose=False))
        booster = lgb.train(
            self._booster_params(list(dtrain.feature_name)),
            dtrain,
            num_boost_round=self.n_estimators,
            valid_sets=valid_sets,
            valid_names=valid_names,
            callbacks=callbacks,
            # Keep every round trained, as the XGBoost adapter does; predictions stop at the best.
            keep_training_booster=True,
        )
        self.booster_ = booster
        self.feature_names_ = list(booster.feature_name())
        # 0-based index of the best round, as in the XGBoost adapter (LightGBM counts from 1, 0 = none).
        self.best_iteration_ = (booster.best_iteration or booster.current_iteration()) - 1
        self.n_rounds_ = booster.current_iteration()
        self.history_ = history
        self.incremental_updates_ = 0
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def default_update_rounds(self) -> int:
        """Boosting rounds an incremental update adds at most when not told: a quarter of the
        original budget, at least 10."""
        return max(self.n_estimators // 4, 10)

    def fit_incremental(self, train: Dataset, valid: Dataset | None = None, *, rounds: int | None = None) -> Self:
        """Add at most ``rounds`` trees (default :meth:`default_update_rounds`) fitted on ``train``
        to the kept trees, early stopping on ``valid`` (never worse on ``valid`` than the model as
        it was); the feature columns and ``scaler_`` stay as fitted. Returns self."""
        start = time.perf_counter()
        budget = self._update_budget(rounds, self.default_update_rounds())
        X, y = train
        dtrain = self.matrix(self._apply_scaling(self._update_frame(X, "train")), y)
        dvalid = None
        if valid is not None:
            Xv = self._apply_scaling(self._update_frame(valid[0], "valid"))
            dvalid = self.matrix(Xv, valid[1], reference=dtrain)
        kept = self.best_iteration_ + 1
        base = lgb.Booster(model_str=self.booster_.model_to_string(num_iteration=kept))
        history: dict[str, dict[str, list[float]]] = {}
        callbacks = [lgb.record_evaluation(history)]
        valid_sets, valid_names = [dtrain], ["train"]
        if dvalid is not None:
            valid_sets.append(dvalid)
            valid_names.append("valid")
            if self.early_stopping_rounds:
                callbacks.append(lgb.early_stopping(self.early_stopping_rounds, first_metric_only=True, verbose=False))
        booster = lgb.train(
            self._booster_params(list(dtrain.feature_name)),
            dtrain,
            num_boost_round=budget,
            init_model=base,
            valid_sets=valid_sets,
            valid_names=valid_names,
            callbacks=callbacks,
            keep_training_booster=True,
        )
        best = booster.current_iteration() - 1
        if dvalid is not None and self.early_stopping_rounds:  # as in fit: 0 keeps every round
            scores = history["valid"]["l2"]
            before = (base.predict(Xv.to_numpy(dtype="float32"), num_threads=self.n_jobs)
                      - np.asarray(valid[1], dtype="float64"))
            new_best = int(np.argmin(scores))
            best = kept + new_best if scores[new_best] < float(np.mean(before**2)) else kept - 1
        self.booster_ = booster
        self.best_iteration_ = best
        self.n_rounds_ = booster.current_iteration()
        self.history_ = history
        self._count_update()
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        self._check_columns(X)
        return self.predict_matrix(self._apply_scaling(X[self.feature_names_]).to_numpy(dtype="float32"))

    def predict_matrix(self, data: lgb.Dataset | np.ndarray) -> np.ndarray:
        """Scores for a Dataset from :meth:`matrix` or a float matrix whose columns are
        ``feature_names_`` in order, of already scaled features (raw ones when ``scaling="none"``)."""
        self._check_fitted()
        values = data.get_data() if isinstance(data, lgb.Dataset) else data
        return np.asarray(
            self.booster_.predict(values, num_iteration=self.best_iteration_ + 1, num_threads=self.n_jobs),
            dtype="float64",
        )

    def contributions(self, X: pd.DataFrame, *, threads: int | None = None) -> pd.DataFrame:
        """Exact TreeSHAP values over the rounds predictions use: LightGBM's own ``pred_contrib``, or
        the same values from lib/explain/treeshap on large inputs; the last column is the expected value."""
        from plml_assets.lib.explain.treeshap import tree_contributions

        self._check_fitted()
        self._check_columns(X)
        values = self._apply_scaling(X[self.feature_names_]).to_numpy(dtype="float32")
        rounds = self.best_iteration_ + 1

        def native(rows: np.ndarray) -> np.ndarray:
            return self.booster_.predict(rows, num_iteration=rounds, pred_contrib=True,
                                         num_threads=int(threads) if threads is not None else self.n_jobs)

        # Large explanations go through Fast TreeSHAP v2, the same values ~6x faster (lib/explain/treeshap.py).
        out = tree_contributions("lightgbm", self.booster_, rounds, list(self.feature_names_), values, native,
                                 threads=threads if threads is not None else self.n_jobs)
        return pd.DataFrame(np.asarray(out, dtype="float64"), index=X.index, columns=[*self.feature_names_, "base_value"])

    def feature_importance(self, kind: str = "gain") -> dict[str, float]:
        """Importance per feature: ``gain`` (alias ``total_gain``) or ``split`` (alias ``weight``),
        counted over the rounds that predictions use."""
        self._check_fitted()
        if kind not in _IMPORTANCE_KINDS:
            raise ValueError(f"importance kind must be one of {sorted(_IMPORTANCE_KINDS)}; got {kind!r}")
        scores = self.booster_.feature_importance(
            importance_type=_IMPORTANCE_KINDS[kind], iteration=self.best_iteration_ + 1
        )
        return {f: float(s) for f, s in zip(self.feature_names_, scores, strict=True)}

    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        model_file = folder / "model.txt"
        self.booster_.save_model(model_file, num_iteration=-1)  # all rounds; predict stops at the best
        meta = {
            "family": self.family,
            "params": self.get_params(),
            "feature_names": self.feature_names_,
            "best_iteration": self.best_iteration_,
            "incremental_updates": int(getattr(self, "incremental_updates_", 0)),
        }
        if hasattr(self, "target_clip_"):
            meta["target_clip"] = [float(v) for v in self.target_clip_]
        (folder / "model_meta.json").write_text(json.dumps(meta, indent=2))
        self._save_scaling(folder)
        return model_file

    @classmethod
    def load(cls, path: str | Path) -> Self:
        folder = Path(path)
        meta = json.loads((folder / "model_meta.json").read_text())
        params = dict(meta["params"])
        params["device"] = "cpu"  # a model trained on a GPU must still load on a CPU-only prediction host
        model = cls(**params)
        booster = lgb.Booster(model_file=str(folder / "model.txt"))
        model.booster_ = booster
        model.feature_names_ = list(meta["feature_names"])
        model.best_iteration_ = int(meta["best_iteration"])
        model.n_rounds_ = booster.current_iteration()
        model.incremental_updates_ = int(meta.get("incremental_updates", 0))
        if "target_clip" in meta:
            model.target_clip_ = tuple(float(v) for v in meta["target_clip"])
        model._restore_scaling(folder, meta["params"])
        return model
