"""XGBoost behind the model interface: hist trees, early stopping on the validation slice.

Incremental update (:meth:`XGBoostModel.fit_incremental`): boosting continues from the trees that
predictions use (the rounds after ``best_iteration_`` were rejected by early stopping and are
dropped first), fitting the new trees to the residuals of the kept ones on the new rows. The
continued booster is rebuilt from its serialized bytes: XGBoost reseeds its row/column sampling
only when a booster is configured afresh, so continuing an already-configured (e.g. sliced)
booster with ``subsample < 1`` is not reproducible.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Self

import numpy as np
import pandas as pd
import xgboost as xgb

from plml_assets.lib.models.base import Dataset, Model, monotone_vector
from plml_assets.lib.models.base import monotone_constraints as normalize_monotone


class XGBoostModel(Model):
    family = "xgboost"

    def __init__(
        self,
        n_estimators: int = 400,
        learning_rate: float = 0.05,
        max_depth: int = 5,
        min_child_weight: float = 50.0,
        subsample: float = 0.8,
        colsample_bytree: float = 0.8,
        reg_lambda: float = 5.0,
        early_stopping_rounds: int = 40,
        nthread: int = 1,
        seed: int = 0,
        device: str = "cpu",
        scaling: str = "none",
        monotone_constraints: dict[str, int] | str | None = None,
    ) -> None:
        self.monotone_constraints = normalize_monotone(monotone_constraints)
        self.n_estimators = n_estimators
        self.learning_rate = learning_rate
        self.max_depth = max_depth
        self.min_child_weight = min_child_weight
        self.subsample = subsample
        self.colsample_bytree = colsample_bytree
        self.reg_lambda = reg_lambda
        self.early_stopping_rounds = early_stopping_rounds
        self.nthread = nthread
        self.seed = seed
        self.device = device
        self.scaling = scaling
        self._validate()

    def _validate(self) -> None:
        checks = {
            "n_estimators": self.n_estimators >= 1,
            "learning_rate": 0 < self.learning_rate <= 1,
            "max_depth": 1 <= self.max_depth <= 16,
            "min_child_weight": self.min_child_weight >= 0,
            "subsample": 0 < self.subsample <= 1,
            "colsample_bytree": 0 < self.colsample_bytree <= 1,
            "reg_lambda": self.reg_lambda >= 0,
            "early_stopping_rounds": self.early_stopping_rounds >= 0,
            "nthread": isinstance(self.nthread, int) and self.nthread >= 1,
            "device": self.device == "cpu" or str(self.device).startswith("cuda"),
            "scaling": self._valid_scaling(self.scaling),
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(
                "invalid XGBoost hyper-parameter(s): " + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
            )

    def get_params(self) -> dict[str, object]:
        return {
            k: getattr(self, k)
            for k in (
                "n_estimators", "learning_rate", "max_depth", "min_child_weight", "subsample",
                "colsample_bytree", "reg_lambda", "early_stopping_rounds", "nthread", "seed", "device", "scaling",
                "monotone_constraints",
            )
        }

    def _booster_params(self, columns: list[str] | None = None) -> dict[str, object]:
        vector = monotone_vector(self.monotone_constraints, list(columns or []))
        monotone = {} if vector is None else {"monotone_constraints": "(" + ",".join(map(str, vector)) + ")"}
        return monotone | {
            "objective": "reg:squarederror",
            "tree_method": "hist",
            "eta": self.learning_rate,
            "max_depth": self.max_depth,
            "min_child_weight": self.min_child_weight,
            "subsample": self.subsample,
            "colsample_bytree": self.colsample_bytree,
            "lambda": self.reg_lambda,
            "nthread": self.nthread,
            "seed": self.seed,
            "device": self.device,
            "eval_metric": "rmse",
        }

    @staticmethod
    def matrix(X: pd.DataFrame, y: pd.Series | np.ndarray | None = None) -> xgb.DMatrix:
        """Build a DMatrix once; callers may ``slice`` it per fold instead of rebuilding."""
        label = None if y is None else np.asarray(y, dtype="float32")
        return xgb.DMatrix(X.to_numpy(dtype="float32"), label=label, feature_names=list(X.columns), nthread=1)

    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        X, y = train
        dtrain = self.matrix(self._fit_scaling(X), y)  # the scaler learns from the training rows only
        dvalid = self.matrix(self._apply_scaling(valid[0]), valid[1]) if valid is not None else None
        return self._fit_matrix(dtrain, dvalid)

    def fit_matrix(self, dtrain: xgb.DMatrix, dvalid: xgb.DMatrix | None = None) -> Self:
        """Fit on pre-built DMatrices (no scaling: a model with ``scaling`` set must use :meth:`fit`)."""
        self._no_scaling("fit_matrix")
        return self._fit_matrix(dtrain, dvalid)

    def _fit_matrix(self, dtrain: xgb.DMatrix, dvalid: xgb.DMatrix | None = None) -> Self:
        start = time.perf_counter()
        evals = [(dtrain, "train")] + ([(dvalid, "valid")] if dvalid is not None else [])
        history: dict[str, dict[str, list[float]]] = {}
        booster = xgb.train(
            self._booster_params(dtrain.feature_names),
            dtrain,
            num_boost_round=self.n_estimators,
            evals=evals,
            evals_result=history,
            early_stopping_rounds=self.early_stopping_rounds if (dvalid is not None and self.early_stopping_rounds) else None,
            verbose_eval=False,
        )
        self.booster_ = booster
        self.feature_names_ = list(dtrain.feature_names or [])
        self.best_iteration_ = int(getattr(booster, "best_iteration", booster.num_boosted_rounds() - 1))
        self.n_rounds_ = booster.num_boosted_rounds()
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
            dvalid = self.matrix(self._apply_scaling(self._update_frame(valid[0], "valid")), valid[1])
        kept = self.best_iteration_ + 1
        base = xgb.Booster(model_file=bytearray(self.booster_[:kept].save_raw("ubj")))
        evals = [(dtrain, "train")] + ([(dvalid, "valid")] if dvalid is not None else [])
        history: dict[str, dict[str, list[float]]] = {}
        booster = xgb.train(
            self._booster_params(dtrain.feature_names),
            dtrain,
            num_boost_round=budget,
            evals=evals,
            evals_result=history,
            early_stopping_rounds=self.early_stopping_rounds if (dvalid is not None and self.early_stopping_rounds) else None,
            verbose_eval=False,
            xgb_model=base,
        )
        best = booster.num_boosted_rounds() - 1
        if dvalid is not None and self.early_stopping_rounds:  # as in fit: 0 keeps every round
            scores = history["valid"]["rmse"]
            before = base.predict(dvalid).astype("float64") - dvalid.get_label().astype("float64")
            start_rmse = math.sqrt(float(np.mean(before**2)))
            new_best = int(np.argmin(scores))
            best = kept + new_best if scores[new_best] < start_rmse else kept - 1
        # The booster's own early-stopping record counts new rounds only against each other.
        booster.set_attr(best_iteration=str(best), best_score=None)
        self.booster_ = booster
        self.best_iteration_ = best
        self.n_rounds_ = booster.num_boosted_rounds()
        self.history_ = history
        self._count_update()
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        self._check_columns(X)
        return self.predict_matrix(self.matrix(self._apply_scaling(X[self.feature_names_])))

    def predict_matrix(self, dmat: xgb.DMatrix) -> np.ndarray:
        """Scores of a DMatrix of already scaled features (raw ones when ``scaling="none"``)."""
        self._check_fitted()
        return self.booster_.predict(dmat, iteration_range=(0, self.best_iteration_ + 1)).astype("float64")

    def contributions(self, X: pd.DataFrame, *, threads: int | None = None) -> pd.DataFrame:
        """Exact TreeSHAP values over the rounds predictions use: XGBoost's own ``pred_contribs`` (on
        the GPU where the booster is), or the same values from lib/explain/treeshap on large inputs;
        the last column is the bias."""
        from plml_assets.lib.explain.treeshap import tree_contributions

        self._check_fitted()
        self._check_columns(X)
        values = self._apply_scaling(X[self.feature_names_]).to_numpy(dtype="float32")
        rounds = self.best_iteration_ + 1

        def native(rows: np.ndarray) -> np.ndarray:
            dmat = xgb.DMatrix(rows, feature_names=list(self.feature_names_), nthread=1)
            if threads is not None:
                self.booster_.set_param({"nthread": int(threads)})
            try:
                return self.booster_.predict(dmat, pred_contribs=True, iteration_range=(0, rounds))
            finally:
                if threads is not None:
                    self.booster_.set_param({"nthread": self.nthread})

        # Large explanations (the full profile's holdout) go through Fast TreeSHAP v2, the same values
        # ~7x faster on the CPU (lib/explain/treeshap.py); on a GPU booster XGBoost's own GPUTreeShap.
        on_gpu = str(self.device).startswith("cuda")
        out = native(values) if on_gpu else tree_contributions("xgboost", self.booster_, rounds, list(self.feature_names_), values,
                                                              native, threads=threads if threads is not None else self.nthread)
        return pd.DataFrame(np.asarray(out, dtype="float64"), index=X.index, columns=[*self.feature_names_, "base_value"])

    def feature_importance(self, kind: str = "total_gain") -> dict[str, float]:
        self._check_fitted()
        scores = self.booster_.get_score(importance_type=kind)
        return {f: float(scores.get(f, 0.0)) for f in self.feature_names_}

    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(folder / "model.ubj")
        meta = {"params": self.get_params(), "feature_names": self.feature_names_, "best_iteration": self.best_iteration_,
                "incremental_updates": int(getattr(self, "incremental_updates_", 0))}
        if hasattr(self, "target_clip_"):
            meta["target_clip"] = [float(v) for v in self.target_clip_]
        (folder / "model_meta.json").write_text(json.dumps(meta, indent=2))
        self._save_scaling(folder)
        return folder / "model.ubj"

    @classmethod
    def load(cls, path: str | Path) -> Self:
        folder = Path(path)
        meta = json.loads((folder / "model_meta.json").read_text())
        params = dict(meta["params"])
        params["device"] = "cpu"  # a model trained on a GPU must still load on a CPU-only prediction host
        model = cls(**params)
        booster = xgb.Booster()
        booster.load_model(folder / "model.ubj")
        booster.set_param({"device": "cpu", "nthread": model.nthread})
        model.booster_ = booster
        model.feature_names_ = list(meta["feature_names"])
        model.best_iteration_ = int(meta["best_iteration"])
        model.n_rounds_ = booster.num_boosted_rounds()
        model.incremental_updates_ = int(meta.get("incremental_updates", 0))
        if "target_clip" in meta:
            model.target_clip_ = tuple(float(v) for v in meta["target_clip"])
        model._restore_scaling(folder, meta["params"])
        return model
