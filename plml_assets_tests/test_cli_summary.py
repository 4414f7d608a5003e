"""The run summary prints what a registered model has: a single model's CV and holdout metrics, and an
ensemble's leaderboard CV numbers (it has no K-fold score) without 'nan' placeholders."""

from __future__ import annotations

import math

from plml_assets.cli import _metric_lines
from plml_assets.defs.registry.assets import leaderboard_metrics

BOARD = {"table": [
    {"candidate": "xgboost", "walk_forward_rank_ic_mean": 0.02, "kfold_rank_ic_mean": 0.03, "dsr": 0.4, "psr": 0.9, "oof_sharpe": 0.5},
    {"candidate": "ensemble_mean", "walk_forward_rank_ic_mean": 0.025, "kfold_rank_ic_mean": None, "dsr": None, "psr": 0.8,
     "oof_sharpe": math.nan},
]}


def test_leaderboard_metrics_name_the_candidates_cv_evidence_and_skip_what_is_undefined():
    assert leaderboard_metrics(BOARD, "xgboost") == {"cv_walk_forward_rank_ic": 0.02, "cv_kfold_rank_ic": 0.03,
                                                     "leaderboard_dsr": 0.4, "leaderboard_psr": 0.9, "leaderboard_oof_sharpe": 0.5}
    assert leaderboard_metrics(BOARD, "ensemble_mean") == {"cv_walk_forward_rank_ic": 0.025, "leaderboard_psr": 0.8}
    assert leaderboard_metrics(BOARD, "gru") == {}


def test_metric_lines_leave_out_what_a_model_does_not_have():
    single = _metric_lines({"cv_walk_forward_rank_ic": 0.02, "cv_walk_forward_ic": 0.01, "cv_walk_forward_directional_accuracy": 0.51,
                            "cv_kfold_rank_ic": 0.03, "holdout_rank_ic": 0.004, "holdout_ic": -0.01,
                            "holdout_directional_accuracy": 0.5, "holdout_rmse": 0.65})
    assert single == ["    CV (walk-forward): rank IC 0.0200  IC 0.0100  dir.acc 0.510  (purged K-fold rank IC 0.0300)",
                      "    holdout:           rank IC 0.0040  IC -0.0100  dir.acc 0.500  RMSE 0.6500"]
    ensemble = _metric_lines({"cv_walk_forward_rank_ic": 0.025, "holdout_rank_ic": 0.007, "holdout_ic": math.nan})
    assert ensemble == ["    CV (walk-forward): rank IC 0.0250", "    holdout:           rank IC 0.0070"]
    assert _metric_lines({})[0] == "    CV (walk-forward): not recorded"
