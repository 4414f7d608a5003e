"""Model families by name: what a config or an Optuna study names, the class that fits it."""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from pathlib import Path

from plml_assets.lib.models.base import Model

# Imported on first use: serving an XGBoost model need not import torch (seconds), and a machine
# without one of the libraries can still use the others.
_LOCATIONS = {
    "xgboost": ("plml_assets.lib.models.xgboost_model", "XGBoostModel"),
    "lightgbm": ("plml_assets.lib.models.lightgbm_model", "LightGBMModel"),
    "lstm": ("plml_assets.lib.models.sequence", "LSTMModel"),
    "gru": ("plml_assets.lib.models.sequence", "GRUModel"),
    "elastic_net": ("plml_assets.lib.models.linear_model", "ElasticNetModel"),
}


class _Families(Mapping[str, type[Model]]):
    """family name -> model class, importing each adapter module when first asked for."""

    def __getitem__(self, family: str) -> type[Model]:
        module, name = _LOCATIONS[family]
        return getattr(importlib.import_module(module), name)

    def __iter__(self) -> Iterator[str]:
        return iter(_LOCATIONS)

    def __len__(self) -> int:
        return len(_LOCATIONS)


MODEL_FAMILIES: Mapping[str, type[Model]] = _Families()


def model_class(family: str) -> type[Model]:
    if family not in _LOCATIONS:
        raise ValueError(f"unknown model family {family!r}; known: {sorted(_LOCATIONS)}")
    return MODEL_FAMILIES[family]


def make_model(family: str, **params: object) -> Model:
    """An unfitted model of ``family`` with these hyper-parameters (the others at their defaults)."""
    return model_class(family)(**params)


def load_model(family: str, path: str | Path) -> Model:
    """Read a model that ``make_model(family, ...).fit(...).save(path)`` wrote."""
    return model_class(family).load(path)


#: The settings plml fits each family with when nothing is tuned or overridden: 1 thread (on 2
#: shared cores a second thread was measured up to 10x slower under contention), a boosting budget
#: that early stopping cuts, and for the sequence nets a per-epoch sample of windows so an epoch
#: costs the same on 20 symbols as on 500. ``scaling`` (``lib.features.scaling``, fitted on the training
#: rows, carried in the model): none for the trees, which split on order (a monotone transform
#: changes at most their clipped tails); robust_z for the nets, whose mean/std standardization
#: alone lets a heavy-tailed feature's outliers inflate its deviation and squash the bulk of its
#: values towards 0.
DEFAULT_PARAMS: dict[str, dict[str, object]] = {
    "xgboost": {"n_estimators": 400, "learning_rate": 0.05, "max_depth": 5, "min_child_weight": 50.0,
                "subsample": 0.8, "colsample_bytree": 0.8, "reg_lambda": 5.0, "early_stopping_rounds": 40,
                "nthread": 1, "scaling": "none"},
    "lightgbm": {"n_estimators": 400, "learning_rate": 0.05, "num_leaves": 31, "min_child_samples": 50,
                 "subsample": 0.8, "colsample_bytree": 0.8, "reg_lambda": 5.0, "early_stopping_rounds": 40,
                 "n_jobs": 1, "scaling": "none"},
    "lstm": {"window": 20, "hidden_size": 32, "num_layers": 1, "dropout": 0.1, "lr": 1e-3, "batch_size": 512,
             "max_epochs": 8, "patience": 2, "epoch_samples": 30_000, "num_threads": 1, "scaling": "robust_z"},
    "gru": {"window": 20, "hidden_size": 32, "num_layers": 1, "dropout": 0.1, "lr": 1e-3, "batch_size": 512,
             "max_epochs": 8, "patience": 2, "epoch_samples": 30_000, "num_threads": 1, "scaling": "robust_z"},
    "elastic_net": {"alpha": 1e-3, "l1_ratio": 0.5, "max_iter": 2000, "scaling": "none"},
}

#: The quick profile's budget: upper bounds on the parameters that set the cost of one fit.
QUICK_CAPS: dict[str, dict[str, int]] = {
    "xgboost": {"n_estimators": 150},
    "lightgbm": {"n_estimators": 150},
    "lstm": {"max_epochs": 3, "epoch_samples": 4096},
    "gru": {"max_epochs": 3, "epoch_samples": 4096},
    "elastic_net": {"max_iter": 500},
}
#: What the quick profile changes in the defaults beyond the caps (fewer rounds need a larger step,
#: and a larger step needs less patience: 20 rounds without a better validation score stop a fit).
QUICK_DEFAULTS: dict[str, dict[str, object]] = {
    "xgboost": {"learning_rate": 0.1, "early_stopping_rounds": 20},
    "lightgbm": {"learning_rate": 0.1, "early_stopping_rounds": 20},
    # A net's cost grows with its window and its width (scoring a window of 20 steps with 32 units
    # was most of the quick profile's net time); the quick search space spans window 10-20, 16-32 units.
    "lstm": {"lr": 3e-3, "window": 10, "hidden_size": 16},
    "gru": {"lr": 3e-3, "window": 10, "hidden_size": 16},
    "elastic_net": {},
}


def resolve_params(
    family: str,
    tuned: dict[str, object] | None = None,
    overrides: dict[str, object] | None = None,
    *,
    quick: bool = False,
    seed: int = 0,
    device: str | None = None,
) -> dict[str, object]:
    """The hyper-parameters a family is fitted with: plml's defaults (the quick profile's when
    ``quick``), then the tuned values, then explicit ``overrides``; the quick profile's cost caps
    last, so no tuned value can exceed the budget. Validated by constructing the model (the error
    names the bad value)."""
    model_class(family)
    params: dict[str, object] = {**DEFAULT_PARAMS[family], **(QUICK_DEFAULTS[family] if quick else {})}
    params.update(tuned or {})
    params.update(overrides or {})
    if quick:
        for key, cap in QUICK_CAPS[family].items():
            value = params.get(key)
            params[key] = cap if value is None else min(int(value), cap)
    params["seed"] = seed
    if device is not None:
        params["device"] = device
    make_model(family, **params)
    return params
