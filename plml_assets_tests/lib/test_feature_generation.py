"""Generated features: each primitive against a per-symbol / per-date loop, no look-ahead, no
crossing symbols, JSON recipes that rebuild the same columns, spec validation, lookback."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plml_assets.lib.features.generation import (
    DEFAULT_BASE,
    EWM_TAIL_WEIGHT,
    RATIO_EPS,
    GenerationSpec,
    apply_recipes,
    base_rank_ic,
    generate,
    interactions_beyond_top_k,
    plan_recipes,
    recipe_lookback,
)

BASE = ["ret_5d", "ret_20d", "vol_20d", "rsi_14"]
ALL_PRIMITIVES_SPEC = GenerationSpec(base=tuple(BASE), lags=(1, 3), rolling_windows=(2, 4), diffs=(2,),
                                     ewm_spans=(3,), top_k=3)
IMPORTANCE = {"ret_5d": 0.5, "ret_20d": 0.1, "vol_20d": 0.9, "rsi_14": 0.3}


def random_panel(seed: int, n_dates: int = 40, n_symbols: int = 5, *, late: bool = True, gaps: float = 0.1,
                 nans: float = 0.05, columns=BASE) -> pd.DataFrame:
    """Base features on a (date, symbol) panel: symbol 1 starts late, rows missing at random,
    NaN values at random, a constant stretch (zero rolling std), float32 like build_features."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=n_dates)
    symbols = [f"S{i:02d}" for i in range(n_symbols)]
    index = pd.MultiIndex.from_product([dates, symbols], names=["date", "symbol"])
    keep = rng.random(len(index)) >= gaps
    if late and n_symbols > 1:
        before_start = index.get_level_values("date") < dates[n_dates // 2]
        keep &= ~((index.get_level_values("symbol") == symbols[1]) & before_start)
    index = index[keep]
    values = rng.normal(size=(len(index), len(columns))) * rng.uniform(0.01, 50, size=len(columns))
    values[rng.random(values.shape) < nans] = np.nan
    frame = pd.DataFrame(values.astype(np.float32), index=index, columns=list(columns))
    first = frame.index.get_level_values("symbol") == symbols[0]
    frame.iloc[np.flatnonzero(first)[3:9], 0] = 1.5  # constant: rolling std 0 -> z NaN
    return frame


# --- a slow, plain reference: one symbol (or one date) at a time ----------------------------------

def _temporal_reference(series: pd.Series, primitive: str, params: dict) -> pd.Series:
    if primitive == "lag":
        return series.shift(params["periods"])
    if primitive == "diff":
        return series - series.shift(params["periods"])
    if primitive == "ewm":
        return series.ewm(span=params["span"], adjust=True, min_periods=params["span"]).mean()
    window = params["window"]
    mean = series.rolling(window, min_periods=window).mean()
    std = series.rolling(window, min_periods=window).std()
    return {"rolling_mean": mean, "rolling_std": std,
            "rolling_z": (series - mean) / std.where(std > 0)}[primitive]


def _cs_reference(series: pd.Series, primitive: str) -> pd.Series:
    valid = series.dropna()
    if primitive == "cs_rank":
        n = len(valid)
        ranks = (valid.rank(method="average") - 1) / (n - 1) if n > 1 else valid * 0 + 0.5
        return ranks.reindex(series.index)
    if primitive == "cs_z":
        std = valid.std()
        return (series - valid.mean()) / std if std > 0 else series * np.nan
    return series - valid.mean()


def reference(features: pd.DataFrame, recipes: dict) -> pd.DataFrame:
    columns = {}
    for name, recipe in recipes.items():
        primitive, inputs, params = recipe["primitive"], recipe["inputs"], recipe["params"]
        data = features[inputs].astype("float64")
        if primitive in ("product", "ratio"):
            a, b = data[inputs[0]], data[inputs[1]]
            columns[name] = a * b if primitive == "product" else a / b.where(b.abs() > params["eps"])
            continue
        parts = []
        level = "date" if primitive.startswith("cs_") else "symbol"
        for _, rows in data[inputs[0]].groupby(level=level):
            rows = rows.sort_index()
            parts.append(_cs_reference(rows, primitive) if level == "date"
                         else _temporal_reference(rows, primitive, params))
        columns[name] = pd.concat(parts).reindex(features.index) if parts else data[inputs[0]] * np.nan
    out = pd.DataFrame(columns, index=features.index).replace([np.inf, -np.inf], np.nan)
    return out.astype(np.float32).replace([np.inf, -np.inf], np.nan)


def assert_same(fast: pd.DataFrame, slow: pd.DataFrame, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    assert list(fast.columns) == list(slow.columns)
    assert fast.index.equals(slow.index)
    for column in fast.columns:
        np.testing.assert_allclose(fast[column].to_numpy(), slow[column].to_numpy(), rtol=rtol, atol=atol,
                                   equal_nan=True, err_msg=column)


@pytest.fixture(scope="module")
def panel() -> pd.DataFrame:
    return random_panel(0)


@pytest.fixture(scope="module")
def recipes(panel) -> dict:
    return plan_recipes(ALL_PRIMITIVES_SPEC, panel.columns, IMPORTANCE)


# --- (3) each primitive equals the slow reference ------------------------------------------------

@pytest.mark.parametrize("primitive", ["lag", "diff", "rolling_mean", "rolling_std", "rolling_z", "ewm",
                                       "cs_rank", "cs_z", "cs_demean", "product", "ratio"])
def test_each_primitive_matches_the_loop(panel, recipes, primitive):
    chosen = {name: r for name, r in recipes.items() if r["primitive"] == primitive}
    assert chosen, primitive
    fast = apply_recipes(panel, chosen)
    assert_same(fast, reference(panel, chosen))
    assert fast.notna().to_numpy().mean() > 0.3  # not vacuously NaN


@st.composite
def panels(draw):
    return random_panel(draw(st.integers(0, 2**31)), n_dates=draw(st.integers(1, 30)),
                        n_symbols=draw(st.integers(1, 4)), late=draw(st.booleans()),
                        gaps=draw(st.sampled_from([0.0, 0.2, 0.5])), nans=draw(st.sampled_from([0.0, 0.1, 0.3])))


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=panels())
def test_all_recipes_match_the_loop_on_random_panels(frame):
    recipes = plan_recipes(ALL_PRIMITIVES_SPEC, frame.columns, IMPORTANCE)
    assert_same(apply_recipes(frame, recipes), reference(frame, recipes))


def test_output_keeps_index_row_order_dtype_and_recipe_order(panel, recipes):
    shuffled = panel.sample(frac=1.0, random_state=3)
    out = apply_recipes(shuffled, recipes)
    assert out.index.equals(shuffled.index)
    assert list(out.columns) == list(recipes)
    assert set(out.dtypes) == {np.dtype("float32")}
    pd.testing.assert_frame_equal(out.loc[panel.index], apply_recipes(panel, recipes), check_exact=True)


# --- (1) no look-ahead and (2) no crossing symbols -----------------------------------------------

def _equal(a: pd.DataFrame, b: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(a, b, check_exact=True)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**31), cut=st.floats(0.0, 1.0), drop_future=st.booleans())
def test_no_look_ahead(seed, cut, drop_future):
    """Rewriting (or deleting) every row dated after t leaves all values at dates <= t unchanged."""
    frame = random_panel(seed % 1000, n_dates=30, n_symbols=4)
    recipes = plan_recipes(ALL_PRIMITIVES_SPEC, frame.columns, IMPORTANCE)
    dates = frame.index.get_level_values("date")
    t = dates.unique()[int(cut * (dates.nunique() - 1))]
    future = dates > t
    changed = frame.copy()
    if drop_future:
        changed = changed[~future]
    else:
        rng = np.random.default_rng(seed)
        changed.loc[future] = rng.normal(size=(future.sum(), frame.shape[1])).astype(np.float32) * 1e3
    before = apply_recipes(frame, recipes)[~future]
    after = apply_recipes(changed, recipes)
    _equal(before, after.loc[before.index])


def _temporal_and_own_row(recipes: dict) -> dict:
    return {name: r for name, r in recipes.items() if not r["primitive"].startswith("cs_")}


@pytest.mark.parametrize("change", ["values", "drop_rows", "remove_symbol"])
def test_temporal_features_do_not_cross_symbols(panel, recipes, change):
    own = _temporal_and_own_row(recipes)
    other = panel.index.get_level_values("symbol") == "S02"
    changed = panel.copy()
    if change == "values":
        changed.loc[other] = np.float32(-7.0)
    elif change == "drop_rows":
        changed = changed.drop(index=changed.index[other][::3])
    else:
        changed = changed[~other]
    before = apply_recipes(panel, own)[~other]
    after = apply_recipes(changed, own)
    _equal(before, after.loc[before.index])
    # Cross-sectional features, by design, do see the other symbol on the same date.
    cs = {name: r for name, r in recipes.items() if r["primitive"] == "cs_demean"}
    assert not apply_recipes(panel, cs)[~other].equals(apply_recipes(changed, cs).loc[before.index])


def test_late_start_and_missing_dates_count_the_symbols_own_rows():
    dates = pd.bdate_range("2022-03-01", periods=8)
    rows = [(d, "A") for d in dates] + [(d, "B") for i, d in enumerate(dates) if i >= 3 and i != 5]
    index = pd.MultiIndex.from_tuples(sorted(rows), names=["date", "symbol"])
    values = pd.Series(np.arange(len(index), dtype=np.float32), index=index)
    frame = pd.DataFrame({"x": values})
    recipes = {"x__lag1": {"primitive": "lag", "inputs": ["x"], "params": {"periods": 1}},
               "x__rmean2": {"primitive": "rolling_mean", "inputs": ["x"], "params": {"window": 2}}}
    out = apply_recipes(frame, recipes)
    b = frame.xs("B", level="symbol")["x"]
    b_out = out.xs("B", level="symbol")
    # B's first row has no past; its row after the missing date reads its previous own row.
    assert np.isnan(b_out["x__lag1"].iloc[0])
    np.testing.assert_array_equal(b_out["x__lag1"].iloc[1:], b.iloc[:-1])
    np.testing.assert_allclose(b_out["x__rmean2"].iloc[1:], (b.iloc[1:].to_numpy() + b.iloc[:-1].to_numpy()) / 2)
    assert np.isnan(out.xs("A", level="symbol")["x__lag1"].iloc[0])


# --- (4) cross-sectional statistics per date ------------------------------------------------------

def test_cross_sectional_rank_z_demean_per_date():
    index = pd.MultiIndex.from_tuples(
        [("2022-01-03", s) for s in "ABCD"] + [("2022-01-04", "A")] + [("2022-01-05", s) for s in "AB"],
        names=["date", "symbol"])
    frame = pd.DataFrame({"x": np.array([1, 3, 3, np.nan, 5, 2, 2], dtype=np.float32)}, index=index)
    out = apply_recipes(frame, plan_recipes(GenerationSpec(base=("x",), lags=(), rolling_windows=(), diffs=(),
                                                           ewm_spans=()), frame.columns))
    assert list(out.columns) == ["x__csrank", "x__csz", "x__csdemean"]
    std = np.std([1, 3, 3], ddof=1)
    expected = np.array([
        [0.0, (1 - 7 / 3) / std, 1 - 7 / 3], [0.75, (3 - 7 / 3) / std, 3 - 7 / 3], [0.75, (3 - 7 / 3) / std, 3 - 7 / 3],
        [np.nan] * 3,
        [0.5, np.nan, 0.0],  # a lone symbol: middle rank, no z-score
        [0.5, np.nan, 0.0], [0.5, np.nan, 0.0],  # a tie of two, zero spread
    ])
    np.testing.assert_allclose(out.to_numpy(), expected, rtol=1e-6, equal_nan=True)


# --- (5) recipes are data: a JSON round trip rebuilds the same columns -----------------------------

def test_recipes_json_round_trip_rebuilds_generate_output_exactly(panel):
    spec = GenerationSpec.from_dict(json.loads(json.dumps(ALL_PRIMITIVES_SPEC.to_dict())))
    assert spec == ALL_PRIMITIVES_SPEC
    combined, recipes = generate(panel, spec, IMPORTANCE)
    assert list(combined.columns) == [*panel.columns, *recipes]
    pd.testing.assert_frame_equal(combined[list(panel.columns)], panel, check_exact=True)
    rebuilt = apply_recipes(panel, json.loads(json.dumps(recipes)))
    pd.testing.assert_frame_equal(rebuilt, combined[list(recipes)], check_exact=True)
    again, _ = generate(panel, spec, IMPORTANCE)
    pd.testing.assert_frame_equal(again, combined, check_exact=True)  # deterministic


def test_default_spec_names_and_default_base_filtering():
    frame = random_panel(1, n_dates=25, columns=["ret_5d", "vol_20d", "ma_gap_20", "other"])
    combined, recipes = generate(frame, GenerationSpec(), {"vol_20d": 2.0, "ret_5d": 1.0})
    assert {r["inputs"][0] for r in recipes.values()} == {"ret_5d", "vol_20d", "ma_gap_20"}  # no error
    per_base = ["lag1", "lag5", "rmean5", "rstd5", "rz5", "rmean20", "rstd20", "rz20", "diff5", "ewm10",
                "csrank", "csz", "csdemean"]
    assert list(recipes)[:13] == [f"ret_5d__{s}" for s in per_base]
    assert list(recipes)[-2:] == ["ret_5d__x__vol_20d", "ret_5d__div__vol_20d"]
    assert len(recipes) == 3 * 13 + 2
    assert set(DEFAULT_BASE) >= {"ret_5d", "vol_20d", "ma_gap_20"}
    with pytest.raises(ValueError, match="already columns"):
        generate(combined, GenerationSpec())


def test_default_base_exists_in_build_features():
    from plml_assets.lib.features.base import feature_names

    assert set(DEFAULT_BASE) <= set(feature_names(["open", "high", "low", "close", "volume"]))


def test_empty_panel():
    frame = random_panel(2).iloc[:0]
    combined, recipes = generate(frame, ALL_PRIMITIVES_SPEC)
    assert combined.shape == (0, len(BASE) + len(recipes))


# --- (6) interactions among the top-k base features by importance --------------------------------

@pytest.mark.parametrize("top_k, expected", [
    (3, ["ret_5d", "vol_20d", "rsi_14"]),  # the 3 most important, named in base order
    (2, ["ret_5d", "vol_20d"]),
    (1, []), (0, []),
])
def test_interactions_pick_the_top_k(top_k, expected):
    spec = GenerationSpec(base=tuple(BASE), top_k=top_k)
    importance = {**IMPORTANCE, "not_a_base": 99.0, "ret_20d": float("nan")}
    recipes = plan_recipes(spec, BASE + ["not_a_base"], importance)
    pairs = [(a, b) for i, a in enumerate(expected) for b in expected[i + 1:]]
    names = [n for a, b in pairs for n in (f"{a}__x__{b}", f"{a}__div__{b}")]
    assert [n for n, r in recipes.items() if r["primitive"] in ("product", "ratio")] == names
    assert recipes.get(f"{BASE[0]}__div__{BASE[2]}", {"params": {"eps": RATIO_EPS}})["params"] == {"eps": RATIO_EPS}


def test_no_interactions_without_importance_and_ratio_guards():
    assert not any(r["primitive"] in ("product", "ratio") for r in plan_recipes(ALL_PRIMITIVES_SPEC, BASE).values())
    index = pd.MultiIndex.from_product([pd.bdate_range("2022-01-03", periods=1), list("ABCD")],
                                       names=["date", "symbol"])
    frame = pd.DataFrame({"a": [1.0, 1e30, 2.0, 3.0], "b": [0.0, 1e30, 1e-13, 4.0]}, index=index).astype(np.float32)
    out = apply_recipes(frame, plan_recipes(GenerationSpec(base=("a", "b"), lags=(), rolling_windows=(), diffs=(),
                                                           ewm_spans=(), cross_sectional=()),
                                            frame.columns, {"a": 1, "b": 2}))
    np.testing.assert_array_equal(out["a__div__b"], np.array([np.nan, 1.0, np.nan, 0.75], dtype=np.float32))
    np.testing.assert_array_equal(out["a__x__b"], np.array([0.0, np.nan, 2e-13, 12.0], dtype=np.float32))  # inf -> NaN


# --- (7) validation -------------------------------------------------------------------------------

@pytest.mark.parametrize("bad, message", [
    ({"lagz": [1]}, r"unknown GenerationSpec keys \['lagz'\]"),
    ({"lags": [0]}, r"lags must be integers >= 1; got \[0\]"),
    ({"lags": [1.5]}, r"lags must be integers >= 1"),
    ({"rolling_windows": [5, -2]}, r"rolling_windows must be integers >= 1; got \[-2\]"),
    ({"rolling_windows": [1]}, r"window of 1 has no standard deviation"),
    ({"diffs": [True]}, r"diffs must be integers >= 1"),
    ({"ewm_spans": [0]}, r"ewm_spans must be integers >= 1"),
    ({"rolling_stats": ["mean", "median"]}, r"rolling_stats: unknown \['median'\]"),
    ({"cross_sectional": ["pct"]}, r"cross_sectional: unknown \['pct'\]"),
    ({"interactions": ["sum"]}, r"interactions: unknown \['sum'\]"),
    ({"top_k": -1}, r"top_k must be an integer >= 0"),
    ({"base": "ret_5d"}, r"base must be a list"),
    ({"base": [""]}, r"base must hold feature names"),
])
def test_spec_validation_names_the_problem(bad, message):
    with pytest.raises(ValueError, match=message):
        GenerationSpec.from_dict(bad)


def test_spec_round_trip_and_normalization():
    spec = GenerationSpec.from_dict({"base": ["a", "b", "a"], "lags": [1, 1, 2], "rolling_windows": [1],
                                     "rolling_stats": ["mean"], "top_k": 2})
    assert spec.base == ("a", "b") and spec.lags == (1, 2)
    assert GenerationSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    assert hash(spec) == hash(GenerationSpec.from_dict(spec.to_dict()))
    assert GenerationSpec.from_dict({}) == GenerationSpec()


def test_declared_base_must_be_available_defaults_are_filtered():
    with pytest.raises(ValueError, match=r"\['nope', 'vol_60d'\]"):
        plan_recipes(GenerationSpec(base=("ret_5d", "nope", "vol_60d")), ["ret_5d"])
    assert plan_recipes(GenerationSpec(), ["something_else"]) == {}


@pytest.mark.parametrize("recipe, message", [
    ({"primitive": "lag", "inputs": ["missing"], "params": {"periods": 1}}, r"\['missing'\] are absent.*'r'"),
    ({"primitive": "median", "inputs": ["ret_5d"], "params": {}}, r"recipe 'r': unknown primitive 'median'"),
    ({"primitive": "lag", "inputs": ["ret_5d"], "params": {}}, r"needs an integer params\['periods'\] >= 1"),
    ({"primitive": "rolling_z", "inputs": ["ret_5d"], "params": {"window": 0}}, r"params\['window'\] >= 1"),
    ({"primitive": "ratio", "inputs": ["ret_5d"], "params": {}}, r"needs 2 input name"),
    ({"primitive": "ratio", "inputs": ["ret_5d", "vol_20d"], "params": {"eps": -1}}, r"eps'\] must be a number >= 0"),
])
def test_apply_recipes_rejects_bad_recipes(panel, recipe, message):
    with pytest.raises(ValueError, match=message):
        apply_recipes(panel, {"r": recipe})


def test_apply_recipes_needs_a_date_symbol_index(panel, recipes):
    with pytest.raises(ValueError, match="MultiIndex"):
        apply_recipes(panel.reset_index(drop=True), recipes)


# --- (8) lookback ----------------------------------------------------------------------------------

def _one(primitive: str, **params) -> dict:
    return {"r": {"primitive": primitive, "inputs": ["x"], "params": params}}


@pytest.mark.parametrize("recipes, expected", [
    ({}, 0),
    (_one("lag", periods=7), 7),
    (_one("diff", periods=3), 3),
    (_one("rolling_mean", window=20), 19),
    (_one("rolling_z", window=5), 4),
    (_one("cs_rank"), 0),
    ({"r": {"primitive": "product", "inputs": ["x", "y"], "params": {}}}, 0),
    (_one("ewm", span=1), 0),
    (_one("ewm", span=10), math.ceil(math.log(EWM_TAIL_WEIGHT) / math.log(9 / 11))),
])
def test_recipe_lookback_values(recipes, expected):
    assert recipe_lookback(recipes) == expected


def test_recipe_lookback_is_enough_and_tight():
    """Values at the last date rebuilt from only `lookback` earlier rows per symbol match the full
    history (exactly for windows, within the ewm tail weight); one row fewer breaks the longest window."""
    frame = random_panel(4, n_dates=120, n_symbols=3, late=False, gaps=0.0, nans=0.0)
    spec = GenerationSpec(base=("ret_5d", "vol_20d"), lags=(1, 5), rolling_windows=(5, 20), diffs=(5,),
                          ewm_spans=(6,))
    recipes = plan_recipes(spec, frame.columns, {"ret_5d": 1, "vol_20d": 2})
    lookback = recipe_lookback(recipes)
    assert lookback == max(19, math.ceil(math.log(EWM_TAIL_WEIGHT) / math.log(5 / 7)))
    dates = frame.index.get_level_values("date").unique()
    full = apply_recipes(frame, recipes).loc[dates[-1]]
    recent = apply_recipes(frame.loc[dates[-1 - lookback]:], recipes).loc[dates[-1]]
    exact = [n for n, r in recipes.items() if r["primitive"] != "ewm"]
    ewm = [n for n, r in recipes.items() if r["primitive"] == "ewm"]
    pd.testing.assert_frame_equal(recent[exact], full[exact], check_exact=True)
    scale = frame.abs().max().max()
    np.testing.assert_allclose(recent[ewm], full[ewm], rtol=0, atol=4 * EWM_TAIL_WEIGHT * scale)
    window_names = [n for n, r in recipes.items() if r["params"].get("window") == 20]
    short = apply_recipes(frame.loc[dates[-19]:], {n: recipes[n] for n in window_names}).loc[dates[-1]]
    assert short.isna().all().all()


def test_generate_keeps_other_dtypes_as_they_are(panel):
    mixed = panel.assign(ret_5d=panel["ret_5d"].astype("float64"), label=np.where(panel["vol_20d"] > 0, "up", "down"))
    combined, recipes = generate(mixed, ALL_PRIMITIVES_SPEC, IMPORTANCE)
    pd.testing.assert_frame_equal(combined[list(mixed.columns)], mixed, check_exact=True)
    expected, _ = generate(panel, ALL_PRIMITIVES_SPEC, IMPORTANCE)
    assert_same(combined[list(recipes)], expected[list(recipes)], rtol=0, atol=0)


# --- (8) interactions chosen by each fit on its own rows ------------------------------------------

def _regime_panel(n_dates: int = 120, n_symbols: int = 12, seed: int = 5) -> tuple[pd.DataFrame, pd.Series]:
    """Four base features; the label follows a and b on the first half of the dates, c and d on the second."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2021-01-04", periods=n_dates)
    index = pd.MultiIndex.from_product([dates, [f"S{i:02d}" for i in range(n_symbols)]], names=["date", "symbol"])
    X = pd.DataFrame(rng.normal(size=(len(index), 4)), index=index, columns=list("abcd"))
    early = (index.get_level_values("date") < dates[n_dates // 2]).astype(float)
    signal = early * (X["a"] + X["b"]) + (1 - early) * (X["c"] + X["d"])
    y = pd.Series(signal + rng.normal(scale=0.5, size=len(index)), index=index)
    y.iloc[::7] = np.nan  # unlabelled rows are ignored
    return X, y


def test_all_pairs_plans_every_base_pair_without_importance():
    spec = GenerationSpec(base=tuple(BASE), lags=(), rolling_windows=(), diffs=(), ewm_spans=(), cross_sectional=(), top_k=2)
    recipes = plan_recipes(spec, BASE, all_pairs=True)
    pairs = {tuple(r["inputs"]) for r in recipes.values()}
    assert len(pairs) == math.comb(len(BASE), 2) and len(recipes) == 2 * len(pairs)
    assert plan_recipes(GenerationSpec(base=tuple(BASE), top_k=1), BASE, all_pairs=True).keys().isdisjoint(
        {f"{a}__x__{b}" for a, b in pairs})  # top_k < 2: no interactions at all


def test_each_fit_keeps_the_pairs_of_its_own_top_k():
    X, y = _regime_panel()
    spec = GenerationSpec(base=tuple("abcd"), lags=(), rolling_windows=(), diffs=(), ewm_spans=(), cross_sectional=(), top_k=2)
    recipes = plan_recipes(spec, list("abcd"), all_pairs=True)
    half = X.index.get_level_values("date") < X.index.get_level_values("date").unique()[60]
    for rows, kept in ((half, {"a__x__b", "a__div__b"}), (~half, {"c__x__d", "c__div__d"})):
        importance = base_rank_ic(X[rows], y[rows], list("abcd"))
        excluded = interactions_beyond_top_k(recipes, importance, 2)
        assert set(recipes) - set(excluded) == kept
        assert all("outside the top-2 base features" in reason for reason in excluded.values())
    # importance is the |mean per-date rank IC| on the labelled rows
    importance = base_rank_ic(X[half], y[half], ["a"])
    dates = X[half].index.get_level_values("date")
    known = y[half].notna().to_numpy()
    from plml_assets.lib.validation.metrics import per_date_ic
    expected = abs(per_date_ic(y[half].to_numpy()[known], X[half]["a"].to_numpy()[known], dates[known], method="spearman").mean())
    assert importance["a"] == pytest.approx(expected)
    assert interactions_beyond_top_k({"lag": {"primitive": "lag", "inputs": ["a"], "params": {"periods": 1}}}, importance, 2) == {}


def test_all_pairs_refuses_a_base_list_whose_pairs_would_swamp_the_features():
    many = [f"f{i}" for i in range(20)]
    spec = GenerationSpec(base=tuple(many), lags=(), rolling_windows=(), diffs=(), ewm_spans=(), cross_sectional=())
    with pytest.raises(ValueError, match=r"every pair of 20 base features makes 380 interaction columns, more than 120: "
                                         r"declare at most 11 base features"):
        plan_recipes(spec, many, all_pairs=True)
    assert len(plan_recipes(GenerationSpec(**{**spec.to_dict(), "base": tuple(many[:11])}), many, all_pairs=True)) == 110
    assert plan_recipes(GenerationSpec(**{**spec.to_dict(), "top_k": 0}), many, all_pairs=True) == {}
