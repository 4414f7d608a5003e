"""Feature selection on the training window only (the holdout never informs it)."""

import dataclasses
import time
from collections.abc import Callable

import dagster as dg
import numpy as np
import pandas as pd

from plml_assets.defs.shared import fail_fast_on_bad_input, training_window
from plml_assets.lib.feature_generation import INTERACTIONS, base_rank_ic, interactions_beyond_top_k
from plml_assets.lib.selection import SelectionResult, select_features
from plml_assets.lib.splits import PurgedWalkForward

from plml_assets.resources.settings import ExperimentSettings, SelectionSettings


def run_selection(
    X: pd.DataFrame,
    y: pd.Series,
    selection: SelectionSettings,
    settings: ExperimentSettings,
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
    n_folds = min(selection.n_folds, QUICK_SELECTION_FOLDS) if settings.quick else selection.n_folds
    splitter = PurgedWalkForward(n_splits=n_folds, horizon=settings.horizon, embargo=settings.embargo_days)
    folds = list(splitter.split(X, y, groups=X.index.get_level_values("date")))
    result = select_features(X, y, folds, selection_config(selection, settings), log=log)
    result.dropped.update(excluded)
    return result


#: The quick profile's caps on what one selection costs: importance rounds, rows per importance model,
#: rows for the statistics (missing share, near-constant, leakage, correlation).
QUICK_SELECTION = {"n_estimators": 40, "sample_rows": 50_000, "stats_rows": 20_000}
QUICK_SELECTION_FOLDS = 2  # importance models per selection in the quick profile


def selection_config(selection: SelectionSettings, settings: ExperimentSettings):
    """The selection's settings, capped by the quick profile."""
    config = selection.selection_config(settings.seed)
    if not settings.quick:
        return config
    return dataclasses.replace(config, **{k: min(cap, getattr(config, k) or cap) for k, cap in QUICK_SELECTION.items()})


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


def selector_for(
    X: pd.DataFrame, y: pd.Series, selection: SelectionSettings, settings: ExperimentSettings,
    feature_recipes: dict | None = None,
) -> Callable[[np.ndarray], list[str]]:
    """What a CV fold calls with its training positions to choose its own features (and its own
    interaction pairs, when ``feature_recipes`` is given)."""

    def select(train_positions: np.ndarray) -> list[str]:
        return run_selection(X.iloc[train_positions], y.iloc[train_positions], selection, settings,
                             feature_recipes=feature_recipes).selected

    return select


@dg.asset(group_name="selection", kinds={"xgboost"}, description="Selected features with importances; dropped ones with reasons.")
def feature_selection(
    context: dg.AssetExecutionContext,
    features: pd.DataFrame,
    feature_recipes: dict,
    labels: pd.DataFrame,
    settings: ExperimentSettings,
    selection: SelectionSettings,
) -> dg.Output[pd.DataFrame]:
    with fail_fast_on_bad_input():
        start = time.perf_counter()
        X, y, split = training_window(features, labels, settings)
        result = run_selection(X, y, selection, settings, log=context.log.info, feature_recipes=feature_recipes)
    table = result.to_frame()
    selected = table[table["status"] == "selected"]
    dropped = table[table["status"] != "selected"]
    context.log.info(
        f"feature_selection: kept {len(result.selected)} of {features.shape[1]} features on "
        f"{len(X):,} training rows ({split.describe()['train_start']}..{split.describe()['train_end']}) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return dg.Output(
        table,
        metadata={
            "selected_count": len(result.selected),
            "dropped_count": len(result.dropped),
            "selected": dg.MetadataValue.md(selected[["feature", "importance"]].to_markdown(index=False)),
            "dropped": dg.MetadataValue.md(dropped[["feature", "reason"]].to_markdown(index=False)),
            "training_window": dg.MetadataValue.json(split.describe()),
            "settings": dg.MetadataValue.json({**selection.model_dump(), **(
                {"quick_profile_caps": {**QUICK_SELECTION, "n_folds": QUICK_SELECTION_FOLDS}} if settings.quick else {})}),
        },
    )


def selected_features(table: pd.DataFrame) -> list[str]:
    return table.loc[table["status"] == "selected", "feature"].tolist()


@dg.asset(
    group_name="selection",
    kinds={"xgboost"},
    description="Do the generated features earn their place? How many were generated, how many selection kept (in the "
    "final selection and per CV fold), and the walk-forward CV rank IC of the same XGBoost with each fold's selection run "
    "on the base features alone versus on the enlarged set.",
)
def feature_generation_report(
    context: dg.AssetExecutionContext,
    features: pd.DataFrame,
    feature_recipes: dict,
    labels: pd.DataFrame,
    cv_splits: pd.DataFrame,
    cv_fold_features: pd.DataFrame,
    feature_selection: pd.DataFrame,
    settings: ExperimentSettings,
    selection: SelectionSettings,
) -> dg.Output[dict]:
    from plml_assets.defs.shared import fold_columns
    from plml_assets.lib.models.registry import resolve_params
    from plml_assets.lib.training import cross_validate, early_stopping_split, folds_from_assignments

    with fail_fast_on_bad_input():
        start = time.perf_counter()
        generated = set(feature_recipes["recipes"])
        base = [c for c in features.columns if c not in generated]
        X, y, _ = training_window(features, labels, settings)
        folds = folds_from_assignments(X, cv_splits[cv_splits["scheme"] == "walk_forward"])
        enlarged_columns = fold_columns(cv_fold_features, "walk_forward")
        select_base = selector_for(X[base], y, selection, settings)
        dates = X.index.get_level_values("date").to_numpy()
        base_columns = [select_base(train[early_stopping_split(dates[train], settings.horizon)[0]]) for train, _ in folds]
        params = resolve_params("xgboost", quick=settings.quick, seed=settings.seed)
        arms = {}
        for arm, columns in (("base", base_columns), ("enlarged", enlarged_columns)):
            per_fold, _ = cross_validate(params, X, y, folds, settings.horizon, gap_bound=2.0, family="xgboost", fold_columns=columns)
            arms[arm] = per_fold["valid_rank_ic"].tolist()
    kept_final = [f for f in selected_features(feature_selection) if f in generated]
    kept_per_fold = [sum(c in generated for c in cols) for cols in enlarged_columns]
    base_mean, enlarged_mean = float(np.mean(arms["base"])), float(np.mean(arms["enlarged"]))
    report = {
        "generated": len(generated),
        "base": len(base),
        "kept_in_final_selection": kept_final,
        "kept_per_fold": kept_per_fold,
        "cv_rank_ic_base": arms["base"],
        "cv_rank_ic_enlarged": arms["enlarged"],
        "cv_rank_ic_base_mean": base_mean,
        "cv_rank_ic_enlarged_mean": enlarged_mean,
        "cv_rank_ic_change": enlarged_mean - base_mean,
        "params": {k: v for k, v in params.items() if isinstance(v, (int, float, str))},
    }
    context.log.info(
        f"feature_generation_report: {len(generated)} generated, {len(kept_final)} kept in the final selection "
        f"({kept_per_fold} per fold); walk-forward CV rank IC {base_mean:.4f} on base features -> {enlarged_mean:.4f} "
        f"with generated ones ({enlarged_mean - base_mean:+.4f}) in {time.perf_counter() - start:.1f} s"
    )
    per_fold = pd.DataFrame({"fold": range(1, len(folds) + 1), "base": arms["base"], "enlarged": arms["enlarged"],
                             "generated_kept": kept_per_fold})
    return dg.Output(report, metadata={
        "generated": len(generated),
        "kept_in_final_selection": len(kept_final),
        "kept": ", ".join(kept_final) or "none",
        "cv_rank_ic_base": base_mean,
        "cv_rank_ic_enlarged": enlarged_mean,
        "cv_rank_ic_change": enlarged_mean - base_mean,
        "per_fold": dg.MetadataValue.md(per_fold.round(4).to_markdown(index=False)),
        "seconds": round(time.perf_counter() - start, 1),
    })
