"""MLflow registry: the challenger is registered, gated, and only then becomes the champion."""


import tempfile

import dagster as dg
import mlflow
import numpy as np
import pandas as pd
from pydantic import Field

from plml_assets.defs.shared import retry_when_store_unreachable, split_for
from plml_assets.lib.analytics.metering import METER
from plml_assets.lib.data import prices as price_lib
from plml_assets.lib.models.baselines import momentum_score
from plml_assets.lib.registry.integrity import CHECKSUM_TAG, REGISTRATION_TAG, ArtifactIntegrityError, artifact_manifest, manifest_digest
from plml_assets.lib.registry.model_card import CARD_ARTIFACT, PROFILE_ARTIFACT, card_summary, render_card, standard_error
from plml_assets.lib.registry.promotion import decide
from plml_assets.lib.validation.metrics import evaluate_predictions
from plml_assets.resources.mlflow_registry import CHALLENGER, ChampionMoved, MlflowRegistry
from plml_assets.resources.settings import ExperimentSettings

PARITY_TOLERANCE = 1e-6


def score_holdout(model, prices: pd.DataFrame, labels: pd.DataFrame, settings: ExperimentSettings, registry: MlflowRegistry) -> tuple[dict[str, float], pd.Series]:
    """Score the holdout window with a pyfunc (or the pyfunc at a local path or URI), fed raw prices as
    the prediction engine feeds it."""
    y_all, split = split_for(labels, settings)
    if isinstance(model, str):
        with registry.tracking():
            model = mlflow.pyfunc.load_model(model)
    scored = model.predict(prices.reset_index(), params={"all_dates": True}).set_index(["date", "symbol"])["score"]
    scored = scored[scored.index.get_level_values("date").isin(split.holdout_dates)]
    y = y_all.reindex(scored.index)
    metrics = evaluate_predictions(y.to_numpy(), scored.to_numpy(), scored.index.get_level_values("date"))
    return metrics, scored


def leaderboard_metrics(model_leaderboard: dict, candidate: str) -> dict[str, float]:
    """The leaderboard's evidence on a candidate, as registry metric tags: the same CV numbers for a
    single model and an ensemble (an ensemble's MLflow run has holdout metrics only), plus its OOF
    deflated and probabilistic Sharpe."""
    row = next((r for r in model_leaderboard["table"] if r.get("candidate") == candidate), {})
    names = {"walk_forward_rank_ic_mean": "cv_walk_forward_rank_ic", "kfold_rank_ic_mean": "cv_kfold_rank_ic",
             "dsr": "leaderboard_dsr", "psr": "leaderboard_psr", "oof_sharpe": "leaderboard_oof_sharpe"}
    return {tag: float(row[key]) for key, tag in names.items()
            if isinstance(row.get(key), (int, float)) and np.isfinite(row[key])}


@dg.asset(
    group_name="registry",
    kinds={"mlflow"},
    output_required=False,
    description="The leaderboard's pick (a single model or an ensemble) as a new MLflow registry version with alias "
    "'challenger'. When the leaderboard picked nothing, nothing is registered and everything downstream is skipped.",
)
def registered_model(
    context: dg.AssetExecutionContext,
    model_leaderboard: dict,
    market_prices: pd.DataFrame,
    labels: pd.DataFrame,
    settings: ExperimentSettings,
    mlflow_registry: MlflowRegistry,
):
    # An MLflow store that stops answering retries the step with backoff; the retry resumes the
    # registration (the version of the winner's run is reused once its artefacts check out).
    with retry_when_store_unreachable(context, mlflow_registry.display_tracking_uri(), "registered_model"):
        yield from _register(context, model_leaderboard, market_prices, labels, settings, mlflow_registry)


def _register(context, model_leaderboard: dict, market_prices: pd.DataFrame, labels: pd.DataFrame,
              settings: ExperimentSettings, mlflow_registry: MlflowRegistry):
    selection = model_leaderboard["selection"]
    winner = model_leaderboard.get("winner")
    if winner is None:
        context.log.warning(f"registered_model: nothing to register: {selection['reason']}")
        return
    client = mlflow_registry.client()
    name = mlflow_registry.model_name
    run_id = winner["run_id"]
    with tempfile.TemporaryDirectory() as tmp:
        # Serving parity before anything is registered: the logged pyfunc, loaded from a local copy of
        # its artefacts and rebuilding its features from raw prices as the prediction engine does,
        # must reproduce the holdout score measured at training time (a mismatch is training/serving
        # skew). The copy's SHA-256 manifest is what the registered version must then hold.
        local = mlflow_registry.download_artifacts(winner["model_uri"], tmp)
        manifest = artifact_manifest(local)
        served, _ = score_holdout(str(local), market_prices, labels, settings, mlflow_registry)
    trained = winner["metrics"]["holdout_rank_ic"]
    both_undefined = np.isnan(served["rank_ic"]) and np.isnan(trained)  # e.g. a constant model
    skew = 0.0 if both_undefined else abs(served["rank_ic"] - trained)
    if not skew <= PARITY_TOLERANCE:
        raise RuntimeError(
            f"training/serving skew: {winner['name']} (run {run_id}) scores holdout rank IC "
            f"{served['rank_ic']:.6f} through the pyfunc but {trained:.6f} at training time; nothing registered"
        )
    digest = manifest_digest(manifest)
    version = None
    for old in (v for v in mlflow_registry.versions() if v.run_id == run_id):
        # A re-run after a killed run: reuse its version if it holds these very artefacts (a version
        # killed before its checksum was recorded is checked now), else delete it as an orphan.
        recorded = old.tags.get(CHECKSUM_TAG)
        if (recorded or manifest_digest(mlflow_registry.version_manifest(old.version))) == digest:
            version = old.version
            break
        # Never delete what serves or is judged (search results carry no aliases: read the model's).
        held = sorted(alias for alias, v in mlflow_registry.aliases().items() if v == old.version)
        if held:
            raise RuntimeError(f"{name} v{old.version} (aliases {held}) is a version of run {run_id} whose artefacts "
                               f"are not the ones that passed serving parity now: its files changed after registration; "
                               f"inspect it (plml status) before registering this run again")
        client.delete_model_version(name, old.version)
        context.log.warning(f"registered_model: deleted {name} v{old.version} of run {run_id}: its artefacts are not "
                            f"the ones that passed serving parity (an orphan of an interrupted registration)")
    newly_registered = version is None
    if version is not None:
        context.log.info(f"registered_model: run {run_id} is already version {version} of {name}")
    else:
        tags = {
            **winner["tags"],
            "plml.candidate": winner["name"],
            REGISTRATION_TAG: "incomplete",  # until its checksum is recorded: neither served nor promoted
            "plml.leaderboard_validated": str(selection["validated"]).lower(),
            "plml.leaderboard_reason": selection["reason"][:4000],
            "plml.features": ",".join(winner["features"])[:4900],
            **{f"plml.metric.{k}": f"{v:.6g}" for k, v in leaderboard_metrics(model_leaderboard, winner["name"]).items()},
            **{f"plml.metric.{k}": f"{v:.6g}" for k, v in winner["metrics"].items() if isinstance(v, (int, float))},
        }
        with mlflow_registry.tracking():
            mv = mlflow.register_model(winner["model_uri"], name, tags=tags)
        version = str(mv.version)
    client.update_model_version(name, version, description=(  # on a resumed version too (the kill may have come first)
        f"{winner['description']}, horizon {settings.horizon}d; chosen by model_leaderboard: {selection['reason']}; "
        f"holdout {winner['holdout']['holdout_start']}..{winner['holdout']['holdout_end']} "
        f"rank IC {winner['metrics']['holdout_rank_ic']:.4f}"
    ))
    registered = mlflow_registry.version_manifest(version)
    if manifest_digest(registered) != digest:
        client.delete_model_version(name, version)
        raise RuntimeError(f"registered {name} v{version} does not hold the artefacts that passed serving parity "
                           f"(SHA-256 {manifest_digest(registered)[:12]}... != {digest[:12]}...): version deleted")
    mlflow_registry.record_checksum(version, manifest)
    client.set_model_version_tag(name, version, REGISTRATION_TAG, "complete")
    client.set_registered_model_alias(name, CHALLENGER, version)  # only once it serves what it was trained to
    context.log.info(
        f"registered_model: {name} v{version} ({winner['name']}) is '{CHALLENGER}', holdout rank IC {served['rank_ic']:.4f} "
        f"(serving parity ok); leaderboard: {selection['validation']}"
    )
    yield dg.Output(
        {
            "name": name,
            "version": version,
            "candidate": winner["name"],
            "kind": winner["kind"],
            "run_id": run_id,
            "model_uri": mlflow_registry.model_uri(version),
            "holdout": winner["holdout"],
            "holdout_metrics": {k: float(v) for k, v in served.items()},
            "leaderboard_validated": bool(selection["validated"]),
            "leaderboard_validation": selection["validation"],
            "leaderboard_run_id": model_leaderboard.get("mlflow_run_id"),
        },
        metadata={
            "model": name,
            "version": int(version),
            "candidate": winner["name"],
            "alias": CHALLENGER,
            "model_uri": mlflow_registry.model_uri(version),
            "mlflow_run_id": run_id,
            "newly_registered": newly_registered,
            "holdout_rank_ic": float(served["rank_ic"]),
            "serving_parity_abs_diff": float(skew),
            "artifact_sha256": digest,
            "artifact_files": len(manifest),
            "leaderboard_validated": bool(selection["validated"]),
        },
    )


class PromotionGateConfig(dg.Config):
    metric: str = Field(default="rank_ic", description="holdout metric compared: 'rank_ic', 'ic' or 'directional_accuracy' (higher is better)")
    min_improvement: float = Field(default=0.0, ge=0, le=1, description="the challenger must beat the reference by more than this")
    min_metric: float | None = Field(
        default=None,
        description="if set, the challenger's holdout metric must also exceed this absolute floor (e.g. 0.0)",
    )
    suspicious_above: float | None = Field(
        default=0.2,
        description="refuse a challenger whose holdout metric exceeds this (a probable look-ahead leak); None disables",
    )
    block_on_validation_fail: bool = Field(
        default=True, description="refuse promotion when validation_report's verdict on this candidate is 'fail' (PBO, "
        "deflated Sharpe, gaps), or when the report is about another pick or an older leaderboard"
    )
    require_leaderboard_validation: bool = Field(
        default=True, description="refuse promotion when the leaderboard's pick did not beat the baseline on the holdout"
    )
    baseline_window: int = Field(default=20, ge=1, le=250, description="momentum window of the baseline used when there is no champion")


@dg.asset_check(
    asset=registered_model,
    blocking=True,
    additional_ins={
        "market_prices": dg.AssetIn("market_prices"),
        "labels": dg.AssetIn("labels"),
        "validation_report": dg.AssetIn("validation_report"),
        "model_leaderboard": dg.AssetIn("model_leaderboard"),
        "feature_recipes": dg.AssetIn("feature_recipes"),
        "cv_splits": dg.AssetIn("cv_splits"),
        "shap_summary": dg.AssetIn("shap_summary"),
    },
    description="Promotion gate: the challenger must beat the champion (or, with none, the momentum baseline) on the same "
    "holdout window, and the validation report on this very candidate must not say 'fail'. Writes the version's model "
    "card (model_card.md on its run, a summary in its description, the card in this check's metadata).",
)
def promotion_gate(
    context: dg.AssetCheckExecutionContext,
    config: PromotionGateConfig,
    registered_model: dict,
    market_prices: pd.DataFrame,
    labels: pd.DataFrame,
    validation_report: dict,
    model_leaderboard: dict,
    feature_recipes: dict,
    cv_splits: pd.DataFrame,
    shap_summary: dict,
    settings: ExperimentSettings,
    mlflow_registry: MlflowRegistry,
) -> dg.AssetCheckResult:
    if config.metric not in ("rank_ic", "ic", "directional_accuracy"):
        raise ValueError(f"promotion_gate metric must be 'rank_ic', 'ic' or 'directional_accuracy', got {config.metric!r}")
    challenger_value = float(registered_model["holdout_metrics"][config.metric])
    champion = mlflow_registry.alias_version("champion")
    notes: list[str] = []
    ref_metrics = None
    reference_kind = ""
    if champion is not None and champion.version != registered_model["version"]:
        reference_kind = f"champion v{champion.version}"
        try:
            ref_metrics, _ = score_holdout(mlflow_registry.load_model(champion.version), market_prices, labels, settings, mlflow_registry)
        except Exception as exc:  # the champion cannot score today's panel: it is no usable reference
            notes.append(f"champion v{champion.version} could not score this panel ({type(exc).__name__}: {exc}); compared with the baseline instead")
            ref_metrics = None
        else:
            trained_until = champion.tags.get("plml.train_end", "")
            if trained_until and trained_until >= registered_model["holdout"]["holdout_start"]:
                notes.append(f"the champion trained until {trained_until}, inside this holdout: its score is optimistic")
            if champion.tags.get("plml.horizon") not in (None, str(settings.horizon)):
                notes.append(f"the champion was trained for a {champion.tags['plml.horizon']}-day horizon, this holdout uses {settings.horizon}")
    if ref_metrics is None:
        reference_kind = f"baseline momentum_{config.baseline_window}d"
        y_all, split = split_for(labels, settings)
        score = momentum_score(market_prices, config.baseline_window)
        mask = score.index.get_level_values("date").isin(split.holdout_dates)
        y = y_all.reindex(score.index)[mask]
        ref_metrics = evaluate_predictions(y.to_numpy(), score[mask].to_numpy(), score[mask].index.get_level_values("date"))
    reference_value = float(ref_metrics[config.metric])
    decision = decide(
        challenger_value, reference_value, min_improvement=config.min_improvement, min_metric=config.min_metric,
        suspicious_above=config.suspicious_above, metric=config.metric
    )
    if decision.passed and challenger_value <= 0:
        notes.append("the challenger's holdout score is not positive")
    validation = validation_report.get("verdict", "missing")
    judged = (validation_report.get("subject"), validation_report.get("leaderboard_run_id"))
    registered = (registered_model.get("candidate"), registered_model.get("leaderboard_run_id"))
    if judged != registered:  # the report is about another pick (or an older leaderboard): it says nothing of this one
        notes.append(f"validation report judged {judged[0]} of leaderboard run {judged[1]}, not the registered "
                     f"{registered[0]} of leaderboard run {registered[1]}: re-materialize model_leaderboard, "
                     "validation_report and registered_model in one run")
        validation = "fail"
    elif validation != "pass":
        notes.append(f"validation report: {validation} ({'; '.join(validation_report.get('reasons', [])) or 'no reasons'})")
    if config.block_on_validation_fail and validation == "fail":
        decision = type(decision)(False, decision.margin, decision.reason + "; blocked: the validation report on this candidate says fail")
    if config.require_leaderboard_validation and not registered_model.get("leaderboard_validated", False):
        decision = type(decision)(False, decision.margin, decision.reason + "; blocked by the leaderboard: "
                                  + registered_model.get("leaderboard_validation", "not validated"))
    verdict = "promote" if decision.passed else "keep"
    description = (
        f"{verdict}: challenger v{registered_model['version']} holdout {config.metric} {challenger_value:.4f} vs "
        f"{reference_kind} {reference_value:.4f} ({decision.reason})" + "".join(f"; {n}" for n in notes)
    )
    (context.log.info if decision.passed else context.log.warning)(f"promotion_gate: {description}")
    client = mlflow_registry.client()
    version = registered_model["version"]
    for key, value in (
        ("plml.gate", verdict),
        ("plml.gate_reference", reference_kind),
        ("plml.gate_champion", champion.version if champion is not None else "none"),
        ("plml.gate_detail", description[:4000]),
    ):
        client.set_model_version_tag(mlflow_registry.model_name, version, key, value)
    try:  # the decision above is recorded whatever happens to its paperwork
        facts = card_facts(context, registered_model, model_leaderboard, validation_report, feature_recipes, cv_splits, shap_summary,
                           market_prices, labels, settings, mlflow_registry, {"verdict": verdict, "detail": description})
        card = render_card(facts)
        client.log_text(registered_model["run_id"], card, CARD_ARTIFACT)
        profile = (shap_summary.get("models") or {}).get(registered_model["candidate"])
        if profile is not None:  # what drift_metrics weighs feature drift by, and the versions plot compares
            client.log_dict(registered_model["run_id"], {"candidate": registered_model["candidate"], "version": version,
                                                         "rows": profile["rows"], "mean_abs": profile["mean_abs"]}, PROFILE_ARTIFACT)
        client.update_model_version(mlflow_registry.model_name, version, description=card_summary(facts)[:5000])
        context.log.info(f"promotion_gate: model card of v{version} written ({CARD_ARTIFACT} on run {registered_model['run_id']})")
    except Exception as exc:  # noqa: BLE001 - a broken card must not hide or change the gate's decision
        card = f"model card not written: {type(exc).__name__}: {exc}"
        context.log.error(f"promotion_gate: v{version}: {card}")
    return dg.AssetCheckResult(
        passed=decision.passed,
        severity=dg.AssetCheckSeverity.ERROR,
        description=description,
        metadata={
            "metric": config.metric,
            "challenger": challenger_value,
            "reference": reference_kind,
            "reference_value": reference_value,
            "margin": decision.margin,
            "reference_metrics": dg.MetadataValue.json({k: float(v) for k, v in ref_metrics.items()}),
            "model_card": dg.MetadataValue.md(card),
        },
    )


def card_facts(context, registered_model: dict, model_leaderboard: dict, validation_report: dict, feature_recipes: dict,
               cv_splits: pd.DataFrame, shap_summary: dict, market_prices: pd.DataFrame, labels: pd.DataFrame,
               settings: ExperimentSettings, mlflow_registry: MlflowRegistry, gate: dict) -> dict:
    """What the model card of the registered version says, each fact from the asset that measured it."""
    winner = model_leaderboard["winner"]
    candidate = registered_model["candidate"]
    row = next((r for r in model_leaderboard["table"] if r["candidate"] == candidate), {})
    _, split = split_for(labels, settings)
    run = mlflow_registry.client().get_run(registered_model["run_id"])
    tags = {**winner.get("tags", {}), **run.data.tags}
    n_folds = int(cv_splits.loc[cv_splits["scheme"] == "walk_forward", "fold"].nunique())
    wf_std = row.get("walk_forward_rank_ic_std")
    metrics = registered_model["holdout_metrics"]
    evidence = validation_report.get("evidence", {}) if validation_report.get("subject") == candidate else {}
    recipes = feature_recipes.get("recipes", {})
    dates = market_prices.index.get_level_values("date")
    run_tags = context.run.tags
    trigger = run_tags.get("plml/trigger", "manual")
    if run_tags.get("plml/causes"):
        trigger += f" (causes: {run_tags['plml/causes']})"
    top = shap_summary.get("models", {}).get(candidate, {}).get("mean_abs", {})
    return {
        "model": registered_model["name"], "version": registered_model["version"], "candidate": candidate,
        "run_id": registered_model["run_id"], "description": winner.get("description", candidate),
        "kind": winner.get("kind"), "family": winner.get("family"),
        "members": [m for m in (tags.get("plml.members") or "").split(",") if m],
        "params": {k: v for k, v in run.data.params.items()},
        "code_version": tags.get("plml.code_version"), "horizon": settings.horizon, "trigger": trigger,
        "features": list(winner["features"]),
        "feature_recipes": {f: (f"{recipes[f]['primitive']}({', '.join(recipes[f]['inputs'])}"
                                + "".join(f", {k}={v}" for k, v in recipes[f].get("params", {}).items()) + ")")
                            if f in recipes else "base feature" for f in winner["features"]},
        "data": {
            "first_date": str(dates.min().date()), "last_date": str(dates.max().date()),
            "symbols": int(market_prices.index.get_level_values("symbol").nunique()), "rows": int(len(market_prices)),
            "fingerprint": price_lib.fingerprint(market_prices),
            "train_start": str(split.train_dates[0].date()), "train_end": str(split.train_dates[-1].date()),
            "holdout_start": registered_model["holdout"].get("holdout_start"), "holdout_end": registered_model["holdout"].get("holdout_end"),
        },
        "cv": {
            "walk_forward_rank_ic": row.get("walk_forward_rank_ic_mean"),
            "walk_forward_se": (float(wf_std) / np.sqrt(n_folds)) if wf_std is not None and n_folds else None,
            "positive_folds": row.get("positive_folds"), "folds": n_folds,
            "kfold_rank_ic": row.get("kfold_rank_ic_mean"),
            "cpcv_path_sharpe_mean": evidence.get("cpcv_path_sharpe_mean"),
            "holdout_rank_ic": metrics.get("rank_ic"),
            "holdout_se": standard_error(metrics.get("rank_ic"), metrics.get("ic_ir"), metrics.get("n_dates"), settings.horizon),
            "holdout_dates": int(metrics["n_dates"]) if metrics.get("n_dates") is not None else None,
        },
        "evidence": {"trials": evidence.get("trials"), "effective_trials": evidence.get("effective_trials"),
                     "dsr": evidence.get("dsr"), "pbo": evidence.get("pbo"), "psr": evidence.get("psr"),
                     "verdict": validation_report.get("verdict"), "reasons": validation_report.get("reasons", [])},
        "backtest": {k: evidence.get(k) for k in ("net_sharpe", "walk_forward_net_sharpe", "holdout_net_sharpe", "cost_bps_per_side",
                                                  "turnover_per_day", "holding_days", "execution_lag_days", "baseline_net_sharpe")},
        "top_contributions": dict(list(top.items())[:10]),
        "gate": gate,
    }


@dg.asset(
    group_name="registry",
    kinds={"mlflow"},
    deps=[registered_model],
    description="Moves the 'champion' alias to the challenger; runs only when the promotion gate passed.",
)
def champion_model(context: dg.AssetExecutionContext, mlflow_registry: MlflowRegistry) -> dg.MaterializeResult:
    with retry_when_store_unreachable(context, mlflow_registry.display_tracking_uri(), "champion_model"):
        return _promote_challenger(context, mlflow_registry)


def _promote_challenger(context: dg.AssetExecutionContext, mlflow_registry: MlflowRegistry) -> dg.MaterializeResult:
    challenger = mlflow_registry.alias_version(CHALLENGER)
    if challenger is None:
        raise LookupError(f"model {mlflow_registry.model_name!r} has no '{CHALLENGER}' alias to promote")
    previous = mlflow_registry.alias_version("champion")
    if challenger.tags.get("plml.gate") != "promote":
        raise dg.Failure(
            description=f"{mlflow_registry.model_name} v{challenger.version} has no passing promotion gate "
            f"(gate: {challenger.tags.get('plml.gate', 'not evaluated')}; "
            f"{challenger.tags.get('plml.gate_detail', 'no gate result')}); not promoting",
            allow_retries=False,
        )
    judged_against = challenger.tags.get("plml.gate_champion")
    try:
        # Compare-and-set under the registry lock: a rollback or another promotion between the gate
        # and here makes it refuse instead of silently replacing a champion the gate never saw.
        info = mlflow_registry.promote(challenger.version, reason=challenger.tags.get("plml.gate_detail", "promotion gate passed"),
                                       expect_champion=judged_against or "unknown")
    except ChampionMoved as exc:
        raise dg.Failure(description=f"the champion changed since the gate judged v{challenger.version} "
                         f"(then {judged_against}): {exc}; re-run registered_model and its gate", allow_retries=False) from exc
    except ArtifactIntegrityError as exc:
        raise dg.Failure(description=f"not promoting: {exc}", allow_retries=False) from exc
    context.log.info(
        f"champion_model: {info.name} champion -> v{info.version} (was {'v' + previous.version if previous else 'none'})"
    )
    webhook = mlflow_registry.promotion_webhook()
    waiting = len(webhook.outbox.pending()) if webhook is not None else 0
    notice = "no promotion webhook" if webhook is None else (
        f"{waiting} notice(s) pending in {webhook.outbox.path} (promotion_webhook_sensor retries)" if waiting else f"delivered: none pending for {webhook.display_url}")
    if waiting:
        context.log.warning(f"champion_model: promotion webhook {webhook.display_url}: {notice}")
    return dg.MaterializeResult(
        metadata={
            "model": info.name,
            "champion_version": int(info.version),
            "previous_champion": previous.version if previous else "none",
            "model_uri": mlflow_registry.model_uri("champion"),
            "reason": info.tags.get("plml.promotion_reason", ""),
            "promotion_notice": notice,
            "holdout_rank_ic": float(info.tags.get("plml.metric.holdout_rank_ic", "nan")),
            # what the step cost (no IO manager output meters it: lib/analytics/metering.py, `plml analytics`)
            **METER.measure(context.op_execution_context.get_step_execution_context().step.key, None),
        }
    )
