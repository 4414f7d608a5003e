"""Leak-free training plumbing: target, holdout and early-stopping splits, CV loop, final fit."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.models.training import (
    cross_validate,
    design_matrix,
    early_stopping_split,
    excess_returns,
    fit_model,
    fold_assignments,
    folds_from_assignments,
    holdout_split,
    predict_rows,
    winsorize_bounds,
)
from plml_assets.lib.validation.splits import PurgedWalkForward

SMALL_XGB = {"n_estimators": 50, "max_depth": 3, "nthread": 1}
HORIZON = 5


def date_axis(frame: pd.DataFrame | pd.Series) -> pd.DatetimeIndex:
    return pd.DatetimeIndex(np.sort(frame.index.get_level_values("date").unique()))


@pytest.fixture(scope="module")
def real_labels(embedded_panel) -> pd.Series:
    """Five-day forward returns of the 20 real stocks over 2010-2012 (~750 dates)."""
    return forward_returns(embedded_panel.loc["2010-01-01":"2012-12-31"], horizon=HORIZON)


def synthetic_panel(n_dates: int, n_symbols: int, signal: float, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Features f1..f3 ~ N(0, 1) and a target y = signal * f1 + N(0, 0.5) noise."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2015-01-05", periods=n_dates, name="date")
    index = pd.MultiIndex.from_product([dates, [f"S{k}" for k in range(n_symbols)]], names=["date", "symbol"])
    X = pd.DataFrame(rng.normal(size=(len(index), 3)), index=index, columns=["f1", "f2", "f3"])
    y = pd.Series(signal * X["f1"].to_numpy() + rng.normal(scale=0.5, size=len(index)), index=index, name="y")
    return X, y


def walk_forward_folds(X: pd.DataFrame, n_splits: int = 3) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(PurgedWalkForward(n_splits=n_splits, horizon=HORIZON).split(X))


# ---- excess_returns -------------------------------------------------------------------------


def test_excess_returns_have_zero_mean_on_every_date(real_labels):
    excess = excess_returns(real_labels)
    assert excess.name == f"{real_labels.name}_excess"
    assert excess.index.equals(real_labels.index)
    per_date = excess.groupby(level="date").mean().dropna()
    assert len(per_date) > 700
    np.testing.assert_allclose(per_date.to_numpy(), 0.0, atol=1e-12)
    # The market move is really removed: raw per-date means are far from zero.
    assert real_labels.groupby(level="date").mean().abs().max() > 0.01


def test_excess_returns_keep_the_per_date_rank_order(real_labels):
    excess = excess_returns(real_labels)
    raw_rank = real_labels.groupby(level="date").rank()
    excess_rank = excess.groupby(level="date").rank()
    pd.testing.assert_series_equal(raw_rank, excess_rank, check_names=False)
    assert excess.isna().equals(real_labels.isna())


# ---- holdout_split --------------------------------------------------------------------------


@pytest.mark.parametrize("holdout_days", [20, 120])
def test_holdout_is_the_last_labelled_dates_and_training_is_purged(real_labels, holdout_days):
    split = holdout_split(real_labels, holdout_days=holdout_days, horizon=HORIZON)
    axis = date_axis(real_labels)
    labelled = date_axis(real_labels.dropna())
    assert labelled[-1] == axis[-HORIZON - 1]  # the last HORIZON dates have no known label yet
    assert split.holdout_dates.equals(labelled[-holdout_days:])

    start = axis.get_loc(split.holdout_dates[0])
    train_positions = axis.get_indexer(split.train_dates)
    assert (train_positions >= 0).all()
    assert (train_positions + HORIZON < start).all()
    assert train_positions.max() + HORIZON == start - 1  # nothing is purged needlessly
    assert split.purged_dates.equals(axis[start - HORIZON:start])
    # train, purge and holdout partition the labelled dates.
    assert split.train_dates.append(split.purged_dates).append(split.holdout_dates).equals(labelled)

    described = split.describe()
    assert described["holdout_dates"] == holdout_days and described["purged_dates"] == HORIZON
    assert described["holdout_start"] == str(split.holdout_dates[0].date())


@pytest.mark.parametrize(("n_dates", "holdout_days", "horizon"), [(60, 20, 5), (100, 40, 11), (10, 1, 1)])
def test_holdout_split_refuses_a_history_too_short(n_dates, holdout_days, horizon):
    dates = pd.bdate_range("2020-01-01", periods=n_dates + horizon, name="date")
    index = pd.MultiIndex.from_product([dates, ["A", "B", "C"]], names=["date", "symbol"])
    prices = pd.DataFrame({"close": np.linspace(10, 20, len(index))}, index=index)
    labels = forward_returns(prices, horizon=horizon)
    with pytest.raises(ValueError, match=rf"only {n_dates} dates have a known {horizon}-day label.*lower holdout_days"):
        holdout_split(labels, holdout_days=holdout_days, horizon=horizon)


def test_holdout_split_accepts_the_shortest_history_allowed():
    horizon, holdout_days = 5, 20
    n_labelled = holdout_days + horizon + 50
    dates = pd.bdate_range("2020-01-01", periods=n_labelled + horizon, name="date")
    index = pd.MultiIndex.from_product([dates, ["A", "B", "C"]], names=["date", "symbol"])
    prices = pd.DataFrame({"close": np.linspace(10, 20, len(index))}, index=index)
    split = holdout_split(forward_returns(prices, horizon=horizon), holdout_days=holdout_days, horizon=horizon)
    assert len(split.train_dates) == 50 and len(split.purged_dates) == horizon


@st.composite
def gappy_price_panels(draw: st.DrawFn) -> pd.DataFrame:
    """Random closes on a business-day calendar; symbols skip random dates, start late, end early."""
    n_dates = draw(st.integers(85, 160))
    n_symbols = draw(st.integers(2, 6))
    missing_share = draw(st.sampled_from([0.0, 0.05, 0.2, 0.4]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    present = rng.random((n_dates, n_symbols)) >= missing_share
    for k in range(n_symbols):
        if draw(st.booleans()):
            present[: draw(st.integers(0, n_dates // 3)), k] = False  # starts late
        if draw(st.booleans()):
            present[n_dates - draw(st.integers(0, 10)):, k] = False  # ends early
    present[np.arange(n_dates), rng.integers(0, n_symbols, n_dates)] = True  # every date trades
    dates = pd.bdate_range("2019-01-01", periods=n_dates, name="date")
    index = pd.MultiIndex.from_product([dates, [f"S{k}" for k in range(n_symbols)]], names=["date", "symbol"])
    close = np.exp(np.cumsum(rng.normal(0, 0.02, size=(n_dates, n_symbols)), axis=0)) * 50
    return pd.DataFrame({"close": close.ravel()}, index=index)[present.ravel()]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(prices=gappy_price_panels(), horizon=st.integers(1, 10), holdout_days=st.integers(1, 25))
def test_no_training_label_reads_a_close_on_or_after_the_holdout(prices, horizon, holdout_days):
    """End to end: labels -> holdout split. The close a training label was computed from (the
    symbol's own row `horizon` rows later) is dated strictly before the first holdout date."""
    labels = forward_returns(prices, horizon=horizon)
    n_labelled = labels.dropna().index.get_level_values("date").nunique()
    if n_labelled < holdout_days + horizon + 50:
        with pytest.raises(ValueError, match="lower holdout_days"):
            holdout_split(labels, holdout_days=holdout_days, horizon=horizon)
        return
    split = holdout_split(labels, holdout_days=holdout_days, horizon=horizon)
    assert len(split.train_dates) >= 50 and len(split.holdout_dates) == holdout_days

    row_dates = pd.Series(prices.index.get_level_values("date"), index=prices.index)
    future_close_date = row_dates.groupby(level="symbol").shift(-horizon)
    known = labels.notna()
    # The label really is built from that close (not some other row).
    symbol_close = prices["close"].groupby(level="symbol").shift(-horizon)
    np.testing.assert_allclose(labels[known], (symbol_close / prices["close"] - 1)[known], rtol=1e-12)

    in_training = known & prices.index.get_level_values("date").isin(split.train_dates)
    assert in_training.any()
    assert (future_close_date[in_training] < split.holdout_dates[0]).all()


# ---- early_stopping_split -------------------------------------------------------------------


@pytest.mark.parametrize(("n_dates", "horizon"), [(100, 5), (60, 0), (200, 10), (41, 3)])
def test_early_stopping_slice_is_the_purged_tail_of_the_block(n_dates, horizon):
    unique = pd.bdate_range("2018-01-01", periods=n_dates).to_numpy()
    dates = np.repeat(unique, 4)  # four symbols per date, as in a panel
    fit, stop = early_stopping_split(dates, horizon)
    assert fit.dtype == bool and stop.dtype == bool and len(fit) == len(dates)
    assert not (fit & stop).any()

    n_stop = max(int(round(n_dates * 0.15)), 1)
    np.testing.assert_array_equal(np.unique(dates[stop]), unique[-n_stop:])
    np.testing.assert_array_equal(np.unique(dates[fit]), unique[: n_dates - n_stop - horizon])
    purged = np.unique(dates[~fit & ~stop])
    np.testing.assert_array_equal(purged, unique[n_dates - n_stop - horizon: n_dates - n_stop])
    assert len(purged) == horizon
    # Every row of a date lands on one side.
    assert stop.sum() == 4 * n_stop


def test_early_stopping_split_honours_the_fraction():
    unique = pd.bdate_range("2018-01-01", periods=100).to_numpy()
    _, stop = early_stopping_split(unique, horizon=2, fraction=0.3)
    assert stop.sum() == 30 and stop[-30:].all()


@pytest.mark.parametrize(("n_dates", "horizon"), [(12, 5), (20, 9), (5, 0)])
def test_early_stopping_split_refuses_a_short_block(n_dates, horizon):
    dates = np.repeat(pd.bdate_range("2018-01-01", periods=n_dates).to_numpy(), 3)
    with pytest.raises(ValueError, match=rf"training block of {n_dates} dates is too short .*horizon {horizon}"):
        early_stopping_split(dates, horizon)


# ---- design_matrix and fold tables ----------------------------------------------------------


def test_design_matrix_keeps_labelled_rows_of_the_chosen_columns_and_dates():
    X, y = synthetic_panel(60, 4, signal=0.3)
    labels = y.copy()
    labels.iloc[::7] = np.nan
    dates = date_axis(X)[10:40]
    Xd, yd = design_matrix(X, labels, ["f3", "f1"], dates)
    keep = labels.notna() & X.index.get_level_values("date").isin(dates)
    assert list(Xd.columns) == ["f3", "f1"]
    assert Xd.index.equals(X.index[keep.to_numpy()])
    assert yd.index.equals(Xd.index) and yd.dtype == np.float64 and yd.notna().all()
    np.testing.assert_array_equal(yd.to_numpy(), labels[keep].to_numpy())
    # Without dates: every labelled row.
    Xall, _ = design_matrix(X, labels, ["f1"])
    assert len(Xall) == int(labels.notna().sum())


def test_design_matrix_names_missing_columns():
    X, y = synthetic_panel(20, 3, signal=0.3)
    with pytest.raises(ValueError, match=r"\['nope'\] not in the features"):
        design_matrix(X, y, ["f1", "nope"])


def test_fold_table_round_trips_to_the_splitters_row_positions():
    X, y = synthetic_panel(150, 5, signal=0.3)
    y.iloc[-5 * HORIZON:] = np.nan  # the panel's tail has no label yet, as with real labels
    Xd, _ = design_matrix(X, y, X.columns)
    splitter = PurgedWalkForward(n_splits=3, horizon=HORIZON, embargo=2)
    table = fold_assignments(splitter, Xd.index.get_level_values("date"), "walk_forward")
    assert list(table.columns) == ["scheme", "fold", "date", "role"]
    assert set(table["fold"]) == {1, 2, 3} and set(table["role"]) == {"train", "test"}
    assert (table["scheme"] == "walk_forward").all()
    folds = folds_from_assignments(Xd, table)
    expected = list(splitter.split(Xd))
    assert len(folds) == len(expected) == 3
    for (train, test), (exp_train, exp_test) in zip(folds, expected):
        np.testing.assert_array_equal(train, exp_train)
        np.testing.assert_array_equal(test, exp_test)
        assert len(train) and len(test)


# ---- cross_validate -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted() -> tuple[pd.DataFrame, pd.Series]:
    return synthetic_panel(400, 8, signal=0.3, seed=1)


def test_cross_validation_finds_a_planted_signal_on_every_fold(planted):
    X, y = planted
    folds = walk_forward_folds(X)
    logged: list[str] = []
    results, oof = cross_validate(SMALL_XGB, X, y, folds, HORIZON, gap_bound=0.5, log=logged.append)
    assert list(results["fold"]) == [1, 2, 3]
    assert (results["valid_rank_ic"] > 0.1).all(), results["valid_rank_ic"].tolist()
    assert (results["n_features"] == 3).all() and (results["features"] == "f1,f2,f3").all()
    assert len(logged) == 3 and logged[0].startswith("fold 1/3")
    for (_, test), (_, row) in zip(folds, results.iterrows()):
        assert row["test_rows"] == len(test)
        assert pd.Timestamp(row["train_end"]) < pd.Timestamp(row["test_start"])
    # Out-of-fold predictions exist exactly on the test rows.
    tested = np.zeros(len(X), dtype=bool)
    tested[np.concatenate([test for _, test in folds])] = True
    assert oof[tested].notna().all() and oof[~tested].isna().all()


def test_cross_validation_of_pure_noise_has_no_skill():
    X, _ = synthetic_panel(400, 8, signal=0.0, seed=2)
    y = pd.Series(np.random.default_rng(3).normal(size=len(X)), index=X.index)
    results, _ = cross_validate(SMALL_XGB, X, y, walk_forward_folds(X), HORIZON, gap_bound=0.5)
    mean_ic = results["valid_rank_ic"].mean()
    assert np.isfinite(mean_ic) and abs(mean_ic) < 0.1


def test_feature_selection_sees_only_the_folds_fitting_rows(planted):
    X, y = planted
    folds = walk_forward_folds(X)
    dates = X.index.get_level_values("date").to_numpy()
    seen: list[np.ndarray] = []

    def select(positions: np.ndarray) -> list[str]:
        seen.append(np.asarray(positions).copy())
        return ["f1", "f2"]

    results, _ = cross_validate(SMALL_XGB, X, y, folds, HORIZON, gap_bound=0.5, select=select)
    assert len(seen) == len(folds)
    assert (results["features"] == "f1,f2").all()
    for positions, (train, test) in zip(seen, folds):
        assert len(positions) > 0
        assert np.isin(positions, train).all()
        assert not np.isin(positions, test).any()
        block = np.unique(dates[train])
        stop_start = block[-max(int(round(len(block) * 0.15)), 1)]
        assert dates[positions].max() < stop_start
        # ... and HORIZON dates are purged before the early-stopping slice.
        assert (np.searchsorted(block, dates[positions]) + HORIZON < np.searchsorted(block, stop_start)).all()


def test_cross_validation_names_an_empty_fold(planted):
    X, y = planted
    folds = walk_forward_folds(X, n_splits=2)
    folds[1] = (folds[1][0], np.array([], dtype=np.int64))
    with pytest.raises(ValueError, match=r"fold 2/2 has \d+ training and 0 test rows"):
        cross_validate(SMALL_XGB, X, y, folds, HORIZON, gap_bound=0.5)


def test_cross_validation_names_a_fold_too_short_for_early_stopping(planted):
    X, y = planted
    dates = date_axis(X)
    train = np.flatnonzero(X.index.get_level_values("date").isin(dates[:12]))
    test = np.flatnonzero(X.index.get_level_values("date").isin(dates[30:40]))
    with pytest.raises(ValueError, match=r"fold 1/1: training block of 12 dates is too short"):
        cross_validate(SMALL_XGB, X, y, [(train, test)], HORIZON, gap_bound=0.5)


# ---- fit_model ------------------------------------------------------------------------------

TINY = {
    "xgboost": SMALL_XGB,
    "lightgbm": {"n_estimators": 30, "num_leaves": 7, "min_child_samples": 5},
    "lstm": {"window": 5, "hidden_size": 8, "max_epochs": 2, "batch_size": 256},
    "gru": {"window": 5, "hidden_size": 8, "max_epochs": 2, "batch_size": 256},
}


@pytest.mark.parametrize("family", sorted(TINY))
def test_fit_model_clips_the_target_with_fitting_rows_only(family):
    X, y = synthetic_panel(200, 6, signal=0.3, seed=4)
    dates = X.index.get_level_values("date").to_numpy()
    expected_fit, stop = early_stopping_split(dates, HORIZON)
    y = y.copy()
    y[stop] = 100.0  # outliers only in the early-stopping slice
    y[~expected_fit & ~stop] = -100.0  # ... and in the purge gap

    model, fit_mask = fit_model(family, TINY[family], X, y, HORIZON)
    assert model.family == family
    np.testing.assert_array_equal(fit_mask, expected_fit)
    lo, hi = model.target_clip_
    assert (lo, hi) == winsorize_bounds(y[expected_fit])
    assert -5 < lo < 0 < hi < 5  # the +/-100 rows did not move the bounds
    assert (lo, hi) != winsorize_bounds(y)
    predictions = model.predict(X)
    assert np.isfinite(predictions).all()
    assert np.abs(predictions).max() < 5  # trained on clipped targets, not on the +/-100 rows


def test_predict_rows_gives_sequence_models_their_history_and_trees_the_rows_alone():
    X, y = synthetic_panel(120, 5, signal=0.3, seed=2)
    rows = np.flatnonzero(X.index.get_level_values("date").isin(date_axis(X)[80:90]))
    for family in ("xgboost", "gru"):
        model, _ = fit_model(family, TINY[family], X, y, HORIZON)
        on_everything = model.predict(X)[rows]
        np.testing.assert_allclose(predict_rows(model, X, rows), on_everything, rtol=1e-6, atol=1e-9)
    # Without the history rows the first dates of the block would see zero padding instead.
    alone = model.predict(X.iloc[rows])
    assert not np.allclose(alone, on_everything)
    assert model.lookback_dates == TINY["gru"]["window"] - 1


@pytest.mark.parametrize("family", ["lightgbm", "lstm"])
def test_cross_validate_runs_any_family_on_per_fold_columns(family):
    X, y = synthetic_panel(200, 6, signal=0.5, seed=3)
    X = X.assign(noise=np.random.default_rng(0).normal(size=len(X)))
    folds = walk_forward_folds(X)
    columns = [["f1", "noise"]] * len(folds)
    params = {**TINY[family], "max_epochs": 15, "lr": 0.01, "batch_size": 64} if family == "lstm" else TINY[family]
    results, oof = cross_validate(params, X, y, folds, HORIZON, gap_bound=0.5, family=family, fold_columns=columns)
    assert (results["features"] == "f1,noise").all() and (results["n_features"] == 2).all()
    assert results["valid_rank_ic"].mean() > 0.2  # the planted f1 signal is found by every family
    assert oof.notna().sum() == sum(len(t) for _, t in folds)
    with pytest.raises(ValueError, match="2 fold column lists for 3 folds"):
        cross_validate(TINY[family], X, y, folds, HORIZON, gap_bound=0.5, family=family, fold_columns=columns[:2])
