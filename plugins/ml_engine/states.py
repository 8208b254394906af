"""ml/v1 resource states the waits and operators act on, and how a job is logged.

Kept free of heavy imports: operators use it at DAG parse time.
"""

from __future__ import annotations

JOB_TERMINAL_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELLED"})
VERSION_PENDING_STATES = frozenset({"CREATING", "UPDATING", "DELETING"})


def describe_job(job: dict) -> str:
    """One log line for a job: state, counts, error."""
    text = f"state {job.get('state')}"
    output = job.get("predictionOutput") or {}
    if output.get("predictionCount") is not None or output.get("errorCount") is not None:
        text += f", predictions {output.get('predictionCount', 0)}, errors {output.get('errorCount', 0)}"
    if job.get("errorMessage"):
        text += f", error: {job['errorMessage']}"
    return text
