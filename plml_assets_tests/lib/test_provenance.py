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
