"""Date-based, purged cross-validation splitters for (date, symbol) panels.

A label of the date with index ``i`` on the sorted unique-date axis is the forward return over the
dates ``(i, i + horizon]``: it is only known ``horizon`` dates later. A training date whose label
window reaches into the test block leaks the test period into training, so it is *purged*; dates
right after a test block share information with it (overlapping labels, serially correlated
features), so they are *embargoed*.

Both splitters follow scikit-learn's cross-validator contract (``split(X, y, groups)`` yields
``(train_positions, test_positions)`` integer arrays of row positions, ``get_n_splits``), so
``cross_val_score(model, X, y, cv=splitter, groups=dates)`` and friends work. Splits are always by
date: every row of a date lands on the same side.

Dates come from ``groups`` when given (one date per row), else from the ``date`` level of
``X.index``.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import BaseCrossValidator

__all__ = ["PurgedKFold", "PurgedWalkForward", "row_dates"]

DateFolds = list[tuple[np.ndarray, np.ndarray]]


def _check_int(name: str, value: Any, minimum: int, *, optional: bool = False) -> int | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


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
