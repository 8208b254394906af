"""Running Vertex AI batch prediction jobs: read the inputs, predict, write Vertex AI's output files.

Outputs go to ``<outputUriPrefix>/prediction-<model display name>-<create time>/``: one
``predictions_NNNNN.jsonl`` per input file, each line ``{"instance": ..., "prediction": ...}``
in input order, and ``errors_NNNNN.jsonl`` (only when some instance failed) with
``{"instance": ..., "error": {"code": 3, "message": ...}}``; TFRecord instances are shown as
``{"b64": ...}``. Instances are read and predicted by ``batch_instances``, as ml/v1 jobs are
(same framing, limits and per-instance isolation). The folder name comes from the job, so a
run after a crash first deletes what an earlier run left there; every start is counted and a
job interrupted MAX_ATTEMPTS times ends FAILED.
"""

from __future__ import annotations

import base64
import logging
import re
import shutil
import time

import orjson

from include.local_platform import gcs
from include.local_platform.context import Context
from include.local_platform.resources.vertex_batch_jobs import ACTIVE, KIND
from include.local_platform.serving import numeric_json
from include.local_platform.serving.saved_model import BadModel, Signature
from include.local_platform.state.clock import now_rfc3339
from include.local_platform.workers import vertex_deployment
from include.local_platform.workers.batch_instances import (
    DEFAULT_BATCH_SIZE,
    batches,
    open_instances,
    predict_outcomes,
)
from include.local_platform.workers.recovery import MAX_ATTEMPTS

log = logging.getLogger(__name__)
FORMATS = {"jsonl": "JSON", "tf-record": "TF_RECORD", "tf-record-gzip": "TF_RECORD_GZIP"}
INVALID_ARGUMENT = 3


class Cancelled(Exception):
    pass


def submit(ctx: Context, name: str) -> None:
    ctx.jobs.submit(_run_logged, ctx, name)


def _run_logged(ctx: Context, name: str) -> None:
    try:
        run_job(ctx, name)
    except Exception as error:
        log.exception("batch prediction job %s crashed", name)
        _end(ctx, name, "JOB_STATE_FAILED", error={"code": 13, "message": f"Internal error: {error}"})


def _end(ctx: Context, name: str, state: str, **fields) -> str:
    """Move an active job to ``state``; a cancel asked meanwhile wins."""
    ended = {"endTime": now_rfc3339(), "updateTime": now_rfc3339()}
    with ctx.store.transaction():
        if ctx.store.transition(name, ACTIVE, state=state, **ended, **fields) is not None:
            return state
        fields.pop("error", None)
        if ctx.store.transition(name, ("JOB_STATE_CANCELLING",), state="JOB_STATE_CANCELLED", **ended,
                                **fields) is not None:
            return "JOB_STATE_CANCELLED"
    return (ctx.store.get(name) or {}).get("state", "")


def _start(ctx: Context, name: str) -> tuple[dict, int] | None:
    with ctx.store.transaction():
        job = ctx.store.get(name) or {}
        if ctx.store.transition(name, ("JOB_STATE_CANCELLING",), state="JOB_STATE_CANCELLED",
                                endTime=now_rfc3339()) is not None:
            return None
        attempt = int(job.get("_attempts", 0)) + 1
        started = ctx.store.transition(name, ACTIVE, state="JOB_STATE_RUNNING", updateTime=now_rfc3339(),
                                       startTime=job.get("startTime") or now_rfc3339(), _attempts=attempt)
    return (started, attempt) if started is not None else None


def run_job(ctx: Context, name: str) -> None:
    started = _start(ctx, name)
    if started is None:
        return
    job, attempt = started
    if attempt > MAX_ATTEMPTS:
        _end(ctx, name, "JOB_STATE_FAILED", error={"code": 13, "message": f"The job was interrupted {attempt - 1} "
             "times (the service stopped while running it); it is not run again."})
        return
    folder = output_folder(job)
    counts = {"successfulCount": 0, "failedCount": 0}
    begun = time.monotonic()
    try:
        signature = _signature(ctx, job)
        inputs = [uri for pattern in job["inputConfig"]["gcsSource"]["uris"] for uri in gcs.expand_pattern(pattern)]
        if not inputs:
            raise BadModel(f"No input files match {job['inputConfig']['gcsSource']['uris']}.")
        stale = gcs.delete_matching(folder, re.compile(r"(predictions|errors)_\d{5}\.jsonl$"))
        if stale:
            log.info("job %s: deleted %d output file(s) an earlier run left in %s", name, len(stale), folder)
        ctx.store.revise(name, outputInfo={"gcsOutputDirectory": folder})
        for index, uri in enumerate(inputs, start=1):
            _predict_file(ctx, name, job, signature, uri, f"{folder}/%s_{index:05d}.jsonl", counts)
    except Cancelled:
        _end(ctx, name, "JOB_STATE_CANCELLED", completionStats=_stats(counts))
        return
    except (BadModel, gcs.GcsError) as error:
        _end(ctx, name, "JOB_STATE_FAILED", error={"code": 9, "message": str(error)}, completionStats=_stats(counts))
        return
    final = _end(ctx, name, "JOB_STATE_SUCCEEDED", completionStats=_stats(counts))
    log.info("batch prediction job %s %s: %d predictions, %d errors in %.1f s -> %s", name, final,
             counts["successfulCount"], counts["failedCount"], time.monotonic() - begun, folder)


def _stats(counts: dict) -> dict:
    return {key: str(value) for key, value in counts.items()}


def output_folder(job: dict) -> str:
    """``<prefix>/prediction-<model display name>-<create time>``, as Vertex AI names it."""
    prefix = job["outputConfig"]["gcsDestination"]["outputUriPrefix"].rstrip("/")
    model = re.sub(r"[^A-Za-z0-9_.-]", "_", job.get("_modelDisplayName") or job["displayName"])[:128]
    stamp = job["createTime"].replace("-", "_").replace(":", "_").replace(".", "_")
    return f"{prefix}/prediction-{model}-{stamp}"


def _signature(ctx: Context, job: dict) -> Signature:
    version = ctx.store.get(job["_version"])
    if version is None:
        raise BadModel(f"Model version {job['_version']} no longer exists.")
    path = vertex_deployment.local_copy(ctx, version, job["name"])
    return ctx.models.get(job["_version"], path).signature(None)


def _predict_file(ctx: Context, name: str, job: dict, signature: Signature, uri: str, target: str,
                  counts: dict) -> None:
    data_format = FORMATS[job["inputConfig"]["instancesFormat"]]
    size = int((job.get("manualBatchTuningParameters") or {}).get("batchSize") or DEFAULT_BATCH_SIZE)
    staging = ctx.scratch_dir / name.rsplit("/", 1)[1]
    staging.mkdir(parents=True, exist_ok=True)
    errors: list[bytes] = []
    try:
        with gcs.open_write(target % "predictions", binary=True) as out:
            for batch in batches(open_instances(uri, data_format), size):
                if ctx.cancel_event(name).is_set() or ctx.stopping.is_set():
                    raise Cancelled()
                good = [instance for instance, error in batch if error is None]
                outcomes = iter(predict_outcomes(signature, good, staging) if good else [])
                lines = []
                for instance, read_error in batch:
                    row, error = next(outcomes) if read_error is None else (None, read_error)
                    shown = _shown(instance)
                    if error is None:
                        lines.append(numeric_json.dumps({"instance": shown, "prediction": _prediction(row)}))
                        counts["successfulCount"] += 1
                    else:
                        errors.append(orjson.dumps({"instance": shown, "error": {"code": INVALID_ARGUMENT,
                                                                                 "message": error}}))
                        counts["failedCount"] += 1
                if lines:
                    out.write(b"\n".join(lines) + b"\n")
                ctx.crash.reach("batch.predicting")
        if errors:
            gcs.write_small(target % "errors", b"\n".join(errors) + b"\n")
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _shown(instance: object) -> object:
    """The instance as the output shows it: JSON as read, a TFRecord's bytes as ``{"b64": ...}``."""
    if isinstance(instance, bytes):
        return {"b64": base64.b64encode(instance).decode("ascii")}
    return numeric_json.plain(instance)


def _prediction(row: dict) -> object:
    """One output: its value alone, as TensorFlow Serving answers; an object of them for several outputs."""
    return next(iter(row.values())) if len(row) == 1 else row


def pending(ctx: Context) -> list[str]:
    return [job["name"] for job in ctx.store.list(KIND, states=(*ACTIVE, "JOB_STATE_CANCELLING"))]


def adopt(ctx: Context, name: str) -> None:
    """A job this replica just took over runs again from the start (its earlier outputs are deleted first)."""
    job = ctx.store.get(name) or {}
    if job.get("state") == "JOB_STATE_CANCELLING":
        _end(ctx, name, "JOB_STATE_CANCELLED")
    elif job.get("state") in ACTIVE:
        log.info("batch prediction job %s was %s when its worker stopped; running it again", name, job["state"])
        submit(ctx, name)
