"""Prices in, labels and features out."""


import time

import dagster as dg
import pandas as pd

from plml_assets.lib import prices as price_lib
from plml_assets.lib.features import FEATURE_SET_VERSION, build_features
from plml_assets.lib.labels import forward_returns
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


@dg.asset(group_name="data", kinds={"pandas"}, description="Forward return over the horizon, per symbol.")
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


@dg.asset(group_name="data", kinds={"pandas"}, description="Vectorized panel features without look-ahead.")
def features(context: dg.AssetExecutionContext, market_prices: pd.DataFrame) -> dg.Output[pd.DataFrame]:
    start = time.perf_counter()
    frame, skipped = build_features(market_prices)
    elapsed = time.perf_counter() - start
    for group, reason in skipped.items():
        context.log.info(f"features: skipped group {group!r}: {reason}")
    missing = frame.isna().mean().sort_values(ascending=False)
    context.log.info(f"features: {frame.shape[1]} features on {len(frame):,} rows in {elapsed:.1f} s")
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
