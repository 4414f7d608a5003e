"""Delivers the champion-move notices left in the outbox (the webhook was down, the process that
moved the champion was killed before it sent them): every 30 s, oldest first, so a restart of the
daemon or of the prediction engine loses none."""

import dagster as dg

from plml_assets.resources.mlflow_registry import MlflowRegistry

#: Seconds of one tick spent starting deliveries (the daemon gives a sensor tick 60 s).
TICK_BUDGET_S = 20.0


@dg.sensor(
    name="promotion_webhook_sensor",
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="POSTs the pending champion-move notices of the promotion outbox to the promotion webhook "
    "(PLML_PROMOTION_WEBHOOK_URL), oldest first; skips without a URL or with nothing pending. Launches no run.",
)
def promotion_webhook_sensor(context: dg.SensorEvaluationContext, mlflow_registry: MlflowRegistry):
    webhook = mlflow_registry.promotion_webhook()
    if webhook is None:
        return dg.SkipReason("no promotion webhook configured (PLML_PROMOTION_WEBHOOK_URL): nothing to deliver")
    if not webhook.outbox.pending(limit=1):
        return dg.SkipReason(f"no champion-move notice pending for {webhook.display_url}")
    result = webhook.flush(max_seconds=TICK_BUDGET_S)
    if result.delivered:
        context.log.info(f"delivered {len(result.delivered)} champion-move notice(s) to {webhook.display_url}: {', '.join(result.delivered)}")
    if result.pending:
        why = result.error or "another process is delivering them"
        context.log.warning(f"{len(result.pending)} champion-move notice(s) still pending for {webhook.display_url}: {why}")
        return dg.SkipReason(f"{len(result.delivered)} delivered, {len(result.pending)} pending: {why}")
    return dg.SkipReason(f"delivered {len(result.delivered)} champion-move notice(s) to {webhook.display_url}")
