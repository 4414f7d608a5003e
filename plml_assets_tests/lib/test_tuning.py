"""Hyper-parameter search on real storage: spaces, the purged-CV objective, pruning, resume after a
kill, parallel workers on PostgreSQL, Pareto fronts and the pick rule, reports."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.models.training import excess_returns
from plml_assets.lib.models.xgboost_model import XGBoostModel
from plml_assets.lib.tuning import (
    DEFAULT_SPACES,
    PickRule,
    SearchSpace,
    cv_objective,
    family_fit_predict,
    make_storage,
    param_importances,
    pick_trial,
    plot_optimization_history,
    plot_param_importances,
    plot_pareto_front,
    prediction_turnover,
    run_study,
    trials_frame,
    xgboost_fit_predict,
)
from plml_assets.lib.tuning.study import _claims_before, _make_pruner
from plml_assets.lib.validation.splits import PurgedWalkForward
from plml_assets_tests.conftest import REPO

optuna.logging.set_verbosity(optuna.logging.WARNING)

HORIZON = 5
SYMBOLS = ["AAPL", "JPM", "KO", "MSFT", "PG", "XOM"]
TINY_XGB = {"nthread": 1, "n_estimators": 60, "early_stopping_rounds": 10}
PNG = b"\x89PNG\r\n\x1a\n"
# A space whose upper min_child_weight range is hopeless: with more minimum hessian per leaf than a
# fold has rows, XGBoost cannot split, predictions are constant and the rank IC is 0.
SPACE = SearchSpace.from_dict({
    "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
    "max_depth": {"type": "int", "low": 2, "high": 6},
    "min_child_weight": {"type": "float", "low": 1.0, "high": 5000.0, "log": True},
})
BAD_DEFAULT = {"learning_rate": 0.01, "max_depth": 2, "min_child_weight": 5000.0}


@pytest.fixture(scope="module")
def planted(embedded_panel):
    """6 real stocks x ~500 dates (2010-2011): real momentum/volatility features, two noise columns
    and a planted feature, the 5-day excess forward return plus twice its spread in noise."""
    prices = embedded_panel.loc[(slice("2010-01-01", "2011-12-31"), SYMBOLS), :].sort_index()
    y = excess_returns(forward_returns(prices, HORIZON))
    close = prices["close"].groupby(level="symbol")
    rng = np.random.default_rng(7)
    X = pd.DataFrame({
        "ret_5d": close.pct_change(5),
        "ret_20d": close.pct_change(20),
        "vol_20d": close.pct_change().groupby(level="symbol").rolling(20).std().droplevel(0),
    }).reindex(prices.index)
    X["noise_1"] = rng.normal(size=len(X))
    X["noise_2"] = rng.normal(size=len(X))
    X["planted"] = y + rng.normal(scale=2 * y.std(), size=len(y))
    keep = y.notna() & X.notna().all(axis=1)
    X, y = X[keep], y[keep]
    folds = list(PurgedWalkForward(n_splits=3, horizon=HORIZON).split(X))
    return X, y, folds


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def quick_objective(trial, params):
    """A cheap analytic objective for the bookkeeping tests (budget, enqueue, seeds, importances)."""
    return -((params["x"] - 0.3) ** 2) + 0.01 * params["k"]


QUICK_SPACE = SearchSpace.from_dict({
    "x": {"type": "float", "low": 0.0, "high": 1.0},
    "k": {"type": "int", "low": 0, "high": 3},
})


def finished(study) -> list:
    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


# ---- (f) search spaces -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"lr": {"type": "float", "low": 0.3, "high": 0.01}}, r"'lr'.*'low' \(0.3\) must be < 'high'"),
        ({"lr": {"type": "float", "low": 0.0, "high": 0.1, "log": True}}, r"'lr'.*log scale needs 'low' > 0"),
        ({"lr": {"type": "float", "low": 0.01}}, r"'lr'.*needs 'high'"),
        ({"lr": {"type": "uniform", "low": 0.0, "high": 1.0}}, r"'lr'.*'type' must be one of"),
        ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "lg": True}}, r"'lr'.*unknown key\(s\) \['lg'\]"),
        ({"lr": {"type": "float", "low": "a", "high": 1.0}}, r"'lr'.*'low' must be a finite number"),
        ({"lr": {"type": "float", "low": 0.0, "high": float("inf")}}, r"'lr'.*'high' must be a finite number"),
        ({"lr": {"type": "float", "low": 0.1, "high": 1.0, "log": True, "step": 0.1}}, r"'lr'.*cannot be combined"),
        ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "step": 0.3}}, r"'lr'.*multiple of 'step'"),
        ({"lr": {"type": "float", "low": 0.0, "high": 1.0, "log": "yes"}}, r"'lr'.*'log' must be true or false"),
        ({"depth": {"type": "int", "low": 2.5, "high": 8}}, r"'depth'.*'low' must be a finite integer"),
        ({"depth": {"type": "int", "low": True, "high": 8}}, r"'depth'.*'low' must be a finite integer"),
        ({"booster": {"type": "categorical", "choices": []}}, r"'booster'.*non-empty list"),
        ({"booster": {"type": "categorical", "choices": "gbtree"}}, r"'booster'.*non-empty list"),
        ({"booster": {"type": "categorical", "choices": ["a", "a"]}}, r"'booster'.*duplicates"),
        ({"booster": {"type": "categorical", "choices": [[1, 2]]}}, r"'booster'.*None, bool, int, float or str"),
        ({"booster": {"type": "categorical", "choices": ["a"], "low": 1}}, r"'booster'.*unknown key"),
        ({"booster": ["gbtree"]}, r"'booster'.*spec must be a mapping"),
        ({"": {"type": "int", "low": 1, "high": 2}}, r"name must be a non-empty string"),
        ({}, r"search space is empty"),
    ],
)
def test_invalid_space_raises_a_value_error_naming_the_parameter(spec, message):
    with pytest.raises(ValueError, match=message):
        SearchSpace.from_dict(spec)


def test_space_suggests_every_parameter_within_its_declared_range():
    space = SearchSpace.from_dict({
        "learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
        "max_depth": {"type": "int", "low": 2, "high": 8},
        "subsample": {"type": "float", "low": 0.5, "high": 1.0, "step": 0.1},
        "booster": {"type": "categorical", "choices": ["gbtree", "dart"]},
    })
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = [space.suggest(study.ask()) for _ in range(40)]
    assert all(list(p) == space.names for p in seen)
    assert all(0.01 <= p["learning_rate"] <= 0.3 and isinstance(p["max_depth"], int) and 2 <= p["max_depth"] <= 8 for p in seen)
    assert {round(p["subsample"], 10) for p in seen} <= {0.5, 0.6, 0.7, 0.8, 0.9, 1.0}
    assert {p["booster"] for p in seen} == {"gbtree", "dart"}
    assert SearchSpace.from_json(space.to_json()) == space
    with pytest.raises(ValueError, match="'max_depth': 9 is outside"):
        space.check_params({"max_depth": 9})
    with pytest.raises(ValueError, match=r"\['eta'\] are not in the search space"):
        space.check_params({"eta": 0.1})


def test_default_spaces_cover_the_families_with_the_model_parameter_names():
    assert set(DEFAULT_SPACES) == {"xgboost", "lightgbm", "lstm", "gru", "elastic_net"}
    from plml_assets.lib.models.linear_model import ElasticNetModel

    assert set(DEFAULT_SPACES["elastic_net"].names) == {"alpha", "l1_ratio"} <= set(inspect.signature(ElasticNetModel).parameters)
    assert set(DEFAULT_SPACES["xgboost"].names) <= set(inspect.signature(XGBoostModel).parameters)
    assert {"learning_rate", "num_leaves", "min_child_samples"} <= set(DEFAULT_SPACES["lightgbm"].names)
    for family in ("lstm", "gru"):
        assert {"window", "hidden_size", "num_layers", "dropout", "lr", "batch_size"} == set(DEFAULT_SPACES[family].names)


# ---- the CV objective -------------------------------------------------------------------------


def test_cv_objective_refuses_folds_whose_training_labels_reach_the_test_block(planted):
    X, y, _ = planted
    leaky = list(PurgedWalkForward(n_splits=3, horizon=0).split(X))
    with pytest.raises(ValueError, match="fold 1/3 is not purged for horizon 5"):
        cv_objective(xgboost_fit_predict(HORIZON, **TINY_XGB), X, y, leaky, HORIZON)
    with pytest.raises(ValueError, match="objectives must be distinct names"):
        cv_objective(xgboost_fit_predict(HORIZON), X, y, planted[2], HORIZON, objectives=("rank_ic", "sharpe"))


@pytest.mark.parametrize("family,fixed,params", [
    ("xgboost", TINY_XGB, {"max_depth": 3}),
    ("lightgbm", {"n_estimators": 30, "min_child_samples": 5}, {"num_leaves": 7}),
])
def test_cv_objective_scores_the_mean_fold_rank_ic_with_any_model_family(planted, family, fixed, params):
    X, y, folds = planted
    objective = cv_objective(family_fit_predict(family, HORIZON, **fixed), X, y, folds, HORIZON)
    trial = optuna.trial.FixedTrial(params)
    value = objective(trial, params)
    folds_ic = trial.user_attrs["fold_rank_ic"]
    assert len(folds_ic) == 3 and value == pytest.approx(np.mean(folds_ic), abs=1e-5)
    assert value > 0.15  # the planted feature is found
    assert trial.user_attrs["gap"] == pytest.approx(trial.user_attrs["train_rank_ic"] - value)

    def wrong_length(params, X_train, y_train, X_eval):
        return np.zeros(3)

    with pytest.raises(ValueError, match="returned 3 predictions"):
        cv_objective(wrong_length, X, y, folds, HORIZON)(optuna.trial.FixedTrial({}), {})


def test_cv_objective_fits_each_fold_on_its_own_columns(planted):
    X, y, folds = planted
    X = X.assign(noise=np.random.default_rng(1).normal(size=len(X)))
    seen: list[list[str]] = []

    def recording(params, X_train, y_train, X_eval):
        seen.append(list(X_train.columns))
        assert list(X_eval.columns) == list(X_train.columns)
        return np.zeros(len(X_eval))

    per_fold = [["noise"], [X.columns[0], "noise"], [X.columns[0]]]
    cv_objective(recording, X, y, folds, HORIZON, fold_columns=per_fold)(optuna.trial.FixedTrial({}), {})
    assert seen == per_fold
    with pytest.raises(ValueError, match="2 fold column lists for 3 folds"):
        cv_objective(recording, X, y, folds, HORIZON, fold_columns=per_fold[:2])
    with pytest.raises(ValueError, match="unknown: \\['nope'\\]"):
        cv_objective(recording, X, y, folds, HORIZON, fold_columns=[["nope"]] * 3)
    with pytest.raises(ValueError, match="unknown model family 'catboost'"):
        family_fit_predict("catboost", HORIZON)


def test_prediction_turnover_is_zero_for_a_fixed_ranking_and_two_for_a_flipping_one():
    dates = pd.bdate_range("2020-01-01", periods=6, name="date")
    index = pd.MultiIndex.from_product([dates, ["a", "b", "c", "d"]], names=["date", "symbol"])
    fixed = pd.Series(np.tile([1.0, 2.0, 3.0, 4.0], 6), index=index)
    flipping = pd.Series(np.concatenate([[1.0, 2.0, 3.0, 4.0] if k % 2 else [4.0, 3.0, 2.0, 1.0] for k in range(6)]), index=index)
    assert prediction_turnover(fixed) == pytest.approx(0.0)
    assert prediction_turnover(flipping) == pytest.approx(2.0)


# ---- (a) search beats a bad default; (b) pruning --------------------------------------------


@pytest.fixture(scope="module")
def tpe_result(planted, tmp_path_factory):
    X, y, folds = planted
    url = f"sqlite:///{tmp_path_factory.mktemp('tpe') / 'optuna.db'}"
    objective = cv_objective(xgboost_fit_predict(HORIZON, **TINY_XGB), X, y, folds, HORIZON)
    return run_study(objective, SPACE, storage_url=url, study_name="planted_tpe", sampler="tpe", pruner="none",
                     n_trials=10, seed=0, enqueue=[BAD_DEFAULT])


def test_search_finds_parameters_far_better_than_a_bad_default(tpe_result):
    study = tpe_result.study
    baseline = study.trials[0]
    assert baseline.params == BAD_DEFAULT and baseline.value == pytest.approx(0.0)
    assert baseline.user_attrs["nan_folds"] == 3  # constant predictions: scored 0, not failed
    assert tpe_result.n_done == 10 and tpe_result.ran == {"COMPLETE": 10}
    assert tpe_result.best.number != 0
    assert tpe_result.best.value > baseline.value + 0.15
    assert tpe_result.best.params["min_child_weight"] < 1000
    SPACE.check_params(tpe_result.best_params)


def test_median_pruner_stops_hopeless_trials_after_their_first_folds(planted, sqlite_url):
    X, y, folds = planted
    objective = cv_objective(xgboost_fit_predict(HORIZON, **TINY_XGB), X, y, folds, HORIZON)
    result = run_study(objective, SPACE, storage_url=sqlite_url, study_name="pruning", sampler="random",
                       pruner=optuna.pruners.MedianPruner(n_startup_trials=3), n_trials=12, seed=1)
    pruned = result.study.get_trials(states=(TrialState.PRUNED,))
    assert result.n_done == 12 and len(pruned) >= 2
    for trial in pruned:
        assert max(trial.intermediate_values) < len(folds)  # stopped before the last fold
        assert len(trial.user_attrs["fold_rank_ic"]) == max(trial.intermediate_values)
    complete = result.study.get_trials(states=(TrialState.COMPLETE,))
    assert all(sorted(t.intermediate_values) == [1, 2, 3] for t in complete)
    assert result.best.value == max(t.value for t in complete)


def test_named_pruners_judge_no_trial_on_its_first_fold_and_use_folds_as_resource():
    median = _make_pruner("median", n_steps=4)
    assert isinstance(median, optuna.pruners.MedianPruner) and median._n_warmup_steps == 2
    pruner = _make_pruner("hyperband", n_steps=4)
    assert isinstance(pruner, optuna.pruners.HyperbandPruner) and pruner._max_resource == 4
    assert isinstance(_make_pruner("none", n_steps=4), optuna.pruners.NopPruner)
    with pytest.raises(ValueError, match="pruner must be"):
        _make_pruner("asha", 4)


# ---- budget, enqueue, seeds, resume in-process -----------------------------------------------


def test_the_budget_belongs_to_the_study_and_enqueued_trials_are_not_repeated(sqlite_url):
    kwargs = {"storage_url": sqlite_url, "study_name": "budget", "direction": "maximize", "sampler": "random",
              "pruner": "none", "seed": 3, "enqueue": [{"x": 0.3, "k": 3}]}
    first = run_study(quick_objective, QUICK_SPACE, n_trials=4, **kwargs)
    again = run_study(quick_objective, QUICK_SPACE, n_trials=4, **kwargs)
    more = run_study(quick_objective, QUICK_SPACE, n_trials=7, **kwargs)
    assert (first.ran, again.ran, more.ran) == ({"COMPLETE": 4}, {}, {"COMPLETE": 3})
    trials = more.study.get_trials()
    assert len(trials) == 7 and more.n_done == 7
    assert sum(t.params == {"x": 0.3, "k": 3} for t in trials) == 1
    assert more.best.params == {"x": 0.3, "k": 3}
    keys = [tuple(sorted(t.params.items())) for t in trials if "duplicate_of" not in t.user_attrs]
    assert len(keys) == len(set(keys))


def test_resuming_with_another_space_or_direction_is_refused(sqlite_url):
    run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name="fixed", direction="maximize", n_trials=1)
    other = SearchSpace.from_dict({"x": {"type": "float", "low": 0.0, "high": 2.0}, "k": {"type": "int", "low": 0, "high": 3}})
    with pytest.raises(ValueError, match="another search space"):
        run_study(quick_objective, other, storage_url=sqlite_url, study_name="fixed", direction="maximize", n_trials=2)
    with pytest.raises(ValueError, match=r"directions \['maximize'\], not \['minimize'\]"):
        run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name="fixed", direction="minimize", n_trials=2)
    with pytest.raises(ValueError, match="'k': 7 is outside"):
        run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name="fixed", direction="maximize",
                  n_trials=2, enqueue=[{"k": 7}])


def test_a_fresh_study_with_the_same_seed_draws_the_same_configurations(sqlite_url):
    draws = [
        [t.params for t in run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name=f"seeded_{k}",
                                     direction="maximize", sampler="tpe", n_trials=5, seed=11).study.trials]
        for k in range(2)
    ]
    assert draws[0] == draws[1]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage is supposed to be used with Study.optimize")
def test_trials_running_elsewhere_hold_their_claim_on_the_budget(sqlite_url):
    result = run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name="claims", direction="maximize",
                       n_trials=2, seed=0)
    study = result.study
    early, late = study.ask(), study.ask()  # two trials in flight "in other workers"
    trials = study.get_trials(deepcopy=False)
    assert _claims_before(trials, early) == 2 and _claims_before(trials, late) == 3
    # budget 4: 2 done + 2 in flight elsewhere, so no new trial starts
    assert run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name="claims", direction="maximize",
                     n_trials=4, seed=0).ran == {}
    study.tell(early, 0.0)
    resumed = run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name="claims", direction="maximize",
                        n_trials=4, seed=0)
    assert resumed.ran == {} and resumed.n_done == 3  # `late` still RUNNING: it holds the last slot
    study.tell(late, state=TrialState.FAIL)
    resumed = run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name="claims", direction="maximize",
                        n_trials=4, seed=0)
    assert resumed.ran == {"COMPLETE": 1} and resumed.n_done == 4


# ---- (c) resume after SIGKILL, (d) two workers on PostgreSQL ---------------------------------

WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    import numpy as np, optuna, pandas as pd
    from plml_assets.lib.validation.splits import PurgedWalkForward
    from plml_assets.lib.tuning import SearchSpace, cv_objective, run_study, xgboost_fit_predict

    url, name, n_trials, worker, pad, sync = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), sys.argv[6]
    grace = int(sys.argv[7]) if len(sys.argv) > 7 else 2
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rng = np.random.default_rng(0)
    dates = pd.bdate_range("2015-01-05", periods=300, name="date")
    index = pd.MultiIndex.from_product([dates, [f"S{k}" for k in range(6)]], names=["date", "symbol"])
    X = pd.DataFrame(rng.normal(size=(len(index), 4)), index=index, columns=["f1", "f2", "f3", "f4"])
    y = pd.Series(0.3 * X["f1"].to_numpy() + rng.normal(size=len(index)), index=index)
    folds = list(PurgedWalkForward(n_splits=2, horizon=5).split(X))
    xgb_fit_predict = xgboost_fit_predict(5, nthread=1, n_estimators=30, early_stopping_rounds=5)

    def fit_predict(params, X_train, y_train, X_eval):
        time.sleep(pad)  # long enough trials for the test to kill one mid-flight
        return xgb_fit_predict(params, X_train, y_train, X_eval)

    space = SearchSpace.from_dict({"learning_rate": {"type": "float", "low": 0.01, "high": 0.3, "log": True},
                                   "max_depth": {"type": "int", "low": 2, "high": 5}})
    objective = cv_objective(fit_predict, X, y, folds, 5)
    if sync != "-":  # start together with the other worker
        Path(sync + f".ready{worker}").touch()
        while not Path(sync + ".go").exists():
            time.sleep(0.02)
    result = run_study(objective, space, storage_url=url, study_name=name, sampler="tpe", pruner="median", n_trials=n_trials,
                       seed=5, worker=worker, heartbeat_interval=1, grace_period=grace)
    print("ran", result.ran)
    """
)


def worker_command(tmp_path: Path, url: str, name: str, n_trials: int, worker: int = 0, pad: float = 0.25, sync: str = "-",
                   grace: int = 2):
    script = tmp_path / "hpo_worker.py"
    if not script.exists():
        script.write_text(WORKER)
    return [sys.executable, str(script), url, name, str(n_trials), str(worker), str(pad), sync, str(grace)]


def worker_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


@pytest.mark.parametrize("reaper", ["heartbeat", "dead_local_process"])
def test_a_killed_run_resumes_to_exactly_the_budget_and_its_trial_is_marked_failed(tmp_path, sqlite_url, reaper):
    """The killed trial is found either by its stale heartbeat (another host's worker) or, on the
    same host, at once because its process is gone (the grace period is then far away)."""
    n_trials, name = 6, "resume"
    grace = 2 if reaper == "heartbeat" else 600
    # pad=0.6 s per fold: a trial is mostly asleep, so the kill lands inside it even on a loaded machine.
    proc = subprocess.Popen(worker_command(tmp_path, sqlite_url, name, n_trials, pad=0.6, grace=grace), env=worker_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    storage = optuna.storages.RDBStorage(sqlite_url)
    deadline, killed_number = time.monotonic() + 60, None
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
            except KeyError:  # not created yet
                trials = []
            # Kill only once the running trial carries its worker label: a trial killed in the instant
            # between its creation and that label is left to the heartbeat (see fail_dead_local_trials).
            running = [t for t in trials if t.state == TrialState.RUNNING and t.user_attrs.get("worker")]
            if sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) >= 2 and running:
                os.kill(proc.pid, signal.SIGKILL)
                killed_number = running[0].number
                break
            time.sleep(0.05)
    finally:
        if proc.poll() is None and killed_number is None:
            proc.kill()
        proc.wait(timeout=30)
    assert killed_number is not None, proc.stdout.read().decode()[-3000:]
    before = optuna.load_study(study_name=name, storage=storage).get_trials()
    assert before[killed_number].state == TrialState.RUNNING  # nobody has noticed yet
    done_before = {t.number: t.params for t in before if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}

    if reaper == "heartbeat":
        # Wait (bounded) until Optuna itself deems the killed trial's heartbeat stale: the check
        # fail_stale_trials runs, without its side effect, so the re-run is still the one to reap it.
        watcher = make_storage(sqlite_url, heartbeat_interval=1, grace_period=2)
        study_id = watcher.get_study_id_from_name(name)
        killed_id = before[killed_number]._trial_id
        deadline = time.monotonic() + 20
        while killed_id not in watcher._get_stale_trial_ids(study_id):
            assert time.monotonic() < deadline, "the killed trial's heartbeat never went stale"
            time.sleep(0.1)
    rerun = subprocess.run(worker_command(tmp_path, sqlite_url, name, n_trials, pad=0.6, grace=grace), env=worker_env(),
                           capture_output=True, text=True, timeout=120)
    assert rerun.returncode == 0, rerun.stdout[-3000:] + rerun.stderr[-3000:]

    trials = optuna.load_study(study_name=name, storage=storage).get_trials()
    states = [t.state for t in trials]
    assert sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states) == n_trials
    assert trials[killed_number].state == TrialState.FAIL
    assert [t.number for t in trials if t.state == TrialState.FAIL] == [killed_number]
    assert {t.number: t.params for t in trials if t.number in done_before} == done_before  # never rerun
    finished_params = [tuple(sorted(t.params.items())) for t in trials if t.state == TrialState.COMPLETE]
    assert len(finished_params) == len(set(finished_params))  # nothing evaluated twice (no seed replay)


def test_two_workers_share_one_postgresql_study_and_finish_exactly_the_budget(tmp_path, fresh_postgres_url):
    # A fresh database: both workers create Optuna's schema at the same moment, as N pods do on a
    # new cluster (the loser's CREATE TABLE used to fail the worker).
    url = fresh_postgres_url
    name, n_trials = f"plml_test_hpo_{uuid.uuid4().hex[:12]}", 8
    sync = str(tmp_path / "sync")
    procs = [
        subprocess.Popen(worker_command(tmp_path, url, name, n_trials, worker=k, pad=0.2, sync=sync), env=worker_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for k in range(2)
    ]
    try:
        deadline = time.monotonic() + 60
        while not all(Path(f"{sync}.ready{k}").exists() for k in range(2)) and time.monotonic() < deadline:
            assert all(p.poll() is None for p in procs), [p.stdout.read()[-2000:] for p in procs]
            time.sleep(0.05)
        Path(f"{sync}.go").touch()
        outputs = [p.communicate(timeout=120)[0] for p in procs]
        assert all(p.returncode == 0 for p in procs), [o[-3000:] for o in outputs]
        trials = optuna.load_study(study_name=name, storage=url).get_trials()
        finished_trials = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
        assert len(finished_trials) == n_trials
        assert len({t.user_attrs["worker"] for t in finished_trials}) == 2  # both workers did real work
        assert all(t.user_attrs.get("over_budget") for t in trials if t.state == TrialState.FAIL)
        keys = [tuple(sorted(t.params.items())) for t in finished_trials]
        assert len(keys) == len(set(keys))  # distinct worker seeds: no configuration drawn twice
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        try:
            optuna.delete_study(study_name=name, storage=url)
        except KeyError:
            pass


# ---- (e) multi-objective ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pareto_result(planted, tmp_path_factory):
    X, y, folds = planted
    url = f"sqlite:///{tmp_path_factory.mktemp('pareto') / 'optuna.db'}"
    objective = cv_objective(xgboost_fit_predict(HORIZON, **TINY_XGB), X, y, folds, HORIZON, objectives=("rank_ic", "gap"))
    return run_study(objective, DEFAULT_SPACES["xgboost"], storage_url=url, study_name="pareto", sampler="random",
                     pruner="median", n_trials=8, seed=2, pick_rule=PickRule(bound=0.1))


def dominates(a, b) -> bool:  # rank IC maximized, gap minimized
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def test_multi_objective_returns_the_pareto_front_without_pruning(pareto_result):
    study = pareto_result.study
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 8 and study.metric_names == ["rank_ic", "gap"]
    assert all(not t.intermediate_values for t in complete)
    expected = {t.number for t in complete if not any(dominates(o.values, t.values) for o in complete)}
    assert {t.number for t in pareto_result.best_trials} == expected
    for t in complete:
        assert t.values[1] == pytest.approx(t.user_attrs["gap"])


@pytest.mark.parametrize("bound", [0.1, 0.03, -1.0])
def test_pick_trial_takes_the_best_rank_ic_within_the_gap_bound_else_the_smallest_gap(pareto_result, bound):
    study = pareto_result.study
    front = study.best_trials
    picked = pick_trial(study, PickRule(primary="rank_ic", bounded="gap", bound=bound))
    within = [t for t in front if t.values[1] <= bound]
    if within:
        assert picked.values[0] == max(t.values[0] for t in within) and picked.values[1] <= bound
    else:
        assert picked.values[1] == min(t.values[1] for t in front)
    assert picked.number in {t.number for t in front}
    assert pareto_result.best.number == pick_trial(study, PickRule(bound=0.1)).number


def test_pick_rule_names_must_be_objectives_of_the_study(pareto_result):
    with pytest.raises(ValueError, match="'turnover' not among"):
        pick_trial(pareto_result.study, PickRule(bounded="turnover"))
    with pytest.raises(ValueError, match="must be a minimized objective"):
        pick_trial(pareto_result.study, PickRule(primary=1, bounded=0))


# ---- results ----------------------------------------------------------------------------------


def test_trials_frame_has_one_row_per_trial_with_values_params_and_flags(tpe_result, pareto_result):
    frame = trials_frame(tpe_result.study)
    assert len(frame) == 10 and frame["number"].tolist() == list(range(10))
    assert {"state", "rank_ic", "param_learning_rate", "param_max_depth", "param_min_child_weight", "duration_s",
            "attr_fold_rank_ic", "attr_gap", "best", "picked"} <= set(frame.columns)
    assert frame.loc[frame["picked"], "number"].tolist() == [tpe_result.best.number]
    multi = trials_frame(pareto_result.study)
    assert {"rank_ic", "gap"} <= set(multi.columns)
    assert set(multi.loc[multi["best"], "number"]) == {t.number for t in pareto_result.best_trials}


def test_param_importances_use_fanova_with_enough_trials_and_a_fallback_below(sqlite_url):
    result = run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name="importance",
                       direction="maximize", sampler="random", n_trials=12, seed=4)
    importances = param_importances(result.study)
    assert importances.attrs["method"] == "fanova"
    assert importances.index[0] == "x" and importances.sum() == pytest.approx(1.0)
    few = param_importances(result.study, min_trials=50)
    assert few.attrs["method"] == "spearman_fallback" and few.index[0] == "x" and few.sum() == pytest.approx(1.0)
    empty = run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name="one", direction="maximize", n_trials=1)
    assert param_importances(empty.study).empty and param_importances(empty.study).attrs["method"] == "none"


def test_plots_are_png_bytes(tpe_result, pareto_result):
    importances = param_importances(tpe_result.study)
    for png in (plot_optimization_history(tpe_result.study), plot_pareto_front(pareto_result.study, PickRule(bound=0.1)),
                plot_param_importances(importances)):
        assert png.startswith(PNG) and len(png) > 5_000
    with pytest.raises(ValueError, match="needs 2 objectives"):
        plot_pareto_front(tpe_result.study)


def test_trial_value_of_finds_the_complete_trial_run_with_given_parameters():
    from plml_assets.lib.tuning import trial_value_of

    frame = pd.DataFrame({
        "state": ["COMPLETE", "PRUNED", "COMPLETE"],
        "rank_ic": [0.01, float("nan"), 0.03],
        "param_max_depth": [5, 3, 3],
        "param_learning_rate": [0.1, 0.05, 0.05],
    })
    assert trial_value_of(frame, {"max_depth": 3, "learning_rate": 0.05}, "rank_ic") == 0.03
    assert trial_value_of(frame, {"max_depth": 5, "learning_rate": 0.1}, "rank_ic") == 0.01
    assert trial_value_of(frame, {"max_depth": 4, "learning_rate": 0.1}, "rank_ic") is None
    assert trial_value_of(frame, {"subsample": 0.8}, "rank_ic") is None  # not a searched parameter
    assert trial_value_of(frame.iloc[:0], {"max_depth": 5}, "rank_ic") is None


# ---- waiting for other workers' running trials before the pick ---------------------------------
def test_a_study_waits_for_another_workers_running_trial_and_picks_from_the_whole_budget(sqlite_url):
    import threading

    study = optuna.create_study(study_name="wait", storage=sqlite_url, direction="maximize")
    other = study.ask()  # another worker's trial, running when this process starts
    other.set_user_attr("worker", "elsewhere:1:9")
    best_value = 10.0  # better than anything quick_objective returns: the pick must wait for it
    waiting = threading.Event()

    def finish_once_it_waits():  # the other worker finishes only after this process has started waiting
        if waiting.wait(timeout=60):
            optuna.load_study(study_name="wait", storage=sqlite_url).tell(other.number, best_value)

    def log(line: str) -> None:
        lines.append(line)
        if "waiting for trial(s)" in line:
            waiting.set()

    threading.Thread(target=finish_once_it_waits, daemon=True).start()
    lines: list[str] = []
    result = run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name="wait",
                       sampler="random", pruner="none", n_trials=3, seed=0, wait_for_others_s=30, log=log)
    assert result.best.number == other.number and result.best.value == best_value
    assert any("waiting for trial(s) [0] of other workers" in line for line in lines)
    assert result.n_done == 3


def test_without_waiting_the_pick_is_made_from_what_has_finished(sqlite_url):
    study = optuna.create_study(study_name="nowait", storage=sqlite_url, direction="maximize")
    study.ask()  # never finishes
    lines: list[str] = []
    result = run_study(quick_objective, QUICK_SPACE, storage_url=sqlite_url, study_name="nowait",
                       sampler="random", pruner="none", n_trials=3, seed=0, wait_for_others_s=1.0, log=lines.append)
    assert result.n_done == 2  # the running trial holds its claim on the budget
    assert any("still running after 1 s: picking from the finished trials" in line for line in lines)


def test_the_time_budget_is_one_deadline_for_the_whole_call(sqlite_url):
    """A study of slow trials (8 folds of 0.25 s each, 2 s a trial) with a 1.2 s budget and room for
    20 trials: the first trial cannot finish inside the budget, so it is pruned at its first fold after
    the deadline, no trial starts after it, and the
    step that fills other workers' places in the budget (wait_for_others_s) does not start a new
    search after the deadline (it once did, with a fresh timeout: a 300 s net study ran 22 minutes)."""
    def slow(trial, params):
        for fold in range(1, 9):
            time.sleep(0.25)
            trial.report(params["x"], fold)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return params["x"]

    start = time.monotonic()
    lines: list[str] = []
    result = run_study(slow, QUICK_SPACE, storage_url=sqlite_url, study_name="deadline", sampler="random", pruner="none",
                       n_trials=20, timeout_s=1.2, seed=0, wait_for_others_s=30.0, log=lines.append)
    wall = time.monotonic() - start
    trials = result.study.get_trials(deepcopy=False)
    assert wall < 1.2 + 0.25 + 1.5, wall  # the budget, one more fold, and bookkeeping
    assert len(trials) == 1 and result.n_done == 1
    # pruned mid-trial (a 4-fold trial could finish just inside the budget on a loaded CI machine)
    assert trials[0].state == TrialState.PRUNED and max(trials[0].intermediate_values) < 8
    assert any("time budget of 1 s is spent" in line for line in lines), lines
