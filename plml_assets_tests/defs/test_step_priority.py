"""The multiprocess executor starts the ready step of highest ``dagster/priority`` first: the chain to
the leaderboard and the CPCV of its pick outrank the per-family refits, which outrank the steps nothing
else reads, which fill idle cores."""

from __future__ import annotations

from dagster._core.execution.api import create_execution_plan

from plml_assets.definitions import main_job
from plml_assets.defs.shared import FAMILIES, STEP_PRIORITY


def test_the_critical_chain_outranks_the_leaves_and_every_table_entry_names_steps():
    plan = create_execution_plan(main_job())
    priority = {s.key: int(s.tags.get("dagster/priority", 0)) for s in plan.steps}
    leaves = ("feature_importance", "model_comparison", "drift_metrics")
    for family in FAMILIES:
        assert priority[f"{family}_study"] > priority[f"{family}_cv"] > priority[f"{family}_training"] > max(priority[k] for k in leaves)
    for family in FAMILIES:  # the refits the evidence reads after the leaderboard, and the CPCV selections they need
        assert priority["backtest"] > priority[f"{family}_cpcv_predictions"] == priority["cpcv_fold_features"] > max(priority[k] for k in leaves)
    assert priority["cpcv_paths"] > priority["backtest"]
    assert priority["explanations"] == priority["backtest"] > max(priority[k] for k in leaves)  # the gate's model card reads them
    assert all(priority[k] < 0 for k in leaves)
    # the longest leaf reads no refit: it starts before the short ones, after the chain and the refits
    assert max(priority[k] for k in leaves) < priority["feature_generation_report"] < priority["cpcv_fold_features"]
    kinds = {k for k in STEP_PRIORITY if k in priority or any(step.endswith(f"_{k}") for step in priority)}
    assert kinds == set(STEP_PRIORITY), set(STEP_PRIORITY) - kinds  # no stale entry
