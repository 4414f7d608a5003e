"""Registry operations a person or an outside service launches as Dagster jobs (UI, GraphQL)."""

import dagster as dg

from plml_assets.resources.mlflow_registry import MlflowRegistry


@dg.op(description="Move the 'champion' alias back to the version that held it before; the rolled-back version is "
       "tagged so that its old gate verdict cannot promote it again.")
def restore_previous_champion(context: dg.OpExecutionContext, mlflow_registry: MlflowRegistry) -> dict:
    try:
        rolled_back, restored = mlflow_registry.rollback(reason=f"rollback by the rollback_champion job (run {context.run_id})")
    except LookupError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from exc
    context.log.info(f"rollback: {mlflow_registry.model_name} champion v{rolled_back} -> v{restored}")
    context.add_output_metadata({"rolled_back": rolled_back, "champion": restored,
                                 "model_uri": mlflow_registry.model_uri("champion")})
    return {"rolled_back": rolled_back, "champion": restored}


@dg.job(description="Rollback: restore the previous champion (same as `plml rollback`).",
        tags={"plml/kind": "rollback"})
def rollback_champion():
    restore_previous_champion()
