"""The registered model: an MLflow pyfunc that carries its own feature pipeline.

Given a raw price panel (the columns of ``market_prices``: date, symbol, close and optionally
open/high/low/volume, with enough history), it rebuilds the features with the same code that
trained it, keeps the selected columns and returns one score per symbol for the latest date
(``params={"all_dates": True}`` scores every row, which the promotion gate uses on the holdout;
``params={"explain": True}`` adds each score's contributions: ``base_value`` and ``contrib_<feature>``).

It takes the panel as a person has it: read from CSV (integer volumes, string dates), float32 or
float64 prices, extra columns, without the price columns its features do not read. The MLflow
signature (:func:`model_signature`) therefore names the columns without fixing their types, and
:func:`as_panel` converts and checks them, naming what is wrong.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
from mlflow.models import ModelSignature, infer_signature
from mlflow.types.schema import AnyType, ColSpec, Schema

from plml_assets.lib.data import prices as price_lib
from plml_assets.lib.features.base import FEATURE_LOOKBACK_DAYS, FEATURE_SET_VERSION, build_features, feature_inputs
from plml_assets.lib.features.generation import apply_recipes, recipe_lookback
from plml_assets.lib.models.registry import load_model, model_class

MODEL_ARTIFACT = "model_dir"


def _as_numbers(column: pd.Series) -> pd.Series:
    """A text/object column whose every value is a number or missing (JSON input, nullable
    integers after MLflow's enforcement) as numbers; else as it is, for the schema check to name."""
    if pd.api.types.is_numeric_dtype(column) or not (
        pd.api.types.is_object_dtype(column) or pd.api.types.is_string_dtype(column)
    ):
        return column
    numbers = pd.to_numeric(column, errors="coerce")
    return numbers if bool((numbers.isna() == column.isna()).all()) else column


def as_panel(frame: pd.DataFrame, columns: list[str] | None = None) -> pd.DataFrame:
    """Accept the panel either indexed by (date, symbol) or with date/symbol columns, and refuse
    what the training data checks would have refused (schema, duplicates, bad prices).

    ``columns``: the price columns a model reads; the input must have them, and the others (and
    any extra column) are dropped unchecked. None keeps and checks every price column present."""
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
    if columns is None:
        keep = [c for c in (*price_lib.PRICE_COLUMNS, "volume") if c in panel.columns]
    else:
        keep = list(columns)
        absent = [c for c in keep if c not in panel.columns]
        if absent:
            present = [c for c in panel.columns if c not in ("date", "symbol")]
            raise ValueError(
                f"the model reads price column(s) {keep}; the input lacks {absent} (its other columns: {present})"
            )
    panel = panel.set_index(price_lib.INDEX_NAMES)[keep]
    panel = price_lib.normalize_panel(panel.assign(**{c: _as_numbers(panel[c]) for c in keep}))
    thresholds = price_lib.QualityThresholds()
    for outcome in (price_lib.check_schema(panel), price_lib.check_duplicates(panel), price_lib.check_prices(panel, thresholds)):
        if not outcome.passed:
            raise ValueError(f"the model input fails the {outcome.name} check: {outcome.message}")
    return panel


def history_days(recipes: dict[str, dict] | None) -> int:
    """Rows of history per symbol that features (base and generated) need to be complete."""
    return FEATURE_LOOKBACK_DAYS + (recipe_lookback(recipes) if recipes else 0)


def model_features(prices: pd.DataFrame, selected: list[str], recipes: dict[str, dict] | None) -> pd.DataFrame:
    """The ``selected`` columns rebuilt from raw prices: base features by the training code, generated
    ones by their recipes, exactly as the ``features`` asset computed them."""
    base, _ = build_features(prices)
    wanted = {name: recipe for name, recipe in (recipes or {}).items() if name in set(selected)}
    if wanted:
        base = pd.concat([base, apply_recipes(base, wanted)], axis=1)
    missing = [c for c in selected if c not in base.columns]
    if missing:
        raise ValueError(f"the model reads feature(s) {missing[:10]} that neither the base features nor its recipes produce")
    return base[selected]


def _latest_rows(X: pd.DataFrame) -> pd.Timestamp:
    dates = X.index.get_level_values("date")
    latest = dates.max()
    on_latest = int((dates == latest).sum())
    if on_latest < 3:
        raise ValueError(
            f"only {on_latest} symbol(s) have a price on the latest date {latest.date()}: "
            "cross-sectional features need at least 3; pass the whole universe up to one common date"
        )
    return latest


def _predict(model, X: pd.DataFrame, latest: pd.Timestamp | None) -> np.ndarray:
    """Scores of every row of ``X`` (``latest`` None) or of the rows of date ``latest``; a model that
    reads feature history (sequence nets) is given its look-back dates too."""
    if latest is None:
        return np.asarray(model.predict(X), dtype="float64")
    dates = X.index.get_level_values("date")
    recent = dates.unique().sort_values()[-(model.lookback_dates + 1):]
    scored = X[dates.isin(recent)]
    return np.asarray(model.predict(scored), dtype="float64")[scored.index.get_level_values("date") == latest]


class PanelScorer(mlflow.pyfunc.PythonModel):
    """One model of any family behind the raw-price interface."""

    def __init__(
        self,
        selected_features: list[str],
        horizon: int,
        feature_columns: list[str],
        training_symbols: list[str] | None = None,
        family: str = "xgboost",
        recipes: dict[str, dict] | None = None,
    ) -> None:
        model_class(family)  # unknown family: fail when logging, not when serving
        self.family = family
        # Only the generated features this model reads; their inputs are base features.
        self.recipes = {name: recipe for name, recipe in (recipes or {}).items() if name in set(selected_features)}
        self.selected_features = list(selected_features)
        self.horizon = int(horizon)
        self.feature_columns = list(feature_columns)  # price columns present in training
        self.training_symbols = sorted(training_symbols or [])
        self.feature_set_version = FEATURE_SET_VERSION

    def load_context(self, context) -> None:
        self.model_ = load_model(getattr(self, "family", "xgboost"), Path(context.artifacts[MODEL_ARTIFACT]))

    def members(self) -> dict[str, tuple[object, list[str]]]:
        """name -> (fitted model, the feature columns it reads)."""
        return {self.family: (self.model_, self.selected_features)}

    def combine(self, scores: pd.DataFrame) -> np.ndarray:
        return scores.iloc[:, 0].to_numpy()

    def input_columns(self) -> list[str]:
        """The price columns this model's features are computed from (``close`` always), in the
        training panel's order: an input must have these; the other training columns may be absent."""
        recipes = getattr(self, "recipes", None) or {}
        base = {i for name in self.selected_features for i in (recipes[name]["inputs"] if name in recipes else [name])}
        reads = feature_inputs(base)
        return [c for c in self.feature_columns if c in reads] + [c for c in reads if c not in self.feature_columns]

    def explain(self, features: pd.DataFrame, index: pd.Index, scores: pd.DataFrame) -> pd.DataFrame:
        """Contributions of this model's score on the rows ``index`` of ``features`` (base value and
        one column per feature; ``lib.explain.contributions``)."""
        from plml_assets.lib.explain.contributions import PREDICTION, explain_rows

        model, columns = self.members()[self.family]
        return explain_rows(model, features[columns], features.index.get_indexer(index)).drop(columns=PREDICTION)

    def contributions_on(self, panel: pd.DataFrame, dates) -> pd.DataFrame:
        """``base_value`` and one column per feature (as ``score(..., explain=True)``, without the
        ``contrib_`` prefix) of the score on the rows of ``dates``, indexed by (date, symbol); the
        panel's earlier rows only give those rows' feature history. What drift_metrics profiles the
        champion's reliance on new data with."""
        panel = as_panel(panel, columns=self.input_columns())
        members = self.members()
        needed = list(dict.fromkeys(c for _, columns in members.values() for c in columns))
        features = model_features(panel, needed, getattr(self, "recipes", {}))
        on = features.index.get_level_values("date")
        index = features.index[on.isin(pd.DatetimeIndex(dates))]
        if len(index) == 0:
            raise ValueError(f"none of the {len(dates)} dates to explain is in the panel "
                             f"({on.min().date()}..{on.max().date()})")
        scores = pd.DataFrame({name: _predict(model, features[columns], None) for name, (model, columns) in members.items()},
                              index=features.index).loc[index]
        return self.explain(features, index, scores)

    def score(self, panel: pd.DataFrame, all_dates: bool = False, explain: bool = False) -> pd.DataFrame:
        """One score per symbol on the latest date (every row with ``all_dates``); with ``explain``,
        also ``base_value`` and one ``contrib_<feature>`` column per feature the model reads, in the
        score's units: ``base_value`` plus the row's contributions is its score (exactly for the
        trees and the ensembles of trees; up to the integration error for the nets)."""
        panel = as_panel(panel, columns=self.input_columns())
        members = self.members()
        needed = list(dict.fromkeys(c for _, columns in members.values() for c in columns))
        # Only the columns the features read: a feature's values do not depend on the others.
        features = model_features(panel, needed, getattr(self, "recipes", {}))
        # rows of history each row was scored with (its own row included)
        history = panel.groupby(level="symbol").cumcount().add(1)
        latest = None if all_dates else _latest_rows(features)
        index = features.index if latest is None else features.index[features.index.get_level_values("date") == latest]
        scores = pd.DataFrame({name: _predict(model, features[columns], latest) for name, (model, columns) in members.items()},
                              index=index)
        out = index.to_frame(index=False)
        out["score"] = np.asarray(self.combine(scores), dtype="float64")
        if explain:
            parts = self.explain(features, index, scores)
            out["base_value"] = parts.pop("base_value").reindex(index).to_numpy()
            parts = parts.drop(columns=[c for c in ("nonlinear_residual",) if c in parts and not parts[c].any()])
            for column in parts.columns:
                name = column if column == "nonlinear_residual" else f"contrib_{column}"
                out[name] = parts[column].reindex(index).to_numpy()
        # Features with look-backs longer than a symbol's history are NaN: say so per row instead
        # of silently serving a weaker score.
        out["full_history"] = history.reindex(index).ge(history_days(getattr(self, "recipes", {}))).to_numpy()
        if self.training_symbols:
            out["in_training_universe"] = out["symbol"].isin(self.training_symbols).to_numpy()
        return out

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        params = params or {}
        # explain= only when asked: a scorer subclass written before the param (its own score()) still serves
        extra = {"explain": True} if params.get("explain", False) else {}
        return self.score(model_input, all_dates=bool(params.get("all_dates", False)), **extra)


def model_signature(scorer: PanelScorer, example: pd.DataFrame, output: pd.DataFrame) -> ModelSignature:
    """The pyfunc's MLflow signature: ``date`` and ``symbol`` (optional to MLflow: they may come as
    index levels) and the price columns the model reads (required), all of any type; the output
    as inferred from ``output``; the ``all_dates`` and ``explain`` params. Other columns (the price columns the
    features do not read included) are extra: MLflow drops them before the model sees the input.

    Typed columns would let MLflow refuse natural input before :func:`as_panel` sees it: an int64
    volume (read from any CSV) or integer prices do not "safely" convert to double, nor integer
    symbols to string, nor text dates of pandas' string dtype to datetime. ``as_panel`` converts
    them instead, and refuses what is really wrong (non-numeric or non-positive prices, no date,
    unparseable dates) by name. The price of the leniency: MLflow passes an untyped column on
    value by value, about 1 s per million values.
    """
    inferred = infer_signature(example, output, params={"all_dates": False, "explain": False})
    inputs = Schema([
        ColSpec(AnyType(), "date", required=False),
        ColSpec(AnyType(), "symbol", required=False),
        *(ColSpec(AnyType(), column) for column in scorer.input_columns()),
    ])
    return ModelSignature(inputs=inputs, outputs=inferred.outputs, params=inferred.params)


def member_artifact(name: str) -> str:
    return f"member_{name}"


class EnsembleScorer(PanelScorer):
    """Several single models behind the same raw-price interface: features are rebuilt once (base
    and every member's generated features), each member scores its own columns, and the fitted
    ensemble rule (``plml_assets.lib.ensemble.combine.EnsembleFit``) combines the scores per date."""

    def __init__(
        self,
        members: dict[str, dict],
        ensemble: dict,
        horizon: int,
        feature_columns: list[str],
        training_symbols: list[str] | None = None,
        recipes: dict[str, dict] | None = None,
    ) -> None:
        if len(members) < 2:
            raise ValueError(f"an ensemble needs at least 2 members, got {list(members)}")
        for name, member in members.items():
            model_class(member["family"])
            if not member.get("features"):
                raise ValueError(f"ensemble member {name!r} lists no features")
        self.member_specs = {name: {"family": m["family"], "features": list(m["features"])} for name, m in members.items()}
        self.ensemble = dict(ensemble)
        needed = {c for m in members.values() for c in m["features"]}
        super().__init__(sorted(needed), horizon, feature_columns, training_symbols, family=next(iter(members.values()))["family"],
                         recipes=recipes)
        self.family = "ensemble"

    def load_context(self, context) -> None:
        self.models_ = {
            name: load_model(spec["family"], Path(context.artifacts[member_artifact(name)]))
            for name, spec in self.member_specs.items()
        }

    def members(self) -> dict[str, tuple[object, list[str]]]:
        return {name: (self.models_[name], spec["features"]) for name, spec in self.member_specs.items()}

    def combine(self, scores: pd.DataFrame) -> np.ndarray:
        from plml_assets.lib.ensemble.combine import EnsembleFit

        return EnsembleFit.from_dict(self.ensemble).combine(scores).reindex(scores.index).to_numpy()

    def explain(self, features: pd.DataFrame, index: pd.Index, scores: pd.DataFrame) -> pd.DataFrame:
        """The members' contributions mapped into the rule's per-date space
        (``lib.explain.contributions.ensemble_contributions``), the scores of every scored row
        standing for the date's cross-section."""
        from plml_assets.lib.explain.contributions import PREDICTION, ensemble_contributions, explain_rows

        rows = features.index.get_indexer(index)
        members = {name: explain_rows(model, features[columns], rows) for name, (model, columns) in self.members().items()}
        return ensemble_contributions(self.ensemble, members, {n: scores[n] for n in scores.columns}).drop(columns=PREDICTION)
