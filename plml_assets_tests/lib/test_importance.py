"""Feature importance across CV folds: within-date permutation, gain, stability, summary, plot."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plml_assets.lib.models.base import Model
from plml_assets.lib.models.training import cross_validate, fit_model, predict_rows, spread_dates
from plml_assets.lib.plots import importance_stability_plot
from plml_assets.lib.selection.importance import (
    describe_fold_importance,
    fold_importance,
    fold_importances,
    importance_stability,
    permutation_importance,
    shuffle_within_dates,
    summarize_importances,
)
from plml_assets.lib.validation.metrics import per_date_ic
from plml_assets.lib.validation.splits import PurgedWalkForward

HORIZON = 5
SMALL_XGB = {"n_estimators": 40, "max_depth": 3, "learning_rate": 0.1, "nthread": 1}
# Small batches and a large step: with 2 epochs of batch 256 the net ends with a negative IC.
TINY_LSTM = {"window": 5, "hidden_size": 8, "lr": 0.01, "max_epochs": 6, "batch_size": 64, "epoch_samples": 2048,
             "num_threads": 1}


def panel(n_dates: int = 150, n_symbols: int = 40, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """``signal`` drives the label, ``weak`` a little, ``noise`` not at all; ``drift`` is pure noise
    across symbols but trends over time (a row shuffle would move its level between dates)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2018-01-01", periods=n_dates, name="date")
    index = pd.MultiIndex.from_product([dates, [f"S{k:02d}" for k in range(n_symbols)]], names=["date", "symbol"])
    n = len(index)
    trend = np.repeat(np.linspace(-3, 3, n_dates), n_symbols)
    X = pd.DataFrame({
        "signal": rng.normal(size=n),
        "weak": rng.normal(size=n),
        "noise": rng.normal(size=n),
        "drift": trend + rng.normal(scale=0.1, size=n),
    }, index=index)
    y = pd.Series(0.5 * X["signal"] + 0.1 * X["weak"] + rng.normal(scale=0.5, size=n), index=index, name="y")
    return X, y


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, pd.Series]:
    return panel()


def split_rows(X: pd.DataFrame, train_dates: int = 110) -> tuple[np.ndarray, np.ndarray]:
    dates = X.index.get_level_values("date")
    unique = dates.unique()
    train = np.flatnonzero(dates < unique[train_dates - HORIZON])
    valid = np.flatnonzero(dates >= unique[train_dates])
    return train, valid


@pytest.fixture(scope="module")
def xgb_fit(data):
    X, y = data
    train, valid = split_rows(X)
    model, _ = fit_model("xgboost", SMALL_XGB, X.iloc[train], y.iloc[train], HORIZON)
    return model, valid


# ---- shuffle_within_dates -------------------------------------------------------------------


def multisets(values: np.ndarray, dates: np.ndarray) -> dict:
    return {d: sorted(values[dates == d].tolist()) for d in np.unique(dates)}


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 12), min_size=1, max_size=8),
    seed=st.integers(0, 2**16),
    interleave=st.booleans(),
)
def test_shuffle_within_dates_keeps_each_dates_values(sizes, seed, interleave):
    rng = np.random.default_rng(seed)
    dates = np.repeat(np.arange(len(sizes)), sizes)
    if interleave:  # rows need not be grouped by date
        dates = rng.permutation(dates)
    values = rng.normal(size=len(dates))
    shuffled = shuffle_within_dates(values, dates, np.random.default_rng(seed))
    assert multisets(shuffled, dates) == multisets(values, dates)
    assert shuffled is not values and len(shuffled) == len(values)


def test_shuffle_within_dates_moves_values_between_symbols_and_is_seeded():
    dates = np.repeat(np.arange(50), 30)
    values = np.arange(len(dates), dtype=float)
    a = shuffle_within_dates(values, dates, np.random.default_rng(7))
    b = shuffle_within_dates(values, dates, np.random.default_rng(7))
    c = shuffle_within_dates(values, dates, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert (a != values).mean() > 0.9
    with pytest.raises(ValueError, match="one date per value"):
        shuffle_within_dates(values, dates[:-1], np.random.default_rng(0))


# ---- permutation_importance -----------------------------------------------------------------


def test_permutation_importance_finds_the_driver_and_ignores_noise(data, xgb_fit):
    X, y = data
    model, valid = xgb_fit
    imp = permutation_importance(model, X, y, valid, repeats=2, seed=0)
    assert list(imp.index) == list(X.columns)
    assert imp.attrs["base_rank_ic"] > 0.4 and imp.attrs["n_dates"] == 40
    assert imp["signal"] > 0.3
    assert imp["signal"] > imp["weak"] > 0
    for feature in ("noise", "drift"):
        assert abs(imp[feature]) < 0.05 * imp["signal"], imp.to_dict()


def test_permutation_importance_is_seeded_and_independent_of_the_feature_list(data, xgb_fit):
    X, y = data
    model, valid = xgb_fit
    a = permutation_importance(model, X, y, valid, seed=3)
    b = permutation_importance(model, X, y, valid, seed=3)
    pd.testing.assert_series_equal(a, b)
    assert not a.equals(permutation_importance(model, X, y, valid, seed=4))
    alone = permutation_importance(model, X, y, valid, features=["noise", "signal"], seed=3)
    assert list(alone.index) == ["noise", "signal"]
    assert alone.to_dict() == a[["noise", "signal"]].to_dict()


def test_permutation_importance_scores_a_spread_subsample_of_dates(data, xgb_fit):
    X, y = data
    model, valid = xgb_fit
    imp = permutation_importance(model, X, y, valid, features=["signal"], repeats=1, max_dates=10)
    assert imp.attrs["n_dates"] == 10
    assert permutation_importance(model, X, y, valid, features=["signal"], max_dates=None).attrs["n_dates"] == 40
    with pytest.raises(ValueError, match=r"feature\(s\) \['absent'\] not in X"):
        permutation_importance(model, X, y, valid, features=["absent"])
    empty = permutation_importance(model, X, y, np.array([], dtype=np.int64))
    assert empty.isna().all() and empty.attrs["n_dates"] == 0


class _HistoryRecorder(Model):
    """A stand-in net that reads 3 dates of history and records every frame it is given."""

    family = "recorder"
    _fitted_attribute = "feature_names_"

    def __init__(self) -> None:
        self.feature_names_ = ["signal", "noise"]
        self.frames: list[pd.DataFrame] = []

    @property
    def lookback_dates(self) -> int:
        return 3

    def fit(self, train, valid=None):
        return self

    def predict(self, X):
        self.frames.append(X.copy())
        return X["signal"].to_numpy(dtype=float)

    def save(self, path):
        raise NotImplementedError

    @classmethod
    def load(cls, path):
        raise NotImplementedError

    def get_params(self):
        return {}


def test_permutation_shuffles_the_history_a_sequence_model_reads_within_date(data):
    X, y = data
    _, valid = split_rows(X)
    model = _HistoryRecorder()
    imp = permutation_importance(model, X, y, valid, features=["signal"], repeats=1, max_dates=None)
    baseline, shuffled = model.frames
    dates = baseline.index.get_level_values("date")
    first_valid = X.index.get_level_values("date")[valid].min()
    history = dates < first_valid
    assert dates[history].nunique() == 3  # the 3 dates before the block came along
    np.testing.assert_array_equal(baseline["signal"], X.loc[baseline.index, "signal"])
    # History rows are shuffled as well, each date keeping its values; other columns are intact.
    assert (shuffled["signal"].to_numpy()[history] != baseline["signal"].to_numpy()[history]).mean() > 0.8
    assert multisets(shuffled["signal"].to_numpy(), dates.to_numpy()) == multisets(baseline["signal"].to_numpy(), dates.to_numpy())
    pd.testing.assert_series_equal(shuffled["noise"], baseline["noise"])
    assert imp["signal"] > 0.3


def test_permutation_importance_runs_for_a_sequence_net(data):
    X, y = data
    train, valid = split_rows(X)
    model, _ = fit_model("lstm", TINY_LSTM, X.iloc[train], y.iloc[train], HORIZON)
    imp = permutation_importance(model, X, y, valid, repeats=1, max_dates=15, seed=1)
    assert list(imp.index) == list(X.columns) and np.isfinite(imp).all()
    assert imp["signal"] > 0.3
    assert abs(imp["noise"]) < 0.1 * imp["signal"] and abs(imp["drift"]) < 0.1 * imp["signal"], imp.to_dict()
    # The unshuffled score is that of predict_rows on the whole panel: the net got its history.
    dates = X.index.get_level_values("date").to_numpy()
    scored = spread_dates(valid, dates, 15)
    ic = per_date_ic(y.to_numpy()[scored], predict_rows(model, X, scored), dates[scored], method="spearman")
    assert imp.attrs["base_rank_ic"] == pytest.approx(ic.mean(), abs=1e-9) and imp.attrs["n_dates"] == 15


# ---- fold_importances -----------------------------------------------------------------------


def test_fold_importances_cover_every_fold_and_its_own_columns(data):
    X, y = data
    folds = list(PurgedWalkForward(n_splits=3, horizon=HORIZON).split(X))
    columns = [["signal", "noise"], ["signal", "weak", "drift"], ["noise", "weak", "signal"]]
    logged: list[str] = []
    table = fold_importances("xgboost", SMALL_XGB, X, y, folds, columns, HORIZON,
                             repeats=1, max_dates=20, log=logged.append)
    assert list(table.columns[:5]) == ["fold", "feature", "gain", "permutation", "rank_in_fold"]
    for k, cols in enumerate(columns, start=1):
        block = table[table["fold"] == k]
        assert list(block["feature"]) == cols
        assert block["gain"].sum() == pytest.approx(1.0) and (block["gain"] >= 0).all()
        assert block.loc[block["feature"] == "signal", "rank_in_fold"].item() == 1
        assert sorted(block["rank_in_fold"]) == list(range(1, len(cols) + 1))
    assert len(table) == sum(map(len, columns))
    assert len(logged) == 3 and logged[0].startswith("fold 1/3")
    with pytest.raises(ValueError, match="2 fold column lists for 3 folds"):
        fold_importances("xgboost", SMALL_XGB, X, y, folds, columns[:2], HORIZON)


def test_importance_measured_on_cross_validates_own_fits_equals_a_refit(data):
    """{family}_cv measures permutation importance on the fold models it fits (cross_validate's
    on_fold_model): the same table fold_importances gets by refitting them, for XGBoost exactly."""
    X, y = data
    folds = list(PurgedWalkForward(n_splits=3, horizon=HORIZON).split(X))
    columns = [["signal", "noise"], ["signal", "weak", "drift"], ["noise", "weak", "signal"]]
    parts = []
    cross_validate(SMALL_XGB, X, y, folds, HORIZON, gap_bound=2.0, family="xgboost", fold_columns=columns,
                   on_fold_model=lambda k, model, Xf, test: parts.append(fold_importance(model, Xf, y, test, k, repeats=1, seed=3, max_dates=20)))
    measured = pd.concat(parts, ignore_index=True)
    refitted = fold_importances("xgboost", SMALL_XGB, X, y, folds, columns, HORIZON, repeats=1, max_dates=20, seed=3)
    pd.testing.assert_frame_equal(measured, refitted, check_exact=True)
    assert "fold 2/3: xgboost on 3 features" in describe_fold_importance(parts[1], "xgboost", 3)


def test_fold_importances_of_a_net_have_no_gain(data):
    X, y = data
    folds = list(PurgedWalkForward(n_splits=2, horizon=HORIZON).split(X))[-1:]
    table = fold_importances("lstm", TINY_LSTM, X, y, folds, [["signal", "noise"]], HORIZON, repeats=1, max_dates=8)
    assert table["gain"].isna().all() and table["permutation"].notna().all()
    assert list(table["feature"]) == ["signal", "noise"]


# ---- stability and summary ------------------------------------------------------------------


def table_of(importances: list[list[float]], features: list[str] | None = None) -> pd.DataFrame:
    features = features or [f"f{i}" for i in range(len(importances[0]))]
    return pd.DataFrame([
        {"fold": k, "feature": f, "gain": math.nan, "permutation": v}
        for k, values in enumerate(importances, start=1)
        for f, v in zip(features, values)
    ])


def test_stability_is_one_for_identical_orders_and_negative_for_reversed_ones():
    same = importance_stability(table_of([[0.3, 0.2, 0.1, -0.01]] * 3))
    assert same["mean_spearman"] == pytest.approx(1.0) and same["min_spearman"] == pytest.approx(1.0)
    assert same["share_positive"] == pytest.approx(0.75)
    assert same["n_pairs"] == 3 and same["too_few_folds"] == 0.0
    reversed_ = importance_stability(table_of([[0.3, 0.2, 0.1, 0.05], [0.05, 0.1, 0.2, 0.3]]))
    assert reversed_["mean_spearman"] == pytest.approx(-1.0)
    mixed = importance_stability(table_of([[0.3, 0.2, 0.1], [0.3, 0.2, 0.1], [0.1, 0.2, 0.3]]))
    assert mixed["min_spearman"] == pytest.approx(-1.0) and mixed["mean_spearman"] == pytest.approx(-1 / 3)


def test_stability_uses_the_features_both_folds_share_and_is_nan_safe():
    table = pd.concat([
        table_of([[0.3, 0.2, 0.1]], ["a", "b", "c"]),
        table_of([[0.5, 0.4, math.nan, 9.0]], ["a", "b", "c", "only_here"]).assign(fold=2),
    ], ignore_index=True)
    result = importance_stability(table)
    assert result["mean_spearman"] == pytest.approx(1.0) and result["n_pairs"] == 1
    single = importance_stability(table_of([[0.3, 0.2, 0.1]]))
    assert math.isnan(single["mean_spearman"]) and math.isnan(single["min_spearman"])
    assert single["too_few_folds"] == 1.0 and single["n_folds"] == 1
    no_gain = importance_stability(table_of([[0.3, 0.2], [0.1, 0.2]]), column="gain")
    assert math.isnan(no_gain["mean_spearman"]) and math.isnan(no_gain["share_positive"])
    with pytest.raises(ValueError, match="column 'shap'"):
        importance_stability(table, column="shap")


def test_summary_sorts_by_mean_permutation_and_counts_folds():
    table = pd.concat([
        table_of([[0.1, 0.5, -0.1], [0.3, 0.4, 0.0]], ["a", "b", "c"]),
        table_of([[0.9]], ["d"]).assign(fold=1),
    ], ignore_index=True)
    summary = summarize_importances(table)
    assert list(summary.index) == ["d", "b", "a", "c"]
    assert summary.loc["a", "permutation_mean"] == pytest.approx(0.2)
    assert summary.loc["a", "permutation_std"] == pytest.approx(0.1)
    assert summary.loc["d", "folds_present"] == 1 and summary.loc["b", "folds_present"] == 2
    assert summary.loc["c", "positive_share"] == 0.0 and summary.loc["a", "positive_share"] == 1.0
    assert summary["permutation_mean"].is_monotonic_decreasing


def test_importance_stability_plot_is_a_png():
    summary = summarize_importances(table_of([[0.3, 0.2, 0.1, -0.02], [0.25, 0.1, 0.15, 0.01]]))
    png = importance_stability_plot({"xgboost": summary, "lstm": summary.iloc[:2], "gru": summary.iloc[:0]}, top=3)
    assert png.startswith(b"\x89PNG")
    assert importance_stability_plot({}).startswith(b"\x89PNG")
