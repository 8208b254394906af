"""Extra links from a task to the ml/v1 version or job it worked on.

The URL is built when the operator knows the resource (``persist``) and kept in
XCom under the link's key. Airflow 3 copies each operator link's ``get_link`` result
to XCom when the task ends and the UI reads it from there, so a link works in the
UI without the UI process importing this module. The target is the local service's
page when the endpoint is local, Google's Cloud console otherwise.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar
from urllib.parse import quote

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

from ml_engine.endpoints import is_local_endpoint, normalize_endpoint

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator, Context, TaskInstanceKey

CONSOLE = "https://console.cloud.google.com"


def version_url(*, endpoint: str | None, project_id: str, model_name: str, version_name: str) -> str:
    """Page of one version: the local service's UI or the Cloud console."""
    if is_local_endpoint(endpoint):
        return f"{normalize_endpoint(endpoint)}ui/projects/{project_id}/models/{model_name}/versions/{version_name}"
    return f"{CONSOLE}/ai-platform/models/{model_name}/versions/{version_name}/details?project={quote(project_id)}"


def job_url(*, endpoint: str | None, project_id: str, job_id: str) -> str:
    """Page of one job: the local service's UI or the Cloud console."""
    if is_local_endpoint(endpoint):
        return f"{normalize_endpoint(endpoint)}ui/projects/{project_id}/jobs/{job_id}"
    return f"{CONSOLE}/ai-platform/jobs/{job_id}?project={quote(project_id)}"


class _MLEngineLink(BaseOperatorLink):
    """A link whose URL the operator stored in XCom under ``key``."""

    name: ClassVar[str]
    key: ClassVar[str]

    @property
    def xcom_key(self) -> str:
        return self.key

    @classmethod
    def persist_url(cls, context: Context, url: str) -> None:
        context["ti"].xcom_push(key=cls.key, value=url)

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        value = XCom.get_value(key=self.key, ti_key=ti_key)
        return value if isinstance(value, str) else ""


class MLEngineVersionLink(_MLEngineLink):
    """Link to the model version created, promoted or used by the task."""

    name = "ML Engine Version"
    key = "ml_engine_version_link"

    @classmethod
    def persist(
        cls, context: Context, *, endpoint: str | None, project_id: str, model_name: str, version_name: str
    ) -> None:
        cls.persist_url(
            context,
            version_url(endpoint=endpoint, project_id=project_id, model_name=model_name, version_name=version_name),
        )


class MLEngineJobLink(_MLEngineLink):
    """Link to the job (batch prediction or training) started by the task."""

    name = "ML Engine Job"
    key = "ml_engine_job_link"

    @classmethod
    def persist(cls, context: Context, *, endpoint: str | None, project_id: str, job_id: str) -> None:
        cls.persist_url(context, job_url(endpoint=endpoint, project_id=project_id, job_id=job_id))
