"""The pluggable price source: the embedded real panel or a CSV/Parquet file."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from plml_assets.lib.data import prices as price_lib
from plml_assets.resources.paths import as_of_file


class PriceSource(dg.ConfigurableResource):
    """Reads the price panel. ``source`` is ``embedded`` (the 20-stock S&P 500 panel bundled in
    skfolio) or a path to a long CSV/Parquet panel; set it with ``PLML_PRICES``."""

    source: str = Field(default="embedded", description="'embedded' or a path to a CSV/Parquet long panel")
    symbols: list[str] | None = Field(default=None, description="keep only these symbols (None = all)")
    start_date: str | None = Field(default=None, description="first date kept, ISO format (None = all)")
    end_date: str | None = Field(default=None, description="last date kept, ISO format (None = all)")
    as_of: str | None = Field(
        default=None,
        description="simulated today: dates after it do not exist yet (None: the date in PLML_HOME/as_of written by "
        "`plml advance`, if any). Advancing it makes new data arrive over a fixed panel.",
    )

    def effective_as_of(self) -> str | None:
        if self.as_of:
            return self.as_of
        path = as_of_file()
        return path.read_text().strip() or None if path.exists() else None

    def describe_source(self) -> str:
        name = "embedded:skfolio.sp500" if self.source.strip().lower() == "embedded" else str(Path(self.source).resolve())
        as_of = self.effective_as_of()
        return f"{name} as of {as_of}" if as_of else name

    def load(self) -> pd.DataFrame:
        source = self.source.strip()
        if source.lower() == "embedded":
            panel = price_lib.load_embedded()
        else:
            path = Path(source).expanduser()
            if not path.exists():
                raise price_lib.PriceDataError(
                    f"unknown price source {source!r}: PLML_PRICES must be 'embedded' or the path of an existing "
                    f"CSV/Parquet file (no file at {str(path.resolve())!r})"
                )
            panel = price_lib.load_file(path)
        return self._slice(panel)

    def _slice(self, panel: pd.DataFrame) -> pd.DataFrame:
        if self.symbols:
            known = set(panel.index.get_level_values("symbol"))
            unknown = sorted(set(self.symbols) - known)
            if unknown:
                raise price_lib.PriceDataError(
                    f"symbol(s) {unknown} not in the price source {self.describe_source()!r}"
                )
            panel = panel[panel.index.get_level_values("symbol").isin(self.symbols)]
        dates = panel.index.get_level_values("date")
        mask = pd.Series(True, index=panel.index).to_numpy()
        try:
            if self.start_date:
                mask &= dates >= pd.Timestamp(self.start_date)
            if self.end_date:
                mask &= dates <= pd.Timestamp(self.end_date)
            as_of = self.effective_as_of()
            if as_of:
                mask &= dates <= pd.Timestamp(as_of)
        except ValueError as exc:
            raise price_lib.PriceDataError(f"bad start_date/end_date/as_of for the price source: {exc}") from exc
        panel = panel[mask]
        if panel.empty:
            raise price_lib.PriceDataError(
                f"the price source {self.describe_source()!r} has no rows for symbols={self.symbols} "
                f"start_date={self.start_date} end_date={self.end_date} as_of={self.effective_as_of()}"
            )
        return panel
