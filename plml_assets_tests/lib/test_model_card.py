"""The model card renders what it is given and says n/a for what was not measured."""

from __future__ import annotations

import math

import pytest

from plml_assets.lib.registry.model_card import card_summary, render_card, standard_error

FACTS = {
    "model": "plml_model", "version": "3", "candidate": "xgboost", "run_id": "abc", "description": "xgboost model",
    "kind": "single", "family": "xgboost", "members": [], "params": {"max_depth": "5"}, "code_version": "0.1.0+gdeadbee",
    "horizon": 5, "trigger": "drift (causes: feature_drift)", "features": ["ret_5d", "ret_5d__lag1"],
    "feature_recipes": {"ret_5d": "base feature", "ret_5d__lag1": "lag(ret_5d, periods=1)"},
    "data": {"first_date": "2010-01-04", "last_date": "2020-12-31", "symbols": 20, "rows": 50000, "fingerprint": "f00d",
             "train_start": "2010-01-04", "train_end": "2019-12-20", "holdout_start": "2020-01-02", "holdout_end": "2020-12-21"},
    "cv": {"walk_forward_rank_ic": 0.03, "walk_forward_se": 0.01, "positive_folds": 0.75, "folds": 4, "kfold_rank_ic": None,
           "cpcv_path_sharpe_mean": float("nan"), "holdout_rank_ic": 0.02, "holdout_se": 0.015, "holdout_dates": 250},
    "evidence": {"trials": 12, "effective_trials": 7, "dsr": 0.91, "pbo": 0.3, "psr": 0.95, "verdict": "warn", "reasons": ["warn: pbo"]},
    "backtest": {"net_sharpe": 0.4, "baseline_net_sharpe": {"momentum_20d": -0.2}},
    "top_contributions": {"ret_5d": 0.01, "ret_5d__lag1": 0.002},
    "gate": {"verdict": "keep", "detail": "keep: challenger v3 below the champion"},
}


def test_card_renders_every_fact_and_says_na_for_the_unmeasured():
    card = render_card(FACTS)
    assert card.startswith("# plml_model v3: xgboost")
    assert "| `ret_5d__lag1` | lag(ret_5d, periods=1) |" in card
    assert "| walk-forward CV | 0.0300 | 0.0100 | 75 % of 4 folds positive;" in card
    assert "| purged K-fold CV | n/a |" in card and "| CPCV paths | n/a (mean path Sharpe)" in card  # None and NaN
    assert "| trials behind the pick (N) | 12 (7 effective after clustering) |" in card
    assert "drift (causes: feature_drift)" in card and "**keep**: keep: challenger v3 below the champion" in card
    summary = card_summary(FACTS)
    assert "holdout 0.0200 ± 0.0150" in summary and "gate keep" in summary and "over 12 trials" in summary


def test_standard_error_of_a_mean_ic_counts_overlapping_labels_once():
    # per-date std 0.2 (mean 0.02 / IR 0.1) over 250 dates with a 5-day horizon: 50 independent dates
    assert standard_error(0.02, 0.1, 250, 5) == pytest.approx(0.2 / math.sqrt(50))
    assert standard_error(0.02, None, 250, 5) is None and standard_error(0.02, 0.0, 250, 5) is None
