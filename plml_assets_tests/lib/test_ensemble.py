"""Ensembles fitted on out-of-fold predictions: the rules, their fitting, and the honest per-fold score."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from plml_assets.lib.ensemble.combine import (
    METHODS,
    STACK_ALPHA_FACTORS,
    EnsembleFit,
    ensemble_oof_scores,
    fit_ensemble,
    member_matrix,
)
from plml_assets.lib.validation.metrics import evaluate_predictions

N_DATES, N_SYMBOLS, N_FOLDS, HORIZON = 200, 30, 5, 5


def panel(seed: int = 0, n_dates: int = N_DATES, n_symbols: int = N_SYMBOLS) -> tuple[pd.DataFrame, pd.Series]:
    """OOF predictions of an informative member (``signal``), a pure-noise one (``noise``) and one on
    another scale that is weakly informative (``weak``), with their labels."""
    rng = np.random.default_rng(seed)
    index = pd.MultiIndex.from_product(
        [pd.bdate_range("2021-01-04", periods=n_dates), [f"S{i:02d}" for i in range(n_symbols)]], names=["date", "symbol"]
    )
    latent = rng.normal(size=len(index))
    y = pd.Series(0.01 * (latent + 2.0 * rng.normal(size=len(index))), index=index, name="label")
    oof = pd.DataFrame({
        "signal": latent + 0.5 * rng.normal(size=len(index)),
        "noise": rng.normal(size=len(index)),
        "weak": 100.0 * (0.2 * latent + rng.normal(size=len(index))),
    }, index=index)
    return oof, y


def walk_forward_folds(index: pd.MultiIndex, n_folds: int = N_FOLDS) -> pd.Series:
    """Contiguous date blocks numbered 1..n_folds in time, as a walk-forward OOF carries them."""
    dates = index.get_level_values("date")
    position = pd.Index(dates.unique()).get_indexer(dates)
    return pd.Series(position * n_folds // dates.nunique() + 1, index=index, name="fold")


def zscore(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.groupby(level="date").transform(lambda s: (s - s.mean()) / s.std(ddof=0))


def centred_ranks(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.groupby(level="date").transform(lambda s: (s.rank() - 1) / (s.count() - 1) - 0.5)


@pytest.fixture(scope="module")
def data():
    return panel()


def weights_of(table: pd.DataFrame, fold: int) -> dict[str, float]:
    return json.loads(table.set_index("fold").loc[fold, "weights"])


# ---------------------------------------------------------------------------------------------------
# member_matrix and the fixed rules


def test_member_matrix_keeps_only_the_rows_every_member_has_sorted():
    oof, _ = panel(n_dates=4, n_symbols=3)
    a = oof["signal"].iloc[::-1]  # unsorted on purpose
    b = oof["noise"].drop(oof.index[:3])
    matrix = member_matrix({"a": a, "b": b})
    assert list(matrix.columns) == ["a", "b"]
    assert matrix.index.equals(oof.index[3:])
    assert (matrix["a"] == oof["signal"].iloc[3:]).all()


def test_mean_is_the_average_of_per_date_z_scores(data):
    oof, y = data
    fit = fit_ensemble("mean", oof, y)
    assert fit.weights == pytest.approx({m: 1 / 3 for m in oof.columns})
    expected = zscore(oof).mean(axis=1)
    np.testing.assert_allclose(fit.combine(oof).to_numpy(), expected.to_numpy(), atol=1e-12)


def test_rank_mean_is_the_average_of_per_date_ranks_in_half_unit_range(data):
    oof, y = data
    combined = fit_ensemble("rank_mean", oof, y).combine({m: oof[m] for m in oof.columns})
    expected = centred_ranks(oof).mean(axis=1)
    np.testing.assert_allclose(combined.to_numpy(), expected.to_numpy(), atol=1e-12)
    assert combined.groupby(level="date").max().max() <= 0.5 and combined.min() >= -0.5
    # rank_mean ignores scale: multiplying a member changes nothing
    scaled = oof.assign(weak=oof["weak"] * 1e6)
    np.testing.assert_allclose(fit_ensemble("rank_mean", scaled, y).combine(scaled), combined)


def test_a_member_constant_on_a_date_is_neutral_there_not_nan():
    oof, y = panel(n_dates=3, n_symbols=4)
    first = oof.index.get_level_values("date") == oof.index.get_level_values("date")[0]
    oof.loc[first, "noise"] = 7.0
    combined = fit_ensemble("mean", oof, y).combine(oof)
    assert combined.notna().all()
    expected = zscore(oof[["signal", "weak"]]).loc[first].to_numpy().sum(axis=1) / 3
    np.testing.assert_allclose(combined[first].to_numpy(), expected, atol=1e-12)


# ---------------------------------------------------------------------------------------------------
# weighted


def test_weighted_weights_are_non_negative_sum_to_one_and_favour_the_signal(data):
    oof, y = data
    fit = fit_ensemble("weighted", oof[["signal", "noise"]], y, shrinkage=0.0)
    weights = fit.weights
    assert min(weights.values()) >= 0 and sum(weights.values()) == pytest.approx(1.0)
    assert weights["signal"] > 0.9
    assert fit.details["objective_at_optimum"] > fit.details["objective_at_equal"]  # mean IC improved
    assert fit.details["member_ic"]["signal"] > 0.3 > abs(fit.details["member_ic"]["noise"])


def test_weighted_with_three_members_gives_the_redundant_and_the_noisy_ones_little(data):
    oof, y = data
    weights = fit_ensemble("weighted", oof, y, shrinkage=0.0).weights
    assert min(weights.values()) >= 0 and sum(weights.values()) == pytest.approx(1.0)
    # 'weak' only repeats a little of the signal's information with much more noise
    assert weights["signal"] > 0.85 and max(weights["weak"], weights["noise"]) < 0.1


def test_shrinkage_pulls_the_optimum_toward_equal_weights(data):
    oof, y = data
    members = oof[["signal", "noise"]]
    optimum = fit_ensemble("weighted", members, y, shrinkage=0.0)
    assert optimum.weights == pytest.approx(optimum.details["weights_unshrunk"])
    equal = fit_ensemble("weighted", members, y, shrinkage=1.0)
    assert equal.weights == pytest.approx({"signal": 0.5, "noise": 0.5})
    assert equal.details["weights_unshrunk"] == pytest.approx(optimum.weights)  # the optimum is still recorded
    between = fit_ensemble("weighted", members, y, shrinkage=0.3)
    for m in ("signal", "noise"):
        assert between.weights[m] == pytest.approx(0.7 * optimum.weights[m] + 0.3 * 0.5)
    assert fit_ensemble("weighted", members, y).weights == fit_ensemble("weighted", members, y).weights  # deterministic


def test_mse_objective_reaches_the_closed_form_optimum(data):
    """Two members, w + (1 - w) = 1: the MSE of ``w a + (1 - w) b`` against the z-scored label ``t``
    is smallest at ``w = E[(b - t)(b - a)] / E[(a - b)^2]``. It favours the signal but less than the
    IC objective: with weights tied to sum 1, adding noise also shrinks the combination toward the
    label's smaller predictable part (w = (1 + IC) / 2 for an orthogonal noise member)."""
    oof, y = data
    fit = fit_ensemble("weighted", oof[["signal", "noise"]], y, objective="mse", shrinkage=0.0)
    assert fit.details["objective"] == "mse"
    assert min(fit.weights.values()) >= 0 and sum(fit.weights.values()) == pytest.approx(1.0)
    z = zscore(pd.concat([oof[["signal", "noise"]], y], axis=1))
    a, b, t = z["signal"], z["noise"], z["label"]
    assert fit.weights["signal"] == pytest.approx(((b - t) * (b - a)).mean() / ((a - b) ** 2).mean(), abs=1e-4)
    assert fit.weights["signal"] > 0.6 > fit.weights["noise"]
    assert fit.details["objective_at_optimum"] < fit.details["objective_at_equal"]  # lower error


# ---------------------------------------------------------------------------------------------------
# stacked


def test_stacked_gives_the_signal_the_larger_coefficient_and_records_its_alpha_search(data):
    oof, y = data
    fit = fit_ensemble("stacked", oof[["signal", "noise"]], y, horizon=HORIZON)
    assert fit.weights["signal"] > 0.2 > abs(fit.weights["noise"])
    details = fit.details
    assert details["alpha_source"] == "purged split search"
    scores = details["validation_rank_ic"]
    assert set(scores) == {str(f) for f in STACK_ALPHA_FACTORS}
    best = max(scores.values())
    assert scores[str(details["alpha_factor"])] == best
    assert details["alpha"] == pytest.approx(details["alpha_factor"] * details["n_rows"])
    # the split: earlier 70% of dates fitted, the last `horizon` of them purged, the later 30% scored
    dates = pd.Index(oof.index.get_level_values("date").unique())
    split = details["search_split"]
    fit_end, valid_start = dates.get_loc(pd.Timestamp(split["fit_end"])), dates.get_loc(pd.Timestamp(split["valid_start"]))
    assert valid_start == int(0.7 * N_DATES) and valid_start - fit_end - 1 == HORIZON
    assert split["fit_dates"] + HORIZON + split["valid_dates"] == N_DATES


def test_stacked_with_a_given_alpha_skips_the_search(data):
    oof, y = data
    fit = fit_ensemble("stacked", oof, y, ridge_alpha=123.0)
    assert fit.details["alpha"] == 123.0 and fit.details["alpha_source"] == "given"
    assert "validation_rank_ic" not in fit.details
    heavy = fit_ensemble("stacked", oof, y, ridge_alpha=1e9)
    assert sum(abs(w) for w in heavy.weights.values()) < 1e-3  # the penalty does shrink


def test_stacked_may_give_a_negative_weight_to_a_hedge():
    """A member that is the signal's error, offered alone, is worth subtracting: stacking can."""
    oof, y = panel(seed=1)
    error = np.random.default_rng(5).normal(size=len(oof))
    members = pd.DataFrame({"noisy_signal": oof["signal"] + error, "its_error": error}, index=oof.index)
    fit = fit_ensemble("stacked", members, y, ridge_alpha=1.0)
    assert fit.weights["its_error"] < 0 < fit.weights["noisy_signal"]
    assert min(fit_ensemble("weighted", members, y).weights.values()) >= 0  # weighted cannot


# ---------------------------------------------------------------------------------------------------
# ensemble_oof_scores: the honest CV score


@pytest.mark.parametrize("method", ["weighted", "stacked"])
def test_fold_k_is_fitted_on_earlier_folds_only_and_never_inside_the_purge_gap(data, method):
    oof, y = data
    folds = walk_forward_folds(oof.index)
    _, table = ensemble_oof_scores(method, oof, y, folds, horizon=HORIZON, shrinkage=0.0)
    dates = pd.Index(oof.index.get_level_values("date").unique())
    position = dates.get_indexer(oof.index.get_level_values("date"))
    k = 3
    fold_start = int(position[(folds == k).to_numpy()].min())
    # fitted rows: every row of the dates i with i + horizon < start of fold k, nothing else
    assert table.set_index("fold").loc[k, "fitted_on_rows"] == (fold_start - HORIZON) * N_SYMBOLS
    assert pd.Timestamp(table.set_index("fold").loc[k, "train_end"]) == dates[fold_start - HORIZON - 1]

    # corrupt every label the fit must not see (fold k and later, and the purge gap before it)
    rng = np.random.default_rng(99)
    hidden = position + HORIZON >= fold_start
    corrupted = y.copy()
    corrupted[hidden] = rng.normal(size=int(hidden.sum())) - 5 * oof["signal"][hidden].to_numpy()
    _, after = ensemble_oof_scores(method, oof, corrupted, folds, horizon=HORIZON, shrinkage=0.0)
    for fold in range(1, k + 1):
        assert weights_of(after, fold) == weights_of(table, fold)
    assert weights_of(after, k + 1) != weights_of(table, k + 1)  # later folds do see those labels

    # control: the last date the fit may use does change it, so the check above has teeth
    visible = position == fold_start - HORIZON - 1
    touched = y.copy()
    touched[visible] = -50 * oof["signal"][visible].to_numpy()
    _, control = ensemble_oof_scores(method, oof, touched, folds, horizon=HORIZON, shrinkage=0.0)
    assert weights_of(control, k) != weights_of(table, k)


@pytest.mark.parametrize("method", ["weighted", "stacked"])
def test_the_first_fold_has_equal_weights_and_says_so(data, method):
    oof, y = data
    folds = walk_forward_folds(oof.index)
    scores, table = ensemble_oof_scores(method, oof, y, folds, horizon=HORIZON)
    first = table.iloc[0]
    assert first["fold"] == 1 and first["fitted_on_rows"] == 0 and first["train_end"] is None
    assert weights_of(table, 1) == pytest.approx({m: 1 / 3 for m in oof.columns})
    assert "equal weights" in first["note"]
    mean_scores, _ = ensemble_oof_scores("mean", oof, y, folds, horizon=HORIZON)
    in_first = (folds == 1).to_numpy()
    np.testing.assert_allclose(scores[in_first], mean_scores[in_first], atol=1e-12)
    assert (table["fitted_on_rows"].iloc[1:] > 0).all()


def test_per_fold_table_matches_the_metrics_of_the_returned_predictions(data):
    oof, y = data
    folds = walk_forward_folds(oof.index)
    scores, table = ensemble_oof_scores("weighted", oof, y, folds, horizon=HORIZON)
    assert list(table["fold"]) == [1, 2, 3, 4, 5]
    assert {"fold", "test_start", "test_end", "rank_ic", "ic", "weights", "fitted_on_rows"} <= set(table.columns)
    assert scores.index.equals(oof.index) and scores.notna().all()
    in_fold = (folds == 4).to_numpy()
    metrics = evaluate_predictions(y[in_fold], scores[in_fold], oof.index.get_level_values("date")[in_fold])
    row = table.set_index("fold").loc[4]
    assert row["rank_ic"] == pytest.approx(metrics["rank_ic"]) and row["ic"] == pytest.approx(metrics["ic"])
    assert row["test_start"] == str(oof.index.get_level_values("date")[in_fold].min().date())
    assert (table["rank_ic"].iloc[1:] > 0.2).all()  # the signal shows through, fold after fold


def test_fixed_rules_score_every_fold_without_fitting(data):
    oof, y = data
    folds = walk_forward_folds(oof.index)
    for method in ("mean", "rank_mean"):
        scores, table = ensemble_oof_scores(method, oof, y, folds, horizon=HORIZON)
        assert (table["fitted_on_rows"] == 0).all()
        np.testing.assert_allclose(scores, fit_ensemble(method, oof, y).combine(oof), atol=1e-12)


def test_folds_are_ordered_by_time_not_by_label(data):
    oof, y = data
    folds = walk_forward_folds(oof.index).map({1: 50, 2: 40, 3: 30, 4: 20, 5: 10})  # labels run backwards
    _, table = ensemble_oof_scores("weighted", oof, y, folds, horizon=HORIZON)
    assert list(table["fold"]) == [50, 40, 30, 20, 10]
    assert table["fitted_on_rows"].iloc[0] == 0 and table["fitted_on_rows"].is_monotonic_increasing


# ---------------------------------------------------------------------------------------------------
# combine and persistence


def test_combine_skips_a_nan_member_and_renormalizes_the_weights():
    oof, _ = panel(n_dates=2, n_symbols=5)
    fit = EnsembleFit("weighted", ["signal", "noise"], {"signal": 0.75, "noise": 0.25})
    z = zscore(oof[["signal", "noise"]])
    holes = oof[["signal", "noise"]].copy()
    row, both = holes.index[0], holes.index[1]
    holes.loc[row, "noise"] = np.nan
    holes.loc[both, ["signal", "noise"]] = np.nan
    combined = fit.combine(holes)
    z_holes = zscore(holes)  # standardized over the members' present values on that date
    assert combined[row] == pytest.approx(z_holes.loc[row, "signal"])  # 0.75 * z / 0.75
    assert np.isnan(combined[both])
    untouched = holes.index[holes.index.get_level_values("date") == holes.index[-1][0]]
    np.testing.assert_allclose(combined[untouched], (0.75 * z["signal"] + 0.25 * z["noise"])[untouched], atol=1e-12)


def test_combine_accepts_a_mapping_like_a_frame_and_ignores_extra_columns(data):
    oof, y = data
    fit = fit_ensemble("weighted", oof[["signal", "noise"]], y)
    from_frame = fit.combine(oof)  # 'weak' is not a member: ignored
    from_mapping = fit.combine({"noise": oof["noise"], "signal": oof["signal"]})
    pd.testing.assert_series_equal(from_frame, from_mapping)


@pytest.mark.parametrize("method", METHODS)
def test_to_dict_from_dict_round_trip_combines_identically(data, method):
    oof, y = data
    fit = fit_ensemble(method, oof, y, horizon=HORIZON)
    stored = json.loads(json.dumps(fit.to_dict()))  # what MLflow and Dagster metadata carry
    again = EnsembleFit.from_dict(stored)
    assert again.to_dict() == stored
    fresh, _ = panel(seed=7)
    pd.testing.assert_series_equal(again.combine(fresh), fit.combine(fresh))


# ---------------------------------------------------------------------------------------------------
# errors


def test_errors_are_specific(data):
    oof, y = data
    folds = walk_forward_folds(oof.index)
    with pytest.raises(ValueError, match="unknown ensemble method 'median'"):
        fit_ensemble("median", oof, y)
    with pytest.raises(ValueError, match="unknown ensemble method"):
        ensemble_oof_scores("vote", oof, y, folds, horizon=HORIZON)
    with pytest.raises(ValueError, match="at least 2 members"):
        fit_ensemble("mean", oof[["signal"]], y)
    with pytest.raises(ValueError, match="at least 2 members"):
        member_matrix({"signal": oof["signal"]})
    with pytest.raises(ValueError, match="share no"):
        member_matrix({"a": oof["signal"].iloc[:10], "b": oof["noise"].iloc[10:]})
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match=r"shrinkage must be a number in \[0, 1\]"):
            fit_ensemble("weighted", oof, y, shrinkage=bad)
        with pytest.raises(ValueError, match="shrinkage"):
            ensemble_oof_scores("weighted", oof, y, folds, horizon=HORIZON, shrinkage=bad)
    shifted = y.copy()
    shifted.index = shifted.index.set_levels(shifted.index.levels[0] + pd.Timedelta(days=3650), level="date")
    with pytest.raises(ValueError, match="y is not aligned with oof"):
        fit_ensemble("stacked", oof, shifted)
    with pytest.raises(ValueError, match="y is not aligned with oof"):
        ensemble_oof_scores("mean", oof, shifted, folds, horizon=HORIZON)
    with pytest.raises(ValueError, match="objective must be one of"):
        fit_ensemble("weighted", oof, y, objective="sharpe")
    with pytest.raises(ValueError, match="ridge_alpha"):
        fit_ensemble("stacked", oof, y, ridge_alpha=-1.0)
    with pytest.raises(ValueError, match="fold_of_row gives no fold for 30"):
        ensemble_oof_scores("mean", oof, y, folds.iloc[30:], horizon=HORIZON)
    with pytest.raises(ValueError, match=r"missing \['noise'\]"):
        fit_ensemble("mean", oof, y).combine(oof[["signal", "weak"]])
    with pytest.raises(ValueError, match="'date' level"):
        fit_ensemble("mean", oof.reset_index(drop=True), y)
    with pytest.raises(ValueError, match="needs at least 3 dates"):
        fit_ensemble("weighted", oof.iloc[: 2 * N_SYMBOLS], y)
    with pytest.raises(ValueError, match="weights .* must name exactly the members"):
        EnsembleFit.from_dict({"method": "mean", "members": ["a", "b"], "weights": {"a": 0.5}})
