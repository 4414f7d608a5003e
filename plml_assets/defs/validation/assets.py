"""Purged time-series cross-validation on the training window."""


import json
import time

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from plml_assets.defs.selection.assets import selection_plan
from plml_assets.defs.shared import FAMILIES, FAMILY_KIND, TRAINING_RETRY, fail_fast_on_bad_input, fold_columns, split_for, step_tags, training_window
from plml_assets.lib.models.training import cross_validate, early_stopping_split, fold_assignments, folds_from_assignments
from plml_assets.lib.plots import fold_metrics_plot, markdown_image
from plml_assets.lib.registry.provenance import content_digest
from plml_assets.lib.selection.importance import describe_fold_importance, fold_importance, summarize_importances
from plml_assets.lib.selection.pipeline import fold_selector
from plml_assets.lib.validation.metrics import summarize_folds
from plml_assets.lib.validation.splits import PurgedKFold, PurgedWalkForward
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
        select = fold_selector(X, y, selection_plan(selection, settings), feature_recipes)
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


#: validation dates per fold the quick profile scores permutations on
QUICK_PERMUTATION_DATES = 20


class CVResultsConfig(dg.Config):
    gap_bound: float = Field(default=0.10, description="flag overfitting when train rank IC exceeds validation rank IC by more than this")
    permutation_repeats: int = Field(default=2, ge=1, le=20, description="{family}_fold_importances: seeded shuffles per "
                                     "feature and walk-forward fold (quick profile: 1)")
    permutation_max_dates: int = Field(default=60, ge=5, description="{family}_fold_importances: validation dates per fold "
                                       "the permutations are scored on, spread evenly (quick profile: at most 20)")


def build_cv_results_asset(family: str) -> dg.AssetsDefinition:
    kind = FAMILY_KIND[family]

    @dg.multi_asset(
        name=f"{family}_cv",
        op_tags=step_tags("cv", family),
        outs={
            f"{family}_cv_results": dg.AssetOut(
                kinds={kind}, group_name="validation", is_required=False,
                description=f"{family} with the parameters of {family}_study: metrics per fold and aggregate for each CV "
                "scheme, with an overfitting flag; each fold uses the features it selected on its own training rows. The "
                "walk-forward numbers are optimistic when the study searched on those folds; the holdout is the honest number.",
            ),
            f"{family}_oof_predictions": dg.AssetOut(
                kinds={kind}, group_name="validation", is_required=False,
                description=f"{family}'s out-of-fold predictions: every validation row of every fold of both CV schemes, "
                "scored by the model of that fold (fitted without it). Ensembles and the leaderboard are built from these, "
                "never from in-sample predictions.",
            ),
            f"{family}_fold_importances": dg.AssetOut(
                kinds={"pandas"}, group_name="importance", is_required=False,
                description=f"Per walk-forward fold, on the model {family}_cv fitted there (the fold's own features, the "
                "study's parameters): gain importance (trees) and permutation importance on the fold's validation rows "
                "(a feature shuffled across symbols within each date); feature_importance compares them across folds.",
            ),
        },
        can_subset=True,  # a selection without {family}_fold_importances skips the permutations
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
            selected = {k.to_user_string() for k in context.selected_asset_keys}
            X, y, _ = training_window(features, labels, settings)
            params = study["params"]
            frames, predictions, importances = [], [], []
            repeats = 1 if settings.quick else config.permutation_repeats
            max_dates = min(config.permutation_max_dates, QUICK_PERMUTATION_DATES) if settings.quick else config.permutation_max_dates
            importance_s, importance_error = 0.0, None
            for scheme in SCHEMES:
                folds = folds_from_assignments(X, cv_splits[cv_splits["scheme"] == scheme])
                context.log.info(f"{family} {scheme}: {len(folds)} folds on {len(X):,} rows")
                fold_predictions: list[pd.Series] = []

                def measure(k, model, Xf, test_idx, n_folds=len(folds)):  # permutation importance on the fit just made
                    nonlocal importance_s, importance_error
                    if importance_error is not None:
                        return
                    t0 = time.perf_counter()
                    try:
                        importances.append(fold_importance(model, Xf, y, test_idx, k, repeats=repeats, seed=settings.seed, max_dates=max_dates))
                    except Exception as exc:  # an analysis leaf: it must not take the family's CV (and all after it) down
                        importance_error = f"{type(exc).__name__}: {exc}"
                        context.log.error(f"{family}_fold_importances: fold {k}/{n_folds} failed ({importance_error}); the importances "
                                          "are not stored this run (feature_importance is skipped), the CV results are")
                        return
                    importance_s += time.perf_counter() - t0
                    context.log.info(describe_fold_importance(importances[-1], family, n_folds) + f" ({time.perf_counter() - t0:.1f} s)")

                per_fold, _ = cross_validate(
                    params, X, y, folds, settings.horizon, config.gap_bound, log=context.log.info,
                    family=family, fold_columns=fold_columns(cv_fold_features, scheme), fold_predictions=fold_predictions,
                    on_fold_model=measure if scheme == "walk_forward" and f"{family}_fold_importances" in selected else None,
                )
                per_fold.insert(0, "scheme", scheme)
                frames.append(per_fold)
                for k, series in enumerate(fold_predictions, start=1):
                    predictions.append(pd.DataFrame({"scheme": scheme, "fold": k, "prediction": series.to_numpy()}, index=series.index))
            results = pd.concat(frames, ignore_index=True)
            results.insert(0, "family", family)
            results["params"] = json.dumps(params, sort_keys=True)
            oof = pd.concat(predictions)
        if f"{family}_cv_results" in selected:
            yield dg.Output(results, output_name=f"{family}_cv_results",
                            metadata=cv_results_metadata(context, results, config.gap_bound, params, start))
        if f"{family}_oof_predictions" in selected:
            yield dg.Output(oof, output_name=f"{family}_oof_predictions", metadata={
                "rows": len(oof),
                "rows_per_scheme": dg.MetadataValue.json(oof["scheme"].value_counts().to_dict()),
                "dates": int(oof.index.get_level_values("date").nunique()),
            })
        if f"{family}_fold_importances" not in selected or importance_error is not None:
            return
        table = pd.concat(importances, ignore_index=True)
        yield dg.Output(table, output_name=f"{family}_fold_importances", metadata={
            "folds": int(table["fold"].nunique()), "repeats": repeats, "max_dates": max_dates, "seconds": round(importance_s, 1),
            "top": dg.MetadataValue.md(summarize_importances(table).head(10).round(4).to_markdown()),
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


class CPCVSplitConfig(dg.Config):
    n_groups: int = Field(default=6, description="CPCV date groups N (quick profile: 4)")
    n_test_groups: int = Field(default=2, description="test groups k per split: C(N, k) splits, C(N-1, k-1) backtest paths")


@dg.asset(
    group_name="validation",
    op_tags=step_tags("cpcv_fold_features"),
    kinds={"pandas"},
    description="The Combinatorial Purged CV splits of the training window and the features each split selected on its "
    "own training rows (its own interaction pairs too), made once, before the leaderboard: every family's "
    "{family}_cpcv_predictions refits on them and cpcv_paths combines the pick's members.",
)
def cpcv_fold_features(
    context: dg.AssetExecutionContext,
    config: CPCVSplitConfig,
    features: pd.DataFrame,
    feature_recipes: dict,
    labels: pd.DataFrame,
    settings: ExperimentSettings,
    selection: SelectionSettings,
) -> dg.Output[dict]:
    with fail_fast_on_bad_input():
        start = time.perf_counter()
        X, y, split = training_window(features, labels, settings)
        splitter = _cpcv_splitter(config.n_groups, config.n_test_groups, settings)
        dates = X.index.get_level_values("date")
        folds = list(splitter.split(X, y, groups=dates))
        select = fold_selector(X, y, selection_plan(selection, settings), feature_recipes)
        date_values = dates.to_numpy()
        columns = []
        for k, (train_idx, _) in enumerate(folds, start=1):  # one feature selection per split, shared by every member
            fit_mask, _ = early_stopping_split(date_values[train_idx], settings.horizon)
            columns.append(select(train_idx[fit_mask]))
            context.log.info(f"cpcv_fold_features: split {k}/{len(folds)}: {len(columns[-1])} features on {int(fit_mask.sum()):,} fitting rows")
    window = split.describe()
    out = {"splitter": splitter.describe(), "train_start": window["train_start"], "train_end": window["train_end"],
           "train_dates": len(split.train_dates), "columns": columns, "data_digest": content_digest(y, X)}
    return dg.Output(out, metadata={
        "splits": len(folds),
        "features_per_split": float(np.mean([len(c) for c in columns])),
        "splitter": dg.MetadataValue.json(splitter.describe()),
        "seconds": round(time.perf_counter() - start, 1),
    })


def _cpcv_splitter(n_groups: int, n_test_groups: int, settings: ExperimentSettings):
    from plml_assets.lib.validation.splits import CombinatorialPurgedCV

    return CombinatorialPurgedCV(n_groups=min(n_groups, 4) if settings.quick else n_groups, n_test_groups=n_test_groups,
                                 horizon=settings.horizon, embargo=settings.embargo_days)


def cpcv_folds(features: pd.DataFrame, labels: pd.DataFrame, cpcv_fold_features: dict, settings: ExperimentSettings):
    """The training window and the CPCV splits of ``cpcv_fold_features``, refused when they were made
    for another window, other features or labels, or name columns the features no longer have.
    Returns (X, y, split, splitter, folds, columns per split)."""
    from plml_assets.lib.validation.splits import CombinatorialPurgedCV

    X, y, split = training_window(features, labels, settings)
    made = cpcv_fold_features["splitter"]
    splitter = CombinatorialPurgedCV(**{k: made[k] for k in ("n_groups", "n_test_groups", "horizon", "embargo")})
    window = split.describe()
    if (splitter.horizon, splitter.embargo) != (settings.horizon, settings.embargo_days) or (
            cpcv_fold_features["train_start"], cpcv_fold_features["train_end"], cpcv_fold_features["train_dates"]) != (
            window["train_start"], window["train_end"], len(split.train_dates)):
        raise ValueError(
            f"cpcv_fold_features was made for training window {cpcv_fold_features['train_start']}..{cpcv_fold_features['train_end']} "
            f"({cpcv_fold_features['train_dates']} dates, horizon {splitter.horizon}, embargo {splitter.embargo}), not this one "
            f"({window['train_start']}..{window['train_end']}, {len(split.train_dates)} dates, horizon {settings.horizon}, "
            f"embargo {settings.embargo_days}): re-materialize cpcv_fold_features"
        )
    made_from = cpcv_fold_features.get("data_digest")
    if made_from is not None and made_from != content_digest(y, X):
        raise ValueError(
            f"cpcv_fold_features selected its features on other features or labels (digest {made_from}) than these "
            f"({content_digest(y, X)}): re-materialize cpcv_fold_features")
    folds = list(splitter.split(X, y, groups=X.index.get_level_values("date")))
    columns = cpcv_fold_features["columns"]
    if len(columns) != len(folds):
        raise ValueError(f"cpcv_fold_features holds {len(columns)} splits, the splitter makes {len(folds)}: re-materialize it")
    missing = sorted({c for chosen in columns for c in chosen} - set(X.columns))
    if missing:
        raise ValueError(f"cpcv_fold_features chose features the features asset no longer has: {missing[:10]}"
                         f"{' ...' if len(missing) > 10 else ''}: re-materialize cpcv_fold_features")
    return X, y, split, splitter, folds, columns


class CPCVConfig(dg.Config):
    cost_bps: float = Field(default=5.0, ge=0, description="transaction cost per side of the path portfolios")
    quantile: float = Field(default=0.2, description="long-short quantile of the path portfolios")
    holding_days: int | None = Field(default=None, description="tranche holding days of the path portfolios (None: the horizon)")
    execution_lag_days: int = Field(default=1, ge=0, le=20, description="execution lag of the path portfolios in dates")


_PICK_INS = {
    **{f"{f}_cpcv_predictions": dg.AssetIn(f"{f}_cpcv_predictions") for f in FAMILIES},
    "ensemble_model": dg.AssetIn("ensemble_model"),
}


def split_predictions(table: pd.DataFrame, family: str, X: pd.DataFrame, folds) -> tuple[list[pd.Series], np.ndarray]:
    """A family's stored CPCV predictions, one Series per split, and each split's validation rank IC;
    refused unless every split holds exactly that split's test rows of this training window."""
    by_split = dict(tuple(table.groupby("split", sort=True)))
    if sorted(by_split) != list(range(1, len(folds) + 1)):
        raise ValueError(f"{family}_cpcv_predictions holds splits {sorted(by_split)}, the splitter makes {len(folds)}: "
                         f"re-materialize {family}_cpcv_predictions")
    out, ic = [], []
    for s, (_, test_idx) in enumerate(folds, start=1):
        part = by_split[s].sort_index()
        expected = X.index[np.sort(test_idx)]
        if len(part) != len(expected) or not part.index.equals(expected):
            raise ValueError(f"{family}_cpcv_predictions split {s} holds {len(part):,} rows, not the split's {len(expected):,} test rows "
                             f"of this training window: re-materialize {family}_cpcv_predictions")
        out.append(part["prediction"].rename("prediction"))
        ic.append(float(part["split_rank_ic"].iloc[0]))
    return out, np.asarray(ic)


def build_cpcv_predictions_asset(family: str) -> dg.AssetsDefinition:
    """One step per family, before the leaderboard: the CPCV refits the evidence about a pick needs, so
    that cpcv_paths only combines them (the families refit side by side, off the critical path)."""

    @dg.asset(
        name=f"{family}_cpcv_predictions",
        op_tags=step_tags("cpcv_predictions", family),
        group_name="validation",
        kinds={"pandas"},
        description=f"{family} refitted with its study's parameters on every Combinatorial Purged CV split of "
        "cpcv_fold_features (each split with the features it selected on its own training rows): the split's "
        "out-of-sample predictions (columns split, prediction, split_rank_ic), which cpcv_paths recombines into paths.",
        retry_policy=TRAINING_RETRY,
        ins={"study": dg.AssetIn(f"{family}_study")},
    )
    def _cpcv_predictions(
        context: dg.AssetExecutionContext,
        features: pd.DataFrame,
        labels: pd.DataFrame,
        cpcv_fold_features: dict,
        study: dict,
        settings: ExperimentSettings,
    ) -> dg.Output[pd.DataFrame]:
        with fail_fast_on_bad_input():
            start = time.perf_counter()
            X, y, _, _, folds, columns = cpcv_folds(features, labels, cpcv_fold_features, settings)
            preds: list[pd.Series] = []
            per_split, _ = cross_validate(
                study["params"], X, y, folds, settings.horizon, gap_bound=2.0, family=family,
                fold_columns=columns, log=context.log.info, fold_predictions=preds, train_eval_dates=20,
            )
            ic = per_split["valid_rank_ic"].to_numpy()
            cpcv = pd.concat([pd.DataFrame({"split": s, "prediction": p.to_numpy(dtype="float64"), "split_rank_ic": float(ic[s - 1])},
                                           index=p.index) for s, p in enumerate(preds, start=1)])
        seconds = time.perf_counter() - start
        context.log.info(f"{family}_cpcv_predictions: {len(folds)} CPCV splits refitted in {seconds:.1f} s")
        return dg.Output(cpcv, metadata={
            "splits": len(folds), "rows": len(cpcv), "split_rank_ic_mean": float(np.nanmean(ic)),
            "data_digest": str(cpcv_fold_features.get("data_digest")), "seconds": round(seconds, 1)})

    return _cpcv_predictions


CPCV_PREDICTIONS = [build_cpcv_predictions_asset(family) for family in FAMILIES]


@dg.asset(
    group_name="validation",
    op_tags=step_tags("cpcv_paths"),
    kinds={"pandas"},
    ins=_PICK_INS,
    retry_policy=TRAINING_RETRY,
    description="Combinatorial Purged CV of the leaderboard's pick (any family or ensemble) on the training window: on the "
    "splits of cpcv_fold_features, each with the features it selected, every member's refit with its study's "
    "parameters ({family}_cpcv_predictions) and an ensemble combines them by its fitted rule; the out-of-sample predictions recombine into backtest paths, each traded long-short in horizon "
    "tranches with a one-day lag, net of costs.",
)
def cpcv_paths(
    context: dg.AssetExecutionContext,
    config: CPCVConfig,
    market_prices: pd.DataFrame,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    model_leaderboard: dict,
    cpcv_fold_features: dict,
    settings: ExperimentSettings,
    **inputs,
) -> dg.Output[pd.DataFrame]:
    from plml_assets.defs.backtest.assets import backtest_candidate
    from plml_assets.lib.backtest import engine as bt
    from plml_assets.lib.ensemble.combine import EnsembleFit
    from plml_assets.lib.plots import histogram_plot

    with fail_fast_on_bad_input():
        start = time.perf_counter()
        candidate, _ = backtest_candidate(model_leaderboard)
        ens = inputs["ensemble_model"]
        if candidate in FAMILIES:
            members, fit = [candidate], None
        else:
            method = candidate[len("ensemble_"):]
            if not candidate.startswith("ensemble_") or method not in ens["methods"]:
                raise ValueError(f"cpcv_paths: unknown candidate {candidate!r}")
            members, fit = list(ens["members"]), EnsembleFit.from_dict(ens["methods"][method]["fit"])
        X, y, split, splitter, folds, _ = cpcv_folds(features, labels, cpcv_fold_features, settings)
        member_preds: dict[str, list[pd.Series]] = {}
        split_rank_ic = []
        for f in members:  # refitted by the {family}_cpcv_predictions steps, before the leaderboard and side by side
            member_preds[f], ic = split_predictions(inputs[f"{f}_cpcv_predictions"], f, X, folds)
            split_rank_ic.append(ic)
        if fit is None:
            predictions = member_preds[candidate]
        else:
            predictions = [fit.combine({f: member_preds[f][s] for f in members}) for s in range(len(folds))]
        holding = settings.horizon if config.holding_days is None else config.holding_days
        table, stats = bt.cpcv_path_backtests(
            predictions, splitter.paths(split.train_dates), market_prices, labels.iloc[:, 0],
            quantile=config.quantile, cost_bps=config.cost_bps, holding_days=holding, execution_lag=config.execution_lag_days,
        )
    sharpe = stats["sharpe"]
    png = histogram_plot(sharpe, f"CPCV path net Sharpe of {candidate}: {len(sharpe)} paths, mean {sharpe.mean():.2f}",
                         "annualized net Sharpe (long-short)")
    context.log.info(
        f"cpcv_paths of {candidate}: {len(folds)} splits, {len(sharpe)} paths, net Sharpe mean {sharpe.mean():.2f} "
        f"(min {sharpe.min():.2f}, max {sharpe.max():.2f}) in {time.perf_counter() - start:.0f} s"
    )
    return dg.Output(
        table,
        metadata={
            "candidate": candidate,
            "members": ", ".join(members),
            "splits": len(folds),
            "paths": len(sharpe),
            "path_sharpe_mean": float(sharpe.mean()),
            "path_sharpe_std": float(sharpe.std(ddof=1)) if len(sharpe) > 1 else 0.0,
            "path_sharpe_min": float(sharpe.min()),
            "path_sharpe_max": float(sharpe.max()),
            "share_of_paths_losing": float((sharpe < 0).mean()),
            "split_rank_ic_mean": float(np.mean(np.concatenate(split_rank_ic))),
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
    duplicate_corr: float = Field(default=0.95, gt=0, le=1, description="trials whose per-date scores correlate at least "
                                  "this much are one configuration (merged before the effective count and PBO)")


_REPORT_INS = {
    **{f"{f}_study": dg.AssetIn(f"{f}_study") for f in FAMILIES},
    "ensemble_predictions": dg.AssetIn("ensemble_predictions"),
}


@dg.asset(
    group_name="validation",
    kinds={"pandas"},
    ins=_REPORT_INS,
    description="A pass/warn/fail verdict, read by the promotion gate, about the leaderboard's pick (a single model or an "
    "ensemble), from its own backtest on dates no choice saw: the deflated Sharpe of its per-date rank IC over the "
    "effective number of independent configurations tried (every trial of every study and every ensemble rule, "
    "correlated ones clustered), the PBO of that tried set in the same metric, its train/validation gap and losing "
    "folds. The JSON metadata entry `evidence` holds the numbers.",
)
def validation_report(
    context: dg.AssetExecutionContext,
    config: ValidationReportConfig,
    model_leaderboard: dict,
    backtest: pd.DataFrame,
    cpcv_paths: pd.DataFrame,
    labels: pd.DataFrame,
    settings: ExperimentSettings,
    **inputs,
) -> dg.Output[dict]:
    from plml_assets.defs.backtest.assets import backtest_candidate
    from plml_assets.lib.comparison.leaderboard import candidate_statistics
    from plml_assets.lib.registry.evidence import PRIMARY_TO_DATE_METRIC, promotion_evidence, tried_configurations
    from plml_assets.lib.validation import overfitting as of
    from plml_assets.lib.validation.metrics import per_date_ic

    with fail_fast_on_bad_input():
        bounds = of.ValidationBounds(
            pbo_warn=config.pbo_warn, pbo_fail=config.pbo_fail, dsr_warn=config.dsr_warn, dsr_fail=config.dsr_fail,
            gap_warn=config.gap_warn, gap_fail=config.gap_fail,
        )
        board = pd.DataFrame(model_leaderboard["table"]).set_index("candidate")
        subject = model_leaderboard["selection"]["winner"]
        candidate, _ = backtest_candidate(model_leaderboard)
        if f"{candidate}:long_short" not in backtest.columns:
            raise ValueError(f"the backtest is of another candidate than the leaderboard's {candidate!r} (columns "
                             f"{sorted(c for c in backtest.columns if c.endswith(':long_short'))}): re-materialize backtest")
        primary = model_leaderboard["criteria"]["primary"]
        pbo_metric = PRIMARY_TO_DATE_METRIC.get(primary)
        studies = {f: inputs[f"{f}_study"] for f in FAMILIES}
        metrics = {s.get("metric", "rank_ic") for s in studies.values()}
        y_all, split = split_for(labels, settings)
        preds = inputs["ensemble_predictions"]
        ensemble_scores = {}
        for method, block in preds[preds["split"] == "oof"].groupby("method"):
            p = block["prediction"]
            ensemble_scores[f"ensemble_{method}"] = per_date_ic(
                y_all.reindex(p.index).to_numpy(), p.to_numpy(), p.index.get_level_values("date"), method="spearman")
        tried = tried_configurations(studies, ensemble_scores)
        pick_scores = backtest[f"{candidate}:rank_ic"]
        found = promotion_evidence(tried, pick_scores, duplicate_corr=config.duplicate_corr, horizon=settings.horizon)
        net = backtest[f"{candidate}:long_short"].dropna()
        reasons: list[str] = []
        if pbo_metric is None or metrics != {pbo_metric}:
            found["pbo"] = float("nan")
            reasons.append(f"fail: the leaderboard ranks by {primary} but the studies scored trials in {sorted(metrics)}: "
                           "PBO and the deflated Sharpe need one metric for both (set the leaderboard's primary to a rank-IC mean)")
        stats = candidate_statistics(board, candidate, found["pbo"])
        stats["dsr"] = found["dsr"]
        verdict, more = of.verdict(stats, bounds)
        reasons = more + reasons
        if reasons and reasons[-1].startswith("fail: the leaderboard ranks"):
            verdict = "fail"
        unmeasured = [key for key in ("pbo", "dsr") if not np.isfinite(stats[key])]
        if unmeasured:  # too few trials or dates: the pick is not cleared on what was not measured
            verdict = of.worst_verdict(verdict, "warn")
            reasons.append(f"warn: {' and '.join(unmeasured)} not measured ({found['clustering'] or 'too few trials'}; "
                           f"PBO: {found['pbo_details'].get('reason', 'ok')})")
        if subject is None:
            verdict = "fail"
            reasons.insert(0, f"fail: the leaderboard picked no candidate ({model_leaderboard['selection']['reason']}); "
                           f"evidence shown for the best-ranked candidate {candidate}")
    dates = backtest.index[backtest[f"{candidate}:long_short"].notna()]
    turnover = float(backtest[f"{candidate}:turnover"].mean()) if f"{candidate}:turnover" in backtest else float("nan")
    evidence = {
        "candidate": candidate,
        "backtest_dates": [str(pd.Timestamp(dates.min()).date()), str(pd.Timestamp(dates.max()).date())],
        "holdout_start": str(split.holdout_dates[0].date()),
        "nested": bool(_setting(backtest, "nested")),
        "trials": found["trials"],
        "effective_trials": found["effective_trials"],
        "sharpe_trials_std": found["sharpe_trials_std"],
        "dsr": found["dsr"],
        "pbo": found["pbo"],
        "pbo_metric": pbo_metric or primary,
        "turnover_per_day": turnover,
        "execution_lag_days": _setting(backtest, "execution_lag_days"),
        "cost_bps_per_side": _setting(backtest, "cost_bps_per_side"),
        "holding_days": _setting(backtest, "holding_days"),
        "net_sharpe": float(of.sharpe_ratio(net, 252)) if len(net) > 2 else float("nan"),
        # The walk-forward segment's dates also ranked the candidates (the leaderboard's nested footing),
        # so its Sharpe carries the family/ensemble choice, which the DSR deflates for; the holdout
        # segment's is the one no choice saw.
        **{f"{seg}_net_sharpe": float(of.sharpe_ratio(r, 252)) if len(r) > 2 else float("nan")
           for seg, r in ((seg, net[backtest.loc[net.index, "segment"] == seg]) for seg in ("walk_forward", "holdout"))},
        "psr": float(of.probabilistic_sharpe_ratio(net.to_numpy())) if len(net) > 8 and net.std() > 0 else float("nan"),
        "pick_rank_ic_sharpe": found["pick_score_sharpe"],
        "baseline_net_sharpe": {c.split(":")[0]: float(of.sharpe_ratio(backtest[c].dropna(), 252))
                                for c in backtest.columns if c.endswith(":long_short") and not c.startswith(f"{candidate}:")}
                               | {"equal_weight": float(of.sharpe_ratio(backtest["equal_weight:benchmark"].dropna(), 252))}
                               if "equal_weight:benchmark" in backtest else {},
        "cpcv_path_sharpe_mean": float(np.nanmean([of.sharpe_ratio(cpcv_paths[c].dropna(), 252) for c in cpcv_paths]))
                                 if len(cpcv_paths.columns) else float("nan"),
        "clustering": found["clustering"],
        # Overlapping labels: the DSR counts the pick's dates at their effective number (Lo 2002).
        "label_horizon_days": int(settings.horizon),
        "dsr_observations": found["dsr_observations"],
    }
    report = {
        "subject": subject,
        "leaderboard_run_id": model_leaderboard["mlflow_run_id"],
        "verdict": verdict,
        "reasons": reasons,
        "pbo": stats["pbo"],
        "dsr": stats["dsr"],
        "psr": evidence["psr"],
        "oof_sharpe": stats.get("oof_sharpe", float("nan")),
        "gap_mean": stats["gap_mean"],
        "share_valid_below_zero": stats["share_valid_below_zero"],
        "evidence": evidence,
    }
    log = context.log.warning if verdict != "pass" else context.log.info
    log(f"validation_report on {subject}: {verdict}" + (": " + "; ".join(reasons) if reasons else ""))
    return dg.Output(
        report,
        metadata={
            "subject": str(subject),
            "verdict": verdict,
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in reasons) or "none"),
            "evidence": dg.MetadataValue.json(_json_ready(evidence)),
            "dsr": _finite(evidence["dsr"]),
            "pbo": _finite(evidence["pbo"]),
            "effective_trials": _finite(evidence["effective_trials"]),
            "net_sharpe": _finite(evidence["net_sharpe"]),
            "turnover_per_day": _finite(turnover),
            "gap_mean": _finite(stats["gap_mean"]),
        },
    )


def _finite(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def _json_ready(value):
    """JSON metadata has no NaN: undefined numbers become null."""
    if isinstance(value, dict):
        return {k: _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    if isinstance(value, (np.integer,)):
        return int(value)
    return value


def _setting(backtest: pd.DataFrame, column: str):
    """A backtest setting, carried in the backtest frame as a constant column."""
    if column not in backtest.columns or backtest[column].dropna().empty:
        raise ValueError(f"the backtest lacks its {column!r} column: re-materialize backtest")
    value = backtest[column].dropna().iloc[0]
    return value.item() if hasattr(value, "item") else value
