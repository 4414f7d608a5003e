"""Feature selection on the training window only (the holdout never informs it)."""

import time

import dagster as dg
import numpy as np
import pandas as pd

from plml_assets.defs.shared import fail_fast_on_bad_input, step_tags, training_window
from plml_assets.lib.selection.pipeline import QUICK_SELECTION, QUICK_SELECTION_FOLDS, SelectionPlan, fold_selector, run_selection
from plml_assets.resources.settings import ExperimentSettings, SelectionSettings


def selection_plan(selection: SelectionSettings, settings: ExperimentSettings) -> SelectionPlan:
    """The selection the settings ask for, capped by the quick profile."""
    plan = SelectionPlan(selection.selection_config(settings.seed), selection.n_folds, settings.horizon, settings.embargo_days)
    return plan.quick() if settings.quick else plan


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
        result = run_selection(X, y, selection_plan(selection, settings), log=context.log.info, feature_recipes=feature_recipes)
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
    op_tags=step_tags("feature_generation_report"),
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
    from plml_assets.lib.models.training import cross_validate, early_stopping_split, folds_from_assignments

    with fail_fast_on_bad_input():
        start = time.perf_counter()
        generated = set(feature_recipes["recipes"])
        base = [c for c in features.columns if c not in generated]
        X, y, _ = training_window(features, labels, settings)
        folds = folds_from_assignments(X, cv_splits[cv_splits["scheme"] == "walk_forward"])
        enlarged_columns = fold_columns(cv_fold_features, "walk_forward")
        select_base = fold_selector(X[base], y, selection_plan(selection, settings))
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
