"""The AutoML study (lib/tuning/automl.py) on real Optuna storage: one study over families, their
conditional hyper-parameters and the feature count, on purged folds, within a wall-clock budget,
pruning on folds, resumable, and fANOVA saying which choices mattered."""

from __future__ import annotations

import time

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from plml_assets.lib.tuning import report
from plml_assets.lib.tuning.automl import (
    AUTOML_FAMILIES,
    AutoMLObjective,
    AutoMLSpace,
    DeadlinePruner,
    choice_importances,
    run_automl,
)
from plml_assets.lib.validation.splits import PurgedWalkForward

optuna.logging.set_verbosity(optuna.logging.WARNING)
HORIZON = 5
FIXED = {"elastic_net": {}, "xgboost": {"nthread": 1, "n_estimators": 40, "early_stopping_rounds": 10},
         "lightgbm": {"n_jobs": 1, "n_estimators": 40, "early_stopping_rounds": 10},
         "lstm": {"max_epochs": 1, "epoch_samples": 512, "num_threads": 1},
         "gru": {"max_epochs": 1, "epoch_samples": 512, "num_threads": 1}}


@pytest.fixture(scope="module")
def problem():
    """A panel whose label is driven by f0 and f1 only; each fold's ranked feature list puts them first."""
    rng = np.random.default_rng(0)
    index = pd.MultiIndex.from_product([pd.bdate_range("2020-01-01", periods=220), [f"S{i:02d}" for i in range(15)]],
                                       names=["date", "symbol"])
    X = pd.DataFrame(rng.normal(size=(len(index), 12)), index=index, columns=[f"f{i}" for i in range(12)])
    y = pd.Series(0.5 * X["f0"] + 0.3 * X["f1"] + rng.normal(size=len(index)), index=index, name="y")
    folds = list(PurgedWalkForward(n_splits=3, horizon=HORIZON).split(X))
    columns = [list(X.columns)] * len(folds)
    return X, y, folds, columns


def test_the_space_draws_one_familys_parameters_and_checks_configurations():
    space = AutoMLSpace(quick=True)
    assert space.names[:2] == ["family", "top_k"] and "gru.window" in space.names and "xgboost.max_depth" in space.names
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    drawn = [space.suggest(study.ask()) for _ in range(40)]
    assert {d["family"] for d in drawn} == set(AUTOML_FAMILIES)
    for d in drawn:
        assert all(k in ("family", "top_k") or k.startswith(d["family"] + ".") for k in d)
        family, k, own = AutoMLSpace.split(d)
        assert set(own) == set(space.family_spaces[family].names) and k in (10, 20, 40)
    nets = [d for d in drawn if d["family"] in ("lstm", "gru")]
    assert nets and all(d[f"{d['family']}.num_layers"] <= 2 and d[f"{d['family']}.window"] <= 20 for d in nets)
    full = AutoMLSpace()
    assert full.family_spaces["gru"].to_dict()["num_layers"]["high"] == 4
    assert full.family_spaces["gru"].to_dict()["hidden_size"]["high"] == 256
    assert full.family_spaces["gru"].to_dict()["window"]["high"] == 120
    # bidirectional cells and a temporal attention pooling head are searched choices (quick: one-way only)
    assert full.family_spaces["lstm"].to_dict()["bidirectional"]["choices"] == [False, True]
    assert full.family_spaces["lstm"].to_dict()["pooling"]["choices"] == ["last", "attention"]
    assert all(d[f"{d['family']}.bidirectional"] is False for d in nets) and {d[f"{d['family']}.pooling"] for d in nets} <= {"last", "attention"}
    with pytest.raises(ValueError, match="cannot set"):
        space.check_params({"family": "xgboost", "lightgbm.num_leaves": 16})
    with pytest.raises(ValueError, match="families must be among"):
        AutoMLSpace(families=["catboost"])


def test_a_budgeted_study_searches_families_prunes_on_folds_and_resumes(problem, tmp_path):
    X, y, folds, columns = problem
    objective = AutoMLObjective(X, y, folds, HORIZON, columns, FIXED)
    space = AutoMLSpace(top_k=(2, 6, 12), quick=True)
    storage = f"sqlite:///{tmp_path / 'automl.db'}"
    began = time.perf_counter()
    defaults = [{"family": "elastic_net", "top_k": 2, "elastic_net.alpha": 1e-3, "elastic_net.l1_ratio": 0.5},
                {"family": "xgboost", "top_k": 12, "xgboost.learning_rate": 0.1, "xgboost.max_depth": 3,
                 "xgboost.min_child_weight": 5.0, "xgboost.subsample": 0.8, "xgboost.colsample_bytree": 0.8,
                 "xgboost.reg_lambda": 1.0}]
    result = run_automl(objective, space, storage_url=storage, study_name="automl-test", budget_s=20.0, seed=0,
                        enqueue=defaults)
    wall = time.perf_counter() - began
    assert wall < 20.0 + 15.0  # no trial starts after the budget; a running one stops at its next fold
    study = result.study
    done = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(done) >= 6
    families = {t.user_attrs["family"] for t in done}
    assert len(families) >= 3
    assert all(t.params["family"] == t.user_attrs["family"] for t in done)
    # The enqueued defaults ran first, as given; the best configuration finds the signal (f0, f1).
    assert done[0].params == defaults[0] and done[1].params == defaults[1]
    assert study.best_value > 0.15
    # Every trial recorded its per-date out-of-fold scores on the folds' test dates: what counts it as tried.
    # (a booster that could not split predicts a constant: no date scored, so not counted as tried)
    scores = report.trial_date_scores(study, objective.oof_dates())
    scored = [t for t in done if sum(v is not None for v in t.user_attrs["date_scores"]) >= 20]
    assert list(scores.columns) == [f"trial_{t.number}" for t in scored] and len(scored) >= 0.8 * len(done)
    assert len(scores) == len(objective.oof_dates()) == sum(len(np.unique(X.index.get_level_values("date")[t])) for _, t in folds)
    # Resumed: the finished trials are kept and the study goes on from them.
    again = run_automl(objective, space, storage_url=storage, study_name="automl-test", budget_s=5.0, seed=0, enqueue=defaults)
    after = again.study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert [t.params for t in after[: len(done)]] == [t.params for t in done] and len(after) > len(done)
    # A study created over another space is refused, not mixed.
    with pytest.raises(ValueError, match="another search space"):
        run_automl(objective, AutoMLSpace(top_k=(3,), quick=True), storage_url=storage, study_name="automl-test", budget_s=1.0)


def test_the_deadline_prunes_a_running_trial_at_its_next_fold(problem):
    X, y, folds, columns = problem
    objective = AutoMLObjective(X, y, folds, HORIZON, columns, FIXED)
    study = optuna.create_study(direction="maximize", pruner=DeadlinePruner(optuna.pruners.NopPruner(), time.time() - 1))
    trial = study.ask({"family": optuna.distributions.CategoricalDistribution(["xgboost"])})
    with pytest.raises(optuna.TrialPruned):
        objective(trial, {"family": "xgboost", "top_k": 12})
    assert len(trial.user_attrs["fold_rank_ic"]) == 1  # stopped after its first fold


def test_choice_importances_name_what_mattered(problem):
    """A study where only the feature count matters (the signal is in f0, f1; top_k 1 keeps only f0,
    the others keep both): fANOVA puts top_k above family."""
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    rng = np.random.default_rng(0)
    for _ in range(30):
        trial = study.ask()
        family = trial.suggest_categorical("family", ["xgboost", "lightgbm"])
        k = trial.suggest_categorical("top_k", [1, 6, 12])
        trial.suggest_float(f"{family}.learning_rate", 0.01, 0.3, log=True)
        study.tell(trial, (0.05 if k == 1 else 0.3) + 0.005 * rng.normal())
    out = choice_importances(study)
    assert out["overall"]["top_k"] > out["overall"]["family"]
    assert set(out) == {"overall", "xgboost", "lightgbm"} and set(out["xgboost"]) == {"xgboost.learning_rate"}
