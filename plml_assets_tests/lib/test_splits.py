"""Purged date splitters: leakage invariants (property-based), sklearn compatibility, validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, cross_val_score

from plml_assets.lib.splits import PurgedKFold, PurgedWalkForward

PROPERTY_SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make_panel(n_dates: int, n_symbols: int, missing_share: float = 0.0, seed: int = 0) -> pd.DataFrame:
    """A sorted (date, symbol) panel; some symbols missing on some dates, every date keeps a row."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=n_dates, name="date")
    symbols = [f"S{k}" for k in range(n_symbols)]
    present = rng.random((n_dates, n_symbols)) >= missing_share
    present[np.arange(n_dates), rng.integers(0, n_symbols, n_dates)] = True
    index = pd.MultiIndex.from_product([dates, symbols], names=["date", "symbol"])[present.ravel()]
    return pd.DataFrame({"x1": rng.normal(size=len(index)), "x2": rng.normal(size=len(index))}, index=index)


@st.composite
def panels(draw: st.DrawFn) -> pd.DataFrame:
    return make_panel(
        n_dates=draw(st.integers(30, 300)),
        n_symbols=draw(st.integers(1, 8)),
        missing_share=draw(st.sampled_from([0.0, 0.2, 0.5])),
        seed=draw(st.integers(0, 2**16)),
    )


def folds_or_skip(splitter, panel: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    """All folds; configurations with too few dates must fail with ValueError and are skipped."""
    try:
        return list(splitter.split(panel))
    except ValueError:
        assume(False)
        raise  # unreachable: assume(False) aborts the example


def date_codes(panel: pd.DataFrame) -> np.ndarray:
    return pd.factorize(panel.index.get_level_values("date"), sort=True)[0]


def check_common_invariants(splitter, panel, folds, horizon: int, embargo: int, gap_before: int) -> None:
    codes = date_codes(panel)
    n_rows = len(panel)
    assert len(folds) == splitter.get_n_splits(panel)
    for train, test in folds:
        assert train.dtype.kind == "i" and test.dtype.kind == "i"
        assert len(train) > 0 and len(test) > 0
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
        assert train.min() >= 0 and max(train.max(), test.max()) < n_rows
        # (b) disjoint, and a date's rows all sit on one side: a side is exactly the rows of its dates.
        assert np.intersect1d(train, test).size == 0
        train_dates, test_dates = np.unique(codes[train]), np.unique(codes[test])
        np.testing.assert_array_equal(train, np.flatnonzero(np.isin(codes, train_dates)))
        np.testing.assert_array_equal(test, np.flatnonzero(np.isin(codes, test_dates)))
        # (a) no training label window (i, i + horizon] holds a test date ...
        first_test_after = test_dates[np.searchsorted(test_dates, train_dates, side="right").clip(max=len(test_dates) - 1)]
        leaks = (first_test_after > train_dates) & (first_test_after <= train_dates + horizon)
        assert not leaks.any()
        test_start, test_end = test_dates.min(), test_dates.max()
        # ... test blocks are contiguous, training before them respects the purge (+ gap) ...
        np.testing.assert_array_equal(test_dates, np.arange(test_start, test_end + 1))
        before = train_dates[train_dates < test_start]
        assert np.all(before + horizon + gap_before < test_start)
        # ... and training after them waits for the last test label plus the embargo.
        after = train_dates[train_dates > test_end]
        assert np.all(after > test_end + horizon + embargo)


@PROPERTY_SETTINGS
@given(panel=panels(), horizon=st.integers(0, 10), embargo=st.integers(0, 10), n_splits=st.integers(2, 6))
def test_purged_kfold_invariants(panel, horizon, embargo, n_splits):
    splitter = PurgedKFold(n_splits=n_splits, horizon=horizon, embargo=embargo)
    folds = folds_or_skip(splitter, panel)
    check_common_invariants(splitter, panel, folds, horizon, embargo, gap_before=0)

    codes = date_codes(panel)
    n_dates = codes.max() + 1
    test_dates = [np.unique(codes[test]) for _, test in folds]
    # (c) every date is tested exactly once, blocks in time order.
    np.testing.assert_array_equal(np.concatenate(test_dates), np.arange(n_dates))
    # Purging is not over-eager: training is exactly the dates the rule allows.
    positions = np.arange(n_dates)
    for (train, _), tested in zip(folds, test_dates):
        allowed = (positions + horizon < tested[0]) | (positions > tested[-1] + horizon + embargo)
        np.testing.assert_array_equal(np.unique(codes[train]), positions[allowed])
    # (d) deterministic.
    for (train_a, test_a), (train_b, test_b) in zip(folds, splitter.split(panel)):
        np.testing.assert_array_equal(train_a, train_b)
        np.testing.assert_array_equal(test_a, test_b)


@PROPERTY_SETTINGS
@given(
    panel=panels(),
    horizon=st.integers(0, 10),
    embargo=st.integers(0, 10),
    n_splits=st.integers(2, 6),
    test_size=st.none() | st.integers(1, 40),
    min_train_size=st.none() | st.integers(1, 60),
    max_train_size=st.none() | st.integers(60, 200),
)
def test_purged_walk_forward_invariants(panel, horizon, embargo, n_splits, test_size, min_train_size, max_train_size):
    splitter = PurgedWalkForward(
        n_splits=n_splits,
        horizon=horizon,
        embargo=embargo,
        test_size=test_size,
        min_train_size=min_train_size,
        max_train_size=max_train_size,
    )
    folds = folds_or_skip(splitter, panel)
    check_common_invariants(splitter, panel, folds, horizon, embargo, gap_before=embargo)

    codes = date_codes(panel)
    n_dates = codes.max() + 1
    previous_test_end = -1
    for train, test in folds:
        train_dates, test_dates = np.unique(codes[train]), np.unique(codes[test])
        # (c) test blocks move forward in time and come after all their training dates.
        assert test_dates[0] > previous_test_end
        assert train_dates.max() < test_dates.min()
        previous_test_end = test_dates[-1]
        # Training is the contiguous purged window right before the test block, capped/floored as asked.
        np.testing.assert_array_equal(train_dates, np.arange(train_dates[0], train_dates[-1] + 1))
        assert train_dates[-1] == test_dates[0] - horizon - embargo - 1
        if max_train_size is not None:
            assert len(train_dates) <= max_train_size
        else:
            assert train_dates[0] == 0
        if min_train_size is not None:
            assert len(train_dates) >= min_train_size
        if test_size is not None:
            assert len(test_dates) == test_size
    assert previous_test_end == n_dates - 1  # test blocks end at the end of the date axis
    # (d) deterministic.
    for (train_a, test_a), (train_b, test_b) in zip(folds, splitter.split(panel)):
        np.testing.assert_array_equal(train_a, train_b)
        np.testing.assert_array_equal(test_a, test_b)


def test_walk_forward_default_test_size_reserves_the_purge_gap():
    # 100 dates, horizon 5, embargo 1: (100 - 6) // (4 + 1) = 18 dates per test block.
    splitter = PurgedWalkForward(n_splits=4, horizon=5, embargo=1)
    dates = pd.bdate_range("2022-01-03", periods=100)
    folds = splitter.split_dates(dates)
    assert [len(test) for _, test in folds] == [18] * 4
    assert folds[0][1][0] == dates[100 - 4 * 18]
    assert [len(train) for train, _ in folds] == [22, 40, 58, 76]
    # With min_train_size the first window has exactly that length (plus the remainder).
    folds = PurgedWalkForward(n_splits=4, horizon=5, embargo=1, min_train_size=30).split_dates(dates)
    assert [len(test) for _, test in folds] == [16] * 4  # (100 - 6 - 30) // 4
    assert len(folds[0][0]) == 30


def test_split_dates_matches_row_split_and_returns_unique_dates():
    panel = make_panel(60, 4, missing_share=0.3, seed=3)
    dates = panel.index.get_level_values("date")
    splitter = PurgedKFold(n_splits=3, horizon=2, embargo=2)
    for (train_dates, test_dates), (train, test) in zip(splitter.split_dates(dates), splitter.split(panel)):
        np.testing.assert_array_equal(train_dates, np.unique(dates[train]))
        np.testing.assert_array_equal(test_dates, np.unique(dates[test]))


def test_unsorted_rows_with_groups_split_by_date():
    panel = make_panel(40, 3, seed=1)
    shuffled = panel.sample(frac=1.0, random_state=0)
    dates = shuffled.index.get_level_values("date")
    splitter = PurgedKFold(n_splits=4, horizon=1, embargo=1)
    from_groups = list(splitter.split(shuffled.to_numpy(), groups=dates))
    from_index = list(splitter.split(shuffled))
    for (train, test), (train_ix, test_ix) in zip(from_groups, from_index):
        assert set(dates[train]).isdisjoint(set(dates[test]))
        np.testing.assert_array_equal(train, train_ix)
        np.testing.assert_array_equal(test, test_ix)
    assert sum(len(np.unique(dates[test])) for _, test in from_groups) == 40


@pytest.mark.parametrize("splitter", [PurgedKFold(n_splits=4, horizon=3, embargo=2), PurgedWalkForward(n_splits=3, horizon=3)])
def test_sklearn_cross_val_score_and_grid_search(splitter):
    panel = make_panel(80, 5, missing_share=0.2, seed=7)
    y = panel["x1"] * 0.5 + np.random.default_rng(0).normal(scale=0.1, size=len(panel))
    dates = panel.index.get_level_values("date")
    scores = cross_val_score(Ridge(), panel.to_numpy(), y.to_numpy(), cv=splitter, groups=dates)
    assert len(scores) == splitter.get_n_splits() == len(list(splitter.split(panel)))
    assert np.all(np.isfinite(scores))
    # Dates straight from the DataFrame index, no groups.
    assert len(cross_val_score(Ridge(), panel, y, cv=splitter)) == splitter.get_n_splits()
    search = GridSearchCV(Ridge(), {"alpha": [0.1, 1.0]}, cv=splitter).fit(panel, y, groups=dates)
    assert search.best_params_["alpha"] in (0.1, 1.0)


@pytest.mark.parametrize(
    ("factory", "parameter"),
    [
        (lambda: PurgedKFold(n_splits=1), "n_splits"),
        (lambda: PurgedKFold(horizon=-1), "horizon"),
        (lambda: PurgedKFold(embargo=-1), "embargo"),
        (lambda: PurgedWalkForward(n_splits=1), "n_splits"),
        (lambda: PurgedWalkForward(horizon=-2), "horizon"),
        (lambda: PurgedWalkForward(embargo=-1), "embargo"),
        (lambda: PurgedWalkForward(test_size=0), "test_size"),
        (lambda: PurgedWalkForward(n_splits=2.5), "n_splits"),
        (lambda: PurgedWalkForward(min_train_size=50, max_train_size=10), "max_train_size"),
    ],
)
def test_invalid_parameters_name_the_parameter(factory, parameter):
    with pytest.raises(ValueError, match=parameter):
        factory()


def test_too_few_dates_says_how_many_exist_and_are_needed():
    panel = make_panel(10, 2)
    with pytest.raises(ValueError, match=r"10 unique dates, need at least 12"):
        list(PurgedKFold(n_splits=12, horizon=0, embargo=0).split(panel))
    with pytest.raises(ValueError, match=r"10 unique dates, need at least 11"):
        PurgedWalkForward(n_splits=5, horizon=5).split(panel)  # raises on the call, before iterating


def test_empty_training_fold_raises():
    panel = make_panel(10, 2)
    with pytest.raises(ValueError, match="no training dates"):
        PurgedKFold(n_splits=2, horizon=5, embargo=5).split(panel)
    with pytest.raises(ValueError, match=r"10 unique dates, need at least 11"):
        PurgedWalkForward(n_splits=2, horizon=0, test_size=2, min_train_size=7).split(make_panel(10, 1))


def test_missing_dates_are_a_clear_error():
    with pytest.raises(ValueError, match="groups=<one date per row>"):
        PurgedKFold().split(np.zeros((20, 2)))
    with pytest.raises(ValueError, match="groups has 3 entries but X has 20 rows"):
        PurgedKFold().split(np.zeros((20, 2)), groups=["2020-01-01"] * 3)


def test_describe_is_the_parameters():
    assert PurgedKFold(n_splits=3, horizon=2, embargo=1).describe() == {
        "splitter": "PurgedKFold",
        "n_splits": 3,
        "horizon": 2,
        "embargo": 1,
    }
    assert PurgedWalkForward(max_train_size=100).describe() == {
        "splitter": "PurgedWalkForward",
        "n_splits": 5,
        "horizon": 5,
        "embargo": 0,
        "test_size": None,
        "min_train_size": None,
        "max_train_size": 100,
    }
