"""Time-driven refreshes: new prices every weekday, a full retrain every week."""

import dagster as dg

from plml_assets.defs.monitoring.sensors import RETRAIN_SELECTION, TRIGGER_TAG, active_retrain

TIMEZONE = "America/New_York"  # the exchange's clock: prices of a session are final after its close

DATA_REFRESH = dg.AssetSelection.groups("data") | dg.AssetSelection.groups("monitoring")

data_refresh_schedule = dg.ScheduleDefinition(
    name="data_refresh",
    cron_schedule="30 18 * * 1-5",  # weekdays, after the US close
    execution_timezone=TIMEZONE,
    target=DATA_REFRESH,
    tags={"plml/trigger": "schedule", "plml/kind": "data_refresh"},
    description="Reload prices and rebuild labels, features and drift_metrics (the drift sensor then decides on retraining).",
)

WEEKLY_TAGS = {"plml/trigger": "schedule", "plml/kind": "full_retrain"}


@dg.schedule(
    name="weekly_retrain",
    cron_schedule="0 6 * * 6",  # Saturday morning: the week's data is in, the machines are idle
    execution_timezone=TIMEZONE,
    target=RETRAIN_SELECTION,
    tags=WEEKLY_TAGS,
    description="Periodic full retrain of everything downstream of the prices, whatever the drift says; skipped while "
    "another retrain (a drift retrain or last week's) is queued or running, so two retrains never run at once.",
)
def weekly_retrain_schedule(context: dg.ScheduleEvaluationContext):
    active = active_retrain(context.instance)
    if active is not None:
        return dg.SkipReason(f"retraining run {active.run_id} ({active.tags.get(TRIGGER_TAG, '?')}) is still in progress: "
                             f"this week's retrain is skipped, that run already retrains on the latest prices")
    return dg.RunRequest(run_key=None, tags=WEEKLY_TAGS)
