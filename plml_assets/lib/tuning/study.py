"""Resumable, budgeted Optuna studies on an RDB storage, shared by worker processes; the pick rule.

Part of :mod:`plml_assets.lib.tuning` (see its docstring for how the pieces fit).
"""


from __future__ import annotations

import math
import os
import socket
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from optuna.trial import FrozenTrial, TrialState

from plml_assets.lib.tuning.objective import DATE_SCORES_ATTR
from plml_assets.lib.tuning.space import SearchSpace

Log = Callable[[str], None]
Objective = Callable[[optuna.trial.Trial, dict[str, Any]], "float | Sequence[float]"]

_DONE = (TrialState.COMPLETE, TrialState.PRUNED)
_CLAIMS = (TrialState.RUNNING, TrialState.WAITING)
_SPACE_ATTR = "plml:search_space"


def _noop(_: str) -> None:
    return None


# ---------------------------------------------------------------------------------------------
# Studies
# ---------------------------------------------------------------------------------------------


def make_storage(url: str, heartbeat_interval: int | None = 60, grace_period: int | None = None) -> optuna.storages.RDBStorage:
    """RDB storage (``sqlite:///path.db``, ``postgresql://user@host/db``, ...) with heartbeats: a
    RUNNING trial whose heartbeat is older than ``grace_period`` (default twice the interval)
    seconds is marked FAIL by the next worker that starts a trial."""
    import sqlalchemy.exc

    engine_kwargs = {"connect_args": {"timeout": 30}} if url.startswith("sqlite") else None
    for attempt in range(5):
        try:
            with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna, but needed to reap killed trials
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url=url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_interval, grace_period=grace_period
                )
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError, sqlalchemy.exc.OperationalError) as exc:
            # N workers started at once on an empty database all create Optuna's schema; PostgreSQL
            # refuses the losers' CREATE TABLE / CREATE TYPE ("duplicate key ... pg_type" or "already
            # exists"), SQLite their CREATE TABLE ("table ... already exists"). The winner's schema is
            # complete a moment later: open it again.
            text = str(exc).lower()
            if attempt == 4 or not ("already exists" in text or "duplicate key" in text):
                raise
            time.sleep(0.5 * (attempt + 1))
    raise AssertionError("unreachable")


def _sampler_seed(seed: int | None, n_existing: int, worker: int) -> int | None:
    if seed is None:
        return None
    return int(np.random.SeedSequence([int(seed), int(n_existing), int(worker)]).generate_state(1)[0])


def _make_sampler(sampler: str | optuna.samplers.BaseSampler, seed: int | None) -> optuna.samplers.BaseSampler:
    if isinstance(sampler, optuna.samplers.BaseSampler):
        return sampler
    if sampler == "tpe":
        # constant_liar: a RUNNING trial counts as a bad result, so parallel workers spread out.
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ValueError(f"sampler must be 'tpe', 'random' or an optuna sampler, got {sampler!r}")


def _make_pruner(pruner: str | optuna.pruners.BasePruner, n_steps: int | None) -> optuna.pruners.BasePruner:
    if isinstance(pruner, optuna.pruners.BasePruner):
        return pruner
    if pruner == "median":
        # No trial is judged on its first fold alone: one fold's rank IC is mostly noise, and pruning
        # on it lost most of what TPE finds (docs/benchmarks.md, "Hyper-parameter search").
        return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)
    if pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=n_steps or "auto", reduction_factor=3)
    if pruner == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"pruner must be 'median', 'hyperband', 'none' or an optuna pruner, got {pruner!r}")


class DeadlinePruner(optuna.pruners.BasePruner):
    """Prunes a running trial at its next fold once the wall-clock ``deadline`` (``time.time()``)
    has passed, so a time budget is not overrun by more than one fold's fit; otherwise ``base``
    (Hyperband or median on the folds) decides."""

    def __init__(self, base: optuna.pruners.BasePruner, deadline: float) -> None:
        self.base, self.deadline = base, deadline

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        if time.time() >= self.deadline:
            return True
        return self.base.prune(study, trial)


def _params_of(trial: FrozenTrial) -> dict[str, Any]:
    """Parameters of a trial, including those fixed by enqueue_trial and not yet suggested."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


def open_study(
    space: SearchSpace,
    *,
    storage_url: str | optuna.storages.BaseStorage,
    study_name: str,
    directions: Sequence[str] = ("maximize",),
    metric_names: Sequence[str] | None = None,
    sampler: str | optuna.samplers.BaseSampler = "tpe",
    pruner: str | optuna.pruners.BasePruner = "median",
    seed: int | None = 0,
    worker: int = 0,
    n_steps: int | None = None,
    enqueue: Sequence[Mapping[str, Any]] = (),
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    study_attrs: Mapping[str, str] | None = None,
) -> optuna.Study:
    """Create the study, or load it (``load_if_exists``) after checking that its directions and
    search space are the ones given. Configurations in ``enqueue`` (e.g. the current defaults) are
    enqueued unless a trial with the same parameters is already waiting, running or finished."""
    storage = make_storage(storage_url, heartbeat_interval, grace_period) if isinstance(storage_url, str) else storage_url
    directions = [str(d).lower() for d in directions]
    bad = [d for d in directions if d not in ("maximize", "minimize")]
    if bad or not directions:
        raise ValueError(f"directions must be 'maximize' or 'minimize', got {directions}")
    if metric_names is not None and len(metric_names) != len(directions):
        raise ValueError(f"{len(metric_names)} metric names for {len(directions)} directions")
    for params in enqueue:
        space.check_params(params)
    study = optuna.create_study(storage=storage, study_name=study_name, directions=directions, load_if_exists=True)
    existing = [d.name.lower() for d in study.directions]
    if existing != directions:
        raise ValueError(f"study {study_name!r} exists with directions {existing}, not {directions}: use another study_name")
    stored_space = study.user_attrs.get(_SPACE_ATTR)
    if stored_space is None:
        study.set_user_attr(_SPACE_ATTR, space.to_json())
    elif SearchSpace.from_json(stored_space) != space:
        raise ValueError(
            f"study {study_name!r} was created with another search space ({stored_space}); a budget counted over "
            "two spaces means nothing: use another study_name"
        )
    for key, value in (study_attrs or {}).items():  # e.g. what a `plml worker` needs to join the study
        if study.user_attrs.get(key) != value:
            study.set_user_attr(key, value)
    if metric_names is not None and study.metric_names != list(metric_names):
        with warnings.catch_warnings():  # "experimental" since Optuna 3.2, still the way to name objectives
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(metric_names))
    trials = study.get_trials(deepcopy=False)
    study.sampler = _make_sampler(sampler, _sampler_seed(seed, len(trials), worker))
    study.pruner = _make_pruner(pruner, n_steps) if len(directions) == 1 else optuna.pruners.NopPruner()
    taken = [_params_of(t) for t in trials if t.state != TrialState.FAIL]
    for params in enqueue:
        if dict(params) not in taken:
            study.enqueue_trial(dict(params))
            taken.append(dict(params))
    return study


def _counts(trials: Sequence[FrozenTrial]) -> dict[str, int]:
    return {state.name: sum(t.state == state for t in trials) for state in TrialState}


def _claims_before(trials: Sequence[FrozenTrial], me: FrozenTrial | optuna.trial.Trial) -> int:
    """Budget already spent or claimed ahead of ``me``: COMPLETE + PRUNED trials, plus RUNNING or
    WAITING trials with a lower (number, id) - the order in which the storage created them."""
    key = (me.number, me._trial_id)
    done = sum(t.state in _DONE for t in trials)
    ahead = sum(t.state in _CLAIMS and (t.number, t._trial_id) < key for t in trials)
    return done + ahead


@dataclass(frozen=True)
class PickRule:
    """How one trial is chosen from a multi-objective study's Pareto front.

    Among the Pareto-optimal trials whose ``bounded`` objective (minimized: the train/validation
    gap or the turnover) is at most ``bound``, take the best on ``primary`` (the validation rank
    IC); if none is within the bound, take the one with the smallest ``bounded`` value. Ties go to
    the earlier trial. Objectives are indexed or named (``study.metric_names``); the default is the
    first objective bounded by the second, as :func:`cv_objective` orders ``("rank_ic", "gap")``.
    The default bound, 0.1, is ``ValidationBounds.gap_warn``: a larger train/validation rank-IC gap
    is mostly memorized noise. For ``("rank_ic", "turnover")`` choose a turnover bound instead.
    """

    primary: str | int = 0
    bounded: str | int = 1
    bound: float = 0.1

    def describe(self) -> str:
        return (f"highest {self.primary} among Pareto trials with {self.bounded} <= {self.bound}, "
                f"else the smallest {self.bounded}")


def _objective_index(study: optuna.Study, key: str | int) -> int:
    if isinstance(key, int):
        if not 0 <= key < len(study.directions):
            raise ValueError(f"objective index {key} out of range for {len(study.directions)} objectives")
        return key
    names = study.metric_names or []
    if key not in names:
        raise ValueError(f"objective {key!r} not among the study's metric names {names}")
    return names.index(key)


def pick_trial(study: optuna.Study, rule: PickRule | None = None) -> FrozenTrial:
    """The chosen trial: ``study.best_trial`` for one objective, else :class:`PickRule` applied to
    the Pareto front ``study.best_trials``."""
    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        raise ValueError(f"study {study.study_name!r} has no COMPLETE trial to pick")
    if len(study.directions) == 1:
        return study.best_trial
    rule = rule or PickRule()
    primary, bounded = _objective_index(study, rule.primary), _objective_index(study, rule.bounded)
    if primary == bounded:
        raise ValueError("PickRule.primary and PickRule.bounded must be different objectives")
    if study.directions[bounded] != optuna.study.StudyDirection.MINIMIZE:
        raise ValueError(f"PickRule.bounded ({rule.bounded!r}) must be a minimized objective")
    sign = 1.0 if study.directions[primary] == optuna.study.StudyDirection.MAXIMIZE else -1.0
    front = sorted(study.best_trials, key=lambda t: t.number)
    within = [t for t in front if t.values[bounded] <= rule.bound]
    if within:
        return max(within, key=lambda t: (sign * t.values[primary], -t.number))
    return min(front, key=lambda t: (t.values[bounded], t.number))


@dataclass
class StudyResult:
    """What :func:`run_study` returns: the study, its best trials (the Pareto front, or the single
    best trial), the chosen trial, the budget used (COMPLETE + PRUNED trials in the study) and how
    many trials this call finished in each state."""

    study: optuna.Study
    best_trials: list[FrozenTrial]
    best: FrozenTrial | None
    n_done: int
    ran: dict[str, int] = field(default_factory=dict)
    rule: PickRule | None = None

    @property
    def best_params(self) -> dict[str, Any]:
        return dict(self.best.params) if self.best is not None else {}


class _OverBudget(Exception):
    """Raised inside a trial started after the budget was taken (by another worker)."""


def run_study(
    objective_fn: Objective,
    space: SearchSpace,
    *,
    storage_url: str | optuna.storages.BaseStorage,
    study_name: str,
    direction: str | None = None,
    directions: Sequence[str] | None = None,
    metric_names: Sequence[str] | None = None,
    sampler: str | optuna.samplers.BaseSampler = "tpe",
    pruner: str | optuna.pruners.BasePruner = "median",
    n_trials: int = 50,
    timeout_s: float | None = None,
    seed: int | None = 0,
    worker: int = 0,
    enqueue: Sequence[Mapping[str, Any]] = (),
    pick_rule: PickRule | None = None,
    heartbeat_interval: int | None = 60,
    grace_period: int | None = None,
    catch: tuple[type[Exception], ...] = (),
    log: Log = _noop,
    study_attrs: Mapping[str, str] | None = None,
    wait_for_others_s: float = 0.0,
) -> StudyResult:
    """Run (or resume) a study until it holds ``n_trials`` COMPLETE + PRUNED trials, or
    ``timeout_s`` passes.

    ``objective_fn(trial, params)`` gets the configuration ``space.suggest(trial)`` drew (a
    :class:`CVObjective` fits here; its ``directions``, ``names`` and ``n_steps`` are used when
    ``direction``/``directions``/``metric_names`` are not given). ``storage_url`` is an RDB URL
    (SQLite file or PostgreSQL) or a storage object; the study is created or loaded
    (``load_if_exists``), see :func:`open_study`. Samplers: ``"tpe"`` (constant liar, for parallel
    workers) or ``"random"``; pruners: ``"median"``, ``"hyperband"`` (resource = folds) or
    ``"none"`` - multi-objective studies are never pruned. ``"median"`` is ``MedianPruner(
    n_startup_trials=5, n_warmup_steps=2)``: from the sixth finished trial on, a trial whose running
    mean after fold 2, 3, ... is below the median of earlier trials' running means at that fold stops
    (never after the last fold, whose value is final; so with 2 folds nothing is pruned). Parallel workers run the same call
    with distinct ``worker`` indices. Exceptions of the types in ``catch`` fail a trial without
    stopping the study (at most ``n_trials`` such failures per call).

    ``wait_for_others_s``: when this process's share is done but trials of other workers are still
    running, wait up to this long for them before picking (a trial whose worker died is failed once
    its heartbeat is stale, and its place in the budget is taken here), so the pick is of the whole
    budget. 0: pick at once from what has finished.
    """
    if isinstance(n_trials, bool) or not isinstance(n_trials, int) or n_trials < 0:
        raise ValueError(f"n_trials must be a whole number >= 0, got {n_trials!r}")
    if direction is not None and directions is not None:
        raise ValueError("give direction or directions, not both")
    dirs = [direction] if direction is not None else list(directions or getattr(objective_fn, "directions", ("maximize",)))
    names = metric_names if metric_names is not None else getattr(objective_fn, "names", None)
    if names is not None and len(names) != len(dirs):
        names = None
    if len(dirs) > 1 and not (pruner == "none" or isinstance(pruner, optuna.pruners.NopPruner)):
        log(f"study {study_name}: {len(dirs)} objectives, so no pruning (Optuna prunes single-objective studies only)")
    study = open_study(
        space, storage_url=storage_url, study_name=study_name, directions=dirs, metric_names=names,
        sampler=sampler, pruner=pruner, seed=seed, worker=worker, n_steps=getattr(objective_fn, "n_steps", None),
        enqueue=enqueue, heartbeat_interval=heartbeat_interval, grace_period=grace_period, study_attrs=study_attrs,
    )
    # The time budget is one wall-clock deadline for the whole call: no trial starts after it, a running
    # one is pruned at its next fold (single-objective studies; Optuna prunes nothing else), and the
    # loop that fills a dead worker's place in the budget does not start a new search after it.
    budget_end = None if timeout_s is None else time.time() + float(timeout_s)
    if budget_end is not None and len(dirs) == 1 and not isinstance(study.pruner, DeadlinePruner):
        study.pruner = DeadlinePruner(study.pruner, budget_end)

    def remaining() -> float | None:
        return None if budget_end is None else max(budget_end - time.time(), 0.0)

    worker_label = f"{socket.gethostname()}:{os.getpid()}:{worker}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    reaped = fail_dead_local_trials(study)
    if reaped:
        log(f"study {study_name}: trial(s) {reaped} of a killed process on this host marked FAIL (they do not count)")
    trials = study.get_trials(deepcopy=False)
    counts = _counts(trials)
    done_before = counts["COMPLETE"] + counts["PRUNED"]
    ran: dict[str, int] = {}
    failures = 0

    def objective(trial: optuna.trial.Trial) -> float | Sequence[float]:
        trial.set_user_attr("worker", worker_label)  # first: a killed process's trial is then recognisable
        if _claims_before(study.get_trials(deepcopy=False), trial) >= n_trials:
            trial.set_user_attr("over_budget", True)
            study.stop()
            raise _OverBudget(f"the budget of {n_trials} trials was taken by other workers: trial dropped, not an error")
        params = space.suggest(trial)
        for other in study.get_trials(deepcopy=False, states=_DONE):
            if other.number != trial.number and other.params == params:
                trial.set_user_attr("duplicate_of", other.number)
                if DATE_SCORES_ATTR in other.user_attrs:  # the same configuration has the same per-date scores
                    trial.set_user_attr(DATE_SCORES_ATTR, other.user_attrs[DATE_SCORES_ATTR])
                if other.state == TrialState.PRUNED:
                    raise optuna.TrialPruned(f"same parameters as pruned trial {other.number}")
                return other.values[0] if len(other.values) == 1 else tuple(other.values)
        return objective_fn(trial, params)

    def after_trial(study: optuna.Study, frozen: FrozenTrial) -> None:
        nonlocal failures
        if frozen.user_attrs.get("over_budget"):
            return
        ran[frozen.state.name] = ran.get(frozen.state.name, 0) + 1
        failures += frozen.state == TrialState.FAIL
        trials = study.get_trials(deepcopy=False)
        done = sum(t.state in _DONE for t in trials)
        running = sum(t.state == TrialState.RUNNING for t in trials)
        log(_trial_line(study, frozen, done, n_trials))
        labels = {t.user_attrs.get("worker") for t in trials} - {None}
        if len(labels) > 1:  # several workers on the study: where each stands
            log(f"study {study_name} workers: " + "; ".join(
                f"{w['worker']} {w['finished']} done" + (f", running trial {w['running']}" if w["running"] is not None else "")
                + (f" (heartbeat {w['heartbeat_age_s']:.0f} s ago)" if w["heartbeat_age_s"] is not None else "")
                + (f", {w['failed']} failed" if w["failed"] else "")
                for w in worker_progress(study)))
        if done + running >= n_trials or failures >= max(n_trials, 1):
            study.stop()

    if done_before + counts["RUNNING"] < n_trials:
        log(
            f"study {study_name}: {done_before} of {n_trials} trials done"
            + (f", {counts['RUNNING']} running elsewhere" if counts["RUNNING"] else "")
            + (f", {counts['FAIL']} failed (not counted)" if counts["FAIL"] else "")
            + f"; running up to {n_trials - done_before - counts['RUNNING']} more"
        )
        study.optimize(objective, n_trials=None, timeout=remaining(), catch=(_OverBudget, *catch),
                       callbacks=[after_trial], gc_after_trial=False)
    else:
        log(f"study {study_name}: budget of {n_trials} trials already spent ({done_before} done)")
    deadline = time.monotonic() + max(wait_for_others_s, 0.0)
    while wait_for_others_s > 0 and failures < max(n_trials, 1):
        now = study.get_trials(deepcopy=False)
        running = [t.number for t in now if t.state == TrialState.RUNNING]
        done = sum(t.state in _DONE for t in now)
        if done >= n_trials or (not running and done + len(running) >= n_trials):
            break
        if remaining() == 0.0:
            log(f"study {study_name}: the time budget of {timeout_s:.0f} s is spent with {done} of {n_trials} trials done"
                + (f" and trial(s) {running} of other workers running" if running else "") + ": picking from the finished trials")
            break
        if not running:  # a dead worker's trial was failed: its place in the budget is ours to fill
            log(f"study {study_name}: {done} of {n_trials} done and nothing running: running the missing trial(s) here")
            study.optimize(objective, n_trials=None, timeout=remaining(), catch=(_OverBudget, *catch),
                           callbacks=[after_trial], gc_after_trial=False)
            continue
        if time.monotonic() > deadline:
            log(f"study {study_name}: trial(s) {running} of other workers still running after {wait_for_others_s:.0f} s: "
                "picking from the finished trials")
            break
        log(f"study {study_name}: waiting for trial(s) {running} of other workers ({done} of {n_trials} done)")
        time.sleep(min(5.0, max(wait_for_others_s / 20, 0.5)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    trials = study.get_trials(deepcopy=False)
    counts = _counts(trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    best_trials = list(study.best_trials) if complete else []
    best = pick_trial(study, pick_rule) if complete else None
    if best is not None:
        names = _objective_names(study)
        log(f"study {study_name}: {counts['COMPLETE']} complete, {counts['PRUNED']} pruned, {counts['FAIL']} failed; "
            f"picked trial {best.number}: " + ", ".join(f"{n} {v:.4f}" for n, v in zip(names, best.values)))
    return StudyResult(study=study, best_trials=best_trials, best=best, n_done=counts["COMPLETE"] + counts["PRUNED"],
                       ran=ran, rule=pick_rule if len(study.directions) > 1 else None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def fail_dead_local_trials(study: optuna.Study) -> list[int]:
    """Mark FAIL the RUNNING trials started on this host by a process that no longer exists (a
    killed run), so that a re-run resumes at once instead of waiting for their heartbeats to go
    stale. Trials of other hosts are left to the heartbeat, and so is a trial killed in the instant
    between its creation by Optuna and its first line, which writes the worker label: it cannot be
    attributed, counts as running elsewhere until its heartbeat goes stale, and the re-run after that
    completes the budget. Returns the trial numbers marked."""
    host = socket.gethostname()
    reaped = []
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(trial.user_attrs.get("worker", ""))
        parts = worker.rsplit(":", 2)
        if len(parts) != 3 or parts[0] != host or not parts[1].isdigit():
            continue
        if int(parts[1]) != os.getpid() and not _pid_alive(int(parts[1])):
            try:
                study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
                reaped.append(trial.number)
            except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                pass  # finished or reaped meanwhile by another worker
    return reaped


def _trial_line(study: optuna.Study, trial: FrozenTrial, done: int, budget: int) -> str:
    head = f"trial {trial.number} {trial.state.name}"
    if trial.state == TrialState.COMPLETE:
        names = study.metric_names or [f"objective_{i}" for i in range(len(trial.values))]
        head += " " + ", ".join(f"{n} {v:.4f}" for n, v in zip(names, trial.values))
    elif trial.state == TrialState.PRUNED and trial.intermediate_values:
        step = max(trial.intermediate_values)
        head += f" at step {step} ({trial.intermediate_values[step]:.4f})"
    seconds = trial.duration.total_seconds() if trial.duration else math.nan
    params = ", ".join(f"{k}={_short(v)}" for k, v in trial.params.items())
    return f"{head} in {seconds:.1f} s [{done}/{budget}] {params}"


def _short(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------


def _objective_names(study: optuna.Study) -> list[str]:
    return list(study.metric_names or (["value"] if len(study.directions) == 1 else
                                       [f"objective_{i}" for i in range(len(study.directions))]))




def worker_progress(study: optuna.Study, now: float | None = None) -> list[dict[str, Any]]:
    """Per worker of a study (the ``worker`` label each trial carries: host:pid:index): trials it
    finished (COMPLETE + PRUNED), failed, the trial it is running now, and, on an RDB storage with
    heartbeats, the age in seconds of that trial's last heartbeat (a killed worker's grows until the
    trial is failed). Sorted by label."""
    import datetime as _dt

    trials = study.get_trials(deepcopy=False)
    beats: dict[int, _dt.datetime] = {}
    storage = study._storage
    backend = getattr(storage, "_backend", storage)
    running_ids = [t._trial_id for t in trials if t.state == TrialState.RUNNING]
    db_now = None
    if running_ids and hasattr(backend, "scoped_session"):
        import sqlalchemy
        from optuna.storages._rdb.models import TrialHeartbeatModel

        with backend.scoped_session() as session:
            for row in session.query(TrialHeartbeatModel).filter(TrialHeartbeatModel.trial_id.in_(running_ids)):
                beats[row.trial_id] = row.heartbeat
            # Heartbeats are the database's own clock (CURRENT_TIMESTAMP, without a zone): age them
            # by that clock too, as Optuna does, not by this host's.
            db_now = session.execute(sqlalchemy.select(sqlalchemy.func.now())).scalar()
    if now is not None:
        clock = _dt.datetime.fromtimestamp(now, _dt.timezone.utc).replace(tzinfo=None)
    elif isinstance(db_now, _dt.datetime):
        clock = db_now.replace(tzinfo=None)
    elif isinstance(db_now, str):  # SQLite returns its CURRENT_TIMESTAMP as text
        clock = _dt.datetime.fromisoformat(db_now)
    else:
        clock = _dt.datetime.now(_dt.timezone.utc).replace(tzinfo=None)
    out: dict[str, dict[str, Any]] = {}
    for t in trials:
        label = t.user_attrs.get("worker")
        if label is None:
            continue
        row = out.setdefault(label, {"worker": label, "finished": 0, "failed": 0, "running": None, "heartbeat_age_s": None})
        if t.state in _DONE:
            row["finished"] += 1
        elif t.state == TrialState.FAIL and not t.user_attrs.get("over_budget"):
            row["failed"] += 1
        elif t.state == TrialState.RUNNING:
            row["running"] = t.number
            beat = beats.get(t._trial_id)
            if beat is not None:
                row["heartbeat_age_s"] = round(max(0.0, (clock - beat).total_seconds()), 1)
    return [out[k] for k in sorted(out)]
