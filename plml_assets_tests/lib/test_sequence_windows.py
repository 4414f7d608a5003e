"""Sequence windows stay within contiguous dates: K-fold and CPCV training sets have holes (the
test blocks and their purge/embargo), and a look-back window must not stitch the rows on the two
sides of a hole together as if they were consecutive days. A contiguous (walk-forward) training
set keeps exactly the windows it had."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import pytest

from plml_assets.lib.models.sequence import SequenceModel, SequenceWindows, date_segments
from plml_assets.lib.models.training import cross_validate, early_stopping_split, fit_model, predict_rows
from plml_assets.lib.selection.importance import fold_importances
from plml_assets.lib.tuning import FamilyFitPredict, cv_objective
from plml_assets.lib.validation.splits import CombinatorialPurgedCV, PurgedKFold, PurgedWalkForward

HORIZON = 5
WINDOW = 6
TINY_NET = {"window": WINDOW, "hidden_size": 4, "max_epochs": 2, "batch_size": 256, "patience": 0}


def old_windows(values: np.ndarray, dates, symbols, window: int) -> tuple[np.ndarray, np.ndarray]:
    """The window layout before segments (the builder as it was): symbol by symbol, in date order,
    each symbol's block preceded by ``window - 1`` zero rows, mask channel last."""
    date_codes, _ = pd.factorize(np.asarray(dates), sort=True)
    symbol_codes, symbol_names = pd.factorize(np.asarray(symbols), sort=True)
    order = np.lexsort((date_codes, symbol_codes))
    sorted_symbols = symbol_codes[order]
    pad = window - 1
    n_rows, n_features = values.shape
    position = np.arange(n_rows) + (sorted_symbols + 1) * pad
    padded = np.zeros((n_rows + len(symbol_names) * pad, n_features + 1), dtype=np.float32)
    padded[position, :n_features] = values[order]
    padded[position, n_features] = 1.0
    starts = np.empty(n_rows, dtype=np.int64)
    starts[order] = position - pad
    return padded, starts


def old_from_frame(frame: pd.DataFrame, window: int) -> tuple[np.ndarray, np.ndarray]:
    return old_windows(frame.to_numpy(dtype=np.float32), frame.index.get_level_values("date"),
                       frame.index.get_level_values("symbol"), window)


def ragged_panel(n_dates: int = 60, seed: int = 0) -> pd.DataFrame:
    """Four symbols with late starts and randomly skipped dates, rows shuffled; ``day`` is the
    date's position in the panel calendar, ``sid`` the symbol's id. Every calendar date is held by
    at least one symbol (symbol S4 has them all)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=n_dates, name="date")
    parts = []
    for sid, start, keep_share in ((1, 0, 0.8), (2, 4, 0.8), (3, 15, 0.7), (4, 0, 1.0)):
        keep = np.flatnonzero(rng.random(n_dates - start) < keep_share) + start
        parts.append(pd.DataFrame({"date": dates[keep], "symbol": f"S{sid}", "sid": float(sid), "day": keep.astype(float)}))
    frame = pd.concat(parts).set_index(["date", "symbol"])
    return frame.iloc[rng.permutation(len(frame))]


def full_panel(n_dates: int = 120, n_symbols: int = 4, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """Every symbol on every business date; features ``day`` (calendar position), f1, f2 and a
    target that f1 predicts."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2019-01-07", periods=n_dates, name="date")
    index = pd.MultiIndex.from_product([dates, [f"S{k}" for k in range(n_symbols)]], names=["date", "symbol"])
    day = np.repeat(np.arange(n_dates, dtype=float), n_symbols)
    f = rng.normal(size=(len(index), 2))
    X = pd.DataFrame({"day": day, "f1": f[:, 0], "f2": f[:, 1]}, index=index)
    y = pd.Series(0.5 * f[:, 0] + rng.normal(scale=0.5, size=len(index)), index=index, name="y")
    return X, y


def window_days(windows: SequenceWindows, rows: np.ndarray, day_channel: int) -> np.ndarray:
    """The ``day`` of every step of the windows of ``rows`` (NaN on padding)."""
    batch = windows.batch(rows)
    return np.where(batch[:, :, -1] == 1.0, batch[:, :, day_channel], np.nan)


def holes(days: np.ndarray) -> list[tuple[float, float]]:
    """(last day before, first day after) of every hole in the sorted calendar positions ``days``."""
    days = np.unique(days)
    jumps = np.flatnonzero(np.diff(days) > 1)
    return [(days[j], days[j + 1]) for j in jumps]


def assert_no_window_crosses(days_of_windows: np.ndarray, row_days: np.ndarray, gaps: list[tuple[float, float]]) -> None:
    for before, after in gaps:
        after_rows = row_days >= after
        crossing = (days_of_windows[after_rows] <= before).any(axis=1)  # NaN compares False
        assert not crossing.any(), f"{int(crossing.sum())} windows reach back over the hole {before}..{after}"


def splitter_folds(splitter, X: pd.DataFrame) -> list[tuple[np.ndarray, np.ndarray]]:
    return list(splitter.split(X))


# ---- the window builder ---------------------------------------------------------------------------


@pytest.mark.parametrize("window", [1, 4, 9])
def test_a_contiguous_panel_keeps_exactly_the_old_windows(window):
    frame = ragged_panel()
    old_padded, old_starts = old_from_frame(frame, window)
    calendar = np.unique(frame.index.get_level_values("date"))
    wider = pd.bdate_range(calendar[0] - pd.offsets.BDay(30), calendar[-1] + pd.offsets.BDay(30))
    # No calendar, the frame's own dates, or a longer calendar in which the frame is contiguous:
    # one segment per symbol, the layout of the old builder byte for byte. A date on which only
    # some symbols have a row is no hole.
    for cal in (None, calendar, wider):
        new = SequenceWindows.from_frame(frame, window, calendar=cal)
        np.testing.assert_array_equal(new.padded, old_padded)
        np.testing.assert_array_equal(new.starts, old_starts)


@pytest.mark.parametrize(
    "splitter",
    [PurgedKFold(n_splits=4, horizon=HORIZON, embargo=3), CombinatorialPurgedCV(n_groups=5, n_test_groups=2, horizon=HORIZON, embargo=2)],
    ids=["purged_kfold", "cpcv"],
)
def test_training_windows_never_span_a_hole_of_the_fold(splitter):
    frame = ragged_panel(n_dates=80)
    calendar = np.unique(frame.index.get_level_values("date"))
    sorted_frame = frame.sort_index()
    day = list(frame.columns).index("day")
    n_holed = 0
    for train_idx, _ in splitter_folds(splitter, sorted_frame):
        train = sorted_frame.iloc[train_idx]
        row_days = train["day"].to_numpy()
        gaps = holes(row_days)
        n_holed += bool(gaps)
        windows = SequenceWindows.from_frame(train, WINDOW, calendar=calendar)
        days = window_days(windows, np.arange(len(train)), day)
        assert_no_window_crosses(days, row_days, gaps)
        # Each segment is windowed exactly as the old builder windows that segment alone: within a
        # segment nothing changes (a symbol's skipped date is still skipped, not padded).
        segment = np.searchsorted([after for _, after in gaps], row_days, side="right")
        for s in np.unique(segment):
            part = train[segment == s]
            old_padded, old_starts = old_from_frame(part, WINDOW)
            expected = old_padded[old_starts[:, None] + np.arange(WINDOW)]
            np.testing.assert_array_equal(windows.batch(np.flatnonzero(segment == s)), expected)
        # The old builder did stitch them (the defect this guards against).
        if gaps:
            old_padded, old_starts = old_from_frame(train, WINDOW)
            old = old_padded[old_starts[:, None] + np.arange(WINDOW)]
            old_days = np.where(old[:, :, -1] == 1.0, old[:, :, day], np.nan)
            with pytest.raises(AssertionError, match="reach back over the hole"):
                assert_no_window_crosses(old_days, row_days, gaps)
    assert n_holed >= 2  # the middle folds do have holes


def test_the_first_rows_after_a_hole_are_padded_like_a_symbols_first_rows():
    X, _ = full_panel(n_dates=40, n_symbols=2)
    dates = np.unique(X.index.get_level_values("date"))
    train = X[~X.index.get_level_values("date").isin(dates[15:25])]  # days 15..24 missing
    windows = SequenceWindows.from_frame(train, WINDOW, calendar=dates)
    days = window_days(windows, np.arange(len(train)), 0)
    row_days = train["day"].to_numpy()
    for k in range(WINDOW):  # day 25 + k has k + 1 real steps: 25..25+k
        rows = row_days == 25 + k
        np.testing.assert_array_equal(np.isfinite(days[rows]).sum(axis=1), min(k + 1, WINDOW))
        np.testing.assert_array_equal(days[rows][:, -1], 25 + k)
    # Before the hole nothing changed; a full window on day 14 still reads days 9..14.
    np.testing.assert_array_equal(days[row_days == 14], [[9, 10, 11, 12, 13, 14]] * 2)


def test_segments_need_every_date_in_the_calendar():
    calendar = pd.bdate_range("2020-01-01", periods=10)
    np.testing.assert_array_equal(date_segments(calendar[[0, 1, 2, 5, 6, 9]], calendar), [0, 0, 0, 1, 1, 2])
    np.testing.assert_array_equal(date_segments(calendar[[3, 4]], None), [0, 0])
    with pytest.raises(ValueError, match="not in the calendar"):
        date_segments(pd.DatetimeIndex(["2019-12-31"]).append(calendar[:2]), calendar)


# ---- fitting: the windows a net trains and early-stops on ---------------------------------------


@pytest.fixture
def trained_windows(monkeypatch):
    """Every fit's training and validation windows as the days they read (NaN on padding)."""
    seen: list[dict[str, np.ndarray]] = []
    original = SequenceModel._train

    def spy(self, device, padded, starts, target, train_rows, valid_rows, **kwargs):
        k = self.feature_names_.index("day")
        days = np.round(padded[:, k].astype(np.float64) * self.feature_std_[k] + self.feature_mean_[k])
        days = np.where(padded[:, -1] == 1.0, days, np.nan)
        steps = np.arange(self.window)
        seen.append({
            "train": days[starts[train_rows][:, None] + steps],
            "valid": days[starts[valid_rows][:, None] + steps],
            "padded": padded, "starts": starts, "train_rows": train_rows, "valid_rows": valid_rows,
        })
        return original(self, device, padded, starts, target, train_rows, valid_rows, **kwargs)

    monkeypatch.setattr(SequenceModel, "_train", spy)
    return seen


def assert_contiguous(days_of_windows: np.ndarray) -> None:
    """On a full panel a window that never jumps a hole reads consecutive days ending at its row."""
    steps = np.diff(days_of_windows, axis=1)
    jumps = np.isfinite(steps) & (steps != 1)
    assert not jumps.any(), f"{int(jumps.any(axis=1).sum())} windows jump over missing dates"


def kfold_runners():
    def run_cv(X, y, folds):
        return cross_validate(TINY_NET, X, y, folds, HORIZON, gap_bound=0.5, family="lstm", train_eval_dates=10)[1]

    def run_tuning(X, y, folds):
        objective = cv_objective(FamilyFitPredict("gru", HORIZON, **TINY_NET), X, y, folds, HORIZON, train_eval_dates=10)
        return objective(optuna.trial.FixedTrial({}), {})

    def run_importance(X, y, folds):
        return fold_importances("gru", TINY_NET, X, y, folds, [list(X.columns)] * len(folds), HORIZON,
                                repeats=1, max_dates=5)

    return {"cross_validate": run_cv, "tuning": run_tuning, "importance": run_importance}


@pytest.mark.parametrize("entry", sorted(kfold_runners()))
def test_kfold_fits_never_window_across_the_test_block(entry, trained_windows):
    X, y = full_panel()
    folds = splitter_folds(PurgedKFold(n_splits=3, horizon=HORIZON, embargo=5), X)
    out = kfold_runners()[entry](X, y, folds)
    assert len(trained_windows) == len(folds)
    for fit, (train_idx, _) in zip(trained_windows, folds, strict=True):
        assert_contiguous(fit["train"])  # fitting windows: within one segment of the fold
        assert_contiguous(fit["valid"])  # early stopping: neither across the fold's hole nor the purge
        assert np.isfinite(fit["train"][:, -1]).all() and np.isfinite(fit["valid"][:, -1]).all()
    # The middle fold has a hole, and its rows right after it are still training samples (padded).
    middle = trained_windows[1]
    first_after = holes(X["day"].to_numpy()[folds[1][0]])[0][1]
    assert (middle["train"][:, -1] == first_after).sum() == 4
    if entry == "cross_validate":
        assert out.notna().sum() == sum(len(t) for _, t in folds) and np.isfinite(out.dropna()).all()
    elif entry == "tuning":
        assert np.isfinite(out)
    else:
        assert len(out) == len(folds) * X.shape[1]


def test_a_net_fits_and_predicts_on_cpcv_folds(trained_windows):
    X, y = full_panel()
    splitter = CombinatorialPurgedCV(n_groups=5, n_test_groups=2, horizon=HORIZON, embargo=2)
    folds = splitter_folds(splitter, X)[:3]
    results, oof = cross_validate(TINY_NET, X, y, folds, HORIZON, gap_bound=0.5, family="gru", train_eval_dates=10)
    assert len(results) == 3 and np.isfinite(results["valid_rank_ic"]).all()
    assert np.isfinite(oof.iloc[np.concatenate([t for _, t in folds])]).all()
    for fit in trained_windows:
        assert_contiguous(fit["train"])
        assert_contiguous(fit["valid"])


def test_walk_forward_training_windows_are_unchanged(trained_windows):
    X, y = full_panel()
    train_idx, _ = splitter_folds(PurgedWalkForward(n_splits=2, horizon=HORIZON), X)[-1]
    Xt, yt = X.iloc[train_idx], y.iloc[train_idx]
    calendar = np.unique(X.index.get_level_values("date"))
    without, fit_mask = fit_model("lstm", TINY_NET, Xt, yt, HORIZON)
    with_calendar, _ = fit_model("lstm", TINY_NET, Xt, yt, HORIZON, calendar=calendar)
    a, b = trained_windows
    # The fitting windows are the old builder's windows of the fitting rows, calendar or not.
    old_padded, old_starts = old_from_frame(pd.DataFrame(without._scaled(Xt[fit_mask]), index=Xt[fit_mask].index), WINDOW)
    old = old_padded[old_starts[:, None] + np.arange(WINDOW)]
    for fit in (a, b):
        np.testing.assert_array_equal(fit["train_rows"], np.arange(fit_mask.sum()))
        np.testing.assert_array_equal(fit["padded"][fit["starts"][fit["train_rows"]][:, None] + np.arange(WINDOW)], old)
    np.testing.assert_array_equal(a["padded"], b["padded"])
    np.testing.assert_array_equal(a["starts"], b["starts"])
    np.testing.assert_array_equal(without.predict(X), with_calendar.predict(X))  # same fit, same net
    assert_contiguous(a["valid"])  # validation windows read the purged dates before them


def test_test_rows_read_the_contiguous_history_before_them():
    """predict_rows hands a net every date of the panel between the first look-back date and the
    last scored date: a test block's rows read the purged and training dates right before them."""
    X, y = full_panel()
    folds = splitter_folds(PurgedKFold(n_splits=3, horizon=HORIZON, embargo=5), X)
    train_idx, test_idx = folds[1]
    calendar = np.unique(X.index.get_level_values("date"))
    model, _ = fit_model("gru", TINY_NET, X.iloc[train_idx], y.iloc[train_idx], HORIZON, calendar=calendar)
    on_everything = model.predict(X)
    for rows in (test_idx, train_idx[X["day"].to_numpy()[train_idx] > 60]):
        np.testing.assert_allclose(predict_rows(model, X, rows), on_everything[rows], rtol=1e-5, atol=1e-7)


def test_the_early_stopping_rows_get_the_purged_rows_as_history_only(trained_windows):
    X, y = full_panel()
    fit_mask, stop_mask = early_stopping_split(X.index.get_level_values("date").to_numpy(), HORIZON)
    assert (~fit_mask & ~stop_mask).sum() == HORIZON * 4  # the purge between fitting and stopping rows
    fit_model("gru", TINY_NET, X, y, HORIZON)
    (fit,) = trained_windows
    assert len(fit["valid_rows"]) == stop_mask.sum()  # the purged rows are history, not samples
    first_stop = X["day"].to_numpy()[stop_mask].min()
    reads = fit["valid"][np.isclose(fit["valid"][:, -1], first_stop)]
    np.testing.assert_array_equal(reads[0], np.arange(first_stop - WINDOW + 1, first_stop + 1))
