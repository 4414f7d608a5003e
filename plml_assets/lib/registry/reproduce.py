"""Retrain a registered version from what it recorded and compare it with the registered model.

A version records, on its MLflow run: the prices it was trained on as digests (``data_digest.json``:
a fingerprint, one hash per date and per symbol, ``lib.data.prices.panel_digests``), its features
and their recipes (inside the pyfunc), its fitted hyper-parameters and seed (``model_meta.json`` of
each saved model), its horizon, training end and holdout window (tags), and its code version. The
reproduction checks the prices against the digests (refusing, with the first differing date and the
symbols, when they differ), rebuilds the features with the version's own pipeline, refits every
model by the same recipe (``lib.models.training.fit_model``) on the same training window, and
scores the recorded holdout with both. An ensemble keeps its recorded rule (weights fitted on
out-of-fold predictions are part of what it recorded); its members are refitted.

Nothing here touches the registry: the refitted models go to a scratch folder.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from plml_assets.lib.data import prices as price_lib
from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.models.training import excess_returns, fit_model, predict_rows
from plml_assets.lib.registry.serving import history_days, model_features

DIGEST_ARTIFACT = "data_digest.json"
#: largest |registered - reproduced| holdout score accepted: trees and the linear model are exact on the same machine
#: and library versions; a net's float32 training on the CPU may round differently
TREE_TOLERANCE, NET_TOLERANCE = 1e-6, 1e-4
#: the families whose fits repeat exactly (the trees and the linear model)
EXACT_FAMILIES = ("xgboost", "lightgbm", "elastic_net")


class ReproductionRefused(ValueError):
    """The version cannot be reproduced from what is available (prices differ, nothing recorded)."""


@dataclass
class Reproduction:
    version: str
    max_abs_diff: float
    rows: int
    tolerance: float
    members: dict[str, dict] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    scratch: str | None = None

    @property
    def match(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance)

    def to_json(self) -> dict:
        return {"version": self.version, "max_abs_diff": self.max_abs_diff, "rows": self.rows, "match": self.match}


def check_prices(recorded: dict, prices: pd.DataFrame) -> tuple[pd.DataFrame, list[str]]:
    """The available prices cut to the recorded dates, or a refusal naming where they differ. Dates
    after the recorded ones (data that arrived since) are left out, and said so."""
    notes = []
    if not recorded.get("dates"):
        raise ReproductionRefused("the version recorded no price digests")
    last = pd.Timestamp(max(recorded["dates"]))
    dates = prices.index.get_level_values("date")
    if (dates > last).any():
        notes.append(f"prices after {last.date()} ({int((dates > last).sum()):,} rows) arrived since; left out")
        prices = prices[dates <= last]
    where = price_lib.first_difference(recorded, prices)
    if where is not None:
        raise ReproductionRefused(f"the available prices are not those the version was trained on: {where}")
    return prices, notes


def reproduce(scorer, tags: dict[str, str], recorded: dict, prices: pd.DataFrame, version: str,
              scratch: Path | None = None) -> Reproduction:
    """Refit every model of ``scorer`` (the version's unwrapped pyfunc, its models loaded) from the
    recorded facts and compare the holdout scores of the two."""
    if tags.get("plml.retrain_mode") == "incremental":
        raise ReproductionRefused(
            f"v{version} was an incremental update of v{tags.get('plml.updated_from', '?')} (more trees or fine-tuning on "
            "new rows): a fresh fit does not reproduce it; reproduce the version it was updated from"
        )
    missing = [t for t in ("plml.horizon", "plml.train_end", "plml.holdout_start", "plml.holdout_end") if not tags.get(t)]
    if missing:
        raise ReproductionRefused(f"v{version} lacks the tag(s) {missing}: its training window is unknown")
    prices, notes = check_prices(recorded, prices)
    horizon = int(tags["plml.horizon"])
    train_end, hold_start, hold_end = (pd.Timestamp(tags[k]) for k in ("plml.train_end", "plml.holdout_start", "plml.holdout_end"))
    members = scorer.members()
    columns = list(dict.fromkeys(c for _, cols in members.values() for c in cols))
    features = model_features(prices, columns, getattr(scorer, "recipes", {}))
    y = excess_returns(forward_returns(prices, horizon)).reindex(features.index)
    dates = features.index.get_level_values("date")
    train = (dates <= train_end) & y.notna().to_numpy()
    refitted, report = {}, {}
    for name, (model, cols) in members.items():
        params = {k: v for k, v in model.get_params().items() if k != "device"}
        fresh, _ = fit_model(model.family, params, features.loc[train, cols], y[train], horizon)
        refitted[name] = fresh
        report[name] = {"family": model.family, "training_rows": int(train.sum()), "params": params}
    copy_ = copy.copy(scorer)
    if hasattr(scorer, "models_"):
        copy_.models_ = refitted
    else:
        copy_.model_ = next(iter(refitted.values()))
    span = prices[dates <= hold_end]
    span_dates = span.index.get_level_values("date")
    first = span_dates.unique().sort_values()
    keep_from = first[max(0, int(first.searchsorted(hold_start)) - history_days(getattr(scorer, "recipes", {})) - 1)]
    span = span[span_dates >= keep_from]
    registered = scorer.score(span, all_dates=True).set_index(["date", "symbol"])["score"]
    reproduced = copy_.score(span, all_dates=True).set_index(["date", "symbol"])["score"]
    on = registered.index.get_level_values("date")
    held = (on >= hold_start) & (on <= hold_end)
    diff = np.abs(registered[held].to_numpy() - reproduced.reindex(registered.index)[held].to_numpy())
    for name, (model, cols) in members.items():
        rows = np.flatnonzero((dates >= hold_start) & (dates <= hold_end))
        a, b = predict_rows(model, features[cols], rows), predict_rows(refitted[name], features[cols], rows)
        report[name]["max_abs_diff"] = float(np.max(np.abs(a - b))) if len(rows) else float("nan")
    tolerance = TREE_TOLERANCE if all(m.family in EXACT_FAMILIES for m, _ in members.values()) else NET_TOLERANCE
    out = Reproduction(version, float(diff.max()) if len(diff) else float("nan"), int(held.sum()), tolerance, report, notes)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        for name, model in refitted.items():
            model.save(scratch / name)
        out.scratch = str(scratch)
    return out
