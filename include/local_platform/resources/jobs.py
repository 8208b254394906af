"""projects.jobs: create, get, list (with ml/v1 filters) and cancel batch prediction and training jobs.

A new job is stored QUEUED and handed to the workers (``workers.batch``, ``workers.training``).
"""

from __future__ import annotations

import logging
import re

from include.local_platform.context import Context
from include.local_platform.errors import (
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
)
from include.local_platform.resources import prediction_input, training_input, validation
from include.local_platform.resources.names import check_name, job_name
from include.local_platform.resources.proto_json import camel_case
from include.local_platform.state.clock import new_etag, now_rfc3339
from include.local_platform.state.store import public

log = logging.getLogger(__name__)

ACTIVE_STATES = ("QUEUED", "PREPARING", "RUNNING")
UNFINISHED_STATES = (*ACTIVE_STATES, "CANCELLING")  # work a replica still has to do or end


def create_job(ctx: Context, project: str, body: object) -> dict:
    if not isinstance(body, dict):
        raise invalid_argument("The request body must be a JSON object.")
    body = camel_case(body, "job")  # both proto3 JSON spellings in; stored and answered in lowerCamelCase
    job_id = check_name("Job", body.get("jobId"), "job.job_id")
    if "trainingInput" in body:
        kind, job_input = "trainingInput", training_input.validate(body["trainingInput"])
    else:
        kind, job_input = "predictionInput", prediction_input.validate(ctx, project, body.get("predictionInput"))
    name = job_name(project, job_id)
    job = {
        "jobId": job_id,
        kind: job_input,
        "createTime": now_rfc3339(),
        "state": "QUEUED",
        "etag": new_etag(),
        "_name": name,
    }
    if body.get("labels") is not None:
        job["labels"] = validation.labels(body["labels"], "job.labels")
    with ctx.store.transaction():
        if ctx.store.get(name) is not None:
            raise already_exists("job.job_id")
        ctx.store.insert(name, "job", f"projects/{project}", job)
    job = public(job)
    if kind == "trainingInput":
        log.info("job %s QUEUED: training python -m %s from %s", name, job_input["pythonModule"],
                 job_input["packageUris"])
        ctx.work.submit("training", name)
        return job
    log.info("job %s QUEUED: %s over %s", name, job_input.get("versionName") or
             job_input.get("modelName") or job_input.get("uri"), job_input["inputPaths"])
    ctx.work.submit("batch", name)
    return job


def get_job(ctx: Context, project: str, job_id: str) -> dict:
    job = ctx.store.get(job_name(project, job_id))
    if job is None:
        raise not_found(f"Job {job_name(project, job_id)}")
    return public(job)


_CLAUSE = re.compile(r'^\s*(jobId|state|labels\.[A-Za-z0-9_-]+)\s*(=|:)\s*"?([^"]*)"?\s*$')


def _matcher(filter_text: str | None):
    """ml/v1 list filters: ``jobId:prefix*``, ``state=SUCCEEDED``, ``labels.k=v``, joined with AND."""
    if not filter_text:
        return lambda job: True
    clauses = validation.filter_clauses(filter_text, _CLAUSE, "Unsupported filter '{clause}'; use jobId:prefix*, "
                                        "state=STATE or labels.KEY=VALUE joined by AND.")

    def test(job: dict) -> bool:
        for field, _, value in clauses:
            labels = job.get("labels") if isinstance(job.get("labels"), dict) else {}
            actual = str(labels.get(field[7:], "") if field.startswith("labels.") else job.get(field, ""))
            if value.endswith("*"):
                if not actual.startswith(value[:-1]):
                    return False
            elif actual != value:
                return False
        return True

    return test


def list_jobs(ctx: Context, project: str, filter_text: str | None) -> list[dict]:
    test = _matcher(filter_text)
    jobs = [public(job) for job in ctx.store.list("job", f"projects/{project}")]
    return [job for job in reversed(jobs) if test(job)]


def cancel_job(ctx: Context, project: str, job_id: str) -> dict:
    name = job_name(project, job_id)
    with ctx.store.transaction():
        job = get_job(ctx, project, job_id)
        if job["state"] not in ACTIVE_STATES:
            raise failed_precondition(f"Job {name} is {job['state']} and cannot be cancelled.")
        ctx.store.transition(name, ACTIVE_STATES, state="CANCELLING")
    ctx.work.cancel(name)
    log.info("job %s CANCELLING", name)
    return {}
