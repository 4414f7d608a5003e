"""market_prices and its blocking checks, materialized with real resources on temp dirs."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest

from plml_assets.defs.data.assets import base_features, generated_features, labels, market_prices
from plml_assets.defs.data.checks import market_prices_quality
from plml_assets.lib.data.prices import PriceDataError
from plml_assets_tests.conftest import slice_resources


def _base_csv(embedded_panel: pd.DataFrame, n_dates: int = 600, symbols=("AAPL", "KO", "MSFT", "PG")) -> pd.DataFrame:
    panel = embedded_panel[embedded_panel.index.get_level_values("symbol").isin(symbols)]
    dates = panel.index.get_level_values("date").unique()[-n_dates:]
    panel = panel[panel.index.get_level_values("date").isin(dates)].reset_index()
    # Realistic OHLCV around the real close so the range checks have something to check.
    rng = np.random.default_rng(0)
    spread = np.abs(rng.normal(0, 0.01, len(panel)))
    panel["open"] = panel["close"] * (1 + rng.normal(0, 0.003, len(panel)))
    panel["high"] = panel[["open", "close"]].max(axis=1) * (1 + spread)
    panel["low"] = panel[["open", "close"]].min(axis=1) * (1 - spread)
    panel["volume"] = rng.integers(1_000_000, 5_000_000, len(panel)).astype(float)
    return panel


def _run(tmp_path: Path, frame: pd.DataFrame, instance, name: str = "prices.csv"):
    path = tmp_path / name
    frame.to_csv(path, index=False)
    resources = slice_resources(tmp_path / "home", source=str(path))
    return dg.materialize(
        [market_prices, labels, base_features, generated_features, market_prices_quality],
        resources=resources,
        instance=instance,
        raise_on_error=False,
    )


def _check_results(result) -> dict[str, dg.AssetCheckEvaluation]:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def test_clean_real_panel_passes_every_check(tmp_path, embedded_panel, instance):
    result = _run(tmp_path, _base_csv(embedded_panel), instance)
    assert result.success
    checks = _check_results(result)
    assert set(checks) == {f"prices_{n}" for n in ("schema", "duplicates", "prices", "missing", "ranges", "history")}
    assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}
    mats = {m.asset_key.to_user_string() for m in result.get_asset_materialization_events() for m in [m.materialization]}
    assert {"market_prices", "labels", "base_features", "features", "feature_recipes"} <= mats


@pytest.mark.parametrize(
    "corrupt, check, expected",
    [
        (lambda f: pd.concat([f, f.iloc[[10]]]), "prices_duplicates", "1 duplicated (date, symbol)"),
        (lambda f: f.assign(close=np.where(f.index == 25, -3.0, f["close"])), "prices_prices", "non-positive"),
        (lambda f: f.assign(close=np.where(f.index == 25, np.inf, f["close"])), "prices_prices", "infinite"),
        (lambda f: f.assign(close=np.where((f["symbol"] == "KO") & (f.index % 5 == 0), np.nan, f["close"])), "prices_missing", "KO"),
        (lambda f: f.assign(high=np.where(f.index % 50 == 0, f["low"] * 0.5, f["high"])), "prices_ranges", "do not bracket"),
        (lambda f: f[f["date"] >= f["date"].unique()[-100]], "prices_history", "need at least 425 (horizon 5, a 120-date holdout"),
        (lambda f: f[f["symbol"].isin(["KO", "PG"])], "prices_history", "need at least 3"),
    ],
    ids=["duplicate", "negative", "infinite", "missing", "bracket", "few-dates", "few-symbols"],
)
def test_bad_panel_fails_its_check_and_stops_the_graph(tmp_path, embedded_panel, instance, corrupt, check, expected):
    frame = corrupt(_base_csv(embedded_panel)).reset_index(drop=True)
    result = _run(tmp_path, frame, instance)
    checks = _check_results(result)
    assert not checks[check].passed
    assert expected in checks[check].description
    assert not result.success
    mats = {m.materialization.asset_key.to_user_string() for m in result.get_asset_materialization_events()}
    assert "labels" not in mats and "base_features" not in mats and "features" not in mats  # blocked downstream


def test_offending_rows_are_named(tmp_path, embedded_panel, instance):
    frame = _base_csv(embedded_panel)
    bad_date = frame.loc[40, "date"]
    bad_symbol = frame.loc[40, "symbol"]
    frame.loc[40, "high"] = frame.loc[40, "low"] * 0.5
    checks = _check_results(_run(tmp_path, frame, instance))
    assert f"{pd.Timestamp(bad_date).date()} {bad_symbol}" in checks["prices_ranges"].description
    assert bad_symbol in checks["prices_ranges"].metadata["offenders"].value


def test_non_numeric_close_fails_schema_with_the_value(tmp_path, embedded_panel, instance):
    frame = _base_csv(embedded_panel)
    frame["close"] = frame["close"].astype(object)
    frame.loc[7, "close"] = "n/a!"
    checks = _check_results(_run(tmp_path, frame, instance))
    assert not checks["prices_schema"].passed
    assert "n/a!" in checks["prices_schema"].description
    assert "not evaluated" in checks["prices_duplicates"].description


def test_check_tolerance_is_configurable(tmp_path, embedded_panel, instance):
    frame = _base_csv(embedded_panel)
    frame.loc[40, "high"] = frame.loc[40, "low"] * 0.5  # 1 row of 2400 = 0.04%: tolerated by default
    result = _run(tmp_path, frame, instance)
    assert _check_results(result)["prices_ranges"].passed
    path = tmp_path / "prices.csv"
    strict = dg.materialize(
        [market_prices, market_prices_quality],
        resources=slice_resources(tmp_path / "home2", source=str(path)),
        instance=instance,
        raise_on_error=False,
        run_config={"ops": {"market_prices_quality": {"config": {"max_bad_range_fraction": 0.0}}}},
    )
    assert not _check_results(strict)["prices_ranges"].passed


@pytest.mark.parametrize(
    "source, message",
    [
        ("nowhere/prices.csv", "must be 'embedded' or the path of an existing"),
        ("bad.txt", "unknown extension"),
        ("garbage.parquet", "could not be read"),
        ("nocol.csv", "lacks required column(s) ['close']"),
    ],
)
def test_unreadable_sources_fail_with_a_clear_message(tmp_path, instance, source, message):
    (tmp_path / "bad.txt").write_text("date,symbol,close\n")
    (tmp_path / "garbage.parquet").write_bytes(b"not parquet at all")
    (tmp_path / "nocol.csv").write_text("date,symbol,price\n2020-01-02,AAA,1.0\n")
    path = source if source.startswith("nowhere") else str(tmp_path / source)
    with pytest.raises(PriceDataError, match=pytest.importorskip("re").escape(message)):
        dg.materialize([market_prices], resources=slice_resources(tmp_path / "home", source=path), instance=instance)


def test_unknown_symbol_is_named(tmp_path, instance):
    resources = slice_resources(tmp_path / "home", symbols=["AAPL", "NOPE"])
    with pytest.raises(PriceDataError, match="NOPE"):
        dg.materialize([market_prices], resources=resources, instance=instance)


def test_sp500_5yr_passes_with_its_known_flaws_reported(tmp_path, sp500_path, instance):
    resources = slice_resources(tmp_path / "home", source=str(sp500_path))
    result = dg.materialize([market_prices, market_prices_quality], resources=resources, instance=instance, raise_on_error=False)
    checks = _check_results(result)
    assert all(c.passed for c in checks.values()), {k: c.description for k, c in checks.items()}
    assert "12 row(s)" in checks["prices_ranges"].description  # the 12 documented bad high/low rows
    assert checks["prices_missing"].metadata["missing_values"].value >= 11  # the 11 documented missing prices
