"""One model per family: trained before the holdout with the tuned parameters, evaluated on it, logged to MLflow."""


import contextlib
import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
from pydantic import Field

import plml_assets
from plml_assets.defs.selection.assets import selected_features
from plml_assets.defs.shared import FAMILIES, FAMILY_KIND, TRAINING_RETRY, fail_fast_on_bad_input, redone_runs, split_for, step_tags
from plml_assets.defs.validation.assets import cv_summary
from plml_assets.lib.data import prices as price_lib
from plml_assets.lib.features.base import FEATURE_SET_VERSION
from plml_assets.lib.models.base import Model
from plml_assets.lib.models.baselines import momentum_score
from plml_assets.lib.models.distributed import DASK_FAMILIES
from plml_assets.lib.models.training import best_iteration, design_matrix, early_stopping_split, fit_model, iteration_word, predict_rows, update_model
from plml_assets.lib.plots import cumulative_ic_plot, fold_metrics_plot, importance_plot, markdown_image
from plml_assets.lib.registry.provenance import code_version, feature_list_hash
from plml_assets.lib.registry.reproduce import DIGEST_ARTIFACT
from plml_assets.lib.registry.serving import MODEL_ARTIFACT, PanelScorer, history_days, model_signature
from plml_assets.lib.validation.metrics import evaluate_predictions, per_date_ic
from plml_assets.resources.dask import DaskResource
from plml_assets.resources.dask import describe as describe_dask
from plml_assets.resources.dask import task_totals as dask_task_totals
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.settings import ExperimentSettings

METRIC_KEYS = ("ic", "rank_ic", "ic_ir", "rmse", "directional_accuracy")


FAMILY_PACKAGES = {"xgboost": ("xgboost",), "lightgbm": ("lightgbm",), "lstm": ("torch",), "gru": ("torch",), "elastic_net": ()}


def _pip_requirements(family: str) -> list[str]:
    from importlib.metadata import version

    packages = ("mlflow", *FAMILY_PACKAGES[family], "pandas", "numpy", "pyarrow", "scikit-learn")
    return [f"{pkg}=={version(pkg)}" for pkg in packages]


def _folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def _input_example(prices: pd.DataFrame, recipes: dict | None = None, n_symbols: int = 25) -> pd.DataFrame:
    """Enough symbols and history for real scores (cross-sectional features need several symbols),
    capped so that the example stored with the model stays small."""
    symbols = prices.index.get_level_values("symbol").unique()[:n_symbols]
    dates = prices.index.get_level_values("date").unique().sort_values()[-(history_days(recipes) + 5):]
    sub = prices[prices.index.get_level_values("symbol").isin(symbols) & prices.index.get_level_values("date").isin(dates)]
    return sub.reset_index()


RETRAIN_MODES = ("full", "incremental")


class ModelConfig(dg.Config):
    device: str = Field(default="auto", description="'auto' (CUDA when one is visible: the nets, and XGBoost when its build has "
                        "CUDA; LightGBM stays on the CPU), 'cpu' or 'cuda[:N]'")
    mode: str = Field(
        default="full",
        description="'full': fit from scratch on every training date; 'incremental': update the current champion when it "
        "is a single model of this family, on the training dates after its own training end, with its features (trees "
        "continue boosting, nets fine-tune their weights); anything else falls back to a full fit, and says why",
    )


def champion_to_update(
    family: str, registry: MlflowRegistry, train_dates: pd.DatetimeIndex, horizon: int, features: pd.DataFrame
) -> tuple[object | None, str]:
    """The champion's fitted model when it can be updated incrementally by ``family``, else the reason."""
    champion = registry.alias_version("champion")
    if champion is None:
        return None, "there is no champion"
    if champion.tags.get("plml.family") != family:
        return None, f"the champion v{champion.version} is {champion.tags.get('plml.family', 'unknown')}, not {family}"
    if champion.tags.get("plml.horizon") != str(horizon):
        return None, f"the champion v{champion.version} predicts a {champion.tags.get('plml.horizon')}-day horizon, not {horizon}"
    train_end = champion.tags.get("plml.train_end")
    new_dates = train_dates[train_dates > pd.Timestamp(train_end)] if train_end else train_dates[:0]
    try:
        early_stopping_split(new_dates.to_numpy(), horizon)
    except ValueError as exc:
        return None, f"{len(new_dates)} training date(s) after the champion's training end {train_end}: {exc}"
    scorer = registry.load_model("champion").unwrap_python_model()  # its artefacts verified first
    model = getattr(scorer, "model_", None)
    if model is not None and type(model).fit_incremental is Model.fit_incremental:
        return None, f"the champion v{champion.version} ({family}) has no incremental update: refitting it"
    if model is None or not hasattr(model, "target_clip_"):
        return None, f"the champion v{champion.version} carries no updatable model (saved before incremental updates)"
    missing = [c for c in model.feature_names_ if c not in features.columns]
    if missing:
        return None, f"the features asset no longer generates the champion's feature(s) {missing[:5]}"
    model.champion_version_, model.champion_train_end_ = champion.version, train_end
    return model, ""


def xgboost_cuda_available() -> bool:
    """A CUDA device is visible and this XGBoost build can use it (PyPI's Linux wheels can)."""
    import torch
    import xgboost as xgb

    return bool(torch.cuda.is_available() and xgb.build_info().get("USE_CUDA", False))


def _device(family: str, requested: str) -> str | None:
    """The device parameter of the final fit: 'auto' is CUDA where one is visible (torch for the nets,
    XGBoost when its build has CUDA), the CPU otherwise; LightGBM's PyPI wheel has no CUDA, so 'auto'
    keeps it on the CPU. None: the family's default (the CPU)."""
    if requested not in ("auto", "cpu") and not requested.startswith("cuda"):
        raise ValueError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {requested!r}")
    if family in ("lstm", "gru"):
        return requested
    if requested == "auto":
        return "cuda" if family == "xgboost" and xgboost_cuda_available() else None
    return requested


def build_model_asset(family: str) -> dg.AssetsDefinition:
    kind = FAMILY_KIND[family]

    @dg.multi_asset(
        name=f"{family}_training",
        op_tags=step_tags("training", family),
        group_name="training",
        outs={
            f"{family}_model": dg.AssetOut(
                kinds={kind, "mlflow"},
                description=f"{family} with the parameters of {family}_study, trained on all data before the holdout window, "
                "evaluated on the holdout, logged to MLflow as a pyfunc that rebuilds its features from raw prices.",
            ),
            f"{family}_holdout_predictions": dg.AssetOut(
                kinds={kind},
                description=f"{family}_model's scores on every holdout row (the model never saw those dates): what "
                "ensembles combine and the leaderboard trades.",
            ),
        },
        retry_policy=TRAINING_RETRY,
        ins={"study": dg.AssetIn(f"{family}_study"), "cv_results": dg.AssetIn(f"{family}_cv_results")},
    )
    def _model(
        context: dg.AssetExecutionContext,
        config: ModelConfig,
        market_prices: pd.DataFrame,
        features: pd.DataFrame,
        feature_recipes: dict,
        labels: pd.DataFrame,
        feature_selection: pd.DataFrame,
        cv_results: pd.DataFrame,
        study: dict,
        settings: ExperimentSettings,
        mlflow_registry: MlflowRegistry,
        dask: DaskResource,
    ):
        with fail_fast_on_bad_input():
            output, holdout = train_family_model(
                family, context, config, market_prices, features, feature_recipes, labels, feature_selection, cv_results,
                study, settings, mlflow_registry, dask=dask,
            )
        yield output
        yield dg.Output(holdout, output_name=f"{family}_holdout_predictions", metadata={
            "rows": len(holdout), "dates": int(holdout.index.get_level_values("date").nunique()),
        })

    return _model


def train_family_model(
    family, context, config, market_prices, features, feature_recipes, labels, feature_selection, cv_results, study, settings,
    mlflow_registry, dask: DaskResource | None = None,
) -> tuple[dg.Output, pd.DataFrame]:
    start = time.perf_counter()
    asset_name = f"{family}_model"
    y_all, split = split_for(labels, settings)
    if config.mode not in RETRAIN_MODES:
        raise ValueError(f"mode must be one of {RETRAIN_MODES}, got {config.mode!r}")
    champion, why_not = (None, "") if config.mode == "full" else champion_to_update(family, mlflow_registry, split.train_dates, settings.horizon, features)
    if config.mode == "incremental" and champion is None:
        context.log.warning(f"{asset_name}: incremental update impossible ({why_not}): fitting from scratch")
    columns = list(champion.feature_names_) if champion is not None else selected_features(feature_selection)
    X_train, y_train = design_matrix(features, y_all, columns, split.train_dates)
    X_hold, y_hold = design_matrix(features, y_all, columns, split.holdout_dates)
    params = dict(study["params"]) if champion is None else dict(champion.get_params())
    device = _device(family, config.device)
    if device is not None:
        params["device"] = device
    run_tags = {"plml.family": family, "dagster.run_id": context.run.run_id, "dagster.asset": asset_name}
    # The run is open for the whole fit, so its MLflow system metrics cover the fit too.
    with mlflow_registry.training_run(f"{family}-{context.run.run_id[:8]}", run_tags, supersedes=redone_runs(context)) as run, tempfile.TemporaryDirectory() as tmp:
        fit_start = time.perf_counter()
        trained_on, dask_totals = "local", {}
        if champion is None:
            use_dask = dask is not None and dask.address() is not None and family in DASK_FAMILIES
            with (dask.client() if use_dask else contextlib.nullcontext()) as client:
                trained_on = describe_dask(client)
                if client is not None:
                    context.log.info(f"{asset_name}: training on the Dask cluster at {dask.address()} ({trained_on})")
                with dask_task_totals(client) as dask_totals:
                    model, fit_mask = fit_model(family, params, X_train, y_train, settings.horizon, dask_client=client)
                if dask_totals:
                    context.log.info(f"{asset_name}: Dask ran {dask_totals['tasks']} tasks, {dask_totals['compute_s']:.1f} compute s: "
                                     + ", ".join(f"{w} {r['tasks']} tasks {r['compute_s']:.1f} s" for w, r in dask_totals["workers"].items()))
            mode = "full"
        else:
            new_rows = X_train.index.get_level_values("date") > pd.Timestamp(champion.champion_train_end_)
            X_train, y_train = X_train[new_rows], y_train[new_rows]
            model, fit_mask = update_model(champion, X_train, y_train, settings.horizon)
            mode = "incremental"
            context.log.info(f"{asset_name}: updating champion v{champion.champion_version_} on {len(X_train):,} new rows "
                             f"after {champion.champion_train_end_} (its features and parameters)")
        fit_seconds = time.perf_counter() - fit_start
        clip = model.target_clip_
        cv_params = json.loads(cv_results["params"].iloc[0]) if "params" in cv_results else {}
        cv_params_match = cv_params == json.loads(json.dumps(study["params"]))
        if not cv_params_match:
            context.log.warning(
                f"{asset_name} hyper-parameters differ from those cross-validated in {family}_cv_results "
                f"({cv_params}): the cv_* metrics describe another configuration; re-materialize {family}_cv_results"
            )
        kept = best_iteration(model) + 1
        context.log.info(
            f"{asset_name}: {len(X_train):,} training rows x {len(columns)} features, {iteration_word(family)} {kept} kept, "
            f"fitted in {fit_seconds:.1f} s on {getattr(model, 'device_', 'cpu')}"
        )
        # Holdout rows are scored with the feature history before them (sequence nets read it).
        span = features.loc[features.index.get_level_values("date") <= split.holdout_dates[-1], columns]
        hold_pred = predict_rows(model, span, span.index.get_indexer(X_hold.index))
        hold_dates = X_hold.index.get_level_values("date")
        holdout = evaluate_predictions(y_hold.to_numpy(), hold_pred, hold_dates)
        baseline = momentum_score(market_prices).reindex(X_hold.index).to_numpy()
        ic_curve = cumulative_ic_plot(
            {
                family: per_date_ic(y_hold.to_numpy(), hold_pred, hold_dates, method="spearman"),
                "momentum_20d": per_date_ic(y_hold.to_numpy(), baseline, hold_dates, method="spearman"),
            },
            f"{family} holdout {split.holdout_dates[0].date()}..{split.holdout_dates[-1].date()}",
        )
        importance = pd.Series(model.feature_importance()) if hasattr(model, "feature_importance") else pd.Series(dtype=float)
        importance_png = importance_plot(importance / max(importance.sum(), 1e-12)) if len(importance) else None
        folds_png = fold_metrics_plot(cv_results)
        fit_rows = np.flatnonzero(fit_mask)
        train_m = evaluate_predictions(
            y_train.to_numpy()[fit_rows], predict_rows(model, X_train, fit_rows), X_train.index.get_level_values("date")[fit_rows]
        )
        cv = cv_summary(cv_results, "walk_forward") | cv_summary(cv_results, "kfold")
        data_fp = price_lib.fingerprint(market_prices)
        feat_hash = feature_list_hash(columns)
        metrics = {
            **{f"holdout_{k}": float(holdout[k]) for k in METRIC_KEYS},
            **{f"train_{k}": float(train_m[k]) for k in METRIC_KEYS},
            **cv,
            "best_iteration": float(kept - 1),
            "fit_seconds": float(fit_seconds),
        }
        tags = {
            "plml.family": family,
            "plml.data_fingerprint": data_fp,
            "plml.feature_list_hash": feat_hash,
            "plml.code_version": code_version(),
            "plml.feature_set_version": FEATURE_SET_VERSION,
            "plml.horizon": str(settings.horizon),
            "plml.holdout_start": str(split.holdout_dates[0].date()),
            "plml.holdout_end": str(split.holdout_dates[-1].date()),
            "plml.train_end": str(split.train_dates[-1].date()),
            "plml.study_name": str(study.get("study_name", "")),
            "dagster.run_id": context.run.run_id,
            "dagster.asset": asset_name,
            "plml.cv_params_match": str(cv_params_match).lower(),
            "plml.retrain_mode": mode,
        }
        if champion is not None:
            tags["plml.updated_from"] = str(champion.champion_version_)
        example = _input_example(market_prices, feature_recipes["recipes"])
        scorer = PanelScorer(
            columns, settings.horizon, list(market_prices.columns),
            training_symbols=sorted(X_train.index.get_level_values("symbol").unique()), family=family,
            recipes=feature_recipes["recipes"],
        )
        model_dir = Path(tmp) / MODEL_ARTIFACT
        model.save(model_dir)
        model_bytes = _folder_bytes(model_dir)
        metrics["model_bytes"] = float(model_bytes)
        scorer.model_ = model
        example_out = scorer.score(example)
        signature = model_signature(scorer, example, example_out)
        mlflow.set_tags(tags)
        mlflow.log_params({**params, "horizon": settings.horizon, "holdout_days": settings.holdout_days,
                           "n_features": len(columns), "train_rows": len(X_train)})
        mlflow.log_metrics(metrics)
        mlflow.log_dict({"features": columns, "winsor_clip": list(clip),
                         "recipes": {c: r for c, r in feature_recipes["recipes"].items() if c in columns}}, "features.json")
        mlflow.log_dict(split.describe(), "holdout_window.json")
        mlflow.log_dict(price_lib.panel_digests(market_prices), DIGEST_ARTIFACT)  # what `plml reproduce` checks the prices against
        mlflow.log_text(cv_results.to_csv(index=False), "cv_results.csv")
        plots = {"holdout_cumulative_rank_ic": ic_curve, "cv_folds": folds_png}
        if importance_png is not None:
            plots["feature_importance"] = importance_png
        for name, png in plots.items():
            (Path(tmp) / f"{name}.png").write_bytes(png)
            mlflow.log_artifact(str(Path(tmp) / f"{name}.png"), "plots")
        del scorer.model_  # the pyfunc is rebuilt from the artefact in load_context
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=scorer,
            artifacts={MODEL_ARTIFACT: str(model_dir)},
            code_paths=[str(Path(plml_assets.__file__).parent)],
            signature=signature,
            input_example=example,
            pip_requirements=_pip_requirements(family),
        )
        run_id = run.info.run_id
    context.log.info(
        f"{asset_name}: holdout rank IC {holdout['rank_ic']:.4f}, IC {holdout['ic']:.4f}, "
        f"directional accuracy {holdout['directional_accuracy']:.3f}; model {model_bytes / 1024:.0f} KiB; MLflow run {run_id}"
    )
    result = {
        "family": family,
        "run_id": run_id,
        "model_uri": info.model_uri,
        "features": columns,
        "feature_list_hash": feat_hash,
        "data_fingerprint": data_fp,
        "holdout": split.describe(),
        "metrics": metrics,
        "params": params,
        "tags": tags,
        "model_bytes": model_bytes,
        "fit_seconds": round(fit_seconds, 3),
        "training_symbols": scorer.training_symbols,
        "mode": mode,
        "trained_on": trained_on,
    }
    metadata = {
        "mlflow_run_id": run_id,
        "model_uri": info.model_uri,
        **{f"holdout_{k}": float(holdout[k]) for k in METRIC_KEYS},
        "cv_walk_forward_rank_ic": cv["cv_walk_forward_rank_ic"],
        "train_rank_ic": float(train_m["rank_ic"]),
        iteration_word(family) + "s": kept,
        "features_used": len(columns),
        "fit_seconds": round(fit_seconds, 2),
        "retrain_mode": mode,
        "trained_on": trained_on,
        **({"dask_tasks": dask_totals["tasks"], "dask_compute_s": dask_totals["compute_s"],
            "dask_workers": dg.MetadataValue.json(dask_totals["workers"])} if dask_totals else {}),
        "device": str(getattr(model, "device_", None) or params.get("device") or "cpu"),
        "model_kib": round(model_bytes / 1024, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "params": dg.MetadataValue.json(params),
        "holdout_window": dg.MetadataValue.json(split.describe()),
        "holdout_cumulative_rank_ic": dg.MetadataValue.md(markdown_image(ic_curve, "holdout cumulative rank IC")),
    }
    if importance_png is not None:
        metadata["feature_importance"] = dg.MetadataValue.md(markdown_image(importance_png, "feature importance"))
    holdout_frame = pd.DataFrame({"prediction": hold_pred}, index=X_hold.index)
    return dg.Output(result, output_name=asset_name, metadata=metadata), holdout_frame


MODELS = [build_model_asset(family) for family in FAMILIES]
