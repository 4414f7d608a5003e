"""Automated feature generation: declared primitives applied to base features, without look-ahead.

A `GenerationSpec` declares which primitives to apply to which base features (the columns that
`features.build_features` returns). `plan_recipes` expands it into *recipes*, one per generated
column, each a small JSON-serializable dict::

    {"primitive": "rolling_z", "inputs": ["ret_5d"], "params": {"window": 20}}

and `apply_recipes` computes them from the base columns alone, so a recipe list stored with a
model (MLflow, asset metadata) rebuilds exactly the same columns at serving time.

Primitives and their conventions:
- Temporal (``lag``, ``diff``, ``rolling_mean``, ``rolling_std``, ``rolling_z``, ``ewm``) use the
  symbol's own past rows only: periods and windows count that symbol's rows (trading days), like
  `features`, so a late start or a missing date is handled as in a per-symbol loop, and no value
  at date t reads a row dated after t. A rolling window of ``w`` needs ``w`` non-NaN values
  (``min_periods=w``); std is the sample one (ddof=1); ``rolling_z = (x - mean) / std`` is NaN
  where the window's std is 0. ``ewm`` is pandas' ``adjust=True`` average with
  ``min_periods=span``; it carries its last value over a NaN input, windows do not.
- Cross-sectional (``cs_rank``, ``cs_z``, ``cs_demean``) use the other symbols' values on the same
  date only: rank scaled to [0, 1] with ties averaged (a lone symbol 0.5), z-score with the
  sample std (NaN under 2 symbols or a zero std), and the value minus the date's mean.
- Interactions (``product``, ``ratio``) combine two columns of the same row; a ratio whose
  denominator is within ``eps`` (default 1e-12) of 0 is NaN.
- The output is float32 with the input's index and row order; +/-inf becomes NaN.

Vectorized like `features`: each needed base column is pivoted once to a wide frame (one column
per symbol, row k = that symbol's k-th row) on which pandas' rolling / ewm / shift / diff run once
for all symbols, and once to a date x symbol frame for the cross-sectional statistics; results
are gathered back to the panel rows by integer position. No Python loop over symbols or dates.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, fields
from itertools import combinations
from numbers import Integral, Real

import numpy as np
import pandas as pd

from plml_assets.lib.features.base import INDEX_NAMES, _cs_pct_rank, _cs_zscore
from plml_assets.lib.validation.metrics import per_date_ic

GENERATION_VERSION = "1.1.0"  # 1.1: interactions of every base pair; each fit keeps its own top-k pairs
#: ``all_pairs`` grows with the square of the base list: past this many interaction columns the
#: spec is refused (20 base features with products and ratios would already give 380 columns).
MAX_PAIR_COLUMNS = 120

# Informative and cheap: momentum at two horizons, volatility, an oscillator, a trend gap and
# abnormal volume (the last is filtered out for a panel without volume).
DEFAULT_BASE: tuple[str, ...] = ("ret_5d", "ret_20d", "vol_20d", "rsi_14", "ma_gap_20", "volume_z_20d")

RATIO_EPS = 1e-12
# An exponential average has infinite memory; `recipe_lookback` asks for enough rows that the
# weight left outside them is below this (about 4.6 spans for span 10, 4.6 * span / 2 for long spans).
EWM_TAIL_WEIGHT = 1e-4

ROLLING_STATS = {"mean": "rolling_mean", "std": "rolling_std", "z": "rolling_z"}
CROSS_SECTIONAL = {"rank": "cs_rank", "z": "cs_z", "demean": "cs_demean"}
INTERACTIONS = {"product": "product", "ratio": "ratio"}

_TEMPORAL = {"lag": "periods", "diff": "periods", "rolling_mean": "window", "rolling_std": "window",
             "rolling_z": "window", "ewm": "span"}  # primitive -> its one integer parameter (>= 1)
_CS = frozenset(CROSS_SECTIONAL.values())
_BINARY = frozenset(INTERACTIONS.values())
PRIMITIVES: tuple[str, ...] = (*_TEMPORAL, *CROSS_SECTIONAL.values(), *INTERACTIONS.values())

_SUFFIX = {"lag": "lag{}", "diff": "diff{}", "rolling_mean": "rmean{}", "rolling_std": "rstd{}",
           "rolling_z": "rz{}", "ewm": "ewm{}", "cs_rank": "csrank", "cs_z": "csz", "cs_demean": "csdemean"}
_INFIX = {"product": "x", "ratio": "div"}

_INT_FIELDS = ("lags", "rolling_windows", "diffs", "ewm_spans")
_CHOICE_FIELDS = {"rolling_stats": ROLLING_STATS, "cross_sectional": CROSS_SECTIONAL, "interactions": INTERACTIONS}


def _is_int(value: object) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _as_tuple(name: str, value: object) -> tuple:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise ValueError(f"GenerationSpec.{name} must be a list, got {value!r}")
    try:
        return tuple(dict.fromkeys(value))  # duplicates would only repeat a column
    except TypeError:
        raise ValueError(f"GenerationSpec.{name} must hold names or integers, got {value!r}") from None


@dataclass(frozen=True)
class GenerationSpec:
    """Which primitives to apply to which base features. Validated on construction."""

    base: tuple[str, ...] = ()  # () = DEFAULT_BASE, filtered to the features present
    lags: tuple[int, ...] = (1, 5)
    rolling_windows: tuple[int, ...] = (5, 20)  # rolling mean / std / z of the feature's own history
    rolling_stats: tuple[str, ...] = ("mean", "std", "z")
    diffs: tuple[int, ...] = (5,)
    ewm_spans: tuple[int, ...] = (10,)
    cross_sectional: tuple[str, ...] = ("rank", "z", "demean")  # per date across symbols
    interactions: tuple[str, ...] = ("product", "ratio")
    # A fit may use the interactions among its top-k base features by importance (ranked on its own
    # rows when every pair is generated, see plan_recipes(all_pairs=True)).
    top_k: int = 4

    def __post_init__(self) -> None:
        for f in fields(self):
            if f.name != "top_k":
                object.__setattr__(self, f.name, _as_tuple(f.name, getattr(self, f.name)))
        bad = [name for name in self.base if not isinstance(name, str) or not name]
        if bad:
            raise ValueError(f"GenerationSpec.base must hold feature names (non-empty strings); got {bad!r}")
        for name in _INT_FIELDS:
            bad = [v for v in getattr(self, name) if not _is_int(v) or v < 1]
            if bad:
                raise ValueError(f"GenerationSpec.{name} must be integers >= 1; got {bad!r}")
            object.__setattr__(self, name, tuple(int(v) for v in getattr(self, name)))
        for name, choices in _CHOICE_FIELDS.items():
            bad = [v for v in getattr(self, name) if v not in choices]
            if bad:
                raise ValueError(f"GenerationSpec.{name}: unknown {bad!r}; choose from {sorted(choices)}")
        if 1 in self.rolling_windows and {"std", "z"} & set(self.rolling_stats):
            raise ValueError("GenerationSpec.rolling_windows: a window of 1 has no standard deviation "
                             "(rolling std / z would be all NaN); use windows >= 2 or rolling_stats=['mean']")
        if not _is_int(self.top_k) or self.top_k < 0:
            raise ValueError(f"GenerationSpec.top_k must be an integer >= 0; got {self.top_k!r}")
        object.__setattr__(self, "top_k", int(self.top_k))

    @classmethod
    def from_dict(cls, d: Mapping) -> GenerationSpec:
        """Build from a plain dict (config, JSON); unknown keys and bad values raise ValueError."""
        if not isinstance(d, Mapping):
            raise ValueError(f"GenerationSpec.from_dict needs a mapping, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(key) for key in d if key not in known)
        if unknown:
            raise ValueError(f"unknown GenerationSpec keys {unknown}; known keys: {known}")
        return cls(**d)

    def to_dict(self) -> dict:
        """JSON-ready dict; ``GenerationSpec.from_dict(spec.to_dict()) == spec``."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}


# --- planning ------------------------------------------------------------------------------------

def _recipe(primitive: str, inputs: Sequence[str], **params) -> dict:
    return {"primitive": primitive, "inputs": list(inputs), "params": params}


def _name(primitive: str, inputs: Sequence[str], params: Mapping) -> str:
    if primitive in _BINARY:
        return f"{inputs[0]}__{_INFIX[primitive]}__{inputs[1]}"
    value = params.get(_TEMPORAL.get(primitive, ""), "")
    return f"{inputs[0]}__{_SUFFIX[primitive].format(value)}"


def _top_by_importance(base: Sequence[str], importance: Mapping[str, float], k: int) -> list[str]:
    """The k base features of highest finite importance (ties: base order), in base order."""
    scored = []
    for position, name in enumerate(base):
        value = importance.get(name)
        if value is not None and math.isfinite(float(value)):
            scored.append((-float(value), position, name))
    chosen = {name for _, _, name in sorted(scored)[:k]}
    return [name for name in base if name in chosen]


def _max_base(kinds: int) -> int:
    n = 2
    while math.comb(n + 1, 2) * kinds <= MAX_PAIR_COLUMNS:
        n += 1
    return n


def base_rank_ic(features: pd.DataFrame, label: pd.Series, columns: Sequence[str]) -> dict[str, float]:
    """|mean per-date rank IC| of each of `columns` with `label` on these rows: the importance
    that ranks base features for the interactions. Rows without a label are ignored."""
    known = label.notna().to_numpy()
    dates = features.index.get_level_values("date")[known]
    y = label.to_numpy(dtype=np.float64)[known]
    out = {}
    for name in columns:
        ic = per_date_ic(y, features[name].to_numpy(dtype=np.float64)[known], dates, method="spearman")
        out[name] = abs(float(np.nanmean(ic))) if np.isfinite(ic).any() else math.nan
    return out


def interactions_beyond_top_k(recipes: Mapping[str, Mapping], importance: Mapping[str, float], top_k: int) -> dict[str, str]:
    """``{name: reason}`` of the interaction recipes a fit may not use: those pairing a base feature
    outside the `top_k` of highest `importance` among the interactions' inputs (importance
    measured on that fit's own rows, e.g. with :func:`base_rank_ic`)."""
    pairs = {name: list(r["inputs"]) for name, r in recipes.items() if r.get("primitive") in _BINARY}
    if not pairs:
        return {}
    inputs = list(dict.fromkeys(name for ab in pairs.values() for name in ab))
    top = set(_top_by_importance(inputs, importance, top_k))
    return {name: f"interaction outside the top-{top_k} base features on these rows ({', '.join(sorted(top)) or 'none'})"
            for name, (a, b) in pairs.items() if not {a, b} <= top}


def plan_recipes(spec: GenerationSpec, available: Sequence[str],
                 importance: Mapping[str, float] | None = None, *, all_pairs: bool = False) -> dict[str, dict]:
    """Expand a spec into ``{generated name: recipe}`` for a frame with the `available` columns.

    Per base feature, in this order: lags, rolling stats per window, diffs, ewm, cross-sectional;
    then the interactions: every pair of the `top_k` base features of highest `importance`
    (keys that are not base features are ignored; none without importance), named in base
    order (``a__x__b``, ``a__div__b`` = a / b). ``all_pairs`` plans every pair of base features
    instead (with ``top_k >= 2``), so that each fit can keep the pairs of its own top-k
    (:func:`interactions_beyond_top_k`) without a choice made on rows it validates on. Declared
    base names absent from `available` raise ValueError; the defaults are filtered silently.
    """
    present = set(available)
    if spec.base:
        missing = [name for name in spec.base if name not in present]
        if missing:
            raise ValueError(f"base features {missing} are not among the available features "
                             f"({len(present)} columns)")
        base = list(spec.base)
    else:
        base = [name for name in DEFAULT_BASE if name in present]
    recipes: list[dict] = []
    for name in base:
        recipes += [_recipe("lag", [name], periods=n) for n in spec.lags]
        recipes += [_recipe(ROLLING_STATS[stat], [name], window=w)
                    for w in spec.rolling_windows for stat in spec.rolling_stats]
        recipes += [_recipe("diff", [name], periods=n) for n in spec.diffs]
        recipes += [_recipe("ewm", [name], span=s) for s in spec.ewm_spans]
        recipes += [_recipe(CROSS_SECTIONAL[cs], [name]) for cs in spec.cross_sectional]
    if (importance is not None or all_pairs) and spec.interactions and spec.top_k >= 2:
        top = list(base) if all_pairs else _top_by_importance(base, importance, spec.top_k)
        n_columns = math.comb(len(top), 2) * len(spec.interactions)
        if all_pairs and n_columns > MAX_PAIR_COLUMNS:
            raise ValueError(f"every pair of {len(top)} base features makes {n_columns} interaction columns, more than "
                             f"{MAX_PAIR_COLUMNS}: declare at most {_max_base(len(spec.interactions))} base features, "
                             "fewer interaction kinds, or top_k=0")
        for a, b in combinations(top, 2):
            for kind in spec.interactions:
                params = {"eps": RATIO_EPS} if kind == "ratio" else {}
                recipes.append(_recipe(INTERACTIONS[kind], [a, b], **params))
    planned = {_name(r["primitive"], r["inputs"], r["params"]): r for r in recipes}
    clash = sorted(present & planned.keys())
    if clash:
        raise ValueError(f"generated names {clash[:5]} are already columns of the features "
                         "(were the features generated once already?)")
    return planned


# --- recipe checks -------------------------------------------------------------------------------

def _checked(name: str, recipe: Mapping) -> tuple[str, list[str], dict]:
    """(primitive, inputs, params) of a well-formed recipe; ValueError naming the problem."""
    if not isinstance(recipe, Mapping):
        raise ValueError(f"recipe {name!r} must be a dict, got {type(recipe).__name__}")
    primitive = recipe.get("primitive")
    if primitive not in PRIMITIVES:
        raise ValueError(f"recipe {name!r}: unknown primitive {primitive!r}; known: {list(PRIMITIVES)}")
    inputs = recipe.get("inputs")
    arity = 2 if primitive in _BINARY else 1
    if (isinstance(inputs, str) or not isinstance(inputs, Sequence) or len(inputs) != arity
            or not all(isinstance(i, str) for i in inputs)):
        raise ValueError(f"recipe {name!r}: primitive {primitive!r} needs {arity} input name(s), got {inputs!r}")
    params = dict(recipe.get("params") or {})
    if primitive in _TEMPORAL:
        key = _TEMPORAL[primitive]
        value = params.get(key)
        if not _is_int(value) or value < 1:
            raise ValueError(f"recipe {name!r}: {primitive} needs an integer params[{key!r}] >= 1, got {value!r}")
        params[key] = int(value)
    elif primitive == "ratio":
        eps = params.get("eps", RATIO_EPS)
        if not isinstance(eps, Real) or isinstance(eps, bool) or not eps >= 0:
            raise ValueError(f"recipe {name!r}: ratio params['eps'] must be a number >= 0, got {eps!r}")
        params["eps"] = float(eps)
    return primitive, list(inputs), params


def recipe_lookback(recipes: Mapping[str, dict]) -> int:
    """Rows of each symbol's history before date t that the recipes read, on top of the rows the
    base features themselves need: a lag or diff of n reads n rows back, a rolling window of w
    reads w - 1, an ewm of span s reads s - 1 for its min_periods and enough rows that the weight
    it would give to older rows is below EWM_TAIL_WEIGHT. Cross-sectional primitives and
    interactions read date t only (0)."""
    need = 0
    for name, recipe in recipes.items():
        primitive, _, params = _checked(name, recipe)
        if primitive in ("lag", "diff"):
            need = max(need, params["periods"])
        elif primitive.startswith("rolling_"):
            need = max(need, params["window"] - 1)
        elif primitive == "ewm":
            span = params["span"]
            alpha = 2.0 / (span + 1.0)
            tail = 0 if alpha >= 1.0 else math.ceil(math.log(EWM_TAIL_WEIGHT) / math.log1p(-alpha))
            need = max(need, span - 1, tail)
    return need


# --- computation ---------------------------------------------------------------------------------

class _Layouts:
    """Integer positions that scatter panel rows to the two wide layouts and gather them back.

    Row layout: (max rows per symbol) x symbols, row k = the symbol's k-th row in date order,
    NaN-padded after its last row. Date layout: dates x symbols. Both are Fortran-ordered, so
    a symbol's values are contiguous; positions index their column-major flattening.
    """

    def __init__(self, index: pd.MultiIndex):
        date_codes, dates = pd.factorize(index.get_level_values("date"), sort=True)
        symbol_codes, symbols = pd.factorize(index.get_level_values("symbol"), sort=True)
        if (date_codes < 0).any() or (symbol_codes < 0).any():
            raise ValueError("feature panel has missing (NaN) dates or symbols in its index")
        n_rows, n_symbols = len(index), len(symbols)
        rows_per_symbol = np.bincount(symbol_codes, minlength=n_symbols)
        symbol_major = np.lexsort((date_codes, symbol_codes))
        first_row = np.cumsum(rows_per_symbol) - rows_per_symbol
        row_codes = np.empty(n_rows, dtype=np.intp)
        row_codes[symbol_major] = np.arange(n_rows) - np.repeat(first_row, rows_per_symbol)
        self.row_shape = (int(rows_per_symbol.max()), n_symbols)
        self.date_shape = (len(dates), n_symbols)
        self._by_row = symbol_codes.astype(np.intp) * self.row_shape[0] + row_codes
        self._by_date = symbol_codes.astype(np.intp) * self.date_shape[0] + date_codes

    @staticmethod
    def _scatter(values: np.ndarray, shape: tuple[int, int], positions: np.ndarray) -> pd.DataFrame:
        wide = np.full(shape, np.nan, order="F")
        wide.T.reshape(-1)[positions] = values  # .T of a Fortran array is C-contiguous: a view
        return pd.DataFrame(wide, copy=False)

    @staticmethod
    def _gather(wide: pd.DataFrame | np.ndarray, positions: np.ndarray) -> np.ndarray:
        values = wide.to_numpy(dtype=np.float64) if isinstance(wide, pd.DataFrame) else wide
        return np.take(values.T.reshape(-1), positions)  # a view when `values` is Fortran-ordered

    def by_row(self, values: np.ndarray) -> pd.DataFrame:
        return self._scatter(values, self.row_shape, self._by_row)

    def by_date(self, values: np.ndarray) -> pd.DataFrame:
        return self._scatter(values, self.date_shape, self._by_date)

    def from_rows(self, wide: pd.DataFrame) -> np.ndarray:
        return self._gather(wide, self._by_row)

    def from_dates(self, wide: pd.DataFrame) -> np.ndarray:
        return self._gather(wide, self._by_date)


class _Input:
    """One base column and what is derived from it, built on first use and shared by its recipes."""

    def __init__(self, values: np.ndarray, layouts: _Layouts):
        self.values, self._layouts = values, layouts
        self._rows: pd.DataFrame | None = None
        self._dates: pd.DataFrame | None = None
        self._rolling: dict[tuple[str, int], pd.DataFrame] = {}

    @property
    def rows(self) -> pd.DataFrame:
        if self._rows is None:
            self._rows = self._layouts.by_row(self.values)
        return self._rows

    @property
    def dates(self) -> pd.DataFrame:
        if self._dates is None:
            self._dates = self._layouts.by_date(self.values)
        return self._dates

    def rolling(self, stat: str, window: int) -> pd.DataFrame:
        key = (stat, window)
        if key not in self._rolling:
            roll = self.rows.rolling(window, min_periods=window)
            self._rolling[key] = roll.mean() if stat == "mean" else roll.std()
        return self._rolling[key]

    def temporal(self, primitive: str, params: Mapping) -> pd.DataFrame:
        rows = self.rows
        if primitive == "lag":
            return rows.shift(params["periods"])
        if primitive == "diff":
            return rows.diff(params["periods"])
        if primitive == "ewm":
            span = params["span"]
            return rows.ewm(span=span, adjust=True, min_periods=span).mean()
        window = params["window"]
        if primitive == "rolling_mean":
            return self.rolling("mean", window)
        std = self.rolling("std", window)
        if primitive == "rolling_std":
            return std
        return (rows - self.rolling("mean", window)) / std.where(std > 0)

    def cross_sectional(self, primitive: str) -> pd.DataFrame:
        dates = self.dates
        if primitive == "cs_rank":
            return _cs_pct_rank(dates)
        if primitive == "cs_z":
            return _cs_zscore(dates)
        return dates.sub(dates.mean(axis=1), axis=0)


def _validate_index(features: pd.DataFrame) -> None:
    index = features.index
    if not isinstance(index, pd.MultiIndex) or not set(INDEX_NAMES) <= set(index.names):
        raise ValueError(f"features need a MultiIndex with levels {INDEX_NAMES}; got {list(index.names)}")
    if not index.is_unique:
        raise ValueError("features have duplicate (date, symbol) rows")


def apply_recipes(features: pd.DataFrame, recipes: Mapping[str, dict]) -> pd.DataFrame:
    """Compute the recipes' columns from the base columns of `features`.

    Returns a float32 frame with the index and row order of `features` and one column per recipe,
    in the recipes' order. Raises ValueError naming an unknown primitive, a malformed recipe or an
    input column absent from `features`.
    """
    checked = _checked_against(features, recipes)
    out = np.empty((len(features), len(checked)), dtype=np.float32, order="F")
    _compute(features, checked, out)
    return pd.DataFrame(out, index=features.index, columns=list(checked), copy=False)


def _checked_against(features: pd.DataFrame, recipes: Mapping[str, dict]) -> dict[str, tuple]:
    checked = {name: _checked(name, recipe) for name, recipe in recipes.items()}
    missing = sorted({i for _, inputs, _ in checked.values() for i in inputs} - set(features.columns))
    if missing:
        users = [name for name, (_, inputs, _) in checked.items() if set(inputs) & set(missing)]
        raise ValueError(f"input columns {missing} are absent from the features (needed by {users[:5]})")
    _validate_index(features)
    return checked


def _compute(features: pd.DataFrame, checked: Mapping[str, tuple], out: np.ndarray) -> None:
    """Write the checked recipes' values into the columns of `out` (rows x recipes, float32)."""
    if not len(features) or not checked:
        return
    column_of = {name: position for position, name in enumerate(checked)}
    # Unary recipes one input at a time, so that input's wide frames are freed before the next.
    by_input: dict[str, list[str]] = {}
    for name, (primitive, inputs, _) in checked.items():
        by_input.setdefault(inputs[0] if primitive not in _BINARY else "", []).append(name)
    binary = by_input.pop("", [])
    layouts = _Layouts(features.index)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        for column, unary in by_input.items():
            source = _Input(features[column].to_numpy(dtype=np.float64, na_value=np.nan), layouts)
            for name in unary:
                primitive, _, params = checked[name]
                if primitive in _CS:
                    values = layouts.from_dates(source.cross_sectional(primitive))
                else:
                    values = layouts.from_rows(source.temporal(primitive, params))
                _store(out, column_of[name], values)
        for name in binary:
            primitive, (a, b), params = checked[name]
            x = features[a].to_numpy(dtype=np.float64, na_value=np.nan)
            y = features[b].to_numpy(dtype=np.float64, na_value=np.nan)
            if primitive == "product":
                values = x * y
            else:
                values = x / np.where(np.abs(y) > params["eps"], y, np.nan)
            _store(out, column_of[name], values)


def _store(out: np.ndarray, position: int, values: np.ndarray) -> None:
    column = out[:, position]
    column[:] = values
    column[np.isinf(column)] = np.nan  # also catches values beyond float32's range


def generate(features: pd.DataFrame, spec: GenerationSpec | None = None,
             importance: Mapping[str, float] | None = None, *, all_pairs: bool = False) -> tuple[pd.DataFrame, dict[str, dict]]:
    """Plan the spec's recipes for `features` (see :func:`plan_recipes`), compute them, and return the
    features with the generated columns appended (a new frame, same index and row order) together
    with the recipes."""
    spec = GenerationSpec() if spec is None else spec
    recipes = plan_recipes(spec, list(features.columns), importance, all_pairs=all_pairs)
    checked = _checked_against(features, recipes)
    if not all(dtype == np.float32 for dtype in features.dtypes):
        generated = np.empty((len(features), len(checked)), dtype=np.float32, order="F")
        _compute(features, checked, generated)
        generated = pd.DataFrame(generated, index=features.index, columns=list(checked), copy=False)
        return pd.concat([features, generated], axis=1), recipes
    # All float32 (build_features' output): one Fortran array for both, written once; pd.concat
    # would copy the generated block a second time.
    n_base = features.shape[1]
    out = np.empty((len(features), n_base + len(checked)), dtype=np.float32, order="F")
    out[:, :n_base] = features.to_numpy()
    _compute(features, checked, out[:, n_base:])
    columns = [*features.columns, *checked]
    return pd.DataFrame(out, index=features.index, columns=columns, copy=False), recipes
