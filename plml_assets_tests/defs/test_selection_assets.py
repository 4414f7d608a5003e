"""Selection as the assets run it: each fit (final, CV fold, CPCV split) may use only the interaction
pairs of its own top-k base features, ranked on its own rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from plml_assets.defs.selection.assets import selection_plan
from plml_assets.lib.features.generation import GenerationSpec, generate
from plml_assets.lib.selection.pipeline import fold_selector, run_selection
from plml_assets.resources.settings import ExperimentSettings, SelectionSettings


def _panel(n_dates: int = 200, n_symbols: int = 15, seed: int = 11):
    """Label driven by a*b on the first half of the dates and by c*d on the second."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range("2020-01-01", periods=n_dates)
    index = pd.MultiIndex.from_product([dates, [f"S{i:02d}" for i in range(n_symbols)]], names=["date", "symbol"])
    base = pd.DataFrame(rng.normal(size=(len(index), 4)), index=index, columns=list("abcd")).astype(np.float32)
    early = np.asarray(index.get_level_values("date") < dates[n_dates // 2])
    signal = np.where(early, base["a"] + base["b"] + base["a"] * base["b"], base["c"] + base["d"] + base["c"] * base["d"])
    y = pd.Series(signal + rng.normal(scale=0.5, size=len(index)), index=index)
    spec = GenerationSpec(base=tuple("abcd"), lags=(), rolling_windows=(), diffs=(), ewm_spans=(), cross_sectional=(), top_k=2)
    X, recipes = generate(base, spec, all_pairs=True)
    return X, y, {"recipes": recipes, "spec": spec.to_dict()}, early


def test_each_fit_selects_among_the_pairs_of_its_own_top_k():
    X, y, feature_recipes, early = _panel()
    # The planted signal is strong: the leakage alarm (0.3 by default) would drop it, so it is raised here.
    selection = SelectionSettings(max_features=20, n_folds=2, n_estimators=20, leakage_corr_threshold=0.95)
    settings = ExperimentSettings()
    interactions = {n for n, r in feature_recipes["recipes"].items() if r["primitive"] in ("product", "ratio")}
    assert len(interactions) == 12  # every pair of the 4 base features, product and ratio
    for rows, allowed in ((early, {"a__x__b", "a__div__b"}), (~early, {"c__x__d", "c__div__d"})):
        result = run_selection(X[rows], y[rows], selection_plan(selection, settings), feature_recipes=feature_recipes)
        assert set(result.selected) & interactions, result.dropped  # an interaction is chosen...
        assert (set(result.selected) & interactions) <= allowed  # ...and only among this fit's own pairs
        assert {n for n, reason in result.dropped.items() if "outside the top-2 base features" in reason} == interactions - allowed
        table = result.to_frame()
        assert set(table["feature"]) == set(X.columns)  # every column is accounted for, the excluded ones with their reason
    # The fold selector applies the same rule to the positions it is given.
    select = fold_selector(X, y, selection_plan(selection, settings), feature_recipes)
    late_choice = select(np.flatnonzero(~early))
    assert set(late_choice) & interactions and (set(late_choice) & interactions) <= {"c__x__d", "c__div__d"}
    # Without recipes (e.g. generation disabled) nothing is excluded.
    plain = run_selection(X[early], y[early], selection_plan(selection, settings))
    assert not any("outside the top" in reason for reason in plain.dropped.values())
