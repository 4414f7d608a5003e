"""Prediction metrics: hand-checked values on tiny inputs, NaN handling, fallbacks, gap flags."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plml_assets.lib.validation.metrics import evaluate_predictions, group_ranks, overfitting_gap, per_date_ic, summarize_folds

EXPECTED_KEYS = {"ic", "rank_ic", "ic_ir", "rmse", "directional_accuracy", "n_rows", "n_dates"}


def tiny_panel() -> tuple[np.ndarray, np.ndarray]:
    """Two dates, four symbols each."""
    dates = np.repeat(np.array(["2024-01-02", "2024-01-03"], dtype="datetime64[ns]"), 4)
    y_true = np.array([0.01, -0.02, 0.03, 0.00, -0.01, 0.02, 0.05, -0.04])
    return dates, y_true


@pytest.mark.parametrize("method", ["pearson", "spearman"])
def test_perfect_and_reversed_predictors(method):
    dates, y_true = tiny_panel()
    perfect = per_date_ic(y_true, 3 * y_true + 1, dates, method=method)
    reversed_ = per_date_ic(y_true, -y_true, dates, method=method)
    np.testing.assert_allclose(perfect.to_numpy(), [1.0, 1.0])
    np.testing.assert_allclose(reversed_.to_numpy(), [-1.0, -1.0])
    assert perfect.index.name == "date"
    assert list(perfect.index) == list(pd.to_datetime(["2024-01-02", "2024-01-03"]))


def test_per_date_ic_matches_pandas_corr_per_date():
    rng = np.random.default_rng(0)
    dates = np.repeat(np.arange(20), 7)
    y_true = rng.normal(size=len(dates))
    y_pred = 0.3 * y_true + rng.normal(size=len(dates))
    frame = pd.DataFrame({"t": y_true, "p": y_pred, "d": dates})
    for method in ("pearson", "spearman"):
        expected = frame.groupby("d")[["t", "p"]].apply(lambda g, m=method: g["t"].corr(g["p"], method=m))
        np.testing.assert_allclose(per_date_ic(y_true, y_pred, dates, method=method).to_numpy(), expected.to_numpy())


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(st.sampled_from([0.0, 1.0, -1.0, 2.5]), st.floats(-5, 5), st.just(math.nan)), min_size=1, max_size=80),
    n_groups=st.integers(1, 6),
    seed=st.integers(0, 10_000),
)
def test_group_ranks_equal_pandas_groupby_rank_count_and_nunique(values, n_groups, seed):
    """The lexsort-free ranking behind every per-date IC against pandas' groupby, ties, NaN and
    empty groups included."""
    v = np.asarray(values, dtype=float)
    codes = np.random.default_rng(seed).integers(0, n_groups, len(v))
    ranks, count, distinct = group_ranks(v, codes, n_groups)
    grouped = pd.Series(v).groupby(codes)
    np.testing.assert_array_equal(np.isnan(ranks), np.isnan(v))
    np.testing.assert_allclose(ranks[~np.isnan(v)], grouped.rank().to_numpy()[~np.isnan(v)])
    np.testing.assert_array_equal(count, grouped.count().reindex(range(n_groups), fill_value=0).to_numpy())
    np.testing.assert_array_equal(distinct, grouped.nunique().reindex(range(n_groups), fill_value=0).to_numpy())


def test_per_date_rank_ic_equals_scipy_spearman_date_by_date_with_ties():
    from scipy.stats import spearmanr

    rng = np.random.default_rng(3)
    dates = np.repeat(pd.date_range("2024-01-01", periods=40).to_numpy(), 25)
    y_true = np.round(rng.normal(size=len(dates)), 1)  # many ties
    y_pred = np.round(0.2 * y_true + rng.normal(size=len(dates)), 1)
    got = per_date_ic(y_true, y_pred, dates, method="spearman")
    expected = [spearmanr(y_true[dates == d], y_pred[dates == d]).statistic for d in np.unique(dates)]
    np.testing.assert_allclose(got.to_numpy(), expected, atol=1e-12)


def test_spearman_is_rank_based():
    dates = np.zeros(5)
    y_true = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y_pred = np.exp(np.array([1.0, 2.0, 3.0, 4.0, 50.0]))  # monotone, far from linear
    assert per_date_ic(y_true, y_pred, dates, method="spearman").iloc[0] == pytest.approx(1.0)
    assert per_date_ic(y_true, y_pred, dates, method="pearson").iloc[0] < 0.9


def test_dates_with_too_few_pairs_or_no_variance_are_skipped():
    dates = np.array([1, 1, 1, 2, 2, 3, 3, 3, 4, 4, 4])
    y_true = np.array([1, 2, 3, 1, 2, 1, 2, 3, 0.1, 0.1, 0.1])
    y_pred = np.array([1, 2, 3, 1, 2, 5, 5, 5, 1, 2, 3], dtype=float)
    # date 2: two pairs; date 3: constant prediction; date 4: constant (0.1) outcome.
    ic = per_date_ic(y_true, y_pred, dates)
    assert list(ic.index) == [1]
    assert ic.iloc[0] == pytest.approx(1.0)


def test_nan_rows_are_dropped():
    dates, y_true = tiny_panel()
    y_pred = y_true.copy()
    y_true_nan = y_true.copy()
    y_true_nan[0] = np.nan
    y_pred[5] = np.nan
    metrics = evaluate_predictions(y_true_nan, y_pred, dates)
    assert metrics["n_rows"] == 6 and metrics["n_dates"] == 2
    assert metrics["ic"] == pytest.approx(1.0)
    assert metrics["rmse"] == pytest.approx(0.0)
    assert per_date_ic(y_true_nan, y_pred, dates).notna().all()


def test_evaluate_predictions_hand_checked_values():
    dates, y_true = tiny_panel()
    y_pred = np.array([0.02, -0.01, 0.01, 0.01, 0.01, 0.01, 0.03, -0.02])
    metrics = evaluate_predictions(y_true, y_pred, dates)
    assert set(metrics) == EXPECTED_KEYS
    assert metrics["rmse"] == pytest.approx(np.sqrt(np.mean((y_pred - y_true) ** 2)))
    # Rows with nonzero truth: 7; signs agree on all but row 4 (true -0.01, pred +0.01).
    assert metrics["directional_accuracy"] == pytest.approx(6 / 7)
    frame = pd.DataFrame({"t": y_true, "p": y_pred, "d": dates})
    pearson = frame.groupby("d")[["t", "p"]].apply(lambda g: g["t"].corr(g["p"]))
    spearman = frame.groupby("d")[["t", "p"]].apply(lambda g: g["t"].corr(g["p"], method="spearman"))
    assert metrics["ic"] == pytest.approx(pearson.mean())
    assert metrics["rank_ic"] == pytest.approx(spearman.mean())
    assert metrics["ic_ir"] == pytest.approx(spearman.mean() / spearman.std(ddof=1))
    assert metrics["n_rows"] == 8 and metrics["n_dates"] == 2


def test_perfect_predictor_has_undefined_ic_ir_not_infinite():
    dates, y_true = tiny_panel()
    metrics = evaluate_predictions(y_true, y_true, dates)
    assert metrics["rank_ic"] == pytest.approx(1.0)
    assert math.isnan(metrics["ic_ir"])
    assert metrics["directional_accuracy"] == 1.0


def test_single_symbol_falls_back_to_time_series_correlation():
    dates = pd.bdate_range("2024-01-01", periods=30)
    rng = np.random.default_rng(1)
    y_true = rng.normal(size=30)
    y_pred = y_true + rng.normal(scale=0.5, size=30)
    metrics = evaluate_predictions(y_true, y_pred, dates)
    assert metrics["ic"] == pytest.approx(np.corrcoef(y_true, y_pred)[0, 1])
    assert metrics["rank_ic"] == pytest.approx(pd.Series(y_true).corr(pd.Series(y_pred), method="spearman"))
    assert math.isnan(metrics["ic_ir"])
    assert metrics["n_rows"] == metrics["n_dates"] == 30
    assert per_date_ic(y_true, y_pred, dates).empty  # the cross-section alone is undefined


def test_dates_default_to_the_date_index_level():
    dates, y_true = tiny_panel()
    index = pd.MultiIndex.from_arrays([dates, list("ABCD") * 2], names=["date", "symbol"])
    series = pd.Series(y_true, index=index)
    assert evaluate_predictions(series, -series, None)["ic"] == pytest.approx(-1.0)
    with pytest.raises(ValueError, match="same length"):
        evaluate_predictions(y_true, y_true[:-1], dates)
    with pytest.raises(ValueError, match="method"):
        per_date_ic(y_true, y_true, dates, method="kendall")


def test_all_nan_gives_nan_metrics_not_errors():
    metrics = evaluate_predictions([np.nan, 1.0], [1.0, np.nan], ["d1", "d2"])
    assert metrics["n_rows"] == 0 and metrics["n_dates"] == 0
    assert all(math.isnan(metrics[key]) for key in ("ic", "rank_ic", "ic_ir", "rmse", "directional_accuracy"))


@settings(max_examples=60, deadline=None)
@given(
    n_dates=st.integers(1, 15),
    n_symbols=st.integers(3, 8),
    seed=st.integers(0, 2**16),
)
def test_ic_bounds_and_sign_symmetry(n_dates, n_symbols, seed):
    rng = np.random.default_rng(seed)
    dates = np.repeat(np.arange(n_dates), n_symbols)
    y_true = rng.normal(size=len(dates))
    y_pred = rng.normal(size=len(dates))
    for method in ("pearson", "spearman"):
        ic = per_date_ic(y_true, y_pred, dates, method=method)
        assert ((ic >= -1) & (ic <= 1)).all()
        np.testing.assert_allclose(per_date_ic(y_true, -y_pred, dates, method=method), -ic, atol=1e-12)


@pytest.mark.parametrize(
    ("metric", "train_value", "valid_value", "gap", "flag"),
    [
        ("rank_ic", 0.30, 0.05, 0.25, True),  # much worse out of sample
        ("rank_ic", 0.08, 0.06, 0.02, False),
        ("rank_ic", 0.05, 0.09, -0.04, False),  # better out of sample
        ("rmse", 0.010, 0.200, 0.19, True),  # lower is better: valid - train
        ("rmse", 0.020, 0.021, 0.001, False),
    ],
)
def test_overfitting_gap_direction_and_flag(metric, train_value, valid_value, gap, flag):
    result = overfitting_gap({metric: train_value}, {metric: valid_value}, metric=metric, bound=0.1)
    assert result["gap"] == pytest.approx(gap)
    assert result["flag"] is flag
    assert result["ratio"] == pytest.approx(valid_value / train_value)
    assert result["metric"] == metric and result["bound"] == 0.1


def test_overfitting_gap_edge_cases():
    assert math.isnan(overfitting_gap({"ic": -0.02}, {"ic": 0.01}, metric="ic")["ratio"])  # no meaningful ratio
    undefined = overfitting_gap({"rank_ic": np.nan}, {"rank_ic": 0.1})
    assert math.isnan(undefined["gap"]) and undefined["flag"] is False
    with pytest.raises(ValueError, match="'ic_ir' missing from the valid"):
        overfitting_gap({"ic_ir": 1.0}, {"ic": 0.1}, metric="ic_ir")


def test_summarize_folds():
    folds = [
        {"ic": 0.1, "rmse": 1.0, "n_rows": 10, "ic_ir": np.nan, "flag": True, "name": "a"},
        {"ic": 0.3, "rmse": 3.0, "n_rows": 30, "ic_ir": 2.0, "flag": False, "name": "b"},
    ]
    summary = summarize_folds(folds)
    assert summary == pytest.approx(
        {
            "ic_mean": 0.2, "ic_std": 0.1,
            "rmse_mean": 2.0, "rmse_std": 1.0,
            "n_rows_mean": 20.0, "n_rows_std": 10.0,
            "ic_ir_mean": 2.0, "ic_ir_std": 0.0,
        }
    )
    assert summarize_folds([]) == {}
    summary_nan = summarize_folds([{"ic_ir": np.nan}, {"ic_ir": np.nan}])
    assert math.isnan(summary_nan["ic_ir_mean"]) and math.isnan(summary_nan["ic_ir_std"])
