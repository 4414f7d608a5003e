"""Blocking data-quality checks on market_prices: a bad panel stops the graph before training."""


from collections.abc import Iterator

import dagster as dg
import pandas as pd
from pydantic import Field

from plml_assets.lib.data import prices as price_lib
from plml_assets.resources.settings import ExperimentSettings

CHECK_NAMES = ("schema", "duplicates", "prices", "missing", "ranges", "history", "volume", "frozen", "splits")


class PriceQualityConfig(dg.Config):
    max_bad_price_fraction: float = Field(default=0.0, ge=0, lt=1, description="tolerated share of rows with non-positive/infinite prices")
    max_missing_fraction: float = Field(default=0.05, ge=0, lt=1, description="tolerated share of a symbol's trading days missing")
    max_bad_range_fraction: float = Field(default=0.001, ge=0, lt=1, description="tolerated share of rows whose high/low do not bracket open/close")
    min_dates: int = Field(default=300, ge=2, description="fewest training dates before the holdout window")
    min_symbols: int = Field(default=3, ge=1, description="fewest symbols (cross-sectional features and IC need >= 3)")
    max_frozen_days: int = Field(default=10, ge=2, description="a close unchanged for this many trading days in a row is a stale feed")
    max_split_suspects: int = Field(default=0, ge=0, description="tolerated one-day moves that look like unadjusted splits "
                                    "(raise it for moves you checked are real)")
    block_on_split_suspects: bool = Field(default=False, description="refuse the panel (not only warn) when more than "
                                          "max_split_suspects moves look like unadjusted splits")


@dg.multi_asset_check(
    specs=[
        dg.AssetCheckSpec(name=f"prices_{name}", asset="market_prices", blocking=True, description=doc)
        for name, doc in zip(
            CHECK_NAMES,
            (
                "required columns present with numeric dtypes",
                "no duplicated (date, symbol)",
                "no non-positive or infinite prices beyond the tolerance",
                "no symbol missing too many trading days",
                "high/low bracket open/close",
                "enough dates and symbols for the horizon, the holdout and the CV",
                "no negative volume",
                "no symbol's close frozen (unchanged) for max_frozen_days trading days up to the latest date (a dead feed; "
                "stale runs inside the history warn)",
                "no one-day move that looks like an unadjusted split (a split ratio, the market flat, volume the inverse way); "
                "a warning unless block_on_split_suspects",
            ),
        )
    ],
    can_subset=False,
)
def market_prices_quality(
    context: dg.AssetCheckExecutionContext, config: PriceQualityConfig, market_prices: pd.DataFrame, settings: ExperimentSettings
) -> Iterator[dg.AssetCheckResult]:
    thresholds = price_lib.QualityThresholds(**config.model_dump())
    outcomes = {o.name: o for o in price_lib.run_quality_checks(market_prices, thresholds, settings.horizon, settings.holdout_days)}
    for name in CHECK_NAMES:
        outcome = outcomes.get(name)
        if outcome is None:  # schema failed: the other checks cannot run on this panel
            yield dg.AssetCheckResult(
                check_name=f"prices_{name}", passed=False, severity=dg.AssetCheckSeverity.ERROR,
                description=f"not evaluated: the schema check failed ({outcomes['schema'].message})",
            )
            continue
        if not outcome.passed:
            (context.log.error if outcome.blocking else context.log.warning)(
                f"market_prices {name} check {'failed' if outcome.blocking else 'warns'}: {outcome.message}")
        yield dg.AssetCheckResult(
            check_name=f"prices_{name}",
            passed=outcome.passed,
            # a failed blocking check stops everything downstream only with severity ERROR
            severity=dg.AssetCheckSeverity.ERROR if outcome.blocking else dg.AssetCheckSeverity.WARN,
            description=outcome.message,
            metadata={
                **{k: v for k, v in outcome.stats.items()},
                "offenders": dg.MetadataValue.md(outcome.offenders_markdown()),
            },
        )
