"""What a registered model cost counts each version once: the run that registered it. A re-run that
found the version already registered (a killed run redone) reuses it and is not charged for it again.
Real Dagster instance on a temp DAGSTER_HOME; the materializations carry what registered_model emits."""

from __future__ import annotations

import dagster as dg

from plml_assets.defs.analytics.report import registered_versions


def _registration(newly: bool | None):
    metadata = {"model": "plml_model", "version": 3, "candidate": "xgboost"}
    if newly is not None:
        metadata["newly_registered"] = newly

    @dg.asset(name="registered_model")
    def registered_model():
        return dg.Output({"version": "3"}, metadata=metadata)

    return registered_model


def test_a_reused_version_is_charged_to_the_run_that_registered_it_only():
    with dg.instance_for_test() as instance:
        first = dg.materialize([_registration(True)], instance=instance)
        again = dg.materialize([_registration(False)], instance=instance)  # the re-run that reused v3
        legacy = dg.materialize([_registration(None)], instance=instance)  # stored before the flag existed
        found = registered_versions(instance)
    assert found[first.run_id] == [{"model": "plml_model", "version": "3", "candidate": "xgboost"}]
    assert again.run_id not in found
    assert [v["version"] for v in found[legacy.run_id]] == ["3"]
