import math
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from plml_assets.lib.monitoring.drift import (
    DriftThresholds,
    RetrainDecision,
    data_age_days,
    decide_retraining,
    feature_drift,
    ks_statistic,
    performance_decay,
    prediction_drift,
    psi,
    realized_rank_ic,
    summarize,
)
from plml_assets.lib.plots import drift_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# Dagster's run-tag key rule (dagster/_utils/tags.py): an optional prefix and a name, each [A-Za-z0-9_.-]{1,63}.
TAG_KEY = re.compile(r"^([A-Za-z0-9_.-]{1,63}/)?[A-Za-z0-9_.-]{1,63}$")


def panel(n_dates=40, n_symbols=30, seed=0, start="2024-01-01"):
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(start, periods=n_dates)
    index = pd.MultiIndex.from_product([dates, [f"S{i:02d}" for i in range(n_symbols)]], names=["date", "symbol"])
    return pd.Series(rng.normal(size=len(index)), index=index, name="score"), rng


# --- psi ---------------------------------------------------------------------------------------


def test_psi_is_near_zero_for_the_same_distribution():
    rng = np.random.default_rng(1)
    assert psi(rng.normal(size=100_000), rng.normal(size=100_000)) < 0.01


def test_psi_grows_with_a_mean_shift():
    rng = np.random.default_rng(2)
    reference = rng.normal(size=50_000)
    values = [psi(reference, rng.normal(loc=shift, size=50_000)) for shift in (0.0, 0.1, 0.3, 0.6, 1.0)]
    assert values == sorted(values)
    assert values[0] < 0.005 < values[1] and values[-1] > 0.25  # PSI ~ shift**2 for a unit normal


def test_psi_matches_a_hand_computed_value():
    # bins=2 on 1..10: edges are the quantiles 1, 5.5, 10 -> reference 5/10 in each bin.
    # Current: seven values <= 5.5 and one above -> 0.875 / 0.125.
    reference = np.arange(1, 11, dtype=float)
    current = np.array([1, 1, 1, 2, 2, 2, 3, 8], dtype=float)
    expected = (0.875 - 0.5) * math.log(0.875 / 0.5) + (0.125 - 0.5) * math.log(0.125 / 0.5)
    assert psi(reference, current, bins=2) == pytest.approx(expected, rel=1e-12)
    assert expected == pytest.approx(0.7297, abs=1e-4)


def test_psi_puts_out_of_range_values_in_the_end_bins_and_floors_empty_bins():
    reference = np.arange(1, 11, dtype=float)
    # -100 falls in the first bin, +100 in the last: the same 50/50 split as the reference.
    assert psi(reference, np.array([-100.0, 100.0]), bins=2) == pytest.approx(0.0)
    # All current mass in one bin: the empty bin is floored at eps, so the PSI is large but finite.
    eps = 1e-4
    expected = (1 - 0.5) * math.log(1 / 0.5) + (eps - 0.5) * math.log(eps / 0.5)
    assert psi(reference, np.array([200.0, 300.0]), bins=2, eps=eps) == pytest.approx(expected)


def test_psi_is_roughly_symmetric_for_a_mean_shift():
    rng = np.random.default_rng(3)
    a, b = rng.normal(size=50_000), rng.normal(loc=0.5, size=50_000)
    forward, backward = psi(a, b), psi(b, a)
    assert forward > 0.1 and backward > 0.1
    assert 0.7 < forward / backward < 1.4


def test_psi_ignores_nan_and_is_nan_for_an_empty_side():
    rng = np.random.default_rng(4)
    reference, current = rng.normal(size=10_000), rng.normal(size=10_000)
    with_nan = np.concatenate([current, np.full(3_000, np.nan), [np.inf, -np.inf]])
    assert psi(reference, with_nan) == pytest.approx(psi(reference, current))
    assert math.isnan(psi(reference, []))
    assert math.isnan(psi(np.full(10, np.nan), current))


def test_psi_collapses_duplicate_edges_of_a_point_mass():
    rng = np.random.default_rng(5)
    reference = np.where(rng.random(20_000) < 0.7, 0.0, rng.normal(size=20_000))  # 70% zeros
    same = np.where(rng.random(20_000) < 0.7, 0.0, rng.normal(size=20_000))
    fewer_zeros = np.where(rng.random(20_000) < 0.2, 0.0, rng.normal(size=20_000))
    assert psi(reference, same) < 0.01
    assert psi(reference, fewer_zeros) > 0.25


def test_psi_of_a_constant_reference_detects_a_move():
    assert psi(np.zeros(100), np.zeros(50)) == pytest.approx(0.0)
    assert psi(np.zeros(100), np.ones(50)) > 1.0


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60),
    st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=60),
    st.integers(1, 12),
)
def test_psi_is_non_negative_and_zero_against_itself(reference, current, bins):
    assert psi(reference, current, bins=bins) >= 0.0
    assert psi(reference, reference, bins=bins) == pytest.approx(0.0, abs=1e-12)


# --- ks ----------------------------------------------------------------------------------------


def test_ks_matches_scipy_and_drops_nan():
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=500), rng.normal(loc=0.3, size=400)
    expected = stats.ks_2samp(a, b)
    with_nan = np.concatenate([b, [np.nan] * 50])
    statistic, pvalue = ks_statistic(a, with_nan)
    assert statistic == pytest.approx(expected.statistic)
    assert pvalue == pytest.approx(expected.pvalue)
    assert all(math.isnan(v) for v in ks_statistic([], b))
    assert all(math.isnan(v) for v in ks_statistic(a, [np.nan]))


# --- feature_drift -----------------------------------------------------------------------------


def feature_frames(n=6_000, seed=7):
    rng = np.random.default_rng(seed)
    reference = pd.DataFrame({
        "stable": rng.normal(size=n),
        "shifted": rng.normal(size=n),
        "mild": rng.normal(size=n),
        "only_in_reference": rng.normal(size=n),
        "sector": ["tech"] * n,
    })
    current = pd.DataFrame({
        "stable": rng.normal(size=n),
        "shifted": rng.normal(loc=1.5, size=n),
        "mild": rng.normal(loc=0.25, size=n),
        "sector": ["tech"] * n,
        "only_in_current": rng.normal(size=n),
    })
    current.loc[: n // 10 - 1, "stable"] = np.nan  # 10% missing
    return reference, current


def test_feature_drift_flags_the_shifted_column_first():
    reference, current = feature_frames()
    table = feature_drift(reference, current, max_rows=None)
    assert list(table.index) == ["shifted", "mild", "stable"]  # common numeric columns, psi descending
    assert list(table.columns) == [
        "psi", "ks", "ks_pvalue", "reference_mean", "current_mean", "reference_missing", "current_missing",
    ]
    assert table.loc["shifted", "psi"] > 0.25 and table.loc["stable", "psi"] < 0.02
    assert table.loc["shifted", "current_mean"] == pytest.approx(1.5, abs=0.05)
    assert table.loc["stable", "current_missing"] == pytest.approx(0.1)
    assert table.loc["stable", "reference_missing"] == 0.0
    expected = stats.ks_2samp(reference["shifted"], current["shifted"])
    assert table.loc["shifted", "ks"] == pytest.approx(expected.statistic)


def test_feature_drift_subsamples_deterministically():
    reference, current = feature_frames()
    first = feature_drift(reference, current, max_rows=1_000, seed=3)
    again = feature_drift(reference, current, max_rows=1_000, seed=3)
    other = feature_drift(reference, current, max_rows=1_000, seed=4)
    full = feature_drift(reference, current, max_rows=None)
    pd.testing.assert_frame_equal(first, again)
    assert not np.allclose(first["psi"], other.loc[first.index, "psi"])
    assert not np.allclose(first["psi"], full.loc[first.index, "psi"])
    assert first.index[0] == "shifted"
    # Means and missing shares use every row, not the sample.
    pd.testing.assert_series_equal(first["current_missing"], full.loc[first.index, "current_missing"])
    with pytest.raises(ValueError, match="max_rows"):
        feature_drift(reference, current, max_rows=0)


# --- prediction_drift --------------------------------------------------------------------------


def test_prediction_drift_separates_level_from_cross_sectional_shape():
    reference, _ = panel(seed=8)
    same, _ = panel(seed=9)
    quiet = prediction_drift(reference, same)
    assert quiet["psi"] < 0.05 and quiet["raw_psi"] < 0.05 and quiet["zscore_psi"] < 0.05
    assert abs(quiet["mean_shift"]) < 0.1

    scaled = prediction_drift(reference, 3.0 * reference + 1.0)  # level and scale move, the ordering does not
    assert scaled["raw_psi"] > 1.0
    assert scaled["zscore_psi"] == pytest.approx(0.0, abs=1e-9)
    assert scaled["psi"] == scaled["raw_psi"]
    assert scaled["mean_shift"] == pytest.approx(1.0 + 2.0 * reference.mean())
    assert scaled["std_shift"] == pytest.approx(2.0 * reference.std())
    assert scaled["mean_shift_in_std"] == pytest.approx(scaled["mean_shift"] / reference.std())

    rng = np.random.default_rng(10)
    heavy_tails = pd.Series(rng.standard_t(df=1.5, size=len(reference)), index=reference.index)
    shape = prediction_drift(reference, heavy_tails)
    assert shape["zscore_psi"] > 0.1 and shape["zscore_ks"] > 0.05
    assert set(quiet) >= {"psi", "ks", "raw_psi", "raw_ks", "raw_ks_pvalue", "zscore_psi", "zscore_ks",
                          "zscore_ks_pvalue", "mean_shift", "std_shift"}


# --- performance_decay -------------------------------------------------------------------------


def test_performance_decay_measures_the_realized_rank_ic():
    scores, rng = panel(n_dates=60, n_symbols=40, seed=11)
    labels = scores + rng.normal(scale=0.5, size=len(scores))
    result = performance_decay(scores, labels, reference_rank_ic=0.95)
    assert 0.8 < result["realized_rank_ic"] < 0.95
    assert result["n_dates"] == 60 and result["enough_dates"] is True
    assert result["decay"] == pytest.approx(0.95 - result["realized_rank_ic"])
    assert result["t_stat"] > 20
    assert result["reference_rank_ic"] == 0.95


def test_performance_decay_of_shuffled_labels_is_near_zero():
    scores, rng = panel(n_dates=60, n_symbols=40, seed=12)
    labels = pd.Series(rng.permutation(scores.to_numpy()), index=scores.index)
    result = performance_decay(scores, labels, reference_rank_ic=0.05)
    assert abs(result["realized_rank_ic"]) < 0.05
    assert abs(result["t_stat"]) < 3


def test_performance_decay_uses_only_dates_with_known_labels():
    scores, rng = panel(n_dates=30, n_symbols=20, seed=13)
    labels = scores + rng.normal(size=len(scores))
    dates = scores.index.get_level_values("date").unique()
    labels[labels.index.get_level_values("date") >= dates[-5]] = np.nan  # the last 5 labels not known yet
    result = performance_decay(scores, labels, 0.1, min_dates=20)
    assert result["n_dates"] == 25 and result["enough_dates"] is True
    assert len(realized_rank_ic(scores, labels)) == 25

    few = performance_decay(scores.loc[dates[:5]], labels.loc[dates[:5]], 0.1, min_dates=20)
    assert few["n_dates"] == 5 and few["enough_dates"] is False

    nothing = performance_decay(scores, labels * np.nan, math.nan)
    assert nothing["n_dates"] == 0 and nothing["enough_dates"] is False
    assert math.isnan(nothing["realized_rank_ic"]) and math.isnan(nothing["decay"]) and math.isnan(nothing["t_stat"])


def test_data_age_days_counts_trading_days_after_the_training_end():
    dates = pd.bdate_range("2024-01-01", periods=30)
    assert data_age_days(dates[19], dates) == 10
    assert data_age_days(dates[-1], dates.repeat(3)) == 0


# --- decide_retraining -------------------------------------------------------------------------

CALM = {
    "feature_drift_share": 0.0, "max_feature_psi": 0.05, "n_features": 20, "n_drifted": 0, "top_drifted": [],
    "prediction_psi": 0.02, "realized_rank_ic": 0.03, "decay": 0.0, "standard_error": 0.005, "enough_dates": True,
    "age_days": 10,
}
STRICT = DriftThresholds(max_age_days=60)


def test_nothing_crossed_is_ok():
    decision = decide_retraining(CALM, STRICT)
    assert decision == RetrainDecision(False, [], "ok", [], [])


@pytest.mark.parametrize(
    "change, cause, words",
    [
        ({"feature_drift_share": 0.5, "max_feature_psi": 0.9, "n_drifted": 10, "top_drifted": ["ret_5d", "vol_20d"]},
         "feature_drift", ["feature drift", "10 of 20 features", "50%", "0.25", "40%", "ret_5d, vol_20d"]),
        ({"prediction_psi": 0.4}, "prediction_drift", ["score PSI 0.400", "0.25"]),
        ({"realized_rank_ic": -0.01, "decay": 0.02}, "performance", ["realized rank IC -0.0100", "floor 0.0"]),
        ({"decay": 0.05, "realized_rank_ic": 0.01}, "performance", ["0.0500 below the champion's holdout", "0.03"]),
        ({"age_days": 90}, "age", ["90 trading days", "60 allowed"]),
    ],
)
def test_each_threshold_alone_triggers_retraining(change, cause, words):
    decision = decide_retraining({**CALM, **change}, STRICT)
    assert decision.retrain is True and decision.severity == "retrain"
    assert decision.causes == [cause]
    assert len(decision.reasons) == 1
    for word in words:
        assert word in decision.reasons[0]


def test_psi_warn_only_is_a_warning():
    decision = decide_retraining({**CALM, "max_feature_psi": 0.15, "top_drifted": ["ret_5d"]}, STRICT)
    assert decision.retrain is False and decision.severity == "warn"
    assert len(decision.reasons) == 1 and "0.150" in decision.reasons[0] and "ret_5d" in decision.reasons[0]
    prediction = decide_retraining({**CALM, "prediction_psi": 0.15}, STRICT)
    assert prediction.severity == "warn" and "score PSI 0.150" in prediction.reasons[0]
    # Some features drifted, but no more than the allowed share: a warning, not a retrain.
    some = decide_retraining({**CALM, "feature_drift_share": 0.1, "n_drifted": 2, "max_feature_psi": 0.4}, STRICT)
    assert some.severity == "warn" and some.retrain is False


@pytest.mark.parametrize("slip", [{"realized_rank_ic": -0.01, "decay": 0.02}, {"decay": 0.05, "realized_rank_ic": 0.01}])
def test_a_performance_slip_within_noise_is_a_warning_not_a_retrain(slip):
    # The same slips as above, measured on a small universe: a standard error of 0.07 (20 stocks, 60 dates).
    noisy = decide_retraining({**CALM, **slip, "standard_error": 0.07}, STRICT)
    assert noisy.retrain is False and noisy.severity == "warn" and noisy.causes == []
    assert len(noisy.reasons) == 1 and "within noise" in noisy.reasons[0]
    # Judged on the point estimate alone (performance_z=None), the slip triggers again.
    point = decide_retraining({**CALM, **slip, "standard_error": 0.07}, DriftThresholds(max_age_days=60, performance_z=None))
    assert point.causes == ["performance"]
    # A clear collapse is beyond the noise too.
    collapse = decide_retraining({**CALM, "realized_rank_ic": -0.2, "decay": 0.25, "standard_error": 0.07}, STRICT)
    assert collapse.causes == ["performance"] and "1.645 standard errors (0.1152)" in collapse.reasons[0]


def test_without_a_standard_error_the_point_estimate_is_judged_and_noted():
    summary = {key: value for key, value in CALM.items() if key != "standard_error"}
    decision = decide_retraining({**summary, "realized_rank_ic": -0.01}, STRICT)
    assert decision.causes == ["performance"]
    assert "realized rank IC has no standard error: its point estimate is judged alone" in decision.notes


def test_performance_standard_error_counts_overlapping_labels_once_per_horizon():
    rng = np.random.default_rng(3)
    dates = pd.bdate_range("2024-01-01", periods=60)
    index = pd.MultiIndex.from_product([dates, [f"S{i}" for i in range(20)]], names=["date", "symbol"])
    scores = pd.Series(rng.normal(size=len(index)), index=index)
    labels = pd.Series(rng.normal(size=len(index)), index=index)
    daily = performance_decay(scores, labels, 0.05, horizon=1)
    weekly = performance_decay(scores, labels, 0.05, horizon=5)
    assert weekly["realized_rank_ic"] == daily["realized_rank_ic"]
    assert weekly["standard_error"] == pytest.approx(daily["standard_error"] * math.sqrt(5))
    assert weekly["t_stat"] == pytest.approx(daily["t_stat"] / math.sqrt(5))
    assert 0.04 < weekly["standard_error"] < 0.10  # 20 stocks, 12 independent dates: about 0.23 / sqrt(12)
    with pytest.raises(ValueError, match="horizon must be a positive integer"):
        performance_decay(scores, labels, 0.05, horizon=0)


def test_performance_is_not_judged_without_enough_dates():
    decision = decide_retraining({**CALM, "realized_rank_ic": -0.2, "decay": 0.3, "enough_dates": False}, STRICT)
    assert decision.severity == "ok"
    assert any("too few dates" in note for note in decision.notes)


@pytest.mark.parametrize("missing", [{}, {key: math.nan for key in CALM}, {key: None for key in CALM}])
def test_missing_or_nan_entries_are_not_measured_and_do_not_crash(missing):
    summary = missing if missing else {}
    decision = decide_retraining(summary, STRICT)
    assert decision.retrain is False and decision.severity == "ok"
    joined = " | ".join(decision.notes)
    for what in ("feature drift share", "max feature PSI", "prediction PSI", "champion age"):
        assert f"{what} not measured" in joined


def test_a_nan_metric_is_skipped_while_others_still_trigger():
    decision = decide_retraining({**CALM, "prediction_psi": math.nan, "age_days": 100}, STRICT)
    assert decision.retrain is True and decision.causes == ["age"]
    assert "prediction PSI not measured" in decision.notes
    decay_nan = decide_retraining({**CALM, "decay": math.nan, "realized_rank_ic": -0.1}, STRICT)
    assert decay_nan.causes == ["performance"] and "rank IC decay not measured" in decay_nan.notes


def test_switched_off_rules_do_not_fire():
    off = DriftThresholds(min_realized_rank_ic=None, max_decay=None, max_age_days=None)
    decision = decide_retraining({**CALM, "realized_rank_ic": -0.5, "decay": 0.5, "age_days": 10_000}, off)
    assert decision.severity == "ok" and decision.notes == []


@pytest.mark.parametrize(
    "kwargs, field_name",
    [
        ({"psi_warn": -0.1}, "psi_warn"),
        ({"psi_retrain": 0.0}, "psi_retrain"),
        ({"psi_warn": 0.3, "psi_retrain": 0.2}, "psi_warn"),
        ({"max_drifted_share": 1.0}, "max_drifted_share"),
        ({"max_drifted_share": math.nan}, "max_drifted_share"),
        ({"prediction_psi_retrain": -1.0}, "prediction_psi_retrain"),
        ({"min_realized_rank_ic": 2.0}, "min_realized_rank_ic"),
        ({"max_decay": -0.01}, "max_decay"),
        ({"max_age_days": -1}, "max_age_days"),
        ({"max_age_days": 2.5}, "max_age_days"),
        ({"psi_warn": "0.1"}, "psi_warn"),
    ],
)
def test_thresholds_validate_names_the_bad_field(kwargs, field_name):
    with pytest.raises(ValueError, match=field_name):
        DriftThresholds(**kwargs).validate()
    with pytest.raises(ValueError, match=field_name):
        decide_retraining(CALM, DriftThresholds(**kwargs))


def test_default_thresholds_are_valid():
    thresholds = DriftThresholds()
    assert thresholds.validate() is thresholds


def test_run_tags_are_short_string_tags():
    decision = decide_retraining({**CALM, "prediction_psi": 0.4, "age_days": 100}, STRICT)
    tags = decision.run_tags()
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items())
    assert all(TAG_KEY.match(k) for k in tags)
    assert tags["plml/trigger"] == "drift" and tags["plml/severity"] == "retrain"
    assert tags["plml/causes"] == "prediction_drift,age"
    assert "score PSI 0.400" in tags["plml/reason"] and "100 trading days" in tags["plml/reason"]
    long = RetrainDecision(True, ["x" * 3000, "y" * 3000], "retrain", causes=["feature_drift"])
    assert len(long.run_tags()["plml/reason"]) == 4000


# --- summarize, end to end ---------------------------------------------------------------------


def test_summarize_then_decide_end_to_end():
    reference, current = feature_frames()
    table = feature_drift(reference, current)
    scores, rng = panel(n_dates=30, n_symbols=30, seed=14)
    labels = scores + rng.normal(size=len(scores))
    performance = performance_decay(scores, labels, reference_rank_ic=0.6)
    prediction = prediction_drift(scores, scores + 0.01)
    thresholds = DriftThresholds(max_drifted_share=0.3)
    summary = summarize(table, prediction, performance, thresholds, age_days=None)
    assert summary["feature_drift_share"] == pytest.approx(1 / 3)  # shifted only, of 3 common numeric features
    assert summary["n_features"] == 3 and summary["n_drifted"] == 1
    assert summary["top_drifted"][0] == "shifted"
    assert summary["max_feature_psi"] == pytest.approx(table["psi"].max())
    assert summary["prediction_psi"] == pytest.approx(prediction["psi"])
    assert summary["enough_dates"] is True and summary["age_days"] is None
    decision = decide_retraining(summary, thresholds)
    # 1/3 > 0.3 features drifted; the realized rank IC (~0.7) shows no decay.
    assert decision.retrain is True and decision.causes == ["feature_drift"]
    assert "shifted" in decision.reasons[0]

    empty = summarize(table.iloc[0:0], {}, {}, thresholds, age_days=3)
    assert math.isnan(empty["feature_drift_share"]) and empty["top_drifted"] == []
    assert decide_retraining(empty, thresholds).severity == "ok"


# --- plot --------------------------------------------------------------------------------------


def test_drift_plot_returns_png_bytes():
    reference, current = feature_frames(n=1_000)
    table = feature_drift(reference, current)
    scores, rng = panel(n_dates=25, n_symbols=10, seed=15)
    ic = realized_rank_ic(scores, scores + rng.normal(size=len(scores)))
    for realized in (ic, None, ic.iloc[0:0]):
        png = drift_plot(table, realized, DriftThresholds(), top=2)
        assert png.startswith(PNG_MAGIC) and len(png) > 1_000
    assert drift_plot(table.iloc[0:0], None, DriftThresholds()).startswith(PNG_MAGIC)


def test_importance_weighted_drift_follows_the_features_the_model_leans_on():
    from plml_assets.lib.monitoring.drift import importance_weighted_drift

    table = pd.DataFrame({"psi": [0.8, 0.01, 0.02], "ks": [0.5, 0.02, 0.03]}, index=pd.Index(["a", "b", "c"], name="feature"))
    leans_on_drifted = importance_weighted_drift(table, {"a": 9.0, "b": 0.5, "c": 0.5})
    leans_on_stable = importance_weighted_drift(table, {"a": 0.5, "b": 9.0, "c": 0.5, "gone": 1.0})
    assert leans_on_drifted["psi"] == pytest.approx(0.9 * 0.8 + 0.05 * 0.01 + 0.05 * 0.02)
    assert leans_on_stable["psi"] < 0.1 < leans_on_drifted["psi"]
    assert leans_on_stable["coverage"] == pytest.approx(10.0 / 11.0)  # "gone" is not in the table
    assert [f["feature"] for f in leans_on_drifted["features"]] == ["a", "b", "c"]
    empty = importance_weighted_drift(table, {"zzz": 1.0})
    assert math.isnan(empty["psi"]) and empty["features"] == []


def test_profile_drift_measures_how_the_reliance_moved():
    from plml_assets.lib.monitoring.drift import profile_drift

    same = profile_drift({"a": 3.0, "b": 2.0, "c": 1.0}, {"a": 6.0, "b": 4.0, "c": 2.0})  # same shares, other scale
    assert same["shift"] == pytest.approx(0.0) and same["rank_corr"] == pytest.approx(1.0) and same["top_overlap"] == 1.0
    swapped = profile_drift({"a": 3.0, "b": 2.0, "c": 1.0}, {"a": 1.0, "b": 2.0, "c": 3.0})
    # shares 1/2, 1/3, 1/6 vs 1/6, 1/3, 1/2: half of |1/3| + 0 + |1/3|
    assert swapped["shift"] == pytest.approx(1 / 3) and swapped["rank_corr"] == pytest.approx(-1.0)
    assert [f["feature"] for f in swapped["features"]] == ["c", "b", "a"]
    assert swapped["features"][0] == {"feature": "c", "reference_share": 0.1667, "current_share": 0.5, "change": 0.3333}
    disjoint = profile_drift({"a": 1.0, "b": 1.0}, {"c": 1.0, "d": 1.0}, top=2)
    assert disjoint["shift"] == pytest.approx(1.0) and disjoint["top_overlap"] == 0.0 and np.isnan(disjoint["rank_corr"])
    assert np.isnan(profile_drift({"a": 0.0}, {"a": 1.0})["shift"])
