"""Model families by name: what a config or an Optuna study names, the class that fits it."""

from __future__ import annotations

from pathlib import Path

from plml_assets.lib.models.base import Model
from plml_assets.lib.models.lightgbm_model import LightGBMModel
from plml_assets.lib.models.sequence import GRUModel, LSTMModel
from plml_assets.lib.models.xgboost_model import XGBoostModel

MODEL_FAMILIES: dict[str, type[Model]] = {
    cls.family: cls for cls in (XGBoostModel, LightGBMModel, LSTMModel, GRUModel)
}


def model_class(family: str) -> type[Model]:
    try:
        return MODEL_FAMILIES[family]
    except KeyError:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(MODEL_FAMILIES)}") from None


def make_model(family: str, **params: object) -> Model:
    """An unfitted model of ``family`` with these hyper-parameters (the others at their defaults)."""
    return model_class(family)(**params)


def load_model(family: str, path: str | Path) -> Model:
    """Read a model that ``make_model(family, ...).fit(...).save(path)`` wrote."""
    return model_class(family).load(path)
