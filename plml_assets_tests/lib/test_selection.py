"""Feature selection on synthetic panels whose right answer is known by construction."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from plml_assets.lib.selection.selector import SelectionConfig, SelectionResult, select_features

N_DATES, N_SYMBOLS, HORIZON = 300, 10, 5
NOISE = [f"noise_{k}" for k in range(8)]
# Expanding windows by date, embargo of HORIZON dates between training and validation.
FOLD_DATE_BLOCKS = [((0, 150), (155, 200)), ((0, 200), (205, 250)), ((0, 250), (255, 300))]
NEVER_TRAINED_FROM = 250  # dates >= this are in no fold's training set
FAST = dict(n_estimators=30)


def date_folds(index: pd.MultiIndex, blocks=FOLD_DATE_BLOCKS) -> list[tuple[np.ndarray, np.ndarray]]:
    day = pd.factorize(index.get_level_values("date"))[0]
    return [
        (np.flatnonzero((day >= t0) & (day < t1)), np.flatnonzero((day >= v0) & (day < v1)))
        for (t0, t1), (v0, v1) in blocks
    ]


def make_panel(seed: int = 7) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=N_DATES)
    symbols = [f"S{k:02d}" for k in range(N_SYMBOLS)]
    index = pd.MultiIndex.from_product([dates, symbols], names=["date", "symbol"])
    n = len(index)
    day = np.repeat(np.arange(N_DATES), N_SYMBOLS)

    signal = rng.standard_normal(n)
    # |corr(signal, y)| ~ 0.24: a strong but honest predictor, below the 0.3 leakage alarm.
    y = 0.5 * signal + 2.0 * rng.standard_normal(n)
    y[day >= N_DATES - HORIZON] = np.nan  # forward returns not yet known

    known_y = np.where(np.isnan(y), rng.standard_normal(n), y)
    never_trained = day >= NEVER_TRAINED_FROM
    columns = {
        "f_signal": signal,
        "f_copy": signal + 0.01 * rng.standard_normal(n),
        "f_flat": np.full(n, 1.5),
        "f_const": np.where(rng.random(n) < 0.003, 1.0, 0.0),
        "f_missing": np.where(rng.random(n) < 0.7, np.nan, rng.standard_normal(n)),
        "f_leak": known_y + 0.1 * rng.standard_normal(n),
        # The label itself where no model is ever trained, pure noise wherever one is.
        "f_valid_only": np.where(never_trained, known_y, 2.0 * rng.standard_normal(n)),
        **{name: rng.standard_normal(n) for name in NOISE},
    }
    X = pd.DataFrame(columns, index=index).astype(np.float32)
    return X, pd.Series(y, index=index, name="fwd_ret_5d")


@pytest.fixture(scope="module")
def panel() -> tuple[pd.DataFrame, pd.Series, list]:
    X, y = make_panel()
    return X, y, date_folds(X.index)


@pytest.fixture(scope="module")
def gain_result(panel) -> SelectionResult:
    X, y, folds = panel
    return select_features(X, y, folds, SelectionConfig(max_features=5, **FAST))


@pytest.fixture(scope="module")
def permutation_result(panel) -> SelectionResult:
    X, y, folds = panel
    return select_features(X, y, folds, SelectionConfig(max_features=5, importance="permutation", **FAST))


def assert_partition(result: SelectionResult, features: list[str]) -> None:
    assert not set(result.selected) & set(result.dropped)
    assert sorted([*result.selected, *result.dropped]) == sorted(features)
    assert len(result.selected) == len(set(result.selected))


@pytest.mark.parametrize("mode", ["gain", "permutation"])
def test_known_answer(panel, gain_result, permutation_result, mode):
    X, _, _ = panel
    result = gain_result if mode == "gain" else permutation_result
    assert_partition(result, list(X.columns))

    assert result.dropped["f_missing"].startswith("missing 7")
    assert result.dropped["f_flat"].startswith("near-constant")
    assert result.dropped["f_const"].startswith("near-constant")
    leak = r"leakage alarm: \|corr with label\| (0\.9\d|1\.00) > 0\.30"
    assert re.fullmatch(leak, result.dropped["f_leak"])

    # Exactly one of the correlated pair survives: the more important one, ranked first.
    pair = {"f_signal", "f_copy"}
    (kept,) = pair & set(result.selected)
    (lost,) = pair - {kept}
    assert result.selected[0] == kept
    pair_reason = rf"\|corr\| (0\.99\d|1\.000) with {kept} \(more important\)"
    assert re.fullmatch(pair_reason, result.dropped[lost])
    assert result.importances[kept] >= result.importances[lost]
    assert result.importances[kept] > 1.5 * max(result.importances[name] for name in NOISE)


@pytest.mark.parametrize("mode", ["gain", "permutation"])
def test_importances_cover_the_importance_stage_and_are_normalized(gain_result, permutation_result, mode):
    result = gain_result if mode == "gain" else permutation_result
    reached = {"f_signal", "f_copy", "f_valid_only", *NOISE}
    assert set(result.importances) == reached
    assert sum(result.importances.values()) == pytest.approx(1.0)
    assert all(value >= 0 for value in result.importances.values())
    values = list(result.importances.values())
    assert values == sorted(values, reverse=True)
    selected_importance = [result.importances[name] for name in result.selected]
    assert selected_importance == sorted(selected_importance, reverse=True)


def test_max_features_is_honoured(gain_result):
    assert len(gain_result.selected) == 5
    beyond = {name: reason for name, reason in gain_result.dropped.items() if reason.startswith("beyond")}
    # signal/copy kept as one, plus f_valid_only and 8 noise features: 10 survive, 5 are cut.
    assert len(beyond) == 5
    assert sorted(int(reason.split("rank ")[1].rstrip(")")) for reason in beyond.values()) == [6, 7, 8, 9, 10]
    assert all(reason.startswith("beyond max_features=5 (rank ") for reason in beyond.values())
    cut_importance = max(gain_result.importances[name] for name in beyond)
    assert min(gain_result.importances[name] for name in gain_result.selected) >= cut_importance


@pytest.mark.parametrize("mode", ["gain", "permutation"])
def test_validation_only_signal_does_not_rank_top(panel, gain_result, permutation_result, mode):
    # f_valid_only equals the label on every never-trained row: any peek at those rows would make it
    # stand out. Its training-row correlation is ~0, so the leakage alarm must not fire on it either.
    result = gain_result if mode == "gain" else permutation_result
    top = result.selected[0]
    assert top in {"f_signal", "f_copy"}
    assert result.importances["f_valid_only"] < 0.5 * result.importances[top]
    assert result.importances["f_valid_only"] <= max(result.importances[name] for name in NOISE)

    X, y, folds = panel
    config = SelectionConfig(importance=mode, **FAST)
    among_noise = select_features(X[["f_valid_only", *NOISE]], y, folds, config)
    assert among_noise.selected[0] != "f_valid_only"


@pytest.mark.parametrize(
    ("mode", "blocks"),
    [("gain", [((0, 300), (0, 0))]), ("permutation", [((0, 280), (285, 300))])],
)
def test_validation_only_signal_wins_once_training_covers_its_rows(panel, mode, blocks):
    """Control for the test above: same features, only the folds differ."""
    X, y, _ = panel
    config = SelectionConfig(importance=mode, **FAST)
    result = select_features(X[["f_valid_only", *NOISE]], y, date_folds(X.index, blocks), config)
    assert result.selected[0] == "f_valid_only"
    assert result.importances["f_valid_only"] > 1.5 * max(result.importances[name] for name in NOISE)


def test_quality_filters_use_training_rows_only(panel):
    X, y, folds = panel
    X = X.copy()
    day = pd.factorize(X.index.get_level_values("date"))[0]
    # Missing on every never-trained row (1/6 of the panel) but complete on training rows.
    X["f_sparse_later"] = np.where(day >= NEVER_TRAINED_FROM, np.nan, X["noise_0"] * 0.5).astype(np.float32)
    # Constant on training rows, varying afterwards.
    X["f_const_in_train"] = np.where(day >= NEVER_TRAINED_FROM, X["noise_1"], 3.0).astype(np.float32)
    result = select_features(X, y, folds, SelectionConfig(max_features=50, **FAST))
    assert "f_sparse_later" in result.importances
    assert result.dropped["f_const_in_train"].startswith("near-constant")
    assert "f_valid_only" in result.importances


@pytest.mark.parametrize("mode", ["gain", "permutation"])
def test_deterministic_for_a_seed(panel, gain_result, permutation_result, mode):
    X, y, folds = panel
    again = select_features(X, y, folds, SelectionConfig(max_features=5, importance=mode, **FAST))
    first = gain_result if mode == "gain" else permutation_result
    assert again.selected == first.selected
    assert again.importances == first.importances
    assert again.dropped == first.dropped


def test_subsampling_is_seeded(panel):
    X, y, folds = panel
    config = SelectionConfig(sample_rows=800, stats_rows=900, max_features=4, **FAST)
    first = select_features(X, y, folds, config)
    assert first.selected == select_features(X, y, folds, config).selected
    assert first.importances == select_features(X, y, folds, config).importances
    other = select_features(X, y, folds, dataclasses.replace(config, seed=1))
    assert other.importances != first.importances


def test_log_reports_progress(panel):
    X, y, folds = panel
    lines: list[str] = []
    select_features(X, y, folds, SelectionConfig(**FAST), log=lines.append)
    # 3 folds, 150/200/250 training dates x 10 symbols.
    assert any(line.startswith("fold 1/3: fitted on 1,500 rows in ") for line in lines)
    assert any(line.startswith("fold 3/3: fitted on 2,500 rows in ") for line in lines)
    assert any(line.startswith("quality filters on 2,500 training rows") for line in lines)


def test_to_frame_has_one_row_per_feature(gain_result, panel):
    X, _, _ = panel
    frame = gain_result.to_frame()
    assert list(frame.columns) == ["feature", "status", "importance", "reason"]
    assert sorted(frame["feature"]) == sorted(X.columns)
    assert (frame["status"] == "selected").sum() == 5
    assert frame.loc[frame["feature"] == "f_missing", "importance"].isna().all()
    assert (frame.loc[frame["status"] == "dropped", "reason"] != "").all()


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    max_features=st.integers(1, 20),
    correlation_threshold=st.floats(0.05, 1.0),
    max_missing_ratio=st.floats(0.0, 1.0),
    leakage=st.floats(0.3, 1.0),  # f_signal (|corr| ~0.24) always survives
    importance=st.sampled_from(["gain", "permutation"]),
    n_columns=st.integers(1, 15),
)
def test_every_feature_is_selected_or_dropped(
    panel, max_features, correlation_threshold, max_missing_ratio, leakage, importance, n_columns
):
    X, y, folds = panel
    X = X[["f_signal", *[c for c in X.columns if c != "f_signal"][: n_columns - 1]]]
    config = SelectionConfig(
        max_features=max_features,
        correlation_threshold=correlation_threshold,
        max_missing_ratio=max_missing_ratio,
        leakage_corr_threshold=leakage,
        importance=importance,
        n_estimators=10,
    )
    result = select_features(X, y, folds, config)
    assert_partition(result, list(X.columns))
    assert 1 <= len(result.selected) <= max_features
    assert set(result.selected) <= set(result.importances)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"max_features": 0}, "max_features"),
        ({"max_features": 2.5}, "max_features"),
        ({"max_missing_ratio": 1.5}, "max_missing_ratio"),
        ({"max_missing_ratio": -0.1}, "max_missing_ratio"),
        ({"max_mode_share": 0.0}, "max_mode_share"),
        ({"correlation_threshold": 0.0}, "correlation_threshold"),
        ({"correlation_threshold": float("nan")}, "correlation_threshold"),
        ({"leakage_corr_threshold": 1.2}, "leakage_corr_threshold"),
        ({"correlation_method": "kendall"}, "correlation_method"),
        ({"importance": "shap"}, "importance"),
        ({"n_estimators": 0}, "n_estimators"),
        ({"max_depth": 0}, "max_depth"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"seed": -1}, "seed"),
        ({"sample_rows": 0}, "sample_rows"),
        ({"n_threads": True}, "n_threads"),
    ],
)
def test_config_validation_names_the_field(change, field):
    with pytest.raises(ValueError, match=rf"SelectionConfig\.{field} must be"):
        dataclasses.replace(SelectionConfig(), **change).validate()


def test_default_config_is_valid():
    SelectionConfig().validate()
    SelectionConfig(sample_rows=None).validate()


def test_invalid_config_is_rejected_before_any_work(panel):
    X, y, folds = panel
    with pytest.raises(ValueError, match="importance must be one of"):
        select_features(X, y, folds, SelectionConfig(importance="bogus"))


def test_misaligned_inputs_raise(panel):
    X, y, folds = panel
    with pytest.raises(ValueError, match="misaligned"):
        select_features(X, y.iloc[:-10], folds)
    with pytest.raises(ValueError, match="misaligned"):
        select_features(X, y.sample(frac=1.0, random_state=0), folds)


def test_no_folds_raise(panel):
    X, y, _ = panel
    with pytest.raises(ValueError, match="no folds"):
        select_features(X, y, [])


def test_empty_training_fold_raises(panel):
    X, y, folds = panel
    empty = (np.array([], dtype=np.int64), folds[0][1])
    with pytest.raises(ValueError, match=r"fold 2/2: training set is empty"):
        select_features(X, y, [folds[0], empty])
    unlabelled = np.flatnonzero(y.isna().to_numpy())  # rows exist, but none has a label
    with pytest.raises(ValueError, match=r"fold 1/1: training set is empty"):
        select_features(X, y, [(unlabelled, folds[0][1])])


def test_overlapping_or_out_of_range_positions_raise(panel):
    X, y, folds = panel
    train, valid = folds[0]
    with pytest.raises(ValueError, match="both training and validation"):
        select_features(X, y, [(train, np.concatenate([valid, train[:5]]))])
    with pytest.raises(ValueError, match="outside"):
        select_features(X, y, [(np.append(train, len(X)), valid)])


def test_all_features_dropped_raises_with_reason_counts(panel):
    X, y, folds = panel
    expected = r"every feature was dropped \(2 near-constant, 1 missing, 1 leakage\)"
    with pytest.raises(ValueError, match=expected):
        select_features(X[["f_flat", "f_const", "f_missing", "f_leak"]], y, folds)


def test_permutation_shuffles_within_dates_so_a_date_level_feature_has_no_importance():
    """A feature equal for every symbol on a date (a market-wide trend) cannot change a date's ranking:
    shuffled within dates its drop is exactly 0; a shuffle across all rows would carry it between
    dates and invent an importance."""
    from plml_assets.lib.selection.selector import _fit, _permutation_drops

    rng = np.random.default_rng(3)
    n_dates, n_symbols = 120, 12
    dates = pd.Index(np.repeat(pd.bdate_range("2021-01-01", periods=n_dates), n_symbols))
    trend = np.repeat(np.linspace(-1, 1, n_dates), n_symbols)
    signal = rng.standard_normal(n_dates * n_symbols)
    labels = signal + trend + 0.5 * rng.standard_normal(len(signal))
    features = np.column_stack([signal, trend]).astype(np.float32)
    config = SelectionConfig(n_estimators=30, permutation_repeats=2)
    booster, _ = _fit(features, labels, config)
    drops, base = _permutation_drops(booster, features.copy(), labels, dates, config, np.random.default_rng(0))
    assert base > 0.3 and drops[0] > 0.1
    assert drops[1] == pytest.approx(0.0, abs=1e-12)


@given(
    hnp.arrays(np.float64, (40, 3), elements=st.one_of(st.floats(-5, 5, allow_nan=False), st.just(np.nan),
                                                        st.sampled_from([0.0, 1.0, 2.5]))),
)
def test_column_ranks_match_pandas_rank_with_ties_averaged_and_nan_kept(matrix):
    from plml_assets.lib.selection.selector import _column_ranks

    expected = pd.DataFrame(matrix).rank(na_option="keep").to_numpy(dtype=np.float64)
    np.testing.assert_allclose(_column_ranks(matrix), expected, equal_nan=True)


def test_shap_stable_keeps_the_steady_driver_and_drops_features_the_folds_disagree_on(panel):
    """importance='shap_stable' (issue 16): each fold's importance model is explained by TreeSHAP on
    its validation rows; a feature whose share of mean |contribution| swings across the folds is
    dropped with that reason. ``f_regime`` drives the label until date 200 and is flat after it: the
    first fold's model is credited with it on its validation dates, the later folds' models are not
    (their validation rows hold one value of it); the planted signal is credited on every fold."""
    X, y, folds = panel
    rng = np.random.default_rng(11)
    day = np.repeat(np.arange(N_DATES), N_SYMBOLS)
    regime = np.where(day < 200, rng.standard_normal(len(X)), 0.0)
    X = X.assign(f_regime=regime.astype(np.float32))
    y = y + 0.5 * regime  # as strong as the signal, below the leakage alarm
    result = select_features(X, y, folds, SelectionConfig(max_features=5, importance="shap_stable", shap_max_cv=0.5, **FAST))
    assert result.dropped["f_regime"].startswith("SHAP contribution unstable across 3 folds"), result.dropped.get("f_regime")
    assert "f_signal" in result.selected
    assert_partition(result, list(X.columns))
    gain = select_features(X, y, folds, SelectionConfig(max_features=5, **FAST))
    assert "f_regime" in gain.selected  # what gain importance alone keeps
    lenient = select_features(X, y, folds, SelectionConfig(max_features=5, importance="shap_stable", shap_max_cv=1e6, **FAST))
    assert not any(r.startswith("SHAP") for r in lenient.dropped.values())
    assert result == select_features(X, y, folds, SelectionConfig(max_features=5, importance="shap_stable", shap_max_cv=0.5, **FAST))
    with pytest.raises(ValueError, match="shap_max_cv"):
        SelectionConfig(importance="shap_stable", shap_max_cv=0.0).validate()
