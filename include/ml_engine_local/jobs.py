"""projects.jobs: batch prediction jobs and training jobs (see training.py)."""

from __future__ import annotations

import logging
import re

from include.ml_engine_local import batch, models, training
from include.ml_engine_local.context import Context, new_etag, now_rfc3339, public, revise
from include.ml_engine_local.errors import (
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
)
from include.ml_engine_local.names import check_name, job_name

log = logging.getLogger(__name__)

DATA_FORMATS = ("JSON", "TEXT", "TF_RECORD", "TF_RECORD_GZIP")
ACTIVE_STATES = ("QUEUED", "PREPARING", "RUNNING")
DEFAULT_BATCH_SIZE = 64


def _field_error(field: str, message: str):
    return invalid_argument(f"Field: prediction_input.{field} Error: {message}", f"prediction_input.{field}")


def _validate_prediction_input(ctx: Context, project: str, given: object) -> dict:
    if not isinstance(given, dict):
        raise invalid_argument("Field: job.prediction_input Error: predictionInput or trainingInput is required.",
                               "job.prediction_input")
    prediction_input = dict(given)
    sources = [key for key in ("modelName", "versionName", "uri") if prediction_input.get(key)]
    if len(sources) != 1:
        raise _field_error("model_name", "exactly one of modelName, versionName or uri is required, "
                           f"got {sources or 'none'}.")
    source = sources[0]
    if source == "uri":
        if not str(prediction_input["uri"]).startswith("gs://"):
            raise _field_error("uri", "uri must be a gs:// URI of a SavedModel directory.")
    else:
        name = prediction_input[source]
        parts = name.split("/") if isinstance(name, str) else []
        expected = 4 if source == "modelName" else 6
        if len(parts) != expected or parts[0] != "projects" or parts[1] != project:
            raise _field_error(source, f"'{name}' is not a resource name of project {project}.")
        try:
            if source == "modelName":
                models.get_model(ctx, project, parts[3])
            else:
                models.get_version(ctx, project, parts[3], parts[5])
        except Exception:
            raise _field_error(source, f"{name} was not found.") from None
    if prediction_input.get("dataFormat") not in DATA_FORMATS:
        raise _field_error("data_format", f"dataFormat must be one of {list(DATA_FORMATS)}, "
                           f"got {prediction_input.get('dataFormat')!r}.")
    paths = prediction_input.get("inputPaths")
    if not isinstance(paths, list) or not paths:
        raise _field_error("input_paths", "inputPaths must list at least one gs:// path.")
    for path in paths:
        if not isinstance(path, str) or not path.startswith("gs://") or "*" in path[:-1].rsplit("/", 1)[0]:
            raise _field_error("input_paths", f"'{path}' must be a gs:// path, with a wildcard only in "
                               "its last component.")
    output = prediction_input.get("outputPath")
    if not isinstance(output, str) or not output.startswith("gs://") or len(output) <= 5:
        raise _field_error("output_path", "outputPath must be a gs:// directory.")
    if not prediction_input.get("region"):
        raise _field_error("region", "region is required.")
    batch_size = prediction_input.get("batchSize", DEFAULT_BATCH_SIZE)
    try:
        batch_size = int(batch_size)
        if batch_size < 1:
            raise ValueError
    except (TypeError, ValueError):
        raise _field_error("batch_size", f"batchSize must be a positive integer, got {batch_size!r}.") from None
    prediction_input["batchSize"] = str(batch_size)
    if prediction_input.get("outputDataFormat", "JSON") != "JSON":
        raise _field_error("output_data_format", "only JSON output is supported.")
    return prediction_input


def create_job(ctx: Context, project: str, body: object) -> dict:
    if not isinstance(body, dict):
        raise invalid_argument("The request body must be a JSON object.")
    job_id = check_name("Job", body.get("jobId"), "job.job_id")
    if "trainingInput" in body:
        kind, job_input = "trainingInput", training.validate_training_input(body["trainingInput"])
    else:
        kind, job_input = "predictionInput", _validate_prediction_input(ctx, project, body.get("predictionInput"))
    name = job_name(project, job_id)
    job = {
        "jobId": job_id,
        kind: job_input,
        "createTime": now_rfc3339(),
        "state": "QUEUED",
        "etag": new_etag(),
        "_name": name,
    }
    if body.get("labels"):
        job["labels"] = body["labels"]
    with ctx.store.transaction():
        if ctx.store.get(name) is not None:
            raise already_exists("job.job_id", job_id)
        ctx.store.insert(name, "job", f"projects/{project}", job)
    job = public(job)
    if kind == "trainingInput":
        log.info("job %s QUEUED: training python -m %s from %s", name, job_input["pythonModule"],
                 job_input["packageUris"])
        training.submit(ctx, name)
        return job
    log.info("job %s QUEUED: %s over %s", name, job_input.get("versionName") or
             job_input.get("modelName") or job_input.get("uri"), job_input["inputPaths"])
    batch.submit(ctx, name)
    return job


def get_job(ctx: Context, project: str, job_id: str) -> dict:
    job = ctx.store.get(job_name(project, job_id))
    if job is None:
        raise not_found(f"Job {job_name(project, job_id)}")
    return public(job)


_CLAUSE = re.compile(r'^\s*(jobId|state|labels\.[A-Za-z0-9_-]+)\s*(=|:)\s*"?([^"]*)"?\s*$')


def _matcher(filter_text: str | None):
    """ml/v1 list filters: `jobId:prefix*`, `state=SUCCEEDED`, `labels.k=v`, joined with AND."""
    if not filter_text:
        return lambda job: True
    clauses = []
    for clause in re.split(r"\s+AND\s+", filter_text.strip()):
        match = _CLAUSE.match(clause)
        if not match:
            raise invalid_argument(f"Unsupported filter '{clause}'; use jobId:prefix*, state=STATE or "
                                   "labels.KEY=VALUE joined by AND.", "filter")
        clauses.append(match.groups())

    def test(job: dict) -> bool:
        for field, _, value in clauses:
            actual = (job.get("labels") or {}).get(field[7:], "") if field.startswith("labels.") \
                else job.get(field, "")
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
        revise(ctx, name, state="CANCELLING")
    ctx.cancel_event(name).set()
    log.info("job %s CANCELLING", name)
    return {}
