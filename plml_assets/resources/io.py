"""Assets travel as Parquet (DataFrames, Series) or JSON (small dicts), under PLML_HOME/assets."""

from __future__ import annotations

import json
from pathlib import Path

import dagster as dg
import pandas as pd
from pydantic import Field

from plml_assets.lib.analytics.metering import METER
from plml_assets.resources.paths import default_asset_dir


class StoredAssetError(RuntimeError):
    """An asset's stored file exists but cannot be read (truncated, overwritten, half-copied)."""


def _read(path: Path, asset: str) -> object:
    """The value in ``path`` (Parquet or JSON); StoredAssetError naming the asset and the way out
    when the file is damaged."""
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        return json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError) as exc:  # pyarrow's ArrowInvalid and JSONDecodeError are ValueErrors
        size = path.stat().st_size if path.exists() else 0
        raise StoredAssetError(
            f"the stored value of asset {asset} at {path} ({size:,} bytes) cannot be read: {type(exc).__name__}: "
            f"{str(exc)[:200]}. The file is damaged (truncated or overwritten?): re-materialize {asset} to rewrite it "
            f"(e.g. `dagster asset materialize -m plml_assets.definitions --select {asset}`, or `plml run`)"
        ) from exc


def _step_key(context: dg.InputContext | dg.OutputContext) -> str | None:
    try:
        return context.step_key if isinstance(context, dg.OutputContext) else context.step_context.step.key
    except Exception:  # built outside a run (build_output_context in a test): nothing to meter
        return None


class ParquetIOManager(dg.ConfigurableIOManager):
    base_dir: str | None = Field(default=None, description="folder for asset files (default PLML_HOME/assets)")

    def _root(self) -> Path:
        return Path(self.base_dir) if self.base_dir else default_asset_dir()

    def _path(self, context: dg.InputContext | dg.OutputContext, suffix: str) -> Path:
        key = context.asset_key.path if context.has_asset_key else [context.name]
        return self._root().joinpath(*key).with_suffix(suffix)

    def handle_output(self, context: dg.OutputContext, obj: object) -> None:
        if obj is None:
            return
        if isinstance(obj, pd.Series):
            obj = obj.to_frame()
        if isinstance(obj, pd.DataFrame):
            path = self._path(context, ".parquet")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".parquet.tmp")
            obj.to_parquet(tmp)
            tmp.replace(path)  # atomic: a killed run never leaves a half-written file behind
            json_path = path.with_suffix(".json")
            json_path.unlink(missing_ok=True)
        elif isinstance(obj, dict):
            path = self._path(context, ".json")
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".json.tmp")
            tmp.write_text(json.dumps(obj, indent=2, default=str))
            tmp.replace(path)
            path.with_suffix(".parquet").unlink(missing_ok=True)
        else:
            raise TypeError(
                f"ParquetIOManager stores DataFrames, Series and dicts; asset {context.asset_key.to_user_string()} "
                f"returned {type(obj).__name__}"
            )
        metadata: dict[str, object] = {"path": dg.MetadataValue.path(str(path))}
        step = _step_key(context)
        if step is not None:  # what the step cost so far (lib/analytics/metering.py; read by `plml analytics`)
            metadata.update(METER.measure(step, len(obj) if isinstance(obj, pd.DataFrame) else None))
        context.add_output_metadata(metadata)

    def load_input(self, context: dg.InputContext) -> object:
        parquet = self._path(context, ".parquet")
        asset = context.asset_key.to_user_string() if context.has_asset_key else context.name
        if parquet.exists():
            frame = _read(parquet, asset)
            step = _step_key(context)
            if step is not None:
                METER.read(step, len(frame))
            if frame.shape[1] == 1 and context.dagster_type.typing_type is pd.Series:
                return frame.iloc[:, 0]
            return frame
        json_path = self._path(context, ".json")
        if json_path.exists():
            return _read(json_path, asset)
        raise FileNotFoundError(
            f"no stored value for asset {asset} under {self._root()}: "
            "materialize it first"
        )


def load_stored(asset: str, base_dir: str | Path | None = None) -> object:
    """An asset's stored value read outside a run (e.g. by `plml worker`), from the files the
    ParquetIOManager writes: ``<base_dir>/<asset>.parquet`` or ``.json``."""
    root = Path(base_dir) if base_dir else default_asset_dir()
    parquet, json_path = root / f"{asset}.parquet", root / f"{asset}.json"
    if parquet.exists():
        return _read(parquet, asset)
    if json_path.exists():
        return _read(json_path, asset)
    raise FileNotFoundError(f"no stored value for asset {asset} under {root}: materialize it first (or set PLML_ASSET_DIR)")
