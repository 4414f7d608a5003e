"""The one small interface every model family implements (after Qlib's ``qlib/model/base.py``).

``__init__`` stores hyper-parameters only; fitted state ends in ``_`` (scikit-learn's convention).
A ``Dataset`` is ``(X, y)``: features on the panel index and the label aligned to it.

Scaling. Every family takes a ``scaling`` hyper-parameter (one of ``lib.features.scaling.SCALINGS``) and
uses the helpers below, so the transform is the same code in every adapter: ``fit`` calls
:meth:`Model._fit_scaling` on its training rows (never on ``valid``), which fits ``scaler_`` and
returns the scaled rows; ``valid`` and ``predict`` inputs go through :meth:`Model._apply_scaling`;
``save`` writes the scaler's state with :meth:`Model._save_scaling` (``SCALER_FILE`` in the model's
folder) and ``load`` reads it with :meth:`Model._restore_scaling`. A model saved before scaling
existed has no such file and loads as ``scaling="none"``.

Incremental updates. :meth:`Model.fit_incremental` continues training a fitted model on new rows
(boosting more trees, or fine-tuning a network) instead of refitting it from scratch. Everything
fitted at the original ``fit`` that is not the learner itself stays as it was: the feature
columns, ``scaler_``, a network's feature and target standardization. The new rows must carry
exactly the fitted feature columns (:meth:`Model._update_frame`). Early stopping on ``valid``
starts from the model as it was: when no new round or epoch beats it on ``valid``, the update
keeps the old predictions (the new trees are stored but not used; a network keeps its weights).
Each update adds one to ``incremental_updates_`` (0 after ``fit``), which ``save``/``load`` carry.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar, Self

import numpy as np
import pandas as pd

from plml_assets.lib.features.scaling import SCALINGS, FeatureScaler

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

    def fit_incremental(self, train: Dataset, valid: Dataset | None = None, *, rounds: int | None = None) -> Self:
        """Continue training this fitted model on ``train`` (new rows) for at most ``rounds`` more
        boosting rounds or epochs (the family's default when None), early stopping on ``valid``;
        the scaling and standardization fitted by :meth:`fit` are kept, not refitted. Returns self."""
        raise NotImplementedError(
            f"{type(self).__name__} ({getattr(self, 'family', '?')}) has no incremental update: refit it with fit()"
        )

    def contributions(self, X: pd.DataFrame, *, threads: int | None = None) -> pd.DataFrame:
        """Per-feature contributions (SHAP values) of :meth:`predict` on the rows of ``X``: one column
        per fitted feature and ``base_value``, in the prediction's units, so that ``base_value`` plus
        the row's contributions is its prediction. ``threads``: threads for this call (None: the
        model's own setting)."""
        raise NotImplementedError(f"{type(self).__name__} ({getattr(self, 'family', '?')}) has no contributions")

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

    def _update_frame(self, X: pd.DataFrame, role: str) -> pd.DataFrame:
        """``X`` with the fitted feature columns in fitting order, for :meth:`fit_incremental`:
        the new rows must hold exactly those columns (a missing or extra column is a ValueError
        naming it; an update cannot change what the model reads)."""
        self._check_fitted()
        names = [str(c) for c in X.columns]
        missing = [c for c in self.feature_names_ if c not in names]
        extra = [c for c in names if c not in self.feature_names_]
        if missing or extra:
            raise ValueError(
                f"{type(self).__name__}.fit_incremental: {role} X must hold the fitted feature columns exactly; "
                f"missing {missing[:10]}, extra {extra[:10]}"
            )
        return X.set_axis(names, axis=1)[self.feature_names_]

    @staticmethod
    def _update_budget(rounds: int | None, default: int) -> int:
        """The rounds/epochs of one incremental update: ``rounds``, or ``default`` when None."""
        if rounds is None:
            return int(default)
        if not (isinstance(rounds, (int, np.integer)) and not isinstance(rounds, bool) and rounds >= 1):
            raise ValueError(f"rounds must be a whole number >= 1 or None; got {rounds!r}")
        return int(rounds)

    def _count_update(self) -> None:
        self.incremental_updates_ = int(getattr(self, "incremental_updates_", 0)) + 1

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


def monotone_constraints(value: object) -> dict[str, int] | None:
    """A booster's declared monotone constraints, normalized: ``{feature: +1 | -1}`` (the score may
    only rise, or only fall, with that feature, the others held), from a mapping or its JSON text
    (a study's categorical choice carries it as text); None, ``{}`` or ``""``: unconstrained. A bad
    declaration raises naming the feature."""
    import json

    if value is None or value == "" or value == {}:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"monotone_constraints must be a JSON object such as {{\"mom_20\": 1}}, got {value!r} ({exc})") from None
    if not isinstance(value, dict):
        raise ValueError(f"monotone_constraints must map feature names to 1 or -1, got {value!r}")
    bad = {k: v for k, v in value.items() if isinstance(v, bool) or v not in (1, -1, 0)}
    if bad:
        raise ValueError(f"monotone_constraints: each feature's direction must be 1 (increasing) or -1 (decreasing), got {bad}")
    kept = {str(k): int(v) for k, v in sorted(value.items()) if v != 0}
    return kept or None


def monotone_vector(constraints: dict[str, int] | None, columns: list[str]) -> list[int] | None:
    """The constraints in the order of ``columns`` (0 for a free feature); None when no declared
    feature is among them (a fold's selection may have dropped every constrained feature)."""
    if not constraints:
        return None
    vector = [constraints.get(str(c), 0) for c in columns]
    return vector if any(vector) else None

