"""The model families compared on the same CV folds and the same holdout."""

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
from pydantic import Field

from plml_assets.defs.shared import FAMILIES, fail_fast_on_bad_input, split_for, step_tags
from plml_assets.lib.comparison.families import check_same_evaluation, compare_families
from plml_assets.lib.comparison.leaderboard import (
    PRIMARY_METRICS,
    Candidate,
    SelectionCriteria,
    fold_rank_ics,
    leaderboard_table,
    long_short_returns,
    nested_walk_forward,
    select,
    validate_against_baseline,
)
from plml_assets.lib.models.baselines import momentum_score
from plml_assets.lib.plots import family_comparison_plot, markdown_image
from plml_assets.lib.validation.metrics import evaluate_predictions, per_date_ic
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.settings import ExperimentSettings

_INS = {
    **{f"{f}_cv_results": dg.AssetIn(f"{f}_cv_results") for f in FAMILIES},
    **{f"{f}_model": dg.AssetIn(f"{f}_model") for f in FAMILIES},
    **{f"{f}_study": dg.AssetIn(f"{f}_study") for f in FAMILIES},
}


@dg.asset(
    group_name="comparison",
    op_tags=step_tags("model_comparison"),
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


_LEADERBOARD_INS = {
    **_INS,
    **{f"{f}_oof_predictions": dg.AssetIn(f"{f}_oof_predictions") for f in FAMILIES},
    **{f"{f}_holdout_predictions": dg.AssetIn(f"{f}_holdout_predictions") for f in FAMILIES},
    "ensemble_model": dg.AssetIn("ensemble_model"),
    "ensemble_predictions": dg.AssetIn("ensemble_predictions"),
}


class LeaderboardConfig(dg.Config):
    primary: str = Field(default="walk_forward_rank_ic_mean", description=f"metric the pick maximizes, one of {PRIMARY_METRICS} (all known before the holdout)")
    min_positive_folds: float | None = Field(default=0.5, description="least share of walk-forward folds with a positive rank IC (None: off)")
    max_gap: float | None = Field(default=0.2, description="largest mean train - validation rank IC gap (None: off)")
    min_dsr: float | None = Field(default=None, description="least deflated Sharpe of the OOF long-short returns, deflated over every configuration tried (None: report only)")
    max_pbo: float | None = Field(default=None, description="largest PBO of the candidate set; above it nothing is picked (None: report only)")
    max_fit_seconds: float | None = Field(default=None, description="largest training time of a candidate in seconds (None: off)")
    tie_tolerance: float = Field(default=0.001, ge=0, description="primary values this close to the best tie; the cheaper candidate wins")
    baseline_window: int = Field(default=20, ge=1, le=250, description="momentum window of the baseline the pick must beat on the holdout")
    cost_bps: float = Field(default=5.0, ge=0, description="transaction cost per side of the long-short portfolios (OOF and holdout)")
    quantile: float = Field(default=0.2, gt=0, le=0.5, description="long-short quantile of those portfolios")
    holding_days: int | None = Field(default=None, description="tranche holding days of those portfolios (None: the horizon)")
    execution_lag_days: int = Field(default=1, ge=0, le=20, description="dates between a signal and its trade")

    def criteria(self) -> SelectionCriteria:
        return SelectionCriteria(
            primary=self.primary, min_positive_folds=self.min_positive_folds, max_gap=self.max_gap, min_dsr=self.min_dsr,
            max_pbo=self.max_pbo, max_fit_seconds=self.max_fit_seconds, tie_tolerance=self.tie_tolerance,
        ).validate()


@dg.asset(
    group_name="comparison",
    op_tags=step_tags("model_leaderboard"),
    kinds={"pandas", "mlflow"},
    ins=_LEADERBOARD_INS,
    description="Every candidate (each family's tuned model, each ensemble) and the momentum baseline on the same purged "
    "CV folds and the same holdout; a declared rule (stability, gap, deflated Sharpe, PBO, cost) picks one on what is known "
    "before the holdout, and the holdout then has to confirm it beats the baseline, else nothing new is promoted.",
)
def model_leaderboard(
    context: dg.AssetExecutionContext,
    config: LeaderboardConfig,
    market_prices: pd.DataFrame,
    labels: pd.DataFrame,
    settings: ExperimentSettings,
    mlflow_registry: MlflowRegistry,
    **inputs,
) -> dg.Output[dict]:
    start = time.perf_counter()
    with fail_fast_on_bad_input():
        criteria = config.criteria()
        evidence = gather_candidates(inputs, market_prices, labels, settings, config)
        table, pbo = leaderboard_table(evidence.candidates)
        baseline = evidence.baseline
        selection = validate_against_baseline(table, select(table, criteria, pbo), baseline)
    table["selected"] = table.index == selection.winner
    shown = table.drop(columns=["members"]).round(4)
    context.log.info("model_leaderboard:\n" + shown.to_string())
    (context.log.info if selection.validated else context.log.warning)(
        f"model_leaderboard: {selection.reason}; {selection.validation}")
    png = family_comparison_plot(evidence.per_fold.rename(columns={"candidate": "family"}), table["holdout_rank_ic"])
    winner = evidence.artefacts.get(selection.winner) if selection.winner else None
    with mlflow_registry.tracking(), tempfile.TemporaryDirectory() as tmp:
        with mlflow.start_run(
            experiment_id=mlflow_registry.experiment_id(), run_name=f"leaderboard-{context.run.run_id[:8]}",
            tags={"plml.kind": "leaderboard", "dagster.run_id": context.run.run_id, "dagster.asset": "model_leaderboard",
                  "plml.selected": str(selection.winner), "plml.validated": str(selection.validated).lower()},
        ) as run:
            mlflow.log_text(table.to_csv(), "leaderboard.csv")
            mlflow.log_dict({"criteria": criteria.to_dict(), "selection": selection.to_dict()}, "selection.json")
            mlflow.log_metrics({f"{n}.{k}": float(v) for n, row in table.iterrows() for k, v in row.items()
                                if k in ("walk_forward_rank_ic_mean", "holdout_rank_ic", "holdout_sharpe", "dsr") and pd.notna(v)})
            (Path(tmp) / "leaderboard.png").write_bytes(png)
            mlflow.log_artifact(str(Path(tmp) / "leaderboard.png"), "plots")
            run_id = run.info.run_id
    failures = "\n".join(f"- **{n}**: {', '.join(f) if f else 'passes every criterion'}" for n, f in selection.failures.items())
    return dg.Output(
        {
            "table": json.loads(table.reset_index().to_json(orient="records")),
            "criteria": criteria.to_dict(),
            "selection": selection.to_dict(),
            "winner": winner,
            "baseline": baseline,
            "footing": evidence.footing,
            "mlflow_run_id": run_id,
        },
        metadata={
            "table": dg.MetadataValue.md(shown.to_markdown()),
            "selected": str(selection.winner),
            "why": selection.reason,
            "validated_on_holdout": selection.validated,
            "holdout_check": selection.validation,
            "criteria_per_candidate": dg.MetadataValue.md(failures or "no candidate"),
            "ties": ", ".join(selection.ties) or "none",
            "footing": dg.MetadataValue.md(
                "Every candidate is ranked on nested walk-forward scores: no fold is scored by a choice that saw it.\n"
                + "\n".join(f"- **{n}**: {how}" for n, how in evidence.footing.items())),
            "pbo_of_candidates": float(pbo),
            "per_fold_spread": dg.MetadataValue.md(markdown_image(png, "validation rank IC per fold and holdout, by candidate")),
            "mlflow_run_id": run_id,
            "seconds": round(time.perf_counter() - start, 1),
        },
    )


@dataclass
class Evidence:
    candidates: dict[str, Candidate]
    per_fold: pd.DataFrame  # candidate, scheme, fold, valid_rank_ic
    artefacts: dict[str, dict]  # what the registry needs to register a candidate
    baseline: str
    footing: dict[str, str]  # how each candidate's walk-forward scores were obtained


def gather_candidates(inputs: dict, prices: pd.DataFrame, labels: pd.DataFrame, settings: ExperimentSettings,
                      config: LeaderboardConfig) -> Evidence:
    """Each family, each ensemble and the baseline, scored on the same folds and holdout."""
    y_all, split = split_for(labels, settings)
    cv = {f: inputs[f"{f}_cv_results"] for f in FAMILIES}
    models = {f: inputs[f"{f}_model"] for f in FAMILIES}
    check_same_evaluation(cv, {f: m["holdout"] for f, m in models.items()})
    ens = inputs["ensemble_model"]
    if dict(ens["holdout"]) != dict(models[FAMILIES[0]]["holdout"]):
        raise ValueError("ensemble_model was built on another holdout than the families' models: re-materialize ensemble_model")
    trade = {"quantile": config.quantile, "cost_bps": config.cost_bps, "execution_lag": config.execution_lag_days,
             "holding_days": settings.horizon if config.holding_days is None else config.holding_days}
    candidates, rows, artefacts = {}, [], {}
    reference = inputs[f"{FAMILIES[0]}_oof_predictions"]
    footing: dict[str, str] = {}
    for f in FAMILIES:
        block, oof = cv[f], inputs[f"{f}_oof_predictions"]
        wf, kf = block[block["scheme"] == "walk_forward"], block[block["scheme"] == "kfold"]
        wf_oof = oof.loc[oof["scheme"] == "walk_forward", "prediction"]
        oof_returns, _ = long_short_returns(wf_oof, prices, **trade)
        _, holdout_sharpe = long_short_returns(inputs[f"{f}_holdout_predictions"]["prediction"], prices, **trade)
        counts = inputs[f"{f}_study"].get("counts", {})
        nested = nested_walk_forward(inputs[f"{f}_study"])
        if nested is not None and len(nested.fold_scores) == len(wf):
            wf_scores, oof_scores = nested.fold_scores, nested.date_scores if len(nested.date_scores) else None
            footing[f] = f"nested: walk-forward fold k scored by the trial chosen on folds < k (trials {nested.chosen})"
        else:  # no trial record (e.g. a study of 0 trials: the defaults, chosen on nothing)
            wf_scores, oof_scores = wf["valid_rank_ic"].tolist(), None
            footing[f] = ("defaults: no search, nothing chosen on the folds" if not counts.get("COMPLETE")
                          else "best-of-N (no per-trial record: re-materialize the study)")
        if oof_scores is None:
            oof_scores = per_date_ic(y_all.reindex(wf_oof.index).to_numpy(), wf_oof.to_numpy(),
                                     wf_oof.index.get_level_values("date"), method="spearman")
        candidates[f] = Candidate(
            "model", wf_scores, kf["valid_rank_ic"].tolist(), gap=float(wf["rank_ic_gap"].mean()), oof_scores=oof_scores,
            oof_returns=oof_returns, holdout_rank_ic=float(models[f]["metrics"]["holdout_rank_ic"]), holdout_sharpe=holdout_sharpe,
            fit_seconds=float(models[f]["fit_seconds"]),
            configurations=max(1, int(sum(counts.get(s, 0) for s in ("COMPLETE", "PRUNED", "FAIL")))),
        )
        rows += [{"candidate": f, "scheme": "walk_forward", "fold": k, "valid_rank_ic": v} for k, v in enumerate(wf_scores, start=1)]
        rows += [{"candidate": f, "scheme": "kfold", "fold": r["fold"], "valid_rank_ic": r["valid_rank_ic"]} for _, r in kf.iterrows()]
        m = models[f]
        artefacts[f] = {"name": f, "kind": "model", "family": f, "model_uri": m["model_uri"], "run_id": m["run_id"],
                        "features": m["features"], "tags": m["tags"], "metrics": m["metrics"], "holdout": m["holdout"],
                        "description": f"{f} on {len(m['features'])} features"}
    predictions = inputs["ensemble_predictions"]
    gaps = {f: candidates[f].gap for f in ens["members"]}
    for method, result in ens["methods"].items():
        name = f"ensemble_{method}"
        mine = predictions[predictions["method"] == method]
        per_fold = pd.DataFrame(result["per_fold"])
        mine_oof = mine.loc[mine["split"] == "oof", "prediction"]
        oof_returns, _ = long_short_returns(mine_oof, prices, **trade)
        footing[name] = "nested: weights fitted on earlier folds only (ensemble_model)"
        _, holdout_sharpe = long_short_returns(mine.loc[mine["split"] == "holdout", "prediction"], prices, **trade)
        weights = result["fit"]["weights"]
        # An ensemble has no honest in-sample score of its own: its gap is its members', weighted.
        total = sum(abs(w) for w in weights.values()) or 1.0
        gap = sum(abs(w) * gaps[m] for m, w in weights.items()) / total
        candidates[name] = Candidate(
            "ensemble", per_fold["rank_ic"].tolist(), gap=gap, oof_returns=oof_returns,
            holdout_rank_ic=float(result["holdout_metrics"]["rank_ic"]), holdout_sharpe=holdout_sharpe,
            fit_seconds=float(ens["fit_seconds"]), members=tuple(ens["members"]),
            oof_scores=per_date_ic(y_all.reindex(mine_oof.index).to_numpy(), mine_oof.to_numpy(),
                                   mine_oof.index.get_level_values("date"), method="spearman"),
        )
        rows += [{"candidate": name, "scheme": "walk_forward", "fold": r["fold"], "valid_rank_ic": r["rank_ic"]} for r in result["per_fold"]]
        features = sorted({c for f in ens["members"] for c in models[f]["features"]})
        artefacts[name] = {"name": name, "kind": "ensemble", "family": "ensemble", "model_uri": result["model_uri"],
                           "run_id": result["run_id"], "features": features, "tags": result["tags"],
                           "metrics": {f"holdout_{k}": v for k, v in result["holdout_metrics"].items()},
                           "holdout": ens["holdout"], "description": f"{method} ensemble of {', '.join(ens['members'])}"}
    baseline = f"momentum_{config.baseline_window}d"
    momentum = momentum_score(prices, config.baseline_window)
    by_scheme = {s: reference[reference["scheme"] == s] for s in ("walk_forward", "kfold")}
    folds = {s: frame["fold"] for s, frame in by_scheme.items()}
    ics = {s: fold_rank_ics(momentum.reindex(frame.index), y_all.reindex(frame.index), folds[s]) for s, frame in by_scheme.items()}
    hold_index = inputs[f"{FAMILIES[0]}_holdout_predictions"].index
    hold = evaluate_predictions(y_all.reindex(hold_index).to_numpy(), momentum.reindex(hold_index).to_numpy(),
                                hold_index.get_level_values("date"))
    oof_returns, _ = long_short_returns(momentum.reindex(by_scheme["walk_forward"].index), prices, **trade)
    _, holdout_sharpe = long_short_returns(momentum.reindex(hold_index), prices, **trade)
    candidates[baseline] = Candidate("baseline", ics["walk_forward"], ics["kfold"], oof_returns=oof_returns,
                                     holdout_rank_ic=float(hold["rank_ic"]), holdout_sharpe=holdout_sharpe, fit_seconds=0.0)
    rows += [{"candidate": baseline, "scheme": s, "fold": k, "valid_rank_ic": v} for s in ics for k, v in enumerate(ics[s], start=1)]
    footing[baseline] = "fixed rule: nothing chosen"
    return Evidence(candidates, pd.DataFrame(rows), artefacts, baseline, footing)
