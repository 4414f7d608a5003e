"""Purged time-series cross-validation on the training window."""


import json
import time

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from plml_assets.defs.selection.assets import selector_for
from plml_assets.defs.shared import FAMILIES, TRAINING_RETRY, fail_fast_on_bad_input, fold_columns, split_for, training_window
from plml_assets.lib.metrics import summarize_folds
from plml_assets.lib.plots import fold_metrics_plot, markdown_image
from plml_assets.lib.splits import PurgedKFold, PurgedWalkForward
from plml_assets.lib.training import cross_validate, early_stopping_split, fold_assignments, folds_from_assignments
from plml_assets.resources.settings import ExperimentSettings, SelectionSettings

SCHEMES = ("walk_forward", "kfold")
METRICS = ("ic", "rank_ic", "rmse", "directional_accuracy")


class CVSplitsConfig(dg.Config):
    walk_forward_splits: int = Field(default=5, ge=2, le=50, description="purged walk-forward (expanding) folds")
    kfold_splits: int = Field(default=5, ge=2, le=50, description="purged K-fold folds")


@dg.asset(group_name="validation", kinds={"pandas"}, description="Date-level fold assignments: purged walk-forward and purged K-fold, with embargo.")
def cv_splits(
    context: dg.AssetExecutionContext, config: CVSplitsConfig, labels: pd.DataFrame, settings: ExperimentSettings
) -> dg.Output[pd.DataFrame]:
    _, split = split_for(labels, settings)
    wf_splits = min(config.walk_forward_splits, 3) if settings.quick else config.walk_forward_splits
    kf_splits = min(config.kfold_splits, 3) if settings.quick else config.kfold_splits
    splitters = {
        "walk_forward": PurgedWalkForward(n_splits=wf_splits, horizon=settings.horizon, embargo=settings.embargo_days),
        "kfold": PurgedKFold(n_splits=kf_splits, horizon=settings.horizon, embargo=settings.embargo_days),
    }
    table = pd.concat([fold_assignments(s, split.train_dates, name) for name, s in splitters.items()], ignore_index=True)
    summary = (
        table.groupby(["scheme", "fold", "role"])["date"].agg(["min", "max", "count"]).unstack("role")
    )
    summary.columns = [f"{role}_{stat}" for stat, role in summary.columns]
    context.log.info(f"cv_splits: {len(summary)} folds over {len(split.train_dates)} training dates")
    return dg.Output(
        table,
        metadata={
            "folds": dg.MetadataValue.md(summary.astype(str).to_markdown()),
            "horizon_days": settings.horizon,
            "embargo_days": settings.embargo_days,
            "training_window": dg.MetadataValue.json(split.describe()),
            "splitters": dg.MetadataValue.json({k: v.describe() for k, v in splitters.items()}),
        },
    )


@dg.asset(
    group_name="validation",
    kinds={"xgboost"},
    retry_policy=TRAINING_RETRY,
    description="The features every CV fold selects on its own fitting rows (selection re-run inside each fold, "
    "interaction pairs included: each fold may use only the pairs of its own top-k base features), computed once and "
    "shared by every family's study and CV results, so no CV score is flattered by features chosen on its test dates.",
)
def cv_fold_features(
    context: dg.AssetExecutionContext,
    features: pd.DataFrame,
    feature_recipes: dict,
    labels: pd.DataFrame,
    cv_splits: pd.DataFrame,
    settings: ExperimentSettings,
    selection: SelectionSettings,
) -> dg.Output[pd.DataFrame]:
    with fail_fast_on_bad_input():
        start = time.perf_counter()
        X, y, split = training_window(features, labels, settings)
        unknown = set(cv_splits["date"]) - set(split.train_dates)
        if unknown:
            raise ValueError(
                f"cv_splits holds {len(unknown)} date(s) outside the current training window "
                f"{split.describe()['train_start']}..{split.describe()['train_end']}: re-materialize cv_splits"
            )
        select = selector_for(X, y, selection, settings, feature_recipes)
        dates = X.index.get_level_values("date").to_numpy()
        parts = []
        for scheme in SCHEMES:
            for k, (train_idx, _) in enumerate(folds_from_assignments(X, cv_splits[cv_splits["scheme"] == scheme]), start=1):
                try:
                    fit_mask, _ = early_stopping_split(dates[train_idx], settings.horizon)
                except ValueError as exc:
                    raise ValueError(f"{scheme} fold {k}: {exc}; use fewer folds or more history") from exc
                chosen = select(train_idx[fit_mask])
                parts.append(pd.DataFrame({"scheme": scheme, "fold": k, "feature": chosen, "rank": np.arange(1, len(chosen) + 1)}))
                context.log.info(f"cv_fold_features: {scheme} fold {k}: {len(chosen)} features on {int(fit_mask.sum()):,} fitting rows")
        table = pd.concat(parts, ignore_index=True)
    n_folds = table.groupby(["scheme", "fold"]).ngroups
    stability = (table["feature"].value_counts() / n_folds).rename("share_of_folds").to_frame()
    return dg.Output(
        table,
        metadata={
            "folds": n_folds,
            "features_per_fold": float(table.groupby(["scheme", "fold"]).size().mean()),
            "feature_stability": dg.MetadataValue.md(stability.head(40).round(2).to_markdown()),
            "seconds": round(time.perf_counter() - start, 1),
        },
    )


class CVResultsConfig(dg.Config):
    gap_bound: float = Field(default=0.10, description="flag overfitting when train rank IC exceeds validation rank IC by more than this")


def build_cv_results_asset(family: str) -> dg.AssetsDefinition:
    kind = family if family in ("xgboost", "lightgbm") else "pytorch"

    @dg.multi_asset(
        name=f"{family}_cv",
        group_name="validation",
        outs={
            f"{family}_cv_results": dg.AssetOut(
                kinds={kind},
                description=f"{family} with the parameters of {family}_study: metrics per fold and aggregate for each CV "
                "scheme, with an overfitting flag; each fold uses the features it selected on its own training rows. The "
                "walk-forward numbers are optimistic when the study searched on those folds; the holdout is the honest number.",
            ),
            f"{family}_oof_predictions": dg.AssetOut(
                kinds={kind},
                description=f"{family}'s out-of-fold predictions: every validation row of every fold of both CV schemes, "
                "scored by the model of that fold (fitted without it). Ensembles and the leaderboard are built from these, "
                "never from in-sample predictions.",
            ),
        },
        retry_policy=TRAINING_RETRY,
        ins={"study": dg.AssetIn(f"{family}_study")},
    )
    def _cv_results(
        context: dg.AssetExecutionContext,
        config: CVResultsConfig,
        features: pd.DataFrame,
        labels: pd.DataFrame,
        cv_splits: pd.DataFrame,
        cv_fold_features: pd.DataFrame,
        study: dict,
        settings: ExperimentSettings,
    ):
        with fail_fast_on_bad_input():
            start = time.perf_counter()
            if not 0 <= config.gap_bound <= 2:
                raise ValueError(f"gap_bound must be between 0 and 2, got {config.gap_bound}")
            X, y, _ = training_window(features, labels, settings)
            params = study["params"]
            frames, predictions = [], []
            for scheme in SCHEMES:
                folds = folds_from_assignments(X, cv_splits[cv_splits["scheme"] == scheme])
                context.log.info(f"{family} {scheme}: {len(folds)} folds on {len(X):,} rows")
                fold_predictions: list[pd.Series] = []
                per_fold, _ = cross_validate(
                    params, X, y, folds, settings.horizon, config.gap_bound, log=context.log.info,
                    family=family, fold_columns=fold_columns(cv_fold_features, scheme), fold_predictions=fold_predictions,
                )
                per_fold.insert(0, "scheme", scheme)
                frames.append(per_fold)
                for k, series in enumerate(fold_predictions, start=1):
                    predictions.append(pd.DataFrame({"scheme": scheme, "fold": k, "prediction": series.to_numpy()}, index=series.index))
            results = pd.concat(frames, ignore_index=True)
            results.insert(0, "family", family)
            results["params"] = json.dumps(params, sort_keys=True)
            oof = pd.concat(predictions)
        yield dg.Output(results, output_name=f"{family}_cv_results",
                        metadata=cv_results_metadata(context, results, config.gap_bound, params, start))
        yield dg.Output(oof, output_name=f"{family}_oof_predictions", metadata={
            "rows": len(oof),
            "rows_per_scheme": dg.MetadataValue.json(oof["scheme"].value_counts().to_dict()),
            "dates": int(oof.index.get_level_values("date").nunique()),
        })

    return _cv_results


def cv_results_metadata(context, results: pd.DataFrame, gap_bound: float, params: dict, start: float) -> dict[str, object]:
    metadata: dict[str, object] = {}
    for scheme, block in results.groupby("scheme"):
        agg = summarize_folds(block[[f"valid_{m}" for m in METRICS] + ["rank_ic_gap"]].to_dict("records"))
        for m in METRICS:
            metadata[f"{scheme}_{m}"] = float(agg[f"valid_{m}_mean"])
        metadata[f"{scheme}_rank_ic_std"] = float(agg["valid_rank_ic_std"])
        metadata[f"{scheme}_rank_ic_gap"] = float(agg["rank_ic_gap_mean"])
        metadata[f"{scheme}_overfit_folds"] = int(block["overfit_flag"].sum())
    overfit = bool(results["overfit_flag"].any())
    if overfit:
        context.log.warning(
            f"overfitting flag: {int(results['overfit_flag'].sum())} fold(s) with train-validation rank IC gap > {gap_bound}"
        )
    metadata.update(
        {
            "overfit_flag": overfit,
            "gap_bound": gap_bound,
            "per_fold": dg.MetadataValue.md(
                results[["scheme", "fold", "test_start", "test_end", "valid_ic", "valid_rank_ic", "valid_rmse",
                         "valid_directional_accuracy", "train_rank_ic", "rank_ic_gap", "best_iteration", "fit_seconds"]]
                .round(4).to_markdown(index=False)
            ),
            "fold_plot": dg.MetadataValue.md(markdown_image(fold_metrics_plot(results), "rank IC per fold")),
            "features_per_fold": float(results["n_features"].mean()),
            "fit_seconds_total": float(results["fit_seconds"].sum()),
            "seconds": round(time.perf_counter() - start, 1),
            "params": dg.MetadataValue.json(params),
        }
    )
    return metadata


CV_RESULTS = [build_cv_results_asset(family) for family in FAMILIES]


def cv_summary(results: pd.DataFrame, scheme: str = "walk_forward") -> dict[str, float]:
    block = results[results["scheme"] == scheme]
    out = {f"cv_{scheme}_{m}": float(np.nanmean(block[f"valid_{m}"])) for m in METRICS}
    out[f"cv_{scheme}_rank_ic_gap"] = float(np.nanmean(block["rank_ic_gap"]))
    return out


class CPCVConfig(dg.Config):
    n_groups: int = Field(default=6, description="CPCV date groups N (quick profile: 4)")
    n_test_groups: int = Field(default=2, description="test groups k per split: C(N, k) splits, C(N-1, k-1) backtest paths")
    cost_bps: float = Field(default=5.0, description="transaction cost per side of the path portfolios")
    quantile: float = Field(default=0.2, description="long-short quantile of the path portfolios")


@dg.asset(
    group_name="validation",
    kinds={"xgboost"},
    retry_policy=TRAINING_RETRY,
    description="Combinatorial Purged CV on the training window with the parameters of xgboost_study: every split refits (with its own feature selection), "
    "the out-of-sample predictions recombine into backtest paths, each traded long-short net of costs.",
)
def cpcv_paths(
    context: dg.AssetExecutionContext,
    config: CPCVConfig,
    market_prices: pd.DataFrame,
    features: pd.DataFrame,
    feature_recipes: dict,
    labels: pd.DataFrame,
    xgboost_study: dict,
    settings: ExperimentSettings,
    selection: SelectionSettings,
) -> dg.Output[pd.DataFrame]:
    from plml_assets.lib import backtest as bt
    from plml_assets.lib.plots import histogram_plot
    from plml_assets.lib.splits import CombinatorialPurgedCV

    with fail_fast_on_bad_input():
        start = time.perf_counter()
        X, y, split = training_window(features, labels, settings)
        n_groups = min(config.n_groups, 4) if settings.quick else config.n_groups
        splitter = CombinatorialPurgedCV(
            n_groups=n_groups, n_test_groups=config.n_test_groups, horizon=settings.horizon, embargo=settings.embargo_days
        )
        dates = X.index.get_level_values("date")
        folds = list(splitter.split(X, y, groups=dates))
        predictions: list[pd.Series] = []
        per_split, _ = cross_validate(
            xgboost_study["params"], X, y, folds, settings.horizon, gap_bound=2.0,
            select=selector_for(X, y, selection, settings, feature_recipes), log=context.log.info, fold_predictions=predictions,
        )
        table, stats = bt.cpcv_path_backtests(
            predictions, splitter.paths(split.train_dates), market_prices, labels.iloc[:, 0],
            quantile=config.quantile, cost_bps=config.cost_bps,
        )
    sharpe = stats["sharpe"]
    png = histogram_plot(sharpe, f"CPCV path net Sharpe: {len(sharpe)} paths, mean {sharpe.mean():.2f}",
                         "annualized net Sharpe (long-short)")
    context.log.info(
        f"cpcv_paths: {len(folds)} splits, {len(sharpe)} paths, net Sharpe mean {sharpe.mean():.2f} "
        f"(min {sharpe.min():.2f}, max {sharpe.max():.2f}) in {time.perf_counter() - start:.0f} s"
    )
    return dg.Output(
        table,
        metadata={
            "splits": len(folds),
            "paths": len(sharpe),
            "path_sharpe_mean": float(sharpe.mean()),
            "path_sharpe_std": float(sharpe.std(ddof=1)) if len(sharpe) > 1 else 0.0,
            "path_sharpe_min": float(sharpe.min()),
            "path_sharpe_max": float(sharpe.max()),
            "share_of_paths_losing": float((sharpe < 0).mean()),
            "split_rank_ic_mean": float(per_split["valid_rank_ic"].mean()),
            "paths_table": dg.MetadataValue.md(stats.round(4).to_markdown()),
            "path_sharpe_histogram": dg.MetadataValue.md(markdown_image(png, "CPCV path Sharpe")),
            "splitter": dg.MetadataValue.json(splitter.describe()),
        },
    )


class ValidationReportConfig(dg.Config):
    pbo_warn: float = Field(default=0.25, description="warn when the probability of backtest overfitting exceeds this")
    pbo_fail: float = Field(default=0.5, description="fail when PBO exceeds this (0.5 = no better than picking at random)")
    dsr_warn: float = Field(default=0.95, description="warn when the deflated Sharpe ratio is below this")
    dsr_fail: float = Field(default=0.5, description="fail when the deflated Sharpe ratio is below this")
    gap_warn: float = Field(default=0.1, description="warn when the mean train-validation rank-IC gap exceeds this")
    gap_fail: float = Field(default=0.2, description="fail when the mean train-validation rank-IC gap exceeds this")
    pbo_blocks: int = Field(default=16, description="XGBoost backtest evidence: CSCV blocks S for its PBO over the backtest's "
                            "strategies (C(S, S/2) combinations); the candidates' PBO is the leaderboard's")
    pbo_min_block_days: int = Field(
        default=20, description="XGBoost backtest evidence: fewest trading days per CSCV block (short backtests get fewer "
        "blocks rather than noisy ones)"
    )


@dg.asset(
    group_name="validation",
    kinds={"pandas"},
    description="A pass/warn/fail verdict, read by the promotion gate, about the candidate the leaderboard picked (a single "
    "model or an ensemble): PBO of the candidate set, its out-of-fold deflated Sharpe (deflated over every configuration "
    "tried), probabilistic Sharpe, train/validation gap and losing folds. When the pick is XGBoost, the walk-forward "
    "backtest with refits and the CPCV paths are judged too, and the worse verdict stands.",
)
def validation_report(
    context: dg.AssetExecutionContext,
    config: ValidationReportConfig,
    model_leaderboard: dict,
    xgboost_cv_results: pd.DataFrame,
    cpcv_paths: pd.DataFrame,
    backtest: pd.DataFrame,
) -> dg.Output[dict]:
    from plml_assets.lib import overfitting as of
    from plml_assets.lib.leaderboard import candidate_statistics

    with fail_fast_on_bad_input():
        bounds = of.ValidationBounds(
            pbo_warn=config.pbo_warn, pbo_fail=config.pbo_fail, dsr_warn=config.dsr_warn, dsr_fail=config.dsr_fail,
            gap_warn=config.gap_warn, gap_fail=config.gap_fail,
        )
        board = pd.DataFrame(model_leaderboard["table"]).set_index("candidate")
        subject = model_leaderboard["selection"]["winner"]
        candidates = [str(n) for n in board.index[board["kind"] != "baseline"]]
        if subject is None:
            leaderboard_stats: dict = {}
            verdict, reasons = "fail", [f"fail: the leaderboard picked no candidate ({model_leaderboard['selection']['reason']})"]
        else:
            pbo = model_leaderboard["selection"].get("pbo")
            leaderboard_stats = candidate_statistics(board, subject, float(pbo) if pbo is not None else float("nan"))
            verdict, reasons = of.verdict(leaderboard_stats, bounds)
            unmeasured = [key for key in ("pbo", "dsr") if not np.isfinite(leaderboard_stats[key])]
            if unmeasured:  # too few OOF dates or candidates: the pick is not cleared on what was not measured
                verdict = of.worst_verdict(verdict, "warn")
                reasons.append(f"warn: {' and '.join(unmeasured)} not measured (too few out-of-fold dates or candidates "
                               "with OOF returns)")
        backtest_evidence = xgboost_backtest_evidence(config, bounds, xgboost_cv_results, cpcv_paths, backtest)
        if subject == "xgboost":  # a refitting backtest of the pick exists: it is judged as well
            verdict = of.worst_verdict(verdict, backtest_evidence["verdict"])
            reasons += [f"walk-forward backtest: {r}" for r in backtest_evidence["reasons"]]
    report = {
        "subject": subject,
        "leaderboard_run_id": model_leaderboard["mlflow_run_id"],
        "verdict": verdict,
        "reasons": reasons,
        "pbo": leaderboard_stats.get("pbo", float("nan")),
        "pbo_configurations": candidates,
        "dsr": leaderboard_stats.get("dsr", float("nan")),
        "psr": leaderboard_stats.get("psr", float("nan")),
        "oof_sharpe": leaderboard_stats.get("oof_sharpe", float("nan")),
        "gap_mean": leaderboard_stats.get("gap_mean", float("nan")),
        "share_valid_below_zero": leaderboard_stats.get("share_valid_below_zero", float("nan")),
        "xgboost_backtest": backtest_evidence,
    }
    log = context.log.warning if verdict != "pass" else context.log.info
    log(f"validation_report on {subject}: {verdict}" + (": " + "; ".join(reasons) if reasons else ""))
    return dg.Output(
        report,
        metadata={
            "subject": str(subject),
            "verdict": verdict,
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in reasons) or "none"),
            "pbo_of_candidates": report["pbo"],
            "dsr": report["dsr"],
            "psr": report["psr"],
            "oof_net_sharpe": report["oof_sharpe"],
            "gap_mean": report["gap_mean"],
            "candidates": ", ".join(candidates),
            "judged_by": "leaderboard statistics" + (" and the xgboost walk-forward backtest" if subject == "xgboost" else ""),
            "xgboost_backtest_verdict": backtest_evidence["verdict"],
            "xgboost_backtest_pbo": backtest_evidence["pbo"],
            "xgboost_backtest_dsr": backtest_evidence["dsr"],
            "xgboost_net_sharpe": backtest_evidence["model_sharpe"],
            "cpcv_path_sharpe_mean": float(pd.Series(backtest_evidence["cpcv_path_sharpe"]).mean()),
        },
    )


def xgboost_backtest_evidence(config: ValidationReportConfig, bounds, cv_results: pd.DataFrame, cpcv_paths: pd.DataFrame,
                              backtest: pd.DataFrame) -> dict:
    """Issue 3's statistics of the XGBoost family's walk-forward backtest with refits: PBO over the
    strategies it was compared with, its deflated and probabilistic Sharpe, the CV gap, CPCV path Sharpes."""
    from plml_assets.lib import overfitting as of

    trials = backtest[[c for c in backtest.columns if c.endswith(":long_short")]].fillna(0.0)
    model = trials["xgboost:long_short"]
    n_blocks = max(2, min(config.pbo_blocks, (len(trials) // config.pbo_min_block_days) // 2 * 2))
    pbo = of.probability_of_backtest_overfitting(trials.to_numpy(), n_splits=n_blocks)
    sr_var = of.trial_sharpe_variance(trials)
    dsr = of.deflated_sharpe_ratio(model.to_numpy(), n_trials=trials.shape[1], sr_variance=sr_var)
    psr = of.probabilistic_sharpe_ratio(model.to_numpy())
    gap = of.train_validation_gap(cv_results[cv_results["scheme"] == "walk_forward"])
    path_sharpe = pd.Series({c: of.sharpe_ratio(cpcv_paths[c].dropna(), periods_per_year=252) for c in cpcv_paths})
    verdict, reasons = of.verdict({**pbo.summary(), "dsr": dsr, "psr": psr, **gap}, bounds)
    return {
        "verdict": verdict,
        "reasons": reasons,
        "pbo": float(pbo.pbo),
        "pbo_configurations": list(trials.columns),
        "probability_of_loss": float(pbo.probability_of_loss),
        "degradation_slope": float(pbo.degradation_slope),
        "dsr": float(dsr),
        "psr": float(psr),
        "model_sharpe": float(of.sharpe_ratio(model, periods_per_year=252)),
        "trial_sharpe_variance": float(sr_var),
        "gap": {k: (float(v) if isinstance(v, (int, float)) else v) for k, v in gap.items()},
        "cpcv_path_sharpe": {k: float(v) for k, v in path_sharpe.items()},
    }
