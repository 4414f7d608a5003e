"""Is an explanation right (additivity) and worth reading (stability, randomization)?"""

from __future__ import annotations

import dagster as dg
import pandas as pd

from plml_assets.lib.explain.contributions import additivity

#: base value + contributions must equal the model's output within this share of the scores' RMS
#: (exact TreeSHAP; what remains is float32 accumulation inside the boosters)
EXACT_TOLERANCE = 1e-4
#: integrated gradients on the midpoint rule: a larger gap says the path needs more points
APPROXIMATE_TOLERANCE = 2e-2
#: rank correlation of the top features' importance below which an explanation is called unstable
STABILITY_WARN = 0.7


@dg.asset_check(
    asset="shap_values", blocking=True, additional_ins={"shap_summary": dg.AssetIn("shap_summary")},
    description=f"base_value + contributions = the model's output, per model: within {EXACT_TOLERANCE:g} of the scores' RMS for "
    f"the trees and ensembles of trees (exact TreeSHAP; fails as an error: nothing downstream reads a wrong explanation), "
    f"within {APPROXIMATE_TOLERANCE:g} for models with a net (integrated gradients; a warning).",
)
def shap_additivity(shap_values: pd.DataFrame, shap_summary: dict) -> dg.AssetCheckResult:
    exact_failed, approximate_failed, measured = [], [], {}
    for name, block in shap_values.groupby("model", sort=False):
        values = block.drop(columns="model").dropna(axis=1, how="all")
        error = additivity(values)["relative_error"]
        measured[name] = error
        exact = shap_summary["models"].get(name, {}).get("exact", False)
        if exact and not error <= EXACT_TOLERANCE:
            exact_failed.append(f"{name} {error:.2e} > {EXACT_TOLERANCE:g}")
        elif not exact and not error <= APPROXIMATE_TOLERANCE:
            approximate_failed.append(f"{name} {error:.2e} > {APPROXIMATE_TOLERANCE:g}")
    failed = exact_failed + approximate_failed
    return dg.AssetCheckResult(
        passed=not failed,
        severity=dg.AssetCheckSeverity.ERROR if exact_failed else dg.AssetCheckSeverity.WARN,
        description=("additivity off: " + "; ".join(failed)) if failed else "every model's contributions add up to its scores",
        metadata={"relative_error": dg.MetadataValue.json({k: float(f"{v:.3e}") for k, v in measured.items()})},
    )


@dg.asset_check(
    asset="shap_summary", blocking=False,
    description=f"Rank correlation of the top features' mean |contribution| between the holdout's two halves and over date "
    f"bootstraps (median), per model: warns below {STABILITY_WARN}.",
)
def shap_stability(shap_summary: dict) -> dg.AssetCheckResult:
    low, table = [], {}
    for name, info in shap_summary["models"].items():
        s = info["stability"]
        table[name] = {"halves": round(s["halves_rank_corr"], 3), "bootstrap_median": round(s["bootstrap_rank_corr_median"], 3)}
        worst = min(s["halves_rank_corr"], s["bootstrap_rank_corr_median"])
        if not worst >= STABILITY_WARN:
            low.append(f"{name} {worst:.2f}")
    return dg.AssetCheckResult(
        passed=not low, severity=dg.AssetCheckSeverity.WARN,
        description=(f"unstable top-{next(iter(shap_summary['models'].values()))['stability']['top']} importance (< {STABILITY_WARN}): "
                     + ", ".join(low)) if low else "the top features hold across halves and bootstraps",
        metadata={"stability": dg.MetadataValue.json(table)},
    )


@dg.asset_check(
    asset="shap_summary", blocking=False,
    description="Randomization test (Adebayo et al., 2018): each tree family refitted on labels permuted within each date "
    "and explained on the same rows; warns when that explanation ranks the features like the real one (rank correlation "
    "above 0.5) or credits a feature as much as the real model's strongest (the real ranking is then indistinguishable "
    "from fitting noise).",
)
def shap_randomization(shap_summary: dict) -> dg.AssetCheckResult:
    tests = shap_summary.get("randomization", {})
    failed = [f"{f}: profile rank correlation {t['profile_rank_corr']:.2f}"
              + (f", credited as much as the real strongest: {', '.join(t['permuted_standouts'])}" if t["permuted_standouts"] else "")
              for f, t in tests.items() if not t["passed"]]
    return dg.AssetCheckResult(
        passed=bool(tests) and not failed, severity=dg.AssetCheckSeverity.WARN,
        description=("no randomization test ran" if not tests else
                     "explanations survive randomized labels: " + "; ".join(failed) if failed else
                     "the permuted-label models explain differently and credit no feature as much as the real ones: "
                     + ", ".join(f"{f} rank correlation {t['profile_rank_corr']:.2f}" for f, t in tests.items())),
        metadata={"randomization": dg.MetadataValue.json(tests)},
    )
