"""The selection rule: filters, ties, PBO refusal, DSR deflation and the baseline check."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from plml_assets.lib.comparison.leaderboard import Candidate, SelectionCriteria, candidate_statistics, leaderboard_table, select, validate_against_baseline
from plml_assets.lib.validation import overfitting as of

DATES = pd.bdate_range("2020-01-01", periods=300)


def returns(mean: float, seed: int) -> pd.Series:
    rng = np.random.default_rng(seed)
    return pd.Series(rng.normal(mean, 0.01, len(DATES)), index=DATES)


def pool(**overrides) -> dict[str, Candidate]:
    base = {
        "xgboost": Candidate("model", [0.03, 0.02, 0.04], [0.02], gap=0.05, oof_returns=returns(0.001, 1),
                             holdout_rank_ic=0.02, holdout_sharpe=0.8, fit_seconds=3.0, configurations=6),
        "lstm": Candidate("model", [0.05, -0.01, -0.02], [0.01], gap=0.02, oof_returns=returns(0.0, 2),
                          holdout_rank_ic=0.01, fit_seconds=2.0, configurations=2),
        "ensemble_mean": Candidate("ensemble", [0.035, 0.02, 0.03], gap=0.04, oof_returns=returns(0.0008, 3),
                                   holdout_rank_ic=0.015, fit_seconds=5.0, members=("xgboost", "lstm")),
        "momentum_20d": Candidate("baseline", [0.01, 0.0, 0.01], holdout_rank_ic=0.005),
    }
    base.update(overrides)
    return base


def test_best_eligible_primary_wins_and_failures_are_named():
    table, pbo = leaderboard_table(pool())
    assert table.loc["xgboost", "walk_forward_rank_ic_mean"] == pytest.approx(0.03)
    assert table.loc["lstm", "positive_folds"] == pytest.approx(1 / 3)
    assert table.loc["xgboost", "cv_rank_ic_mean"] == pytest.approx(np.mean([0.03, 0.02, 0.04, 0.02]))
    selection = select(table, SelectionCriteria(), pbo)
    # lstm has the best first fold but is positive in 1 of 3 folds; xgboost 0.030 beats the ensemble 0.028.
    assert selection.winner == "xgboost"
    assert selection.failures["lstm"] == ["positive in 33% of walk-forward folds < 50%"]
    assert selection.failures["xgboost"] == [] and "momentum_20d" not in selection.failures
    assert "best walk_forward_rank_ic_mean (0.0300) of 2 candidate(s)" in selection.reason


def test_a_tie_goes_to_the_cheaper_candidate():
    table, pbo = leaderboard_table(pool())
    selection = select(table, SelectionCriteria(tie_tolerance=0.005), pbo)
    assert selection.ties == ["xgboost", "ensemble_mean"] and selection.winner == "xgboost"  # 3 s < 5 s
    cheap_ensemble = pool(ensemble_mean=Candidate("ensemble", [0.035, 0.02, 0.03], gap=0.04, fit_seconds=1.0))
    table, pbo = leaderboard_table(cheap_ensemble)
    assert select(table, SelectionCriteria(tie_tolerance=0.005), pbo).winner == "ensemble_mean"


@pytest.mark.parametrize(
    ("criteria", "loser", "message"),
    [
        (SelectionCriteria(max_gap=0.03), "xgboost", "train/validation gap 0.0500 > 0.03"),
        (SelectionCriteria(max_fit_seconds=4.0), "ensemble_mean", "fit time 5.0 s > 4.0 s"),
    ],
)
def test_each_filter_explains_itself(criteria, loser, message):
    table, pbo = leaderboard_table(pool())
    selection = select(table, criteria, pbo)
    assert message in selection.failures[loser]
    assert selection.winner != loser


def test_no_eligible_candidate_means_no_winner_and_every_reason():
    table, pbo = leaderboard_table(pool())
    selection = select(table, SelectionCriteria(max_gap=0.0), pbo)
    assert selection.winner is None
    for name in ("xgboost", "lstm", "ensemble_mean"):
        assert name in selection.reason
    validated = validate_against_baseline(table, selection, "momentum_20d")
    assert not validated.validated and "nothing was selected" in validated.validation


def test_pbo_above_the_bound_refuses_any_pick():
    table, pbo = leaderboard_table(pool())
    assert 0.0 <= pbo <= 1.0
    assert select(table, SelectionCriteria(max_pbo=1.0), pbo).winner == "xgboost"
    refused = select(table, SelectionCriteria(max_pbo=0.0), 0.7)
    assert refused.winner is None and "PBO 0.70" in refused.reason


def test_dsr_is_deflated_by_every_configuration_tried():
    few, _ = leaderboard_table(pool())
    many, _ = leaderboard_table(pool(xgboost=Candidate(
        "model", [0.03, 0.02, 0.04], [0.02], gap=0.05, oof_returns=returns(0.001, 1), fit_seconds=3.0, configurations=500)))
    assert 0.0 <= few.loc["xgboost", "dsr"] <= 1.0
    assert many.loc["xgboost", "dsr"] < few.loc["xgboost", "dsr"]  # more searching, less credit
    assert math.isnan(few.loc["momentum_20d", "dsr"])
    strict = select(few, SelectionCriteria(min_dsr=1.0))
    assert strict.winner is None and all(any("deflated Sharpe" in f for f in fs) for fs in strict.failures.values())


def test_candidate_statistics_feed_one_verdict_rule_for_models_and_ensembles():
    table, pbo = leaderboard_table(pool())
    # PSR of the OOF returns: these draws have annual Sharpes 2.0 (ensemble_mean) and -0.8 (lstm).
    assert table.loc["ensemble_mean", "psr"] > 0.95 and table.loc["lstm", "psr"] < 0.25
    assert math.isnan(table.loc["momentum_20d", "psr"])  # a baseline without OOF returns has none
    for name in ("xgboost", "ensemble_mean"):
        stats = candidate_statistics(table, name, pbo)
        assert stats["pbo"] == pytest.approx(pbo) and stats["dsr"] == pytest.approx(table.loc[name, "dsr"])
        assert stats["gap_mean"] == pytest.approx(table.loc[name, "gap"])
        assert stats["share_valid_below_zero"] == pytest.approx(1 - table.loc[name, "positive_folds"])
    lstm = candidate_statistics(table, "lstm", pbo)
    verdict, reasons = of.verdict(lstm, of.ValidationBounds(pbo_warn=None, pbo_fail=None, dsr_warn=None, dsr_fail=None))
    assert verdict == "warn" and any("share_valid_below_zero 0.6667" in r for r in reasons)
    # A candidate with a large gap fails on it, whatever its kind.
    wide = leaderboard_table(pool(ensemble_mean=Candidate("ensemble", [0.03, 0.02], gap=0.3, oof_returns=returns(0.0, 4))))
    verdict, reasons = of.verdict(candidate_statistics(*wide[:1], "ensemble_mean", wide[1]))
    assert verdict == "fail" and any("gap_mean 0.3" in r for r in reasons)
    with pytest.raises(ValueError, match="'gbm' is not on the leaderboard"):
        candidate_statistics(table, "gbm", pbo)


def test_worst_verdict_orders_fail_over_warn_over_pass():
    assert of.worst_verdict("pass", "warn") == "warn"
    assert of.worst_verdict("warn", "fail", "pass") == "fail"
    assert of.worst_verdict("pass") == "pass"
    with pytest.raises(ValueError, match="verdicts must be among"):
        of.worst_verdict("pass", "maybe")


def test_the_holdout_validation_against_the_baseline():
    table, pbo = leaderboard_table(pool())
    selection = validate_against_baseline(table, select(table, SelectionCriteria(), pbo), "momentum_20d")
    assert selection.validated and "beats the baseline momentum_20d" in selection.validation
    worse = pool(momentum_20d=Candidate("baseline", [0.0], holdout_rank_ic=0.05))
    table, pbo = leaderboard_table(worse)
    selection = validate_against_baseline(table, select(table, SelectionCriteria(), pbo), "momentum_20d")
    assert selection.winner == "xgboost" and not selection.validated
    assert "does not beat" in selection.validation and "nothing new is promoted" in selection.validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"primary": "holdout_rank_ic"}, "primary metric must be one of"),
        ({"min_positive_folds": 1.5}, "min_positive_folds must be between 0 and 1"),
        ({"max_gap": -0.1}, "max_gap must be >= 0"),
    ],
)
def test_bad_criteria_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SelectionCriteria(**kwargs).validate()


def test_bad_candidates_are_refused():
    with pytest.raises(ValueError, match="candidate kind"):
        Candidate("stack", [0.1])
    with pytest.raises(ValueError, match="at least one walk-forward fold"):
        Candidate("model", [])
    table, _ = leaderboard_table({"momentum_20d": Candidate("baseline", [0.0])})
    with pytest.raises(ValueError, match="only baselines"):
        select(table, SelectionCriteria())
