"""Retries for every Vertex AI call the DAGs make, as the ml/v1 hook retries its calls.

Most of Vertex AI's GAPIC methods carry no default retry: one UNAVAILABLE (503) or
RESOURCE_EXHAUSTED (429) answer would fail a task. ``retrying(client)`` gives each call of a
client the same policy (transient codes, exponential backoff, a deadline) unless the caller
passes its own, and each long-running operation it returns polls with it too. Calls that
change state are safe to repeat here: every one of them is found-or-made (see the callers).
"""

from __future__ import annotations

import logging

from google.api_core import exceptions
from google.api_core.retry import Retry, if_exception_type

log = logging.getLogger(__name__)
TRANSIENT = (exceptions.ServiceUnavailable, exceptions.TooManyRequests, exceptions.ResourceExhausted,
             exceptions.DeadlineExceeded, exceptions.InternalServerError)


def _logged(error: Exception) -> None:
    log.warning("Vertex AI call failed (%s); retrying", error.__class__.__name__)


RETRY = Retry(predicate=if_exception_type(*TRANSIENT), initial=0.5, maximum=8.0, multiplier=2.0, timeout=180.0,
              on_error=_logged)


class _Operation:
    """A long-running operation whose ``result`` polls with RETRY."""

    def __init__(self, operation):
        self._operation = operation

    def result(self, timeout=None):
        return self._operation.result(timeout=timeout, retry=RETRY)

    def __getattr__(self, name):
        return getattr(self._operation, name)


class retrying:
    """``client`` whose methods retry transient failures (and whose operations poll with retries)."""

    def __init__(self, client):
        self._client = client

    def __getattr__(self, name):
        attribute = getattr(self._client, name)
        if not callable(attribute) or name.startswith("_") or name.endswith("_path"):
            return attribute

        def call(*args, **kwargs):
            kwargs.setdefault("retry", RETRY)
            answer = attribute(*args, **kwargs)
            return _Operation(answer) if hasattr(answer, "operation") and hasattr(answer, "result") else answer

        return call
