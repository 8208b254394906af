"""MLEngineHook: the ml/v1 ("AI Platform Prediction") REST API through googleapiclient.

The client is ``googleapiclient.discovery.build("ml", "v1")`` from the discovery
document shipped with google-api-python-client, so the same code talks to Google's
service, a regional endpoint or the local ml/v1 service; only the endpoint changes.

Connection (type ``google_cloud_platform``, default id ``google_cloud_default``),
extra fields read besides the Google provider's usual ones:

- ``ml_engine_endpoint``: base URL of the ml/v1 service, e.g. ``http://127.0.0.1:8780/``
  for the local service or ``https://us-central1-ml.googleapis.com/`` for a region.
- ``ml_engine_region``: shortcut for a regional endpoint (``https://{region}-ml.googleapis.com/``),
  used only when no endpoint is given.
- ``ml_engine_token``: bearer token of a local ml/v1 service (else the environment variable
  ``ML_ENGINE_TOKEN``), sent as an OAuth 2 access token. A local endpoint never receives
  Google credentials: it gets this token, or no credentials at all when none is configured.
- ``is_anonymous`` (provider field): anonymous credentials.
- ``project`` (provider field): default project id.
- ``num_retries`` (provider field): ``execute(num_retries=...)`` for every request (default 5).

The endpoint is chosen in this order: the hook argument ``endpoint=``, the extra
``ml_engine_endpoint``, the environment variable ``ML_ENGINE_ENDPOINT``, the extra
``ml_engine_region``, and finally Google's global endpoint.

Every request goes through :meth:`MLEngineHook._execute`: googleapiclient retries
429 and 5xx itself (``num_retries``, exponential backoff with jitter), and a second,
time-bounded loop retries the same statuses again until ``retry_deadline`` so a
service restart or a short overload does not fail a long DAG run.

Creates are idempotent (a 409 resolves to the existing resource when it matches
what was asked), deletes treat 404 as done, and waits poll with growing intervals
until a timeout, logging state and elapsed time on every poll.
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import google_auth_httplib2
from airflow.providers.common.compat.sdk import AirflowException
from airflow.providers.google.common.hooks.base_google import (
    PROVIDE_PROJECT_ID,
    GoogleBaseAsyncHook,
    GoogleBaseHook,
)
from asgiref.sync import sync_to_async
from google.auth.credentials import AnonymousCredentials, Credentials
from googleapiclient.discovery import Resource, build
from googleapiclient.errors import HttpError
from googleapiclient.http import HttpRequest, build_http, set_user_agent

from ml_engine.endpoints import GLOBAL_ENDPOINT, is_local_endpoint, normalize_endpoint, regional_endpoint
from ml_engine.names import job_path, model_path, normalize_job_id, project_path, short_name, version_path
from ml_engine.states import JOB_TERMINAL_STATES, VERSION_PENDING_STATES, describe_job

ENDPOINT_EXTRA = "ml_engine_endpoint"
REGION_EXTRA = "ml_engine_region"
ENDPOINT_ENV = "ML_ENGINE_ENDPOINT"
TOKEN_EXTRA = "ml_engine_token"
TOKEN_ENV = "ML_ENGINE_TOKEN"
TOKEN_FILE_ENV = "ML_ENGINE_TOKEN_FILE"  # a file holding the token (docker-compose: a shared secrets volume)

USER_AGENT = "airflow-ml-engine-plugin"
RETRYABLE_STATUSES = frozenset({429, 500, 502, 503, 504})
# Fields that make two versions "the same deployment" for an idempotent create.
VERSION_IDENTITY_FIELDS = ("deploymentUri", "runtimeVersion", "framework", "pythonVersion")


class MLEngineConflictError(AirflowException):
    """A resource with the requested name exists but differs from what was asked."""


class MLEnginePredictionError(AirflowException):
    """The service answered a predict request with ``{"error": ...}``."""


class MLEngineOperationError(AirflowException):
    """A long-running operation finished with an error."""


class MLEngineTimeoutError(AirflowException):
    """A wait for an operation, version or job ran out of time."""


def http_status(error: HttpError) -> int:
    """HTTP status of a googleapiclient error as an int."""
    return int(getattr(error, "status_code", None) or error.resp.status)


def _same_value(requested: Any, existing: Any) -> bool:
    """Compare request and response values the way ml/v1 echoes them (int64 as str, lists)."""
    if isinstance(requested, list | tuple):
        return (
            isinstance(existing, list | tuple)
            and len(requested) == len(existing)
            and all(_same_value(a, b) for a, b in zip(requested, existing, strict=True))
        )
    if isinstance(requested, dict):
        return isinstance(existing, dict) and all(_same_value(v, existing.get(k)) for k, v in requested.items())
    if requested is None or existing is None:
        return requested == existing
    if isinstance(requested, bool) or isinstance(existing, bool):
        return str(requested).lower() == str(existing).lower()
    return str(requested).rstrip("/") == str(existing).rstrip("/")


def version_mismatches(requested: dict, existing: dict) -> list[str]:
    """Identity fields (deploymentUri, runtimeVersion, framework, pythonVersion) that differ."""
    diffs = []
    for field in VERSION_IDENTITY_FIELDS:
        if requested.get(field) in (None, ""):
            continue
        want, have = requested[field], existing.get(field)
        same_framework = field == "framework" and str(want).upper() == str(have or "").upper()
        if not same_framework and not _same_value(want, have):
            diffs.append(f"{field}: existing {have!r} != requested {want!r}")
    return diffs


def prediction_input_mismatches(requested: dict, existing: dict) -> list[str]:
    """Keys of the requested predictionInput whose value the existing job does not have."""
    return [
        f"{key}: existing {existing.get(key)!r} != requested {value!r}"
        for key, value in requested.items()
        if not _same_value(value, existing.get(key))
    ]


MAX_JOB_RESUBMISSIONS = 10


class MLEngineHook(GoogleBaseHook):
    """
    Hook for the ml/v1 API (models, versions, operations, jobs, predict).

    All public methods take keyword arguments only; ``project_id`` defaults to the
    connection's project.

    :param gcp_conn_id: The connection ID to use when fetching connection info.
    :param impersonation_chain: Optional service account to impersonate using short-term credentials.
    :param endpoint: Base URL of the ml/v1 service; overrides the connection and the environment.
    :param retry_deadline: Seconds during which 429/5xx answers keep being retried.
    """

    def __init__(
        self,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: str | Sequence[str] | None = None,
        *,
        endpoint: str | None = None,
        retry_deadline: float = 120.0,
        **kwargs,
    ) -> None:
        super().__init__(gcp_conn_id=gcp_conn_id, impersonation_chain=impersonation_chain, **kwargs)
        self._endpoint_argument = endpoint
        self.retry_deadline = retry_deadline
        self._conn: Resource | None = None
        self._http: google_auth_httplib2.AuthorizedHttp | None = None
        self._local_identity: tuple[Credentials, str | None] | None = None

    # -- connection ---------------------------------------------------------------------------

    @property
    def endpoint(self) -> str | None:
        """The ml/v1 base URL in use, or None for Google's global endpoint."""
        endpoint = self._endpoint_argument or self._get_field(ENDPOINT_EXTRA) or os.environ.get(ENDPOINT_ENV)
        if not endpoint and (region := self._get_field(REGION_EXTRA)):
            endpoint = regional_endpoint(region)
        return normalize_endpoint(endpoint)

    @property
    def is_local(self) -> bool:
        return is_local_endpoint(self.endpoint)

    @property
    def local_token(self) -> str | None:
        """The local service's bearer token: connection extra ``ml_engine_token``, else ML_ENGINE_TOKEN,
        else the contents of the file named by ML_ENGINE_TOKEN_FILE."""
        token = self._get_field(TOKEN_EXTRA) or os.environ.get(TOKEN_ENV)
        if not token and os.environ.get(TOKEN_FILE_ENV):
            token = Path(os.environ[TOKEN_FILE_ENV]).read_text()
        return token.strip() if isinstance(token, str) and token.strip() else None

    def get_credentials_and_project_id(self) -> tuple[Credentials, str | None]:
        """Google credentials for Google's endpoints; the local token (or none) for a local one.

        A local endpoint gets OAuth 2 credentials holding its own token
        (``google.oauth2.credentials.Credentials``), so googleapiclient sends
        ``Authorization: Bearer <token>`` as it would to Google, and a real Google
        access token never leaves for a local service. The project falls back to
        GOOGLE_CLOUD_PROJECT.
        """
        if not self.is_local:
            credentials, project_id = super().get_credentials_and_project_id()
            return credentials, project_id or os.environ.get("GOOGLE_CLOUD_PROJECT")
        if self._local_identity is None:
            token = self.local_token
            if token:
                credentials = google.oauth2.credentials.Credentials(token=token)
            else:
                self.log.info("No ml/v1 token configured; calling %s anonymously", self.endpoint)
                credentials = AnonymousCredentials()
            self._local_identity = (credentials, self._get_field("project") or os.environ.get("GOOGLE_CLOUD_PROJECT"))
        return self._local_identity

    def _authorized_http(self) -> google_auth_httplib2.AuthorizedHttp:
        """The connection's credentials on an HTTP object; for a local endpoint without refresh on 401
        (its token cannot be refreshed), so a wrong token surfaces as HttpError 401."""
        if self._http is None:
            http = set_user_agent(build_http(), USER_AGENT)
            no_refresh = {"refresh_status_codes": ()} if self.is_local else {}
            self._http = google_auth_httplib2.AuthorizedHttp(self.get_credentials(), http=http, **no_refresh)
        return self._http

    def get_conn(self) -> Resource:
        """The ml/v1 resource built from the static discovery document, pointed at the endpoint."""
        if self._conn is None:
            self.log.info("ml/v1 endpoint: %s", self.endpoint or GLOBAL_ENDPOINT)
            self._conn = build(
                "ml",
                "v1",
                http=self._authorized_http(),
                cache_discovery=False,
                static_discovery=True,
                client_options=self.get_client_options(api_endpoint_override=self.endpoint),
            )
        return self._conn

    def _execute(self, request: HttpRequest) -> Any:
        """Run one request: googleapiclient's retries first, then retries bounded by retry_deadline."""
        deadline = time.monotonic() + self.retry_deadline
        attempt = 0
        while True:
            try:
                return request.execute(num_retries=self.num_retries)
            except HttpError as err:
                status = http_status(err)
                attempt += 1
                delay = min(2.0**attempt, 30.0) * random.uniform(0.5, 1.0)
                if status not in RETRYABLE_STATUSES or time.monotonic() + delay > deadline:
                    raise
                self.log.warning(
                    "%s %s answered %s; retry %s in %.1f s", request.method, request.uri, status, attempt, delay
                )
                time.sleep(delay)

    def _get_or_none(self, request: HttpRequest) -> dict | None:
        try:
            return self._execute(request)
        except HttpError as err:
            if http_status(err) == 404:
                return None
            raise

    def _list_all(self, collection: Any, key: str, **list_kwargs: Any) -> list[dict]:
        """Every item of a paginated list call."""
        items: list[dict] = []
        request = collection.list(**{k: v for k, v in list_kwargs.items() if v is not None})
        while request is not None:
            response = self._execute(request) or {}
            items.extend(response.get(key, []))
            request = collection.list_next(previous_request=request, previous_response=response)
        return items

    def _poll(
        self,
        *,
        what: str,
        fetch: Callable[[], dict],
        is_done: Callable[[dict], bool],
        describe: Callable[[dict], str],
        timeout: float | None,
        poll_interval: float,
        max_poll_interval: float,
    ) -> dict:
        """Poll until is_done, sleeping poll_interval * 1.5^n (capped), or raise after timeout."""
        start = time.monotonic()
        interval = max(poll_interval, 0.1)
        while True:
            resource = fetch()
            elapsed = time.monotonic() - start
            self.log.info("%s: %s (%.0f s elapsed)", what, describe(resource), elapsed)
            if is_done(resource):
                return resource
            if timeout is not None and elapsed >= timeout:
                raise MLEngineTimeoutError(
                    f"{what} did not finish within {timeout:.0f} s; last seen: {describe(resource)}"
                )
            sleep = interval if timeout is None else min(interval, max(timeout - elapsed, 0.1))
            time.sleep(sleep)
            interval = min(interval * 1.5, max_poll_interval)

    # -- models -------------------------------------------------------------------------------

    @GoogleBaseHook.fallback_to_default_project_id
    def create_model(self, *, model: dict, project_id: str = PROVIDE_PROJECT_ID) -> dict:
        """Create a model; when it already exists (409), return the existing one."""
        if not model.get("name"):
            raise ValueError("model must have a 'name'")
        models = self.get_conn().projects().models()
        try:
            created = self._execute(models.create(parent=project_path(project_id), body=model))
            self.log.info("Created model %s", created.get("name"))
            return created
        except HttpError as err:
            if http_status(err) != 409:
                raise
        existing = self.get_model(project_id=project_id, model_name=model["name"])
        if existing is None:
            raise MLEngineConflictError(f"Model {model['name']} reported as existing but cannot be read")
        self.log.info("Model %s already exists; using it", existing["name"])
        return existing

    @GoogleBaseHook.fallback_to_default_project_id
    def get_model(self, *, model_name: str, project_id: str = PROVIDE_PROJECT_ID) -> dict | None:
        """The model, or None when it does not exist."""
        models = self.get_conn().projects().models()
        return self._get_or_none(models.get(name=model_path(project_id, model_name)))

    @GoogleBaseHook.fallback_to_default_project_id
    def list_models(
        self, *, project_id: str = PROVIDE_PROJECT_ID, filter: str | None = None, page_size: int | None = None
    ) -> list[dict]:
        """Every model of the project, following nextPageToken."""
        kwargs: dict[str, Any] = {"parent": project_path(project_id), "pageSize": page_size, "filter": filter}
        return self._list_all(self.get_conn().projects().models(), "models", **kwargs)

    @GoogleBaseHook.fallback_to_default_project_id
    def delete_model(
        self,
        *,
        model_name: str,
        delete_contents: bool = False,
        timeout: float | None = 600,
        poll_interval: float = 2,
        project_id: str = PROVIDE_PROJECT_ID,
    ) -> None:
        """Delete a model (and its versions when delete_contents); a missing model is already done."""
        if delete_contents:
            versions = self.list_versions(project_id=project_id, model_name=model_name)
            for version in sorted(versions, key=lambda v: bool(v.get("isDefault"))):
                self.delete_version(
                    project_id=project_id,
                    model_name=model_name,
                    version_name=short_name(version["name"]),
                    timeout=timeout,
                    poll_interval=poll_interval,
                )
        models = self.get_conn().projects().models()
        operation = self._get_or_none(models.delete(name=model_path(project_id, model_name)))
        if operation is None:
            self.log.info("Model %s does not exist; nothing to delete", model_name)
            return
        if not operation.get("done") and operation.get("name"):
            operation = self.wait_for_operation(
                operation_name=operation["name"], timeout=timeout, poll_interval=poll_interval
            )
        self.raise_for_operation(operation)

    # -- versions -----------------------------------------------------------------------------

    @GoogleBaseHook.fallback_to_default_project_id
    def begin_create_version(
        self, *, model_name: str, version_spec: dict, project_id: str = PROVIDE_PROJECT_ID
    ) -> tuple[dict | None, dict]:
        """
        Start creating a version, idempotently.

        Returns (operation, version): the create Operation and the version as it is now,
        or (None, existing version) when a version of that name with the same
        deploymentUri/runtimeVersion/framework/pythonVersion already exists.
        """
        if not version_spec.get("name"):
            raise ValueError("version_spec must have a 'name'")
        name = version_spec["name"]
        versions = self.get_conn().projects().models().versions()
        try:
            operation = self._execute(versions.create(parent=model_path(project_id, model_name), body=version_spec))
        except HttpError as err:
            if http_status(err) != 409:
                raise
            existing = self.get_version(project_id=project_id, model_name=model_name, version_name=name)
            if existing is None:
                raise MLEngineConflictError(f"Version {name} reported as existing but cannot be read") from err
            diffs = version_mismatches(version_spec, existing)
            if diffs:
                raise MLEngineConflictError(
                    f"Version {existing['name']} already exists with a different deployment "
                    f"({'; '.join(diffs)}). Delete it or choose another version name."
                ) from err
            if existing.get("state") == "FAILED":
                # A failed (or cancelled) create is not worth keeping: delete it and create it again, so a
                # retried or cleared task converges instead of failing on the old errorMessage forever.
                self.log.warning("Version %s FAILED earlier (%s); deleting it and creating it again",
                                 existing["name"], existing.get("errorMessage") or "no errorMessage")
                self.delete_version(project_id=project_id, model_name=model_name, version_name=name)
                operation = self._execute(versions.create(parent=model_path(project_id, model_name),
                                                          body=version_spec))
                self.log.info("Creating version %s again: operation %s", name, operation.get("name"))
                return operation, {"name": existing["name"], "state": "CREATING"}
            self.log.info("Version %s already exists (state %s); reusing it", existing["name"], existing.get("state"))
            return None, existing
        self.log.info("Creating version %s: operation %s", name, operation.get("name"))
        version = self.get_version(project_id=project_id, model_name=model_name, version_name=name)
        return operation, version or {"name": version_path(project_id, model_name, name), "state": "CREATING"}

    @GoogleBaseHook.fallback_to_default_project_id
    def create_version(
        self,
        *,
        model_name: str,
        version_spec: dict,
        wait: bool = True,
        timeout: float | None = 3600,
        poll_interval: float = 5,
        project_id: str = PROVIDE_PROJECT_ID,
    ) -> dict:
        """Create a version (or reuse a matching one) and, if wait, return it once READY or FAILED."""
        operation, version = self.begin_create_version(
            project_id=project_id, model_name=model_name, version_spec=version_spec
        )
        if not wait:
            return version
        if operation is not None and not operation.get("done"):
            operation = self.wait_for_operation(
                operation_name=operation["name"], timeout=timeout, poll_interval=poll_interval
            )
        final = self.wait_for_version(
            project_id=project_id,
            model_name=model_name,
            version_name=version_spec["name"],
            timeout=timeout,
            poll_interval=poll_interval,
        )
        if final is None:
            self.raise_for_operation(operation)
            raise MLEngineOperationError(f"Version {version_spec['name']} vanished while being created")
        return final

    @GoogleBaseHook.fallback_to_default_project_id
    def get_version(self, *, model_name: str, version_name: str, project_id: str = PROVIDE_PROJECT_ID) -> dict | None:
        """The version, or None when it does not exist."""
        versions = self.get_conn().projects().models().versions()
        return self._get_or_none(versions.get(name=version_path(project_id, model_name, version_name)))

    @GoogleBaseHook.fallback_to_default_project_id
    def wait_for_version(
        self,
        *,
        model_name: str,
        version_name: str,
        timeout: float | None = 3600,
        poll_interval: float = 5,
        max_poll_interval: float = 60,
        project_id: str = PROVIDE_PROJECT_ID,
    ) -> dict | None:
        """Poll a version until it leaves CREATING/UPDATING/DELETING; None if it disappears."""
        name = version_path(project_id, model_name, version_name)
        gone = {"state": "NOT_FOUND"}
        result = self._poll(
            what=f"Version {name}",
            fetch=lambda: self.get_version(project_id=project_id, model_name=model_name, version_name=name) or gone,
            is_done=lambda v: v.get("state") not in VERSION_PENDING_STATES,
            describe=lambda v: (
                f"state {v.get('state')}" + (f", error: {v['errorMessage']}" if v.get("errorMessage") else "")
            ),
            timeout=timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )
        return None if result is gone else result

    @GoogleBaseHook.fallback_to_default_project_id
    def list_versions(
        self, *, model_name: str, project_id: str = PROVIDE_PROJECT_ID, page_size: int | None = None
    ) -> list[dict]:
        """Every version of the model, following nextPageToken."""
        versions = self.get_conn().projects().models().versions()
        return self._list_all(versions, "versions", parent=model_path(project_id, model_name), pageSize=page_size)

    @GoogleBaseHook.fallback_to_default_project_id
    def set_default_version(self, *, model_name: str, version_name: str, project_id: str = PROVIDE_PROJECT_ID) -> dict:
        """Make a version the model's default; returns the version."""
        versions = self.get_conn().projects().models().versions()
        name = version_path(project_id, model_name, version_name)
        version = self._execute(versions.setDefault(name=name, body={}))
        self.log.info("Version %s is now the default of model %s", name, model_name)
        return version

    @GoogleBaseHook.fallback_to_default_project_id
    def patch_version(
        self,
        *,
        model_name: str,
        version_name: str,
        version: dict,
        update_mask: str,
        project_id: str = PROVIDE_PROJECT_ID,
    ) -> dict:
        """Update fields of a version (ml/v1 allows ``description`` and ``labels``); waits for the Operation."""
        versions = self.get_conn().projects().models().versions()
        name = version_path(project_id, model_name, version_name)
        operation = self._execute(versions.patch(name=name, body=version, updateMask=update_mask))
        if not operation.get("done") and operation.get("name"):
            operation = self.wait_for_operation(operation_name=operation["name"], timeout=600, poll_interval=2)
        self.raise_for_operation(operation)
        self.log.info("Version %s updated (%s)", name, update_mask)
        return operation

    @GoogleBaseHook.fallback_to_default_project_id
    def delete_version(
        self,
        *,
        model_name: str,
        version_name: str,
        wait: bool = True,
        timeout: float | None = 600,
        poll_interval: float = 2,
        project_id: str = PROVIDE_PROJECT_ID,
    ) -> dict | None:
        """Delete a version; returns the delete Operation, or None if the version did not exist."""
        versions = self.get_conn().projects().models().versions()
        name = version_path(project_id, model_name, version_name)
        operation = self._get_or_none(versions.delete(name=name))
        if operation is None:
            self.log.info("Version %s does not exist; nothing to delete", name)
            return None
        self.log.info("Deleting version %s: operation %s", name, operation.get("name"))
        if wait and not operation.get("done") and operation.get("name"):
            operation = self.wait_for_operation(
                operation_name=operation["name"], timeout=timeout, poll_interval=poll_interval
            )
        if wait:
            self.raise_for_operation(operation)
        return operation

    # -- operations ---------------------------------------------------------------------------

    def get_operation(self, *, operation_name: str) -> dict:
        return self._execute(self.get_conn().projects().operations().get(name=operation_name))

    def cancel_operation(self, *, operation_name: str) -> None:
        """Ask the service to cancel an operation; an operation already finished or gone is fine."""
        try:
            self._execute(self.get_conn().projects().operations().cancel(name=operation_name, body={}))
            self.log.info("Cancellation requested for operation %s", operation_name)
        except HttpError as err:
            if http_status(err) not in (400, 404, 409):
                raise
            self.log.info("Operation %s not cancelled (HTTP %s): %s", operation_name, http_status(err), err)

    def wait_for_operation(
        self,
        *,
        operation_name: str,
        timeout: float | None = 3600,
        poll_interval: float = 2,
        max_poll_interval: float = 30,
    ) -> dict:
        """Poll an operation until done (it may hold an error: see raise_for_operation)."""
        return self._poll(
            what=f"Operation {operation_name}",
            fetch=lambda: self.get_operation(operation_name=operation_name),
            is_done=lambda op: bool(op.get("done")),
            describe=lambda op: (
                "done" + (f", error: {op['error']}" if op.get("error") else "") if op.get("done") else "running"
            ),
            timeout=timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )

    @staticmethod
    def raise_for_operation(operation: dict | None) -> None:
        """Raise MLEngineOperationError when a finished operation carries an error."""
        if operation and operation.get("error"):
            error = operation["error"]
            message = error.get("message", error) if isinstance(error, dict) else error
            raise MLEngineOperationError(f"Operation {operation.get('name')} failed: {message}")

    # -- jobs ---------------------------------------------------------------------------------

    @GoogleBaseHook.fallback_to_default_project_id
    def create_job(self, *, job: dict, project_id: str = PROVIDE_PROJECT_ID) -> dict:
        """
        Submit a job, idempotently.

        When a job with that jobId exists (409), it is reused if its predictionInput
        matches the requested one, else MLEngineConflictError. A matching job that
        ended FAILED or CANCELLED is not reused: ml/v1 cannot delete jobs, so the
        retry goes to the next id of a deterministic chain (``ID_r2``, ``ID_r3``, ...),
        and a cleared task converges on the same chain.
        """
        if not job.get("jobId"):
            raise ValueError("job must have a 'jobId'")
        base = job["jobId"]
        for attempt in range(1, MAX_JOB_RESUBMISSIONS + 1):
            job_id = base if attempt == 1 else normalize_job_id(f"{base}_r{attempt}")
            existing = self._create_or_existing_job({**job, "jobId": job_id}, project_id)
            if existing.get("state") not in ("FAILED", "CANCELLED"):
                return existing
            self.log.warning("Job %s ended %s (%s); submitting the same input as the next job of its chain",
                             job_id, existing.get("state"), existing.get("errorMessage") or "no errorMessage")
        raise MLEngineConflictError(f"Job {base} failed or was cancelled {MAX_JOB_RESUBMISSIONS} times; "
                                    "choose another job id")

    def _create_or_existing_job(self, job: dict, project_id: str) -> dict:
        jobs = self.get_conn().projects().jobs()
        try:
            created = self._execute(jobs.create(parent=project_path(project_id), body=job))
            self.log.info("Created job %s (state %s)", created.get("jobId"), created.get("state"))
            return created
        except HttpError as err:
            if http_status(err) != 409:
                raise
            existing = self.get_job(project_id=project_id, job_id=job["jobId"])
            diffs = prediction_input_mismatches(job.get("predictionInput") or {}, existing.get("predictionInput") or {})
            if job.get("trainingInput") and not _same_value(job["trainingInput"], existing.get("trainingInput")):
                diffs.append("trainingInput differs")
            if diffs:
                raise MLEngineConflictError(
                    f"Job {job['jobId']} already exists with a different input ({'; '.join(diffs)}). "
                    "Job ids cannot be reused: choose another job id."
                ) from err
            self.log.info("Job %s already exists (state %s); reusing it", job["jobId"], existing.get("state"))
            return existing

    @GoogleBaseHook.fallback_to_default_project_id
    def get_job(self, *, job_id: str, project_id: str = PROVIDE_PROJECT_ID) -> dict:
        return self._execute(self.get_conn().projects().jobs().get(name=job_path(project_id, job_id)))

    @GoogleBaseHook.fallback_to_default_project_id
    def list_jobs(
        self, *, project_id: str = PROVIDE_PROJECT_ID, filter: str | None = None, page_size: int | None = None
    ) -> list[dict]:
        """Every job of the project (optionally filtered, e.g. 'state=RUNNING'), following nextPageToken."""
        kwargs: dict[str, Any] = {"parent": project_path(project_id), "pageSize": page_size, "filter": filter}
        return self._list_all(self.get_conn().projects().jobs(), "jobs", **kwargs)

    @GoogleBaseHook.fallback_to_default_project_id
    def cancel_job(self, *, job_id: str, project_id: str = PROVIDE_PROJECT_ID) -> None:
        """Ask the service to cancel a job; a job already finished (400) or gone (404) is fine."""
        try:
            self._execute(self.get_conn().projects().jobs().cancel(name=job_path(project_id, job_id), body={}))
            self.log.info("Cancellation requested for job %s", job_id)
        except HttpError as err:
            if http_status(err) not in (400, 404, 409):
                raise
            self.log.info("Job %s not cancelled (HTTP %s): %s", job_id, http_status(err), err)

    @GoogleBaseHook.fallback_to_default_project_id
    def wait_for_job(
        self,
        *,
        job_id: str,
        timeout: float | None = 24 * 3600,
        poll_interval: float = 10,
        max_poll_interval: float = 60,
        project_id: str = PROVIDE_PROJECT_ID,
    ) -> dict:
        """Poll a job through QUEUED/PREPARING/RUNNING/CANCELLING until SUCCEEDED, FAILED or CANCELLED."""
        return self._poll(
            what=f"Job {job_id}",
            fetch=lambda: self.get_job(project_id=project_id, job_id=job_id),
            is_done=lambda job: job.get("state") in JOB_TERMINAL_STATES,
            describe=describe_job,
            timeout=timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )

    # -- training jobs ------------------------------------------------------------------------

    @GoogleBaseHook.fallback_to_default_project_id
    def create_training_job(self, *, job: dict, project_id: str = PROVIDE_PROJECT_ID) -> dict:
        """
        Submit a training job ({"jobId", "trainingInput", "labels"}), idempotently.

        A 409 reuses the existing job only when its trainingInput matches; one that
        ended FAILED or CANCELLED is retried under the next id of its chain (see create_job).
        """
        if not isinstance(job.get("trainingInput"), dict):
            raise ValueError("a training job needs 'trainingInput'")
        return self.create_job(project_id=project_id, job=job)

    @GoogleBaseHook.fallback_to_default_project_id
    def read_training_logs(
        self, *, job_id: str, cursor: str | None = None, project_id: str = PROVIDE_PROJECT_ID
    ) -> tuple[list[str], str | None]:
        """
        Log lines of a training job written after ``cursor``, and the cursor to pass next time.

        Local service: ``GET /_local/projects/P/jobs/J/logs?offset=N`` (the cursor is a byte
        offset). Google: Cloud Logging entries with ``resource.type="ml_job"`` and the job's
        ``resource.labels.job_id`` (the cursor is the last entry's timestamp).
        """
        if self.is_local:
            return self._read_local_logs(job_id=job_id, cursor=cursor, project_id=project_id)
        return self._read_cloud_logs(job_id=job_id, cursor=cursor, project_id=project_id)

    def _read_local_logs(self, *, job_id: str, cursor: str | None, project_id: str) -> tuple[list[str], str | None]:
        import json

        url = f"{self.endpoint}_local/projects/{project_id}/jobs/{job_id}/logs?offset={int(cursor or 0)}"
        # The ml/v1 client's authorized HTTP object: the same credentials as every API call.
        response, content = self._authorized_http().request(url, "GET", headers={"Accept": "application/json"})
        if int(response.status) != 200:
            raise AirflowException(f"Reading the log of job {job_id} answered HTTP {response.status}: {content!r:.300}")
        answer = json.loads(content)
        return answer.get("lines", []), answer.get("nextOffset", cursor)

    def _read_cloud_logs(self, *, job_id: str, cursor: str | None, project_id: str) -> tuple[list[str], str | None]:
        try:
            from google.cloud import logging as cloud_logging
        except ImportError:  # pragma: no cover - google-cloud-logging is in requirements.txt
            self.log.warning("google-cloud-logging is not installed: no training logs from Cloud Logging")
            return [], cursor
        credentials, _ = self.get_credentials_and_project_id()
        client = cloud_logging.Client(project=project_id, credentials=credentials)
        query = f'resource.type="ml_job" AND resource.labels.job_id="{job_id}"'
        if cursor:
            query += f' AND timestamp>"{cursor}"'
        lines, last = [], cursor
        for entry in client.list_entries(filter_=query, order_by=cloud_logging.ASCENDING, page_size=1000):
            payload = entry.payload
            text = payload.get("message", payload) if isinstance(payload, dict) else payload
            lines.append(str(text).rstrip("\n"))
            last = entry.timestamp.isoformat() if entry.timestamp else last
        return lines, last

    @GoogleBaseHook.fallback_to_default_project_id
    def wait_for_training_job(
        self,
        *,
        job_id: str,
        timeout: float | None = 24 * 3600,
        poll_interval: float = 10,
        max_poll_interval: float = 10,
        log_cursor: str | None = None,
        project_id: str = PROVIDE_PROJECT_ID,
    ) -> dict:
        """Poll a training job until it ends, writing every new trainer log line to this task's log."""
        cursor = [log_cursor]

        def fetch() -> dict:
            job = self.get_job(project_id=project_id, job_id=job_id)
            cursor[0] = self.log_training_lines(job_id=job_id, cursor=cursor[0], project_id=project_id)
            return job

        job = self._poll(
            what=f"Training job {job_id}",
            fetch=fetch,
            is_done=lambda j: j.get("state") in JOB_TERMINAL_STATES,
            describe=describe_job,
            timeout=timeout,
            poll_interval=poll_interval,
            max_poll_interval=max_poll_interval,
        )
        self.log_training_lines(job_id=job_id, cursor=cursor[0], project_id=project_id)
        return job

    @GoogleBaseHook.fallback_to_default_project_id
    def log_training_lines(
        self, *, job_id: str, cursor: str | None = None, project_id: str = PROVIDE_PROJECT_ID
    ) -> str | None:
        """Write the job's log lines after ``cursor`` to this task's log; return the new cursor.

        A failure to read logs is reported and skipped: logs must never fail the task.
        """
        try:
            lines, cursor = self.read_training_logs(project_id=project_id, job_id=job_id, cursor=cursor)
        except Exception as err:
            self.log.warning("Could not read the log of training job %s: %s", job_id, err)
            return cursor
        for line in lines:
            self.log.info("[%s] %s", job_id, line)
        return cursor

    # -- online prediction --------------------------------------------------------------------

    @GoogleBaseHook.fallback_to_default_project_id
    def predict(
        self,
        *,
        model_name: str,
        instances: list,
        version_name: str | None = None,
        signature_name: str | None = None,
        project_id: str = PROVIDE_PROJECT_ID,
    ) -> dict:
        """Online prediction; raises MLEnginePredictionError when the answer holds 'error'."""
        name = (
            version_path(project_id, model_name, version_name) if version_name else model_path(project_id, model_name)
        )
        body: dict[str, Any] = {"instances": instances}
        if signature_name:
            body["signature_name"] = signature_name
        response = self._execute(self.get_conn().projects().predict(name=name, body=body))
        if isinstance(response, dict) and "error" in response:
            raise MLEnginePredictionError(f"Prediction by {name} failed: {response['error']}")
        if not isinstance(response, dict) or "predictions" not in response:
            raise MLEnginePredictionError(f"Prediction by {name} returned no 'predictions': {response!r:.500}")
        return response

    @GoogleBaseHook.fallback_to_default_project_id
    def predict_in_chunks(
        self,
        *,
        model_name: str,
        instances: list,
        version_name: str | None = None,
        signature_name: str | None = None,
        batch_size: int = 32,
        project_id: str = PROVIDE_PROJECT_ID,
    ) -> list:
        """
        Online prediction of many instances, ``batch_size`` per request so each stays under the size limit.

        :param model_name: The model's id.
        :param instances: The instances, in order.
        :param version_name: The version's id; without it, the model's default version.
        :param signature_name: Serving signature; defaults to serving_default.
        :param batch_size: Instances per predict request.
        :param project_id: Project; defaults to the connection's project.
        :return: the predictions in instance order; MLEnginePredictionError when a request gets back
            a different number of predictions than it sent (the order would no longer hold).
        """
        name = (
            version_path(project_id, model_name, version_name) if version_name else model_path(project_id, model_name)
        )
        predictions: list = []
        step = max(int(batch_size), 1)
        for start in range(0, len(instances), step):
            chunk = instances[start : start + step]
            got = self.predict(project_id=project_id, model_name=model_name, version_name=version_name,
                               instances=chunk, signature_name=signature_name)["predictions"]
            if len(got) != len(chunk):
                raise MLEnginePredictionError(
                    f"{name} returned {len(got)} predictions for {len(chunk)} instances "
                    f"(instances {start}..{start + len(chunk) - 1})"
                )
            predictions.extend(got)
        return predictions


class MLEngineAsyncHook(GoogleBaseAsyncHook):
    """Async access for triggers: read-only calls of MLEngineHook run in a worker thread."""

    sync_hook_class = MLEngineHook

    async def get_operation(self, *, operation_name: str) -> dict:
        hook: MLEngineHook = await self.get_sync_hook()
        return await sync_to_async(hook.get_operation)(operation_name=operation_name)

    async def get_job(self, *, project_id: str, job_id: str) -> dict:
        hook: MLEngineHook = await self.get_sync_hook()
        return await sync_to_async(hook.get_job)(project_id=project_id, job_id=job_id)

    async def read_training_logs(
        self, *, project_id: str, job_id: str, cursor: str | None
    ) -> tuple[list[str], str | None]:
        hook: MLEngineHook = await self.get_sync_hook()
        return await sync_to_async(hook.read_training_logs)(project_id=project_id, job_id=job_id, cursor=cursor)

    async def get_version(self, *, project_id: str, model_name: str, version_name: str) -> dict | None:
        hook: MLEngineHook = await self.get_sync_hook()
        return await sync_to_async(hook.get_version)(
            project_id=project_id, model_name=model_name, version_name=version_name
        )
