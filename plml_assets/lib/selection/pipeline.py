"""Feature selection on one window of rows, as every fit runs it (the final selection, each CV fold,
each CPCV split): the interaction pairs allowed are those of the top-k base features ranked on these
rows, importance models are fitted on purged walk-forward folds of them, then the filters of
:func:`plml_assets.lib.selection.selector.select_features`."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from plml_assets.lib.features.generation import INTERACTIONS, base_rank_ic, interactions_beyond_top_k
from plml_assets.lib.selection.selector import SelectionConfig, SelectionResult, select_features
from plml_assets.lib.validation.splits import PurgedWalkForward

#: The quick profile's caps on what one selection costs: importance rounds, rows per importance model,
#: rows for the statistics (missing share, near-constant, leakage, correlation).
QUICK_SELECTION = {"n_estimators": 30, "sample_rows": 25_000, "stats_rows": 20_000}
QUICK_SELECTION_FOLDS = 2  # importance models per selection in the quick profile


@dataclass(frozen=True)
class SelectionPlan:
    """What one selection does: its filters and importance models (``config``), over ``n_folds``
    purged walk-forward folds of its rows (labels ``horizon`` days long, ``embargo`` days after each)."""

    config: SelectionConfig
    n_folds: int
    horizon: int
    embargo: int

    def quick(self) -> SelectionPlan:
        """The same plan within the quick profile's caps."""
        caps = {k: min(cap, getattr(self.config, k) or cap) for k, cap in QUICK_SELECTION.items()}
        return dataclasses.replace(self, config=dataclasses.replace(self.config, **caps),
                                   n_folds=min(self.n_folds, QUICK_SELECTION_FOLDS))


def excluded_interactions(X: pd.DataFrame, y: pd.Series, feature_recipes: dict | None) -> dict[str, str]:
    """Interaction columns of ``X`` outside the top-k base features by rank IC on these rows."""
    if not feature_recipes:
        return {}
    top_k = int(feature_recipes.get("spec", {}).get("top_k", 0))
    recipes = {n: r for n, r in feature_recipes.get("recipes", {}).items() if n in X.columns}
    inputs = {name for r in recipes.values() if r["primitive"] in INTERACTIONS.values() for name in r["inputs"]}
    if not inputs:
        return {}
    importance = base_rank_ic(X, y, sorted(inputs))
    return interactions_beyond_top_k(recipes, importance, top_k)


def run_selection(
    X: pd.DataFrame,
    y: pd.Series,
    plan: SelectionPlan,
    log: Callable[[str], None] | None = None,
    feature_recipes: dict | None = None,
) -> SelectionResult:
    """Select on these rows alone: importance models are fitted on purged walk-forward folds of them.
    With ``feature_recipes``, the interactions allowed are the pairs of the top-k base features ranked
    on these rows too; the other interaction columns are dropped, with that reason."""
    excluded = excluded_interactions(X, y, feature_recipes)
    if excluded and log is not None:
        log(f"interactions: {len(excluded)} outside this fit's top-k base features left out: {next(iter(excluded.values()))}")
    X = X.drop(columns=list(excluded)) if excluded else X
    splitter = PurgedWalkForward(n_splits=plan.n_folds, horizon=plan.horizon, embargo=plan.embargo)
    folds = list(splitter.split(X, y, groups=X.index.get_level_values("date")))
    result = select_features(X, y, folds, plan.config, log=log)
    result.dropped.update(excluded)
    return result


def fold_selector(
    X: pd.DataFrame, y: pd.Series, plan: SelectionPlan, feature_recipes: dict | None = None,
) -> Callable[[np.ndarray], list[str]]:
    """What a CV fold calls with its training positions to choose its own features (and its own
    interaction pairs, when ``feature_recipes`` is given)."""

    def select(train_positions: np.ndarray) -> list[str]:
        return run_selection(X.iloc[train_positions], y.iloc[train_positions], plan, feature_recipes=feature_recipes).selected

    return select
