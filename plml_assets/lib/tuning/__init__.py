"""Hyper-parameter search (``space``, ``objective``, ``study``, ``report``, ``plots``): declared search spaces, a purged-CV objective, resumable Optuna studies.

The pieces, in the order a study uses them:

* :class:`SearchSpace` declares the space as data (``SearchSpace.from_dict({...})``, validated, each
  error naming the parameter) and suggests one configuration per trial. :data:`DEFAULT_SPACES`
  holds one per model family, named like the model classes' ``__init__`` arguments.
* :func:`cv_objective` scores a configuration by the mean validation rank IC over purged folds,
  with an injected ``fit_predict(params, X_train, y_train, X_eval) -> predictions`` that fits on a
  fold's training rows (early stopping inside them) - so the objective knows nothing of the model
  family. After fold ``k`` it reports the running mean (``trial.report(mean, step=k)``) and lets the
  pruner stop a hopeless trial. With ``objectives=("rank_ic", "gap")`` or ``("rank_ic",
  "turnover")`` it is multi-objective (Optuna does not prune those).
* :func:`run_study` opens (creates or resumes) an RDB-stored study and runs it until the study
  holds ``n_trials`` COMPLETE + PRUNED trials - the budget belongs to the study, not to the call,
  so a resumed or a second worker's call only runs what is missing. Heartbeats mark a killed
  process's trial FAIL; FAIL trials do not count.
* :func:`pick_trial` chooses one trial from a Pareto front by a documented :class:`PickRule`;
  :func:`trials_frame`, :func:`param_importances` and the ``plot_*`` functions (PNG bytes) report.

MLflow stays out of this module. The study asset logs *one* MLflow run holding the trial table,
the plots and the chosen parameters, not one nested run per trial: the trials already live in the
Optuna storage with their states, intermediate values and timings (the table is a faithful
snapshot), a nested run per trial would multiply the tracking store by the budget, and MLflow's
view of a study is its outcome, not its bookkeeping.

Budget accounting across workers. Before each trial a worker counts the study's COMPLETE + PRUNED
trials plus the trials that hold a claim on the budget ahead of it (RUNNING or WAITING with a
lower trial number); if that reaches ``n_trials`` the new trial is dropped (state FAIL, user attr
``over_budget``, no parameters sampled) and the worker stops. Trial numbers are handed out by the
storage in one order, so two workers racing for the last slot cannot both take it. A trial of a
killed process keeps its claim until its heartbeat is ``grace_period`` seconds old, after which the
next worker to start a trial marks it FAIL.

Parallelism is by processes sharing the storage (one ``run_study`` call per worker, e.g. one per
Kubernetes pod on PostgreSQL), not by threads: one XGBoost fit already uses its ``nthread``.

Seeding. A sampler seeded with the same number in a resumed process would replay the
configurations it proposed before the kill; the effective seed therefore mixes ``seed``, the number
of trials the study already holds and the ``worker`` index (give parallel workers distinct
indices). A configuration identical to a finished trial is not fitted again: it is completed with
the earlier values (``duplicate_of`` user attr) or pruned again.
"""

from plml_assets.lib.tuning.objective import (
    DATE_SCORES_ATTR,
    OBJECTIVE_DIRECTIONS,
    CVObjective,
    FamilyFitPredict,
    FitPredict,
    cv_objective,
    family_fit_predict,
    prediction_turnover,
    xgboost_fit_predict,
)
from plml_assets.lib.tuning.plots import plot_optimization_history, plot_param_importances, plot_pareto_front
from plml_assets.lib.tuning.report import param_importances, trial_date_scores, trial_value_of, trials_frame
from plml_assets.lib.tuning.space import DEFAULT_SPACES, QUICK_SPACE_BOUNDS, ParamSpec, SearchSpace, default_space
from plml_assets.lib.tuning.study import (
    Log,
    Objective,
    PickRule,
    StudyResult,
    fail_dead_local_trials,
    make_storage,
    open_study,
    pick_trial,
    run_study,
    worker_progress,
)

__all__ = [
    "CVObjective",
    "DATE_SCORES_ATTR",
    "DEFAULT_SPACES",
    "QUICK_SPACE_BOUNDS",
    "default_space",
    "FamilyFitPredict",
    "FitPredict",
    "Log",
    "OBJECTIVE_DIRECTIONS",
    "Objective",
    "ParamSpec",
    "PickRule",
    "SearchSpace",
    "StudyResult",
    "cv_objective",
    "fail_dead_local_trials",
    "family_fit_predict",
    "make_storage",
    "worker_progress",
    "open_study",
    "param_importances",
    "pick_trial",
    "plot_optimization_history",
    "plot_param_importances",
    "plot_pareto_front",
    "prediction_turnover",
    "run_study",
    "trial_date_scores",
    "trial_value_of",
    "trials_frame",
    "xgboost_fit_predict",
]
