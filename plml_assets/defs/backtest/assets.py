"""Out-of-sample walk-forward backtest of the model family against simple baselines."""

import tempfile
import time
from pathlib import Path

import dagster as dg
import mlflow
import pandas as pd
from pydantic import Field

from plml_assets.defs.shared import fail_fast_on_bad_input
from plml_assets.lib import backtest as bt
from plml_assets.lib.backtest_plots import drawdown_plot, equity_curve_plot, rolling_ic_plot, yearly_returns_plot
from plml_assets.lib.plots import markdown_image
from plml_assets.lib.training import design_matrix
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.settings import ExperimentSettings

CONSTRUCTIONS = ("long_short", "long_only")
QUICK_MAX_TRAIN_DATES = 1260  # five years of history per refit in the quick profile


class BacktestConfig(dg.Config):
    retrain_every: int = Field(default=252, description="refit the models every this many trading days (quick profile: x2)")
    min_train_dates: int = Field(default=504, description="dates of history before the first out-of-sample date")
    max_train_dates: int | None = Field(default=2520, description="sliding training window in dates (None: expanding; "
                                        "quick profile: at most 1260)")
    cost_bps: float = Field(default=5.0, description="transaction cost in basis points per side (per unit of turnover)")
    quantile: float = Field(default=0.2, description="long-short: long the top and short the bottom quantile of scores")
    top_k: int = Field(default=10, description="long-only: equal weight in the k best scores (capped at half the universe)")
    ridge_alpha: float = Field(default=1.0, description="L2 penalty of the ridge baseline")


def effective_max_train_dates(config: BacktestConfig, settings: ExperimentSettings) -> int | None:
    """The sliding window the refits use: the config's, capped at five years in the quick profile."""
    if not settings.quick:
        return config.max_train_dates
    return max(config.min_train_dates, min(config.max_train_dates or QUICK_MAX_TRAIN_DATES, QUICK_MAX_TRAIN_DATES))


def strategy_scores(
    config: BacktestConfig, prices: pd.DataFrame, features: pd.DataFrame, labels: pd.DataFrame,
    params: dict, settings: ExperimentSettings, log,
) -> tuple[dict[str, pd.Series], pd.DataFrame]:
    """Out-of-sample scores of the model (XGBoost with the tuned ``params``, refitted walk-forward on every feature: the
    selection asset was fitted on later data, so using it here would leak), a ridge model on the
    same features, and two price baselines."""
    retrain = config.retrain_every * (2 if settings.quick else 1)
    max_train_dates = effective_max_train_dates(config, settings)
    y = labels.iloc[:, 0]
    X, y_known = design_matrix(features, y, features.columns)
    X_all = features  # predict every row, labelled or not
    scores: dict[str, pd.Series] = {}
    windows = None
    for name, fit_predict, X_model in (
        ("xgboost", bt.xgboost_fit_predict(params, horizon=settings.horizon), X_all),
        # Per-date rank normalization of the whole panel once, not of every training window again.
        ("ridge", bt.ridge_fit_predict(alpha=config.ridge_alpha, normalized=True), bt.rank_normalize(X_all)),
    ):
        start = time.perf_counter()
        wf = bt.walk_forward_scores(
            fit_predict, X_model, y.reindex(X_model.index), retrain_every=retrain, min_train_dates=config.min_train_dates,
            horizon=settings.horizon, max_train_dates=max_train_dates,
        )
        scores[name] = wf.scores
        windows = wf.windows if windows is None else windows
        log(f"backtest: {name} walk-forward, {len(wf.windows)} refits every {retrain} dates in {time.perf_counter() - start:.1f} s")
    scores["momentum_20d"] = bt.momentum_scores(prices, 20)
    scores["reversal_5d"] = bt.reversal_scores(prices, 5)
    return scores, windows


@dg.asset(
    group_name="backtest",
    kinds={"xgboost", "mlflow"},
    description="Walk-forward backtest with periodic refits: long-short quantile and long-only top-k, net of costs, "
    "against momentum, short-term reversal and ridge baselines on the same dates.",
)
def backtest(
    context: dg.AssetExecutionContext,
    config: BacktestConfig,
    market_prices: pd.DataFrame,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    xgboost_study: dict,
    settings: ExperimentSettings,
    mlflow_registry: MlflowRegistry,
) -> dg.Output[pd.DataFrame]:
    with fail_fast_on_bad_input():
        start = time.perf_counter()
        if not 0 < config.quantile <= 0.5:
            raise ValueError(f"quantile must be in (0, 0.5], got {config.quantile}")
        scores, windows = strategy_scores(config, market_prices, features, labels, xgboost_study["params"], settings, context.log.info)
        oos_dates = scores["xgboost"].dropna().index.get_level_values("date").unique()
        if len(oos_dates) == 0:
            raise ValueError(
                f"no out-of-sample dates: the panel has {market_prices.index.get_level_values('date').nunique()} dates, "
                f"min_train_dates={config.min_train_dates}"
            )
        n_symbols = market_prices.index.get_level_values("symbol").nunique()
        k = max(1, min(config.top_k, n_symbols // 2))
        forward = labels.iloc[:, 0]
        runs: dict[tuple[str, str], bt.Backtest] = {}
        for construction in CONSTRUCTIONS:
            for name, s in scores.items():
                runs[(name, construction)] = bt.run_backtest(
                    s, market_prices, construction=construction, quantile=config.quantile, k=k,
                    cost_bps=config.cost_bps, forward_returns=forward, dates=oos_dates,
                )
    returns = pd.DataFrame({f"{name}:{c}": r.result["net_return"] for (name, c), r in runs.items()})
    returns = returns[returns.index.isin(oos_dates)]
    tables = {c: bt.compare({n: runs[(n, c)] for n in scores}) for c in CONSTRUCTIONS}
    sentences = {c: bt.comparison_sentences(tables[c], model="xgboost") for c in CONSTRUCTIONS}
    model_ls = runs[("xgboost", "long_short")]
    model_lo = runs[("xgboost", "long_only")]
    attribution = bt.attribution(model_ls.result, model_ls.weights, market_prices)
    plots = {
        "equity_long_short": equity_curve_plot(model_ls.result, model_ls.benchmark, "xgboost long-short (net and gross) vs equal weight"),
        "equity_long_only": equity_curve_plot(model_lo.result, model_lo.benchmark, f"xgboost long-only top-{k} vs equal weight"),
        "drawdown_long_short": drawdown_plot(model_ls.result),
        "rolling_rank_ic": rolling_ic_plot({n: runs[(n, "long_short")].ic.rank_ic for n in scores}),
        "yearly_long_short": yearly_returns_plot(model_ls.result, model_ls.benchmark),
    }
    for c in CONSTRUCTIONS:
        for line in sentences[c]:
            context.log.info(f"backtest {c}: {line}")
    with mlflow_registry.tracking(), tempfile.TemporaryDirectory() as tmp:
        with mlflow.start_run(
            experiment_id=mlflow_registry.experiment_id(), run_name=f"backtest-{context.run.run_id[:8]}",
            tags={"plml.kind": "backtest", "dagster.run_id": context.run.run_id, "dagster.asset": "backtest"},
        ) as run:
            mlflow.log_params({"retrain_every": config.retrain_every, "cost_bps": config.cost_bps,
                               "quantile": config.quantile, "top_k": k,
                               "max_train_dates": effective_max_train_dates(config, settings)})
            for c in CONSTRUCTIONS:
                for strategy, row in tables[c].iterrows():
                    mlflow.log_metrics({f"{strategy}.{c}.{m}": float(v) for m, v in row.items() if pd.notna(v)})
                mlflow.log_text(tables[c].to_csv(), f"comparison_{c}.csv")
            for part in ("by_year", "by_symbol", "legs"):
                mlflow.log_text(attribution[part].to_csv(), f"attribution_{part}.csv")
            for name, png in plots.items():
                (Path(tmp) / f"{name}.png").write_bytes(png)
                mlflow.log_artifact(str(Path(tmp) / f"{name}.png"), "plots")
            run_id = run.info.run_id
    show = ["sharpe", "ann_return", "ann_volatility", "max_drawdown", "avg_turnover", "information_ratio", "rank_ic_mean", "rank_ic_tstat"]
    m = model_ls.metrics
    context.log.info(
        f"backtest: xgboost long-short net Sharpe {m['sharpe']:.2f}, annual return {m['ann_return']:.2%}, "
        f"max drawdown {m['max_drawdown']:.2%} over {len(oos_dates)} out-of-sample dates in {time.perf_counter() - start:.0f} s"
    )
    metadata = {
        "mlflow_run_id": run_id,
        "oos_start": str(pd.Timestamp(oos_dates.min()).date()),
        "oos_end": str(pd.Timestamp(oos_dates.max()).date()),
        "oos_dates": len(oos_dates),
        "refits": len(windows),
        "cost_bps_per_side": config.cost_bps,
        "xgboost_long_short_sharpe": float(m["sharpe"]),
        "xgboost_long_short_ann_return": float(m["ann_return"]),
        "xgboost_long_short_max_drawdown": float(m["max_drawdown"]),
        "xgboost_long_only_sharpe": float(model_lo.metrics["sharpe"]),
        "xgboost_long_only_information_ratio": float(model_lo.metrics["information_ratio"]),
        "xgboost_rank_ic_mean": float(m.get("rank_ic_mean", float("nan"))),
        "xgboost_rank_ic_tstat": float(m.get("rank_ic_tstat", float("nan"))),
        "versus_baselines": dg.MetadataValue.md("\n".join(f"- {c}: {s}" for c in CONSTRUCTIONS for s in sentences[c])),
        **{f"comparison_{c}": dg.MetadataValue.md(tables[c][[x for x in show if x in tables[c]]].round(4).to_markdown()) for c in CONSTRUCTIONS},
        "attribution_by_year": dg.MetadataValue.md(attribution["by_year"].round(4).to_markdown()),
        "attribution_by_symbol": dg.MetadataValue.md(
            attribution["by_symbol"].sort_values(attribution["by_symbol"].columns[0], ascending=False).round(4).to_markdown()
        ),
        "attribution_legs": dg.MetadataValue.md(attribution["legs"].round(4).to_markdown()) if "legs" in attribution else "n/a",
        **{name: dg.MetadataValue.md(markdown_image(png, name)) for name, png in plots.items()},
    }
    return dg.Output(returns, metadata=metadata)
