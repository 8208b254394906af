"""projects.jobs: batch prediction jobs and training jobs (see training.py)."""

from __future__ import annotations

import logging
import re

from include.local_platform.context import Context, new_etag, now_rfc3339, public, revise
from include.local_platform.errors import (
    already_exists,
    failed_precondition,
    invalid_argument,
    not_found,
)
from include.local_platform.resources import models, validation
from include.local_platform.resources.names import check_name, job_name
from include.local_platform.workers import batch, training

log = logging.getLogger(__name__)

DATA_FORMATS = ("JSON", "TEXT", "TF_RECORD", "TF_RECORD_GZIP")
ACTIVE_STATES = ("QUEUED", "PREPARING", "RUNNING")


MAX_BATCH_SIZE = 10_000
MAX_WORKER_COUNT = 1_000
MAX_INPUT_PATHS = 100
PREDICTION_INPUT_FIELDS = frozenset({
    "dataFormat", "outputDataFormat", "inputPaths", "maxWorkerCount", "region", "runtimeVersion", "batchSize",
    "signatureName", "modelName", "versionName", "uri", "outputPath"})


def _field_error(field: str, message: str):
    return invalid_argument(f"Field: prediction_input.{field} Error: {message}", f"prediction_input.{field}")


def _validate_source(ctx: Context, project: str, prediction_input: dict) -> None:
    sources = [key for key in ("modelName", "versionName", "uri") if prediction_input.get(key)]
    if len(sources) != 1:
        raise _field_error("model_name", "exactly one of modelName, versionName or uri is required, "
                           f"got {sources or 'none'}.")
    source = sources[0]
    if source == "uri":
        uri = validation.gcs_uri(prediction_input["uri"], "prediction_input.uri",
                                 "uri (a SavedModel directory)")
        validation.allowed_bucket(uri, "prediction_input.uri")
        return
    name = prediction_input[source]
    parts = name.split("/") if isinstance(name, str) and len(name) <= 1024 else []
    expected = 4 if source == "modelName" else 6
    if len(parts) != expected or parts[0] != "projects" or parts[1] != project:
        shown = name[:200] if isinstance(name, str) else type(name).__name__
        raise _field_error(source, f"'{shown}' is not a resource name of project {project}.")
    try:
        if source == "modelName":
            models.get_model(ctx, project, parts[3])
        else:
            models.get_version(ctx, project, parts[3], parts[5])
    except Exception:
        raise _field_error(source, f"{name} was not found.") from None


def _validate_prediction_input(ctx: Context, project: str, given: object) -> dict:
    """Check predictionInput field by field; it is stored exactly as sent (defaults apply at run time)."""
    if not isinstance(given, dict):
        raise invalid_argument("Field: job.prediction_input Error: predictionInput or trainingInput is required.",
                               "job.prediction_input")
    validation.unknown_keys(given, PREDICTION_INPUT_FIELDS, "job.prediction_input")
    _validate_source(ctx, project, given)
    if given.get("dataFormat") not in DATA_FORMATS:
        shown = given.get("dataFormat") if isinstance(given.get("dataFormat"), str) else None
        raise _field_error("data_format", f"dataFormat must be one of {list(DATA_FORMATS)}, got {str(shown)[:40]!r}.")
    paths = given.get("inputPaths")
    if not isinstance(paths, list) or not paths or len(paths) > MAX_INPUT_PATHS:
        raise _field_error("input_paths", f"inputPaths must list 1 to {MAX_INPUT_PATHS} gs:// paths.")
    for path in paths:
        validation.gcs_uri(path, "prediction_input.input_paths", "each input path")
        if "*" in path[:-1].rsplit("/", 1)[0]:
            raise _field_error("input_paths", f"'{path[:200]}' must be a gs:// path, with a wildcard only in "
                               "its last component.")
    validation.gcs_uri(given.get("outputPath"), "prediction_input.output_path", "outputPath (a directory)")
    if not given.get("region"):
        raise _field_error("region", "region is required.")
    validation.short_text(given["region"], "prediction_input.region", limit=64)
    for key, field in (("runtimeVersion", "runtime_version"), ("signatureName", "signature_name")):
        if key in given:
            validation.short_text(given[key], f"prediction_input.{field}")
    if "batchSize" in given:
        validation.positive_int(given["batchSize"], "prediction_input.batch_size", name="batchSize",
                                maximum=MAX_BATCH_SIZE)
    if "maxWorkerCount" in given:
        validation.positive_int(given["maxWorkerCount"], "prediction_input.max_worker_count",
                                name="maxWorkerCount", maximum=MAX_WORKER_COUNT)
    if given.get("outputDataFormat", "JSON") != "JSON":
        raise _field_error("output_data_format", "only JSON output is supported.")
    return dict(given)


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
    """ml/v1 list filters: ``jobId:prefix*``, ``state=SUCCEEDED``, ``labels.k=v``, joined with AND."""
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
        revise(ctx, name, state="CANCELLING")
    ctx.cancel_event(name).set()
    log.info("job %s CANCELLING", name)
    return {}
