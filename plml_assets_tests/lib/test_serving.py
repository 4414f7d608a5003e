"""The served model: input validation and the pyfunc's feature rebuild from raw prices."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.features.base import FEATURE_LOOKBACK_DAYS, build_features
from plml_assets.lib.models.training import early_stopping_split, excess_returns
from plml_assets.lib.models.xgboost_model import XGBoostModel
from plml_assets.lib.registry.serving import PanelScorer, as_panel

HORIZON = 5


@pytest.fixture(scope="module")
def prices(embedded_panel) -> pd.DataFrame:
    """The 20 real stocks over 2008-2012 (~1,260 dates)."""
    return embedded_panel.loc["2008-01-01":"2012-12-31"]


@pytest.fixture(scope="module")
def fitted(prices) -> tuple[XGBoostModel, list[str]]:
    features, _ = build_features(prices)
    columns = list(features.columns)
    y = excess_returns(forward_returns(prices, HORIZON))
    known = y.notna().to_numpy()
    fit, stop = early_stopping_split(prices.index.get_level_values("date").to_numpy()[known], HORIZON)
    X, target = features[known], y[known]
    model = XGBoostModel(n_estimators=50, max_depth=3, nthread=1).fit((X[fit], target[fit]), (X[stop], target[stop]))
    return model, columns


@pytest.fixture
def scorer(fitted) -> PanelScorer:
    model, columns = fitted
    scorer = PanelScorer(columns, HORIZON, ["close"])
    scorer.model_ = model
    return scorer


# ---- as_panel -------------------------------------------------------------------------------


def small_panel() -> pd.DataFrame:
    dates = pd.bdate_range("2022-01-03", periods=4, name="date")
    index = pd.MultiIndex.from_product([dates, ["A", "B", "C"]], names=["date", "symbol"])
    return pd.DataFrame({"close": np.arange(1.0, 13.0), "volume": np.arange(100.0, 112.0)}, index=index)


@pytest.mark.parametrize(
    "shape",
    ["columns", "date_symbol_index", "symbol_date_index", "shuffled_capitalized_columns", "string_dates"],
)
def test_as_panel_accepts_the_usual_shapes(shape):
    panel = small_panel()
    frame = {
        "columns": lambda: panel.reset_index(),
        "date_symbol_index": lambda: panel,
        "symbol_date_index": lambda: panel.swaplevel().sort_index(),
        "shuffled_capitalized_columns": lambda: panel.reset_index()
        .sample(frac=1.0, random_state=0)
        .rename(columns={"date": "Date", "symbol": "Symbol", "close": "Close"}),
        "string_dates": lambda: panel.reset_index().assign(date=lambda f: f["date"].dt.strftime("%Y-%m-%d")),
    }[shape]()
    pd.testing.assert_frame_equal(as_panel(frame), panel)


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda f: f.drop(columns="symbol"), r"'date' and 'symbol'"),
        (lambda f: f.drop(columns="close"), r"schema check: required column 'close' is missing"),
        (lambda f: pd.concat([f, f.iloc[[4]]]), r"duplicates check: 1 duplicated \(date, symbol\) key"),
        (lambda f: f.assign(close=f["close"].where(f.index != 5, 0.0)), r"prices check: 1 row\(s\).*non-positive"),
        (lambda f: f.assign(close=f["close"].where(f.index != 5, -3.0)), r"prices check: .*non-positive"),
        (lambda f: f.assign(close=f["close"].astype(object).where(f.index != 5, "n/a")), r"schema check: column 'close' .*expected numeric.*n/a"),
        (lambda f: f.assign(date="not a date"), r"'date' column is not parseable"),
    ],
    ids=["no_symbol", "no_close", "duplicate", "zero_price", "negative_price", "non_numeric_close", "bad_date"],
)
@pytest.mark.filterwarnings("ignore:Could not infer format")
def test_as_panel_refuses_what_the_data_checks_refuse(mutate, message):
    with pytest.raises(ValueError, match=message):
        as_panel(mutate(small_panel().reset_index()))


def test_as_panel_refuses_something_that_is_not_a_frame():
    with pytest.raises(ValueError, match="pandas DataFrame.*got ndarray"):
        as_panel(np.ones((3, 3)))


# ---- PanelScorer.score ----------------------------------------------------------------------


def test_scores_one_row_per_symbol_on_the_latest_date(scorer, prices, fitted):
    model, columns = fitted
    latest = prices.index.get_level_values("date").max()
    out = scorer.score(prices.reset_index())
    assert list(out.columns) == ["date", "symbol", "score", "full_history"]
    assert len(out) == 20 and out["symbol"].is_unique
    assert set(out["symbol"]) == set(prices.index.get_level_values("symbol"))
    assert (out["date"] == latest).all()
    assert out["full_history"].all()
    features, _ = build_features(prices)
    expected = model.predict(features.xs(latest, level="date", drop_level=False)[columns])
    np.testing.assert_allclose(out["score"].to_numpy(), expected, rtol=1e-12)
    assert out["score"].nunique() > 1


def test_all_dates_scores_every_row(scorer, prices, fitted):
    model, columns = fitted
    out = scorer.score(prices, all_dates=True)
    assert len(out) == len(prices)
    assert pd.MultiIndex.from_frame(out[["date", "symbol"]]).equals(prices.index)
    features, _ = build_features(prices)
    np.testing.assert_allclose(out["score"].to_numpy(), model.predict(features[columns]), rtol=1e-12)
    via_pyfunc = scorer.predict(None, prices.reset_index(), params={"all_dates": True})
    pd.testing.assert_frame_equal(via_pyfunc, out)


def test_contributions_on_dates_add_up_to_the_served_scores_of_those_rows(scorer, prices):
    """What drift_metrics profiles new data with: the rows of the asked dates only, each row's base
    value plus contributions equal to the score the model serves for it (its history from earlier
    rows of the panel, as when it scores)."""
    dates = prices.index.get_level_values("date").unique()[-5:]
    parts = scorer.contributions_on(prices.loc[dates[0] - pd.Timedelta(days=500):], dates)
    assert set(parts.index.get_level_values("date")) == set(dates) and len(parts) == 5 * 20
    served = scorer.score(prices, all_dates=True).set_index(["date", "symbol"])["score"].reindex(parts.index)
    np.testing.assert_allclose(parts.sum(axis=1).to_numpy(), served.to_numpy(), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="none of the 1 dates to explain is in the panel"):
        scorer.contributions_on(prices, [pd.Timestamp("1999-01-04")])


def test_scores_from_the_last_400_dates_match_full_history(scorer, prices, embedded_panel):
    """Training/serving parity: the feature look-back fits in what a caller sends."""
    full_history = embedded_panel.loc[:"2012-12-31"]  # 23 years
    dates = prices.index.get_level_values("date").unique()
    recent = prices[prices.index.get_level_values("date") >= dates[-400]]
    assert 400 >= FEATURE_LOOKBACK_DAYS
    long_scores = scorer.score(full_history)
    short_scores = scorer.score(recent)
    pd.testing.assert_frame_equal(long_scores[["date", "symbol"]], short_scores[["date", "symbol"]])
    np.testing.assert_allclose(short_scores["score"], long_scores["score"], rtol=1e-4)
    # A history shorter than the look-back does change the scores (the test can tell).
    too_short = prices[prices.index.get_level_values("date") >= dates[-60]]
    assert not np.allclose(scorer.score(too_short)["score"], long_scores["score"], rtol=1e-4)


def test_flags_a_symbol_with_less_than_the_feature_lookback(fitted, prices):
    model, columns = fitted
    scorer = PanelScorer(columns, HORIZON, ["close"], training_symbols=sorted(prices.index.unique("symbol")))
    scorer.model_ = model
    newcomer = prices.xs("KO", level="symbol").iloc[-(FEATURE_LOOKBACK_DAYS - 1):]
    newcomer = newcomer.assign(symbol="NEWCO").set_index("symbol", append=True)
    out = scorer.score(pd.concat([prices, newcomer]).sort_index())
    assert len(out) == 21
    flags = out.set_index("symbol")["full_history"]
    assert not flags["NEWCO"] and flags.drop("NEWCO").all()
    universe = out.set_index("symbol")["in_training_universe"]
    assert not universe["NEWCO"] and universe.drop("NEWCO").all()


def test_exactly_the_feature_lookback_is_full_history(scorer, prices):
    dates = prices.index.get_level_values("date").unique()
    out = scorer.score(prices[prices.index.get_level_values("date") >= dates[-FEATURE_LOOKBACK_DAYS]])
    assert out["full_history"].all()
    out = scorer.score(prices[prices.index.get_level_values("date") >= dates[-FEATURE_LOOKBACK_DAYS + 1]])
    assert not out["full_history"].any()


def test_all_dates_flags_rows_without_enough_history_before_them(scorer, prices):
    out = scorer.score(prices, all_dates=True)
    rows_so_far = out.groupby("symbol").cumcount() + 1
    np.testing.assert_array_equal(out["full_history"].to_numpy(), (rows_so_far >= FEATURE_LOOKBACK_DAYS).to_numpy())


def test_refuses_a_latest_date_with_fewer_than_three_symbols(scorer, prices):
    latest = prices.index.get_level_values("date").max()
    on_latest = prices.index.get_level_values("date") == latest
    keep = ~on_latest | prices.index.get_level_values("symbol").isin(["AAPL", "KO"])
    with pytest.raises(ValueError, match=r"only 2 symbol\(s\) have a price on the latest date 2012-12-31"):
        scorer.score(prices[keep])
    # all_dates scores whatever trades, so it still works.
    assert len(scorer.score(prices[keep], all_dates=True)) == int(keep.sum())


def test_refuses_an_input_without_a_price_column_its_features_read(fitted, prices):
    """Trained on close and volume: an input without volume is refused when a selected feature
    reads volume, and scored as with it when none does (the close features do not depend on it)."""
    model, columns = fitted
    reads_volume = PanelScorer([*columns, "volume_z_20d"], HORIZON, ["close", "volume"])
    reads_volume.model_ = model
    assert reads_volume.input_columns() == ["close", "volume"]
    with pytest.raises(ValueError, match=r"reads price column\(s\) \['close', 'volume'\]; the input lacks \['volume'\]"):
        reads_volume.score(prices)
    closes_only = PanelScorer(columns, HORIZON, ["close", "volume"])
    closes_only.model_ = model
    assert closes_only.input_columns() == ["close"]
    with_volume = prices.assign(volume=1e6)
    pd.testing.assert_frame_equal(closes_only.score(prices), closes_only.score(with_volume))


# ---- any family -----------------------------------------------------------------------------


def test_a_sequence_net_scores_the_latest_date_with_its_window_of_history(prices, tmp_path):
    """The GRU reads `window` dates of feature history: scoring only the latest date must give what
    scoring every date gives on that date, and the artefact round trip (load_context) is the same."""
    from types import SimpleNamespace

    from plml_assets.lib.models.registry import make_model
    from plml_assets.lib.registry.serving import MODEL_ARTIFACT

    features, _ = build_features(prices)
    columns = ["ret_5d", "ret_20d", "vol_20d"]
    y = excess_returns(forward_returns(prices, HORIZON))
    known = y.notna().to_numpy()
    model = make_model("gru", window=8, hidden_size=8, max_epochs=2, seed=1).fit((features.loc[known, columns], y[known]))
    scorer = PanelScorer(columns, HORIZON, ["close"], family="gru")
    scorer.model_ = model
    latest = scorer.score(prices)
    every = scorer.score(prices, all_dates=True)
    last_date = prices.index.get_level_values("date").max()
    expected = every[every["date"] == last_date].reset_index(drop=True)
    np.testing.assert_allclose(latest["score"].to_numpy(), expected["score"].to_numpy(), rtol=1e-5)
    assert latest["score"].std() > 0

    model.save(tmp_path / MODEL_ARTIFACT)
    reloaded = PanelScorer(columns, HORIZON, ["close"], family="gru")
    reloaded.load_context(SimpleNamespace(artifacts={MODEL_ARTIFACT: str(tmp_path / MODEL_ARTIFACT)}))
    np.testing.assert_allclose(reloaded.score(prices)["score"].to_numpy(), latest["score"].to_numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="unknown model family 'catboost'"):
        PanelScorer(columns, HORIZON, ["close"], family="catboost")
