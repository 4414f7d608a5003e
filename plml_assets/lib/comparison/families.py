"""Model families side by side on the same CV folds and the same holdout."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd

FOLD_KEYS = ["scheme", "fold", "test_start", "test_end", "test_rows"]


def check_same_evaluation(cv_results: Mapping[str, pd.DataFrame], holdouts: Mapping[str, Mapping[str, object]]) -> None:
    """Refuse a comparison whose families were scored on different folds or holdout windows (one
    of them stale): differences would then be partly the data, not the model."""
    reference_name, reference = next(iter(cv_results.items()))
    ref_folds = reference[FOLD_KEYS].reset_index(drop=True)
    for name, frame in cv_results.items():
        folds = frame[FOLD_KEYS].reset_index(drop=True)
        if not folds.equals(ref_folds):
            raise ValueError(
                f"{name}_cv_results was evaluated on other CV folds than {reference_name}_cv_results: "
                f"re-materialize the stale one so that every family sees the same folds"
            )
    ref_name, ref_window = next(iter(holdouts.items()))
    for name, window in holdouts.items():
        if dict(window) != dict(ref_window):
            raise ValueError(
                f"{name}_model was evaluated on the holdout {window} but {ref_name}_model on {ref_window}: "
                "re-materialize the stale model"
            )


def compare_families(
    cv_results: Mapping[str, pd.DataFrame],
    models: Mapping[str, Mapping[str, object]],
    studies: Mapping[str, Mapping[str, object]] | None = None,
) -> pd.DataFrame:
    """One row per family: CV rank IC mean and standard deviation per scheme, the share of folds with
    a positive rank IC, the holdout metrics, the train/validation gap, the time to fit (the final
    model and the CV folds) and the saved model's size, plus the study's budget and best value.
    Sorted by the walk-forward CV rank IC (what is known before the holdout is looked at)."""
    check_same_evaluation(cv_results, {name: m["holdout"] for name, m in models.items()})
    rows = []
    for name, frame in cv_results.items():
        model = models[name]
        metrics = model["metrics"]
        row: dict[str, object] = {"family": name}
        for scheme, block in frame.groupby("scheme", sort=False):
            ic = block["valid_rank_ic"].to_numpy(dtype=float)
            row[f"{scheme}_rank_ic_mean"] = float(np.mean(ic))
            row[f"{scheme}_rank_ic_std"] = float(np.std(ic, ddof=1)) if len(ic) > 1 else 0.0
            row[f"{scheme}_positive_folds"] = float(np.mean(ic > 0))
            row[f"{scheme}_gap"] = float(block["rank_ic_gap"].mean())
        for key in ("rank_ic", "ic", "rmse", "directional_accuracy"):
            row[f"holdout_{key}"] = float(metrics[f"holdout_{key}"])
        row["train_rank_ic"] = float(metrics["train_rank_ic"])
        row["fit_seconds"] = float(model["fit_seconds"])
        row["cv_fit_seconds"] = float(frame["fit_seconds"].sum())
        row["model_kib"] = float(model["model_bytes"]) / 1024
        study = (studies or {}).get(name)
        if study is not None:
            counts = study.get("counts", {})
            row["study_trials"] = int(counts.get("COMPLETE", 0) + counts.get("PRUNED", 0))
            row["study_pruned"] = int(counts.get("PRUNED", 0))
            values = study.get("best_values") or {}
            row["study_best"] = float(next(iter(values.values()))) if values else np.nan
        rows.append(row)
    table = pd.DataFrame(rows).set_index("family")
    sort_key = "walk_forward_rank_ic_mean" if "walk_forward_rank_ic_mean" in table else table.columns[0]
    return table.sort_values(sort_key, ascending=False)
