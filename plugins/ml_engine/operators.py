"""Operators for the ml/v1 API: models, versions, default version, training, batch and online prediction.

Every operator is safe to re-run: names are normalised deterministically
(:mod:`ml_engine.names`) and the hook resolves a 409 to the existing resource when
it matches, so a cleared task converges on the same version or job. Long waits
(version creation, version deletion, training and batch jobs) can defer to the
triggerer with ``deferrable=True``, after ``defer_after`` seconds of polling in the
worker; ``on_kill`` cancels the remote operation or job.

The endpoint comes from the connection (see :mod:`ml_engine.hooks`) unless the
``endpoint`` argument names one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from airflow.providers.common.compat.sdk import AirflowException, BaseOperator, conf

from ml_engine.links import MLEngineJobLink, MLEngineVersionLink
from ml_engine.names import (
    model_path,
    normalize_job_id,
    normalize_version_id,
    short_name,
    version_path,
)
from ml_engine.states import JOB_TERMINAL_STATES, describe_job
from ml_engine.triggers import MLEngineJobTrigger, MLEngineOperationTrigger, MLEngineTrainingJobTrigger

DEFER_AFTER_SECONDS = 10  # a deferrable wait polls this long in the worker before it defers
RESUME_MARGIN_SECONDS = 5  # the scheduler's loops, on top of the deferring worker's report lag (resume_hold)

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import Context
    from airflow.triggers.base import BaseTrigger

    from ml_engine.hooks import MLEngineHook


class _MLEngineBaseOperator(BaseOperator):
    """Connection arguments and the hook shared by all ml/v1 operators.

    The hook, googleapiclient and the triggers are imported when a task runs, not when
    a DAG file imports this module: DAG files must parse in well under a second.
    """

    def __init__(
        self,
        *,
        project_id: str | None = None,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: str | Sequence[str] | None = None,
        endpoint: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.project_id = project_id
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = impersonation_chain
        self.endpoint = endpoint

    @cached_property
    def hook(self) -> MLEngineHook:
        return self._new_hook()

    def _new_hook(self) -> MLEngineHook:
        from ml_engine.hooks import MLEngineHook

        return MLEngineHook(
            gcp_conn_id=self.gcp_conn_id, impersonation_chain=self.impersonation_chain, endpoint=self.endpoint
        )

    def _project(self) -> str:
        project_id = self.project_id or self.hook.project_id
        if not project_id:
            raise AirflowException(
                f"No project id: pass project_id or set the 'project' extra of connection {self.gcp_conn_id!r}"
            )
        return project_id


class _MLEngineWaitingOperator(_MLEngineBaseOperator):
    """An operator that waits for something remote: in the worker, or deferred to the triggerer.

    A deferrable wait first polls in the worker for ``defer_after`` seconds. Deferring
    costs a task exit, a trigger and a resumed task (seconds of scheduling), so a wait
    shorter than that (a local version is READY in under a second) ends where it began.
    That also keeps quick waits clear of Airflow 3.3's defer/resume race
    (apache/airflow#72716), where a task whose trigger fires while its deferring
    worker is still exiting is marked FAILED after it succeeded.

    A wait that does defer is guarded against that race by ``resume_hold``: the
    trigger fires no earlier than that many seconds after the task deferred. Airflow
    3.3's worker reports a deferred task's exit ``[workers] min_heartbeat_interval``
    (5 s) late (measured: 5.04 s every time), and a resumed attempt that the scheduler
    queues before it has read that report is marked FAILED. The default is that interval plus
    RESUME_MARGIN_SECONDS for the scheduler's loops, so only a job that ends within
    ~10 s of deferring waits longer, and by at most that.
    """

    def __init__(
        self,
        *,
        wait_timeout: float | None,
        poll_interval: float,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        defer_after: float = DEFER_AFTER_SECONDS,
        resume_hold: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.wait_timeout = wait_timeout
        self.poll_interval = poll_interval
        self.deferrable = deferrable
        self.defer_after = defer_after
        self.resume_hold = resume_hold

    def _wait_here_first(self, wait: Callable[[float | None], dict]) -> dict | None:
        """What ``wait(timeout)`` returns when the wait ends in this worker; None when the task should defer."""
        if not self.deferrable or (self.wait_timeout is not None and self.wait_timeout <= self.defer_after):
            return wait(self.wait_timeout)
        if self.defer_after <= 0:
            return None
        from ml_engine.hooks import MLEngineTimeoutError

        try:
            return wait(self.defer_after)
        except MLEngineTimeoutError:
            self.log.info("Still running after %g s: deferring the wait to the triggerer", self.defer_after)
            return None

    def _resume_hold(self) -> float:
        if self.resume_hold is not None:
            return self.resume_hold
        return conf.getfloat("workers", "min_heartbeat_interval", fallback=5) + RESUME_MARGIN_SECONDS

    def _trigger_kwargs(self, *, poll_interval: float, timeout: float | None) -> dict[str, Any]:
        return {
            "gcp_conn_id": self.gcp_conn_id,
            "impersonation_chain": self.impersonation_chain,
            "endpoint": self.hook.endpoint,
            "poll_interval": poll_interval,
            "timeout": timeout,
            "not_before": time.time() + self._resume_hold(),
        }

    def _trigger_timeout(self) -> float | None:
        """The trigger's share of wait_timeout: what the worker's first polls left."""
        return None if self.wait_timeout is None else max(self.wait_timeout - max(self.defer_after, 0), 1)

    def _wait_for_operation(self, operation_name: str) -> dict:
        """The finished operation: polled here, or (deferrable) the task defers and resumes in execute_complete."""
        operation = self._wait_here_first(
            lambda timeout: self.hook.wait_for_operation(
                operation_name=operation_name, timeout=timeout, poll_interval=self.poll_interval
            )
        )
        if operation is None:
            self.defer(
                trigger=MLEngineOperationTrigger(
                    operation_name=operation_name,
                    **self._trigger_kwargs(poll_interval=self.poll_interval, timeout=self._trigger_timeout()),
                ),
                method_name="execute_complete",
            )
        return operation

    @staticmethod
    def _raise_for_event(event: dict[str, Any], what: str) -> None:
        """A trigger event that is not a success fails the task with the trigger's message."""
        if event.get("status") != "success":
            raise AirflowException(event.get("message", f"Waiting for the {what} failed: {event}"))


class MLEngineCreateModelOperator(_MLEngineBaseOperator):
    """
    Create a model, or return the existing one of that name.

    :param model: The model resource, at least {"name": ...} (templated).
    :param project_id: Project; defaults to the connection's project (templated).
    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate (templated).
    :param endpoint: ml/v1 base URL overriding the connection (templated).
    :return: the model resource (XCom return_value).
    """

    template_fields: Sequence[str] = ("model", "project_id", "gcp_conn_id", "impersonation_chain", "endpoint")

    def __init__(self, *, model: dict, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model = model

    def execute(self, context: Context) -> dict:
        return self.hook.create_model(project_id=self._project(), model=self.model)


class MLEngineCreateVersionOperator(_MLEngineWaitingOperator):
    """
    Create a model version and wait until it is READY.

    The version name is normalised to an ml/v1 id. A version of that name that
    already exists is reused when it deploys the same deploymentUri, runtimeVersion,
    framework and pythonVersion (so a re-run converges), and is an error otherwise.
    The task fails with the version's errorMessage if the version ends FAILED.

    :param model_name: The model's id (templated).
    :param version: The version resource: name, deploymentUri, runtimeVersion, framework,
        pythonVersion, ... (templated).
    :param wait_timeout: Seconds to wait for READY before failing.
    :param poll_interval: First interval between status polls, in seconds (it grows).
    :param deferrable: Wait in the triggerer instead of the worker.
    :param defer_after: A deferrable wait polls in the worker this many seconds first (0: defer at once).
    :param resume_hold: A deferred wait's trigger fires no earlier than this many seconds after deferring
        (None: ``[workers] min_heartbeat_interval`` + 5 s; see apache/airflow#72716).
    :param project_id: Project; defaults to the connection's project (templated).
    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate (templated).
    :param endpoint: ml/v1 base URL overriding the connection (templated).
    :return: the version resource (XCom return_value); XCom ``version_name`` holds the short id.
    """

    template_fields: Sequence[str] = (
        "model_name",
        "version",
        "project_id",
        "gcp_conn_id",
        "impersonation_chain",
        "endpoint",
    )
    operator_extra_links = (MLEngineVersionLink(),)

    def __init__(
        self,
        *,
        model_name: str,
        version: dict,
        wait_timeout: float | None = 3600,
        poll_interval: float = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(wait_timeout=wait_timeout, poll_interval=poll_interval, **kwargs)
        self.model_name = model_name
        self.version = version
        self._operation_name: str | None = None

    def _version_spec(self) -> dict:
        if not isinstance(self.version, dict) or not self.version.get("name"):
            raise AirflowException("version must be a dict with at least 'name' and 'deploymentUri'")
        return {**self.version, "name": normalize_version_id(self.version["name"])}

    def execute(self, context: Context) -> dict:
        project_id = self._project()
        spec = self._version_spec()
        context["ti"].xcom_push(key="version_name", value=spec["name"])
        MLEngineVersionLink.persist(
            context,
            endpoint=self.hook.endpoint,
            project_id=project_id,
            model_name=self.model_name,
            version_name=spec["name"],
        )
        operation, _version = self.hook.begin_create_version(
            project_id=project_id, model_name=self.model_name, version_spec=spec
        )
        if operation is not None and not operation.get("done"):
            self._operation_name = operation["name"]
            self._wait_for_operation(operation["name"])
        return self._finish(project_id, spec["name"], operation)

    def execute_complete(self, context: Context, event: dict[str, Any]) -> dict:
        self._raise_for_event(event, "version")
        return self._finish(self._project(), self._version_spec()["name"], event.get("operation"))

    def _finish(self, project_id: str, version_name: str, operation: dict | None) -> dict:
        """Wait out CREATING (a reused version may still be building) and judge the final state."""
        version = self.hook.wait_for_version(
            project_id=project_id,
            model_name=self.model_name,
            version_name=version_name,
            timeout=self.wait_timeout,
            poll_interval=self.poll_interval,
        )
        name = version_path(project_id, self.model_name, version_name)
        if version is None:
            self.hook.raise_for_operation(operation)
            raise AirflowException(f"Version {name} does not exist after its creation finished")
        if version.get("state") == "FAILED":
            raise AirflowException(
                f"Version {name} FAILED: {version.get('errorMessage') or 'no errorMessage given'}. "
                "Fix the cause and re-run: a retry deletes the FAILED version and creates it again."
            )
        if version.get("state") != "READY":
            raise AirflowException(f"Version {name} ended in state {version.get('state')}, not READY")
        self.log.info("Version %s is READY (deploymentUri %s)", name, version.get("deploymentUri"))
        return version

    def on_kill(self) -> None:
        """Cancel the create operation, so a killed task does not leave a version half made."""
        if self._operation_name:
            try:
                self._new_hook().cancel_operation(operation_name=self._operation_name)
            except Exception:
                self.log.exception("Could not cancel operation %s", self._operation_name)


class MLEngineSetDefaultVersionOperator(_MLEngineBaseOperator):
    """
    Make a version the model's default (promotion), remembering the previous default.

    :param model_name: The model's id (templated).
    :param version_name: The version to promote; normalised to an ml/v1 id (templated).
    :param project_id: Project; defaults to the connection's project (templated).
    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate (templated).
    :param endpoint: ml/v1 base URL overriding the connection (templated).
    :return: the promoted version resource (XCom return_value). XCom ``previous_default_version``
        holds the short id of the version that was default before, for a rollback to restore;
        it is None when the model had no default or the version already was the default
        (a re-run), so a rollback never "restores" the version it is rolling back from.
    """

    template_fields: Sequence[str] = (
        "model_name",
        "version_name",
        "project_id",
        "gcp_conn_id",
        "impersonation_chain",
        "endpoint",
    )
    operator_extra_links = (MLEngineVersionLink(),)

    def __init__(self, *, model_name: str, version_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.version_name = version_name

    def execute(self, context: Context) -> dict:
        project_id = self._project()
        version_name = normalize_version_id(self.version_name)
        model = self.hook.get_model(project_id=project_id, model_name=self.model_name)
        if model is None:
            raise AirflowException(f"Model {model_path(project_id, self.model_name)} does not exist")
        previous = (model.get("defaultVersion") or {}).get("name")
        target = version_path(project_id, self.model_name, version_name)
        previous_id = short_name(previous) if previous and previous != target else None
        if previous == target:
            self.log.info("Version %s already is the default; nothing to change", target)
        else:
            self.log.info("Default version of %s: %s -> %s", self.model_name, previous, target)
        context["ti"].xcom_push(key="previous_default_version", value=previous_id)
        MLEngineVersionLink.persist(
            context,
            endpoint=self.hook.endpoint,
            project_id=project_id,
            model_name=self.model_name,
            version_name=version_name,
        )
        return self.hook.set_default_version(
            project_id=project_id, model_name=self.model_name, version_name=version_name
        )


class MLEngineDeleteVersionOperator(_MLEngineWaitingOperator):
    """
    Delete a version and wait until it is gone; a version that does not exist is already done.

    :param model_name: The model's id (templated).
    :param version_name: The version to delete; normalised to an ml/v1 id (templated).
    :param wait_timeout: Seconds to wait for the delete operation.
    :param poll_interval: First interval between status polls, in seconds (it grows).
    :param deferrable: Wait in the triggerer instead of the worker.
    :param defer_after: A deferrable wait polls in the worker this many seconds first (0: defer at once).
    :param resume_hold: A deferred wait's trigger fires no earlier than this many seconds after deferring
        (None: ``[workers] min_heartbeat_interval`` + 5 s; see apache/airflow#72716).
    :param project_id: Project; defaults to the connection's project (templated).
    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate (templated).
    :param endpoint: ml/v1 base URL overriding the connection (templated).
    :return: the short id of the deleted version, or None if it did not exist.
    """

    template_fields: Sequence[str] = (
        "model_name",
        "version_name",
        "project_id",
        "gcp_conn_id",
        "impersonation_chain",
        "endpoint",
    )

    def __init__(
        self,
        *,
        model_name: str,
        version_name: str,
        wait_timeout: float | None = 600,
        poll_interval: float = 2,
        **kwargs: Any,
    ) -> None:
        super().__init__(wait_timeout=wait_timeout, poll_interval=poll_interval, **kwargs)
        self.model_name = model_name
        self.version_name = version_name

    def execute(self, context: Context) -> str | None:
        project_id = self._project()
        version_name = normalize_version_id(self.version_name)
        operation = self.hook.delete_version(
            project_id=project_id, model_name=self.model_name, version_name=version_name, wait=False
        )
        if operation is None:
            return None
        if not operation.get("done"):
            operation = self._wait_for_operation(operation["name"])
        self.hook.raise_for_operation(operation)
        self.log.info("Deleted version %s", version_path(project_id, self.model_name, version_name))
        return version_name

    def execute_complete(self, context: Context, event: dict[str, Any]) -> str:
        self._raise_for_event(event, "delete")
        self.hook.raise_for_operation(event.get("operation"))
        return normalize_version_id(self.version_name)


class MLEngineListVersionsOperator(_MLEngineBaseOperator):
    """
    List every version of a model (all pages), oldest first.

    :param model_name: The model's id (templated).
    :param project_id: Project; defaults to the connection's project (templated).
    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate (templated).
    :param endpoint: ml/v1 base URL overriding the connection (templated).
    :return: the list of version resources (XCom return_value).
    """

    template_fields: Sequence[str] = ("model_name", "project_id", "gcp_conn_id", "impersonation_chain", "endpoint")

    def __init__(self, *, model_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name

    def execute(self, context: Context) -> list[dict]:
        versions = self.hook.list_versions(project_id=self._project(), model_name=self.model_name)
        versions.sort(key=lambda v: (v.get("createTime") or "", v.get("name") or ""))
        self.log.info("Model %s has %s version(s)", self.model_name, len(versions))
        return versions


class _MLEngineJobOperator(_MLEngineWaitingOperator):
    """Submit an ml/v1 job idempotently, wait for it (in the worker or deferred), judge it, cancel it on kill.

    Subclasses build the job body, override the hook calls and trigger class that differ, and judge the ended job.
    """

    job_kind = "Job"  # how messages name the job
    input_field = "predictionInput"  # the job resource's field with the subclass's input
    trigger_class: type[MLEngineJobTrigger] = MLEngineJobTrigger
    wait_when_ended = False  # wait (and so log) once more for a job that had already ended at submit

    def __init__(
        self,
        *,
        job_id: str,
        region: str,
        labels: dict[str, str] | None = None,
        wait_timeout: float | None = 24 * 3600,
        poll_interval: float = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(wait_timeout=wait_timeout, poll_interval=poll_interval, **kwargs)
        self.job_id = job_id
        self.region = region
        self.labels = labels
        self._job_id: str | None = None
        self._project_id: str | None = None

    def _job_input(self, project_id: str) -> dict:
        """The job's input (predictionInput or trainingInput), validated."""
        raise NotImplementedError

    def _job_body(self, project_id: str) -> dict:
        body: dict[str, Any] = {"jobId": normalize_job_id(self.job_id), self.input_field: self._job_input(project_id)}
        if self.labels:
            body["labels"] = self.labels
        return body

    def _submit(self, project_id: str, body: dict) -> dict:
        """Create the job (or reuse the matching one); the job as the service has it."""
        return self.hook.create_job(project_id=project_id, job=body)

    def _wait(self, project_id: str, job_id: str) -> dict:
        """Poll the job until it ends (in the worker)."""
        return self.hook.wait_for_job(
            project_id=project_id, job_id=job_id, timeout=self.wait_timeout, poll_interval=self.poll_interval
        )

    def _trigger(self, project_id: str, job_id: str) -> BaseTrigger:
        return self.trigger_class(
            project_id=project_id,
            job_id=job_id,
            **self._trigger_kwargs(poll_interval=self.poll_interval, timeout=self._trigger_timeout()),
        )

    def _check_job(self, job: dict) -> Any:
        """Judge the ended job: raise unless it succeeded; the XCom return value otherwise."""
        raise NotImplementedError

    def _resumed(self, event: dict[str, Any]) -> None:
        """Called first when the task resumes from its trigger."""

    def execute(self, context: Context) -> Any:
        project_id = self._project()
        body = self._job_body(project_id)
        job = self._submit(project_id, body)
        job_id = job.get("jobId") or body["jobId"]  # a retry after a FAILED/CANCELLED job gets a suffixed id
        context["ti"].xcom_push(key="job_id", value=job_id)
        MLEngineJobLink.persist(context, endpoint=self.hook.endpoint, project_id=project_id, job_id=job_id)
        ended = job.get("state") in JOB_TERMINAL_STATES
        if ended and not self.wait_when_ended:
            return self._check_job(job)
        self._job_id, self._project_id = job_id, project_id
        if ended or not self.deferrable:
            return self._check_job(self._wait(project_id, job_id))
        job = self._wait_here_first(
            lambda timeout: self.hook.wait_for_job(
                project_id=project_id, job_id=job_id, timeout=timeout, poll_interval=self.poll_interval
            )
        )
        if job is None:
            self.defer(trigger=self._trigger(project_id, job_id), method_name="execute_complete")
        return self.execute_complete(context, {"status": "success", "job": job, "job_id": job_id})

    def execute_complete(self, context: Context, event: dict[str, Any]) -> Any:
        self._resumed(event)
        self._raise_for_event(event, "job")
        return self._check_job(event["job"])

    def _failed(self, job: dict) -> AirflowException:
        return AirflowException(f"{self.job_kind} {job.get('jobId')} ended {job.get('state')}: "
                                f"{job.get('errorMessage') or 'no errorMessage'}")

    def on_kill(self) -> None:
        """Cancel the remote job, so a killed task does not leave it running (a trainer's whole process group)."""
        if self._job_id:
            try:
                self._new_hook().cancel_job(project_id=self._project_id, job_id=self._job_id)
            except Exception:
                self.log.exception("Could not cancel job %s", self._job_id)


class MLEngineStartBatchPredictionJobOperator(_MLEngineJobOperator):
    """
    Run a batch prediction job and wait for it to finish.

    The job id is normalised to an ml/v1 id; an existing job of that id is reused when
    its predictionInput matches (a re-run waits for, or reads, the same job). The task
    fails when the job ends FAILED or CANCELLED, or when errorCount / predictionCount
    exceeds ``max_error_rate``.

    Exactly one model source: ``uri`` (a SavedModel in GCS), or ``model_name`` with an
    optional ``version_name`` (without it, the model's default version).

    :param job_id: Job id, e.g. "batch_{{ ts_nodash }}" (templated).
    :param region: Region to run the job in (templated).
    :param data_format: Input format: JSON, TEXT, TF_RECORD, TF_RECORD_GZIP or CSV (templated).
    :param input_paths: gs:// input files, wildcards allowed (templated).
    :param output_path: gs:// prefix for prediction.results-* and prediction.errors_stats-* (templated).
    :param model_name: The model's id (templated).
    :param version_name: The version's id (templated).
    :param uri: gs:// SavedModel directory, instead of a deployed model (templated).
    :param max_worker_count: Most workers the job may use.
    :param runtime_version: Runtime version (with ``uri``) (templated).
    :param signature_name: Serving signature; defaults to serving_default (templated).
    :param batch_size: Instances per batch the service sends through the model.
    :param output_data_format: Output format; JSON by default (templated).
    :param labels: Job labels (templated).
    :param max_error_rate: Fail when errorCount / predictionCount is above this; None: no check.
    :param wait_timeout: Seconds to wait for the job before failing.
    :param poll_interval: First interval between status polls, in seconds (it grows).
    :param deferrable: Wait in the triggerer instead of the worker.
    :param defer_after: A deferrable wait polls in the worker this many seconds first (0: defer at once).
    :param resume_hold: A deferred wait's trigger fires no earlier than this many seconds after deferring
        (None: ``[workers] min_heartbeat_interval`` + 5 s; see apache/airflow#72716).
    :param project_id: Project; defaults to the connection's project (templated).
    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate (templated).
    :param endpoint: ml/v1 base URL overriding the connection (templated).
    :return: the job's predictionOutput (outputPath, predictionCount, errorCount, nodeHours)
        as XCom return_value; XCom ``job_id`` holds the normalised job id.
    """

    template_fields: Sequence[str] = (
        "job_id",
        "region",
        "data_format",
        "input_paths",
        "output_path",
        "model_name",
        "version_name",
        "uri",
        "runtime_version",
        "signature_name",
        "output_data_format",
        "labels",
        "project_id",
        "gcp_conn_id",
        "impersonation_chain",
        "endpoint",
    )
    operator_extra_links = (MLEngineJobLink(),)
    job_kind = "Batch prediction job"

    def __init__(
        self,
        *,
        job_id: str,
        region: str,
        data_format: str,
        input_paths: list[str],
        output_path: str,
        model_name: str | None = None,
        version_name: str | None = None,
        uri: str | None = None,
        max_worker_count: int | None = None,
        runtime_version: str | None = None,
        signature_name: str | None = None,
        batch_size: int | None = None,
        output_data_format: str | None = None,
        max_error_rate: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(job_id=job_id, region=region, **kwargs)
        self.data_format = data_format
        self.input_paths = input_paths
        self.output_path = output_path
        self.model_name = model_name
        self.version_name = version_name
        self.uri = uri
        self.max_worker_count = max_worker_count
        self.runtime_version = runtime_version
        self.signature_name = signature_name
        self.batch_size = batch_size
        self.output_data_format = output_data_format
        self.max_error_rate = max_error_rate

    def _job_input(self, project_id: str) -> dict:
        if bool(self.uri) == bool(self.model_name):
            raise AirflowException("Give exactly one model source: uri, or model_name (with version_name)")
        if self.version_name and not self.model_name:
            raise AirflowException("version_name needs model_name")
        paths = [self.input_paths] if isinstance(self.input_paths, str) else list(self.input_paths or [])
        if not paths:
            raise AirflowException("input_paths is empty")
        prediction_input: dict[str, Any] = {
            "dataFormat": self.data_format,
            "inputPaths": paths,
            "outputPath": self.output_path,
            "region": self.region,
        }
        if self.uri:
            prediction_input["uri"] = self.uri
        elif self.version_name:
            prediction_input["versionName"] = version_path(
                project_id, self.model_name, normalize_version_id(self.version_name)
            )
        else:
            prediction_input["modelName"] = model_path(project_id, self.model_name)
        optional = {
            "maxWorkerCount": self.max_worker_count,
            "runtimeVersion": self.runtime_version,
            "signatureName": self.signature_name,
            "batchSize": self.batch_size,
            "outputDataFormat": self.output_data_format,
        }
        for key, value in optional.items():
            if value not in (None, ""):
                # int64 fields travel as strings in ml/v1 JSON.
                prediction_input[key] = str(value) if isinstance(value, int) else value
        return prediction_input

    def _check_job(self, job: dict) -> dict:
        job_id = job.get("jobId")
        if job.get("state") != "SUCCEEDED":
            raise self._failed(job)
        output = job.get("predictionOutput") or {}
        predictions = int(output.get("predictionCount") or 0)
        errors = int(output.get("errorCount") or 0)
        self.log.info("Job %s SUCCEEDED: %s; output %s", job_id, describe_job(job), output.get("outputPath"))
        if self.max_error_rate is not None:
            rate = errors / predictions if predictions else (float("inf") if errors else 0.0)
            if rate > self.max_error_rate:
                raise AirflowException(
                    f"Batch prediction job {job_id}: {errors} error(s) for {predictions} prediction(s) "
                    f"(rate {rate:.3g}) exceeds max_error_rate {self.max_error_rate}; "
                    f"see {output.get('outputPath')}/prediction.errors_stats-*"
                )
        return output


class MLEngineStartTrainingJobOperator(_MLEngineJobOperator):
    """
    Run an ml/v1 training job (a Python package from GCS) and wait for it, streaming its log.

    The arguments are the legacy Google provider's. The job id is normalised to an
    ml/v1 id; an existing job of that id is reused when its trainingInput matches,
    and one that ended FAILED or CANCELLED is retried as the next id of its chain
    (``ID_r2``, ...), so a cleared task converges on one job. While the job runs, every
    new line of the trainer's log is written to this task's log: by the worker's poll
    loop, or (``deferrable=True``) by the trigger, whose log Airflow shows inside the
    task's log; the resumed task prints the lines after the trigger's last cursor.

    :param job_id: Job id, e.g. "train_{{ ts_nodash }}" (templated).
    :param region: Region to run the job in (templated).
    :param package_uris: gs:// sdists or wheels of the trainer and its extra dependencies (templated).
    :param training_python_module: Module to run, e.g. "trainer.task" (templated).
    :param training_args: Command-line arguments of the module (templated).
    :param scale_tier: BASIC, STANDARD_1, PREMIUM_1, BASIC_GPU, BASIC_TPU or CUSTOM (templated).
    :param master_type: Machine type of the master with scale_tier CUSTOM (templated).
    :param master_config: ReplicaConfig of the master, e.g. {"imageUri": ...} (templated).
    :param runtime_version: Runtime version (templated).
    :param python_version: Python version (templated).
    :param job_dir: gs:// directory passed to the trainer as ``--job-dir`` (templated).
    :param service_account: Service account to run the trainer as (templated).
    :param labels: Job labels (templated).
    :param hyperparameters: HyperparameterSpec for tuning (templated).
    :param wait_timeout: Seconds to wait for the job before failing.
    :param poll_interval: First interval between status (and log) polls, in seconds (it grows to 30).
    :param deferrable: Wait in the triggerer instead of the worker.
    :param defer_after: A deferrable wait polls in the worker this many seconds first (0: defer at once).
    :param resume_hold: A deferred wait's trigger fires no earlier than this many seconds after deferring
        (None: ``[workers] min_heartbeat_interval`` + 5 s; see apache/airflow#72716).
    :param project_id: Project; defaults to the connection's project (templated).
    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate (templated).
    :param endpoint: ml/v1 base URL overriding the connection (templated).
    :return: {"jobId", "state", "jobDir", "trainingOutput"} as XCom return_value; XCom ``job_id``
        holds the job id actually used.
    """

    template_fields: Sequence[str] = (
        "job_id",
        "region",
        "package_uris",
        "training_python_module",
        "training_args",
        "scale_tier",
        "master_type",
        "master_config",
        "runtime_version",
        "python_version",
        "job_dir",
        "service_account",
        "labels",
        "hyperparameters",
        "project_id",
        "gcp_conn_id",
        "impersonation_chain",
        "endpoint",
    )
    operator_extra_links = (MLEngineJobLink(),)
    job_kind = "Training job"
    input_field = "trainingInput"
    trigger_class = MLEngineTrainingJobTrigger
    wait_when_ended = True  # a re-run of an ended job prints its log once more, then judges it

    def __init__(
        self,
        *,
        job_id: str,
        region: str,
        package_uris: list[str] | str | None = None,
        training_python_module: str | None = None,
        training_args: list[str] | None = None,
        scale_tier: str | None = None,
        master_type: str | None = None,
        master_config: dict | None = None,
        runtime_version: str | None = None,
        python_version: str | None = None,
        job_dir: str | None = None,
        service_account: str | None = None,
        hyperparameters: dict | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(job_id=job_id, region=region, **kwargs)
        self.package_uris = package_uris
        self.training_python_module = training_python_module
        self.training_args = training_args
        self.scale_tier = scale_tier
        self.master_type = master_type
        self.master_config = master_config
        self.runtime_version = runtime_version
        self.python_version = python_version
        self.job_dir = job_dir
        self.service_account = service_account
        self.hyperparameters = hyperparameters

    def _job_input(self, project_id: str) -> dict:
        packages = [self.package_uris] if isinstance(self.package_uris, str) else list(self.package_uris or [])
        image = (self.master_config or {}).get("imageUri")
        if not image and (not packages or not self.training_python_module):
            raise AirflowException("Give package_uris and training_python_module (or master_config.imageUri)")
        training_input: dict[str, Any] = {"region": self.region, "args": [str(a) for a in self.training_args or []]}
        optional = {
            "packageUris": packages,
            "pythonModule": self.training_python_module,
            "scaleTier": self.scale_tier,
            "masterType": self.master_type,
            "masterConfig": self.master_config,
            "runtimeVersion": self.runtime_version,
            "pythonVersion": self.python_version,
            "jobDir": self.job_dir,
            "serviceAccount": self.service_account,
            "hyperparameters": self.hyperparameters,
        }
        training_input.update({key: value for key, value in optional.items() if value not in (None, "", [], {})})
        for key in ("runtimeVersion", "pythonVersion", "scaleTier", "masterType"):
            if key in training_input:  # native rendering makes "2.11" a float
                training_input[key] = str(training_input[key])
        return training_input

    def _submit(self, project_id: str, body: dict) -> dict:
        return self.hook.create_training_job(project_id=project_id, job=body)

    def _wait(self, project_id: str, job_id: str) -> dict:
        """Poll the job until it ends, printing the trainer's log as it grows."""
        return self.hook.wait_for_training_job(
            project_id=project_id, job_id=job_id, timeout=self.wait_timeout, poll_interval=self.poll_interval
        )

    def _resumed(self, event: dict[str, Any]) -> None:
        """Print the lines the trainer wrote after the trigger's last read."""
        if event.get("job_id"):
            self.hook.log_training_lines(project_id=self._project(), job_id=event["job_id"],
                                         cursor=event.get("log_cursor"))

    def _check_job(self, job: dict) -> dict:
        job_id = job.get("jobId")
        if job.get("state") != "SUCCEEDED":
            raise self._failed(job)
        self.log.info("Training job %s SUCCEEDED: %s", job_id, job.get("trainingOutput") or {})
        return {"jobId": job_id, "state": job["state"], "jobDir": (job.get("trainingInput") or {}).get("jobDir"),
                "trainingOutput": job.get("trainingOutput") or {}}


class MLEnginePredictOperator(_MLEngineBaseOperator):
    """
    Send a few instances for online prediction and check the answer (a smoke test).

    Instances are given inline or read from a JSON-lines file in GCS (one instance per
    line, e.g. {"image_bytes": {"b64": "..."}, "key": "id1"}). They go out in requests of
    ``batch_size`` so each request stays under the online size limit. The task fails when
    the service answers {"error": ...} or returns a different number of predictions.

    :param model_name: The model's id (templated).
    :param version_name: The version's id; without it, the model's default version (templated).
    :param instances: Instances given inline (templated).
    :param instances_uri: gs://bucket/path of a JSON-lines instance file (templated).
    :param signature_name: Serving signature; defaults to serving_default (templated).
    :param batch_size: Instances per predict request.
    :param max_instances: Most instances accepted: predictions come back through XCom.
    :param project_id: Project; defaults to the connection's project (templated).
    :param gcp_conn_id: The connection ID to use connecting to Google Cloud (and GCS).
    :param impersonation_chain: Optional service account to impersonate (templated).
    :param endpoint: ml/v1 base URL overriding the connection (templated).
    :return: the list of predictions, in instance order (XCom return_value).
    """

    template_fields: Sequence[str] = (
        "model_name",
        "version_name",
        "instances",
        "instances_uri",
        "signature_name",
        "project_id",
        "gcp_conn_id",
        "impersonation_chain",
        "endpoint",
    )
    operator_extra_links = (MLEngineVersionLink(),)

    def __init__(
        self,
        *,
        model_name: str,
        version_name: str | None = None,
        instances: list | None = None,
        instances_uri: str | None = None,
        signature_name: str | None = None,
        batch_size: int = 32,
        max_instances: int = 1000,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.model_name = model_name
        self.version_name = version_name
        self.instances = instances
        self.instances_uri = instances_uri
        self.signature_name = signature_name
        self.batch_size = batch_size
        self.max_instances = max_instances

    def _read_instances(self) -> list:
        if (self.instances is None) == (not self.instances_uri):
            raise AirflowException("Give exactly one of instances or instances_uri")
        if self.instances is not None:
            instances = self.instances
            if isinstance(instances, str):
                instances = json.loads(instances)
            return list(instances)
        from ml_engine.gcs import MLEngineGCSHook, parse_gcs_uri

        try:
            bucket, blob = parse_gcs_uri(self.instances_uri)
        except ValueError as err:
            raise AirflowException(f"instances_uri: {err}") from err
        gcs = MLEngineGCSHook(gcp_conn_id=self.gcp_conn_id, impersonation_chain=self.impersonation_chain)
        text = gcs.download(bucket_name=bucket, object_name=blob).decode("utf-8")
        instances = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                instances.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise AirflowException(f"{self.instances_uri} line {number} is not JSON: {err}") from err
        return instances

    def execute(self, context: Context) -> list:
        project_id = self._project()
        instances = self._read_instances()
        if not instances:
            raise AirflowException("No instances to predict")
        if len(instances) > self.max_instances:
            raise AirflowException(
                f"{len(instances)} instances exceed max_instances={self.max_instances}: this operator is "
                "for smoke tests; use MLEngineStartBatchPredictionJobOperator for bulk prediction"
            )
        version_name = normalize_version_id(self.version_name) if self.version_name else None
        if version_name:
            MLEngineVersionLink.persist(
                context,
                endpoint=self.hook.endpoint,
                project_id=project_id,
                model_name=self.model_name,
                version_name=version_name,
            )
        target = (
            version_path(project_id, self.model_name, version_name)
            if version_name
            else model_path(project_id, self.model_name)
        )
        predictions = self.hook.predict_in_chunks(
            project_id=project_id,
            model_name=self.model_name,
            version_name=version_name,
            instances=instances,
            signature_name=self.signature_name,
            batch_size=self.batch_size,
        )
        self.log.info("%s predicted %s instance(s); first: %s", target, len(predictions), predictions[:1])
        return predictions
