"""Issue 18 item 5: an asset file damaged on disk (truncated Parquet, cut JSON) fails the step that
reads it with an error naming the asset and the way out; re-materializing the asset fixes it. A real
Dagster materialization with the project's IO manager on a temp folder."""

from __future__ import annotations

import dagster as dg
import pandas as pd
import pytest

from plml_assets.resources.io import ParquetIOManager, StoredAssetError, load_stored


@dg.asset
def upstream_frame() -> pd.DataFrame:
    return pd.DataFrame({"x": range(1000), "y": [float(i) / 7 for i in range(1000)]})


@dg.asset
def upstream_dict() -> dict:
    return {"features": [f"f{i}" for i in range(50)], "horizon": 5}


@dg.asset
def downstream(upstream_frame: pd.DataFrame, upstream_dict: dict) -> dict:
    return {"rows": len(upstream_frame), "features": len(upstream_dict["features"])}


@pytest.mark.parametrize("damaged, cut", [("upstream_frame.parquet", 0.5), ("upstream_dict.json", 0.6), ("upstream_frame.parquet", 0.0)])
def test_a_truncated_asset_file_is_named_and_rematerializing_fixes_it(tmp_path, damaged, cut):
    io = ParquetIOManager(base_dir=str(tmp_path))
    assets = [upstream_frame, upstream_dict, downstream]
    assert dg.materialize(assets, resources={"io_manager": io}).success
    path = tmp_path / damaged
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])  # cut off on disk (a full disk, a killed copy)

    result = dg.materialize(assets, resources={"io_manager": io}, selection=["downstream"], raise_on_error=False)
    assert not result.success
    (failure,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    message = failure.event_specific_data.error.to_string()  # the error and its causes, as the UI shows them
    asset = damaged.split(".")[0]
    assert "StoredAssetError" in message
    assert f"the stored value of asset {asset} at {path}" in message and "damaged" in message
    assert f"re-materialize {asset}" in message and f"--select {asset}" in message
    with pytest.raises(StoredAssetError, match=f"asset {asset}"):
        load_stored(asset, tmp_path)

    # Re-materializing the damaged asset rewrites the file; then the reader works again.
    assert dg.materialize(assets, resources={"io_manager": io}, selection=[asset]).success
    again = dg.materialize(assets, resources={"io_manager": io}, selection=["downstream"])
    assert again.success and again.output_for_node("downstream") == {"rows": 1000, "features": 50}
