"""The lifecycle's own errors, so a task fails for the reason it names and retries only what may pass.

`InvalidRequest` is also Airflow's `AirflowFailException`: bad Params, or a request the
model's state cannot meet (no such version, nothing to roll back to), fail the task at
once; retrying would only repeat the same answer. `CheckFailed` is the same for a check on
what the run built (a smoke test, an export verification): the artifact would not change.
Anything else (a network fault, a 5xx) keeps the task's retries.
"""

from __future__ import annotations

from airflow.sdk.exceptions import AirflowFailException


class LifecycleError(Exception):
    """Base of the errors the lifecycle raises on purpose."""


class InvalidRequest(LifecycleError, AirflowFailException):
    """A Param or a request that cannot be met as asked: fail now, without retries."""


class CheckFailed(LifecycleError, AirflowFailException):
    """A check on what this run built failed: a retry would check the same artifact, so fail now."""
