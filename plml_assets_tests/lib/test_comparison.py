"""Families side by side: the comparison table and its refusal of mismatched evaluations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from plml_assets.lib.comparison.families import compare_families


def cv_frame(values: list[float], scheme_folds=(("walk_forward", 3), ("kfold", 2)), shift_dates: bool = False) -> pd.DataFrame:
    rows, it = [], iter(values)
    for scheme, n in scheme_folds:
        for k in range(1, n + 1):
            start = f"20{10 + k + (1 if shift_dates else 0)}-01-01"
            rows.append({"scheme": scheme, "fold": k, "test_start": start, "test_end": f"20{10 + k}-12-31", "test_rows": 100,
                         "valid_rank_ic": next(it), "rank_ic_gap": 0.05, "fit_seconds": 1.5})
    return pd.DataFrame(rows)


def model_out(holdout_ic: float, window: dict | None = None) -> dict:
    metrics = {"holdout_rank_ic": holdout_ic, "holdout_ic": holdout_ic / 2, "holdout_rmse": 0.03,
               "holdout_directional_accuracy": 0.51, "train_rank_ic": 0.1}
    return {"metrics": metrics, "holdout": window or {"holdout_start": "2020-01-02", "holdout_end": "2020-12-31"},
            "fit_seconds": 2.0, "model_bytes": 2048, "run_id": "r"}


def test_the_table_has_mean_spread_and_cost_per_family_sorted_by_walk_forward_cv():
    cv = {"a": cv_frame([0.01, 0.02, 0.03, 0.0, 0.1]), "b": cv_frame([0.05, 0.04, -0.01, 0.02, 0.02])}
    models = {"a": model_out(0.02), "b": model_out(-0.01)}
    studies = {"a": {"counts": {"COMPLETE": 4, "PRUNED": 2}, "best_values": {"rank_ic": 0.03}}}
    table = compare_families(cv, models, studies)
    assert list(table.index) == ["b", "a"]  # walk-forward means 0.0267 > 0.02
    assert table.loc["a", "walk_forward_rank_ic_mean"] == pytest.approx(0.02)
    assert table.loc["a", "walk_forward_rank_ic_std"] == pytest.approx(np.std([0.01, 0.02, 0.03], ddof=1))
    assert table.loc["b", "walk_forward_positive_folds"] == pytest.approx(2 / 3)
    assert table.loc["a", "kfold_rank_ic_mean"] == pytest.approx(0.05)
    assert table.loc["b", "holdout_rank_ic"] == -0.01
    assert table.loc["a", "cv_fit_seconds"] == pytest.approx(7.5) and table.loc["a", "model_kib"] == 2.0
    assert table.loc["a", "study_trials"] == 6 and table.loc["a", "study_best"] == 0.03
    assert np.isnan(table.loc["b", "study_trials"])  # no study given for b


def test_families_scored_on_other_folds_or_holdouts_are_refused():
    with pytest.raises(ValueError, match="b_cv_results was evaluated on other CV folds"):
        compare_families({"a": cv_frame([0.0] * 5), "b": cv_frame([0.0] * 5, shift_dates=True)},
                         {"a": model_out(0.0), "b": model_out(0.0)})
    other = {"holdout_start": "2019-01-02", "holdout_end": "2019-12-31"}
    with pytest.raises(ValueError, match="b_model was evaluated on the holdout"):
        compare_families({"a": cv_frame([0.0] * 5), "b": cv_frame([0.0] * 5)}, {"a": model_out(0.0), "b": model_out(0.0, other)})
