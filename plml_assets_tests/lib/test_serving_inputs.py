"""The registered pyfunc takes the price panel as a person has it.

Real pyfuncs, logged to and loaded from a SQLite MLflow store with the signature the training and
ensemble assets give them (``model_signature``), score a panel read back from CSV with
``pandas.read_csv`` (int64 volume, string dates), float32 prices, extra columns and a panel without
the columns their features do not read, exactly as the pipeline's own float64 panel; and they
refuse what is really wrong by name. The pyfunc used to declare ``volume: double`` and refused the
training CSV itself ("Can not safely convert int64 to float64").
"""

from __future__ import annotations

import re
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException

from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.data.prices import load_file
from plml_assets.lib.features.base import build_features, feature_inputs
from plml_assets.lib.models.training import excess_returns
from plml_assets.lib.models.xgboost_model import XGBoostModel
from plml_assets.lib.registry.serving import MODEL_ARTIFACT, EnsembleScorer, PanelScorer, member_artifact, model_signature

HORIZON = 5
SYMBOLS = ["AAPL", "AMD", "BAC", "CVX", "JPM", "KO", "MSFT", "PG", "WMT", "XOM"]
CLOSE_FEATURES = ["ret_5d", "ret_20d", "vol_20d", "rsi_14", "ma_gap_50", "cs_rank_ret_20d"]
VOLUME_FEATURES = ["volume_z_20d", "log_dollar_volume_20d", "volume_trend_5_20d"]
# Range features read high/low: a model of them and volume does not read `open`.
RANGE_FEATURES = ["hl_range_20d", "parkinson_vol_20d", "atr_14_pct"]
REQUIREMENTS = ["mlflow", "xgboost", "pandas"]


def _fit(panel: pd.DataFrame, columns: list[str]) -> XGBoostModel:
    features, _ = build_features(panel)
    y = excess_returns(forward_returns(panel, HORIZON))
    known = y.notna().to_numpy()
    return XGBoostModel(n_estimators=30, max_depth=3, nthread=1).fit((features.loc[known, columns], y[known]))


def _example(panel: pd.DataFrame) -> pd.DataFrame:
    """What the assets store with the model: recent history of every symbol, date/symbol columns."""
    dates = panel.index.get_level_values("date").unique()
    return panel[panel.index.get_level_values("date") >= dates[-330]].reset_index()


def _log(scorer: PanelScorer, fitted: dict[str, XGBoostModel], panel: pd.DataFrame, tmp: Path, name: str) -> str:
    """Log ``scorer`` as the training/ensemble assets do (signature, input example, artefacts) and
    return its model URI."""
    example = _example(panel)
    if isinstance(scorer, EnsembleScorer):
        scorer.models_ = fitted
        artifacts = {}
        for member, model in fitted.items():
            model.save(tmp / name / member_artifact(member))
            artifacts[member_artifact(member)] = str(tmp / name / member_artifact(member))
    else:
        scorer.model_ = fitted["model"]
        fitted["model"].save(tmp / name / MODEL_ARTIFACT)
        artifacts = {MODEL_ARTIFACT: str(tmp / name / MODEL_ARTIFACT)}
    signature = model_signature(scorer, example, scorer.score(example))
    scorer.__dict__.pop("model_", None)
    scorer.__dict__.pop("models_", None)
    with mlflow.start_run():
        info = mlflow.pyfunc.log_model(name="model", python_model=scorer, artifacts=artifacts, signature=signature,
                                       input_example=example, pip_requirements=REQUIREMENTS)
    return info.model_uri


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mlflow_inputs")
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    mlflow.set_experiment(experiment_id=mlflow.create_experiment("serving_inputs", artifact_location=str(root / "artifacts")))
    yield root
    mlflow.set_tracking_uri(previous)


# ---- the embedded panel, with the integer volume of any OHLCV CSV ---------------------------


@pytest.fixture(scope="module")
def training_csv(embedded_panel, store) -> Path:
    """The embedded closes of 10 stocks (2009-2012) as a CSV with a volume column in shares,
    integers as every OHLCV feed prints them. The embedded panel has no volume: this one is
    derived from the closes (more shares on bigger moves), only to carry integers."""
    panel = embedded_panel.loc["2009-01-01":"2012-12-31"]
    panel = panel[panel.index.get_level_values("symbol").isin(SYMBOLS)]
    move = panel["close"].groupby(level="symbol").pct_change().abs().fillna(0.0)
    volume = (2e9 / panel["close"] * (1.0 + 20.0 * move)).round().astype("int64")
    path = store / "prices.csv"
    panel.assign(volume=volume).reset_index().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def pipeline_panel(training_csv) -> pd.DataFrame:
    """The panel as the pipeline trains on it (``load_file``: float64 prices and volume)."""
    return load_file(training_csv)


@pytest.fixture(scope="module")
def models(pipeline_panel, store) -> dict[str, str]:
    """Two real pyfuncs trained on the same panel (price columns close and volume): an XGBoost that
    reads close and volume features, and an ensemble of two XGBoosts that read close features only
    (volume is then a column it does not use)."""
    with_volume = PanelScorer(CLOSE_FEATURES + VOLUME_FEATURES, HORIZON, list(pipeline_panel.columns),
                              training_symbols=SYMBOLS)
    ensemble = EnsembleScorer(
        {"fast": {"family": "xgboost", "features": CLOSE_FEATURES[:3]},
         "slow": {"family": "xgboost", "features": CLOSE_FEATURES[3:]}},
        {"method": "mean", "members": ["fast", "slow"], "weights": {"fast": 0.5, "slow": 0.5}},
        HORIZON, list(pipeline_panel.columns), training_symbols=SYMBOLS,
    )
    fitted_volume = {"model": _fit(pipeline_panel, CLOSE_FEATURES + VOLUME_FEATURES)}
    fitted_ensemble = {"fast": _fit(pipeline_panel, CLOSE_FEATURES[:3]), "slow": _fit(pipeline_panel, CLOSE_FEATURES[3:])}
    return {
        "volume": _log(with_volume, fitted_volume, pipeline_panel, store, "volume"),
        "close_ensemble": _log(ensemble, fitted_ensemble, pipeline_panel, store, "close_ensemble"),
    }


@pytest.fixture(scope="module")
def loaded(models) -> dict[str, mlflow.pyfunc.PyFuncModel]:
    return {name: mlflow.pyfunc.load_model(uri) for name, uri in models.items()}


@pytest.fixture(scope="module")
def expected(loaded, pipeline_panel) -> dict[str, pd.DataFrame]:
    """Each model's scores of the pipeline's own float64 panel (the normal path)."""
    return {name: model.unwrap_python_model().score(pipeline_panel) for name, model in loaded.items()}


def test_the_signature_requires_the_columns_the_features_read(loaded):
    for name, needed in (("volume", ["close", "volume"]), ("close_ensemble", ["close"])):
        inputs = loaded[name].metadata.get_input_schema()
        assert inputs.input_names() == ["date", "symbol", *needed]
        assert inputs.required_input_names() == needed, name
        assert loaded[name].metadata.get_params_schema().to_dict()[0]["name"] == "all_dates"


def test_generated_features_require_the_columns_of_their_inputs():
    recipe = {"primitive": "rolling_z", "inputs": ["volume_z_20d"], "params": {"window": 20}}
    scorer = PanelScorer(["ret_5d", "volume_z_20d__z20"], HORIZON, ["open", "close", "volume"],
                         recipes={"volume_z_20d__z20": recipe, "unused": {**recipe, "inputs": ["hl_range_1d"]}})
    assert scorer.input_columns() == ["close", "volume"]
    assert PanelScorer(["ret_5d"], HORIZON, ["open", "close", "volume"], recipes={"x": recipe}).input_columns() == ["close"]


@pytest.mark.parametrize("name", ["volume", "close_ensemble"])
def test_scores_the_training_csv_read_back_with_pandas(name, loaded, expected, training_csv):
    frame = pd.read_csv(training_csv)
    assert frame["volume"].dtype == np.int64 and frame["date"].dtype == object
    out = loaded[name].predict(frame)
    pd.testing.assert_frame_equal(out, expected[name])
    assert len(out) == len(SYMBOLS) and out["score"].nunique() > 1
    every = loaded[name].predict(frame, params={"all_dates": True})
    assert len(every) == len(frame)


def test_the_float64_path_is_unchanged(loaded, expected, pipeline_panel):
    """The frame the promotion gate passes (float64, date/symbol columns) scores as ``score`` does,
    and ``score`` as the fitted model on the training features."""
    out = loaded["volume"].predict(pipeline_panel.reset_index())
    pd.testing.assert_frame_equal(out, expected["volume"])
    scorer = loaded["volume"].unwrap_python_model()
    features, _ = build_features(pipeline_panel)
    latest = pipeline_panel.index.get_level_values("date").max()
    rows = features.xs(latest, level="date", drop_level=False)[scorer.selected_features]
    np.testing.assert_allclose(out["score"].to_numpy(), scorer.model_.predict(rows), rtol=1e-12)


def test_float32_prices_score_as_their_float64_values(loaded, expected, training_csv):
    frame = pd.read_csv(training_csv)
    as_float32 = frame.astype({"close": "float32", "volume": "float32"})
    out = loaded["volume"].predict(as_float32)
    widened = as_float32.astype({"close": "float64", "volume": "float64"})
    pd.testing.assert_frame_equal(out, loaded["volume"].predict(widened))
    # float32 rounds prices at ~6e-8 relative: the scores barely move.
    np.testing.assert_allclose(out["score"].to_numpy(), expected["volume"]["score"].to_numpy(), atol=1e-4)


def test_extra_columns_are_ignored(loaded, expected, training_csv):
    frame = pd.read_csv(training_csv).assign(exchange="NYSE", adj_close=lambda f: f["close"] * 0.98, open=np.nan)
    for name in ("volume", "close_ensemble"):
        pd.testing.assert_frame_equal(loaded[name].predict(frame), expected[name])


def test_the_embedded_panel_without_volume_scores_with_a_model_that_does_not_read_it(
        loaded, expected, embedded_panel, training_csv, tmp_path):
    """The embedded panel (closes only) to CSV and back: the close-only ensemble scores it as it
    scores the panel with volume; the model that reads volume names the missing column."""
    panel = embedded_panel.loc["2009-01-01":"2012-12-31"]
    panel[panel.index.get_level_values("symbol").isin(SYMBOLS)].reset_index().to_csv(tmp_path / "closes.csv", index=False)
    closes = pd.read_csv(tmp_path / "closes.csv")
    assert list(closes.columns) == ["date", "symbol", "close"]
    pd.testing.assert_frame_equal(loaded["close_ensemble"].predict(closes), expected["close_ensemble"])
    with pytest.raises(MlflowException, match=re.escape("Model is missing inputs ['volume']")):
        loaded["volume"].predict(closes)  # the signature requires it
    with pytest.raises(ValueError, match=re.escape("reads price column(s) ['close', 'volume']; the input lacks ['volume']")):
        loaded["volume"].unwrap_python_model().score(closes)  # and so does the scorer itself


def test_an_indexed_panel_scores_through_the_pyfunc(loaded, expected, pipeline_panel):
    pd.testing.assert_frame_equal(loaded["volume"].predict(pipeline_panel), expected["volume"])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns="volume"), r"Model is missing inputs \['volume'\]"),
        (lambda f: f.drop(columns="close"), r"Model is missing inputs \['close'\]"),
        (lambda f: f.assign(close=f["close"].astype(object).where(f.index != 7, "n/a")),
         r"schema check: column 'close' .*expected numeric.*'n/a'"),
        (lambda f: f.assign(volume=f["volume"].astype(object).where(f.index != 7, "lots")),
         r"schema check: column 'volume' .*expected numeric.*'lots'"),
        (lambda f: f.drop(columns="symbol"), r"long price panel with 'date' and 'symbol'"),
        (lambda f: f.drop(columns="date"), r"long price panel with 'date' and 'symbol'"),
        (lambda f: f.assign(date="someday"), r"'date' column is not parseable as dates"),
        (lambda f: f.assign(close=f["close"].where(f.index != 7, -1.0)), r"prices check: 1 row\(s\).*non-positive"),
    ],
    ids=["no_volume", "no_close", "text_close", "text_volume", "no_symbol", "no_date", "bad_date", "negative_close"],
)
@pytest.mark.filterwarnings("ignore:Could not infer format")
def test_refuses_what_is_really_wrong_by_name(loaded, training_csv, mutate, message):
    frame = mutate(pd.read_csv(training_csv))
    with pytest.raises((ValueError, MlflowException), match=message):
        loaded["volume"].predict(frame)


# ---- the real OHLCV CSV (shared data, skipped when absent) ----------------------------------


@pytest.fixture(scope="module")
def ohlcv_csv(store) -> Path:
    from plml_assets_tests.conftest import SP500_5YR

    if not SP500_5YR.exists():
        pytest.skip(f"{SP500_5YR} is absent")
    frame = pd.read_csv(SP500_5YR)
    path = store / "ohlcv.csv"
    frame[frame["symbol"].isin(SYMBOLS)].to_csv(path, index=False)
    return path


def test_a_model_trained_on_a_real_ohlcv_csv_scores_that_csv(ohlcv_csv, store):
    """10 stocks of the shared S&P 500 file (open, high, low, close, volume; int64 volume): a model
    of close, range and volume features scores the file as pandas reads it, without `open`, and
    with float32 prices; without `high` it names it."""
    panel = load_file(ohlcv_csv)
    assert list(panel.columns) == ["open", "high", "low", "close", "volume"]
    columns = CLOSE_FEATURES + RANGE_FEATURES + VOLUME_FEATURES
    assert feature_inputs(columns) == ["high", "low", "close", "volume"]
    scorer = PanelScorer(columns, HORIZON, list(panel.columns), training_symbols=SYMBOLS)
    model = mlflow.pyfunc.load_model(_log(scorer, {"model": _fit(panel, columns)}, panel, store, "ohlcv"))
    expected = model.unwrap_python_model().score(panel)

    frame = pd.read_csv(ohlcv_csv)
    assert frame["volume"].dtype == np.int64
    pd.testing.assert_frame_equal(model.predict(frame), expected)
    pd.testing.assert_frame_equal(model.predict(frame.drop(columns="open")), expected)
    prices = ["open", "high", "low", "close"]
    as_float32 = frame.astype(dict.fromkeys(prices, "float32"))
    out = model.predict(as_float32)
    pd.testing.assert_frame_equal(out, model.predict(as_float32.astype(dict.fromkeys(prices, "float64"))))
    np.testing.assert_allclose(out["score"].to_numpy(), expected["score"].to_numpy(), atol=1e-4)
    with pytest.raises(MlflowException, match=re.escape("Model is missing inputs ['high']")):
        model.predict(frame.drop(columns="high"))


@pytest.mark.parametrize("name", ["volume", "close_ensemble"])
def test_explain_param_returns_contributions_that_add_up_to_the_served_scores(loaded, pipeline_panel, expected, name):
    """Issue 16: ``params={"explain": True}`` through MLflow's own pyfunc: the same scores, plus
    ``base_value`` and one ``contrib_<feature>`` per feature the model reads (an ensemble: its members'
    values in its per-date z-score space), adding up to the score."""
    model = loaded[name]
    assert {p.name: p.default for p in model.metadata.get_params_schema().params} == {"all_dates": False, "explain": False}
    out = model.predict(pipeline_panel.reset_index(), params={"explain": True})
    np.testing.assert_allclose(out["score"].to_numpy(), expected[name]["score"].to_numpy())
    parts = [c for c in out.columns if c.startswith("contrib_")]
    reads = CLOSE_FEATURES + VOLUME_FEATURES if name == "volume" else CLOSE_FEATURES
    assert sorted(parts) == sorted(f"contrib_{f}" for f in reads)
    total = out[parts].sum(axis=1) + out["base_value"]
    assert np.abs(total - out["score"]).max() <= 1e-4 * np.sqrt((out["score"] ** 2).mean())
    assert (out[parts].abs().sum() > 0).all()  # every feature it reads moves some score
    plain = model.predict(pipeline_panel.reset_index())
    assert not any(c.startswith("contrib_") or c == "base_value" for c in plain.columns)
