"""skfolio as the oracle for WalkForward and CombinatorialPurgedCV, and where the two differ (panels).

Parameter mapping, on a single-symbol series (one row per date, so skfolio's row counts are date counts):

* A label of date ``i`` spans ``(i, i + horizon]``. Our purge before a test block starting at ``j``
  keeps ``i`` iff ``i + horizon < j``: it drops the ``horizon`` dates ``j - horizon .. j - 1``.
  skfolio's ``purged_size`` drops that many observations before each test block, so
  ``purged_size = horizon`` (the label of ``j - horizon - 1`` ends at ``j - 1``, it is kept by both).
* After a test block ending at ``e`` we keep ``i`` iff ``i > e + horizon + embargo``: we drop
  ``horizon + embargo`` dates; skfolio's CPCV drops ``purged_size + embargo_size`` observations after
  each test fold. Hence CPCV: ``purged_size = horizon``, ``embargo_size = embargo``.
* Walk-forward never trains after its test block and our embargo is a gap before it
  (``i + horizon + embargo < j``); skfolio's WalkForward has no embargo, only ``purged_size``
  before the test, so WalkForward: ``purged_size = horizon + embargo``. ``train_size`` maps to
  ``train_size`` (our first window, ``min_train_size`` defaulting to ``train_size``, or to
  ``test_size`` when ``train_size`` is None: pass that to skfolio), ``expanding`` to
  ``expand_train`` (spelled ``expend_train`` in old skfolio releases), ``reduce_test=False``
  (we only produce full test blocks).

No exact mapping, so not compared here (our own property tests cover them):
* CPCV group boundaries when ``n_dates % n_groups != 0``: we balance groups like sklearn's KFold
  (the first ``n % N`` groups get one extra date); skfolio gives every fold ``n // N`` observations
  and the whole remainder to the last one. For ``n_dates % n_groups == 0`` both are identical.
* CPCV configurations whose purge and embargo empty some split's training set: skfolio yields the
  empty training set, we raise ``ValueError`` (checked below).
* CPCV with ``n_test_groups=1`` (skfolio requires ``n_test_folds >= 2``) or ``n_groups=2``
  (skfolio requires ``n_folds >= 3``); skfolio also refuses ``purged_size + embargo_size >=
  n // n_folds - 1``, which we allow as long as every split keeps a training date.
* WalkForward ``step != test_size`` (skfolio always steps by ``test_size``) and a sliding window
  that first grows from ``min_train_size < train_size`` (skfolio's first window is ``train_size``).
"""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plml_assets.lib.validation.splits import CombinatorialPurgedCV, WalkForward

skfolio_ms = pytest.importorskip("skfolio.model_selection")

SETTINGS = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# skfolio renamed WalkForward's `expend_train` to `expand_train`; accept whichever this release has.
_EXPAND = "expand_train" if "expand_train" in inspect.signature(skfolio_ms.WalkForward).parameters else "expend_train"


def single_symbol_dates(n_dates: int) -> pd.DatetimeIndex:
    return pd.bdate_range("2020-01-01", periods=n_dates, name="date")


def skfolio_cpcv(cv: CombinatorialPurgedCV):
    return skfolio_ms.CombinatorialPurgedCV(
        n_folds=cv.n_groups, n_test_folds=cv.n_test_groups, purged_size=cv.horizon, embargo_size=cv.embargo
    )


def skfolio_walk_forward(wf: WalkForward):
    assert wf.step in (None, wf.test_size) and wf.min_train_size in (None, wf.train_size)
    return skfolio_ms.WalkForward(
        test_size=wf.test_size,
        train_size=wf.first_train_size,
        purged_size=wf.horizon + wf.embargo,
        reduce_test=False,
        **{_EXPAND: wf.expanding},
    )


@st.composite
def cpcv_cases(draw: st.DrawFn) -> tuple[CombinatorialPurgedCV, int]:
    n_groups = draw(st.integers(3, 8))
    n_test_groups = draw(st.integers(2, n_groups - 1))
    horizon, embargo = draw(st.integers(0, 6)), draw(st.integers(0, 6))
    # skfolio needs purged_size + embargo_size < n // n_folds - 1; equal boundaries need n % N == 0.
    group_size = draw(st.integers(horizon + embargo + 2, horizon + embargo + 12))
    return CombinatorialPurgedCV(n_groups, n_test_groups, horizon=horizon, embargo=embargo), n_groups * group_size


@SETTINGS
@given(case=cpcv_cases())
def test_cpcv_matches_skfolio_on_one_row_per_date(case):
    ours, n_dates = case
    dates = single_symbol_dates(n_dates)
    theirs = skfolio_cpcv(ours)
    X = np.zeros((n_dates, 1))
    assert ours.get_n_splits() == theirs.get_n_splits()
    assert ours.n_paths == theirs.n_test_paths
    assert [tuple(t) for t in theirs.test_set_index] == ours.test_groups
    their_folds = list(theirs.split(X))
    try:
        our_folds = ours.split_dates(dates)
    except ValueError as error:
        # A train group squeezed between two test groups can be purged away entirely: skfolio then
        # yields an empty training set, we refuse the configuration.
        assert "no training dates left" in str(error)
        assert any(len(their_train) == 0 for their_train, _ in their_folds)
        return
    assert len(our_folds) == len(their_folds)
    for (train_dates, test_dates), (their_train, their_tests) in zip(our_folds, their_folds):
        np.testing.assert_array_equal(train_dates, dates[their_train].to_numpy())
        np.testing.assert_array_equal(test_dates, dates[np.concatenate(their_tests)].to_numpy())
    # Our row split of a one-symbol frame is skfolio's row split.
    frame = pd.DataFrame({"x": 0.0}, index=dates)
    for (train, test), (their_train, their_tests) in zip(ours.split(frame, groups=dates), their_folds):
        np.testing.assert_array_equal(train, their_train)
        np.testing.assert_array_equal(test, np.concatenate(their_tests))


@SETTINGS
@given(n_groups=st.integers(3, 9), data=st.data())
def test_cpcv_paths_match_skfolio_recombination(n_groups, data):
    n_test_groups = data.draw(st.integers(2, n_groups - 1))
    ours = CombinatorialPurgedCV(n_groups, n_test_groups, horizon=0)
    theirs = skfolio_cpcv(ours)
    paths = ours.backtest_paths()
    # skfolio's recombined_paths[g, p] is the split whose test of group g goes to path p.
    np.testing.assert_array_equal(
        np.array([[split for split, _ in path] for path in paths]).T, theirs.recombined_paths
    )
    # get_path_ids()[s, j]: the path of split s's j-th test group (test groups in ascending order).
    path_of = {pair: p for p, path in enumerate(paths) for pair in path}
    expected = np.array([[path_of[(s, g)] for g in tested] for s, tested in enumerate(ours.test_groups)])
    np.testing.assert_array_equal(expected, theirs.get_path_ids())


def test_cpcv_group_boundaries_differ_from_skfolio_when_dates_do_not_divide():
    # 23 dates in 4 groups: ours 6/6/6/5 (balanced, like KFold), skfolio 5/5/5/8 (remainder last).
    ours = CombinatorialPurgedCV(4, 2, horizon=0)
    assert [len(g) for g in ours.group_dates(single_symbol_dates(23))] == [6, 6, 6, 5]
    _, their_tests = next(skfolio_cpcv(ours).split(np.zeros((23, 1))))
    assert [len(t) for t in their_tests] == [5, 5]  # groups 0 and 1 of 5/5/5/8


@st.composite
def walk_forward_cases(draw: st.DrawFn) -> tuple[WalkForward, int]:
    expanding = draw(st.booleans())
    train_size = draw(st.none() | st.integers(1, 40)) if expanding else draw(st.integers(1, 40))
    wf = WalkForward(
        test_size=draw(st.integers(1, 20)),
        train_size=train_size,
        horizon=draw(st.integers(0, 8)),
        embargo=draw(st.integers(0, 4)),
        expanding=expanding,
    )
    return wf, draw(st.integers(2, 150))


@SETTINGS
@given(case=walk_forward_cases())
def test_walk_forward_matches_skfolio_on_one_row_per_date(case):
    ours, n_dates = case
    dates = single_symbol_dates(n_dates)
    X = np.zeros((n_dates, 1))
    theirs = skfolio_walk_forward(ours)
    try:
        our_folds = ours.split_dates(dates)
    except ValueError as error:
        # Not even one full test block: skfolio refuses the data or yields no split at all.
        assert "too few dates for WalkForward" in str(error)
        try:
            assert list(theirs.split(X)) == []
        except ValueError:
            pass
        return
    their_folds = list(theirs.split(X))
    assert ours.get_n_splits(groups=dates) == theirs.get_n_splits(X) == len(their_folds) == len(our_folds)
    for (train_dates, test_dates), (their_train, their_test) in zip(our_folds, their_folds):
        np.testing.assert_array_equal(train_dates, dates[their_train].to_numpy())
        np.testing.assert_array_equal(test_dates, dates[their_test].to_numpy())


def make_full_panel(n_dates: int, n_symbols: int) -> pd.DataFrame:
    index = pd.MultiIndex.from_product(
        [single_symbol_dates(n_dates), [f"S{k}" for k in range(n_symbols)]], names=["date", "symbol"]
    )
    return pd.DataFrame({"x": np.arange(len(index), dtype=float)}, index=index)


def dates_on_both_sides(dates: pd.Index, train: np.ndarray, test: np.ndarray) -> set:
    return set(dates[train]) & set(dates[test])


def test_on_a_panel_ours_splits_by_date_while_skfolio_splits_rows():
    # 61 dates x 7 symbols = 427 stacked rows: skfolio's fold and window edges fall inside dates.
    panel = make_full_panel(61, 7)
    dates = panel.index.get_level_values("date")
    X = panel.to_numpy()
    cases = [
        (CombinatorialPurgedCV(6, 2, horizon=2, embargo=1), lambda cv: skfolio_cpcv(cv)),
        (WalkForward(test_size=10, train_size=20, horizon=2, expanding=False), lambda wf: skfolio_walk_forward(wf)),
    ]
    for ours, to_skfolio in cases:
        for train, test in ours.split(panel):
            assert not dates_on_both_sides(dates, train, test)
        # skfolio counts rows, so the same sizes cut dates in two: some date sits in train and test.
        straddling = set()
        for their_train, their_test in to_skfolio(ours).split(X):
            if isinstance(their_test, list):
                their_test = np.concatenate(their_test)
            straddling |= dates_on_both_sides(dates, their_train, their_test)
        assert straddling, f"expected skfolio's row split to put some date on both sides for {ours!r}"
