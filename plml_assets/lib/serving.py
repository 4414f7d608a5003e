"""The registered model: an MLflow pyfunc that carries its own feature pipeline.

Given a raw price panel (the columns of ``market_prices``: date, symbol, close and optionally
open/high/low/volume, with enough history), it rebuilds the features with the same code that
trained it, keeps the selected columns and returns one score per symbol for the latest date
(``params={"all_dates": True}`` scores every row, which the promotion gate uses on the holdout).
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd

from plml_assets.lib import prices as price_lib
from plml_assets.lib.features import FEATURE_LOOKBACK_DAYS, FEATURE_SET_VERSION, build_features
from plml_assets.lib.models.xgboost_model import XGBoostModel

MODEL_ARTIFACT = "xgboost_model"


def as_panel(frame: pd.DataFrame) -> pd.DataFrame:
    """Accept the panel either indexed by (date, symbol) or with date/symbol columns."""
    if isinstance(frame.index, pd.MultiIndex) and list(frame.index.names) == price_lib.INDEX_NAMES:
        panel = frame.copy()
    else:
        cols = {str(c).lower(): c for c in frame.columns}
        if "date" not in cols or "symbol" not in cols:
            raise ValueError(
                "the model input must be a long price panel with 'date' and 'symbol' columns "
                f"(or a (date, symbol) index); got columns {list(frame.columns)}"
            )
        panel = frame.rename(columns={v: k for k, v in cols.items()})
        panel["date"] = pd.to_datetime(panel["date"])
        panel["symbol"] = panel["symbol"].astype(str)
        panel = panel.set_index(price_lib.INDEX_NAMES)
    if "close" not in panel.columns:
        raise ValueError(f"the model input lacks the required column 'close'; it has {list(panel.columns)}")
    keep = [c for c in (*price_lib.PRICE_COLUMNS, "volume") if c in panel.columns]
    return price_lib.normalize_panel(panel[keep])


class PanelScorer(mlflow.pyfunc.PythonModel):
    def __init__(self, selected_features: list[str], horizon: int, feature_columns: list[str]) -> None:
        self.selected_features = list(selected_features)
        self.horizon = int(horizon)
        self.feature_columns = list(feature_columns)  # price columns present in training
        self.feature_set_version = FEATURE_SET_VERSION

    def load_context(self, context) -> None:
        self.model_ = XGBoostModel.load(Path(context.artifacts[MODEL_ARTIFACT]))

    def score(self, panel: pd.DataFrame, all_dates: bool = False) -> pd.DataFrame:
        panel = as_panel(panel)
        absent = [c for c in self.feature_columns if c not in panel.columns]
        if absent:
            raise ValueError(
                f"the model was trained on price columns {self.feature_columns}; the input lacks {absent}"
            )
        features, _ = build_features(panel[self.feature_columns])
        X = features[self.selected_features]
        if not all_dates:
            latest = panel.index.get_level_values("date").max()
            X = X[X.index.get_level_values("date") == latest]
            n_hist = panel.index.get_level_values("date").nunique()
            if n_hist < FEATURE_LOOKBACK_DAYS:
                # Scores are still produced, but features with longer look-backs are NaN.
                pass
        scores = self.model_.predict(X)
        out = X.index.to_frame(index=False)
        out["score"] = np.asarray(scores, dtype="float64")
        return out

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        all_dates = bool((params or {}).get("all_dates", False))
        return self.score(model_input, all_dates=all_dates)
