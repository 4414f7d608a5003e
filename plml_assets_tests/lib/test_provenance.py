"""Identifiers of code, data and search setups."""

from __future__ import annotations

import pandas as pd

from plml_assets.lib.registry.provenance import content_digest, feature_list_hash


def test_content_digest_follows_values_index_columns_and_settings():
    frame = pd.DataFrame({"x": [1.0, 2.0]}, index=pd.Index(["a", "b"], name="symbol"))
    base = content_digest(frame, {"metric": "rank_ic"})
    assert base == content_digest(frame.copy(), {"metric": "rank_ic"})  # same content, same digest
    assert base != content_digest(frame.assign(x=[1.0, 2.5]), {"metric": "rank_ic"})  # one value
    assert base != content_digest(frame.rename(columns={"x": "y"}), {"metric": "rank_ic"})  # a column name
    assert base != content_digest(frame.set_axis(["a", "c"]), {"metric": "rank_ic"})  # the index
    assert base != content_digest(frame, {"metric": "ic"})  # the setup
    assert len(base) == 12


def test_feature_list_hash_depends_on_order():
    assert feature_list_hash(["a", "b"]) != feature_list_hash(["b", "a"])


def _groupby_digests(panel: pd.DataFrame, level: str) -> dict[str, str]:
    """The reference: one sha256 per group of the row hashes, in the order pandas' groupby gives them."""
    import hashlib

    hashed = pd.Series(pd.util.hash_pandas_object(panel, index=True).to_numpy(), index=panel.index)
    return {(str(k.date()) if isinstance(k, pd.Timestamp) else str(k)): hashlib.sha256(v.to_numpy().tobytes()).hexdigest()[:12]
            for k, v in hashed.groupby(level=level, sort=True)}


def test_panel_digests_equal_a_groupby_per_date_and_symbol_and_name_the_first_change():
    import numpy as np

    from plml_assets.lib.data.prices import first_difference, panel_digests

    rng = np.random.default_rng(3)
    dates = pd.bdate_range("2020-01-01", periods=40)
    index = pd.MultiIndex.from_product([dates, ["b", "a", "c"]], names=["date", "symbol"])
    panel = pd.DataFrame({"close": rng.uniform(10, 20, len(index))}, index=index).sample(frac=0.9, random_state=1).sort_index()
    digests = panel_digests(panel)
    assert digests["dates"] == _groupby_digests(panel, "date") and len(digests["dates"]) == 40
    assert digests["symbols"] == _groupby_digests(panel, "symbol") and sorted(digests["symbols"]) == ["a", "b", "c"]
    changed = panel.copy()
    changed.iloc[50, 0] += 0.01
    day, symbol = changed.index[50]
    assert first_difference(digests, panel) is None
    message = first_difference(digests, changed)
    assert f"first differing date {day.date()}" in message and f"symbols whose rows differ: {symbol}" in message
