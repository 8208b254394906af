"""GCS for Airflow tasks, as the same identity as their ml/v1 calls: the Airflow connection.

:class:`MLEngineGCSHook` is the provider's ``GCSHook`` with one rule of
:class:`ml_engine.hooks.MLEngineHook` carried over: a local stand-in never receives
Google credentials. With ``STORAGE_EMULATOR_HOST`` set (the embedded stack, the tests),
google-cloud-storage talks to the emulator and the client is anonymous; without it
(real GCP), the connection's key, impersonation or ADC, exactly as GCSHook resolves them.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from functools import lru_cache
from typing import TYPE_CHECKING

from airflow.providers.common.compat.sdk import AirflowNotFoundException
from airflow.providers.google.cloud.hooks.gcs import GCSHook
from google.auth.credentials import AnonymousCredentials

if TYPE_CHECKING:
    from google.auth.credentials import Credentials
    from google.cloud import storage

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
SCHEME = "gs://"


def parse_gcs_uri(uri: str) -> tuple[str, str]:
    """Split ``gs://bucket/path`` into ("bucket", "path"); a clear ValueError for anything else."""
    if not isinstance(uri, str) or not uri.startswith(SCHEME):
        raise ValueError(f"not a gs:// URI: {uri!r}")
    bucket, _, path = uri[len(SCHEME) :].partition("/")
    if not bucket:
        raise ValueError(f"gs:// URI without a bucket: {uri!r}")
    return bucket, path


def emulator_host() -> str | None:
    """The storage emulator in use (STORAGE_EMULATOR_HOST), or None for real GCS."""
    return os.environ.get(EMULATOR_ENV, "").strip() or None


class MLEngineGCSHook(GCSHook):
    """
    GCSHook that is anonymous against a storage emulator and the connection's identity everywhere else.

    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate using short-term credentials.
    """

    def get_credentials_and_project_id(self) -> tuple[Credentials, str | None]:
        """Anonymous credentials for an emulator (its project: the connection's, else GOOGLE_CLOUD_PROJECT)."""
        if emulator_host():
            return AnonymousCredentials(), self._get_field("project") or os.environ.get("GOOGLE_CLOUD_PROJECT")
        return super().get_credentials_and_project_id()


def storage_client(gcp_conn_id: str = "google_cloud_default",
                   impersonation_chain: str | Sequence[str] | None = None) -> storage.Client:
    """
    The google-cloud-storage client of a connection, cached per process.

    Against an emulator a connection that is not defined is not needed (anonymous either way);
    on real GCS it is an error, so a task never silently falls back to another identity.

    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate using short-term credentials.
    :return: a ``google.cloud.storage.Client``.
    """
    chain = tuple(impersonation_chain) if isinstance(impersonation_chain, list | tuple) else impersonation_chain
    connection_env = os.environ.get(f"AIRFLOW_CONN_{gcp_conn_id.upper()}")
    return _client(gcp_conn_id, chain, emulator_host(), connection_env)


@lru_cache(maxsize=8)
def _client(gcp_conn_id: str, impersonation_chain, emulator: str | None, _connection_env: str | None):
    """One client per (connection, emulator) setting: a new connection definition builds a new client."""
    try:
        hook = MLEngineGCSHook(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain)
    except AirflowNotFoundException:
        if not emulator:
            raise
        from google.cloud import storage

        return storage.Client(project=os.environ.get("GOOGLE_CLOUD_PROJECT") or "local-project",
                              credentials=AnonymousCredentials())
    return hook.get_conn()
