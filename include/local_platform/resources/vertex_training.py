"""Vertex AI training pipelines (a Python package training job) and the custom jobs behind them.

What the aiplatform SDK's CustomPythonPackageTrainingJob creates: a TrainingPipeline whose
``trainingTaskInputs`` hold one worker pool with a ``pythonPackageSpec`` (package URIs, module,
args, env) and a ``baseOutputDirectory``, and whose ``modelToUpload`` describes the model to
upload from ``<baseOutputDirectory>/model`` (``AIP_MODEL_DIR``) when training succeeds, as a new
model or a new version of ``parentModel``. The pipeline runs a CustomJob (named in
``trainingTaskMetadata.backingCustomJob``), which the service's training runner runs like an
ml/v1 training job (``workers.training``: sandboxed, logged, cancellable, resumed after a
restart), so the custom job is stored as a training job of the location; the API shows it as
a CustomJob with Vertex AI's JobState. Pipeline states are Vertex AI's PipelineState.
"""

from __future__ import annotations

import logging
import re

from include.local_platform.context import Context
from include.local_platform.errors import ApiError, failed_precondition, invalid_argument, not_found, unimplemented
from include.local_platform.resources import training_input, validation, vertex_names, vertex_operations
from include.local_platform.state.clock import now_rfc3339

log = logging.getLogger(__name__)
PIPELINE = "vertex_training_pipeline"
CUSTOM_TASK = "gs://google-cloud-aiplatform/schema/trainingjob/definition/custom_task_1.0.0.yaml"
PIPELINE_ACTIVE = ("PIPELINE_STATE_PENDING", "PIPELINE_STATE_RUNNING", "PIPELINE_STATE_CANCELLING")
PIPELINE_ENDED = ("PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED")
#: The training runner's states (ml/v1's) as Vertex AI's JobState.
JOB_STATES = {"QUEUED": "JOB_STATE_QUEUED", "PREPARING": "JOB_STATE_PENDING", "RUNNING": "JOB_STATE_RUNNING",
              "SUCCEEDED": "JOB_STATE_SUCCEEDED", "FAILED": "JOB_STATE_FAILED", "CANCELLING": "JOB_STATE_CANCELLING",
              "CANCELLED": "JOB_STATE_CANCELLED"}
_RUNTIME = re.compile(r"[.-](\d+)-(\d+)(?:[.:]|$)")


def get_pipeline(ctx: Context, name: str) -> dict:
    vertex_names.split(name, "trainingPipelines")
    found = ctx.store.get(name)
    if found is None:
        raise not_found(f'TrainingPipeline does not exist: "{name}"')
    return found


def create_pipeline(ctx: Context, parent: str, spec: dict) -> dict:
    """Check a Python package training pipeline, store it PENDING and hand it to the pipeline worker."""
    parent = vertex_names.parent(parent)
    if spec.get("trainingTaskDefinition") != CUSTOM_TASK:
        raise unimplemented(f"Training task definition {str(spec.get('trainingTaskDefinition'))[:200]} (the local "
                            f"service runs custom training, {CUSTOM_TASK})")
    if not isinstance(spec.get("displayName"), str) or not spec["displayName"].strip():
        raise invalid_argument("TrainingPipeline display name must be set.", "training_pipeline.display_name")
    package = _package_spec(spec.get("trainingTaskInputs") or {})
    if spec.get("modelToUpload") and not ((spec["modelToUpload"].get("containerSpec") or {}).get("imageUri")):
        raise invalid_argument("model_to_upload.container_spec.image_uri must be set.",
                               "training_pipeline.model_to_upload.container_spec.image_uri")
    name = vertex_names.resource(parent, "trainingPipelines", vertex_names.new_id())
    now = now_rfc3339()
    pipeline = {key: spec[key] for key in ("displayName", "trainingTaskDefinition", "trainingTaskInputs",
                                           "modelToUpload", "parentModel", "inputDataConfig") if key in spec}
    if spec.get("labels") is not None:
        pipeline["labels"] = validation.labels(spec["labels"], "training_pipeline.labels")
    pipeline = {**pipeline, "name": name, "state": "PIPELINE_STATE_PENDING", "createTime": now, "updateTime": now,
                "_package": package}
    ctx.store.insert(name, PIPELINE, parent, pipeline)
    log.info("training pipeline %s PENDING: python -m %s from %s", name, package["pythonModule"],
             package["packageUris"])
    ctx.work.submit("vertex_training", name)
    return pipeline


def _package_spec(inputs: dict) -> dict:
    """The one worker pool's pythonPackageSpec, as the training runner takes it (checked as ml/v1's was)."""
    pools = inputs.get("workerPoolSpecs") or inputs.get("worker_pool_specs") or []
    if not isinstance(pools, list) or not pools or not isinstance(pools[0], dict):
        raise invalid_argument("training_task_inputs.worker_pool_specs must hold one worker pool.",
                               "training_pipeline.training_task_inputs")
    if len([pool for pool in pools if pool]) > 1 or float(pools[0].get("replicaCount")
                                                          or pools[0].get("replica_count") or 1) != 1:
        raise unimplemented("Distributed training (more than one replica or worker pool)")
    spec = pools[0].get("pythonPackageSpec") or pools[0].get("python_package_spec")
    if not isinstance(spec, dict):
        raise unimplemented("Custom containers (a worker pool without python_package_spec)")
    output = inputs.get("baseOutputDirectory") or inputs.get("base_output_directory") or {}
    base = (output.get("outputUriPrefix") or output.get("output_uri_prefix") or "").rstrip("/")
    validation.gcs_uri(base, "training_pipeline.training_task_inputs.base_output_directory", "output_uri_prefix")
    image = spec.get("executorImageUri") or spec.get("executor_image_uri") or ""
    runtime = _RUNTIME.search(image)
    checked = training_input.validate({
        "packageUris": spec.get("packageUris") or spec.get("package_uris"),
        "pythonModule": spec.get("pythonModule") or spec.get("python_module"),
        "args": [str(arg) for arg in spec.get("args") or []], "region": "local",
        **({"runtimeVersion": f"{runtime[1]}.{runtime[2]}"} if runtime else {})})
    env = {item.get("name"): str(item.get("value", "")) for item in spec.get("env") or []
           if isinstance(item, dict) and isinstance(item.get("name"), str)}
    return {**checked, "executorImageUri": image, "baseOutputDirectory": base, "env": env}


def list_pipelines(ctx: Context, parent: str, filter_text: str | None = None) -> list[dict]:
    """The training pipelines of ``parent``; ``filter``: ``display_name="x"``, ``labels.k="v"`` (AND)."""
    test = vertex_names.matcher(filter_text)
    return [p for p in ctx.store.list(PIPELINE, vertex_names.parent(parent)) if test(p)]


def cancel_pipeline(ctx: Context, name: str) -> None:
    with ctx.store.transaction():
        pipeline = get_pipeline(ctx, name)
        if pipeline["state"] in PIPELINE_ENDED:
            raise failed_precondition(f"TrainingPipeline {name} is {pipeline['state']} and cannot be cancelled.")
        ctx.store.transition(name, ("PIPELINE_STATE_PENDING", "PIPELINE_STATE_RUNNING"),
                             state="PIPELINE_STATE_CANCELLING", updateTime=now_rfc3339())
    ctx.work.submit("vertex_training", name)


def delete_pipeline(ctx: Context, name: str) -> dict:
    with ctx.store.transaction():
        pipeline = get_pipeline(ctx, name)
        if pipeline["state"] not in PIPELINE_ENDED:
            raise failed_precondition(f"TrainingPipeline {name} is {pipeline['state']}; cancel it before deleting it.")
        ctx.store.delete(name)
    return vertex_operations.finished(ctx, name, "DeleteOperationMetadata")


def get_custom_job(ctx: Context, name: str) -> dict:
    vertex_names.split(name, "customJobs")
    found = ctx.store.get(name)
    if found is None or "_vertex" not in found:
        raise not_found(f'CustomJob does not exist: "{name}"')
    return found


def cancel_custom_job(ctx: Context, name: str) -> None:
    with ctx.store.transaction():
        job = get_custom_job(ctx, name)
        if ctx.store.transition(name, ("QUEUED", "PREPARING", "RUNNING"), state="CANCELLING") is None:
            raise failed_precondition(f"CustomJob {name} is {JOB_STATES.get(job['state'])} and cannot be cancelled.")
    ctx.work.cancel(name)


def delete_custom_job(ctx: Context, name: str) -> dict:
    with ctx.store.transaction():
        job = get_custom_job(ctx, name)
        if job["state"] not in ("SUCCEEDED", "FAILED", "CANCELLED"):
            raise failed_precondition(f"CustomJob {name} is {JOB_STATES.get(job['state'])}; cancel it first.")
        ctx.store.delete(name)
    return vertex_operations.finished(ctx, name, "DeleteOperationMetadata")


def list_custom_jobs(ctx: Context, parent: str) -> list[dict]:
    return [job for job in ctx.store.list("job", vertex_names.parent(parent)) if "_vertex" in job]


def create_custom_job(ctx: Context, pipeline: dict) -> dict:
    """The pipeline's CustomJob, stored QUEUED as a training job of the location (the runner's shape)."""
    parent = "/".join(pipeline["name"].split("/")[:4])
    job_id = vertex_names.new_id()
    name = vertex_names.resource(parent, "customJobs", job_id)
    package, now = pipeline["_package"], now_rfc3339()
    base = package["baseOutputDirectory"]
    job = {"jobId": job_id, "_name": name, "state": "QUEUED", "createTime": now,
           "trainingInput": {key: package[key] for key in ("packageUris", "pythonModule", "args", "region",
                                                           "runtimeVersion") if key in package},
           "_vertex": {"displayName": f"{pipeline['displayName']}-custom-job", "pipeline": pipeline["name"],
                       "baseOutputDirectory": base, "env": package.get("env") or {},
                       "jobSpec": {"workerPoolSpecs": (pipeline.get("trainingTaskInputs") or {}).get(
                           "workerPoolSpecs", []), "baseOutputDirectory": {"outputUriPrefix": base}}}}
    if ctx.store.get(name) is not None:
        raise ApiError(409, "ALREADY_EXISTS", f"CustomJob {name} already exists.")
    return ctx.store.insert(name, "job", parent, job)


def custom_job_view(job: dict) -> dict:
    """A stored training job of the location as the CustomJob message shows it."""
    vertex = job["_vertex"]
    times = {key: job[key] for key in ("startTime", "endTime") if job.get(key)}
    error = {"error": {"code": 1 if job["state"] == "CANCELLED" else 13, "message": job["errorMessage"]}} \
        if job.get("errorMessage") else {}
    return {"name": job["_name"], "displayName": vertex["displayName"], "jobSpec": vertex["jobSpec"],
            "state": JOB_STATES.get(job["state"], "JOB_STATE_UNSPECIFIED"), "createTime": job["createTime"],
            "updateTime": job.get("endTime") or job.get("startTime") or job["createTime"], **times, **error}
