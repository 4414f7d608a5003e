"""Which features each family leans on, and whether that holds from fold to fold."""

import time

import dagster as dg
import pandas as pd
from pydantic import Field

from plml_assets.defs.shared import FAMILIES, fail_fast_on_bad_input, step_tags
from plml_assets.lib.plots import importance_stability_plot, markdown_image
from plml_assets.lib.selection.importance import importance_stability, summarize_importances


class ImportanceConfig(dg.Config):
    families: list[str] = Field(default=list(FAMILIES), description="families analysed")


@dg.asset(
    group_name="importance",
    op_tags=step_tags("feature_importance"),
    kinds={"pandas"},
    ins={f"{f}_fold_importances": dg.AssetIn(f"{f}_fold_importances") for f in FAMILIES},
    description="Per family, on the walk-forward folds with each fold's own features and the study's parameters (the "
    "models {family}_cv fitted, measured there: {family}_fold_importances): gain importance (trees) and permutation "
    "importance on the fold's validation rows (a feature shuffled across symbols within each date), their stability "
    "across folds (rank correlation between folds), and a plot.",
)
def feature_importance(
    context: dg.AssetExecutionContext,
    config: ImportanceConfig,
    **fold_tables,
) -> dg.Output[pd.DataFrame]:
    with fail_fast_on_bad_input():
        unknown = [f for f in config.families if f not in FAMILIES]
        if unknown:
            raise ValueError(f"unknown famil(ies) {unknown}; known: {FAMILIES}")
        start = time.perf_counter()
        tables, stability, summaries = [], {}, {}
        for family in config.families:
            table = fold_tables[f"{family}_fold_importances"].copy()
            missing = sorted({"fold", "feature", "gain", "permutation", "rank_in_fold", "base_rank_ic"} - set(table.columns))
            if missing or table.empty:
                raise ValueError(f"{family}_fold_importances lacks {missing or 'rows'}: re-materialize {family}_cv")
            table.insert(0, "family", family)
            tables.append(table)
            stability[family] = importance_stability(table)
            summaries[family] = summarize_importances(table)
            context.log.info(
                f"feature_importance {family}: top {summaries[family].head(5).index.tolist()}, fold-to-fold rank correlation "
                f"{stability[family].get('mean_spearman', float('nan')):.2f}"
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
