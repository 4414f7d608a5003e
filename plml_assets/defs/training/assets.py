"""The XGBoost model: trained before the holdout, evaluated on it, logged to MLflow."""


import json
import tempfile
import time
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
from mlflow.models import infer_signature

import plml_assets
from plml_assets.defs.selection.assets import selected_features
from plml_assets.defs.shared import TRAINING_RETRY, fail_fast_on_bad_input, XGBoostConfig, split_for
from plml_assets.defs.validation.assets import cv_summary
from plml_assets.lib import prices as price_lib
from plml_assets.lib.features import FEATURE_LOOKBACK_DAYS, FEATURE_SET_VERSION
from plml_assets.lib.baselines import momentum_score
from plml_assets.lib.metrics import evaluate_predictions, per_date_ic
from plml_assets.lib.plots import cumulative_ic_plot, fold_metrics_plot, importance_plot, markdown_image
from plml_assets.lib.provenance import code_version, feature_list_hash
from plml_assets.lib.serving import MODEL_ARTIFACT, PanelScorer
from plml_assets.lib.training import design_matrix, fit_xgboost
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.settings import ExperimentSettings

METRIC_KEYS = ("ic", "rank_ic", "ic_ir", "rmse", "directional_accuracy")


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    return [f"{pkg}=={version(pkg)}" for pkg in ("mlflow", "xgboost", "pandas", "numpy", "pyarrow", "scikit-learn")]


def _input_example(prices: pd.DataFrame, n_symbols: int = 25) -> pd.DataFrame:
    """Enough symbols and history for real scores (cross-sectional features need several symbols),
    capped so that the example stored with the model stays small."""
    symbols = prices.index.get_level_values("symbol").unique()[:n_symbols]
    dates = prices.index.get_level_values("date").unique().sort_values()[-(FEATURE_LOOKBACK_DAYS + 5):]
    sub = prices[prices.index.get_level_values("symbol").isin(symbols) & prices.index.get_level_values("date").isin(dates)]
    return sub.reset_index()


@dg.asset(
    group_name="training",
    kinds={"xgboost", "mlflow"},
    retry_policy=TRAINING_RETRY,
    description="XGBoost trained on all data before the holdout window, evaluated on the holdout, logged to MLflow.",
)
def xgboost_model(
    context: dg.AssetExecutionContext,
    config: XGBoostConfig,
    market_prices: pd.DataFrame,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    feature_selection: pd.DataFrame,
    xgboost_cv_results: pd.DataFrame,
    settings: ExperimentSettings,
    mlflow_registry: MlflowRegistry,
) -> dg.Output[dict]:
    with fail_fast_on_bad_input():
        start = time.perf_counter()
        y_all, split = split_for(labels, settings)
        columns = selected_features(feature_selection)
        X_train, y_train = design_matrix(features, y_all, columns, split.train_dates)
        X_hold, y_hold = design_matrix(features, y_all, columns, split.holdout_dates)
        params = config.params(settings)
        model, fit_mask = fit_xgboost(params, X_train, y_train, settings.horizon)
        clip = model.target_clip_
        cv_params = json.loads(xgboost_cv_results["params"].iloc[0]) if "params" in xgboost_cv_results else {}
        cv_params_match = cv_params == json.loads(json.dumps(params))
        if not cv_params_match:
            context.log.warning(
                f"xgboost_model hyper-parameters differ from those cross-validated in xgboost_cv_results "
                f"({cv_params}): the cv_* metrics describe another configuration"
            )
        context.log.info(
            f"xgboost_model: {len(X_train):,} training rows x {len(columns)} features, "
            f"{model.best_iteration_ + 1} rounds kept in {model.fit_seconds_:.1f} s"
        )
        hold_pred = model.predict(X_hold)
        hold_dates = X_hold.index.get_level_values("date")
        holdout = evaluate_predictions(y_hold.to_numpy(), hold_pred, hold_dates)
        baseline = momentum_score(market_prices).reindex(X_hold.index).to_numpy()
        ic_curve = cumulative_ic_plot(
            {
                "xgboost": per_date_ic(y_hold.to_numpy(), hold_pred, hold_dates, method="spearman"),
                "momentum_20d": per_date_ic(y_hold.to_numpy(), baseline, hold_dates, method="spearman"),
            },
            f"holdout {split.holdout_dates[0].date()}..{split.holdout_dates[-1].date()}",
        )
        gain = pd.Series(model.feature_importance())
        importance_png = importance_plot(gain / max(gain.sum(), 1e-12))
        folds_png = fold_metrics_plot(xgboost_cv_results)
        X_fit, y_fit = X_train[fit_mask], y_train[fit_mask]
        train_m = evaluate_predictions(y_fit.to_numpy(), model.predict(X_fit), X_fit.index.get_level_values("date"))
        cv = cv_summary(xgboost_cv_results, "walk_forward") | cv_summary(xgboost_cv_results, "kfold")
        data_fp = price_lib.fingerprint(market_prices)
        feat_hash = feature_list_hash(columns)
        metrics = {
            **{f"holdout_{k}": float(holdout[k]) for k in METRIC_KEYS},
            **{f"train_{k}": float(train_m[k]) for k in METRIC_KEYS},
            **cv,
            "best_iteration": float(model.best_iteration_),
        }
        tags = {
            "plml.family": "xgboost",
            "plml.data_fingerprint": data_fp,
            "plml.feature_list_hash": feat_hash,
            "plml.code_version": code_version(),
            "plml.feature_set_version": FEATURE_SET_VERSION,
            "plml.horizon": str(settings.horizon),
            "plml.holdout_start": str(split.holdout_dates[0].date()),
            "plml.holdout_end": str(split.holdout_dates[-1].date()),
            "plml.train_end": str(split.train_dates[-1].date()),
            "dagster.run_id": context.run.run_id,
            "dagster.asset": "xgboost_model",
            "plml.cv_params_match": str(cv_params_match).lower(),
        }
        example = _input_example(market_prices)
        scorer = PanelScorer(
            columns, settings.horizon, list(market_prices.columns),
            training_symbols=sorted(X_train.index.get_level_values("symbol").unique()),
        )
        with mlflow_registry.tracking(), tempfile.TemporaryDirectory() as tmp:
            model_dir = Path(tmp) / MODEL_ARTIFACT
            model.save(model_dir)
            scorer.model_ = model
            example_out = scorer.score(example)
            signature = infer_signature(example, example_out, params={"all_dates": False})
            with mlflow.start_run(
                experiment_id=mlflow_registry.experiment_id(), run_name=f"xgboost-{context.run.run_id[:8]}", tags=tags
            ) as run:
                mlflow.log_params({**params, "horizon": settings.horizon, "holdout_days": settings.holdout_days,
                                   "n_features": len(columns), "train_rows": len(X_train)})
                mlflow.log_metrics(metrics)
                mlflow.log_dict({"features": columns, "winsor_clip": list(clip)}, "features.json")
                mlflow.log_dict(split.describe(), "holdout_window.json")
                mlflow.log_text(xgboost_cv_results.to_csv(index=False), "cv_results.csv")
                for name, png in (("holdout_cumulative_rank_ic", ic_curve), ("feature_importance", importance_png), ("cv_folds", folds_png)):
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
                    pip_requirements=_pip_requirements(),
                )
                run_id = run.info.run_id
        context.log.info(
            f"xgboost_model: holdout rank IC {holdout['rank_ic']:.4f}, IC {holdout['ic']:.4f}, "
            f"directional accuracy {holdout['directional_accuracy']:.3f}; MLflow run {run_id}"
        )
        result = {
            "run_id": run_id,
            "model_uri": info.model_uri,
            "features": columns,
            "feature_list_hash": feat_hash,
            "data_fingerprint": data_fp,
            "holdout": split.describe(),
            "metrics": metrics,
            "params": params,
            "tags": tags,
        }
        return dg.Output(
            result,
            metadata={
                "mlflow_run_id": run_id,
                "model_uri": info.model_uri,
                **{f"holdout_{k}": float(holdout[k]) for k in METRIC_KEYS},
                "cv_walk_forward_rank_ic": cv["cv_walk_forward_rank_ic"],
                "train_rank_ic": float(train_m["rank_ic"]),
                "rounds": model.best_iteration_ + 1,
                "features_used": len(columns),
                "seconds": round(time.perf_counter() - start, 1),
                "holdout_window": dg.MetadataValue.json(split.describe()),
                "holdout_cumulative_rank_ic": dg.MetadataValue.md(markdown_image(ic_curve, "holdout cumulative rank IC")),
                "feature_importance": dg.MetadataValue.md(markdown_image(importance_png, "feature importance")),
            },
        )
