"""The model families compared on the same CV folds and the same holdout."""

import tempfile
import time
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd

from plml_assets.defs.shared import FAMILIES, fail_fast_on_bad_input
from plml_assets.lib.comparison import compare_families
from plml_assets.lib.plots import family_comparison_plot, markdown_image
from plml_assets.resources.mlflow_registry import MlflowRegistry

_INS = {
    **{f"{f}_cv_results": dg.AssetIn(f"{f}_cv_results") for f in FAMILIES},
    **{f"{f}_model": dg.AssetIn(f"{f}_model") for f in FAMILIES},
    **{f"{f}_study": dg.AssetIn(f"{f}_study") for f in FAMILIES},
}


@dg.asset(
    group_name="comparison",
    kinds={"pandas", "mlflow"},
    ins=_INS,
    description="Every model family on the same purged CV folds and the same holdout: CV rank IC mean and spread "
    "per scheme, holdout metrics, train/validation gap, fit time and model size, with a per-fold spread plot.",
)
def model_comparison(context: dg.AssetExecutionContext, mlflow_registry: MlflowRegistry, **inputs) -> dg.Output[pd.DataFrame]:
    start = time.perf_counter()
    with fail_fast_on_bad_input():
        cv = {f: inputs[f"{f}_cv_results"] for f in FAMILIES}
        models = {f: inputs[f"{f}_model"] for f in FAMILIES}
        studies = {f: inputs[f"{f}_study"] for f in FAMILIES}
        table = compare_families(cv, models, studies)
    per_fold = pd.concat([frame.assign(family=f) for f, frame in cv.items()], ignore_index=True)
    png = family_comparison_plot(per_fold, table["holdout_rank_ic"])
    shown = table.round(4)
    context.log.info("model_comparison:\n" + shown.to_string())
    with mlflow_registry.tracking(), tempfile.TemporaryDirectory() as tmp:
        with mlflow.start_run(
            experiment_id=mlflow_registry.experiment_id(), run_name=f"comparison-{context.run.run_id[:8]}",
            tags={"plml.kind": "comparison", "dagster.run_id": context.run.run_id, "dagster.asset": "model_comparison",
                  **{f"plml.run.{f}": str(m["run_id"]) for f, m in models.items()}},
        ) as run:
            mlflow.log_text(table.to_csv(), "model_comparison.csv")
            mlflow.log_metrics({f"{f}.{k}": float(v) for f, row in table.iterrows()
                                for k, v in row.items() if k in ("walk_forward_rank_ic_mean", "holdout_rank_ic", "fit_seconds")})
            (Path(tmp) / "model_comparison.png").write_bytes(png)
            mlflow.log_artifact(str(Path(tmp) / "model_comparison.png"), "plots")
            run_id = run.info.run_id
    best_cv = table.index[0]
    best_holdout = table["holdout_rank_ic"].idxmax()
    return dg.Output(
        table.reset_index(),
        metadata={
            "table": dg.MetadataValue.md(shown.to_markdown()),
            "per_fold_spread": dg.MetadataValue.md(markdown_image(png, "validation rank IC per fold and holdout, by family")),
            "best_cv_family": str(best_cv),
            "best_holdout_family": str(best_holdout),
            "holdout_rank_ic": dg.MetadataValue.json({f: round(float(v), 4) for f, v in table["holdout_rank_ic"].items()}),
            "mlflow_run_id": run_id,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
