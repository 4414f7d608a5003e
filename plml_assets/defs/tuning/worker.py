"""`plml worker --study NAME`: one more process on a study a `<family>_study` asset started.

The worker reads the study's record in the Optuna storage (family, the asset's config and settings,
the trial budget: ``plml.worker_spec``), loads the same inputs from the asset store, rebuilds the
same objective and checks that it arrives at the same study name (the name holds a digest of the
data and folds: a worker on other data is refused), then takes trials until the study's budget is
spent, whoever spends it. Several workers, on one machine or as pods of deploy/k8s/optuna-workers.yaml,
share the study through its PostgreSQL storage; a killed worker's running trial is failed by heartbeat
(``heartbeat_s``, stale after three beats) by the next worker to start a trial, and another trial takes
its place in the budget.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable

import optuna
from optuna.trial import TrialState

from plml_assets.defs.tuning.assets import WORKER_SPEC_ATTR, StudyConfig, prepare_study
from plml_assets.lib import tuning
from plml_assets.resources.io import load_stored
from plml_assets.resources.settings import ExperimentSettings

INPUTS = ("features", "labels", "cv_splits", "cv_fold_features")


def run_worker(study_name: str, storage_url: str, display_url: str, asset_dir: str | None = None,
               n_trials: int | None = None, worker_index: int | None = None, heartbeat_s: int = 60,
               timeout_s: float | None = None, log: Callable[[str], None] = print) -> dict:
    """Take trials of ``study_name`` until its budget (the one the asset set, or ``n_trials``) is spent.
    Returns what this worker did and the study's counts."""
    if heartbeat_s < 1:
        raise ValueError(f"heartbeat_s must be >= 1, got {heartbeat_s}")
    storage = tuning.make_storage(storage_url, heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
        raise ValueError(f"no study {study_name!r} in {display_url}; studies there: {names[:10]}") from None
    raw = study.user_attrs.get(WORKER_SPEC_ATTR)
    if raw is None:
        raise ValueError(f"study {study_name!r} was not started by a plml <family>_study asset (it has no {WORKER_SPEC_ATTR}): "
                         "materialize the study asset first, then add workers")
    spec = json.loads(raw)
    family = spec["family"]
    config = StudyConfig(**spec["config"])
    settings = ExperimentSettings(**spec["settings"])
    started = time.perf_counter()
    inputs = {name: load_stored(name, asset_dir) for name in INPUTS}
    prepared = prepare_study(family, config, **inputs, settings=settings, model_name=spec["model_name"], warn=log)
    if prepared.name != study_name or prepared.digest != spec.get("digest", prepared.digest):
        raise ValueError(f"the stored {', '.join(INPUTS)} are not the data study {study_name!r} searches on (they make study "
                         f"{prepared.name!r}, digest {prepared.digest} against the study's {spec.get('digest')}): re-materialize the study asset, or point PLML_ASSET_DIR at its asset store")
    budget = spec["n_trials"] if n_trials is None else n_trials
    index = worker_index if worker_index is not None else 1 + os.getpid() % 100_000  # distinct sampler seeds
    label = f"{socket.gethostname()}:{os.getpid()}:{index}"
    log(f"plml worker {label}: {family} study {study_name} on {display_url}, budget {budget} trials, "
        f"{len(prepared.folds)} {config.scheme} folds on {prepared.rows:,} rows (inputs loaded in {time.perf_counter() - started:.1f} s), "
        f"heartbeat every {heartbeat_s} s")
    result = tuning.run_study(
        prepared.objective, prepared.space, storage_url=storage, study_name=study_name, sampler=config.sampler,
        pruner=config.pruner, n_trials=budget, timeout_s=timeout_s, seed=settings.seed, worker=index,
        enqueue=prepared.enqueue, pick_rule=prepared.rule, log=lambda m: log(f"[worker {label}] {m}"),
        heartbeat_interval=heartbeat_s, grace_period=3 * heartbeat_s, wait_for_others_s=6.0 * heartbeat_s,
    )
    trials = result.study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)}
    mine = sum(1 for t in trials if t.user_attrs.get("worker") == label and t.state in (TrialState.COMPLETE, TrialState.PRUNED))
    out = {"study": study_name, "worker": label, "family": family, "budget": budget, "trials_by_this_worker": mine,
           "counts": counts, "workers": tuning.worker_progress(result.study), "seconds": round(time.perf_counter() - started, 1)}
    log(f"plml worker {label}: done, {mine} trial(s) by this worker; study {counts} of budget {budget}")
    return out
