"""Vertex AI batch prediction jobs: create (checked), get, list, cancel, delete.

A job names a model (``.../models/M``: its default version; ``M@V``: that version or alias),
reads JSON lines or TFRecords from ``inputConfig.gcsSource.uris`` and writes to a new folder
under ``outputConfig.gcsDestination.outputUriPrefix`` (``workers.vertex_batch``). States are
Vertex AI's ``JobState``: PENDING when created, RUNNING, then SUCCEEDED, FAILED or CANCELLED
(CANCELLING in between). The version is resolved when the job is created, so a later change
of the default does not change what a running job predicts with.
"""

from __future__ import annotations

import logging

from include.local_platform.context import Context
from include.local_platform.errors import failed_precondition, invalid_argument, not_found
from include.local_platform.resources import validation, vertex_models, vertex_names, vertex_operations
from include.local_platform.state.clock import now_rfc3339

log = logging.getLogger(__name__)
KIND = "vertex_batch_job"
INPUT_FORMATS = ("jsonl", "tf-record", "tf-record-gzip")
ACTIVE = ("JOB_STATE_PENDING", "JOB_STATE_RUNNING")
ENDED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")
MAX_INPUT_URIS = 100
MAX_BATCH_SIZE = 10_000


def get(ctx: Context, name: str) -> dict:
    vertex_names.split(name, "batchPredictionJobs")
    found = ctx.store.get(name)
    if found is None:
        raise not_found(f'BatchPredictionJob does not exist: "{name}"')
    return found


def create(ctx: Context, parent: str, spec: dict) -> dict:
    """Check the job, resolve its model version, store it PENDING and hand it to the batch worker."""
    parent = vertex_names.parent(parent)
    job = _checked(spec)
    version = vertex_models.get(ctx, job["model"])
    name = vertex_names.resource(parent, "batchPredictionJobs", vertex_names.new_id())
    now = now_rfc3339()
    job = {**job, "name": name, "modelVersionId": version["versionId"], "state": "JOB_STATE_PENDING",
           "createTime": now, "updateTime": now, "_version": vertex_models.version_key(version),
           "_modelDisplayName": version.get("displayName", "")}
    ctx.store.insert(name, KIND, parent, job)
    log.info("batch prediction job %s PENDING: %s@%s over %s", name, version["name"], version["versionId"],
             job["inputConfig"]["gcsSource"]["uris"])
    ctx.work.submit("vertex_batch", name)
    return job


def _checked(spec: dict) -> dict:
    if not isinstance(spec.get("displayName"), str) or not spec["displayName"].strip():
        raise invalid_argument("BatchPredictionJob display name must be set.", "batch_prediction_job.display_name")
    if not isinstance(spec.get("model"), str) or not spec["model"]:
        raise invalid_argument("BatchPredictionJob model must name a model.", "batch_prediction_job.model")
    inputs = spec.get("inputConfig") or {}
    if inputs.get("instancesFormat") not in INPUT_FORMATS:
        raise invalid_argument(f"input_config.instances_format must be one of {list(INPUT_FORMATS)}, got "
                               f"{str(inputs.get('instancesFormat'))[:40]!r}.", "batch_prediction_job.input_config")
    uris = (inputs.get("gcsSource") or {}).get("uris")
    if not isinstance(uris, list) or not uris or len(uris) > MAX_INPUT_URIS:
        raise invalid_argument(f"input_config.gcs_source.uris must list 1 to {MAX_INPUT_URIS} gs:// URIs.",
                               "batch_prediction_job.input_config.gcs_source.uris")
    for uri in uris:
        validation.gcs_uri(uri, "batch_prediction_job.input_config.gcs_source.uris", "each input URI")
    outputs = spec.get("outputConfig") or {}
    if outputs.get("predictionsFormat", "jsonl") != "jsonl":
        raise invalid_argument("output_config.predictions_format: only jsonl is supported by the local service.",
                               "batch_prediction_job.output_config.predictions_format")
    prefix = (outputs.get("gcsDestination") or {}).get("outputUriPrefix")
    validation.gcs_uri(prefix, "batch_prediction_job.output_config.gcs_destination.output_uri_prefix",
                       "output_uri_prefix (a folder)")
    job = {key: spec[key] for key in ("displayName", "model", "inputConfig", "outputConfig", "modelParameters",
                                      "dedicatedResources", "manualBatchTuningParameters") if key in spec}
    batch_size = (spec.get("manualBatchTuningParameters") or {}).get("batchSize")
    if batch_size is not None:
        validation.positive_int(batch_size, "batch_prediction_job.manual_batch_tuning_parameters.batch_size",
                                name="batchSize", maximum=MAX_BATCH_SIZE)
    if spec.get("labels") is not None:
        job["labels"] = validation.labels(spec["labels"], "batch_prediction_job.labels")
    return job


def list_jobs(ctx: Context, parent: str, filter_text: str | None = None) -> list[dict]:
    """The batch prediction jobs of ``parent``; ``filter``: ``display_name="x"``, ``labels.k="v"`` (AND)."""
    test = vertex_names.matcher(filter_text)
    return [job for job in ctx.store.list(KIND, vertex_names.parent(parent)) if test(job)]


def cancel(ctx: Context, name: str) -> None:
    """An active job goes CANCELLING; its worker stops and ends it CANCELLED (an ended job stays as it is)."""
    with ctx.store.transaction():
        job = get(ctx, name)
        if job["state"] not in ACTIVE:
            raise failed_precondition(f"BatchPredictionJob {name} is {job['state']} and cannot be cancelled.")
        ctx.store.transition(name, ACTIVE, state="JOB_STATE_CANCELLING", updateTime=now_rfc3339())
    ctx.work.cancel(name)


def delete(ctx: Context, name: str) -> dict:
    """Delete an ended job (its output files stay); the done operation."""
    with ctx.store.transaction():
        job = get(ctx, name)
        if job["state"] not in ENDED:
            raise failed_precondition(f"BatchPredictionJob {name} is {job['state']}; cancel it before deleting it.")
        ctx.store.delete(name)
    return vertex_operations.finished(ctx, name, "DeleteOperationMetadata")
