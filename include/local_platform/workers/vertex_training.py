"""Driving Vertex AI training pipelines: start the backing custom job, follow it, upload the trained model.

One watcher thread advances every active pipeline each second (and at once when woken):
PENDING -> a CustomJob for it, run by the training runner -> RUNNING (``backingCustomJob`` in
its ``trainingTaskMetadata``); when the job succeeds, the model in ``<base>/model`` (the
trainer's ``AIP_MODEL_DIR``) is uploaded as ``modelToUpload`` (a new model, or a new version of
``parentModel``) in the transaction that ends the pipeline SUCCEEDED; a failed or cancelled job
ends the pipeline so too. The watcher keeps nothing in memory, so a restart simply goes on.
"""

from __future__ import annotations

import logging
import threading

from include.local_platform import gcs
from include.local_platform.context import Context
from include.local_platform.errors import ApiError
from include.local_platform.resources import vertex_models, vertex_training
from include.local_platform.state.clock import now_rfc3339

log = logging.getLogger(__name__)
POLL_S = 1.0


class _Watcher:
    def __init__(self):
        self._wake = threading.Event()
        self._contexts: list[Context] = []
        self._lock = threading.Lock()

    def watch(self, ctx: Context) -> None:
        with self._lock:
            if ctx not in self._contexts:
                self._contexts.append(ctx)
                threading.Thread(target=self._loop, args=(ctx,), daemon=True, name="vertex-pipelines").start()
        self._wake.set()

    def _loop(self, ctx: Context) -> None:
        while True:
            self._wake.wait(POLL_S)
            self._wake.clear()
            if ctx.stopping.is_set():  # the store closes at a stop: the next start resumes what is left
                return
            try:
                pipelines = ctx.store.list(vertex_training.PIPELINE, states=vertex_training.PIPELINE_ACTIVE)
            except Exception:
                if ctx.stopping.is_set():
                    return
                raise
            for pipeline in pipelines:
                if ctx.work.holds(pipeline["name"]):
                    try:
                        advance(ctx, pipeline)
                    except Exception:
                        log.exception("training pipeline %s: step failed; tried again in %.0f s", pipeline["name"],
                                      POLL_S)


_WATCHER = _Watcher()


def submit(ctx: Context, name: str) -> None:
    _WATCHER.watch(ctx)


def pending(ctx: Context) -> list[str]:
    return [pipeline["name"] for pipeline in ctx.store.list(vertex_training.PIPELINE,
                                                            states=vertex_training.PIPELINE_ACTIVE)]


def adopt(ctx: Context, name: str) -> None:
    """The watcher advances the pipelines this replica holds."""
    _WATCHER.watch(ctx)


def advance(ctx: Context, pipeline: dict) -> None:
    """One step of one pipeline, by its state and its custom job's."""
    name = pipeline["name"]
    job = ctx.store.get(pipeline.get("_customJob", "")) if pipeline.get("_customJob") else None
    if pipeline["state"] == "PIPELINE_STATE_CANCELLING":
        _cancel(ctx, pipeline, job)
    elif job is None:
        _start(ctx, pipeline)
    elif job["state"] == "SUCCEEDED":
        _upload_and_succeed(ctx, pipeline)
    elif job["state"] in ("FAILED", "CANCELLED"):
        _end(ctx, name, "PIPELINE_STATE_FAILED" if job["state"] == "FAILED" else "PIPELINE_STATE_CANCELLED",
             error={"code": 13 if job["state"] == "FAILED" else 1,
                    "message": job.get("errorMessage") or f"The custom job {job['_name']} ended {job['state']}."})


def _start(ctx: Context, pipeline: dict) -> None:
    with ctx.store.transaction():
        job = vertex_training.create_custom_job(ctx, pipeline)
        ctx.store.transition(pipeline["name"], ("PIPELINE_STATE_PENDING",), state="PIPELINE_STATE_RUNNING",
                             startTime=now_rfc3339(), updateTime=now_rfc3339(), _customJob=job["_name"],
                             trainingTaskMetadata={"backingCustomJob": job["_name"]})
    log.info("training pipeline %s RUNNING: custom job %s", pipeline["name"], job["_name"])
    ctx.work.submit("training", job["_name"])


def _upload_and_succeed(ctx: Context, pipeline: dict) -> None:
    base = pipeline["_package"]["baseOutputDirectory"]
    spec = pipeline.get("modelToUpload")
    if not spec:
        _end(ctx, pipeline["name"], "PIPELINE_STATE_SUCCEEDED")
        return
    model_dir = f"{base}/model"
    if not gcs.list_objects(model_dir.rstrip("/") + "/", limit=1):
        _end(ctx, pipeline["name"], "PIPELINE_STATE_FAILED", error={
            "code": 9, "message": f"The training job wrote no model to {model_dir}/ (AIP_MODEL_DIR)."})
        return
    parent = "/".join(pipeline["name"].split("/")[:4])
    body = {"model": {**spec, "artifactUri": model_dir}}
    if pipeline.get("parentModel"):
        body["parentModel"] = pipeline["parentModel"]
    try:
        with ctx.store.transaction():
            operation = vertex_models.upload(ctx, parent, body)
            uploaded = {**spec, "name": operation["response"]["model"],
                        "versionId": operation["response"]["modelVersionId"], "artifactUri": model_dir}
            _end(ctx, pipeline["name"], "PIPELINE_STATE_SUCCEEDED", modelToUpload=uploaded)
    except ApiError as error:
        _end(ctx, pipeline["name"], "PIPELINE_STATE_FAILED", error={"code": 9, "message": error.message})


def _cancel(ctx: Context, pipeline: dict, job: dict | None) -> None:
    if job is not None and job["state"] in ("QUEUED", "PREPARING", "RUNNING"):
        ctx.store.transition(job["_name"], ("QUEUED", "PREPARING", "RUNNING"), state="CANCELLING")
        ctx.cancel_event(job["_name"]).set()
        return
    if job is None or job["state"] in ("SUCCEEDED", "FAILED", "CANCELLED"):
        _end(ctx, pipeline["name"], "PIPELINE_STATE_CANCELLED", error={"code": 1, "message": "CANCELED"})


def _end(ctx: Context, name: str, state: str, **fields) -> None:
    changed = ctx.store.transition(name, vertex_training.PIPELINE_ACTIVE, state=state, endTime=now_rfc3339(),
                                   updateTime=now_rfc3339(), **fields)
    if changed is not None:
        log.info("training pipeline %s %s%s", name, state,
                 f": {fields['error']['message']}" if fields.get("error") else "")
