"""Deferrable waits for ml/v1 long-running operations and jobs.

The triggers only read (operations.get, jobs.get): they have no side effects, so
the triggerer may run, restart or duplicate them safely. serialize() carries every
argument, including the connection id and the resolved endpoint, so the triggerer
talks to the same service as the worker even when its environment differs.

Every trigger fires no earlier than ``not_before`` (Unix time, set by the deferring
operator): a task resumed while the worker that deferred it is still being reported
gone is marked FAILED by Airflow 3.3 (apache/airflow#72716; see the operators'
``resume_hold``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING, Any

from airflow.triggers.base import BaseTrigger, TriggerEvent

from ml_engine.states import JOB_TERMINAL_STATES, describe_job

if TYPE_CHECKING:  # the hook (googleapiclient, google-auth) is imported when a trigger runs
    from ml_engine.hooks import MLEngineAsyncHook


class _MLEnginePollTrigger(BaseTrigger):
    """Shared poll loop: growing intervals up to max_poll_interval, optional timeout, one event at not_before."""

    def __init__(
        self,
        *,
        gcp_conn_id: str = "google_cloud_default",
        impersonation_chain: str | Sequence[str] | None = None,
        endpoint: str | None = None,
        poll_interval: float = 10,
        max_poll_interval: float = 60,
        timeout: float | None = None,
        not_before: float | None = None,
    ) -> None:
        super().__init__()
        self.gcp_conn_id = gcp_conn_id
        self.impersonation_chain = impersonation_chain
        self.endpoint = endpoint
        self.poll_interval = poll_interval
        self.max_poll_interval = max_poll_interval
        self.timeout = timeout
        self.not_before = not_before

    def _common_kwargs(self) -> dict[str, Any]:
        return {
            "gcp_conn_id": self.gcp_conn_id,
            "impersonation_chain": self.impersonation_chain,
            "endpoint": self.endpoint,
            "poll_interval": self.poll_interval,
            "max_poll_interval": self.max_poll_interval,
            "timeout": self.timeout,
            "not_before": self.not_before,
        }

    def _get_async_hook(self) -> MLEngineAsyncHook:
        from ml_engine.hooks import MLEngineAsyncHook

        return MLEngineAsyncHook(
            gcp_conn_id=self.gcp_conn_id,
            impersonation_chain=self.impersonation_chain,
            endpoint=self.endpoint,
        )

    async def run(self) -> AsyncIterator[TriggerEvent]:
        event = await self._wait()
        held = (self.not_before or 0) - time.time()
        if held > 0:
            self.log.info("Done; firing in %.1f s, once Airflow has seen the deferring worker exit "
                          "(apache/airflow#72716)", held)
            await asyncio.sleep(held)
        yield event

    async def _wait(self) -> TriggerEvent:
        """Poll until done: the one event to fire."""
        raise NotImplementedError

    async def _sleep_or_time_out(self, start: float, interval: float) -> float | None:
        """Sleep before the next poll; None when the timeout has passed."""
        elapsed = time.monotonic() - start
        if self.timeout is not None and elapsed >= self.timeout:
            return None
        if self.timeout is not None:
            interval = min(interval, max(self.timeout - elapsed, 0.1))
        await asyncio.sleep(interval)
        return min(interval * 1.5, self.max_poll_interval)


class MLEngineOperationTrigger(_MLEnginePollTrigger):
    """
    Wait until an ml/v1 Operation (version create/delete, model delete) is done.

    Yields {"status": "success", "operation": {...}} when done (the operation may
    carry an error for the operator to report), {"status": "error", "message": ...}
    on a failure to poll or a timeout.

    :param operation_name: Full operation name, projects/P/operations/O.
    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate.
    :param endpoint: ml/v1 base URL (None: from the connection/environment).
    :param poll_interval: First interval between polls, in seconds; grows by 1.5x.
    :param max_poll_interval: Longest interval between polls, in seconds.
    :param timeout: Seconds after which the wait fails (None: no limit).
    :param not_before: Unix time before which the event is not fired (None: at once).
    """

    def __init__(self, *, operation_name: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.operation_name = operation_name

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "ml_engine.triggers.MLEngineOperationTrigger",
            {"operation_name": self.operation_name, **self._common_kwargs()},
        )

    async def _wait(self) -> TriggerEvent:
        hook = self._get_async_hook()
        start = time.monotonic()
        interval: float | None = self.poll_interval
        try:
            while interval is not None:
                operation = await hook.get_operation(operation_name=self.operation_name)
                elapsed = time.monotonic() - start
                self.log.info(
                    "Operation %s: %s (%.0f s elapsed)",
                    self.operation_name,
                    "done" if operation.get("done") else "running",
                    elapsed,
                )
                if operation.get("done"):
                    return TriggerEvent({"status": "success", "operation": operation})
                interval = await self._sleep_or_time_out(start, interval)
        except Exception as err:
            self.log.exception("Polling operation %s failed", self.operation_name)
            return TriggerEvent({"status": "error", "message": f"Polling {self.operation_name} failed: {err}"})
        return TriggerEvent(
            {
                "status": "error",
                "message": f"Operation {self.operation_name} not done within {self.timeout} s",
            }
        )


class MLEngineJobTrigger(_MLEnginePollTrigger):
    """
    Wait until an ml/v1 job reaches SUCCEEDED, FAILED or CANCELLED.

    QUEUED, PREPARING, RUNNING and CANCELLING are waited through. Yields
    {"status": "success", "job": {...}} on any terminal state (the operator judges
    the outcome), {"status": "error", "message": ...} on a failure to poll or a timeout.

    :param project_id: Project of the job.
    :param job_id: Short job id.
    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate.
    :param endpoint: ml/v1 base URL (None: from the connection/environment).
    :param poll_interval: First interval between polls, in seconds; grows by 1.5x.
    :param max_poll_interval: Longest interval between polls, in seconds.
    :param timeout: Seconds after which the wait fails (None: no limit).
    :param not_before: Unix time before which the event is not fired (None: at once).
    """

    what = "Job"  # how the poll log names the job

    def __init__(self, *, project_id: str, job_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.project_id = project_id
        self.job_id = job_id

    def _arguments(self) -> dict[str, Any]:
        """The trigger's own arguments, besides the connection and poll settings."""
        return {"project_id": self.project_id, "job_id": self.job_id}

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return f"{type(self).__module__}.{type(self).__qualname__}", {**self._arguments(), **self._common_kwargs()}

    async def _after_poll(self, hook: MLEngineAsyncHook) -> None:
        """Called after every poll and once more before the final event; a subclass streams logs here."""

    def _event(self, **payload: Any) -> TriggerEvent:
        return TriggerEvent(payload)

    async def _wait(self) -> TriggerEvent:
        hook = self._get_async_hook()
        start = time.monotonic()
        interval: float | None = self.poll_interval
        try:
            while interval is not None:
                job = await hook.get_job(project_id=self.project_id, job_id=self.job_id)
                await self._after_poll(hook)
                self.log.info("%s %s: %s (%.0f s elapsed)", self.what, self.job_id, describe_job(job),
                              time.monotonic() - start)
                if job.get("state") in JOB_TERMINAL_STATES:
                    await self._after_poll(hook)
                    return self._event(status="success", job=job)
                interval = await self._sleep_or_time_out(start, interval)
        except Exception as err:
            self.log.exception("Polling %s %s failed", self.what.lower(), self.job_id)
            return self._event(status="error", message=f"Polling job {self.job_id} failed: {err}")
        return self._event(status="error", message=f"Job {self.job_id} not finished within {self.timeout} s")


class MLEngineTrainingJobTrigger(MLEngineJobTrigger):
    """
    Wait until an ml/v1 training job ends, writing the trainer's new log lines to the trigger log.

    Airflow shows a deferred task's trigger log inside the task log, so a user
    watching the task sees epochs as they happen. The event carries the log
    cursor, and the resumed task prints whatever came after it. Yields
    {"status": "success", "job": {...}, "log_cursor": ...} on any terminal state,
    {"status": "error", "message": ..., "log_cursor": ...} on a failure to poll or a timeout.

    :param project_id: Project of the job.
    :param job_id: Short job id.
    :param log_cursor: Where the log was read up to (None: from its start).
    :param gcp_conn_id: The connection ID to use connecting to Google Cloud.
    :param impersonation_chain: Optional service account to impersonate.
    :param endpoint: ml/v1 base URL (None: from the connection/environment).
    :param poll_interval: First interval between polls, in seconds; grows by 1.5x.
    :param max_poll_interval: Longest interval between polls, in seconds.
    :param timeout: Seconds after which the wait fails (None: no limit).
    :param not_before: Unix time before which the event is not fired (None: at once).
    """

    what = "Training job"

    def __init__(self, *, project_id: str, job_id: str, log_cursor: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("max_poll_interval", 10)  # log lines arrive at most this late
        super().__init__(project_id=project_id, job_id=job_id, **kwargs)
        self.log_cursor = log_cursor

    def _arguments(self) -> dict[str, Any]:
        return {**super()._arguments(), "log_cursor": self.log_cursor}

    async def _after_poll(self, hook: MLEngineAsyncHook) -> None:
        """Write the trainer's lines since the cursor; logs never fail the wait."""
        try:
            lines, self.log_cursor = await hook.read_training_logs(
                project_id=self.project_id, job_id=self.job_id, cursor=self.log_cursor
            )
        except Exception as err:
            self.log.warning("Could not read the log of training job %s: %s", self.job_id, err)
            return
        for line in lines:
            self.log.info("[%s] %s", self.job_id, line)

    def _event(self, **payload: Any) -> TriggerEvent:
        return TriggerEvent({**payload, "log_cursor": self.log_cursor, "job_id": self.job_id})
