"""PNG plots of a study (matplotlib, Agg): optimization history, Pareto front, parameter importances.

Part of :mod:`plml_assets.lib.tuning` (see its docstring for how the pieces fit).
"""


from __future__ import annotations

import io

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from plml_assets.lib.tuning.study import PickRule, _objective_index, _objective_names, pick_trial


def _png(fig) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()


def _figure(width: float = 7.0, height: float = 4.0):
    from matplotlib.figure import Figure  # no pyplot: no global state, Agg canvas only

    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot(1, 1, 1)


def plot_optimization_history(study: optuna.Study, objective: int = 0) -> bytes:
    """PNG: each COMPLETE trial's value by trial number, the running best, and pruned trials at
    the running mean they were stopped at."""
    name = _objective_names(study)[objective]
    maximize = study.directions[objective] == optuna.study.StudyDirection.MAXIMIZE
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    fig, ax = _figure()
    if complete:
        x = [t.number for t in complete]
        y = [t.values[objective] for t in complete]
        best = np.maximum.accumulate(y) if maximize else np.minimum.accumulate(y)
        ax.scatter(x, y, s=18, color="tab:blue", label="complete", zorder=3)
        ax.step(x, best, where="post", color="tab:red", label="running best")
    if pruned:
        ax.scatter([t.number for t in pruned], [t.intermediate_values[max(t.intermediate_values)] for t in pruned],
                   marker="x", color="grey", s=22, label="pruned (running mean when stopped)")
    ax.set_xlabel("trial")
    ax.set_ylabel(name)
    ax.set_title(f"{study.study_name}: optimization history")
    ax.grid(alpha=0.3)
    if complete or pruned:
        ax.legend(loc="best", fontsize=8)
    return _png(fig)


def plot_pareto_front(study: optuna.Study, rule: PickRule | None = None) -> bytes:
    """PNG for a two-objective study: every COMPLETE trial, the Pareto front, the picked trial and
    the rule's bound."""
    if len(study.directions) != 2:
        raise ValueError(f"a Pareto front plot needs 2 objectives, the study has {len(study.directions)}")
    names = _objective_names(study)
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    fig, ax = _figure(6.0, 4.5)
    if complete:
        front = sorted(study.best_trials, key=lambda t: t.values[0])
        ax.scatter([t.values[0] for t in complete], [t.values[1] for t in complete], s=16, color="lightgrey", label="trials")
        ax.plot([t.values[0] for t in front], [t.values[1] for t in front], "o-", color="tab:blue", ms=5, label="Pareto front")
        rule = rule or PickRule()
        try:
            picked = pick_trial(study, rule)
            ax.scatter([picked.values[0]], [picked.values[1]], marker="*", s=180, color="tab:red", zorder=4,
                       label=f"picked (#{picked.number})")
            bounded = _objective_index(study, rule.bounded)
            line = ax.axhline if bounded == 1 else ax.axvline
            line(rule.bound, ls="--", color="tab:red", lw=0.8, label=f"{names[bounded]} bound {rule.bound}")
        except ValueError:
            pass
        ax.legend(loc="best", fontsize=8)
    ax.set_xlabel(f"{names[0]} ({study.directions[0].name.lower()})")
    ax.set_ylabel(f"{names[1]} ({study.directions[1].name.lower()})")
    ax.set_title(f"{study.study_name}: Pareto front")
    ax.grid(alpha=0.3)
    return _png(fig)


def plot_param_importances(importances: pd.Series) -> bytes:
    """PNG: horizontal bars of :func:`param_importances`."""
    fig, ax = _figure(6.0, 0.6 + 0.35 * max(len(importances), 1))
    ordered = importances.sort_values()
    ax.barh(list(map(str, ordered.index)), ordered.to_numpy(), color="tab:blue")
    ax.set_xlabel("importance (sums to 1)")
    ax.set_title(f"parameter importance ({importances.attrs.get('method', 'unknown')})")
    ax.grid(alpha=0.3, axis="x")
    return _png(fig)

