"""Incremental updates of a fitted champion (``Model.fit_incremental``, ``training.update_model``).

Synthetic panel with a known regime change: three N(0, 1) features; the label is driven by f1 in
the old period and by f2 in the new one (and after it). A champion is fitted on the old period by
``fit_model``; the update sees the new period only. Models are tiny and single-threaded, so the
file runs in seconds on 2 shared cores.
"""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest
import torch

from plml_assets.lib.models.base import Model
from plml_assets.lib.models.registry import load_model
from plml_assets.lib.models.training import (
    best_iteration,
    early_stopping_split,
    fit_model,
    predict_rows,
    update_model,
    winsorize_bounds,
)
from plml_assets.lib.validation.metrics import evaluate_predictions

HORIZON = 5
FAMILIES = ["xgboost", "lightgbm", "lstm", "gru"]
TREES = ["xgboost", "lightgbm"]
NETS = ["lstm", "gru"]
TINY_NET = {"window": 5, "hidden_size": 8, "max_epochs": 6, "patience": 3, "batch_size": 128, "lr": 1e-2,
            "num_threads": 1, "device": "cpu", "scaling": "robust_z"}
PARAMS = {
    "xgboost": {"n_estimators": 60, "learning_rate": 0.1, "max_depth": 3, "min_child_weight": 5.0,
                "early_stopping_rounds": 10, "nthread": 1, "scaling": "robust_z"},
    "lightgbm": {"n_estimators": 60, "learning_rate": 0.1, "num_leaves": 7, "min_child_samples": 10,
                 "early_stopping_rounds": 10, "n_jobs": 1, "scaling": "robust_z"},
    "lstm": TINY_NET,
    "gru": TINY_NET,
}
#: Nets fine-tune at a fraction of their learning rate: give them the epochs to move to the new regime.
UPDATE_ROUNDS = {"xgboost": None, "lightgbm": None, "lstm": 6, "gru": 6}
N_OLD, N_NEW, N_TEST = 200, 100, 60


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def regime_panel(n_symbols: int = 12, seed: int = 0):
    """f1..f3 ~ N(0, 1); y = 0.6 * f1 + noise on the first ``N_OLD`` dates, 0.6 * f2 + noise after."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2016-01-04", periods=N_OLD + N_NEW + N_TEST, name="date")
    index = pd.MultiIndex.from_product([dates, [f"S{k:02d}" for k in range(n_symbols)]], names=["date", "symbol"])
    X = pd.DataFrame(rng.normal(size=(len(index), 3)), index=index, columns=["f1", "f2", "f3"]).astype("float32")
    old = index.get_level_values("date") < dates[N_OLD]
    driver = np.where(old, X["f1"].to_numpy(), X["f2"].to_numpy())
    y = pd.Series(0.6 * driver + rng.normal(size=len(index)), index=index, name="y")
    blocks = {"old": dates[:N_OLD], "new": dates[N_OLD:N_OLD + N_NEW], "test": dates[N_OLD + N_NEW:]}
    return X, y, blocks


@pytest.fixture(scope="module")
def data():
    X, y, blocks = regime_panel()
    rows = {name: X.index.get_level_values("date").isin(block) for name, block in blocks.items()}
    return X, y, rows


_champions: dict[str, Model] = {}


def champion(family: str, data) -> Model:
    """One champion per family, fitted on the old period and shared (tests update copies)."""
    if family not in _champions:
        X, y, rows = data
        _champions[family], _ = fit_model(family, PARAMS[family], X[rows["old"]], y[rows["old"]], HORIZON)
    return _champions[family]


def updated(family: str, data) -> Model:
    X, y, rows = data
    model, _ = update_model(champion(family, data), X[rows["new"]], y[rows["new"]], HORIZON, rounds=UPDATE_ROUNDS[family])
    return model


def holdout_scores(model: Model, data) -> np.ndarray:
    """Scores of the test block, sequence nets reading their window of earlier rows."""
    X, _, rows = data
    return predict_rows(model, X, np.flatnonzero(rows["test"]))



def rank_ic(model: Model, data) -> float:
    X, y, rows = data
    return float(evaluate_predictions(y[rows["test"]].to_numpy(), holdout_scores(model, data),
                                      X.index.get_level_values("date")[rows["test"]])["rank_ic"])


# --- what an update changes and what it keeps ---------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_update_changes_predictions_but_keeps_columns_and_scaling(family, data):
    old = champion(family, data)
    before = holdout_scores(old, data)
    scaler_before = copy.deepcopy(old.scaler_)
    new = updated(family, data)

    assert not np.array_equal(holdout_scores(new, data), before)
    np.testing.assert_array_equal(holdout_scores(old, data), before)  # the champion itself is untouched
    assert old.incremental_updates_ == 0 and new.incremental_updates_ == 1
    assert new.feature_names_ == old.feature_names_ == ["f1", "f2", "f3"]
    assert new.scaler_ == scaler_before and new.scaler_.method == "robust_z"
    assert new.target_clip_ == old.target_clip_
    assert best_iteration(new) >= best_iteration(old)
    if family in TREES:
        kept = old.best_iteration_ + 1
        assert new.n_rounds_ > kept  # trees were added to the kept ones
        assert kept <= new.best_iteration_ < new.n_rounds_
        assert best_iteration(new) == new.best_iteration_
    else:
        for name in ("feature_mean_", "feature_std_"):
            np.testing.assert_array_equal(getattr(new, name), getattr(old, name))
        assert (new.target_mean_, new.target_std_) == (old.target_mean_, old.target_std_)
        shapes = {k: tuple(v.shape) for k, v in new.network_.state_dict().items()}
        assert shapes == {k: tuple(v.shape) for k, v in old.network_.state_dict().items()}
        assert best_iteration(new) == new.best_epoch_ - 1 and new.n_epochs_ >= new.best_epoch_


@pytest.mark.parametrize("family", FAMILIES)
def test_update_is_deterministic(family, data):
    first, second = updated(family, data), updated(family, data)
    np.testing.assert_array_equal(holdout_scores(first, data), holdout_scores(second, data))
    assert best_iteration(first) == best_iteration(second)


@pytest.mark.parametrize("family", FAMILIES)
def test_update_on_a_changed_relationship_beats_the_stale_champion(family, data):
    stale, fresh = rank_ic(champion(family, data), data), rank_ic(updated(family, data), data)
    assert stale < 0.1  # f1 no longer drives the label
    assert fresh > stale + 0.1, (stale, fresh)


@pytest.mark.parametrize("family", FAMILIES)
def test_update_refuses_other_feature_columns_naming_them(family, data):
    X, y, rows = data
    other = X[rows["new"]].drop(columns=["f3"]).assign(f4=0.0)
    model = copy.deepcopy(champion(family, data))
    with pytest.raises(ValueError, match=r"missing \['f3'\], extra \['f4'\]"):
        model.fit_incremental((other, y[rows["new"]]))
    with pytest.raises(ValueError, match=r"missing \['f3'\], extra \['f4'\]"):
        update_model(model, other, y[rows["new"]], HORIZON)
    assert model.incremental_updates_ == 0
    # The same columns in another order are the same features.
    reordered = X[rows["new"]][["f3", "f1", "f2"]]
    model.fit_incremental((reordered, y[rows["new"]]), rounds=1)
    assert model.feature_names_ == ["f1", "f2", "f3"]


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_after_an_update_gives_identical_predictions(family, data, tmp_path):
    model = updated(family, data)
    model.save(tmp_path / family)
    loaded = load_model(family, tmp_path / family)
    np.testing.assert_array_equal(holdout_scores(loaded, data), holdout_scores(model, data))
    assert loaded.incremental_updates_ == 1
    assert best_iteration(loaded) == best_iteration(model)
    assert loaded.target_clip_ == model.target_clip_ and loaded.scaler_ == model.scaler_


@pytest.mark.parametrize("family", TREES)
def test_a_loaded_champion_updates_exactly_as_the_one_in_memory(family, data, tmp_path):
    champion(family, data).save(tmp_path)
    from_disk = load_model(family, tmp_path)
    X, y, rows = data
    twice, _ = update_model(from_disk, X[rows["new"]], y[rows["new"]], HORIZON)
    np.testing.assert_array_equal(holdout_scores(twice, data), holdout_scores(updated(family, data), data))


@pytest.mark.parametrize("family", ["xgboost", "lightgbm", "gru"])
def test_an_update_that_only_hurts_on_valid_keeps_the_old_predictions(family, data):
    """Early stopping starts from the model as it was: trained on pure noise and validated on the
    regime the champion learnt, no new round or epoch wins, so the scores stay the champion's."""
    X, y, rows = data
    old = champion(family, data)
    noise = pd.Series(np.random.default_rng(7).normal(scale=3.0, size=int(rows["new"].sum())), index=X.index[rows["new"]])
    valid_rows = rows["old"] & X.index.get_level_values("date").isin(X.index.get_level_values("date")[rows["old"]].unique()[-40:])
    model = copy.deepcopy(old).fit_incremental((X[rows["new"]], noise), (X[valid_rows], y[valid_rows]), rounds=5)
    np.testing.assert_array_equal(holdout_scores(model, data), holdout_scores(old, data))
    assert best_iteration(model) == best_iteration(old) and model.incremental_updates_ == 1
    if family in TREES:
        assert model.n_rounds_ > old.best_iteration_ + 1  # the rejected trees are kept, unused


# --- update_model's recipe ----------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["xgboost", "lstm"])
def test_update_model_clips_at_the_champions_bounds_and_early_stops_on_the_purged_tail(family, data):
    X, y, rows = data
    old = champion(family, data)
    X_new, y_new = X[rows["new"]], y[rows["new"]].copy()
    y_new.iloc[::20] = 100.0  # 5% outliers: the new rows' own 99% quantile would be 100
    assert winsorize_bounds(y_new)[1] == 100.0
    model, fit_mask = update_model(old, X_new, y_new, HORIZON, rounds=UPDATE_ROUNDS[family])
    expected, _ = early_stopping_split(X_new.index.get_level_values("date").to_numpy(), HORIZON)
    np.testing.assert_array_equal(fit_mask, expected)
    assert model.target_clip_ == old.target_clip_ and old.target_clip_[1] < 5
    assert np.abs(holdout_scores(model, data)).max() < 5  # trained on the champion's clipped target, not on 100s


def test_update_model_needs_the_champions_target_clip(data):
    X, y, rows = data
    model = copy.deepcopy(champion("xgboost", data))
    del model.target_clip_
    with pytest.raises(ValueError, match="no target_clip_"):
        update_model(model, X[rows["new"]], y[rows["new"]], HORIZON)


# --- the interface --------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_default_update_budget_and_bad_rounds(family, data):
    model = copy.deepcopy(champion(family, data))
    expected = max(1, PARAMS[family]["max_epochs"] // 3) if family in NETS else max(PARAMS[family]["n_estimators"] // 4, 10)
    assert model.default_update_rounds() == expected
    X, y, rows = data
    for bad in (0, -3, 2.5, True):
        with pytest.raises(ValueError, match="rounds must be a whole number"):
            model.fit_incremental((X[rows["new"]], y[rows["new"]]), rounds=bad)


def test_a_family_without_incremental_update_says_so():
    class Frozen(Model):
        family = "frozen"

        def fit(self, train, valid=None):
            return self

        def predict(self, X):
            return np.zeros(len(X))

        def save(self, path):
            raise NotImplementedError

        @classmethod
        def load(cls, path):
            raise NotImplementedError

        def get_params(self):
            return {}

    with pytest.raises(NotImplementedError, match="Frozen \\(frozen\\) has no incremental update"):
        Frozen().fit_incremental((pd.DataFrame(), pd.Series(dtype=float)))
