"""Prices in, labels and features out."""


import json
import time

import dagster as dg
import pandas as pd
from pydantic import Field

from plml_assets.lib.data import prices as price_lib
from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.features.base import FEATURE_SET_VERSION, build_features
from plml_assets.resources.prices import PriceSource
from plml_assets.resources.settings import ExperimentSettings


def _table(frame: pd.DataFrame, limit: int = 25) -> dg.MetadataValue:
    return dg.MetadataValue.md(frame.head(limit).to_markdown())


@dg.asset(group_name="data", kinds={"pandas"}, description="Daily price panel (date, symbol) from the configured source.")
def market_prices(context: dg.AssetExecutionContext, price_source: PriceSource) -> dg.Output[pd.DataFrame]:
    start = time.perf_counter()
    panel = price_source.load()
    info = price_lib.describe_panel(panel)
    context.log.info(
        f"market_prices: {info['rows']:,} rows, {info['symbols']} symbols, {info['dates']} dates "
        f"{info['first_date']}..{info['last_date']} from {price_source.describe_source()} "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return dg.Output(
        panel,
        metadata={
            "source": price_source.describe_source(),
            "rows": info["rows"],
            "symbols": info["symbols"],
            "dates": info["dates"],
            "first_date": info["first_date"],
            "last_date": info["last_date"],
            "columns": ", ".join(info["columns"]),
            "fingerprint": price_lib.fingerprint(panel),
            "latest_prices": _table(panel.xs(panel.index.get_level_values("date").max(), level="date")),
        },
    )


# New prices move these on their own (declarative automation), once the blocking price checks passed.
FOLLOW_PRICES = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_blocking_checks_passed()


@dg.asset(group_name="data", kinds={"pandas"}, automation_condition=FOLLOW_PRICES,
          description="Forward return over the horizon, per symbol.")
def labels(context: dg.AssetExecutionContext, market_prices: pd.DataFrame, settings: ExperimentSettings) -> dg.Output[pd.DataFrame]:
    y = forward_returns(market_prices, settings.horizon)
    known = y.dropna()
    context.log.info(f"labels: {settings.horizon}-day forward returns, {len(known):,} known of {len(y):,}")
    stats = known.describe(percentiles=[0.01, 0.5, 0.99])
    return dg.Output(
        y.to_frame(),
        metadata={
            "horizon_days": settings.horizon,
            "label": str(y.name),
            "known_rows": int(len(known)),
            "unknown_rows": int(y.isna().sum()),
            "mean": float(stats["mean"]),
            "std": float(stats["std"]),
            "p01": float(stats["1%"]),
            "p99": float(stats["99%"]),
        },
    )


@dg.asset(group_name="data", kinds={"pandas"}, automation_condition=FOLLOW_PRICES,
          description="The hand-written base features: vectorized, without look-ahead.")
def base_features(context: dg.AssetExecutionContext, market_prices: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    start = time.perf_counter()
    frame, skipped = build_features(market_prices)
    elapsed = time.perf_counter() - start
    for group, reason in skipped.items():
        context.log.info(f"base_features: skipped group {group!r}: {reason}")
    missing = frame.isna().mean().sort_values(ascending=False)
    context.log.info(f"base_features: {frame.shape[1]} features on {len(frame):,} rows in {elapsed:.1f} s")
    return dg.Output(
        frame,
        metadata={
            "feature_count": int(frame.shape[1]),
            "rows": int(len(frame)),
            "seconds": round(elapsed, 2),
            "feature_set_version": FEATURE_SET_VERSION,
            "skipped_groups": dg.MetadataValue.json(skipped),
            "most_missing": _table(missing.rename("missing_ratio").to_frame(), 10),
            "features": ", ".join(frame.columns),
        },
    )


class FeatureGenerationConfig(dg.Config):
    spec: str = Field(
        default="",
        description="JSON object overriding GenerationSpec fields: base (feature names), lags, rolling_windows, rolling_stats "
        "(mean/std/z), diffs, ewm_spans, cross_sectional (rank/z/demean), interactions (product/ratio), top_k. "
        "'' = the defaults; '{\"base\": []}' with no interactions generates nothing.",
    )
    enabled: bool = Field(default=True, description="False: the model features are the base features alone")


@dg.multi_asset(
    group_name="data",
    outs={
        "features": dg.AssetOut(
            kinds={"pandas"},
            automation_condition=FOLLOW_PRICES,
            description="Model features: the base features plus those generated from declared primitives (lags, rolling "
            "mean/std/z-score, differences, EWMs, per-date rank/z-score/demeaning, and products/ratios of every pair of "
            "base features). Each selection (the final one, every CV fold and CPCV split) may use only the pairs of its own "
            "top-k base features, ranked on its own rows, and keeps only what helps under the purged CV.",
        ),
        "feature_recipes": dg.AssetOut(
            automation_condition=FOLLOW_PRICES,
            description="name -> primitive, inputs and parameters of every generated feature: the registered pyfunc "
            "rebuilds them from raw prices with these recipes.",
        ),
    },
)
def generated_features(
    context: dg.AssetExecutionContext,
    config: FeatureGenerationConfig,
    base_features: pd.DataFrame,
):
    from plml_assets.defs.shared import fail_fast_on_bad_input, json_object
    from plml_assets.lib.features.generation import GenerationSpec, generate, recipe_lookback

    with fail_fast_on_bad_input():
        start = time.perf_counter()
        spec = GenerationSpec.from_dict(json_object(config.spec, "spec"))
        if config.enabled:
            # Every pair of base features: which pairs a model may use (those of its top-k base features)
            # is decided by each selection on its own rows, never here on rows a CV fold validates on.
            frame, recipes = generate(base_features, spec, all_pairs=True)
        else:
            frame, recipes = base_features, {}
    by_primitive = pd.Series([r["primitive"] for r in recipes.values()], dtype=object).value_counts().to_dict()
    context.log.info(
        f"features: {base_features.shape[1]} base + {len(recipes)} generated ({by_primitive}) on {len(frame):,} rows "
        f"in {time.perf_counter() - start:.1f} s; recipes need {recipe_lookback(recipes)} more days of history"
    )
    yield dg.Output(frame, output_name="features", metadata={
        "feature_count": int(frame.shape[1]),
        "base_count": int(base_features.shape[1]),
        "generated_count": len(recipes),
        "generated_by_primitive": dg.MetadataValue.json(by_primitive),
        "seconds": round(time.perf_counter() - start, 2),
    })
    yield dg.Output({"recipes": recipes, "spec": spec.to_dict(), "lookback_days": recipe_lookback(recipes)},
                    output_name="feature_recipes", metadata={
        "generated_count": len(recipes),
        "recipes": dg.MetadataValue.md(
            pd.DataFrame([{"feature": n, "primitive": r["primitive"], "inputs": ", ".join(r["inputs"]),
                           "params": json.dumps(r.get("params", {}))} for n, r in recipes.items()]).to_markdown(index=False)
            if recipes else "none"),
        "lookback_days": recipe_lookback(recipes),
    })
