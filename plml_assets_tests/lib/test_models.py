"""Every model family through the one interface, plus what is particular to each.

Real data: six stocks of the 20-stock panel bundled in skfolio, features from ``build_features``
and 5-day forward returns, the last ~600 dates split by date (purged) into train/valid/test.
Synthetic data: y = f1 + noise, where the answer is known. Networks and forests are tiny so the
file runs in well under a minute on 2 cores.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.features.base import build_features
from plml_assets.lib.models.lightgbm_model import LightGBMModel
from plml_assets.lib.models.registry import MODEL_FAMILIES, load_model, make_model
from plml_assets.lib.models.sequence import GRUModel, LSTMModel, SequenceModel, SequenceWindows
from plml_assets.lib.validation.metrics import evaluate_predictions

HORIZON = 5
SYMBOLS = ["AAPL", "AMD", "BAC", "CVX", "JPM", "KO"]
FAMILIES = ["xgboost", "lightgbm", "lstm", "gru", "elastic_net"]
SEQUENCE_FAMILIES = ["lstm", "gru"]
TINY_NET = {"window": 8, "hidden_size": 8, "max_epochs": 6, "patience": 3, "batch_size": 128, "lr": 5e-3}
SMALL = {
    "xgboost": {"n_estimators": 60, "max_depth": 3, "min_child_weight": 5.0, "early_stopping_rounds": 10,
                "nthread": 1},
    "lightgbm": {"n_estimators": 60, "num_leaves": 7, "min_child_samples": 10, "early_stopping_rounds": 10,
                 "n_jobs": 1},
    "lstm": TINY_NET,
    "gru": TINY_NET,
    "elastic_net": {"alpha": 1e-4, "l1_ratio": 0.5},
}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def dates_of(frame: pd.DataFrame | pd.Series) -> pd.Index:
    return frame.index.get_level_values("date")


@pytest.fixture(scope="module")
def real(embedded_panel) -> dict[str, tuple[pd.DataFrame, pd.Series]]:
    """Six real stocks; the last 600 labelled dates split 420 train / 75 valid / 95 test with
    ``HORIZON`` dates purged between blocks. Features are computed on the history before too."""
    panel = embedded_panel.loc[(slice("2008-01-01", "2013-12-31"), SYMBOLS), :]
    features, _ = build_features(panel)
    labels = forward_returns(panel, HORIZON)
    labelled = np.sort(dates_of(labels.dropna()).unique())[-600:]
    blocks = {"train": labelled[:420], "valid": labelled[420 + HORIZON:500], "test": labelled[500 + HORIZON:]}
    out = {}
    for name, block in blocks.items():
        rows = dates_of(features).isin(block) & labels.notna().to_numpy()
        out[name] = (features[rows], labels[rows])
    return out


def synthetic_panel(n_dates: int = 300, n_symbols: int = 6, signal: float = 1.0, seed: int = 0):
    """f1..f3 ~ N(0, 1) per row and y = signal * f1 + N(0, 1)."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2015-01-05", periods=n_dates, name="date")
    index = pd.MultiIndex.from_product([dates, [f"S{k}" for k in range(n_symbols)]], names=["date", "symbol"])
    X = pd.DataFrame(rng.normal(size=(len(index), 3)), index=index, columns=["f1", "f2", "f3"]).astype("float32")
    y = pd.Series(signal * X["f1"].to_numpy() + rng.normal(size=len(index)), index=index, name="y")
    return X, y


def split_by_date(X: pd.DataFrame, y: pd.Series, fraction: float = 0.75):
    dates = np.sort(dates_of(X).unique())
    cut = dates[int(len(dates) * fraction)]
    train, valid = dates_of(X) < cut, dates_of(X) >= cut
    return (X[train], y[train]), (X[valid], y[valid])


_fitted: dict[str, object] = {}


def fitted_on_real(family: str, real) -> object:
    """One fit per family on the real split, shared by the tests that only read it."""
    if family not in _fitted:
        _fitted[family] = make_model(family, **SMALL[family]).fit(real["train"], real["valid"])
    return _fitted[family]


# --- the interface, every family -------------------------------------------------------------------

def test_registry_names_each_family_by_its_own_name():
    assert sorted(MODEL_FAMILIES) == sorted(FAMILIES)
    assert all(cls.family == name for name, cls in MODEL_FAMILIES.items())
    with pytest.raises(ValueError, match="unknown model family 'prophet'.*lightgbm"):
        make_model("prophet")


def test_model_lib_does_not_import_dagster():
    code = ("import sys, plml_assets.lib.models.registry; "
            "sys.exit(int(any(m.split('.')[0] == 'dagster' for m in sys.modules)))")
    assert subprocess.run([sys.executable, "-c", code], timeout=60).returncode == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_fit_predict_gives_one_finite_varying_score_per_row(family, real):
    X_test, _ = real["test"]
    unfitted = make_model(family, **SMALL[family])
    assert not unfitted.is_fitted
    with pytest.raises(RuntimeError, match="not fitted"):
        unfitted.predict(X_test)
    model = fitted_on_real(family, real)
    assert model.is_fitted
    pred = model.predict(X_test)
    assert pred.shape == (len(X_test),) and pred.dtype == np.float64
    assert np.isfinite(pred).all() and np.unique(pred).size > 1
    with pytest.raises(ValueError, match="lacks feature column"):
        model.predict(X_test.drop(columns=["ret_5d"]))


@pytest.mark.parametrize("family", FAMILIES)
def test_save_load_round_trip_gives_identical_predictions(family, real, tmp_path):
    model = fitted_on_real(family, real)
    written = model.save(tmp_path / family)
    assert written.exists()
    loaded = load_model(family, tmp_path / family)
    X_test, _ = real["test"]
    np.testing.assert_array_equal(loaded.predict(X_test), model.predict(X_test))
    assert {k: v for k, v in loaded.get_params().items() if k != "device"} == {
        k: v for k, v in model.get_params().items() if k != "device"
    }
    assert loaded.get_params()["device"] == "cpu"


@pytest.mark.parametrize("family", FAMILIES)
def test_same_seed_same_predictions(family, real):
    X_test, _ = real["test"]
    again = make_model(family, **SMALL[family]).fit(real["train"], real["valid"])
    np.testing.assert_array_equal(again.predict(X_test), fitted_on_real(family, real).predict(X_test))


@pytest.mark.parametrize("family", FAMILIES)
def test_learns_a_planted_signal(family):
    train, valid = split_by_date(*synthetic_panel(n_dates=300))
    params = {**SMALL[family], "max_epochs": 15} if family in SEQUENCE_FAMILIES else SMALL[family]
    model = make_model(family, **params).fit(train, valid)
    pred = model.predict(valid[0])
    metrics = evaluate_predictions(valid[1], pred, dates_of(valid[0]))
    assert metrics["rank_ic"] > 0.3, metrics


BAD_PARAMS = [
    ("xgboost", "learning_rate", 0.0),
    ("xgboost", "max_depth", 0),
    ("xgboost", "scaling", "zscore"),
    ("lightgbm", "scaling", None),
    ("lightgbm", "num_leaves", 1),
    ("lightgbm", "learning_rate", -0.1),
    ("lightgbm", "subsample", 1.5),
    ("lightgbm", "max_depth", 0),
    ("lightgbm", "n_jobs", 0),
    ("lightgbm", "device", "tpu"),
    ("lightgbm", "n_estimators", "many"),
    ("lstm", "window", 0),
    ("lstm", "hidden_size", 0),
    ("lstm", "dropout", 1.0),
    ("lstm", "lr", 0.0),
    ("lstm", "grad_clip", 0.0),
    ("gru", "batch_size", 2.5),
    ("gru", "patience", -1),
    ("gru", "device", "gpu"),
    ("gru", "weight_decay", -1e-3),
    ("gru", "scaling", "robust"),
    ("gru", "pooling", "mean"),
    ("lstm", "bidirectional", "yes"),
    ("elastic_net", "alpha", 0.0),
    ("elastic_net", "l1_ratio", 1.5),
    ("elastic_net", "device", "cuda"),
]


@pytest.mark.parametrize(("family", "name", "value"), BAD_PARAMS)
def test_bad_hyper_parameter_raises_value_error_naming_it(family, name, value):
    with pytest.raises(ValueError, match=rf"{name}={value!r}"):
        make_model(family, **{name: value})


# --- trees -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
def test_tree_importance_ranks_the_planted_feature_first(family):
    train, valid = split_by_date(*synthetic_panel(n_dates=200))
    model = make_model(family, **SMALL[family]).fit(train, valid)
    importance = model.feature_importance()
    assert set(importance) == {"f1", "f2", "f3"}
    assert max(importance, key=importance.get) == "f1"


def test_lightgbm_reused_dataset_gives_the_same_model_as_a_fresh_one():
    (X, y), (Xv, yv) = split_by_date(*synthetic_panel(n_dates=200))
    dtrain = LightGBMModel.matrix(X, y)
    dvalid = LightGBMModel.matrix(Xv, yv, reference=dtrain)
    LightGBMModel(min_child_samples=80, n_estimators=30).fit_matrix(dtrain, dvalid)
    # A smaller min_child_samples on the reused Dataset needs feature_pre_filter=False.
    params = {"min_child_samples": 5, "n_estimators": 30, "num_leaves": 15, "seed": 3}
    reused = LightGBMModel(**params).fit_matrix(dtrain, dvalid)
    fresh = LightGBMModel(**params).fit((X, y), (Xv, yv))
    np.testing.assert_array_equal(reused.predict(Xv), fresh.predict(Xv))
    np.testing.assert_array_equal(reused.predict_matrix(dvalid), fresh.predict(Xv))


def test_lightgbm_fit_bins_the_same_rows_once_and_fits_what_a_fresh_dataset_fits():
    """A study's trials fit one fold's rows again and again through ``fit``: the second trial
    reuses the first one's binned Datasets (even with a smaller min_child_samples), and its model
    is the one fresh Datasets give; other rows get their own, and the cache stays bounded."""
    from plml_assets.lib.models import lightgbm_model

    (X, y), (Xv, yv) = split_by_date(*synthetic_panel(n_dates=200))
    lightgbm_model.clear_dataset_cache()
    LightGBMModel(min_child_samples=80, n_estimators=30).fit((X, y), (Xv, yv))
    (dtrain, validations), = lightgbm_model._DATASETS.values()
    params = {"min_child_samples": 5, "n_estimators": 30, "num_leaves": 15, "seed": 3}
    reused = LightGBMModel(**params).fit((X.copy(), y.copy()), (Xv.copy(), yv.copy()))  # equal values, new objects
    assert len(lightgbm_model._DATASETS) == 1 and len(validations) == 1
    assert lightgbm_model._DATASETS[next(iter(lightgbm_model._DATASETS))][0] is dtrain
    lightgbm_model.clear_dataset_cache()
    fresh = LightGBMModel(**params).fit((X, y), (Xv, yv))
    np.testing.assert_array_equal(reused.predict(Xv), fresh.predict(Xv))
    for shift in range(1, lightgbm_model.DATASET_CACHE_SIZE + 2):  # other rows: binned anew, the oldest dropped
        LightGBMModel(n_estimators=5).fit((X + shift, y), (Xv + shift, yv))
    assert len(lightgbm_model._DATASETS) == lightgbm_model.DATASET_CACHE_SIZE
    assert all(entry[0] is not dtrain for entry in lightgbm_model._DATASETS.values())


def test_lightgbm_early_stopping_keeps_the_best_round_on_noise():
    X, _ = synthetic_panel(n_dates=200)
    noise = pd.Series(np.random.default_rng(1).normal(size=len(X)), index=X.index)
    train, valid = split_by_date(X, noise)
    model = LightGBMModel(n_estimators=300, early_stopping_rounds=10, learning_rate=0.1).fit(train, valid)
    assert model.n_rounds_ < 300
    assert model.best_iteration_ == model.n_rounds_ - 11
    valid_l2 = model.history_["valid"]["l2"]
    assert int(np.argmin(valid_l2)) == model.best_iteration_


# --- sequences: windows ----------------------------------------------------------------------------

def ragged_panel(seed: int = 0) -> pd.DataFrame:
    """Four symbols with different starts and skipped dates, rows shuffled; ``sid`` is the symbol's
    id and ``day`` the date's ordinal, so every window can be checked row by row."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=25, name="date")
    parts = []
    for sid, start in zip(range(1, 5), (0, 3, 10, 0), strict=True):
        keep = np.flatnonzero(rng.random(len(dates) - start) > 0.2) + start
        parts.append(pd.DataFrame({"date": dates[keep], "symbol": f"S{sid}", "sid": float(sid), "day": keep + 1.0}))
    frame = pd.concat(parts).set_index(["date", "symbol"])
    return frame.iloc[rng.permutation(len(frame))]


@pytest.mark.parametrize("window", [1, 4, 9])
def test_windows_hold_only_the_rows_own_symbol_up_to_it_in_date_order(window):
    frame = ragged_panel()
    windows = SequenceWindows.from_frame(frame, window)
    batch = windows.batch(np.arange(len(frame)))
    assert batch.shape == (len(frame), window, 3)
    for i, (_, symbol) in enumerate(frame.index):
        sid, day = frame.iloc[i]["sid"], frame.iloc[i]["day"]
        own = frame.xs(symbol, level="symbol")
        expected_days = np.sort(own["day"][own["day"] <= day].to_numpy())[-window:]
        steps, mask = batch[i, :, :2], batch[i, :, 2]
        n_real = len(expected_days)
        np.testing.assert_array_equal(mask, [0.0] * (window - n_real) + [1.0] * n_real)  # padding first
        assert (steps[mask == 0] == 0).all()
        assert (steps[mask == 1, 0] == sid).all()  # never another symbol's row
        np.testing.assert_array_equal(steps[mask == 1, 1], expected_days)  # ends at the row, no later row


def test_windows_refuse_a_duplicate_row():
    frame = ragged_panel()
    with pytest.raises(ValueError, match="duplicate row"):
        SequenceWindows.from_frame(pd.concat([frame, frame.iloc[:1]]), 3)


def test_windows_of_the_full_panel_build_in_seconds(embedded_panel):
    features, _ = build_features(embedded_panel)
    start = time.perf_counter()
    windows = SequenceWindows.from_frame(features.iloc[:, :30], 20)
    windows.batch(np.arange(0, len(features), 37))
    assert time.perf_counter() - start < 5.0
    assert len(windows) == len(features) > 150_000


def test_sequence_models_need_a_date_symbol_panel():
    X, y = synthetic_panel(n_dates=30)
    with pytest.raises(ValueError, match=r"\(date, symbol\) MultiIndex"):
        LSTMModel(**TINY_NET).fit((X.reset_index(drop=True), y.reset_index(drop=True)))
    with pytest.raises(TypeError, match="base class"):
        SequenceModel()


# --- sequences: training -----------------------------------------------------------------------------

@pytest.mark.parametrize("family", SEQUENCE_FAMILIES)
def test_prediction_at_t_ignores_later_rows_and_other_symbols(family, real):
    model = fitted_on_real(family, real)
    X = pd.concat([real["valid"][0], real["test"][0]])
    dates = dates_of(X)
    t = np.sort(dates.unique())[len(dates.unique()) // 2]
    base = model.predict(X)

    future = X.copy()
    rng = np.random.default_rng(0)
    later = np.asarray(dates > t)
    future.loc[later] = rng.normal(scale=50.0, size=(later.sum(), X.shape[1])).astype("float32")
    np.testing.assert_array_equal(model.predict(future)[~later], base[~later])
    np.testing.assert_allclose(model.predict(X[~later]), base[~later], rtol=1e-5, atol=1e-7)

    other = X.copy()
    is_amd = np.asarray(X.index.get_level_values("symbol") == "AMD")
    other.loc[is_amd] = np.nan
    changed = model.predict(other)
    np.testing.assert_array_equal(changed[~is_amd], base[~is_amd])
    assert not np.array_equal(changed[is_amd], base[is_amd])


ARCHITECTURES = [("lstm", True, "last"), ("gru", False, "attention"), ("gru", True, "attention")]


@pytest.mark.parametrize(("family", "bidirectional", "pooling"), ARCHITECTURES)
def test_bidirectional_and_attention_pooling_nets_learn_round_trip_and_see_no_future(family, bidirectional, pooling, tmp_path):
    """Issue 17 item 2: the architecture search's cells read their window both ways and/or pool it by
    temporal attention; each learns a planted signal, saves and loads to the same predictions, and
    its score at t does not move when later rows change (a window holds only dates up to t)."""
    train, valid = split_by_date(*synthetic_panel(n_dates=240))
    model = make_model(family, **{**TINY_NET, "max_epochs": 12}, bidirectional=bidirectional, pooling=pooling).fit(train, valid)
    net = model.network_
    assert net.rnn.bidirectional is bidirectional and (hasattr(net, "score") is (pooling == "attention"))
    assert net.head.in_features == TINY_NET["hidden_size"] * (2 if bidirectional else 1)
    pred = model.predict(valid[0])
    assert evaluate_predictions(valid[1], pred, dates_of(valid[0]))["rank_ic"] > 0.3

    model.save(tmp_path / "net")
    loaded = load_model(family, tmp_path / "net")
    assert loaded.get_params()["bidirectional"] is bidirectional and loaded.get_params()["pooling"] == pooling
    np.testing.assert_array_equal(loaded.predict(valid[0]), pred)

    X = valid[0]
    dates = dates_of(X)
    t = np.sort(dates.unique())[len(dates.unique()) // 2]
    later = np.asarray(dates > t)
    future = X.copy()
    future.loc[later] = np.random.default_rng(1).normal(scale=50.0, size=(later.sum(), X.shape[1])).astype("float32")
    np.testing.assert_array_equal(model.predict(future)[~later], pred[~later])


def test_scaler_is_fitted_on_training_rows_only(real):
    X, y = real["train"]
    Xv, yv = real["valid"]
    model = GRUModel(**{**TINY_NET, "max_epochs": 1}).fit((X, y), (Xv * 100.0, yv * 100.0))
    np.testing.assert_allclose(model.feature_mean_, np.nanmean(X.to_numpy(dtype=np.float64), axis=0), rtol=1e-9)
    np.testing.assert_allclose(model.feature_std_, np.nanstd(X.to_numpy(dtype=np.float64), axis=0), rtol=1e-9)
    assert model.target_mean_ == pytest.approx(float(y.mean()))


def test_rows_with_an_unknown_target_serve_as_history_only(real):
    X, y = real["train"]
    blanked = y.copy()
    blanked.iloc[: len(y) // 2] = np.nan
    model = LSTMModel(**{**TINY_NET, "max_epochs": 1}).fit((X, blanked))
    assert np.isfinite(model.predict(X)).all()
    assert model.target_mean_ == pytest.approx(float(y.iloc[len(y) // 2:].mean()))


@pytest.mark.parametrize("family", SEQUENCE_FAMILIES)
def test_early_stopping_stops_before_max_epochs_on_noise_and_keeps_the_best_epoch(family):
    X, _ = synthetic_panel(n_dates=200)
    noise = pd.Series(np.random.default_rng(2).normal(size=len(X)), index=X.index)
    train, valid = split_by_date(X, noise)
    params = {**TINY_NET, "hidden_size": 16, "lr": 2e-2, "max_epochs": 60, "patience": 3, "batch_size": 64}
    model = make_model(family, **params).fit(train, valid)
    assert model.n_epochs_ < 60
    assert model.best_epoch_ == model.n_epochs_ - 3
    best = min(model.history_["valid"])
    assert model.history_["valid"][model.best_epoch_ - 1] == best
    # The weights kept are the best epoch's: their validation loss is the best one recorded.
    # Validation windows reach back into the training rows, so predict with that history.
    with_history = model.predict(pd.concat([train[0], valid[0]]))[len(train[0]):]
    scaled_pred = (with_history - model.target_mean_) / model.target_std_
    scaled_true = model._scaled_target(valid[1].to_numpy())
    assert np.mean((scaled_pred - scaled_true) ** 2) == pytest.approx(best, rel=1e-4)


def grad_norms_while_fitting(model, data) -> list[float]:
    """Total gradient norm seen by the optimizer at each step, i.e. after any clipping."""
    norms: list[float] = []

    def record(optimizer, args, kwargs):
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norms.append(float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))))

    handle = register_optimizer_step_pre_hook(record)
    try:
        model.fit(*data)
    finally:
        handle.remove()
    return norms


@pytest.mark.parametrize("family", SEQUENCE_FAMILIES)
def test_gradient_clipping_bounds_the_gradient_norm(family):
    data = split_by_date(*synthetic_panel(n_dates=60))
    params = {**TINY_NET, "max_epochs": 2}
    unclipped = grad_norms_while_fitting(make_model(family, **params, grad_clip=None), data)
    clipped = grad_norms_while_fitting(make_model(family, **params, grad_clip=0.05), data)
    assert len(clipped) == len(unclipped) > 0
    assert max(unclipped) > 0.5  # the bound below is binding
    assert max(clipped) <= 0.05 * (1 + 1e-5)


def test_state_loads_with_weights_only_and_meta_holds_the_scaler(real, tmp_path):
    model = fitted_on_real("lstm", real)
    state_file = model.save(tmp_path)
    state = torch.load(state_file, weights_only=True, map_location="cpu")
    assert set(state) == set(model.network_.state_dict())
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())
    meta = json.loads((tmp_path / "model_meta.json").read_text())
    assert meta["family"] == "lstm" and meta["feature_names"] == list(real["train"][0].columns)
    np.testing.assert_array_equal(meta["feature_mean"], model.feature_mean_)
    np.testing.assert_array_equal(meta["feature_std"], model.feature_std_)
    with pytest.raises(ValueError, match="holds a 'lstm' model"):
        GRUModel.load(tmp_path)


def test_device_auto_picks_cuda_only_when_available():
    data = split_by_date(*synthetic_panel(n_dates=30))
    model = GRUModel(**{**TINY_NET, "max_epochs": 1}, device="auto").fit(*data)
    assert model.device_ == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            GRUModel(**{**TINY_NET, "max_epochs": 1}, device="cuda").fit(*data)


def test_fit_leaves_the_callers_torch_state_as_it_was():
    data = split_by_date(*synthetic_panel(n_dates=30))
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    LSTMModel(**{**TINY_NET, "max_epochs": 1}, seed=7).fit(*data)
    np.testing.assert_array_equal(torch.rand(3), expected)
    assert not torch.are_deterministic_algorithms_enabled()


def test_elastic_net_standardizes_within_each_date_and_its_contributions_are_exact():
    """The interpretable family: a feature's scale on one date never reaches another date, the
    coefficients are sparse on noise, and coef x z is the score exactly."""
    from plml_assets.lib.models.linear_model import per_date_z

    X, y = synthetic_panel(n_dates=200, n_symbols=8)
    shifted = X.copy()
    later = dates_of(X) >= dates_of(X)[len(X) // 2]
    shifted.loc[later] = shifted.loc[later] * 100.0 + 7.0  # another scale and level after some date
    np.testing.assert_allclose(per_date_z(shifted), per_date_z(X), atol=1e-6)
    model = make_model("elastic_net", alpha=0.02, l1_ratio=1.0).fit((X, y))
    assert abs(model.coef_[0]) > 0.5 and np.all(np.abs(model.coef_[1:]) < 0.05)  # f1 drives y; the lasso drops noise
    parts = model.contributions(X)
    np.testing.assert_allclose(parts.sum(axis=1).to_numpy(), model.predict(X), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="indexed by \\(date, symbol\\)"):
        model.predict(X.reset_index(drop=True))


# --- monotone constraints (issue 16 item 4) ------------------------------------------------------

@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
def test_declared_monotone_constraints_make_the_score_monotone_in_that_feature(family):
    """The label rises with f1 only on average (a noisy hump on top of the trend): unconstrained trees
    follow the hump, constrained ones score never lower for a larger f1 with the other features held,
    and a decreasing declaration never higher. The constraint survives save and load."""
    rng = np.random.default_rng(0)
    X, _ = synthetic_panel(n_dates=200)
    f1 = X["f1"].to_numpy()
    y = pd.Series(0.5 * f1 - 1.5 * np.exp(-((f1 - 0.5) ** 2) / 0.05) + rng.normal(scale=0.3, size=len(X)), index=X.index)
    train, valid = split_by_date(X, y)
    grid = pd.DataFrame({c: np.full(60, float(X[c].median())) for c in X.columns}, index=X.index[:60])
    grid["f1"] = np.linspace(f1.min(), f1.max(), 60)
    params = {**SMALL[family], "n_estimators": 80}
    free = make_model(family, **params).fit(train, valid)
    assert (np.diff(free.predict(grid)) < -1e-6).any()  # the hump: unconstrained scores fall somewhere
    up = make_model(family, **params, monotone_constraints={"f1": 1}).fit(train, valid)
    assert (np.diff(up.predict(grid)) >= -1e-9).all()
    down = make_model(family, **params, monotone_constraints='{"f1": -1}').fit(train, valid)
    assert (np.diff(down.predict(grid)) <= 1e-9).all()
    assert up.get_params()["monotone_constraints"] == {"f1": 1} and down.get_params()["monotone_constraints"] == {"f1": -1}
    rebuilt = make_model(family, **up.get_params())
    assert rebuilt.monotone_constraints == {"f1": 1}


@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
def test_monotone_constraints_refuse_a_bad_direction_and_ignore_features_a_fold_lacks(family):
    with pytest.raises(ValueError, match="1 \\(increasing\\) or -1.*'f1'"):
        make_model(family, monotone_constraints={"f1": 2})
    with pytest.raises(ValueError, match="JSON object"):
        make_model(family, monotone_constraints="{f1: 1")
    assert make_model(family, monotone_constraints="").monotone_constraints is None
    train, valid = split_by_date(*synthetic_panel(n_dates=120))
    plain = make_model(family, **SMALL[family]).fit(train, valid)
    absent = make_model(family, **SMALL[family], monotone_constraints={"not_selected": 1}).fit(train, valid)
    np.testing.assert_array_equal(plain.predict(valid[0]), absent.predict(valid[0]))
