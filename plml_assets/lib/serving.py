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
from plml_assets.lib.models.registry import load_model, model_class

MODEL_ARTIFACT = "model_dir"


def as_panel(frame: pd.DataFrame) -> pd.DataFrame:
    """Accept the panel either indexed by (date, symbol) or with date/symbol columns, and refuse
    what the training data checks would have refused (schema, duplicates, bad prices)."""
    if not isinstance(frame, pd.DataFrame):
        raise ValueError(f"the model input must be a pandas DataFrame (a long price panel), got {type(frame).__name__}")
    if isinstance(frame.index, pd.MultiIndex) and set(frame.index.names) >= set(price_lib.INDEX_NAMES):
        panel = frame.reset_index()
    else:
        panel = frame
    cols = {str(c).lower(): c for c in panel.columns}
    if "date" not in cols or "symbol" not in cols:
        raise ValueError(
            "the model input must be a long price panel with 'date' and 'symbol' (columns or index levels); "
            f"got columns {list(frame.columns)} and index {list(frame.index.names)}"
        )
    panel = panel.rename(columns={v: k for k, v in cols.items()})
    try:
        panel["date"] = pd.to_datetime(panel["date"])
    except (ValueError, TypeError) as exc:
        raise ValueError(f"the model input's 'date' column is not parseable as dates: {exc}") from exc
    panel["symbol"] = panel["symbol"].astype(str)
    keep = [c for c in (*price_lib.PRICE_COLUMNS, "volume") if c in panel.columns]
    panel = price_lib.normalize_panel(panel.set_index(price_lib.INDEX_NAMES)[keep])
    thresholds = price_lib.QualityThresholds()
    for outcome in (price_lib.check_schema(panel), price_lib.check_duplicates(panel), price_lib.check_prices(panel, thresholds)):
        if not outcome.passed:
            raise ValueError(f"the model input fails the {outcome.name} check: {outcome.message}")
    return panel


class PanelScorer(mlflow.pyfunc.PythonModel):
    def __init__(
        self,
        selected_features: list[str],
        horizon: int,
        feature_columns: list[str],
        training_symbols: list[str] | None = None,
        family: str = "xgboost",
    ) -> None:
        model_class(family)  # unknown family: fail when logging, not when serving
        self.family = family
        self.selected_features = list(selected_features)
        self.horizon = int(horizon)
        self.feature_columns = list(feature_columns)  # price columns present in training
        self.training_symbols = sorted(training_symbols or [])
        self.feature_set_version = FEATURE_SET_VERSION

    def load_context(self, context) -> None:
        self.model_ = load_model(getattr(self, "family", "xgboost"), Path(context.artifacts[MODEL_ARTIFACT]))

    def score(self, panel: pd.DataFrame, all_dates: bool = False) -> pd.DataFrame:
        panel = as_panel(panel)
        absent = [c for c in self.feature_columns if c not in panel.columns]
        if absent:
            raise ValueError(
                f"the model was trained on price columns {self.feature_columns}; the input lacks {absent}"
            )
        features, _ = build_features(panel[self.feature_columns])
        X = features[self.selected_features]
        # rows of history each row was scored with (its own row included)
        history = panel.groupby(level="symbol").cumcount().add(1)
        if all_dates:
            scores = self.model_.predict(X)
        else:
            dates = X.index.get_level_values("date")
            latest = dates.max()
            on_latest = dates == latest
            if on_latest.sum() < 3:
                raise ValueError(
                    f"only {int(on_latest.sum())} symbol(s) have a price on the latest date {latest.date()}: "
                    "cross-sectional features need at least 3; pass the whole universe up to one common date"
                )
            # A model that reads feature history (sequence nets) gets its look-back dates too.
            recent = dates.unique().sort_values()[-(self.model_.lookback_dates + 1):]
            scored = X[dates.isin(recent)]
            scores = self.model_.predict(scored)[scored.index.get_level_values("date") == latest]
            X = X[on_latest]
        out = X.index.to_frame(index=False)
        out["score"] = np.asarray(scores, dtype="float64")
        # Features with look-backs longer than a symbol's history are NaN: say so per row instead
        # of silently serving a weaker score.
        out["full_history"] = history.reindex(X.index).ge(FEATURE_LOOKBACK_DAYS).to_numpy()
        if self.training_symbols:
            out["in_training_universe"] = out["symbol"].isin(self.training_symbols).to_numpy()
        return out

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        all_dates = bool((params or {}).get("all_dates", False))
        return self.score(model_input, all_dates=all_dates)
