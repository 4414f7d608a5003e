"""Date-based, purged cross-validation splitters for (date, symbol) panels.

A label of the date with index ``i`` on the sorted unique-date axis is the forward return over the
dates ``(i, i + horizon]``: it is only known ``horizon`` dates later. A training date whose label
window reaches into the test block leaks the test period into training, so it is *purged*; dates
right after a test block share information with it (overlapping labels, serially correlated
features), so they are *embargoed*.

``PurgedKFold`` and ``CombinatorialPurgedCV`` (López de Prado, *Advances in Financial Machine
Learning*, ch. 7 and 12) purge before and embargo after every test block; ``WalkForward`` and
``PurgedWalkForward`` only ever train on the past, so their embargo is an extra gap before the test.

All splitters follow scikit-learn's cross-validator contract (``split(X, y, groups)`` yields
``(train_positions, test_positions)`` integer arrays of row positions, ``get_n_splits``), so
``cross_val_score(model, X, y, cv=splitter, groups=dates)`` and friends work. Splits are always by
date: every row of a date lands on the same side.

Dates come from ``groups`` when given (one date per row), else from the ``date`` level of
``X.index``.
"""

from __future__ import annotations

import itertools
import math
import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator

__all__ = ["CombinatorialPurgedCV", "PurgedKFold", "PurgedWalkForward", "WalkForward", "row_dates"]

DateFolds = list[tuple[np.ndarray, np.ndarray]]


def _check_int(name: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def row_dates(X: Any = None, groups: Any = None) -> pd.Index:
    """The date of every row: ``groups`` if given, else the ``date`` level of ``X.index``."""
    if groups is not None:
        dates = groups if isinstance(groups, pd.Index) else pd.Index(np.asarray(groups).ravel())
        if X is not None and hasattr(X, "__len__") and len(X) != len(dates):
            raise ValueError(f"groups has {len(dates)} entries but X has {len(X)} rows; give one date per row")
    else:
        index = getattr(X, "index", None)
        if index is None or "date" not in (index.names or []):
            raise ValueError(
                "cannot find the dates of the rows: pass groups=<one date per row> or an X whose "
                "index has a 'date' level (e.g. a (date, symbol) MultiIndex)"
            )
        dates = index.get_level_values("date")
    if dates.hasnans:
        raise ValueError("dates contain missing values; every row needs a date")
    return dates


def _encode_dates(dates: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Sorted unique dates and, for every row, the index of its date on that axis (vectorized)."""
    codes, unique = pd.factorize(dates, sort=True)
    return unique.to_numpy(), codes


class _PurgedDateSplitter(BaseCrossValidator):
    """Shared plumbing: dates from X/groups, folds computed on the unique-date axis, rows mapped back."""

    # Like sklearn's GroupsConsumerMixin: with metadata routing on, route `groups` to split().
    __metadata_request__split = {"groups": True}

    n_splits: int

    def _date_index_folds(self, n_dates: int) -> DateFolds:  # pragma: no cover - abstract
        """(train, test) arrays of indices into the sorted unique-date axis; validates eagerly."""
        raise NotImplementedError

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Number of folds ``split`` yields (always ``n_splits``; too few dates raise instead)."""
        return self.n_splits

    def split(self, X: Any, y: Any = None, groups: Any = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yield ``(train_positions, test_positions)``: sorted int64 row positions per fold.

        Validation (too few dates, empty training sets) happens on the call, before anything is
        yielded, so a bad configuration fails at once rather than half-way through a CV loop.
        """
        unique, codes = _encode_dates(row_dates(X, groups))
        folds = self._date_index_folds(len(unique))
        return self._rows_of(folds, codes, len(unique))

    @staticmethod
    def _rows_of(folds: DateFolds, codes: np.ndarray, n_dates: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for train_idx, test_idx in folds:
            train_mask = np.zeros(n_dates, dtype=bool)
            train_mask[train_idx] = True
            test_mask = np.zeros(n_dates, dtype=bool)
            test_mask[test_idx] = True
            yield (
                np.flatnonzero(train_mask[codes]).astype(np.int64),
                np.flatnonzero(test_mask[codes]).astype(np.int64),
            )

    def split_dates(self, dates: Any) -> DateFolds:
        """Folds as ``(train_dates, test_dates)`` arrays of unique, sorted dates (for reports/metadata)."""
        unique, _ = _encode_dates(row_dates(groups=dates))
        return [(unique[tr], unique[te]) for tr, te in self._date_index_folds(len(unique))]

    def describe(self) -> dict[str, Any]:
        """The splitter's name and parameters, JSON-friendly, for asset metadata."""
        return {"splitter": type(self).__name__, **{name: getattr(self, name) for name in self._param_names}}

    _param_names: tuple[str, ...] = ()


class PurgedWalkForward(_PurgedDateSplitter):
    """Walk-forward (expanding, or sliding with ``max_train_size``) CV with purge and embargo.

    Test blocks are ``n_splits`` consecutive blocks of ``test_size`` dates at the end of the date
    axis, in time order. Each fold trains only on dates before its test block, keeping date ``i``
    only if ``i + horizon + embargo < test_start``: its label window ``(i, i + horizon]`` ends before
    the test block, plus ``embargo`` extra dates of gap (in walk-forward nothing is trained on after
    the test block, so the embargo acts as a safety gap before it; 0 gives the plain purge).

    Default ``test_size`` (like sklearn's ``TimeSeriesSplit``, after reserving the purge gap
    ``horizon + embargo``): the remaining ``n_dates - horizon - embargo`` dates are cut into
    ``n_splits + 1`` equal blocks, the first one (plus the division remainder) being the initial
    training window: ``test_size = (n_dates - horizon - embargo) // (n_splits + 1)``. With
    ``min_train_size`` the initial training window is exactly that long instead (plus remainder):
    ``test_size = (n_dates - horizon - embargo - min_train_size) // n_splits``.

    ``max_train_size`` caps the training window to the most recent dates that survive the purge
    (sliding window). ``min_train_size`` is also enforced: every fold must train on at least that
    many dates (at least 1 without it), else ``ValueError``.
    """

    _param_names = ("n_splits", "horizon", "embargo", "test_size", "min_train_size", "max_train_size")

    def __init__(
        self,
        n_splits: int = 5,
        horizon: int = 5,
        embargo: int = 0,
        test_size: int | None = None,
        min_train_size: int | None = None,
        max_train_size: int | None = None,
    ) -> None:
        self.n_splits = _check_int("n_splits", n_splits, 2)
        self.horizon = _check_int("horizon", horizon, 0)
        self.embargo = _check_int("embargo", embargo, 0)
        self.test_size = _check_int("test_size", test_size, 1, optional=True)
        self.min_train_size = _check_int("min_train_size", min_train_size, 1, optional=True)
        self.max_train_size = _check_int("max_train_size", max_train_size, 1, optional=True)
        if min_train_size is not None and max_train_size is not None and max_train_size < min_train_size:
            raise ValueError(
                f"max_train_size ({max_train_size}) must be >= min_train_size ({min_train_size})"
            )

    def _resolved_test_size(self, n_dates: int) -> int:
        gap = self.horizon + self.embargo
        min_train = self.min_train_size or 1
        if self.test_size is not None:
            needed = self.n_splits * self.test_size + gap + min_train
            rule = (f"n_splits*test_size ({self.n_splits}*{self.test_size}) + horizon ({self.horizon}) "
                    f"+ embargo ({self.embargo}) + min_train_size ({min_train})")
            test_size = self.test_size
        elif self.min_train_size is not None:
            needed = self.n_splits + gap + min_train
            rule = (f"n_splits ({self.n_splits}) + horizon ({self.horizon}) + embargo ({self.embargo}) "
                    f"+ min_train_size ({min_train})")
            test_size = (n_dates - gap - min_train) // self.n_splits
        else:
            needed = self.n_splits + 1 + gap
            rule = f"n_splits + 1 ({self.n_splits + 1}) + horizon ({self.horizon}) + embargo ({self.embargo})"
            test_size = (n_dates - gap) // (self.n_splits + 1)
        if n_dates < needed or test_size < 1:
            raise ValueError(
                f"too few dates for PurgedWalkForward: {n_dates} unique dates, need at least {needed} = {rule}"
            )
        return test_size

    def _date_index_folds(self, n_dates: int) -> DateFolds:
        test_size = self._resolved_test_size(n_dates)
        first_test_start = n_dates - self.n_splits * test_size
        folds: DateFolds = []
        for k in range(self.n_splits):
            test_start = first_test_start + k * test_size
            train_stop = test_start - self.horizon - self.embargo  # exclusive: i + h + e < test_start
            train_start = 0 if self.max_train_size is None else max(0, train_stop - self.max_train_size)
            n_train = max(0, train_stop - train_start)
            if n_train < (self.min_train_size or 1):
                raise ValueError(
                    f"PurgedWalkForward fold {k} would train on {n_train} dates after purging "
                    f"(horizon={self.horizon}, embargo={self.embargo}); need at least "
                    f"{self.min_train_size or 1}: use more dates, fewer/smaller test blocks or a shorter horizon"
                )
            folds.append((np.arange(train_start, train_stop), np.arange(test_start, test_start + test_size)))
        return folds


class PurgedKFold(_PurgedDateSplitter):
    """K-fold CV on contiguous date blocks, purged before and embargoed after each test block.

    The sorted unique dates are cut into ``n_splits`` contiguous blocks in time order (sizes differ
    by at most one; the first ``n_dates % n_splits`` blocks get the extra date, as in sklearn's
    ``KFold``). Each block is a test set once; training is every other date ``i`` with
    ``i + horizon < test_start`` (label window ends before the test) or
    ``i > test_end + horizon + embargo`` (after the last test label ends, plus the embargo).
    """

    _param_names = ("n_splits", "horizon", "embargo")

    def __init__(self, n_splits: int = 5, horizon: int = 5, embargo: int = 5) -> None:
        self.n_splits = _check_int("n_splits", n_splits, 2)
        self.horizon = _check_int("horizon", horizon, 0)
        self.embargo = _check_int("embargo", embargo, 0)

    def _date_index_folds(self, n_dates: int) -> DateFolds:
        if n_dates < self.n_splits:
            raise ValueError(
                f"too few dates for PurgedKFold: {n_dates} unique dates, need at least {self.n_splits} (n_splits)"
            )
        positions = np.arange(n_dates)
        folds: DateFolds = []
        for k, test_idx in enumerate(np.array_split(positions, self.n_splits)):
            test_start, test_end = int(test_idx[0]), int(test_idx[-1])
            keep = (positions + self.horizon < test_start) | (positions > test_end + self.horizon + self.embargo)
            train_idx = positions[keep]
            if train_idx.size == 0:
                raise ValueError(
                    f"PurgedKFold fold {k} (dates {test_start}..{test_end} of {n_dates}) has no training "
                    f"dates left after purging (horizon={self.horizon}) and embargo ({self.embargo}): "
                    "use more dates, more folds or a shorter horizon/embargo"
                )
            folds.append((train_idx, test_idx))
        return folds


class WalkForward(_PurgedDateSplitter):
    """Walk-forward analysis in trading days: roll a test block forward, train only on the purged past.

    The first test block starts right after the first training window (``min_train_size`` dates)
    plus the purge gap ``horizon + embargo``; later blocks start ``step`` dates further on (default
    ``test_size``: back-to-back blocks; a smaller step gives overlapping blocks, a larger one gaps).
    Only full blocks of ``test_size`` dates are produced, so the last ``< step`` dates may stay
    untested. For a test block starting at date index ``j`` the training dates are the ``i`` with
    ``i + horizon + embargo < j`` (label window ``(i, i + horizon]`` ends before the test, plus an
    ``embargo`` safety gap), either all of them (``expanding=True``) or the last ``train_size``
    of them (``expanding=False``, sliding window).

    ``min_train_size`` (the length of the first training window) defaults to ``train_size``, or
    to ``test_size`` when ``train_size`` is not given. With ``expanding=False`` and
    ``min_train_size < train_size`` the window grows from ``min_train_size`` to ``train_size`` and
    then slides; with ``expanding=True``, ``train_size`` only sets that first window.

    The number of splits depends on the number of dates, so ``get_n_splits`` needs ``X`` or
    ``groups``: ``(n_dates - min_train_size - horizon - embargo - test_size) // step + 1``.
    """

    _param_names = ("test_size", "train_size", "step", "horizon", "embargo", "expanding", "min_train_size")

    def __init__(
        self,
        test_size: int,
        train_size: int | None = None,
        step: int | None = None,
        horizon: int = 5,
        embargo: int = 0,
        expanding: bool = True,
        min_train_size: int | None = None,
    ) -> None:
        self.test_size = _check_int("test_size", test_size, 1)
        self.train_size = _check_int("train_size", train_size, 1, optional=True)
        self.step = _check_int("step", step, 1, optional=True)
        self.horizon = _check_int("horizon", horizon, 0)
        self.embargo = _check_int("embargo", embargo, 0)
        self.expanding = _check_bool("expanding", expanding)
        self.min_train_size = _check_int("min_train_size", min_train_size, 1, optional=True)
        if not self.expanding and self.train_size is None:
            raise ValueError("train_size is required with expanding=False (the length of the sliding window)")
        if self.min_train_size is not None and self.train_size is not None and self.min_train_size > self.train_size:
            raise ValueError(
                f"min_train_size ({self.min_train_size}) must be <= train_size ({self.train_size})"
            )

    @property
    def first_train_size(self) -> int:
        """Dates in the first training window (``min_train_size``, else ``train_size``, else ``test_size``)."""
        for size in (self.min_train_size, self.train_size, self.test_size):
            if size is not None:
                return size
        raise AssertionError("unreachable: test_size is always set")

    def _first_test_start(self) -> int:
        return self.first_train_size + self.horizon + self.embargo

    def _n_splits_for(self, n_dates: int) -> int:
        first_test_start = self._first_test_start()
        needed = first_test_start + self.test_size
        if n_dates < needed:
            raise ValueError(
                f"too few dates for WalkForward: {n_dates} unique dates, need at least {needed} = "
                f"first training window ({self.first_train_size}) + horizon ({self.horizon}) "
                f"+ embargo ({self.embargo}) + test_size ({self.test_size})"
            )
        return (n_dates - needed) // (self.step or self.test_size) + 1

    def get_n_splits(self, X: Any = None, y: Any = None, groups: Any = None) -> int:
        """Exact number of splits for these rows' dates (needs ``X`` with a date level, or ``groups``)."""
        if X is None and groups is None:
            raise ValueError(
                "WalkForward's number of splits depends on the number of dates: pass X (with a 'date' "
                "index level) or groups=<one date per row>"
            )
        unique, _ = _encode_dates(row_dates(X, groups))
        return self._n_splits_for(len(unique))

    def _date_index_folds(self, n_dates: int) -> DateFolds:
        n_splits = self._n_splits_for(n_dates)
        step = self.step or self.test_size
        folds: DateFolds = []
        for k in range(n_splits):
            test_start = self._first_test_start() + k * step
            train_stop = test_start - self.horizon - self.embargo  # exclusive: i + h + e < test_start
            train_start = 0 if self.expanding else max(0, train_stop - self.train_size)
            folds.append((np.arange(train_start, train_stop), np.arange(test_start, test_start + self.test_size)))
        return folds


class CombinatorialPurgedCV(_PurgedDateSplitter):
    """Combinatorial purged cross-validation (CPCV, López de Prado, AFML ch. 12).

    The sorted unique dates are cut into ``n_groups`` contiguous groups in time order (sizes differ
    by at most one, the first ``n_dates % n_groups`` groups get the extra date, as in
    ``PurgedKFold``). Every combination of ``n_test_groups`` groups is the test set of one split,
    in ``itertools.combinations`` order: ``C(n_groups, n_test_groups)`` splits. Training is every
    other date ``i``, purged and embargoed around *each* test group ``[start, end]``: dropped when
    ``start - horizon <= i < start`` (its label window reaches the group) or
    ``end < i <= end + horizon + embargo`` (after the group's last label, plus the embargo).

    Every group is tested by ``C(n_groups - 1, n_test_groups - 1)`` splits, which is also
    ``n_paths`` (``= C(N, k) * k / N``): the number of complete out-of-sample backtest paths that
    can be assembled, path ``j`` taking each group from the ``j``-th split that tests it
    (``backtest_paths``, ``paths``).
    """

    _param_names = ("n_groups", "n_test_groups", "horizon", "embargo")

    def __init__(self, n_groups: int = 6, n_test_groups: int = 2, horizon: int = 5, embargo: int = 0) -> None:
        self.n_groups = _check_int("n_groups", n_groups, 2)
        self.n_test_groups = _check_int("n_test_groups", n_test_groups, 1)
        if self.n_test_groups >= self.n_groups:
            raise ValueError(
                f"n_test_groups ({self.n_test_groups}) must be < n_groups ({self.n_groups}): "
                "some group has to be left for training"
            )
        self.horizon = _check_int("horizon", horizon, 0)
        self.embargo = _check_int("embargo", embargo, 0)

    @property
    def n_splits(self) -> int:  # type: ignore[override]
        """``C(n_groups, n_test_groups)``."""
        return math.comb(self.n_groups, self.n_test_groups)

    @property
    def n_paths(self) -> int:
        """Backtest paths: ``C(N, k) * k / N = C(N - 1, k - 1)``."""
        return math.comb(self.n_groups - 1, self.n_test_groups - 1)

    @property
    def test_groups(self) -> list[tuple[int, ...]]:
        """The test group indices of every split, in split order."""
        return list(itertools.combinations(range(self.n_groups), self.n_test_groups))

    def _group_positions(self, n_dates: int) -> list[np.ndarray]:
        if n_dates < self.n_groups:
            raise ValueError(
                f"too few dates for CombinatorialPurgedCV: {n_dates} unique dates, need at least "
                f"{self.n_groups} (n_groups)"
            )
        return np.array_split(np.arange(n_dates), self.n_groups)

    def _date_index_folds(self, n_dates: int) -> DateFolds:
        groups = self._group_positions(n_dates)
        folds: DateFolds = []
        for k, tested in enumerate(self.test_groups):
            keep = np.ones(n_dates, dtype=bool)
            for g in tested:
                start, end = int(groups[g][0]), int(groups[g][-1])
                keep[max(0, start - self.horizon) : end + self.horizon + self.embargo + 1] = False
            train_idx = np.flatnonzero(keep)
            if train_idx.size == 0:
                raise ValueError(
                    f"CombinatorialPurgedCV split {k} (test groups {tested} of {self.n_groups}, {n_dates} "
                    f"dates) has no training dates left after purging (horizon={self.horizon}) and embargo "
                    f"({self.embargo}): use more dates, fewer test groups or a shorter horizon/embargo"
                )
            folds.append((train_idx, np.concatenate([groups[g] for g in tested])))
        return folds

    def backtest_paths(self) -> list[list[tuple[int, int]]]:
        """For each of the ``n_paths`` paths, its ``(split_index, group_index)`` pairs, one per group
        in time order: path ``j`` takes group ``g``'s predictions from the ``j``-th split testing ``g``."""
        testers = [[s for s, tested in enumerate(self.test_groups) if g in tested] for g in range(self.n_groups)]
        return [[(testers[g][j], g) for g in range(self.n_groups)] for j in range(self.n_paths)]

    def group_dates(self, dates: Any) -> list[np.ndarray]:
        """The sorted unique dates of each of the ``n_groups`` groups."""
        unique, _ = _encode_dates(row_dates(groups=dates))
        return [unique[positions] for positions in self._group_positions(len(unique))]

    def paths(self, dates: Any) -> list[list[tuple[int, np.ndarray]]]:
        """``backtest_paths`` on real dates: per path, ``(split_index, dates of the group)`` pairs in time
        order; concatenating the dates of a path gives every date exactly once."""
        groups = self.group_dates(dates)
        return [[(split, groups[g]) for split, g in path] for path in self.backtest_paths()]

    def describe(self) -> dict[str, Any]:
        """Parameters plus the derived numbers of splits and backtest paths."""
        return {**super().describe(), "n_splits": self.n_splits, "n_paths": self.n_paths}
