"""The one small interface every model family implements (after Qlib's ``qlib/model/base.py``).

``__init__`` stores hyper-parameters only; fitted state ends in ``_`` (scikit-learn's convention).
A ``Dataset`` is ``(X, y)``: features on the panel index and the label aligned to it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import pandas as pd

Dataset = tuple[pd.DataFrame, pd.Series]


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

    @property
    def is_fitted(self) -> bool:
        return any(k.endswith("_") and not k.startswith("_") for k in vars(self))
