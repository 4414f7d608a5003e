"""The interpretable family: a sparse linear model on the same features (elastic net).

What it reads is visible in its coefficients: each feature is standardized within its date
(cross-sectional z-score, the date's own rows only, so nothing crosses dates), a missing value is 0
(the date's mean), and the score is ``intercept + coef @ z``. Its contributions are exact
(``coef_j * z_j``, base value the intercept). The leaderboard puts it beside the boosters and nets on
the same folds, so the black boxes have to earn their keep against it.

Hyper-parameters: ``alpha`` (overall penalty) and ``l1_ratio`` (1: lasso, 0: ridge), scikit-learn's
``ElasticNet``. There is no iteration to early-stop; ``valid`` is accepted and unused.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import pandas as pd

from plml_assets.lib.models.base import Dataset, Model

#: a z-score beyond this many standard deviations is clipped (a single outlier cannot own a date)
Z_CLIP = 5.0


def per_date_z(X: pd.DataFrame) -> np.ndarray:
    """Cross-sectional z-scores of every column within each date (population std; a constant or
    single-row date gives 0), NaN as 0, clipped at ``Z_CLIP``. Float64, the rows in ``X``'s order."""
    if not isinstance(X.index, pd.MultiIndex) or "date" not in X.index.names:
        raise ValueError(f"the elastic net standardizes within each date: X must be indexed by (date, symbol), got {list(X.index.names)}")
    values = X.to_numpy(dtype=np.float64)
    codes, keys = pd.factorize(X.index.get_level_values("date"))
    n_dates = len(keys)
    present = np.isfinite(values)
    z = np.zeros_like(values)
    for j in range(values.shape[1]):  # bincount per column: a C loop each, where np.add.at is ~20x slower
        seen = present[:, j]
        column = np.where(seen, values[:, j], 0.0)
        n = np.bincount(codes, weights=seen.astype(np.float64), minlength=n_dates)
        mean = np.bincount(codes, weights=column, minlength=n_dates) / np.maximum(n, 1.0)
        dev = np.where(seen, column - mean[codes], 0.0)
        std = np.sqrt(np.bincount(codes, weights=dev * dev, minlength=n_dates) / np.maximum(n, 1.0))[codes]
        with np.errstate(invalid="ignore", divide="ignore"):
            z[:, j] = np.where(std > 1e-12, dev / np.where(std > 1e-12, std, 1.0), 0.0)
    return np.clip(z, -Z_CLIP, Z_CLIP)


class ElasticNetModel(Model):
    family: ClassVar[str] = "elastic_net"
    _fitted_attribute: ClassVar[str] = "coef_"

    def __init__(self, alpha: float = 1e-3, l1_ratio: float = 0.5, max_iter: int = 2000, seed: int = 0,
                 scaling: str = "none", device: str = "cpu"):
        self.alpha = float(alpha)
        self.l1_ratio = float(l1_ratio)
        self.max_iter = int(max_iter)
        self.seed = int(seed)
        self.scaling = scaling
        self.device = device
        if not self.alpha > 0:
            raise ValueError(f"alpha={alpha!r}: the penalty must be > 0")
        if not 0.0 <= self.l1_ratio <= 1.0:
            raise ValueError(f"l1_ratio={l1_ratio!r}: must be in [0, 1] (1: lasso, 0: ridge)")
        if self.max_iter < 1:
            raise ValueError(f"max_iter={max_iter!r}: must be >= 1")
        if not self._valid_scaling(scaling):
            raise ValueError(f"scaling={scaling!r}: not a known scaling")
        if not str(device).startswith("cpu"):
            raise ValueError(f"the elastic net runs on the CPU only (scikit-learn), got device={device!r}")

    def get_params(self) -> dict[str, object]:
        return {"alpha": self.alpha, "l1_ratio": self.l1_ratio, "max_iter": self.max_iter, "seed": self.seed,
                "scaling": self.scaling, "device": self.device}

    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        from sklearn.linear_model import ElasticNet

        start = time.perf_counter()
        X, y = train
        X = self._fit_scaling(X.set_axis([str(c) for c in X.columns], axis=1))
        target = np.asarray(y, dtype=np.float64)
        keep = np.isfinite(target)
        model = ElasticNet(alpha=self.alpha, l1_ratio=self.l1_ratio, max_iter=self.max_iter, random_state=self.seed,
                           selection="cyclic", precompute=True)  # the 30x30 Gram matrix: n >> p
        model.fit(per_date_z(X)[keep], target[keep])
        self.feature_names_ = list(X.columns)
        self.coef_ = np.asarray(model.coef_, dtype=np.float64)
        self.intercept_ = float(model.intercept_)
        self.best_iteration_ = max(int(model.n_iter_) - 1, 0)
        self.incremental_updates_ = 0
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def _z(self, X: pd.DataFrame) -> np.ndarray:
        self._check_fitted()
        X = X.set_axis([str(c) for c in X.columns], axis=1)
        self._check_columns(X)
        return per_date_z(self._apply_scaling(X[self.feature_names_]))

    def predict(self, X: pd.DataFrame) -> np.ndarray:
        return self._z(X) @ self.coef_ + self.intercept_

    def contributions(self, X: pd.DataFrame, *, threads: int | None = None) -> pd.DataFrame:
        """Exact: ``coef_j * z_j`` per feature, base value the intercept."""
        frame = pd.DataFrame(self._z(X) * self.coef_, index=X.index, columns=self.feature_names_)
        frame["base_value"] = self.intercept_
        return frame

    def feature_importance(self, kind: str = "abs_coef") -> dict[str, float]:
        self._check_fitted()
        return {f: float(abs(c)) for f, c in zip(self.feature_names_, self.coef_, strict=True)}

    def save(self, path: str | Path) -> Path:
        self._check_fitted()
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        meta = {"family": self.family, "params": self.get_params(), "feature_names": self.feature_names_,
                "coef": [float(c) for c in self.coef_], "intercept": self.intercept_, "best_iteration": self.best_iteration_}
        if hasattr(self, "target_clip_"):
            meta["target_clip"] = [float(v) for v in self.target_clip_]
        target = folder / "model_meta.json"
        target.write_text(json.dumps(meta, indent=2))
        self._save_scaling(folder)
        return target

    @classmethod
    def load(cls, path: str | Path) -> Self:
        folder = Path(path)
        meta = json.loads((folder / "model_meta.json").read_text())
        if meta.get("family") != cls.family:
            raise ValueError(f"{folder} holds a {meta.get('family')!r} model, not {cls.family!r}")
        model = cls(**{**meta["params"], "device": "cpu"})
        model.feature_names_ = list(meta["feature_names"])
        model.coef_ = np.asarray(meta["coef"], dtype=np.float64)
        model.intercept_ = float(meta["intercept"])
        model.best_iteration_ = int(meta.get("best_iteration", 0))
        model.incremental_updates_ = 0
        if "target_clip" in meta:
            model.target_clip_ = tuple(float(v) for v in meta["target_clip"])
        model._restore_scaling(folder, meta["params"])
        return model
