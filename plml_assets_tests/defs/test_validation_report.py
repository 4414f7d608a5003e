"""validation_report judges the leaderboard's pick, whatever its kind; the XGBoost backtest's evidence
counts only when XGBoost is the pick. The asset is invoked directly on small synthetic inputs."""

from __future__ import annotations

import math

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from plml_assets.defs.validation.assets import ValidationReportConfig, validation_report

DATES = pd.bdate_range("2015-01-01", periods=400)


def _row(candidate: str, kind: str, **stats) -> dict:
    base = {"candidate": candidate, "kind": kind, "dsr": 0.99, "psr": 0.99, "gap": 0.02, "positive_folds": 1.0, "oof_sharpe": 1.5}
    return {**base, **stats}


def _board(winner: str | None, pbo: float = 0.1, **ensemble_stats) -> dict:
    return {
        "table": [_row("xgboost", "model"), _row("ensemble_mean", "ensemble", **ensemble_stats),
                  _row("momentum_20d", "baseline", dsr=None, psr=None, gap=None)],
        "selection": {"winner": winner, "reason": "test rule" if winner else "no candidate passes every criterion", "pbo": pbo},
        "mlflow_run_id": "run-abc",
    }


@pytest.fixture(scope="module")
def xgboost_evidence():
    """A losing XGBoost backtest (its long-short loses steadily) next to three other strategies."""
    rng = np.random.default_rng(0)
    backtest = pd.DataFrame({
        "xgboost:long_short": rng.normal(-0.002, 0.01, len(DATES)),
        "ridge:long_short": rng.normal(0.0, 0.01, len(DATES)),
        "momentum_20d:long_short": rng.normal(0.0005, 0.01, len(DATES)),
        "reversal_5d:long_short": rng.normal(0.0, 0.01, len(DATES)),
    }, index=DATES)
    cpcv = pd.DataFrame({f"path_{k}": rng.normal(0.0, 0.01, len(DATES)) for k in range(3)}, index=DATES)
    cv = pd.DataFrame({"scheme": "walk_forward", "fold": [1, 2, 3], "train_rank_ic": [0.1, 0.1, 0.1],
                       "valid_rank_ic": [0.02, 0.03, 0.01]})
    return {"xgboost_cv_results": cv, "cpcv_paths": cpcv, "backtest": backtest}


def _report(board: dict, evidence: dict) -> dict:
    out = validation_report(dg.build_asset_context(), ValidationReportConfig(), model_leaderboard=board, **evidence)
    return out.value


def test_an_ensemble_pick_is_judged_on_its_own_statistics_not_on_the_xgboost_backtest(xgboost_evidence):
    report = _report(_board("ensemble_mean"), xgboost_evidence)
    assert report["xgboost_backtest"]["verdict"] == "fail"  # the XGBoost family's backtest loses...
    assert report["subject"] == "ensemble_mean" and report["verdict"] == "pass", report["reasons"]  # ...and does not count
    assert report["leaderboard_run_id"] == "run-abc"
    assert report["pbo_configurations"] == ["xgboost", "ensemble_mean"]
    assert report["dsr"] == pytest.approx(0.99) and report["pbo"] == pytest.approx(0.1)


def test_an_xgboost_pick_also_answers_for_its_backtest(xgboost_evidence):
    report = _report(_board("xgboost"), xgboost_evidence)
    assert report["verdict"] == "fail"
    assert any(r.startswith("walk-forward backtest: fail: dsr") for r in report["reasons"]), report["reasons"]


@pytest.mark.parametrize("stats, verdict, words", [
    ({"gap": 0.3}, "fail", "gap_mean 0.3"),
    ({"dsr": 0.3}, "fail", "dsr 0.3"),
    ({"dsr": 0.9}, "warn", "dsr 0.9"),
    ({"positive_folds": 1 / 3}, "warn", "share_valid_below_zero 0.6667"),
])
def test_the_picks_statistics_decide(xgboost_evidence, stats, verdict, words):
    report = _report(_board("ensemble_mean", **stats), xgboost_evidence)
    assert report["verdict"] == verdict and any(words in r for r in report["reasons"]), report["reasons"]


def test_unmeasured_pbo_or_dsr_is_never_a_pass(xgboost_evidence):
    report = _report(_board("ensemble_mean", pbo=math.nan, dsr=None), xgboost_evidence)
    assert report["verdict"] == "warn"
    assert "warn: pbo and dsr not measured (too few out-of-fold dates or candidates with OOF returns)" in report["reasons"]


def test_no_pick_fails_and_says_why(xgboost_evidence):
    report = _report(_board(None), xgboost_evidence)
    assert report["subject"] is None and report["verdict"] == "fail"
    assert report["reasons"] == ["fail: the leaderboard picked no candidate (no candidate passes every criterion)"]
