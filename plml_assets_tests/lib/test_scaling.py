"""Feature scaling: fitted on training rows only, carried inside every model family.

The scaler alone on small synthetic panels (heavy-tailed columns, NaNs, a constant column), then
each family fitted with a scaling, saved, loaded and compared. Models are tiny (a few trees, a
few epochs of an 8-unit net on 360 rows), one thread each.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.special import ndtri

from plml_assets.lib.features.scaling import SCALINGS, FeatureScaler
from plml_assets.lib.models.base import SCALER_FILE
from plml_assets.lib.models.registry import DEFAULT_PARAMS, load_model, make_model, resolve_params
from plml_assets_tests.lib.test_models import SMALL, TINY_NET, split_by_date

FAMILIES = ["xgboost", "lightgbm", "lstm", "gru"]
NET = {**TINY_NET, "max_epochs": 2, "num_threads": 1}
QUICK = {**SMALL, "lstm": NET, "gru": NET}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def panel(n_dates: int = 60, n_symbols: int = 6, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    """f1 ~ N(0, 1) carries the signal; f2 is heavy-tailed (Student t, 2 dof) and shifted; f3 is
    lognormal with some NaNs; y = f1 + noise."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2018-01-01", periods=n_dates, name="date")
    index = pd.MultiIndex.from_product([dates, [f"S{k}" for k in range(n_symbols)]], names=["date", "symbol"])
    n = len(index)
    f3 = rng.lognormal(sigma=1.5, size=n)
    f3[rng.random(n) < 0.1] = np.nan
    X = pd.DataFrame(
        {"f1": rng.normal(size=n), "f2": 10.0 + 3.0 * rng.standard_t(2, size=n), "f3": f3}, index=index
    ).astype("float32")
    y = pd.Series(X["f1"].to_numpy(dtype=np.float64) + 0.5 * rng.normal(size=n), index=index, name="y")
    return X, y


# --- the scaler ------------------------------------------------------------------------------------

def test_unknown_method_and_bad_settings_raise_value_error():
    with pytest.raises(ValueError, match=r"unknown scaling method 'zscore'.*robust_z"):
        FeatureScaler("zscore")
    with pytest.raises(ValueError, match="clip"):
        FeatureScaler("robust_z", clip=0)
    with pytest.raises(ValueError, match="n_quantiles"):
        FeatureScaler("rank_gauss", n_quantiles=1)


@pytest.mark.parametrize("method", SCALINGS)
def test_fit_needs_rows_and_transform_names_missing_columns(method):
    X, _ = panel(n_dates=5)
    with pytest.raises(ValueError, match="no rows"):
        FeatureScaler(method).fit(X.iloc[:0])
    scaler = FeatureScaler(method).fit(X)
    with pytest.raises(ValueError, match=r"lacks fitted column\(s\) \['f2', 'f3'\]"):
        scaler.transform(X[["f1"]])
    with pytest.raises(RuntimeError, match="not fitted"):
        FeatureScaler(method).transform(X)


def test_robust_z_matches_a_numpy_reference():
    X, _ = panel()
    X["flat"] = np.float32(2.0)  # IQR 0: scale 1
    scaler = FeatureScaler("robust_z", clip=4.0).fit(X)
    values = X.to_numpy(dtype=np.float64)
    median = np.nanmedian(values, axis=0)
    q25, q75 = np.nanpercentile(values, [25, 75], axis=0)
    scale = (q75 - q25) / 1.349
    scale[scale == 0] = 1.0
    expected = np.clip((values - median) / scale, -4.0, 4.0)
    np.testing.assert_allclose(scaler.center_, median, rtol=1e-12)
    np.testing.assert_allclose(scaler.scale_, scale, rtol=1e-12)
    out = scaler.transform(X)
    assert out.index.equals(X.index) and list(out.columns) == list(X.columns)
    assert (out.dtypes == np.float32).all()
    np.testing.assert_allclose(out.to_numpy(), expected, rtol=1e-6, atol=1e-6)
    assert np.abs(out.to_numpy()[np.isfinite(values)]).max() == pytest.approx(4.0)  # the t(2) tail is clipped
    assert (out["flat"] == 0).all()


@pytest.mark.parametrize("method", ["robust_z", "rank_gauss"])
def test_statistics_come_from_the_fitting_rows_only(method):
    (X, _), (Xv, _) = split_by_date(*panel())
    scaler = FeatureScaler(method).fit(X)
    state = json.dumps(scaler.to_dict())
    before = scaler.transform(X)
    altered = Xv * 1000.0 - 7.0
    scaler.transform(altered)  # transforming other rows changes nothing
    assert json.dumps(scaler.to_dict()) == state
    again = FeatureScaler(method).fit(X)  # and fitting on the same training rows gives the same state
    assert again == scaler
    pd.testing.assert_frame_equal(again.transform(X), before)
    assert FeatureScaler(method).fit(altered) != scaler


def test_rank_gauss_is_monotone_and_about_standard_normal_on_training_rows():
    X, _ = panel(n_dates=400)
    scaler = FeatureScaler("rank_gauss", n_quantiles=256).fit(X)
    out = scaler.transform(X)
    for column in X.columns:
        z = out[column].dropna().to_numpy(dtype=np.float64)
        assert abs(z.mean()) < 0.05 and 0.9 < z.std() < 1.05, (column, z.mean(), z.std())
        assert abs(np.median(z)) < 0.05
    # Monotone over a grid that runs well past the training range; outside it, the extreme quantiles.
    lo, hi = float(X["f2"].min()), float(X["f2"].max())
    grid = np.linspace(lo - 100.0, hi + 100.0, 5001)
    probe = pd.DataFrame({"f1": 0.0, "f2": grid, "f3": 1.0}, index=pd.RangeIndex(len(grid)))
    z = scaler.transform(probe)["f2"].to_numpy(dtype=np.float64)
    assert (np.diff(z) >= 0).all() and z[0] < z[-1]
    edge = float(ndtri(1.0 - 1.0 / (2 * 256)))
    np.testing.assert_allclose(z[grid < lo], -edge, rtol=1e-6)
    np.testing.assert_allclose(z[grid > hi], edge, rtol=1e-6)


def test_rank_gauss_maps_a_repeated_training_value_to_its_mid_rank():
    X = pd.DataFrame({"a": np.r_[np.zeros(50), np.arange(1.0, 51.0)]})
    out = FeatureScaler("rank_gauss", n_quantiles=101).fit(X).transform(pd.DataFrame({"a": [0.0]}))
    assert out["a"].iloc[0] == pytest.approx(float(ndtri(0.25)), abs=0.02)


def test_date_rank_ranks_each_dates_cross_section_alone():
    X, _ = panel(n_dates=20)
    X.iloc[3, 0] = np.nan
    scaler = FeatureScaler("date_rank").fit(X.iloc[:6])  # stateless: the fitting rows do not matter
    out = scaler.transform(X)
    for _, block in X.groupby(level="date"):
        got = out.loc[block.index]
        for column in X.columns:
            known = block[column].dropna()
            expected = (known.rank() - 1) / (len(known) - 1) - 0.5
            np.testing.assert_allclose(got.loc[known.index, column], expected, rtol=1e-6)
            assert got[column].min() == -0.5 and got[column].max() == 0.5
    # Another date's values change nothing on this date.
    first = X.index.get_level_values("date") == X.index.get_level_values("date")[0]
    shaken = X.copy()
    shaken.loc[~first] = -shaken.loc[~first] * 50
    pd.testing.assert_frame_equal(scaler.transform(shaken)[first], out[first])
    assert scaler.to_dict() == {"method": "date_rank", "clip": 5.0, "n_quantiles": 256, "columns": ["f1", "f2", "f3"]}
    with pytest.raises(ValueError, match="'date' level"):
        scaler.transform(X.reset_index(drop=True))


@pytest.mark.parametrize("method", SCALINGS)
def test_nan_passes_through_and_inf_lands_on_the_edge(method):
    X, _ = panel(n_dates=30)
    scaler = FeatureScaler(method).fit(X)
    probe = X.copy()
    probe.iloc[0, 1] = np.nan
    probe.iloc[1, 1] = np.inf
    out = scaler.transform(probe)
    assert np.isnan(out.iloc[0, 1])
    np.testing.assert_array_equal(np.isnan(out.to_numpy()), np.isnan(probe.to_numpy()))
    if method in ("robust_z", "rank_gauss"):
        assert out.iloc[1, 1] == out["f2"].max()


@pytest.mark.parametrize("method", SCALINGS)
def test_to_dict_from_dict_round_trip_through_json(method):
    X, _ = panel()
    scaler = FeatureScaler(method, clip=3.0, n_quantiles=64).fit(X)
    restored = FeatureScaler.from_dict(json.loads(json.dumps(scaler.to_dict())))
    assert restored == scaler and restored.is_fitted
    pd.testing.assert_frame_equal(restored.transform(X), scaler.transform(X))
    unfitted = FeatureScaler.from_dict(FeatureScaler(method).to_dict())
    assert not unfitted.is_fitted


# --- carried inside every family ---------------------------------------------------------------------

def _fit(family: str, scaling: str, train, valid):
    return make_model(family, **QUICK[family], scaling=scaling).fit(train, valid)


@pytest.mark.parametrize(
    ("family", "scaling"),
    [("xgboost", "robust_z"), ("lightgbm", "robust_z"), ("lightgbm", "rank_gauss"), ("lstm", "robust_z"),
     ("gru", "robust_z"), ("xgboost", "date_rank")],
)
def test_scaled_model_round_trips_and_keeps_the_training_rows_statistics(family, scaling, tmp_path):
    train, valid = split_by_date(*panel())
    # Validation rows far off the training distribution: a scaler fitted on them would differ.
    valid = (valid[0] * 100.0 + 5.0, valid[1])
    model = _fit(family, scaling, train, valid)
    assert model.get_params()["scaling"] == scaling
    assert model.scaler_ == FeatureScaler(scaling).fit(train[0])
    if scaling != "date_rank":
        assert model.scaler_ != FeatureScaler(scaling).fit(valid[0])
    model.save(tmp_path)
    assert json.loads((tmp_path / SCALER_FILE).read_text()) == model.scaler_.to_dict()
    loaded = load_model(family, tmp_path)
    assert loaded.scaling == scaling and loaded.scaler_ == model.scaler_
    test = panel(n_dates=30, seed=9)[0]
    np.testing.assert_array_equal(loaded.predict(test), model.predict(test))


@pytest.mark.parametrize("family", ["xgboost", "lstm"])
def test_the_model_sees_exactly_the_scaled_features_in_fit_and_predict(family):
    train, valid = split_by_date(*panel())
    scaled = _fit(family, "robust_z", train, valid)
    scaler = FeatureScaler("robust_z").fit(train[0])
    by_hand = _fit(family, "none", (scaler.transform(train[0]), train[1]), (scaler.transform(valid[0]), valid[1]))
    test = panel(n_dates=30, seed=9)[0]
    np.testing.assert_array_equal(scaled.predict(test), by_hand.predict(scaler.transform(test)))


@pytest.mark.parametrize("family", FAMILIES)
def test_a_model_saved_before_scaling_existed_loads_as_none(family, tmp_path):
    train, valid = split_by_date(*panel())
    model = _fit(family, "none", train, valid)
    model.save(tmp_path)
    (tmp_path / SCALER_FILE).unlink()
    meta = json.loads((tmp_path / "model_meta.json").read_text())
    del meta["params"]["scaling"]
    (tmp_path / "model_meta.json").write_text(json.dumps(meta))
    loaded = load_model(family, tmp_path)
    assert loaded.scaling == "none"
    np.testing.assert_array_equal(loaded.predict(valid[0]), model.predict(valid[0]))


def test_a_scaled_model_without_its_scaler_file_refuses_to_load(tmp_path):
    train, valid = split_by_date(*panel())
    _fit("xgboost", "robust_z", train, valid).save(tmp_path)
    (tmp_path / SCALER_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="scaling='robust_z'"):
        load_model("xgboost", tmp_path)


@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
def test_fit_matrix_refuses_scaling(family):
    (X, y), _ = split_by_date(*panel())
    model = make_model(family, **QUICK[family], scaling="robust_z")
    with pytest.raises(ValueError, match="bypass scaling='robust_z'"):
        model.fit_matrix(model.matrix(X, y))


@pytest.mark.parametrize("family", FAMILIES)
def test_scaling_is_a_known_parameter_with_a_default_per_family(family):
    assert resolve_params(family)["scaling"] == DEFAULT_PARAMS[family]["scaling"]
    assert DEFAULT_PARAMS[family]["scaling"] == ("robust_z" if family in ("lstm", "gru") else "none")
    assert make_model(family).get_params()["scaling"] == "none"
    with pytest.raises(ValueError, match="scaling='zscore'"):
        resolve_params(family, overrides={"scaling": "zscore"})
