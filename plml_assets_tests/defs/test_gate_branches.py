"""Every blocking branch of the promotion gate, forced to run, on real parts.

Each test crafts the one piece of evidence that must block (a validation verdict computed by the
real ``overfitting.verdict`` from crafted statistics, a champion better than the challenger, or a
recorded holdout score that the registered pyfunc does not reproduce) while every other piece says
"promote", and then asserts that the 'champion' alias did not move and that the reason is stated in
the gate's result and in the challenger's registry tags. One last test lets every check pass and
sees the alias move.

Real parts: a SQLite MLflow store on a temp dir, real registered pyfunc models (a tiny
"mixed oracle" that scores rows with a controlled share of their own future return, so that its
holdout rank IC is known in advance), a real Dagster instance, and ``dg.materialize`` of the real
``labels``, ``registered_model``, ``promotion_gate`` and ``champion_model`` on stub
``market_prices`` (a real slice of the embedded panel), ``model_leaderboard`` and
``validation_report`` assets that return the crafted values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
import pytest

from plml_assets.defs.data.assets import labels as labels_asset
from plml_assets.defs.registry.assets import champion_model, promotion_gate, registered_model
from plml_assets.defs.shared import split_for
from plml_assets.lib.data.labels import forward_returns
from plml_assets.lib.data.prices import load_embedded
from plml_assets.lib.validation import overfitting as of
from plml_assets.lib.validation.metrics import evaluate_predictions
from plml_assets.resources.mlflow_registry import MlflowRegistry
from plml_assets.resources.settings import ExperimentSettings
from plml_assets_tests.conftest import PLML_ENV_VARS, SLICE_SYMBOLS

SETTINGS = ExperimentSettings(horizon=5, holdout_days=120, profile="quick")
# Explicit bounds, so that these tests do not move with the library's defaults.
BOUNDS = of.ValidationBounds(pbo_warn=0.25, pbo_fail=0.5, dsr_warn=0.95, dsr_fail=0.5, gap_warn=0.1, gap_fail=0.2,
                             valid_below_zero_warn=0.5, valid_below_zero_fail=None)
# Statistics that breach no bound: the starting point every blocking branch changes one stat of.
CLEAN_STATS = {"pbo": 0.1, "dsr": 0.99, "psr": 0.99, "gap_mean": 0.02, "share_valid_below_zero": 0.2}
CANDIDATE = "mixed_oracle"
LEADERBOARD_RUN = "leaderboard-run-1"
# Share of the future-return rank in the mixed oracle's score (the rest is fixed hash noise). On the
# slice below they give holdout rank ICs of about -0.03, 0.08 and 0.14: all under the gate's
# default 'too good to be true' bound of 0.2, and ordered weak < challenger < strong.
WEAK, CHALLENGER, STRONG = 0.0, 0.1, 0.15


class MixedOracle(mlflow.pyfunc.PythonModel):
    """Scores each row with ``signal`` x its own future-return rank (looked up in the input panel)
    plus ``1 - signal`` x noise fixed by (date, symbol): a model whose holdout rank IC is set by
    ``signal``, cheap to log and to load."""

    def __init__(self, signal: float):
        self.signal = signal

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        panel = model_input.assign(date=pd.to_datetime(model_input["date"])).set_index(["date", "symbol"]).sort_index()
        future = panel["close"].groupby(level="symbol").shift(-SETTINGS.horizon) / panel["close"] - 1.0
        rank = future.groupby(level="date").rank(pct=True).fillna(0.5).to_numpy()
        keys = panel.index.get_level_values("date").strftime("%Y-%m-%d") + "|" + panel.index.get_level_values("symbol").astype(str)
        noise = (pd.util.hash_array(np.asarray(keys, dtype=object)) % 1_000_003) / 1_000_003
        out = panel.index.to_frame(index=False)
        out["score"] = self.signal * rank + (1.0 - self.signal) * noise
        return out


@dataclass(frozen=True)
class LoggedModel:
    signal: float
    run_id: str
    model_uri: str
    holdout_rank_ic: float  # measured on the Python object, not through MLflow: the "training-time" score


@dataclass(frozen=True)
class World:
    tracking_uri: str
    prices: pd.DataFrame
    holdout: dict[str, str]
    models: dict[float, LoggedModel]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> World:
    home = tmp_path_factory.mktemp("gate") / "plml_home"
    (home / "dagster").mkdir(parents=True)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PLML_HOME", str(home))
        mp.setenv("DAGSTER_HOME", str(home / "dagster"))
        for var in PLML_ENV_VARS:
            mp.delenv(var, raising=False)
        panel = load_embedded()
        prices = panel[panel.index.get_level_values("symbol").isin(SLICE_SYMBOLS)].loc["2011-01-01":"2013-12-31"]
        y_all, split = split_for(forward_returns(prices, SETTINGS.horizon).to_frame(), SETTINGS)
        tracking_uri = f"sqlite:///{home / 'mlflow.db'}"
        registry = MlflowRegistry(tracking_uri=tracking_uri, model_name="unused")
        example = prices.reset_index().head(40)
        models = {}
        for signal in (WEAK, CHALLENGER, STRONG):
            model = MixedOracle(signal)
            scored = model.predict(None, prices.reset_index()).set_index(["date", "symbol"])["score"]
            scored = scored[scored.index.get_level_values("date").isin(split.holdout_dates)]
            rank_ic = evaluate_predictions(y_all.reindex(scored.index).to_numpy(), scored.to_numpy(),
                                           scored.index.get_level_values("date"))["rank_ic"]
            signature = mlflow.models.infer_signature(example, model.predict(None, example), params={"all_dates": False})
            with registry.tracking():
                with mlflow.start_run(experiment_id=registry.experiment_id()) as run:
                    info = mlflow.pyfunc.log_model(name="model", python_model=model, signature=signature,
                                                   pip_requirements=["mlflow", "pandas"])
            models[signal] = LoggedModel(signal, run.info.run_id, info.model_uri, float(rank_ic))
        assert models[WEAK].holdout_rank_ic < models[CHALLENGER].holdout_rank_ic < models[STRONG].holdout_rank_ic < 0.2
        holdout = {"holdout_start": str(split.holdout_dates.min().date()), "holdout_end": str(split.holdout_dates.max().date())}
        yield World(tracking_uri, prices, holdout, models)


@pytest.fixture
def registry(world, request, plml_home) -> MlflowRegistry:
    """A registered model of its own per test, in the module's MLflow store."""
    return MlflowRegistry(tracking_uri=world.tracking_uri, model_name="gate_" + re.sub(r"\W", "_", request.node.name))


def _register_champion(registry: MlflowRegistry, model: LoggedModel) -> str:
    with registry.tracking():
        mv = mlflow.register_model(model.model_uri, registry.model_name)
    registry.promote(str(mv.version), reason="test setup: the standing champion")
    return str(mv.version)


def _leaderboard(world: World, model: LoggedModel, recorded_rank_ic: float | None = None) -> dict:
    """The leaderboard's output with ``model`` as its validated pick; ``recorded_rank_ic`` is the holdout
    rank IC it says the pick scored at training time (by default what the pick really scores)."""
    rank_ic = model.holdout_rank_ic if recorded_rank_ic is None else recorded_rank_ic
    winner = {
        "name": CANDIDATE, "kind": "single", "family": CANDIDATE, "run_id": model.run_id, "model_uri": model.model_uri,
        "tags": {"plml.horizon": str(SETTINGS.horizon)}, "features": ["close"], "description": f"mixed oracle {model.signal}",
        "holdout": world.holdout, "metrics": {"holdout_rank_ic": rank_ic},
    }
    row = {"candidate": CANDIDATE, "kind": "single", "walk_forward_rank_ic_mean": 0.03, "kfold_rank_ic_mean": 0.03,
           "dsr": 0.99, "psr": 0.99, "oof_sharpe": 1.0, "holdout_rank_ic": rank_ic}
    selection = {"winner": CANDIDATE, "validated": True, "reason": "best CV rank IC; beats the baseline on the holdout",
                 "validation": "beats momentum_20d on the holdout"}
    return {"winner": winner, "selection": selection, "table": [row], "mlflow_run_id": LEADERBOARD_RUN}


def _report(stats: dict) -> dict:
    """validation_report's dict on the leaderboard's pick, its verdict given by the real rule."""
    verdict, reasons = of.verdict(stats, BOUNDS)
    return {"subject": CANDIDATE, "leaderboard_run_id": LEADERBOARD_RUN, "verdict": verdict, "reasons": reasons}


def _run(world: World, registry: MlflowRegistry, instance, board: dict, report: dict) -> dg.ExecuteInProcessResult:
    @dg.asset(name="market_prices")
    def market_prices_stub() -> pd.DataFrame:
        return world.prices

    @dg.asset(name="model_leaderboard")
    def model_leaderboard_stub() -> dict:
        return board

    @dg.asset(name="validation_report")
    def validation_report_stub() -> dict:
        return report

    # What the gate reads only for the model card it writes (issue 16): no recipes, three folds, no explanation.
    @dg.asset(name="feature_recipes")
    def feature_recipes_stub() -> dict:
        return {"recipes": {}}

    @dg.asset(name="cv_splits")
    def cv_splits_stub() -> pd.DataFrame:
        return pd.DataFrame({"scheme": ["walk_forward"] * 3, "fold": [1, 2, 3], "date": world.prices.index.levels[0][:3],
                             "role": ["test"] * 3})

    @dg.asset(name="shap_summary")
    def shap_summary_stub() -> dict:
        return {"models": {}, "randomization": {}}

    return dg.materialize(
        [market_prices_stub, labels_asset, model_leaderboard_stub, validation_report_stub, feature_recipes_stub, cv_splits_stub,
         shap_summary_stub, registered_model, promotion_gate, champion_model],
        resources={"settings": SETTINGS, "mlflow_registry": registry}, instance=instance, raise_on_error=False,
    )


def _gate(result) -> dg.AssetCheckEvaluation:
    (gate,) = [e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"]
    return gate


def _materialized(result) -> set[str]:
    return {e.materialization.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def _assert_kept(result, registry: MlflowRegistry, champion: str) -> tuple[dg.AssetCheckEvaluation, dict[str, str]]:
    """The gate ran and said 'keep', the challenger was registered but not promoted, and the registry
    tags carry the gate's stated reason. Returns the gate's evaluation and the challenger's tags."""
    gate = _gate(result)
    assert not gate.passed and gate.description.startswith("keep: "), gate.description
    assert not result.success and "champion_model" not in _materialized(result)
    challenger = registry.alias_version("challenger")
    assert challenger is not None and challenger.version != champion
    assert registry.alias_version("champion").version == champion
    assert registry.champion_history() == [champion]
    tags = registry.version_info(challenger.version).tags
    assert tags["plml.gate"] == "keep" and tags["plml.gate_champion"] == champion
    assert tags["plml.gate_detail"] == gate.description[:4000]
    return gate, tags


@pytest.mark.parametrize(
    ("stat", "value", "words"),
    [
        ("dsr", 0.12, "deflated Sharpe"),  # (1) deflated Sharpe below dsr_fail
        ("pbo", 0.8, "backtest overfitting"),  # (2) PBO above pbo_fail
        ("gap_mean", 0.35, "train-validation gap"),  # (3) train/validation gap above gap_fail
    ],
)
def test_a_failing_validation_statistic_blocks_an_otherwise_better_challenger(world, registry, instance, stat, value, words):
    champion = _register_champion(registry, world.models[WEAK])
    report = _report({**CLEAN_STATS, stat: value})
    result = _run(world, registry, instance, _leaderboard(world, world.models[CHALLENGER]), report)

    gate, tags = _assert_kept(result, registry, champion)
    # The holdout comparison alone would promote: the validation verdict is what blocks.
    assert f"vs champion v{champion}" in gate.description and "margin +" in gate.description
    assert float(gate.metadata["margin"].value) > 0
    assert "blocked by the leaderboard" not in gate.description
    # The reason names the breached statistic, its value and what it measures, in the result and the tags.
    for text in (gate.description, tags["plml.gate_detail"]):
        assert "blocked: the validation report on this candidate says fail" in text
        assert "validation report: fail (" in text
        assert re.search(rf"\b{stat}\b[^;]*{re.escape(str(value))}", text), text
        assert words in text
    # Only the crafted statistic is named: the other (clean) ones did not contribute.
    others = [k for k in ("pbo", "dsr", "gap_mean", "share_valid_below_zero") if k != stat]
    assert not [k for k in others if re.search(rf"\b{k}\b", gate.description)], gate.description


def test_a_challenger_worse_than_the_champion_on_the_holdout_is_not_promoted(world, registry, instance):
    strong, challenger_model = world.models[STRONG], world.models[CHALLENGER]
    champion = _register_champion(registry, strong)
    result = _run(world, registry, instance, _leaderboard(world, challenger_model), _report(CLEAN_STATS))

    gate, tags = _assert_kept(result, registry, champion)
    # The champion was re-scored on this holdout through its registered pyfunc, and it is better.
    assert f"vs champion v{champion}" in gate.description
    assert float(gate.metadata["reference_value"].value) == pytest.approx(strong.holdout_rank_ic, abs=1e-9)
    assert float(gate.metadata["challenger"].value) == pytest.approx(challenger_model.holdout_rank_ic, abs=1e-9)
    margin = challenger_model.holdout_rank_ic - strong.holdout_rank_ic
    assert float(gate.metadata["margin"].value) == pytest.approx(margin, abs=1e-9) and margin < 0
    for text in (gate.description, tags["plml.gate_detail"]):
        assert f"margin {margin:+.4f} is not above 0.0" in text
        assert "blocked" not in text and "validation report" not in text  # nothing else blocked it

    # champion_model's own guard: run alone after the gate said 'keep', it refuses and says why.
    again = dg.materialize([champion_model], resources={"mlflow_registry": registry}, instance=instance, raise_on_error=False)
    assert not again.success
    failure = next(e for e in again.all_events if e.event_type_value == "STEP_FAILURE")
    assert "no passing promotion gate (gate: keep" in str(failure.event_specific_data.error)
    assert registry.alias_version("champion").version == champion


def test_training_serving_skew_registers_no_challenger_and_promotes_nothing(world, registry, instance):
    champion = _register_champion(registry, world.models[WEAK])
    challenger_model = world.models[CHALLENGER]
    recorded = challenger_model.holdout_rank_ic + 0.05  # what "training time" claims; the pyfunc scores less
    result = _run(world, registry, instance, _leaderboard(world, challenger_model, recorded_rank_ic=recorded),
                  _report(CLEAN_STATS))

    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "registered_model"
    error = str(failure.event_specific_data.error)
    assert "training/serving skew" in error
    assert f"{challenger_model.holdout_rank_ic:.6f} through the pyfunc but {recorded:.6f} at training time; nothing registered" in error
    # Parity is checked on the logged model before registering (issue 18 item 3): no orphan version is
    # left behind, there is no challenger, no gate judged anything, and nothing moved.
    assert [v.version for v in registry.versions()] == [champion]
    assert registry.alias_version("challenger") is None
    assert not [e for e in result.get_asset_check_evaluations() if e.check_name == "promotion_gate"]
    assert "registered_model" not in _materialized(result) and "champion_model" not in _materialized(result)
    assert registry.alias_version("champion").version == champion and registry.champion_history() == [champion]


def test_when_every_check_passes_the_champion_moves_to_the_challenger(world, registry, instance):
    weak, challenger_model = world.models[WEAK], world.models[CHALLENGER]
    champion = _register_champion(registry, weak)
    report = _report(CLEAN_STATS)
    assert report["verdict"] == "pass" and report["reasons"] == []
    result = _run(world, registry, instance, _leaderboard(world, challenger_model), report)

    gate = _gate(result)
    assert gate.passed, gate.description
    assert result.success
    margin = challenger_model.holdout_rank_ic - weak.holdout_rank_ic
    assert gate.description.startswith("promote: challenger v") and f"vs champion v{champion}" in gate.description
    assert f"margin {margin:+.4f} > 0.0" in gate.description and "blocked" not in gate.description
    challenger = registry.alias_version("challenger")
    assert challenger.run_id == challenger_model.run_id and challenger.version != champion
    tags = registry.version_info(challenger.version).tags
    assert tags["plml.gate"] == "promote" and tags["plml.gate_champion"] == champion
    assert "champion_model" in _materialized(result)
    assert registry.alias_version("champion").version == challenger.version
    assert registry.champion_history() == [champion, challenger.version]
    assert registry.version_info(challenger.version).tags["plml.promotion_reason"] == gate.description[:4000]
    # The card is written from whatever evidence exists, n/a for the rest (no explanation, no backtest here).
    card = gate.metadata["model_card"].value
    assert card.startswith(f"# {registry.model_name} v{challenger.version}: {CANDIDATE}") and "**promote**" in card


def test_a_registration_killed_before_its_checksum_is_resumed(world, registry, instance):
    """Issue 18 items 3 and 5: a run killed between MLflow's register_model and the checksum leaves a
    version with no checksum; the re-run checks that version's artefacts against the ones that passed
    parity, records the checksum and reuses it."""
    from plml_assets.lib.registry.integrity import CHECKSUM_TAG

    champion = _register_champion(registry, world.models[WEAK])
    model = world.models[CHALLENGER]
    with registry.tracking():
        half = mlflow.register_model(model.model_uri, registry.model_name)  # what the killed run left
    assert CHECKSUM_TAG not in registry.version_info(str(half.version)).tags
    result = _run(world, registry, instance, _leaderboard(world, model), _report(CLEAN_STATS))
    assert result.success, [str(e.event_specific_data.error) for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    out = result.output_for_node("registered_model")
    assert out["version"] == str(half.version)
    metadata = result.asset_materializations_for_node("registered_model")[0].metadata
    assert metadata["newly_registered"].value is False
    tags = registry.version_info(str(half.version)).tags
    assert tags[CHECKSUM_TAG] == metadata["artifact_sha256"].value
    assert [v.version for v in registry.versions()] == [champion, str(half.version)]
    assert registry.alias_version("champion").version == str(half.version)  # promoted: the gate passed


def test_a_version_of_the_winners_run_holding_other_artefacts_is_deleted_not_reused(world, registry, instance):
    """A version whose run is the winner's but whose artefacts are not the ones that passed serving
    parity (another model logged in that run) is an orphan: deleted, said in the log, and the winner
    registered anew with its checksum."""
    from plml_assets.lib.registry.integrity import CHECKSUM_TAG

    champion = _register_champion(registry, world.models[WEAK])
    model = world.models[CHALLENGER]
    with registry.tracking():
        with mlflow.start_run(run_id=model.run_id):
            other = mlflow.pyfunc.log_model(name="other", python_model=MixedOracle(STRONG), pip_requirements=["mlflow", "pandas"])
        foreign = mlflow.register_model(other.model_uri, registry.model_name)
    assert registry.version_info(str(foreign.version)).run_id == model.run_id
    result = _run(world, registry, instance, _leaderboard(world, model), _report(CLEAN_STATS))
    assert result.success
    version = result.output_for_node("registered_model")["version"]
    assert version not in (champion, str(foreign.version))
    assert [v.version for v in registry.versions()] == [champion, version]
    assert CHECKSUM_TAG in registry.version_info(version).tags
    logs = [r.user_message for r in instance.all_logs(result.run_id)]
    assert any(f"deleted {registry.model_name} v{foreign.version} of run {model.run_id}" in m for m in logs), logs[-20:]


def test_an_aliased_version_of_the_winners_run_with_other_artefacts_is_refused_not_deleted(world, registry, instance):
    """The same foreign version as above, but it holds the 'champion' alias: nothing is deleted,
    the step refuses naming it, and the champion stays."""
    model = world.models[CHALLENGER]
    with registry.tracking():
        with mlflow.start_run(run_id=model.run_id):
            other = mlflow.pyfunc.log_model(name="other_aliased", python_model=MixedOracle(STRONG), pip_requirements=["mlflow", "pandas"])
        foreign = mlflow.register_model(other.model_uri, registry.model_name)
    registry.promote(str(foreign.version), reason="test setup: a champion from the winner's run")
    result = _run(world, registry, instance, _leaderboard(world, model), _report(CLEAN_STATS))
    assert not result.success
    failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
    assert failure.step_key == "registered_model"
    assert f"v{foreign.version} (aliases ['champion'])" in str(failure.event_specific_data.error)
    assert [v.version for v in registry.versions()] == [str(foreign.version)]
    assert registry.alias_version("champion").version == str(foreign.version)
