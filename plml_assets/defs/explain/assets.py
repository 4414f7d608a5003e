"""Explanations of every family model and of the leaderboard's pick on the holdout: contributions
stored as values (``shap_values``), and what they say and whether to believe it (``shap_summary``)."""

import tempfile
import time
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
from pydantic import Field

from plml_assets.defs.shared import FAMILIES, fail_fast_on_bad_input, split_for, step_tags
from plml_assets.lib.explain.contributions import (
    BASE,
    additivity,
    ensemble_contributions,
    explain_rows,
    feature_columns,
    mean_abs,
)
from plml_assets.lib.explain.plots import summary_plot, version_profiles_plot, waterfall_plot
from plml_assets.lib.explain.validation import permuted_label_check, top_feature_stability
from plml_assets.lib.plots import markdown_image
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.settings import ExperimentSettings

#: families whose contributions are exact (TreeSHAP; the linear model's coef x z): every holdout row is
#: explained and the additivity check blocks on them
EXACT_FAMILIES = ("xgboost", "lightgbm", "elastic_net")
#: the families the randomization test refits on permuted labels
TREE_FAMILIES = ("xgboost", "lightgbm")
QUICK_NET_DATES, QUICK_NET_STEPS, QUICK_RANDOMIZATION_DATES = 20, 16, 250


class ShapConfig(dg.Config):
    net_max_dates: int = Field(default=40, ge=4, description="holdout dates (spread evenly) the sequence nets, and an "
                               "ensemble with a net member, are explained on (integrated gradients cost a backward pass "
                               "per path point and row); quick profile at most 20")
    net_steps: int = Field(default=32, ge=4, le=512, description="integrated-gradients path points (midpoint rule) per "
                           "row; quick profile at most 16")
    exact_max_rows: int = Field(default=150_000, ge=100, description="at most this many holdout rows (whole dates, spread "
                                "evenly) for the trees and the linear model; the default covers sp500_5yr's whole holdout "
                                "(125,638 rows): exact TreeSHAP of 400 depth-5 trees through lib/explain/treeshap's Fast "
                                "TreeSHAP v2 takes seconds where the boosters' own took 137 s (XGBoost) and 249 s (LightGBM) on "
                                "one thread (benchmarks/shap_speed.py)")
    threads: int = Field(default=1, ge=1, description="threads of the TreeSHAP and gradient computations")
    stability_top: int = Field(default=20, ge=3, description="top features whose mean |contribution| ranking must hold")
    bootstrap: int = Field(default=20, ge=2, description="date bootstrap resamples of the stability measure")
    randomization_dates: int = Field(default=500, ge=20, description="latest training dates the permuted-label models "
                                     "of the randomization test are fitted on (trees); quick profile at most 250")


def _spread(values: np.ndarray, n: int) -> np.ndarray:
    return values if len(values) <= n else values[np.unique(np.linspace(0, len(values) - 1, n).round().astype(int))]


def _load(model_asset: dict):
    return mlflow.pyfunc.load_model(model_asset["model_uri"]).unwrap_python_model().model_


_INS = {
    **{f"{f}_model": dg.AssetIn(f"{f}_model") for f in FAMILIES},
    **{f"{f}_holdout_predictions": dg.AssetIn(f"{f}_holdout_predictions") for f in FAMILIES},
}


@dg.multi_asset(
    name="explanations",
    group_name="explain",
    op_tags=step_tags("explanations"),
    ins=_INS,
    outs={
        "shap_values": dg.AssetOut(
            kinds={"shap", "pandas"},
            description="Per-feature contributions (SHAP values) on the holdout, stored as values (Parquet), one block "
            "of rows per model (column `model`): every family model (XGBoost and LightGBM: exact TreeSHAP, the "
            "boosters' own pred_contribs/pred_contrib or the same values by Fast TreeSHAP v2 on large inputs; the elastic net: coef x per-date z-score; LSTM/GRU: integrated "
            "gradients on a spread of holdout dates) and "
            "the leaderboard's pick (an ensemble: its members' values mapped into its per-date score space), on at most "
            "exact_max_rows holdout rows (whole dates). "
            "base_value + the feature columns (+ nonlinear_residual) = prediction.",
        ),
        "shap_summary": dg.AssetOut(
            kinds={"shap"},
            description="Per model: mean |contribution| per feature, additivity, stability of the top features (halves "
            "and bootstrap of the holdout dates), and the randomization test of the trees (refitted on labels permuted "
            "within each date); summary and waterfall plots in the metadata.",
        ),
    },
)
def explanations(
    context: dg.AssetExecutionContext,
    config: ShapConfig,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    model_leaderboard: dict,
    ensemble_model: dict,
    settings: ExperimentSettings,
    mlflow_registry: MlflowRegistry,
    **inputs,
):
    start = time.perf_counter()
    quick = settings.quick
    net_dates = min(config.net_max_dates, QUICK_NET_DATES) if quick else config.net_max_dates
    steps = min(config.net_steps, QUICK_NET_STEPS) if quick else config.net_steps
    rand_dates = min(config.randomization_dates, QUICK_RANDOMIZATION_DATES) if quick else config.randomization_dates
    with fail_fast_on_bad_input():
        y, split = split_for(labels, settings)
        on = features.index.get_level_values("date")
        span = features[on <= split.holdout_dates[-1]]
        span_dates = span.index.get_level_values("date")
        holdout_rows = np.flatnonzero(span_dates.isin(split.holdout_dates))
        hold_dates = np.unique(span_dates[holdout_rows])
        per_date = max(1, int(np.ceil(len(holdout_rows) / max(len(hold_dates), 1))))
        exact_dates = _spread(hold_dates, max(4, config.exact_max_rows // per_date))
        exact_rows = holdout_rows[np.isin(span_dates[holdout_rows], exact_dates)]
        # The nets' dates are among the trees': an ensemble is explained on the rows all its members were.
        net_rows = holdout_rows[np.isin(span_dates[holdout_rows], _spread(exact_dates, net_dates))]
        frames, models, timing = {}, {}, {}
        with mlflow_registry.tracking():
            for family in FAMILIES:
                models[family] = _load(inputs[f"{family}_model"])
        for family, model in models.items():
            began = time.perf_counter()
            rows = exact_rows if family in EXACT_FAMILIES else net_rows
            frames[family] = explain_rows(model, span, rows, threads=config.threads, steps=None if family in EXACT_FAMILIES else steps)
            timing[family] = round(time.perf_counter() - began, 2)
            check = additivity(frames[family])
            context.log.info(f"explanations {family}: {len(rows):,} holdout rows in {timing[family]:.1f} s, additivity "
                             f"error {check['relative_error']:.2e} of the scores' RMS")
        scores = {f: inputs[f"{f}_holdout_predictions"]["prediction"] for f in FAMILIES}
        winner = model_leaderboard["selection"]["winner"]
        pick = str(winner) if winner is not None else None
        if pick is not None and pick.startswith("ensemble_"):
            fit = ensemble_model["methods"][pick.removeprefix("ensemble_")]["fit"]
            frames[pick] = ensemble_contributions(fit, {m: frames[m] for m in fit["members"]}, scores)
            context.log.info(f"explanations {pick}: {len(frames[pick]):,} rows (the rows every member was explained on)")
        randomization = {}
        for family in TREE_FAMILIES:
            randomization[family] = permuted_label_check(models[family], features, y, split.train_dates[-rand_dates:], frames[family],
                                                         settings.horizon, settings.seed)
            context.log.info(f"explanations {family} randomization test: {randomization[family]}")
    kind = {name: ("tree" if name in TREE_FAMILIES else "linear" if name in EXACT_FAMILIES else "net" if name in FAMILIES else "ensemble")
            for name in frames}
    members = {name: (ensemble_model["methods"][name.removeprefix("ensemble_")]["fit"]["members"] if kind[name] == "ensemble" else [name])
               for name in frames}
    summary = {
        "pick": pick,
        "holdout": split.describe(),
        "models": {
            name: {
                "kind": kind[name],
                "exact": all(m in EXACT_FAMILIES for m in members[name]),
                "members": members[name],
                "rows": int(len(frame)),
                "dates": int(frame.index.get_level_values("date").nunique()),
                "mean_abs": {k: float(v) for k, v in mean_abs(frame).items()},
                "additivity": additivity(frame),
                "stability": top_feature_stability(frame, config.stability_top, config.bootstrap, settings.seed),
                "seconds": timing.get(name),
            }
            for name, frame in frames.items()
        },
        "randomization": randomization,
        "net_steps": steps,
    }
    table = pd.concat([frame.assign(model=name) for name, frame in frames.items()])
    columns = ["model", *dict.fromkeys(c for f in frames.values() for c in feature_columns(f)), BASE]
    table = table[[*columns, *[c for c in table.columns if c not in columns]]]
    # How the top features moved across the registered versions, the pick of this run last.
    with mlflow_registry.tracking():
        history = {f"v{v.version}": mlflow_registry.version_profile(v) for v in mlflow_registry.versions()}
    profiles = {k: pd.Series(p) for k, p in history.items() if p}
    shown = pick if pick in frames else FAMILIES[0]
    profiles[f"{shown} (this run)"] = pd.Series(summary["models"][shown]["mean_abs"])
    summary["versions"] = [k for k in profiles]
    summary_png = summary_plot(frames[shown], span, f"{shown}: contributions on the holdout")
    waterfall_png = waterfall_plot(frames[shown], frames[shown].index.get_level_values("date").max(), shown)
    top = pd.DataFrame({name: pd.Series(info["mean_abs"]).head(10) for name, info in summary["models"].items()})
    # The same plots on the shown model's MLflow run, beside its other plots.
    run_id = (model_leaderboard.get("winner") or {}).get("run_id") if shown == pick else inputs[f"{shown}_model"].get("run_id")
    if run_id:
        client = mlflow_registry.client()
        for name, png in (("shap_summary", summary_png), ("shap_waterfall", waterfall_png)):
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / f"{name}.png"
                path.write_bytes(png)
                client.log_artifact(run_id, str(path), "plots")
    context.log.info(f"explanations: {len(table):,} rows over {len(frames)} models in {time.perf_counter() - start:.1f} s")
    yield dg.Output(table, output_name="shap_values", metadata={
        "rows": len(table), "models": ", ".join(frames), "pick": pick or "none",
        "seconds": round(time.perf_counter() - start, 1),
    })
    yield dg.Output(summary, output_name="shap_summary", metadata={
        "pick": pick or "none",
        "top_features": dg.MetadataValue.md(top.round(6).to_markdown()),
        "additivity": dg.MetadataValue.json({n: round(m["additivity"]["relative_error"], 8) for n, m in summary["models"].items()}),
        "stability": dg.MetadataValue.json({n: {k: round(v, 3) for k, v in m["stability"].items() if isinstance(v, float)}
                                            for n, m in summary["models"].items()}),
        "randomization": dg.MetadataValue.json(randomization),
        "summary_plot": dg.MetadataValue.md(markdown_image(summary_png, f"{shown} contributions")),
        "waterfall": dg.MetadataValue.md(markdown_image(waterfall_png, f"{shown} waterfall, top names")),
        "versions_plot": dg.MetadataValue.md(markdown_image(version_profiles_plot(profiles), "top features across versions")),
    })

