"""Price panels: loading (embedded or file) and data-quality checks.

A panel is a long DataFrame indexed by (``date``, ``symbol``), sorted, one row per symbol per
trading day, with ``close`` required and ``open``, ``high``, ``low``, ``volume`` optional.
Every check returns a :class:`QualityOutcome` that names the rows or symbols at fault, so the
Dagster checks (and a person reading them) can act on it.
"""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from collections.abc import Iterator
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
    frame["date"] = parse_dates(frame["date"], f"price file {str(path)!r}")
    frame["symbol"] = normalize_symbols(frame["symbol"])
    keep = ["date", "symbol", *REQUIRED_COLUMNS, *[c for c in OPTIONAL_COLUMNS if c in frame.columns]]
    return normalize_panel(frame[keep].set_index(INDEX_NAMES))


def parse_dates(column: pd.Series, where: str) -> pd.Series:
    """Trading dates from a file's ``date`` column, normalized as a user would expect:

    * ISO 8601 in any variant (``2020-01-02``, with a time, with a ``Z`` or ``-05:00`` offset), or
      any other single format pandas recognizes, is read;
    * a time zone or a time of day is dropped, keeping each row's own calendar date (a daily bar
      stamped ``2020-01-02T16:00:00-05:00`` is the session of 2020-01-02);
    * two formats mixed in one file (``2020-01-03`` and ``01/06/2020``) are refused, with an example
      of each: day-first and month-first cannot be told apart, so guessing could reorder history.
    """
    if pd.api.types.is_datetime64_any_dtype(column):  # Parquet: already timestamps
        stamps = column.dt.tz_localize(None) if column.dt.tz is not None else column
        return stamps.dt.normalize()
    raw = column.astype("string").str.strip()
    uniq = pd.Series(raw.dropna().unique(), dtype=object)
    iso = uniq.str.fullmatch(r"\d{4}-\d{2}-\d{2}([ T].*)?").astype(bool)
    parsed = None
    for fmt in (("ISO8601",) if iso.all() else ()) + (None,):
        try:
            with _quiet_date_warnings():
                parsed = pd.to_datetime(uniq, format=fmt)
            if parsed.dtype != object:
                break
        except (ValueError, TypeError):
            parsed = None
    if parsed is None or parsed.dtype == object:
        if not iso.all():  # no single format reads every value
            bad = next((v for v in uniq if _unparseable(v)), None)
            if bad is not None:
                raise PriceDataError(f"{where}: column 'date' is not parseable as dates (e.g. {bad!r})")
            examples = (uniq[iso].iloc[0], uniq[~iso].iloc[0]) if iso.any() else (uniq.iloc[0], uniq.iloc[-1])
            raise PriceDataError(f"{where}: column 'date' mixes date formats (e.g. {examples[0]!r} and {examples[1]!r}); "
                                 "month-first and day-first cannot be told apart: write every date as YYYY-MM-DD")
        # ISO 8601 throughout but with several UTC offsets: each value keeps its own calendar date.
        with _quiet_date_warnings():
            stamps = [pd.Timestamp(v) for v in uniq]
        parsed = pd.Series([t.tz_localize(None) if t.tzinfo is not None else t for t in stamps])
    parsed = pd.Series(pd.DatetimeIndex(parsed))
    if parsed.dt.tz is not None:
        parsed = parsed.dt.tz_localize(None)  # the wall-clock date at the file's own offset
    mapping = dict(zip(uniq, parsed.dt.normalize()))
    return pd.to_datetime(raw.map(mapping))


def _unparseable(value: str) -> bool:
    try:
        pd.Timestamp(value)
        return False
    except (ValueError, TypeError):
        return True


@contextlib.contextmanager
def _quiet_date_warnings() -> Iterator[None]:
    """pandas warns while it guesses a format; the guess is checked here, so the warning is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", FutureWarning)
        yield


def normalize_symbols(column: pd.Series) -> pd.Series:
    """Symbols stripped of surrounding whitespace and upper-cased (`` aapl`` is ``AAPL``): tickers
    are case-insensitive, and two spellings of one ticker would otherwise be two stocks. Where both
    spellings have a row on one date, the duplicates check refuses the panel, naming them."""
    return column.astype(str).str.strip().str.upper()


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
    max_frozen_days: int = 10
    max_split_suspects: int = 0
    block_on_split_suspects: bool = False

    def __post_init__(self) -> None:
        for name in ("max_bad_price_fraction", "max_missing_fraction", "max_bad_range_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value}")
        if self.min_dates < 2:
            raise ValueError(f"min_dates must be >= 2, got {self.min_dates}")
        if self.min_symbols < 1:
            raise ValueError(f"min_symbols must be >= 1, got {self.min_symbols}")
        if self.max_frozen_days < 2:
            raise ValueError(f"max_frozen_days must be >= 2, got {self.max_frozen_days}")
        if self.max_split_suspects < 0:
            raise ValueError(f"max_split_suspects must be >= 0, got {self.max_split_suspects}")


@dataclass
class QualityOutcome:
    name: str
    passed: bool
    message: str
    offenders: pd.DataFrame = field(default_factory=pd.DataFrame)
    stats: dict[str, float | int | str] = field(default_factory=dict)
    #: False: a failed outcome is a warning (reported, the graph goes on), not a refusal.
    blocking: bool = True

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


def check_volume(panel: pd.DataFrame) -> QualityOutcome:
    """A negative volume is never a real trade count (a sign flip or a sentinel): refused."""
    if "volume" not in panel.columns:
        return QualityOutcome("volume", True, "no volume column", stats={"negative_rows": 0})
    volume = pd.to_numeric(panel["volume"], errors="coerce")
    bad = (volume < 0).to_numpy()
    offenders = panel.loc[bad, ["volume"]]
    n = int(bad.sum())
    msg = f"{n} row(s) with negative volume, e.g. {_fmt_rows(offenders)}" if n else "no negative volume"
    return QualityOutcome("volume", n == 0, msg, offenders, {"negative_rows": n})


def _wide(panel: pd.DataFrame, column: str) -> pd.DataFrame:
    """dates x symbols of one column (a duplicated key keeps its first row: the duplicates check names it)."""
    values = pd.to_numeric(panel[column], errors="coerce")
    return values[~values.index.duplicated()].unstack("symbol").sort_index()


def _symbol_runs(close: pd.Series) -> pd.DataFrame:
    """Runs of an unchanged close per symbol over consecutive trading dates: start, end, length."""
    wide = _wide(close.to_frame("close"), "close")
    grid = wide.to_numpy(dtype="float64").T  # symbols x dates
    n_sym, n_dates = grid.shape
    flat = grid.ravel()
    same = np.zeros(flat.size, dtype=bool)
    same[1:] = flat[1:] == flat[:-1]  # NaN never equals: a missing day ends a run
    same[::n_dates] = False  # a symbol's first date starts a run
    starts = np.flatnonzero(~same)
    ends = np.append(starts[1:], flat.size) - 1
    dates = wide.index.to_numpy()
    return pd.DataFrame({"symbol": wide.columns.to_numpy()[starts // n_dates], "start": pd.to_datetime(dates[starts % n_dates]),
                         "end": pd.to_datetime(dates[ends % n_dates]), "days": ends - starts + 1, "close": flat[starts]})


def check_frozen(panel: pd.DataFrame, thresholds: QualityThresholds) -> QualityOutcome:
    """A close that stays exactly the same for ``max_frozen_days`` or more trading days in a row is a
    stale feed (a halted or broken series carried forward). A stale run that reaches the panel's last
    date means the symbol's feed is dead now and today's scores would use an old price: refused. Stale
    runs inside the history (old vendor data has them: the embedded panel's RRC in 1990-92) are
    reported as a warning naming symbol, dates and price; their zero returns stay in the history."""
    close = pd.to_numeric(panel["close"], errors="coerce")
    runs = _symbol_runs(close)
    frozen = runs[runs["days"] >= thresholds.max_frozen_days].sort_values("days", ascending=False)
    last = panel.index.get_level_values("date").max()
    dead = frozen[frozen["end"] == last]
    offenders = frozen.set_index("symbol")[["start", "end", "days", "close"]]

    def named(rows: pd.DataFrame) -> str:
        return ", ".join(f"{r.symbol} {r.start.date()}..{r.end.date()} ({r.days} days at {r.close:g})" for r in rows.head(5).itertuples())

    if frozen.empty:
        longest = int(runs["days"].max()) if len(runs) else 0
        msg = f"no close unchanged for {thresholds.max_frozen_days} trading days in a row (longest run {longest})"
    elif not dead.empty:
        msg = (f"{len(dead)} symbol(s) whose close has not changed for >= {thresholds.max_frozen_days} trading days up to the "
               f"latest date {last.date()} (a dead feed: today's scores would use a stale price): {named(dead)}")
    else:
        msg = (f"{len(frozen)} run(s) in the history of a close unchanged for >= {thresholds.max_frozen_days} trading days "
               f"(a stale feed then; kept, not refused): {named(frozen)}")
    return QualityOutcome("frozen", frozen.empty, msg, offenders,
                          {"frozen_runs": int(len(frozen)), "frozen_now": int(len(dead))}, blocking=not dead.empty)


#: Split ratios seen in practice (forward 2:1 ... 10:1, 3:2, and the reverse splits).
SPLIT_RATIOS = (2.0, 3.0, 4.0, 5.0, 8.0, 10.0, 1.5, 1 / 2, 1 / 3, 1 / 4, 1 / 5, 1 / 8, 1 / 10, 2 / 3)


def split_suspects(panel: pd.DataFrame, ratio_tolerance: float = 0.03, market_move: float = 0.05) -> pd.DataFrame:
    """One-day moves that look like an unadjusted split: the close jumps by (close to) a split ratio
    while the market (the cross-sectional median return that day) is nearly flat, and, where there is
    volume, the symbol's volume moves the inverse way and stays there (a 2:1 split doubles the share
    count traded). A spin-off or a crash moves the price as much but leaves volume at its level, or
    matches no ratio. Returns one row per suspect: date, symbol, ratio, return, market return."""
    wide = _wide(panel, "close")
    price = wide.to_numpy(dtype="float64")
    prev = np.vstack([np.full((1, price.shape[1]), np.nan), price[:-1]])
    with np.errstate(divide="ignore", invalid="ignore"):
        ret = price / prev - 1.0
        ratio = prev / price  # 2.0 for a 2:1 split: the price halves
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a date with no return at all
        market = np.nanmedian(ret, axis=1)
    nearest = np.full(price.shape, np.nan)
    for k in SPLIT_RATIOS:
        hit = np.isnan(nearest) & (np.abs(ratio / k - 1.0) <= ratio_tolerance)
        nearest[hit] = k
    candidate = ~np.isnan(nearest) & (np.abs(market)[:, None] <= market_move)
    if "volume" in panel.columns and candidate.any():
        # Volume: the median of the 20 dates after against the 20 before, read for the few candidates only.
        vol = _wide(panel, "volume").reindex(index=wide.index, columns=wide.columns).to_numpy(dtype="float64")
        for i, j in zip(*np.nonzero(candidate)):
            before, after = vol[max(i - 20, 0):i, j], vol[i:i + 20, j]
            before, after = before[~np.isnan(before)], after[~np.isnan(after)]
            if len(before) < 5 or len(after) < 5:
                continue  # too little volume around it to tell: price alone decides
            shift = np.median(after) / max(np.median(before), 1e-12)
            k = nearest[i, j]
            candidate[i, j] = shift >= np.sqrt(k) if k > 1 else shift <= np.sqrt(k)
    rows, cols = np.nonzero(candidate)
    return pd.DataFrame({"date": wide.index[rows], "symbol": wide.columns[cols], "ret": ret[rows, cols],
                         "market": market[rows], "ratio": nearest[rows, cols]}).sort_values(["date", "symbol"]).reset_index(drop=True)


def check_splits(panel: pd.DataFrame, thresholds: QualityThresholds) -> QualityOutcome:
    """Unadjusted splits (``split_suspects``) are refused beyond ``max_split_suspects``: every return
    across one is a fake -50 % (2:1) that labels and features would learn. Fix the source (adjust the
    prices before the split date), or raise the tolerance for a move you checked is real."""
    suspects = split_suspects(panel)
    n = int(len(suspects))
    offenders = suspects.set_index(["date", "symbol"])
    if n:
        named = ", ".join(f"{r.symbol} on {r.date.date()} (close x{1 / r.ratio:.3g}, {r.ret:+.1%} vs market {r.market:+.1%})"
                          for r in suspects.head(5).itertuples())
        msg = (f"{n} one-day move(s) that look like an unadjusted split (a split ratio, the market flat, volume moving the "
               f"inverse way): {named}; tolerance {thresholds.max_split_suspects}")
    else:
        msg = "no one-day move looks like an unadjusted split"
    # A split and a real ±30-50 % day look alike, volume included (a crash also trades more for weeks):
    # sp500_5yr flags DISCK on 2014-08-07 (Discovery's 2:1 split of its C shares, left unadjusted)
    # next to CHK's and EVHC's real falls. So suspects warn by default; block_on_split_suspects refuses.
    if n and not thresholds.block_on_split_suspects:
        msg += " (a warning: check these dates against corporate actions; block_on_split_suspects makes it a refusal)"
    return QualityOutcome("splits", n <= thresholds.max_split_suspects, msg, offenders,
                          {"split_suspects": n, "volume_checked": "volume" in panel.columns},
                          blocking=thresholds.block_on_split_suspects)


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
        check_volume(panel),
        check_frozen(panel, thresholds),
        check_splits(panel, thresholds),
    ]
