"""validation_report judges the leaderboard's pick on its own backtest (dates no choice saw), deflated
over everything tried. The asset is invoked directly on small synthetic inputs."""

from __future__ import annotations

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from plml_assets.defs.validation.assets import ValidationReportConfig, validation_report
from plml_assets.resources.settings import ExperimentSettings

DATES = pd.bdate_range("2015-01-01", periods=700)
SYMBOLS = ["A", "B", "C", "D", "E", "F"]
SETTINGS = ExperimentSettings(horizon=5, holdout_days=200, profile="quick")
EVIDENCE_KEYS = {"candidate", "backtest_dates", "holdout_start", "nested", "trials", "effective_trials", "sharpe_trials_std",
                 "dsr", "pbo", "pbo_metric", "turnover_per_day", "execution_lag_days", "cost_bps_per_side"}


def _row(candidate: str, kind: str, **stats) -> dict:
    base = {"candidate": candidate, "kind": kind, "dsr": 0.99, "psr": 0.99, "gap": 0.02, "positive_folds": 1.0,
            "oof_sharpe": 1.5, "walk_forward_rank_ic_mean": 0.02}
    return {**base, **stats}


def _board(winner: str | None, primary: str = "walk_forward_rank_ic_mean", **ensemble_stats) -> dict:
    return {
        "table": [_row("xgboost", "model", walk_forward_rank_ic_mean=0.01), _row("ensemble_mean", "ensemble", **ensemble_stats),
                  _row("momentum_20d", "baseline", dsr=None, psr=None, gap=None)],
        "criteria": {"primary": primary},
        "selection": {"winner": winner, "reason": "test rule" if winner else "no candidate passes every criterion", "pbo": 0.1},
        "mlflow_run_id": "run-abc",
    }


def _inputs(candidate: str, pick_ic: float, trial_copies: int, rng_seed: int = 0) -> dict:
    """A backtest of ``candidate`` whose per-date rank IC averages ``pick_ic``, and studies whose trials
    are ``trial_copies`` near-copies of two independent decisions per family."""
    rng = np.random.default_rng(rng_seed)
    index = pd.MultiIndex.from_product([DATES, SYMBOLS], names=["date", "symbol"])
    labels = pd.DataFrame({"fwd_return_5d": rng.normal(0, 0.02, len(index))}, index=index)
    window = DATES[100:]
    backtest = pd.DataFrame(index=window)
    for name, mean in ((candidate, 0.004), ("momentum_20d", 0.0), ("reversal_5d", 0.0), ("ridge", 0.0)):
        backtest[f"{name}:long_short"] = rng.normal(mean, 0.01, len(window))
        backtest[f"{name}:rank_ic"] = rng.normal(pick_ic if name == candidate else 0.0, 0.1, len(window))
    backtest["equal_weight:benchmark"] = rng.normal(0.0003, 0.01, len(window))
    backtest[f"{candidate}:turnover"] = 0.18
    backtest["segment"] = np.where(window >= DATES[-200], "holdout", "walk_forward")
    backtest["nested"], backtest["holding_days"], backtest["execution_lag_days"], backtest["cost_bps_per_side"] = True, 5, 1, 5.0
    oof_dates = DATES[100:450]
    studies = {}
    for f in ("xgboost", "lightgbm", "lstm", "gru", "elastic_net"):
        base = rng.normal(0.0, 0.1, (len(oof_dates), 2))
        scores = {f"trial_{i}": list(np.round(base[:, i % 2] + rng.normal(0, 0.003, len(oof_dates)), 5))
                  for i in range(2 * trial_copies)}
        studies[f"{f}_study"] = {"metric": "rank_ic", "oof_dates": [str(d.date()) for d in oof_dates], "trial_date_scores": scores}
    rows = pd.MultiIndex.from_product([oof_dates, SYMBOLS], names=["date", "symbol"])
    ens = pd.DataFrame({"method": "mean", "split": "oof", "prediction": rng.normal(0, 1, len(rows))}, index=rows)
    cpcv = pd.DataFrame({f"path_{k}": rng.normal(0.0, 0.01, 300) for k in range(3)}, index=DATES[100:400])
    return {"backtest": backtest, "cpcv_paths": cpcv, "labels": labels, "ensemble_predictions": ens, **studies}


def _report(board: dict, inputs: dict, **config) -> tuple[dict, dict]:
    out = validation_report(dg.build_asset_context(), ValidationReportConfig(**config), model_leaderboard=board,
                            settings=SETTINGS, **inputs)
    return out.value, out.metadata


def test_the_evidence_entry_names_the_pick_its_dates_and_everything_tried():
    report, metadata = _report(_board("ensemble_mean"), _inputs("ensemble_mean", pick_ic=0.03, trial_copies=3))
    evidence = metadata["evidence"].value
    assert EVIDENCE_KEYS <= set(evidence)
    assert evidence["candidate"] == "ensemble_mean" and report["subject"] == "ensemble_mean"
    assert evidence["backtest_dates"] == [str(DATES[100].date()), str(DATES[-1].date())]
    assert evidence["holdout_start"] == str(DATES[-200].date())
    assert evidence["nested"] is True and evidence["pbo_metric"] == "rank_ic"
    assert evidence["trials"] == 5 * 6 + 1  # every trial of every study (five families), and the ensemble rule
    assert evidence["effective_trials"] <= 11  # 2 decisions per family (+ the ensemble): copies are not independent tries
    assert evidence["execution_lag_days"] == 1 and evidence["cost_bps_per_side"] == 5.0
    assert evidence["turnover_per_day"] == pytest.approx(0.18)
    assert set(evidence["baseline_net_sharpe"]) == {"momentum_20d", "reversal_5d", "ridge", "equal_weight"}


def test_copies_do_not_inflate_the_trial_count_the_dsr_deflates_over():
    few = _report(_board("ensemble_mean"), _inputs("ensemble_mean", pick_ic=0.012, trial_copies=1))[1]["evidence"].value
    many = _report(_board("ensemble_mean"), _inputs("ensemble_mean", pick_ic=0.012, trial_copies=8))[1]["evidence"].value
    assert many["trials"] > 4 * few["trials"]
    assert many["effective_trials"] == few["effective_trials"]
    assert many["dsr"] == pytest.approx(few["dsr"], abs=0.1)


def test_a_skill_less_pick_fails_on_its_deflated_sharpe():
    report, metadata = _report(_board("ensemble_mean"), _inputs("ensemble_mean", pick_ic=0.0, trial_copies=2))
    assert report["verdict"] == "fail" and any(r.startswith("fail: dsr") for r in report["reasons"]), report["reasons"]


def test_a_skilled_pick_passes_the_dsr():
    report, _ = _report(_board("ensemble_mean"), _inputs("ensemble_mean", pick_ic=0.05, trial_copies=2))
    assert not any("dsr" in r for r in report["reasons"]), report["reasons"]
    assert report["dsr"] > 0.95


@pytest.mark.parametrize("stats, words", [({"gap": 0.3}, "fail: gap_mean 0.3"), ({"positive_folds": 1 / 3}, "warn: share_valid_below_zero")])
def test_the_picks_leaderboard_statistics_still_count(stats, words):
    report, _ = _report(_board("ensemble_mean", **stats), _inputs("ensemble_mean", pick_ic=0.05, trial_copies=2))
    assert any(words in r for r in report["reasons"]), report["reasons"]


def test_a_leaderboard_ranking_by_another_metric_than_the_trials_fails():
    report, metadata = _report(_board("ensemble_mean", primary="oof_sharpe"), _inputs("ensemble_mean", 0.05, 2))
    assert report["verdict"] == "fail" and any("need one metric for both" in r for r in report["reasons"])
    assert metadata["evidence"].value["pbo"] is None


def test_no_pick_fails_and_still_shows_the_best_ranked_candidates_evidence():
    report, metadata = _report(_board(None), _inputs("ensemble_mean", 0.05, 2))
    assert report["subject"] is None and report["verdict"] == "fail"
    assert report["reasons"][0].startswith("fail: the leaderboard picked no candidate (no candidate passes every criterion)")
    assert metadata["evidence"].value["candidate"] == "ensemble_mean"


def test_a_backtest_of_another_candidate_is_refused():
    with pytest.raises(Exception, match="re-materialize backtest"):
        _report(_board("xgboost"), _inputs("ensemble_mean", 0.05, 2))
