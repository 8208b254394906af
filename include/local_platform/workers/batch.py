"""Running batch prediction jobs: stream inputs from GCS, predict in batches, write outputs to GCS.

Memory stays bounded whatever the input size: inputs are read as streams,
parsed one batch ahead in a reader thread (so parsing overlaps TensorFlow),
and outputs are written as resumable uploads. Outputs are, as ml/v1 wrote
them, one ``prediction.results-NNNNN-of-MMMMM`` (JSON lines) and one
``prediction.errors_stats-NNNNN-of-MMMMM`` per input file; each errors_stats
line is ``('error message', count)``. An instance that fails is counted there
and the rest of its batch is still predicted.

Crash safety: state moves only by compare-and-set (a cancel is never written
over); every start of a job is counted (``_attempts``) and a job interrupted
MAX_ATTEMPTS times ends FAILED; a run first deletes the shards an earlier run
of the same output path left, so one set of ``-of-N`` shards is ever there.
Input lines over MAX_LINE_BYTES and TFRecord records over MAX_RECORD_BYTES
are that line's or record's error, skipped without being held in memory.
"""

from __future__ import annotations

import gzip
import logging
import os
import queue
import re
import shutil
import struct
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from include.local_platform import gcs
from include.local_platform.context import MAX_ATTEMPTS, Context, now_rfc3339, revise, transition
from include.local_platform.errors import ApiError, PredictionError
from include.local_platform.resources import models
from include.local_platform.serving import numeric_json, runtime
from include.local_platform.serving.runtime import BadModel, LoadedModel, PreparedBatch, Signature, dumps
from include.local_platform.workers import deployment

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0
DEFAULT_BATCH_SIZE = 64  # ml/v1's default; applied here, never written into the stored predictionInput
MAX_LINE_BYTES = 1_572_864  # one JSON/TEXT input line: ml/v1's online request limit (1.5 MB)
MAX_RECORD_BYTES = 16 * 1024 * 1024  # one TFRecord record (a serialized tf.Example)
SHARD_NAME = re.compile(r"prediction\.(results|errors_stats)-\d{5}-of-\d{5}$")
ACTIVE = ("PREPARING", "RUNNING")
#: Batches in TensorFlow at once: one per usable core, at least two (see _predict_shard).
PREDICT_IN_FLIGHT = max(2, len(os.sched_getaffinity(0)))


def batch_size(prediction_input: dict) -> int:
    return int(prediction_input.get("batchSize") or DEFAULT_BATCH_SIZE)


class JobFailed(Exception):
    pass


class JobCancelled(Exception):
    pass


class ServiceStopping(Exception):
    pass


@dataclass
class Totals:
    predictions: int = 0
    errors: int = 0
    started: float = field(default_factory=time.monotonic)

    def output(self, output_path: str) -> dict:
        return {
            "outputPath": output_path,
            "predictionCount": str(self.predictions),
            "errorCount": str(self.errors),
            "nodeHours": round((time.monotonic() - self.started) / 3600, 6),
        }


def submit(ctx: Context, name: str) -> None:
    ctx.jobs.submit(_run_logged, ctx, name)


def _run_logged(ctx: Context, name: str) -> None:
    try:
        run_job(ctx, name)
    except Exception:
        log.exception("job %s crashed", name)


def _start_attempt(ctx: Context, name: str) -> tuple[str, int]:
    """QUEUED -> PREPARING (or CANCELLED if asked meanwhile), counting this start; ("", 0) if not QUEUED."""
    with ctx.store.transaction():
        job = ctx.store.get(name) or {}
        if transition(ctx, name, ("CANCELLING",), state="CANCELLED", endTime=now_rfc3339()) is not None:
            return "CANCELLED", 0
        attempt = int(job.get("_attempts", 0)) + 1
        if transition(ctx, name, ("QUEUED",), state="PREPARING", startTime=job.get("startTime") or now_rfc3339(),
                      _attempts=attempt) is None:
            return "", 0
    return "PREPARING", attempt


def _end(ctx: Context, name: str, state: str, **fields) -> str:
    """Move an active job to its final state; a cancel asked meanwhile wins (it is never lost)."""
    with ctx.store.transaction():
        if transition(ctx, name, ACTIVE, state=state, endTime=now_rfc3339(), **fields) is not None:
            return state
        if transition(ctx, name, ("CANCELLING",), state="CANCELLED", endTime=now_rfc3339(),
                      **{k: v for k, v in fields.items() if k != "errorMessage"}) is not None:
            return "CANCELLED"
    return (ctx.store.get(name) or {}).get("state", "")


def _check_cancel(ctx: Context, name: str) -> None:
    if ctx.cancel_event(name).is_set():
        raise JobCancelled()
    if ctx.stopping.is_set():
        raise ServiceStopping()


def run_job(ctx: Context, name: str) -> None:
    job = ctx.store.get(name)
    if job is None:
        return
    prediction_input = job["predictionInput"]
    output_path = prediction_input["outputPath"].rstrip("/")
    totals = Totals()
    state, attempt = _start_attempt(ctx, name)
    if state == "CANCELLED":
        ctx.cancel_events.pop(name, None)
    if state != "PREPARING":
        return
    if attempt > MAX_ATTEMPTS:
        message = (f"The job was interrupted {attempt - 1} times (the service stopped while running it, e.g. an "
                   "input that crashes the model); it is not run again.")
        _end(ctx, name, "FAILED", errorMessage=message, predictionOutput=totals.output(output_path))
        log.warning("job %s FAILED: %s", name, message)
        return
    scratch = ctx.scratch_dir / name.replace("/", "_")
    try:
        signature = _load_signature(ctx, prediction_input, scratch)
        inputs = _expand_inputs(prediction_input["inputPaths"])
        ctx.crash.reach("batch.preparing")
        _check_cancel(ctx, name)
        stale = gcs.delete_matching(output_path, SHARD_NAME)
        if stale:
            log.info("job %s: deleted %d output shard(s) an earlier run left in %s", name, len(stale), output_path)
        if transition(ctx, name, ("PREPARING",), state="RUNNING") is None:
            raise JobCancelled()  # the only move away from PREPARING is a cancel
        log.info("job %s RUNNING (attempt %d): %d input file(s), batch size %d", name, attempt, len(inputs),
                 batch_size(prediction_input))
        if ctx.batch_engine == "beam":
            from include.local_platform.workers import beam_engine  # Apache Beam loads only when used

            beam_engine.run_pipeline(ctx, name, prediction_input, inputs, totals, scratch, signature)
        else:
            for shard, uri in enumerate(inputs):
                _check_cancel(ctx, name)
                _run_shard(ctx, name, signature, uri, prediction_input, shard, len(inputs), totals, scratch)
        _check_cancel(ctx, name)
    except JobCancelled:
        _end(ctx, name, "CANCELLED", predictionOutput=totals.output(output_path))
        log.info("job %s CANCELLED after %d predictions", name, totals.predictions)
        return
    except ServiceStopping:  # its attempt was given back by recovery.release_attempts
        log.info("job %s interrupted by shutdown; it restarts when the service starts again", name)
        return
    except (JobFailed, gcs.GcsError, BadModel, PredictionError, ApiError) as error:
        message = error.message if isinstance(error, ApiError) else str(error)
        final = _end(ctx, name, "FAILED", errorMessage=message, predictionOutput=totals.output(output_path))
        log.warning("job %s %s: %s", name, final, message)
        return
    except Exception as error:
        _end(ctx, name, "FAILED", errorMessage=f"Internal error: {error}", predictionOutput=totals.output(output_path))
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        ctx.cancel_events.pop(name, None)
    final = _end(ctx, name, "SUCCEEDED", predictionOutput=totals.output(output_path))
    elapsed = time.monotonic() - totals.started
    log.info("job %s %s: %d predictions, %d errors in %.1f s (%.0f instances/s) -> %s", name, final,
             totals.predictions, totals.errors, elapsed, totals.predictions / max(elapsed, 1e-9), output_path)


def _load_signature(ctx: Context, prediction_input: dict, scratch: Path) -> Signature:
    if prediction_input.get("uri"):
        target = scratch / "model"
        if gcs.download_prefix(prediction_input["uri"], target, max_files=1000,
                               max_bytes=deployment.max_artifact_bytes(None)) == 0:
            raise JobFailed(f"Model directory {prediction_input['uri']} is empty or does not exist.")
        loaded = LoadedModel(target)
    else:
        version = models.resolve_for_prediction(ctx, prediction_input.get("versionName")
                                                or prediction_input["modelName"])
        loaded = ctx.models.get(version["name"], Path(version["_path"]))
    return loaded.signature(prediction_input.get("signatureName"))


def _expand_inputs(patterns: list[str]) -> list[str]:
    inputs: list[str] = []
    for pattern in patterns:
        inputs.extend(gcs.expand_pattern(pattern))
    if not inputs:
        raise JobFailed(f"No input files match {patterns}.")
    return inputs


def _records(stream, max_bytes: int = MAX_RECORD_BYTES) -> Iterator[bytes | None]:
    """TFRecord framing: uint64 length, uint32 crc, data, uint32 crc; None for a record over ``max_bytes``."""
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) < 12:
            raise ValueError("truncated TFRecord header")
        (length,) = struct.unpack("<Q", header[:8])
        if length > max_bytes:
            _skip(stream, length + 4)  # read through in small pieces, never held whole
            yield None
            continue
        data = stream.read(length)
        if len(data) < length or len(stream.read(4)) < 4:
            raise ValueError("truncated TFRecord record")
        yield data


def _skip(stream, count: int, piece: int = 1024 * 1024) -> None:
    while count > 0:
        read = len(stream.read(min(piece, count)))
        if read == 0:
            raise ValueError("truncated TFRecord record")
        count -= read


FIRST_READ_BYTES = 256 * 1024


def _lines(stream, max_bytes: int = MAX_LINE_BYTES, chunk_size: int = 4 * 1024 * 1024) -> Iterator[bytes | None]:
    """Lines of a stream read in large chunks (the GCS reader's own readline is byte-slow).

    Reads start at FIRST_READ_BYTES and double up to ``chunk_size``: the first batch
    reaches TensorFlow after one small request instead of a full chunk. A line longer
    than ``max_bytes`` comes out as None: its bytes are dropped as they arrive, so
    memory stays under ``max_bytes`` + one chunk.
    """
    pending = b""
    too_long = False
    size = min(FIRST_READ_BYTES, chunk_size)
    while chunk := stream.read(size):
        size = min(size * 2, chunk_size)
        *ended, rest = chunk.split(b"\n")
        for part in ended:
            if too_long:
                yield None
            else:
                line = pending + part
                yield None if len(line) > max_bytes else line
            pending, too_long = b"", False
        if not too_long:
            pending += rest
            if len(pending) > max_bytes:
                pending, too_long = b"", True
    if too_long:
        yield None
    elif pending:
        yield pending


def _instances(uri: str, data_format: str) -> Iterator[tuple[object, str | None]]:
    """(instance, None) for each good input and (None, error) for each bad one."""
    text = data_format in ("JSON", "TEXT")
    with gcs.open_read(uri, chunk_size=FIRST_READ_BYTES if text else 4 * 1024 * 1024) as raw:
        yield from read_instances(raw, data_format)


def read_instances(raw, data_format: str) -> Iterator[tuple[object, str | None]]:
    """Instances of one input file's byte stream, as both batch engines read them (see `_instances`)."""
    if data_format in ("JSON", "TEXT"):
        for number, line in enumerate(_lines(raw), start=1):
            if line is None:
                yield None, f"Input line {number} is longer than the limit of {MAX_LINE_BYTES} bytes."
                continue
            if not line.strip():
                continue
            try:
                yield numeric_json.loads(line), None
            except orjson.JSONDecodeError as error:
                yield None, f"Failed to parse input line {number} as JSON: {error.__class__.__name__}"
        return
    stream = gzip.GzipFile(fileobj=raw) if data_format == "TF_RECORD_GZIP" else raw
    try:
        for number, record in enumerate(_records(stream), start=1):
            if record is None:
                yield None, f"TFRecord record {number} is longer than the limit of {MAX_RECORD_BYTES} bytes."
            else:
                yield record, None
    except (ValueError, OSError, EOFError) as error:
        yield None, f"Corrupt TFRecord input: {error}"


def _batches(items: Iterable, size: int) -> Iterator[list]:
    batch: list = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _read_ahead(batches: Iterator[list], stop: threading.Event, depth: int = 2) -> Iterator[list]:
    """Produce batches in a thread so reading and parsing overlap prediction."""
    done = object()
    slots: queue.Queue = queue.Queue(maxsize=depth)

    def offer(item: object) -> bool:
        """Put unless the consumer has gone away (then drop it, so this thread can end)."""
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in batches:
                if not offer(item):
                    return
            offer(done)
        except BaseException as error:  # handed to the consumer
            offer(error)

    threading.Thread(target=produce, daemon=True, name="batch-reader").start()
    while True:
        item = slots.get()
        if item is done:
            return
        if isinstance(item, BaseException):
            raise item
        yield item


class WriteBehind:
    """Serialise result rows and upload them in a thread, so both overlap prediction (bounded queue)."""

    def __init__(self, writer, depth: int = 8, after_write=None):
        self._writer = writer
        self._after_write = after_write
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._drain, daemon=True, name="batch-writer")
        self._thread.start()

    def _drain(self) -> None:
        while (rows := self._queue.get()) is not None:
            if self._error is None:
                try:
                    self._writer.write(b"\n".join(dumps(row) for row in rows) + b"\n")
                    if self._after_write is not None:
                        self._after_write()
                except BaseException as error:  # re-raised in the job's thread
                    self._error = error

    def write_rows(self, rows: list[dict]) -> None:
        if self._error is not None:
            raise self._error
        self._queue.put(rows)

    def close(self) -> None:
        """Wait until everything queued is written; raise what the writer raised."""
        self._queue.put(None)
        self._thread.join()
        if self._error is not None:
            raise self._error


@dataclass
class InputBatch:
    """One batch as read: the good instances, the read errors, and (if they converted) their tensors."""

    instances: list
    read_errors: list[str]
    prepared: PreparedBatch | None


def _prepare_batches(items: Iterator[list], signature: Signature, scratch: Path) -> Iterator[InputBatch]:
    for batch in items:
        good = [instance for instance, error in batch if error is None]
        prepared = None
        if good:
            try:
                prepared = runtime.prepare(signature, good, scratch)
            except PredictionError:
                prepared = None  # isolated one by one by the consumer
        yield InputBatch(good, [error for _, error in batch if error is not None], prepared)


def _predict_batch(signature: Signature, batch: InputBatch, errors: Counter, staging: Path) -> list[dict]:
    """Predict a batch; on an instance-content error, isolate the bad instances one by one."""
    if batch.prepared is not None:
        try:
            return runtime.run(signature, batch.prepared)
        except PredictionError:
            pass
    rows = []
    for instance in batch.instances:
        try:
            rows.extend(runtime.predict(signature, [instance], staging))
        except PredictionError as error:
            errors[str(error)] += 1
    return rows


def predict_instances(signature: Signature, instances: list, staging: Path | None) -> tuple[list[dict], Counter]:
    """One batch the way the local engine predicts it: rows of the good instances, error messages counted."""
    errors: Counter = Counter()
    prepared = next(_prepare_batches(iter([[(instance, None) for instance in instances]]), signature, staging))
    return _predict_batch(signature, prepared, errors, staging), errors


def _run_shard(ctx: Context, name: str, signature: Signature, uri: str, prediction_input: dict, shard: int,
               shards: int, totals: Totals, scratch: Path) -> None:
    output = prediction_input["outputPath"].rstrip("/")
    suffix = f"{shard:05d}-of-{shards:05d}"
    errors: Counter = Counter()
    stop_reading = threading.Event()
    scratch.mkdir(parents=True, exist_ok=True)
    batches = _prepare_batches(_batches(_instances(uri, prediction_input["dataFormat"]),
                                        batch_size(prediction_input)), signature, scratch)
    try:
        with gcs.open_write(f"{output}/prediction.results-{suffix}", binary=True) as writer:
            results = WriteBehind(writer, after_write=lambda: ctx.crash.reach("batch.uploading"))
            try:
                _predict_shard(ctx, name, signature, _read_ahead(batches, stop_reading), results, errors, totals,
                               scratch, progress=f"file {shard + 1}/{shards}", output=output)
            finally:
                results.close()
    finally:
        stop_reading.set()
    gcs.write_small(f"{output}/prediction.errors_stats-{suffix}",
                    "".join(repr((message, count)) + "\n" for message, count in errors.most_common()))


def _predict_shard(ctx: Context, name: str, signature: Signature, batches: Iterator[InputBatch], results: WriteBehind,
                   errors: Counter, totals: Totals, scratch: Path, *, progress: str, output: str) -> None:
    """Predict every batch of one input file, writing result lines in input order as they come.

    PREDICT_IN_FLIGHT batches are in TensorFlow at once. One call alone leaves cores idle
    between its ops; calls side by side, each op on one thread (the service's default
    intra-op setting), ran ~1.4x as many instances/s as TensorFlow's defaults one call
    at a time on 2 cores (README: Benchmarks).
    """
    cancel = ctx.cancel_event(name)
    last_report = time.monotonic()
    in_flight: deque[tuple[InputBatch, Future]] = deque()

    def finish_oldest() -> None:
        nonlocal last_report
        batch, future = in_flight.popleft()
        rows, batch_errors = future.result()
        errors.update(batch.read_errors)
        errors.update(batch_errors)
        if rows:
            results.write_rows(rows)
        ctx.crash.reach("batch.predicting")
        totals.predictions += len(rows)
        totals.errors += len(batch.read_errors) + len(batch.instances) - len(rows)
        if time.monotonic() - last_report >= PROGRESS_EVERY_S:
            last_report = time.monotonic()
            revise(ctx, name, predictionOutput=totals.output(output))
            log.info("job %s: %d predictions, %d errors so far (%s)", name, totals.predictions, totals.errors,
                     progress)

    # Leaving the block waits for calls still running, so the scratch directory outlives them.
    with ThreadPoolExecutor(PREDICT_IN_FLIGHT, thread_name_prefix="batch-predict") as pool:
        for batch in batches:
            if cancel.is_set():
                raise JobCancelled()
            if ctx.stopping.is_set():
                raise ServiceStopping()
            in_flight.append((batch, pool.submit(_predict_counted, signature, batch, scratch)))
            if len(in_flight) == PREDICT_IN_FLIGHT:
                finish_oldest()
        while in_flight:
            finish_oldest()


def _predict_counted(signature: Signature, batch: InputBatch, scratch: Path) -> tuple[list[dict], Counter]:
    """One batch's rows and its own error counts (merged by the consumer, so no Counter is shared)."""
    errors: Counter = Counter()
    rows = _predict_batch(signature, batch, errors, scratch) if batch.instances else []
    return rows, errors


def resume(ctx: Context) -> None:
    """After a restart: interrupted jobs run again from the start (their earlier shards are deleted first)."""
    for job in ctx.store.list("job"):
        name = job["_name"]
        if "trainingInput" in job:
            continue  # training.resume's
        if transition(ctx, name, ("CANCELLING",), state="CANCELLED", endTime=now_rfc3339()) is not None:
            continue
        if transition(ctx, name, ("QUEUED", "PREPARING", "RUNNING"), state="QUEUED") is not None:
            log.info("job %s was %s when the service stopped (attempt %s); queued again", name, job["state"],
                     job.get("_attempts", 0))
            submit(ctx, name)
