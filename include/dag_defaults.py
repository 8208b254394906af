"""What the DAGs share: start date, default_args, the model-name Param, the platform's hook, the version-delete task.

One definition here, so a change of owner, retries or the id rule reaches every DAG.
"""

from __future__ import annotations

from datetime import timedelta

import pendulum
from airflow.sdk import Param, TriggerRule

from include import config

START_DATE = pendulum.datetime(2025, 1, 1, tz="UTC")


def default_args(settings: config.Settings | None = None) -> dict:
    """Owner and retries of every task; only transient faults reach the retries (see lifecycle.errors)."""
    settings = settings or config.load()
    return {"owner": "ml-platform", "retries": settings.task_retries,
            "retry_delay": timedelta(seconds=settings.retry_delay_seconds)}


def model_name_param(default: str, description: str | None = None) -> Param:
    """The `model_name` Param, validated against ml/v1's id rule before any task runs."""
    return Param(default, type="string", pattern=config.ID_PATTERN, title="Model name", description=description)


def platform_hook(settings: config.Settings | None = None):
    """What include.lifecycle reads models through: the MLEngineHook on ml/v1, the Vertex AI registry on Vertex AI
    (imported at run time: nothing heavy at parse time)."""
    settings = settings or config.load()
    if settings.platform == "vertex":
        from include.vertex.registry import Registry

        return Registry(gcp_conn_id=settings.gcp_conn_id, project=settings.project, region=settings.region)
    from ml_engine.hooks import MLEngineHook

    return MLEngineHook(gcp_conn_id=settings.gcp_conn_id)


def delete_versions(version_names, *, settings: config.Settings | None = None):
    """One mapped `delete_version` task per name in `version_names` (an XComArg); none when it is empty
    (on Vertex AI, include.vertex.tasks.delete_version: undeployed first, then deleted).

    :param version_names: the short ids to delete, as a task's output.
    :return: the mapped operator.
    """
    from ml_engine.operators import MLEngineDeleteVersionOperator

    settings = settings or config.load()
    if settings.platform == "vertex":
        from include.vertex.tasks import delete_version

        return delete_version.expand(version=version_names)
    return MLEngineDeleteVersionOperator.partial(
        task_id="delete_version",
        model_name="{{ params.model_name }}",
        gcp_conn_id=settings.gcp_conn_id,
        poll_interval=config.DELETE_POLL_SECONDS,
        trigger_rule=TriggerRule.NONE_FAILED,
        map_index_template="{{ task.version_name }}",
    ).expand(version_name=version_names)
