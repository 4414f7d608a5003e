"""The one small interface every model family implements (after Qlib's ``qlib/model/base.py``).

``__init__`` stores hyper-parameters only; fitted state ends in ``_`` (scikit-learn's convention).
A ``Dataset`` is ``(X, y)``: features on the panel index and the label aligned to it.

Scaling. Every family takes a ``scaling`` hyper-parameter (one of ``lib.scaling.SCALINGS``) and
uses the helpers below, so the transform is the same code in every adapter: ``fit`` calls
:meth:`Model._fit_scaling` on its training rows (never on ``valid``), which fits ``scaler_`` and
returns the scaled rows; ``valid`` and ``predict`` inputs go through :meth:`Model._apply_scaling`;
``save`` writes the scaler's state with :meth:`Model._save_scaling` (``SCALER_FILE`` in the model's
folder) and ``load`` reads it with :meth:`Model._restore_scaling`. A model saved before scaling
existed has no such file and loads as ``scaling="none"``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import pandas as pd

from plml_assets.lib.scaling import SCALINGS, FeatureScaler

Dataset = tuple[pd.DataFrame, pd.Series]

#: The scaler's state, beside the model file in the folder ``save`` writes.
SCALER_FILE = "scaler.json"


class Model(ABC):
    family: ClassVar[str]

    @abstractmethod
    def fit(self, train: Dataset, valid: Dataset | None = None) -> Self:
        """Fit on ``train``; use ``valid`` for early stopping when given."""

    @abstractmethod
    def predict(self, X: pd.DataFrame) -> np.ndarray:
        """One score per row of ``X``."""

    @abstractmethod
    def save(self, path: str | Path) -> Path:
        """Write the fitted model under the folder ``path``; return the file written."""

    @classmethod
    @abstractmethod
    def load(cls, path: str | Path) -> Self:
        """Read a model written by :meth:`save`."""

    @abstractmethod
    def get_params(self) -> dict[str, object]:
        """Hyper-parameters as given to ``__init__``."""

    @property
    def lookback_dates(self) -> int:
        """Dates of feature history before a row that :meth:`predict` reads for that row (0: the row
        alone). A caller scoring some rows passes this many earlier dates of features too."""
        return 0

    # Fitted state every adapter checks before predicting or saving.
    _fitted_attribute: ClassVar[str] = "booster_"

    def _check_fitted(self) -> None:
        if not hasattr(self, self._fitted_attribute):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() first")

    def _check_columns(self, X: pd.DataFrame) -> None:
        missing = [c for c in self.feature_names_ if c not in X.columns]
        if missing:
            raise ValueError(f"{type(self).__name__}.predict: input lacks feature column(s) {missing[:10]}")

    # --- scaling, shared by every family (see the module docstring) --------------------------------

    @staticmethod
    def _valid_scaling(value: object) -> bool:
        return isinstance(value, str) and value in SCALINGS

    def _fit_scaling(self, X: pd.DataFrame) -> pd.DataFrame:
        """Fit ``scaler_`` on the training rows ``X`` and return them scaled (``X`` itself for
        ``scaling="none"``)."""
        self.scaler_ = FeatureScaler(getattr(self, "scaling", "none")).fit(X)
        return self._apply_scaling(X)

    def _apply_scaling(self, X: pd.DataFrame) -> pd.DataFrame:
        """``X`` through the fitted scaler: the fitted columns, in training order (``X`` itself,
        untouched, when there is no scaling)."""
        scaler = getattr(self, "scaler_", None)
        if scaler is None or scaler.method == "none":
            return X
        return scaler.transform(X)

    def _no_scaling(self, caller: str) -> None:
        """For entry points that take pre-built matrices (``fit_matrix``): they bypass the scaler,
        so they refuse a model with scaling."""
        if getattr(self, "scaling", "none") != "none":
            raise ValueError(
                f"{type(self).__name__}.{caller} takes pre-built matrices, which bypass scaling="
                f"{self.scaling!r}: use fit(), or scaling='none'"
            )
        self.scaler_ = FeatureScaler("none")

    def _save_scaling(self, folder: Path) -> Path:
        scaler = getattr(self, "scaler_", None) or FeatureScaler("none")
        target = Path(folder) / SCALER_FILE
        target.write_text(json.dumps(scaler.to_dict()))
        return target

    def _restore_scaling(self, folder: str | Path, params: Mapping[str, object]) -> None:
        """Read ``scaler_`` written by :meth:`_save_scaling`; ``params`` are the saved
        hyper-parameters. A model saved before scaling existed (no file, no ``scaling`` parameter)
        loads with ``scaling="none"``."""
        source = Path(folder) / SCALER_FILE
        if source.exists():
            scaler = FeatureScaler.from_dict(json.loads(source.read_text()))
            if scaler.method != self.scaling:
                raise ValueError(f"{source} holds a {scaler.method!r} scaler but the model says scaling={self.scaling!r}")
            if scaler.method != "none" and not scaler.is_fitted:
                raise ValueError(f"{source} holds an unfitted {scaler.method!r} scaler")
            self.scaler_ = scaler
        elif params.get("scaling", "none") == "none":
            self.scaling = "none"
            self.scaler_ = FeatureScaler("none")
        else:
            raise FileNotFoundError(f"the model in {folder} uses scaling={params['scaling']!r} but {source} is missing")

    @property
    def is_fitted(self) -> bool:
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))
