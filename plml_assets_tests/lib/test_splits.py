"""Purged date splitters: leakage invariants (property-based), sklearn compatibility, validation."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from sklearn.linear_model import Ridge
from sklearn.model_selection import GridSearchCV, cross_val_score

from plml_assets.lib.validation.splits import CombinatorialPurgedCV, PurgedKFold, PurgedWalkForward, WalkForward

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


# --- WalkForward and CombinatorialPurgedCV -----------------------------------------------------------

NEW_PROPERTY_SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def check_no_leak(train_dates: np.ndarray, test_dates: np.ndarray, horizon: int, embargo: int, gap_before: int) -> None:
    """No training label window (i, i + horizon] (+ gap_before) reaches a test date, and no training date
    lies in (t, t + horizon + embargo] after any test date t: holds for test sets made of several blocks."""
    assert np.intersect1d(train_dates, test_dates).size == 0
    after = np.searchsorted(test_dates, train_dates, side="right")
    n_test = len(test_dates)
    next_test = np.where(after < n_test, test_dates[after.clip(max=n_test - 1)], np.iinfo(np.int64).max)
    assert np.all(next_test > train_dates + horizon + gap_before)
    previous_test = np.where(after > 0, test_dates[(after - 1).clip(min=0)], np.iinfo(np.int64).min)
    assert np.all(previous_test < train_dates - horizon - embargo)


def check_row_folds(splitter, panel: pd.DataFrame, folds) -> list[tuple[np.ndarray, np.ndarray]]:
    """Row-level contract: sorted disjoint int positions, a date's rows all on one side; returns date folds."""
    codes = date_codes(panel)
    n_splits = splitter.get_n_splits(groups=panel.index.get_level_values("date"))
    assert len(folds) == splitter.get_n_splits(panel) == n_splits
    date_folds = []
    for train, test in folds:
        assert train.dtype == np.int64 and test.dtype == np.int64
        assert len(train) > 0 and len(test) > 0
        assert np.all(np.diff(train) > 0) and np.all(np.diff(test) > 0)
        assert np.intersect1d(train, test).size == 0
        train_dates, test_dates = np.unique(codes[train]), np.unique(codes[test])
        np.testing.assert_array_equal(train, np.flatnonzero(np.isin(codes, train_dates)))
        np.testing.assert_array_equal(test, np.flatnonzero(np.isin(codes, test_dates)))
        date_folds.append((train_dates, test_dates))
    return date_folds


def assert_same_folds(folds_a, folds_b) -> None:
    folds_a, folds_b = list(folds_a), list(folds_b)
    assert len(folds_a) == len(folds_b)
    for (train_a, test_a), (train_b, test_b) in zip(folds_a, folds_b):
        np.testing.assert_array_equal(train_a, train_b)
        np.testing.assert_array_equal(test_a, test_b)


@st.composite
def walk_forwards(draw: st.DrawFn) -> WalkForward:
    expanding = draw(st.booleans())
    train_size = draw(st.none() | st.integers(1, 80)) if expanding else draw(st.integers(1, 80))
    min_train_size = draw(st.none() | st.integers(1, train_size or 60))
    return WalkForward(
        test_size=draw(st.integers(1, 40)),
        train_size=train_size,
        step=draw(st.none() | st.integers(1, 40)),
        horizon=draw(st.integers(0, 10)),
        embargo=draw(st.integers(0, 10)),
        expanding=expanding,
        min_train_size=min_train_size,
    )


@NEW_PROPERTY_SETTINGS
@given(panel=panels(), splitter=walk_forwards())
def test_walk_forward_invariants(panel, splitter):
    folds = folds_or_skip(splitter, panel)
    date_folds = check_row_folds(splitter, panel, folds)
    n_dates = date_codes(panel).max() + 1
    h, e, step = splitter.horizon, splitter.embargo, splitter.step or splitter.test_size
    first_train = splitter.min_train_size or splitter.train_size or splitter.test_size
    expected_starts = list(range(first_train + h + e, n_dates - splitter.test_size + 1, step))
    assert [test[0] for _, test in date_folds] == expected_starts  # every full block, none more
    for train_dates, test_dates in date_folds:
        check_no_leak(train_dates, test_dates, h, e, gap_before=e)
        np.testing.assert_array_equal(test_dates, np.arange(test_dates[0], test_dates[0] + splitter.test_size))
        # Training is exactly the purged past: all of it, or its last train_size dates.
        stop = test_dates[0] - h - e
        start = 0 if splitter.expanding else max(0, stop - splitter.train_size)
        np.testing.assert_array_equal(train_dates, np.arange(start, stop))
        assert len(train_dates) >= first_train
    assert_same_folds(folds, splitter.split(panel))  # deterministic


@st.composite
def cpcv_splitters(draw: st.DrawFn) -> CombinatorialPurgedCV:
    n_groups = draw(st.integers(2, 8))
    return CombinatorialPurgedCV(
        n_groups=n_groups,
        n_test_groups=draw(st.integers(1, n_groups - 1)),
        horizon=draw(st.integers(0, 10)),
        embargo=draw(st.integers(0, 10)),
    )


@NEW_PROPERTY_SETTINGS
@given(panel=panels(), splitter=cpcv_splitters())
def test_combinatorial_purged_cv_invariants(panel, splitter):
    folds = folds_or_skip(splitter, panel)
    date_folds = check_row_folds(splitter, panel, folds)
    n_dates = date_codes(panel).max() + 1
    n, k, h, e = splitter.n_groups, splitter.n_test_groups, splitter.horizon, splitter.embargo
    assert len(folds) == math.comb(n, k)
    groups = np.array_split(np.arange(n_dates), n)
    coverage = np.zeros(n_dates, dtype=int)
    positions = np.arange(n_dates)
    for (train_dates, test_dates), tested in zip(date_folds, itertools.combinations(range(n), k)):
        np.testing.assert_array_equal(test_dates, np.concatenate([groups[g] for g in tested]))
        coverage[test_dates] += 1
        check_no_leak(train_dates, test_dates, h, e, gap_before=0)
        # Not over-eager: every date outside the test groups and their purge/embargo zones is trained on.
        banned = np.zeros(n_dates, dtype=bool)
        for t in test_dates:
            banned |= (positions >= t - h) & (positions <= t + h + e)
        np.testing.assert_array_equal(train_dates, positions[~banned])
    assert np.all(coverage == math.comb(n - 1, k - 1))  # every date tested C(N-1, k-1) times
    # Backtest paths: n_paths of them, each covering every group exactly once with a split that tests it.
    paths = splitter.backtest_paths()
    assert len(paths) == splitter.n_paths == math.comb(n, k) * k // n
    used = [pair for path in paths for pair in path]
    assert len(set(used)) == len(used) == math.comb(n, k) * k  # every (split, test group) used once
    for path in paths:
        assert [g for _, g in path] == list(range(n))
        assert all(g in splitter.test_groups[s] for s, g in path)
    dates = panel.index.get_level_values("date")
    unique_dates = np.unique(dates)
    for path, dated in zip(paths, splitter.paths(dates)):
        assert [s for s, _ in dated] == [s for s, _ in path]
        np.testing.assert_array_equal(np.concatenate([d for _, d in dated]), unique_dates)
    assert_same_folds(folds, splitter.split(panel))  # deterministic
    assert splitter.backtest_paths() == paths


def test_walk_forward_sliding_example():
    dates = pd.bdate_range("2022-01-03", periods=30)
    folds = WalkForward(test_size=5, train_size=10, expanding=False, horizon=2).split_dates(dates)
    positions = [(dates.get_indexer(train).tolist(), dates.get_indexer(test).tolist()) for train, test in folds]
    assert positions == [
        (list(range(0, 10)), list(range(12, 17))),
        (list(range(5, 15)), list(range(17, 22))),
        (list(range(10, 20)), list(range(22, 27))),
    ]
    # Expanding with overlapping blocks (step < test_size), and an embargo gap before the test.
    folds = WalkForward(test_size=5, step=2, horizon=2, embargo=1, min_train_size=8).split_dates(dates)
    assert [(len(train), dates.get_loc(test[0])) for train, test in folds] == [(8, 11), (10, 13), (12, 15), (14, 17),
                                                                              (16, 19), (18, 21), (20, 23), (22, 25)]


def test_cpcv_paths_example():
    cv = CombinatorialPurgedCV(n_groups=3, n_test_groups=2, horizon=0)
    assert cv.test_groups == [(0, 1), (0, 2), (1, 2)]
    assert cv.n_splits == cv.get_n_splits() == 3 and cv.n_paths == 2
    assert cv.backtest_paths() == [[(0, 0), (0, 1), (1, 2)], [(1, 0), (2, 1), (2, 2)]]
    assert CombinatorialPurgedCV(n_groups=6, n_test_groups=2).n_paths == 5  # AFML's example: 15 splits, 5 paths
    assert CombinatorialPurgedCV(n_groups=10, n_test_groups=2).get_n_splits() == 45


def test_cpcv_purges_and_embargoes_around_every_test_group():
    # 60 dates in 6 groups of 10; split (1, 3) tests dates 10..19 and 30..39.
    dates = pd.bdate_range("2022-01-03", periods=60)
    cv = CombinatorialPurgedCV(n_groups=6, n_test_groups=2, horizon=2, embargo=3)
    split = cv.test_groups.index((1, 3))
    train, test = cv.split_dates(dates)[split]
    kept = set(dates.get_indexer(train))
    assert kept == set(range(0, 8)) | set(range(25, 28)) | set(range(45, 60))


@pytest.mark.parametrize(
    "splitter",
    [
        WalkForward(test_size=10, train_size=20, horizon=3),
        CombinatorialPurgedCV(n_groups=4, n_test_groups=2, horizon=3, embargo=1),
    ],
)
def test_new_splitters_work_with_sklearn(splitter):
    panel = make_panel(80, 5, missing_share=0.2, seed=7)
    y = panel["x1"] * 0.5 + np.random.default_rng(0).normal(scale=0.1, size=len(panel))
    dates = panel.index.get_level_values("date")
    scores = cross_val_score(Ridge(), panel.to_numpy(), y.to_numpy(), cv=splitter, groups=dates)
    assert len(scores) == splitter.get_n_splits(groups=dates) == len(list(splitter.split(panel)))
    assert np.all(np.isfinite(scores))
    search = GridSearchCV(Ridge(), {"alpha": [0.1, 1.0]}, cv=splitter).fit(panel, y)
    assert search.best_params_["alpha"] in (0.1, 1.0)


@pytest.mark.parametrize(
    ("factory", "parameter"),
    [
        (lambda: WalkForward(test_size=0), "test_size"),
        (lambda: WalkForward(test_size=None), "test_size"),
        (lambda: WalkForward(test_size=5, train_size=0), "train_size"),
        (lambda: WalkForward(test_size=5, step=0), "step"),
        (lambda: WalkForward(test_size=5, horizon=-1), "horizon"),
        (lambda: WalkForward(test_size=5, embargo=-1), "embargo"),
        (lambda: WalkForward(test_size=5, expanding="no"), "expanding"),
        (lambda: WalkForward(test_size=5, expanding=False), "train_size"),
        (lambda: WalkForward(test_size=5, train_size=10, min_train_size=20), "min_train_size"),
        (lambda: WalkForward(test_size=5, min_train_size=0), "min_train_size"),
        (lambda: WalkForward(test_size=2.5), "test_size"),
        (lambda: CombinatorialPurgedCV(n_groups=1), "n_groups"),
        (lambda: CombinatorialPurgedCV(n_test_groups=0), "n_test_groups"),
        (lambda: CombinatorialPurgedCV(n_groups=4, n_test_groups=4), "n_test_groups"),
        (lambda: CombinatorialPurgedCV(horizon=-1), "horizon"),
        (lambda: CombinatorialPurgedCV(embargo=-3), "embargo"),
        (lambda: CombinatorialPurgedCV(n_groups=True), "n_groups"),
    ],
)
def test_new_splitters_reject_bad_parameters_by_name(factory, parameter):
    with pytest.raises(ValueError, match=parameter):
        factory()


def test_new_splitters_too_few_dates():
    panel = make_panel(10, 2)
    with pytest.raises(ValueError, match=r"10 unique dates, need at least 13 = first training window \(5\)"):
        WalkForward(test_size=5, horizon=3).split(panel)  # raises on the call, before iterating
    with pytest.raises(ValueError, match=r"10 unique dates, need at least 13"):
        WalkForward(test_size=5, horizon=3).get_n_splits(panel)
    with pytest.raises(ValueError, match=r"10 unique dates, need at least 12 \(n_groups\)"):
        CombinatorialPurgedCV(n_groups=12).split(panel)
    with pytest.raises(ValueError, match=r"10 unique dates, need at least 12 \(n_groups\)"):
        CombinatorialPurgedCV(n_groups=12).paths(panel.index.get_level_values("date"))
    with pytest.raises(ValueError, match="no training dates"):
        CombinatorialPurgedCV(n_groups=2, n_test_groups=1, horizon=5, embargo=5).split(panel)
    with pytest.raises(ValueError, match="depends on the number of dates"):
        WalkForward(test_size=5).get_n_splits()


def test_new_splitters_describe():
    assert WalkForward(test_size=21, train_size=252, expanding=False).describe() == {
        "splitter": "WalkForward",
        "test_size": 21,
        "train_size": 252,
        "step": None,
        "horizon": 5,
        "embargo": 0,
        "expanding": False,
        "min_train_size": None,
    }
    assert CombinatorialPurgedCV(n_groups=6, n_test_groups=2, horizon=5, embargo=2).describe() == {
        "splitter": "CombinatorialPurgedCV",
        "n_groups": 6,
        "n_test_groups": 2,
        "horizon": 5,
        "embargo": 2,
        "n_splits": 15,
        "n_paths": 5,
    }
