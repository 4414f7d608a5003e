"""The backtest of the leaderboard's pick, on dates no choice saw, against simple baselines.

Two segments, one portfolio rule:

- **Walk-forward segment** (training dates only, the walk-forward CV folds' test dates, which end a
  horizon before the holdout): every fold refits the pick's own pipeline (done per family before the
  leaderboard by the ``{family}_study`` steps, ``{family}_nested_predictions``, which reuse the study's own
  fits where a trial was fitted on that fold in the same step) (each member family on the
  features its fold selected on its own training rows) with the parameters chosen on *earlier*
  folds only: the study trial with the best mean score over the folds before it (fold 1: the
  study's first trial, whose configuration depends on no score). An ensemble combines its members'
  refitted predictions with weights fitted on earlier folds only (``ensemble_oof_scores``).
- **Holdout segment**: the registered model's own frozen holdout predictions (the family's
  ``*_holdout_predictions`` or the ensemble's), so no refit ever sees a holdout label.

Baselines on the same dates: 20-day momentum, 5-day reversal, a ridge model on rank-normalized
features (refitted on the same folds; for the holdout fitted on the training window) and the equal
weight universe. Portfolios are overlapping tranches matched to the label horizon (a 1/h slice of
the book re-formed each day and held h days), traded with a one-day execution lag, costs per side.
"""

import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
from pydantic import Field

from plml_assets.defs.shared import FAMILIES, TRAINING_RETRY, fail_fast_on_bad_input, fold_columns, split_for, step_tags, training_window
from plml_assets.lib.backtest import engine as bt
from plml_assets.lib.backtest.plots import drawdown_plot, equity_curve_plot, rolling_ic_plot, yearly_returns_plot
from plml_assets.lib.comparison.leaderboard import nested_walk_forward
from plml_assets.lib.ensemble.combine import ensemble_oof_scores
from plml_assets.lib.models.training import cross_validate, folds_from_assignments
from plml_assets.lib.plots import markdown_image
from plml_assets.lib.validation.metrics import per_date_ic
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.settings import ExperimentSettings

CONSTRUCTIONS = ("long_short", "long_only")
BASELINES = ("momentum_20d", "reversal_5d", "ridge")


class BacktestConfig(dg.Config):
    cost_bps: float = Field(default=5.0, ge=0, description="transaction cost in basis points per side (per unit of turnover)")
    quantile: float = Field(default=0.2, description="long-short: long the top and short the bottom quantile of scores")
    top_k: int = Field(default=10, description="long-only: equal weight in the k best scores (capped at half the universe)")
    ridge_alpha: float = Field(default=1.0, description="L2 penalty of the ridge baseline")
    holding_days: int | None = Field(default=None, description="days each tranche is held (overlapping tranches, 1/h of the "
                                     "book re-formed daily); None: the label horizon; 1: the whole book re-formed daily")
    execution_lag_days: int = Field(default=1, ge=0, le=20, description="dates between a signal's close and the close it is "
                                    "traded at (0 trades at the signal's own close, which nobody can)")


def backtest_candidate(model_leaderboard: dict) -> tuple[str, bool]:
    """The candidate the evidence is about: the leaderboard's pick, or when it picked nothing the
    best-ranked non-baseline candidate on its primary metric (so the report still says why not)."""
    winner = model_leaderboard["selection"]["winner"]
    if winner is not None:
        return str(winner), True
    table = pd.DataFrame(model_leaderboard["table"]).set_index("candidate")
    primary = model_leaderboard["criteria"]["primary"]
    contenders = table[table["kind"] != "baseline"]
    values = pd.to_numeric(contenders[primary], errors="coerce")
    return str(values.idxmax() if values.notna().any() else contenders.index[0]), False


def nested_trials(study: dict, n_folds: int) -> list[tuple[dict, int | None]]:
    """Per walk-forward fold, the parameters the study would have chosen on the earlier folds only
    and the trial they come from (None: the study's own parameters, no trial record to choose by)."""
    nested = nested_walk_forward(study)
    trials = {t["number"]: t for t in study.get("trials", [])}
    out = []
    for k in range(n_folds):
        if nested is not None and k < len(nested.chosen):
            trial = trials[nested.chosen[k]]
            out.append(({**study["params"], **trial["params"]}, int(trial["number"])))
        else:
            out.append((dict(study["params"]), None))
    return out


def is_nested(study: dict) -> bool:
    return nested_walk_forward(study) is not None and len(study.get("trials", [])) > 1


def nested_member_predictions(family: str, study: dict, X: pd.DataFrame, y: pd.Series, folds, columns, horizon: int,
                              log, kept: Callable[[int, int, dict], np.ndarray | None] | None = None) -> tuple[pd.Series, pd.Series, dict]:
    """``family`` refitted on every walk-forward fold with the parameters its study would have chosen
    on the earlier folds only. Returns (predictions on the folds' test rows, fold of each row, how).

    ``kept(trial, fold position, params)``: a trial's own test predictions on that fold when the study
    ran it in this process with exactly these parameters on exactly these folds and columns (the
    same fit, so it is reused instead of redone), else None."""
    parts, fold_of_row, used, reused = [], [], [], 0
    for k, (fold, (params, trial)) in enumerate(zip(folds, nested_trials(study, len(folds)))):
        used.append(trial)
        stored = kept(trial, k, params) if kept is not None and trial is not None else None
        if stored is not None:
            part = pd.Series(stored, index=X.index[np.sort(np.asarray(fold[1]))], name="prediction")
            reused += 1
        else:
            preds: list[pd.Series] = []
            cross_validate(params, X, y, [fold], horizon, gap_bound=2.0, family=family, fold_columns=[columns[k]],
                           fold_predictions=preds, train_eval_dates=20)
            part = preds[0]
        parts.append(part)
        fold_of_row.append(pd.Series(k + 1, index=part.index))
        log(f"{family}: nested walk-forward fold {k + 1}/{len(folds)} with trial {used[-1]}'s parameters: "
            + ("the study's own fit reused" if stored is not None else "refitted"))
    how = {"trials_used": used, "nested": is_nested(study), "fits_reused": reused}
    return pd.concat(parts).sort_index(), pd.concat(fold_of_row).sort_index(), how


def nested_predictions_table(family: str, study: dict, X: pd.DataFrame, y: pd.Series, cv_splits: pd.DataFrame,
                             cv_fold_features: pd.DataFrame, horizon: int, log, kept=None) -> tuple[pd.DataFrame, dict]:
    """The ``{family}_nested_predictions`` table (columns fold, prediction, trial; trial -1: the study's
    own parameters) on the walk-forward folds of ``cv_splits``, each fold on the features it selected,
    and how it was made (see :func:`nested_member_predictions`)."""
    folds = folds_from_assignments(X, cv_splits[cv_splits["scheme"] == "walk_forward"])
    preds, fold_of_row, how = nested_member_predictions(family, study, X, y, folds, fold_columns(cv_fold_features, "walk_forward"),
                                                        horizon, log, kept=kept)
    trial_of_fold = {k + 1: (-1 if t is None else int(t)) for k, t in enumerate(how["trials_used"])}
    table = pd.DataFrame({"fold": fold_of_row.astype("int64"), "prediction": preds.to_numpy(dtype="float64")}, index=preds.index)
    table["trial"] = table["fold"].map(trial_of_fold).astype("int64")
    return table, how


def stored_nested_predictions(table: pd.DataFrame, family: str, study: dict, X: pd.DataFrame, folds) -> tuple[pd.Series, pd.Series, dict]:
    """What :func:`nested_member_predictions` returned, read back from ``{family}_nested_predictions``;
    refused unless it holds exactly these folds' test rows, refitted with the trials the study chooses now."""
    stale = f"re-materialize {family}_study with {family}_nested_predictions (one step makes both)"
    if sorted(table["fold"].unique()) != list(range(1, len(folds) + 1)):
        raise ValueError(f"{family}_nested_predictions holds folds {sorted(table['fold'].unique())}, the walk-forward "
                         f"scheme has {len(folds)}: {stale}")
    chosen = [t for _, t in nested_trials(study, len(folds))]
    for k, (_, test_idx) in enumerate(folds, start=1):
        part = table[table["fold"] == k]
        expected = X.index[np.sort(test_idx)]
        if len(part) != len(expected) or not part.index.sort_values().equals(expected):
            raise ValueError(f"{family}_nested_predictions fold {k} holds {len(part):,} rows, not the fold's "
                             f"{len(expected):,} test rows of this training window: {stale}")
        stored = int(part["trial"].iloc[0])
        if stored != (-1 if chosen[k - 1] is None else chosen[k - 1]):
            raise ValueError(f"{family}_nested_predictions fold {k} was refitted with trial {stored}'s parameters, "
                             f"{family}_study now chooses trial {chosen[k - 1]}: {stale}")
    table = table.sort_index()
    how = {"trials_used": chosen, "nested": is_nested(study)}
    return table["prediction"], table["fold"], how


def pick_scores(candidate: str, inputs: dict, X: pd.DataFrame, y: pd.Series, folds, settings: ExperimentSettings,
                ) -> tuple[pd.Series, pd.Series, dict]:
    """(walk-forward segment scores, holdout segment scores, description) of the candidate."""
    ens = inputs["ensemble_model"]
    if candidate in FAMILIES:
        members, method = [candidate], None
    elif candidate.startswith("ensemble_") and candidate[len("ensemble_"):] in ens["methods"]:
        members, method = list(ens["members"]), candidate[len("ensemble_"):]
    else:
        raise ValueError(f"backtest: unknown candidate {candidate!r}: neither a family of {FAMILIES} nor an ensemble of "
                         f"{sorted(ens['methods'])}")
    member_preds, how = {}, {}
    fold_of_row = None
    for f in members:  # made by the {family}_study steps, before the leaderboard and side by side
        member_preds[f], fold_of_row, how[f] = stored_nested_predictions(inputs[f"{f}_nested_predictions"], f, inputs[f"{f}_study"], X, folds)
    if method is None:
        wf = member_preds[candidate]
        hold = inputs[f"{candidate}_holdout_predictions"]["prediction"]
    else:
        frame = pd.DataFrame(member_preds).dropna()
        fit = ens["methods"][method]["fit"]
        details = fit.get("details", {}) if isinstance(fit, dict) else {}
        kwargs = {k: details[k] for k in ("shrinkage", "objective") if k in details}
        wf, _ = ensemble_oof_scores(method, frame, y.reindex(frame.index), fold_of_row.reindex(frame.index),
                                    horizon=settings.horizon, seed=settings.seed, **kwargs)
        preds = inputs["ensemble_predictions"]
        hold = preds.loc[(preds["method"] == method) & (preds["split"] == "holdout"), "prediction"]
    nested = all(h["nested"] for h in how.values())
    return wf.rename("score"), hold.rename("score"), {"members": members, "method": method, "per_member": how, "nested": nested}


def ridge_scores(X: pd.DataFrame, y: pd.Series, folds, features: pd.DataFrame, holdout_dates, alpha: float) -> pd.Series:
    """The ridge baseline on the same walk-forward folds, and on the holdout fitted on the training window."""
    fit_predict = bt.ridge_fit_predict(alpha=alpha, normalized=True)
    normalized = bt.rank_normalize(features, columns=X.columns)  # float32, column by column: no copy of the panel first
    Xn = normalized.reindex(X.index)
    parts = []
    for train_idx, test_idx in folds:
        parts.append(pd.Series(fit_predict(Xn.iloc[train_idx], y.iloc[train_idx], Xn.iloc[test_idx]), index=X.index[test_idx]))
    hold_rows = normalized[normalized.index.get_level_values("date").isin(holdout_dates)]
    parts.append(pd.Series(fit_predict(Xn, y, hold_rows), index=hold_rows.index))
    return pd.concat(parts).sort_index()


_INS = {
    **{f"{f}_study": dg.AssetIn(f"{f}_study") for f in FAMILIES},
    **{f"{f}_holdout_predictions": dg.AssetIn(f"{f}_holdout_predictions") for f in FAMILIES},
    **{f"{f}_nested_predictions": dg.AssetIn(f"{f}_nested_predictions") for f in FAMILIES},
    "ensemble_model": dg.AssetIn("ensemble_model"),
    "ensemble_predictions": dg.AssetIn("ensemble_predictions"),
}


@dg.asset(
    group_name="backtest",
    op_tags=step_tags("backtest"),
    kinds={"pandas", "mlflow"},
    ins=_INS,
    retry_policy=TRAINING_RETRY,
    description="Backtest of the leaderboard's pick (any family or ensemble) on dates no choice saw: a nested walk-forward "
    "segment on the training dates (each fold refitted with parameters chosen on earlier folds only) and the holdout "
    "scored by the registered model's frozen predictions; overlapping tranches matched to the horizon, a one-day "
    "execution lag and costs per side, against momentum, reversal, ridge and equal weight on the same dates.",
)
def backtest(
    context: dg.AssetExecutionContext,
    config: BacktestConfig,
    market_prices: pd.DataFrame,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    cv_splits: pd.DataFrame,
    model_leaderboard: dict,
    settings: ExperimentSettings,
    mlflow_registry: MlflowRegistry,
    **inputs,
) -> dg.Output[pd.DataFrame]:
    with fail_fast_on_bad_input():
        start = time.perf_counter()
        if not 0 < config.quantile <= 0.5:
            raise ValueError(f"quantile must be in (0, 0.5], got {config.quantile}")
        holding = settings.horizon if config.holding_days is None else config.holding_days
        if holding < 1:
            raise ValueError(f"holding_days must be >= 1 (or None for the horizon), got {holding}")
        candidate, picked = backtest_candidate(model_leaderboard)
        X, y, split = training_window(features, labels, settings)
        y_all, _ = split_for(labels, settings)
        folds = folds_from_assignments(X, cv_splits[cv_splits["scheme"] == "walk_forward"])
        wf, hold, how = pick_scores(candidate, inputs, X, y, folds, settings)
        scores = {candidate: pd.concat([wf, hold]).sort_index()}
        scores["momentum_20d"] = bt.momentum_scores(market_prices, 20)
        scores["reversal_5d"] = bt.reversal_scores(market_prices, 5)
        scores["ridge"] = ridge_scores(X, y, folds, features, split.holdout_dates, config.ridge_alpha)
        signal_dates = scores[candidate].dropna().index.get_level_values("date").unique().sort_values()
        if len(signal_dates) == 0:
            raise ValueError(f"backtest: {candidate} has no score on any walk-forward or holdout date")
        calendar = market_prices.index.get_level_values("date").unique().sort_values()
        window = calendar[(calendar >= signal_dates[0]) & (calendar <= signal_dates[-1])]
        n_symbols = market_prices.index.get_level_values("symbol").nunique()
        k = max(1, min(config.top_k, n_symbols // 2))
        runs: dict[tuple[str, str], bt.Backtest] = {}
        for construction in CONSTRUCTIONS:
            for name, s in scores.items():
                runs[(name, construction)] = bt.run_backtest(
                    s, market_prices, construction=construction, quantile=config.quantile, k=k, cost_bps=config.cost_bps,
                    forward_returns=y_all, dates=signal_dates, holding_days=holding, execution_lag=config.execution_lag_days,
                )
    returns = pd.DataFrame({f"{name}:{c}": r.result["net_return"] for (name, c), r in runs.items()})
    returns["equal_weight:benchmark"] = runs[(candidate, "long_short")].benchmark
    returns = returns.reindex(window)
    for name, s in scores.items():  # per-date rank IC of each signal: the DSR's unit
        ic = per_date_ic(y_all.reindex(s.index).to_numpy(), s.to_numpy(), s.index.get_level_values("date"), method="spearman")
        returns[f"{name}:rank_ic"] = ic.reindex(window)
    returns[f"{candidate}:turnover"] = runs[(candidate, "long_short")].result["turnover"].reindex(window)
    returns["segment"] = np.where(window >= split.holdout_dates[0], "holdout", "walk_forward")
    # The settings the gate reports travel with the returns (one value per column).
    returns["nested"] = bool(how["nested"])
    returns["holding_days"] = int(holding)
    returns["execution_lag_days"] = int(config.execution_lag_days)
    returns["cost_bps_per_side"] = float(config.cost_bps)

    def window_metrics(name: str, construction: str = "long_short") -> dict[str, float]:
        result = runs[(name, construction)].result.reindex(window)
        m = bt.performance(result, runs[(name, construction)].benchmark.reindex(window))
        m["rank_ic_mean"] = float(returns[f"{name}:rank_ic"].mean())
        return m

    table = {c: pd.DataFrame({n: window_metrics(n, c) for n in scores}).T for c in CONSTRUCTIONS}
    for c in CONSTRUCTIONS:
        table[c].index.name = "strategy"
    bench = runs[(candidate, "long_short")].benchmark.reindex(window)
    equal_weight_sharpe = float(bench.mean() / bench.std(ddof=1) * np.sqrt(252)) if bench.std(ddof=1) > 0 else float("nan")
    sentences = {c: bt.comparison_sentences(table[c], model=candidate) for c in CONSTRUCTIONS}
    model_ls, model_lo = runs[(candidate, "long_short")], runs[(candidate, "long_only")]
    attribution = bt.attribution(model_ls.result, model_ls.weights, market_prices)
    plots = {
        "equity_long_short": equity_curve_plot(model_ls.result.reindex(window), bench,
                                               f"{candidate} long-short (net and gross) vs equal weight"),
        "equity_long_only": equity_curve_plot(model_lo.result.reindex(window), bench, f"{candidate} long-only top-{k} vs equal weight"),
        "drawdown_long_short": drawdown_plot(model_ls.result.reindex(window)),
        "rolling_rank_ic": rolling_ic_plot({n: returns[f"{n}:rank_ic"].dropna() for n in scores}),
        "yearly_long_short": yearly_returns_plot(model_ls.result.reindex(window), bench),
    }
    for c in CONSTRUCTIONS:
        for line in sentences[c]:
            context.log.info(f"backtest {c}: {line}")
    m = table["long_short"].loc[candidate]
    turnover = float(returns[f"{candidate}:turnover"].mean())
    segments = {seg: returns.loc[returns["segment"] == seg, f"{candidate}:long_short"] for seg in ("walk_forward", "holdout")}
    segment_sharpe = {seg: float(r.mean() / r.std(ddof=1) * np.sqrt(252)) if len(r) > 2 and r.std(ddof=1) > 0 else float("nan")
                      for seg, r in segments.items()}
    with mlflow_registry.tracking(), tempfile.TemporaryDirectory() as tmp:
        with mlflow.start_run(
            experiment_id=mlflow_registry.experiment_id(), run_name=f"backtest-{context.run.run_id[:8]}",
            tags={"plml.kind": "backtest", "plml.candidate": candidate, "dagster.run_id": context.run.run_id,
                  "dagster.asset": "backtest"},
        ) as run:
            mlflow.log_params({"candidate": candidate, "cost_bps_per_side": config.cost_bps, "quantile": config.quantile,
                               "top_k": k, "holding_days": holding, "execution_lag_days": config.execution_lag_days})
            for c in CONSTRUCTIONS:
                for strategy, row in table[c].iterrows():
                    mlflow.log_metrics({f"{strategy}.{c}.{key}": float(v) for key, v in row.items() if pd.notna(v)})
                mlflow.log_text(table[c].to_csv(), f"comparison_{c}.csv")
            for part in ("by_year", "by_symbol", "legs"):
                mlflow.log_text(attribution[part].to_csv(), f"attribution_{part}.csv")
            mlflow.log_dict(how, "pick_pipeline.json")
            for name, png in plots.items():
                (Path(tmp) / f"{name}.png").write_bytes(png)
                mlflow.log_artifact(str(Path(tmp) / f"{name}.png"), "plots")
            run_id = run.info.run_id
    context.log.info(
        f"backtest of {candidate}: long-short net Sharpe {m['sharpe']:.2f} (walk-forward {segment_sharpe['walk_forward']:.2f}, "
        f"holdout {segment_sharpe['holdout']:.2f}), turnover {turnover:.3f}/day, {len(window)} dates "
        f"{window[0].date()}..{window[-1].date()} in {time.perf_counter() - start:.0f} s"
    )
    show = ["sharpe", "ann_return", "ann_volatility", "max_drawdown", "avg_turnover", "ann_cost", "information_ratio", "rank_ic_mean"]
    metadata = {
        "candidate": candidate,
        "candidate_is_pick": picked,
        "mlflow_run_id": run_id,
        "backtest_start": str(window[0].date()),
        "backtest_end": str(window[-1].date()),
        "holdout_start": str(split.holdout_dates[0].date()),
        "dates": len(window),
        "walk_forward_dates": int((returns["segment"] == "walk_forward").sum()),
        "holdout_dates": int((returns["segment"] == "holdout").sum()),
        "nested": bool(how["nested"]),
        "pipeline": dg.MetadataValue.json(how),
        "holding_days": holding,
        "execution_lag_days": config.execution_lag_days,
        "cost_bps_per_side": config.cost_bps,
        "turnover_per_day": turnover,
        "long_short_net_sharpe": float(m["sharpe"]),
        "walk_forward_net_sharpe": segment_sharpe["walk_forward"],
        "holdout_net_sharpe": segment_sharpe["holdout"],
        "equal_weight_sharpe": equal_weight_sharpe,
        "net_sharpe": dg.MetadataValue.json({**{n: round(float(table["long_short"].loc[n, "sharpe"]), 4) for n in scores},
                                             "equal_weight": round(equal_weight_sharpe, 4)}),
        "versus_baselines": dg.MetadataValue.md("\n".join(f"- {c}: {s}" for c in CONSTRUCTIONS for s in sentences[c])),
        **{f"comparison_{c}": dg.MetadataValue.md(table[c][[x for x in show if x in table[c]]].round(4).to_markdown()) for c in CONSTRUCTIONS},
        "attribution_by_year": dg.MetadataValue.md(attribution["by_year"].round(4).to_markdown()),
        "attribution_legs": dg.MetadataValue.md(attribution["legs"].round(4).to_markdown()) if "legs" in attribution else "n/a",
        **{name: dg.MetadataValue.md(markdown_image(png, name)) for name, png in plots.items()},
    }
    return dg.Output(returns, metadata=metadata)
