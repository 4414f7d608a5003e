"""Which features each family leans on, and whether that holds from fold to fold."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from plml_assets.defs.shared import FAMILIES, TRAINING_RETRY, fail_fast_on_bad_input, fold_columns, step_tags, training_window
from plml_assets.lib.models.training import folds_from_assignments
from plml_assets.lib.plots import importance_stability_plot, markdown_image
from plml_assets.lib.selection.importance import fold_importances, importance_stability, summarize_importances
from plml_assets.resources.settings import ExperimentSettings

QUICK_MAX_DATES = 30  # validation dates per fold the quick profile scores permutations on


class ImportanceConfig(dg.Config):
    families: list[str] = Field(default=list(FAMILIES), description="families analysed")
    repeats: int = Field(default=2, ge=1, le=20, description="permutations per feature (quick profile: 1)")
    max_dates: int = Field(default=60, ge=5, description="validation dates per fold the permutations are scored on (spread evenly; quick profile: at most 30)")


@dg.asset(
    group_name="importance",
    op_tags=step_tags("feature_importance"),
    kinds={"pandas"},
    retry_policy=TRAINING_RETRY,
    ins={f"{f}_study": dg.AssetIn(f"{f}_study") for f in FAMILIES},
    description="Per family, on the walk-forward folds with each fold's own features and the study's parameters: gain "
    "importance (trees) and permutation importance on the fold's validation rows (a feature shuffled across symbols "
    "within each date), their stability across folds (rank correlation between folds), and a plot.",
)
def feature_importance(
    context: dg.AssetExecutionContext,
    config: ImportanceConfig,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    cv_splits: pd.DataFrame,
    cv_fold_features: pd.DataFrame,
    settings: ExperimentSettings,
    **studies,
) -> dg.Output[pd.DataFrame]:
    with fail_fast_on_bad_input():
        unknown = [f for f in config.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown famil(ies) {unknown}; known: {FAMILIES}")
        start = time.perf_counter()
        X, y, _ = training_window(features, labels, settings)
        folds = folds_from_assignments(X, cv_splits[cv_splits["scheme"] == "walk_forward"])
        columns = fold_columns(cv_fold_features, "walk_forward")
        repeats = 1 if settings.quick else config.repeats
        max_dates = min(config.max_dates, QUICK_MAX_DATES) if settings.quick else config.max_dates
        tables, stability, summaries = [], {}, {}
        for family in config.families:
            t0 = time.perf_counter()
            table = fold_importances(
                family, studies[f"{family}_study"]["params"], X, y, folds, columns, settings.horizon,
                repeats=repeats, max_dates=max_dates, seed=settings.seed, log=context.log.info,
            )
            table.insert(0, "family", family)
            tables.append(table)
            stability[family] = importance_stability(table)
            summaries[family] = summarize_importances(table)
            top = summaries[family].head(5).index.tolist()
            context.log.info(
                f"feature_importance {family}: top {top}, fold-to-fold rank correlation "
                f"{stability[family].get('mean_spearman', float('nan')):.2f} in {time.perf_counter() - t0:.1f} s"
            )
        result = pd.concat(tables, ignore_index=True)
    png = importance_stability_plot(summaries)
    metadata = {
        "stability": dg.MetadataValue.json({f: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in s.items()}
                                            for f, s in stability.items()}),
        "plot": dg.MetadataValue.md(markdown_image(png, "permutation importance per family (mean ± std over folds)")),
        "seconds": round(time.perf_counter() - start, 1),
    }
    for family, summary in summaries.items():
        metadata[f"{family}_top"] = dg.MetadataValue.md(summary.head(15).round(4).to_markdown())
    return dg.Output(result, metadata=metadata)
