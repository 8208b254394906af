"""The local batch engine: one job's input files predicted in this process, results streamed to GCS.

Memory stays bounded whatever the input size: inputs are read as streams, parsed
one batch ahead in a reader thread (so parsing overlaps TensorFlow), and outputs
are written as resumable uploads by a writer thread. Outputs are, as ml/v1 wrote
them, one ``prediction.results-NNNNN-of-MMMMM`` (JSON lines) and one
``prediction.errors_stats-NNNNN-of-MMMMM`` per input file; each errors_stats line
is ``('error message', count)``.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from include.local_platform import gcs
from include.local_platform.context import Context
from include.local_platform.serving.numeric_json import dumps
from include.local_platform.serving.saved_model import Signature
from include.local_platform.workers.batch_instances import (
    InputBatch,
    JobCancelled,
    ServiceStopping,
    Totals,
    batch_size,
    batches,
    open_instances,
    predict_batch,
    prepare_batches,
)

log = logging.getLogger(__name__)
PROGRESS_EVERY_S = 5.0
#: Batches in TensorFlow at once: one per usable core, at least two (see _predict_shard).
PREDICT_IN_FLIGHT = max(2, len(os.sched_getaffinity(0)))


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


def run_shard(ctx: Context, name: str, signature: Signature, uri: str, prediction_input: dict, shard: int,
              shards: int, totals: Totals, scratch: Path) -> None:
    """One input file -> its results and errors_stats shard (``shard`` of ``shards``)."""
    output = prediction_input["outputPath"].rstrip("/")
    suffix = f"{shard:05d}-of-{shards:05d}"
    errors: Counter = Counter()
    stop_reading = threading.Event()
    scratch.mkdir(parents=True, exist_ok=True)
    prepared = prepare_batches(batches(open_instances(uri, prediction_input["dataFormat"]),
                                       batch_size(prediction_input)), signature, scratch)
    try:
        with gcs.open_write(f"{output}/prediction.results-{suffix}", binary=True) as writer:
            results = WriteBehind(writer, after_write=lambda: ctx.crash.reach("batch.uploading"))
            try:
                _predict_shard(ctx, name, signature, _read_ahead(prepared, stop_reading), results, errors, totals,
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
    at a time on 2 cores (docs/benchmarks.md).
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
            ctx.store.revise(name, predictionOutput=totals.output(output))
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
    rows = predict_batch(signature, batch, errors, scratch) if batch.instances else []
    return rows, errors
