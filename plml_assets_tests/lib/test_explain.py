"""Contributions (SHAP values): additivity per family, ensembles mapped into their score space,
the stability and randomization measures. Real models fitted on a small synthetic panel whose
label is driven by known features."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plml_assets.lib.ensemble.combine import EnsembleFit
from plml_assets.lib.explain.contributions import (
    BASE,
    PREDICTION,
    RESIDUAL,
    additivity,
    ensemble_contributions,
    explain_rows,
    feature_columns,
    mean_abs,
)
from plml_assets.lib.explain.validation import permuted_within_dates, randomization_test, top_feature_stability
from plml_assets.lib.models.registry import make_model


@pytest.fixture(scope="module")
def panel():
    rng = np.random.default_rng(0)
    index = pd.MultiIndex.from_product([pd.bdate_range("2020-01-01", periods=260), [f"S{i:02d}" for i in range(20)]],
                                       names=["date", "symbol"])
    X = pd.DataFrame(rng.normal(size=(len(index), 6)), index=index, columns=[f"f{i}" for i in range(6)])
    y = pd.Series(0.6 * X["f0"] - 0.3 * X["f1"] * (X["f2"] > 0) + 0.5 * rng.normal(size=len(index)), index=index, name="y")
    train = X.index.get_level_values("date") < pd.Timestamp("2020-10-01")
    return X, y, train


FITS = {"xgboost": {"n_estimators": 60}, "lightgbm": {"n_estimators": 60},
        "lstm": {"max_epochs": 6, "epoch_samples": 4096, "window": 5, "lr": 3e-3},
        "gru": {"max_epochs": 6, "epoch_samples": 4096, "window": 5, "lr": 3e-3}}


@pytest.fixture(scope="module")
def fitted(panel):
    X, y, train = panel
    return {family: make_model(family, **params, seed=0).fit((X[train], y[train])) for family, params in FITS.items()}


@pytest.mark.parametrize("family", ["xgboost", "lightgbm"])
def test_tree_contributions_are_exact_treeshap_and_credit_the_driver(panel, fitted, family):
    X, _, train = panel
    rows = np.flatnonzero(~train)
    frame = explain_rows(fitted[family], X, rows)
    assert list(frame.index) == list(X.index[rows]) and feature_columns(frame) == list(X.columns)
    np.testing.assert_allclose(frame[PREDICTION].to_numpy(), fitted[family].predict(X.iloc[rows]))
    assert additivity(frame)["relative_error"] < 1e-4
    assert mean_abs(frame).index[0] == "f0"  # the label's strongest driver
    assert set(mean_abs(frame).index[-3:]) == {"f3", "f4", "f5"}  # pure noise features last


@pytest.mark.parametrize("family", ["lstm", "gru"])
def test_net_integrated_gradients_add_up_as_the_path_refines_and_repeat_exactly(panel, fitted, family):
    X, _, train = panel
    rows = np.flatnonzero(~train)[:400]
    coarse = explain_rows(fitted[family], X, rows, steps=4)
    fine = explain_rows(fitted[family], X, rows, steps=64)
    assert additivity(fine)["relative_error"] < 2e-2
    assert additivity(fine)["relative_error"] < additivity(coarse)["relative_error"]
    pd.testing.assert_frame_equal(fine, explain_rows(fitted[family], X, rows, steps=64))  # gradients, no sampling
    # The first rows of the block get their feature history (lookback), as when the net predicts them.
    np.testing.assert_allclose(fine[PREDICTION].to_numpy(), fitted[family].predict(X)[rows], rtol=1e-6, atol=1e-9)
    assert mean_abs(fine).index[0] == "f0"


def test_integrated_gradients_add_up_on_a_bidirectional_attention_net(panel):
    """The architecture search's other cells (issue 17 item 2) are explained the same way."""
    X, y, train = panel
    model = make_model("gru", **FITS["gru"], bidirectional=True, pooling="attention", seed=0).fit((X[train], y[train]))
    rows = np.flatnonzero(~train)[:300]
    frame = explain_rows(model, X, rows, steps=64)
    assert additivity(frame)["relative_error"] < 2e-2
    np.testing.assert_allclose(frame[PREDICTION].to_numpy(), model.predict(X)[rows], rtol=1e-6, atol=1e-9)
    assert mean_abs(frame).index[0] == "f0"


@pytest.mark.parametrize("method", ["mean", "weighted", "stacked", "rank_mean"])
def test_ensemble_contributions_add_up_to_the_rules_own_scores(panel, fitted, method):
    X, _, train = panel
    rows = np.flatnonzero(~train)
    members = {f: explain_rows(fitted[f], X, rows) for f in ("xgboost", "lightgbm")}
    scores = {f: frame[PREDICTION] for f, frame in members.items()}
    fit = EnsembleFit(method, ["xgboost", "lightgbm"], {"xgboost": 0.7, "lightgbm": 0.3},
                      intercept=0.01 if method == "stacked" else 0.0).to_dict()
    frame = ensemble_contributions(fit, members, scores)
    expected = EnsembleFit.from_dict(fit).combine(pd.DataFrame(scores))
    np.testing.assert_allclose(frame[PREDICTION].to_numpy(), expected.reindex(frame.index).to_numpy())
    assert additivity(frame)["relative_error"] < 1e-4  # what the members' float32 TreeSHAP leaves, no more
    if method == "rank_mean":
        # The rank transform is linearized per date; what the line misses is reported, and small.
        share = frame[RESIDUAL].abs().mean() / frame[feature_columns(frame)].abs().sum(axis=1).mean()
        assert 0 < share < 0.5
    else:
        assert (frame[RESIDUAL] == 0).all()
        # z-score rules are affine per date: a member's contributions divided by its date's std.
        dates = frame.index.get_level_values("date")
        std = scores["xgboost"].groupby(dates).std(ddof=0)
        only_xgb = ensemble_contributions({**fit, "weights": {"xgboost": 1.0, "lightgbm": 0.0}}, members, scores)
        np.testing.assert_allclose(only_xgb["f0"].to_numpy(), members["xgboost"]["f0"].to_numpy() / std.reindex(dates).to_numpy())


def test_ensemble_refuses_members_without_values(panel, fitted):
    X, _, train = panel
    rows = np.flatnonzero(~train)
    members = {"xgboost": explain_rows(fitted["xgboost"], X, rows)}
    fit = EnsembleFit("mean", ["xgboost", "lightgbm"], {"xgboost": 0.5, "lightgbm": 0.5}).to_dict()
    with pytest.raises(ValueError, match=r"member\(s\) \['lightgbm'\]"):
        ensemble_contributions(fit, members, {"xgboost": members["xgboost"][PREDICTION]})


def test_stability_is_high_for_a_steady_driver_and_lower_for_noise():
    rng = np.random.default_rng(1)
    index = pd.MultiIndex.from_product([pd.bdate_range("2021-01-01", periods=60), range(30)], names=["date", "symbol"])
    scales = np.linspace(2.0, 0.1, 25)
    steady = pd.DataFrame(rng.normal(size=(len(index), 25)) * scales, index=index, columns=[f"c{i}" for i in range(25)])
    steady[BASE], steady[PREDICTION] = 0.0, steady.sum(axis=1)
    noise = pd.DataFrame(rng.normal(size=(len(index), 25)), index=index, columns=steady.columns[:25])
    noise[BASE], noise[PREDICTION] = 0.0, noise.sum(axis=1)
    good, bad = top_feature_stability(steady, top=20, n_boot=10), top_feature_stability(noise, top=20, n_boot=10)
    assert good["halves_rank_corr"] > 0.9 and good["bootstrap_rank_corr_median"] > 0.9
    assert bad["halves_rank_corr"] < 0.7
    assert good == top_feature_stability(steady, top=20, n_boot=10)  # seeded
    with pytest.raises(ValueError, match="at least 4 dates"):
        top_feature_stability(steady.iloc[:40], top=5)


def test_labels_permuted_within_dates_keep_each_dates_values():
    rng = np.random.default_rng(2)
    index = pd.MultiIndex.from_product([pd.bdate_range("2021-01-01", periods=5), range(50)], names=["date", "symbol"])
    y = pd.Series(rng.normal(size=len(index)), index=index)
    shuffled = permuted_within_dates(y, seed=3)
    assert shuffled.index.equals(y.index)
    for date in index.levels[0]:
        assert sorted(shuffled.loc[date]) == sorted(y.loc[date])
    assert abs(np.corrcoef(shuffled, y)[0, 1]) < 0.3
    pd.testing.assert_series_equal(shuffled, permuted_within_dates(y, seed=3))


def test_randomization_test_passes_a_changed_explanation_and_fails_a_copied_one():
    real = pd.Series([5.0, 3.0, 2.0, 1.0, 0.5, 0.2], index=list("abcdef"))
    assert randomization_test(real, pd.Series([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], index=real.index))["passed"]
    same = randomization_test(real, real * 0.5)
    assert not same["passed"] and same["profile_rank_corr"] == pytest.approx(1.0)
    loud = randomization_test(real, pd.Series([0.1, 0.2, 6.0, 0.4, 0.3, 0.6], index=real.index))
    assert not loud["passed"] and loud["permuted_standouts"] == ["c"]


def test_permuted_label_check_refits_the_family_on_shuffled_labels_and_compares_profiles(panel, fitted):
    from plml_assets.lib.explain.validation import permuted_label_check

    X, y, train = panel
    rows = np.flatnonzero(~train)
    real = explain_rows(fitted["xgboost"], X, rows)
    dates = X.index.get_level_values("date")[train].unique()
    result = permuted_label_check(fitted["xgboost"], X, y, dates, real, horizon=5, seed=0)
    assert result["passed"] and result["profile_rank_corr"] < 0.5  # the real driver f0 is gone on shuffled labels
    assert list(result["real_strongest"]) == ["f0"]
    assert result == permuted_label_check(fitted["xgboost"], X, y, dates, real, horizon=5, seed=0)
