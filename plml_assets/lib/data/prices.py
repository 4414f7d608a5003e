"""Price panels: loading (embedded or file) and data-quality checks.

A panel is a long DataFrame indexed by (``date``, ``symbol``), sorted, one row per symbol per
trading day, with ``close`` required and ``open``, ``high``, ``low``, ``volume`` optional.
Every check returns a :class:`QualityOutcome` that names the rows or symbols at fault, so the
Dagster checks (and a person reading them) can act on it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

REQUIRED_COLUMNS = ("close",)
OPTIONAL_COLUMNS = ("open", "high", "low", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
INDEX_NAMES = ["date", "symbol"]


class PriceDataError(ValueError):
    """Raised when a price source cannot be read or has the wrong shape."""


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_embedded() -> pd.DataFrame:
    """The real 20-stock S&P 500 panel bundled in skfolio (daily adjusted closes, 1990-2022).

    It ships inside the wheel, so it reads offline.
    """
    from skfolio.datasets import load_sp500_dataset

    wide = load_sp500_dataset()
    return wide_to_panel(wide)


def wide_to_panel(wide: pd.DataFrame, column: str = "close") -> pd.DataFrame:
    """Turn a date x symbol frame of one price column into the long panel."""
    wide = wide.copy()
    wide.index = pd.to_datetime(wide.index).rename("date")
    wide.columns = wide.columns.astype(str).rename("symbol")
    long = wide.stack().rename(column).to_frame()
    long.index = long.index.set_names(INDEX_NAMES)
    return normalize_panel(long)


def load_file(path: str | Path) -> pd.DataFrame:
    """Read a long panel from CSV (optionally compressed) or Parquet.

    Columns: ``date``, ``symbol``, ``close`` required; ``open``, ``high``, ``low``, ``volume`` optional.
    """
    path = Path(path)
    if not path.exists():
        raise PriceDataError(f"price file {str(path)!r} does not exist")
    suffixes = "".join(path.suffixes).lower()
    try:
        if ".parquet" in suffixes or suffixes.endswith(".pq"):
            frame = pd.read_parquet(path)
        elif ".csv" in suffixes:
            frame = pd.read_csv(path)
        else:
            raise PriceDataError(
                f"price file {str(path)!r} has an unknown extension {suffixes!r}: use .csv, .csv.gz or .parquet"
            )
    except PriceDataError:
        raise
    except Exception as exc:  # pandas/pyarrow raise many types for unreadable files
        raise PriceDataError(f"price file {str(path)!r} could not be read: {exc}") from exc
    frame.columns = [str(c).strip().lower() for c in frame.columns]
    if isinstance(frame.index, pd.MultiIndex) and set(INDEX_NAMES) <= set(frame.index.names):
        frame = frame.reset_index()
    missing = [c for c in ("date", "symbol", *REQUIRED_COLUMNS) if c not in frame.columns]
    if missing:
        raise PriceDataError(
            f"price file {str(path)!r} lacks required column(s) {missing}; it has {list(frame.columns)}"
        )
    try:
        frame["date"] = pd.to_datetime(frame["date"])
    except (ValueError, TypeError) as exc:
        raise PriceDataError(f"price file {str(path)!r}: column 'date' is not parseable as dates ({exc})") from exc
    frame["symbol"] = frame["symbol"].astype(str)
    keep = ["date", "symbol", *REQUIRED_COLUMNS, *[c for c in OPTIONAL_COLUMNS if c in frame.columns]]
    return normalize_panel(frame[keep].set_index(INDEX_NAMES))


def normalize_panel(panel: pd.DataFrame) -> pd.DataFrame:
    """Sort by (date, symbol), order columns, cast prices to float64 where they are numeric.

    Non-numeric price columns are left as they are so that the schema check can name them.
    """
    panel = panel.sort_index()
    cols = [c for c in (*PRICE_COLUMNS, "volume") if c in panel.columns]
    panel = panel[cols]
    for col in cols:
        if pd.api.types.is_numeric_dtype(panel[col]):
            panel[col] = panel[col].astype("float64")
    return panel


def fingerprint(panel: pd.DataFrame) -> str:
    """A short, order-stable content hash of a panel (index and values)."""
    hashed = pd.util.hash_pandas_object(panel, index=True).to_numpy()
    digest = hashlib.sha256(hashed.tobytes())
    digest.update(",".join(panel.columns).encode())
    return digest.hexdigest()[:16]


def panel_digests(panel: pd.DataFrame) -> dict[str, object]:
    """What a trained model records of its prices so that a later reproduction can say where they
    differ: the whole panel's :func:`fingerprint`, its columns, and one short hash per date (of that
    date's rows) and per symbol (of that symbol's rows)."""
    hashed = pd.util.hash_pandas_object(panel, index=True).to_numpy()

    def per(level: str) -> dict[str, str]:
        # A group's rows in their panel order, as groupby(level, sort=True) yields them, from one
        # stable sort of the keys' codes (iterating 8k pandas groups cost 0.65 s per call).
        codes, keys = pd.factorize(panel.index.get_level_values(level), sort=True)
        order = np.argsort(codes, kind="stable")
        rows, sorted_codes = hashed[order], codes[order]
        bounds = np.searchsorted(sorted_codes, np.arange(len(keys) + 1))  # missing keys (code -1) sort first, unnamed
        return {(str(key.date()) if isinstance(key, pd.Timestamp) else str(key)):
                hashlib.sha256(rows[bounds[i]:bounds[i + 1]].tobytes()).hexdigest()[:12]
                for i, key in enumerate(keys)}

    return {"fingerprint": fingerprint(panel), "columns": list(panel.columns), "dates": per("date"), "symbols": per("symbol")}


def first_difference(recorded: dict[str, object], panel: pd.DataFrame) -> str | None:
    """None when ``panel`` is the panel ``recorded`` (:func:`panel_digests`) describes; else where it
    first differs, in words: a missing or extra column, date or symbol, or the first date whose rows
    differ and the symbols whose history differs."""
    current = panel_digests(panel)
    if current["fingerprint"] == recorded.get("fingerprint"):
        return None
    if list(current["columns"]) != list(recorded.get("columns", [])):
        return f"the price columns differ: recorded {recorded.get('columns')}, available {current['columns']}"
    old_dates, new_dates = recorded.get("dates", {}), current["dates"]
    changed = sorted(d for d in set(old_dates) | set(new_dates) if old_dates.get(d) != new_dates.get(d))
    symbols = sorted(s for s in set(recorded.get("symbols", {})) | set(current["symbols"])
                     if recorded.get("symbols", {}).get(s) != current["symbols"].get(s))
    if not changed:
        return "the panels differ (their fingerprints do) but no date does: the row order or index differs"
    first = changed[0]
    where = ("missing from the available prices" if first not in new_dates else
             "not in the recorded prices" if first not in old_dates else "with different rows")
    named = f"; symbols whose rows differ: {', '.join(symbols[:10])}{' ...' if len(symbols) > 10 else ''}" if symbols else ""
    return f"first differing date {first} ({where}; {len(changed)} date(s) differ in all){named}"


def describe_panel(panel: pd.DataFrame) -> dict[str, object]:
    dates = panel.index.get_level_values("date")
    return {
        "rows": int(len(panel)),
        "symbols": int(panel.index.get_level_values("symbol").nunique()),
        "dates": int(dates.nunique()),
        "first_date": str(dates.min().date()) if len(panel) else "",
        "last_date": str(dates.max().date()) if len(panel) else "",
        "columns": list(panel.columns),
    }


# --------------------------------------------------------------------------------------------
# Quality checks
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QualityThresholds:
    """Tolerances of the data-quality checks. Real feeds have a few flawed rows (the sp500_5yr
    panel has 11 missing prices and 12 bad high/low rows in 619k): a tiny share of missing or
    unbracketed rows is reported and tolerated, more blocks the graph. A non-positive or infinite
    price is never tolerated by default."""

    max_bad_price_fraction: float = 0.0
    max_missing_fraction: float = 0.05
    max_bad_range_fraction: float = 0.001
    min_dates: int = 300
    min_symbols: int = 3

    def __post_init__(self) -> None:
        for name in ("max_bad_price_fraction", "max_missing_fraction", "max_bad_range_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.min_dates < 2:
            raise ValueError(f"min_dates must be >= 2, got {self.min_dates}")
        if self.min_symbols < 1:
            raise ValueError(f"min_symbols must be >= 1, got {self.min_symbols}")


@dataclass
class QualityOutcome:
    name: str
    passed: bool
    message: str
    offenders: pd.DataFrame = field(default_factory=pd.DataFrame)
    stats: dict[str, float | int | str] = field(default_factory=dict)

    def offenders_markdown(self, limit: int = 20) -> str:
        if self.offenders.empty:
            return "none"
        return self.offenders.head(limit).to_markdown() if _has_tabulate() else self.offenders.head(limit).to_string()


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
    except ImportError:
        return False
    return True


def _fmt_rows(frame: pd.DataFrame, limit: int = 5) -> str:
    items = [f"{d.date()} {s}" for d, s in frame.index[:limit]]
    more = f" and {len(frame) - limit} more" if len(frame) > limit else ""
    return ", ".join(items) + more


def check_schema(panel: pd.DataFrame) -> QualityOutcome:
    problems: list[str] = []
    if list(panel.index.names) != INDEX_NAMES:
        problems.append(f"index levels are {list(panel.index.names)}, expected {INDEX_NAMES}")
    else:
        if not pd.api.types.is_datetime64_any_dtype(panel.index.get_level_values("date")):
            problems.append("index level 'date' is not datetime")
    for col in REQUIRED_COLUMNS:
        if col not in panel.columns:
            problems.append(f"required column {col!r} is missing")
    for col in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS):
        if col in panel.columns and not pd.api.types.is_numeric_dtype(panel[col]):
            bad = pd.to_numeric(panel[col], errors="coerce").isna() & panel[col].notna()
            sample = panel.loc[bad.to_numpy()].head(5)
            problems.append(
                f"column {col!r} has dtype {panel[col].dtype}, expected numeric; non-numeric values at "
                f"{_fmt_rows(sample)}: {list(sample[col].astype(str))}"
            )
    extra = [c for c in panel.columns if c not in (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)]
    return QualityOutcome(
        name="schema",
        passed=not problems,
        message="; ".join(problems) if problems else f"columns {list(panel.columns)} with numeric dtypes",
        stats={"columns": ",".join(panel.columns), "ignored_columns": ",".join(extra)},
    )


def check_duplicates(panel: pd.DataFrame) -> QualityOutcome:
    dup_mask = panel.index.duplicated(keep=False)
    offenders = panel.loc[dup_mask]
    n_keys = int(panel.index[dup_mask].nunique())
    msg = (
        f"{n_keys} duplicated (date, symbol) key(s) over {int(dup_mask.sum())} rows, e.g. {_fmt_rows(offenders)}"
        if n_keys
        else "every (date, symbol) is unique"
    )
    return QualityOutcome("duplicates", n_keys == 0, msg, offenders, {"duplicated_keys": n_keys})


def _numeric(panel: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return panel[cols].apply(pd.to_numeric, errors="coerce")


def check_prices(panel: pd.DataFrame, thresholds: QualityThresholds) -> QualityOutcome:
    """Non-positive or non-finite prices (NaN counts as missing, not as bad, see check_missing)."""
    cols = [c for c in PRICE_COLUMNS if c in panel.columns]
    values = _numeric(panel, cols)
    arr = values.to_numpy(dtype="float64")
    bad_cells = (np.isinf(arr)) | (arr <= 0)
    bad_rows = bad_cells.any(axis=1)
    offenders = values.loc[bad_rows]
    fraction = float(bad_rows.mean()) if len(arr) else 0.0
    passed = fraction <= thresholds.max_bad_price_fraction
    n = int(bad_rows.sum())
    msg = (
        f"{n} row(s) ({fraction:.4%}) with non-positive or infinite prices"
        + (f", e.g. {_fmt_rows(offenders)}" if n else "")
        + f"; tolerance {thresholds.max_bad_price_fraction:.4%}"
    )
    return QualityOutcome("prices", passed, msg, offenders, {"bad_rows": n, "bad_fraction": fraction})


def check_missing(panel: pd.DataFrame, thresholds: QualityThresholds) -> QualityOutcome:
    """Per symbol: NaN closes plus trading days absent within the symbol's own date span."""
    dates = panel.index.get_level_values("date")
    calendar = np.sort(dates.unique())
    close = pd.to_numeric(panel["close"], errors="coerce") if "close" in panel.columns else pd.Series(np.nan, index=panel.index)
    grouped = close.groupby(level="symbol")
    nan_count = grouped.apply(lambda s: int(s.isna().sum()))
    present = grouped.size()
    first = pd.Series(dates, index=panel.index).groupby(level="symbol").min()
    last = pd.Series(dates, index=panel.index).groupby(level="symbol").max()
    span = np.searchsorted(calendar, last.to_numpy(), side="right") - np.searchsorted(calendar, first.to_numpy())
    span = pd.Series(span, index=first.index)
    absent = span - present
    report = pd.DataFrame(
        {"nan_close": nan_count, "absent_days": absent, "expected_days": span}
    )
    report["missing_fraction"] = (report["nan_close"] + report["absent_days"]) / report["expected_days"].clip(lower=1)
    offenders = report[report["missing_fraction"] > thresholds.max_missing_fraction].sort_values(
        "missing_fraction", ascending=False
    )
    total_missing = int(report["nan_close"].sum() + report["absent_days"].sum())
    if offenders.empty:
        msg = (
            f"{total_missing} missing value(s) overall; no symbol misses more than "
            f"{thresholds.max_missing_fraction:.1%} of its trading days"
        )
    else:
        worst = ", ".join(f"{s} ({f:.1%})" for s, f in offenders["missing_fraction"].head(10).items())
        msg = (
            f"{len(offenders)} symbol(s) miss more than {thresholds.max_missing_fraction:.1%} of their "
            f"trading days: {worst}"
        )
    return QualityOutcome(
        "missing", offenders.empty, msg, offenders, {"missing_values": total_missing, "symbols_over": len(offenders)}
    )


def check_ranges(panel: pd.DataFrame, thresholds: QualityThresholds) -> QualityOutcome:
    """high must be >= open, close, low and low <= open, close, where those columns exist."""
    if not {"high", "low"} <= set(panel.columns):
        return QualityOutcome("ranges", True, "no high/low columns: nothing to bracket", stats={"bad_rows": 0})
    cols = [c for c in PRICE_COLUMNS if c in panel.columns]
    v = _numeric(panel, cols)
    inner = [c for c in ("open", "close") if c in v.columns]
    upper = v[inner].max(axis=1)
    lower = v[inner].min(axis=1)
    bad = (v["high"] < upper) | (v["low"] > lower) | (v["high"] < v["low"])
    offenders = v.loc[bad.to_numpy()]
    fraction = float(bad.mean()) if len(v) else 0.0
    n = int(bad.sum())
    msg = (
        f"{n} row(s) ({fraction:.4%}) where high/low do not bracket open/close"
        + (f", e.g. {_fmt_rows(offenders)}" if n else "")
        + f"; tolerance {thresholds.max_bad_range_fraction:.4%}"
    )
    return QualityOutcome("ranges", fraction <= thresholds.max_bad_range_fraction, msg, offenders,
                          {"bad_rows": n, "bad_fraction": fraction})


def check_history(
    panel: pd.DataFrame, thresholds: QualityThresholds, horizon: int, holdout_days: int = 0
) -> QualityOutcome:
    """Enough dates and symbols for the horizon, the holdout window and the training/CV window
    before it (``min_dates`` training dates after the purge)."""
    need_dates = max(thresholds.min_dates, 4 * horizon + 2) + (holdout_days + horizon if holdout_days else 0)
    n_dates = int(panel.index.get_level_values("date").nunique())
    per_symbol = panel.groupby(level="symbol").size()
    n_symbols = int(len(per_symbol))
    short = per_symbol[per_symbol <= horizon].sort_values()
    problems = []
    if n_dates < need_dates:
        holdout = f", a {holdout_days}-date holdout" if holdout_days else ""
        problems.append(
            f"{n_dates} dates, need at least {need_dates} (horizon {horizon}{holdout} and "
            f"{thresholds.min_dates} training dates)"
        )
    if n_symbols < thresholds.min_symbols:
        problems.append(
            f"{n_symbols} symbol(s), need at least {thresholds.min_symbols} for cross-sectional features and IC"
        )
    msg = "; ".join(problems) if problems else f"{n_dates} dates and {n_symbols} symbols (need {need_dates} dates, {thresholds.min_symbols} symbols)"
    if not short.empty:
        msg += f"; {len(short)} symbol(s) have no row with a known {horizon}-day label: {', '.join(short.index[:10])}"
    offenders = short.rename("rows").to_frame()
    return QualityOutcome("history", not problems, msg, offenders,
                          {"dates": n_dates, "symbols": n_symbols, "dates_needed": need_dates})


def run_quality_checks(
    panel: pd.DataFrame, thresholds: QualityThresholds, horizon: int, holdout_days: int = 0
) -> list[QualityOutcome]:
    schema = check_schema(panel)
    if not schema.passed:
        return [schema]
    return [
        schema,
        check_duplicates(panel),
        check_prices(panel, thresholds),
        check_missing(panel, thresholds),
        check_ranges(panel, thresholds),
        check_history(panel, thresholds, horizon, holdout_days),
    ]
