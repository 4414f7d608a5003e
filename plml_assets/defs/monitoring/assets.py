"""Is the champion still trained on the market we score? Feature, prediction and performance drift."""

import time

import dagster as dg
import numpy as np
import pandas as pd
from pydantic import Field

from plml_assets.defs.shared import fail_fast_on_bad_input, split_for, step_tags
from plml_assets.lib.explain.contributions import mean_abs
from plml_assets.lib.explain.plots import version_profiles_plot
from plml_assets.lib.monitoring.drift import (
    DriftThresholds,
    data_age_days,
    decide_retraining,
    feature_drift,
    importance_weighted_drift,
    performance_decay,
    prediction_drift,
    profile_drift,
    realized_rank_ic,
    summarize,
)
from plml_assets.lib.plots import drift_plot, markdown_image
from plml_assets.lib.registry.serving import history_days, model_features
from plml_assets.resources.mlflow_registry import CHAMPION, MlflowRegistry
from plml_assets.resources.settings import ExperimentSettings


class DriftConfig(dg.Config):
    recent_days: int = Field(default=60, ge=5, description="newest trading dates compared with the champion's training window")
    reference_days: int = Field(default=250, ge=20, description="trading dates of the reference window")
    reference: str = Field(
        default="holdout",
        description="'holdout': the reference window ends with the champion's holdout (the newest data it was validated on); "
        "'training': it ends with its training data. A year-old reference flags calm windows as drift: on the embedded panel "
        "the share of calm 60-date windows flagged fell from 52% to 22% with the newer one (benchmarks/drift.py)",
    )
    bins: int = Field(default=10, ge=2, le=100, description="PSI bins (quantiles of the reference)")
    psi_warn: float = Field(default=0.1, description="a feature with PSI above this is worth a look")
    psi_retrain: float = Field(default=0.25, description="a feature with PSI above this has drifted")
    max_drifted_share: float = Field(default=0.4, description="retrain when more than this share of the champion's features drifted")
    prediction_psi_retrain: float = Field(default=0.25, description="retrain when the champion's score distribution drifted more than this (PSI)")
    min_realized_rank_ic: float | None = Field(default=0.0, description="retrain when the realized rank IC on newly labelled dates falls below this")
    max_decay: float | None = Field(default=0.03, description="retrain when realized rank IC is this much below the champion's holdout rank IC")
    performance_z: float | None = Field(default=1.645, description="the performance rules fire only when the breach exceeds "
                                        "this many standard errors of the realized rank IC (horizon-overlap aware); None: point estimate alone")
    max_age_days: int | None = Field(default=None, description="retrain when the champion's training data ends more than this many trading days before the newest date")
    profile_dates: int = Field(default=20, ge=0, description="newest dates the champion is explained on to compare its "
                               "reliance on each feature (mean |SHAP|) with the profile recorded on its holdout at registration "
                               "(shap_profile: shift, rank correlation, top features); 0 skips it. Reported, not a retraining rule")
    min_dates: int = Field(default=60, ge=1, description="newly labelled dates needed before realized performance is judged "
                           "(a 60-date rank IC on 20 stocks still has a standard error near 0.07)")

    def thresholds(self) -> DriftThresholds:
        return DriftThresholds(
            psi_warn=self.psi_warn, psi_retrain=self.psi_retrain, max_drifted_share=self.max_drifted_share,
            prediction_psi_retrain=self.prediction_psi_retrain, min_realized_rank_ic=self.min_realized_rank_ic,
            max_decay=self.max_decay, performance_z=self.performance_z, max_age_days=self.max_age_days,
        ).validate()


def _finite_json(value):
    """``value`` with NaN/inf floats as None (JSON metadata has no NaN)."""
    if isinstance(value, dict):
        return {k: _finite_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_json(v) for v in value]
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value


def _no_champion(thresholds: DriftThresholds) -> dg.Output:
    decision = {"retrain": False, "severity": "ok", "reasons": [], "notes": ["no champion yet: nothing to compare"], "causes": []}
    return dg.Output({"champion": None, "summary": {}, "decision": decision, "thresholds": thresholds.__dict__},
                     metadata={"champion": "none", "severity": "ok", "retrain": False,
                               "decision": dg.MetadataValue.json(decision), "summary": dg.MetadataValue.json({}),
                               "thresholds": dg.MetadataValue.json(thresholds.__dict__)})


@dg.asset(
    group_name="monitoring",
    op_tags=step_tags("drift_metrics"),
    kinds={"mlflow"},
    automation_condition=dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed(),
    description="The newest data against the champion's training window: PSI and KS per feature, drift of the champion's "
    "score distribution, realized rank IC on dates labelled since its holdout, the data's age, and the retraining decision "
    "(lib/monitoring/drift.decide_retraining) the drift sensor acts on.",
)
def drift_metrics(
    context: dg.AssetExecutionContext,
    config: DriftConfig,
    market_prices: pd.DataFrame,
    features: pd.DataFrame,
    labels: pd.DataFrame,
    settings: ExperimentSettings,
    mlflow_registry: MlflowRegistry,
) -> dg.Output[dict]:
    with fail_fast_on_bad_input():
        start = time.perf_counter()
        thresholds = config.thresholds()
        champion = mlflow_registry.alias_version(CHAMPION)
        if champion is None:
            context.log.info("drift_metrics: no champion in the registry yet; nothing to compare")
            return _no_champion(thresholds)
        train_end = champion.tags.get("plml.train_end")
        holdout_end = champion.tags.get("plml.holdout_end")
        if not train_end:
            raise ValueError(f"champion v{champion.version} has no plml.train_end tag: its training window is unknown")
        scorer = mlflow_registry.load_model(CHAMPION).unwrap_python_model()  # its artefacts verified first
        columns = list(dict.fromkeys(c for _, cols in scorer.members().values() for c in cols))
        # The champion's own features, rebuilt from raw prices by its own pipeline (its recipes): the
        # features asset may generate other interactions now than when the champion was trained.
        features = model_features(market_prices[scorer.feature_columns], columns, getattr(scorer, "recipes", {}))
        dates = features.index.get_level_values("date")
        all_dates = dates.unique().sort_values()
        if config.reference not in ("holdout", "training"):
            raise ValueError(f"reference must be 'holdout' or 'training', got {config.reference!r}")
        reference_end = holdout_end if config.reference == "holdout" and holdout_end else train_end
        known = all_dates[all_dates <= pd.Timestamp(reference_end)]
        if len(known) == 0:
            raise ValueError(f"the panel holds no date up to the champion's reference end {reference_end}")
        reference_dates = known[-config.reference_days:]
        recent_dates = all_dates[-config.recent_days:]
        feature_table = feature_drift(features.loc[dates.isin(reference_dates), columns],
                                      features.loc[dates.isin(recent_dates), columns], bins=config.bins, seed=settings.seed)
        # The champion scores raw prices as the prediction engine would (its own feature pipeline).
        first = all_dates[max(0, all_dates.get_loc(reference_dates[0]) - history_days(getattr(scorer, "recipes", {})))]
        panel = market_prices[market_prices.index.get_level_values("date") >= first]
        scored = scorer.score(panel, all_dates=True).set_index(["date", "symbol"])["score"]
        score_dates = scored.index.get_level_values("date")
        prediction = prediction_drift(scored[score_dates.isin(reference_dates)], scored[score_dates.isin(recent_dates)], bins=config.bins)
        y, _ = split_for(labels, settings)
        since = pd.Timestamp(holdout_end or train_end)
        new = scored[score_dates > since]
        reference_ic = float(champion.tags.get("plml.metric.holdout_rank_ic", "nan"))
        performance = performance_decay(new, y.reindex(new.index), reference_ic, min_dates=config.min_dates,
                                        horizon=settings.horizon)
        age = data_age_days(train_end, all_dates)
        # Feature drift weighted by how much the champion leans on each feature (its mean |contribution|
        # on its holdout, stored with its model card): a drifted feature it barely reads matters less.
        with mlflow_registry.tracking():
            profile = mlflow_registry.version_profile(champion)
        weighted = importance_weighted_drift(feature_table, profile) if profile else None
        # The SHAP profile on new data: the champion explained on the newest dates, against its holdout's.
        shap_profile, profile_png = None, None
        if profile and config.profile_dates:
            explained = recent_dates[-config.profile_dates:]
            began = all_dates[max(0, all_dates.get_loc(explained[0]) - history_days(getattr(scorer, "recipes", {})))]
            parts = scorer.contributions_on(market_prices[market_prices.index.get_level_values("date") >= began], explained)
            now = mean_abs(parts)
            shap_profile = {**profile_drift(profile, now), "dates": int(len(explained)), "rows": int(len(parts)),
                            "window": [str(explained[0].date()), str(explained[-1].date())]}
            profile_png = version_profiles_plot({f"v{champion.version} holdout (registered)": pd.Series(profile),
                                                 f"newest {len(explained)} dates": now},
                                                title=f"champion v{champion.version}: reliance on its features, holdout vs new data",
                                                xlabel="explained on")
        summary = summarize(feature_table, prediction, performance, thresholds, age)
        decision = decide_retraining(summary, thresholds)
    realized = realized_rank_ic(new, y.reindex(new.index)) if len(new) else None
    png = drift_plot(feature_table, realized, thresholds)
    decision_dict = {"retrain": decision.retrain, "severity": decision.severity, "reasons": decision.reasons,
                     "notes": decision.notes, "causes": decision.causes}
    log = context.log.warning if decision.retrain else context.log.info
    log(f"drift_metrics: champion v{champion.version} ({len(columns)} features), reference "
        f"{reference_dates[0].date()}..{reference_dates[-1].date()} vs recent {recent_dates[0].date()}..{recent_dates[-1].date()}: "
        f"{decision.severity}" + (": " + "; ".join(decision.reasons) if decision.reasons else "")
        + f" ({time.perf_counter() - start:.1f} s)")
    clean = {k: (v if not isinstance(v, float) or np.isfinite(v) else None) for k, v in summary.items()}
    windows = {"reference_start": str(reference_dates[0].date()), "reference_end": str(reference_dates[-1].date()),
               "recent_start": str(recent_dates[0].date()), "recent_end": str(recent_dates[-1].date()),
               "performance_since": str(since.date())}
    return dg.Output(
        {"champion": champion.version, "summary": clean, "decision": decision_dict, "thresholds": thresholds.__dict__,
         "windows": windows, "prediction": {k: float(v) for k, v in prediction.items()},
         "performance": {k: (float(v) if isinstance(v, (int, float, np.floating)) else v) for k, v in performance.items()},
         "contribution_weighted": weighted, "shap_profile": shap_profile},
        metadata={
            "champion": f"v{champion.version}",
            "severity": decision.severity,
            "retrain": decision.retrain,
            "reasons": dg.MetadataValue.md("\n".join(f"- {r}" for r in decision.reasons) or "none"),
            "decision": dg.MetadataValue.json(decision_dict),
            "summary": dg.MetadataValue.json(clean),
            "thresholds": dg.MetadataValue.json(thresholds.__dict__),
            "windows": dg.MetadataValue.json(windows),
            "feature_psi": dg.MetadataValue.md(feature_table.head(20).round(4).to_markdown()),
            "importance_weighted_psi": (float(weighted["psi"]) if weighted else "no contribution profile for this champion"),
            "plot": dg.MetadataValue.md(markdown_image(png, "feature PSI and realized rank IC")),
            "shap_profile_shift": (round(float(shap_profile["shift"]), 4) if shap_profile else "no contribution profile for this champion"),
            "shap_profile": dg.MetadataValue.json(_finite_json(shap_profile) if shap_profile else {}),
            **({"shap_profile_plot": dg.MetadataValue.md(markdown_image(profile_png, "mean |SHAP| shares: holdout vs newest dates"))}
               if profile_png else {}),
            "seconds": round(time.perf_counter() - start, 1),
        },
    )
