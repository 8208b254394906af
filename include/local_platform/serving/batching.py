"""Server-side batching: concurrent predict calls on one signature become one TensorFlow call.

TensorFlow Serving's batching (what Vertex AI's prebuilt TF containers run), with its
knobs: ``max_batch_size`` (instances per call), ``batch_timeout_micros`` (how long an
idle queue waits for more before it runs) and ``num_batch_threads`` (batches in flight).

Each signature has one queue (``batcher_for``). A call's inputs are prepared and checked
alone first (``tensors.prepare``), so a malformed call fails by itself before it joins a
batch. A queue runs as soon as the event loop has taken in every request that arrived
together (``call_soon``): a lone caller never waits for company, and calls that arrive
while batches are in TensorFlow gather for the next one. A lone call on a fast model runs
on the event loop, as before batching; a batch of several, or any call of a model measured
slower than ``INLINE_BUDGET_S``, runs in a batch thread, so the loop keeps reading
requests meanwhile. When a batch ends, the next one starts before its callers are
answered. Each caller gets exactly its own rows, in order. When TensorFlow refuses the
joined batch (one call's values, e.g. an image that does not decode), every call runs
again alone, so each gets its own answer or its own error.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from include.local_platform.errors import PredictionError
from include.local_platform.serving import prediction
from include.local_platform.serving.saved_model import Signature
from include.local_platform.serving.tensors import PreparedBatch

log = logging.getLogger("local_platform")
#: A call on the event loop stalls every other request while it runs: a signature whose lone call took
#: longer than this runs in batch threads from then on (measured, not guessed: most models take ~1-3 ms).
INLINE_BUDGET_S = float(os.environ.get("ML_ENGINE_INLINE_BUDGET_MS", "10")) / 1000
#: How often a busy queue logs how it batched.
REPORT_EVERY_S = 10.0


@dataclass(frozen=True)
class BatchingOptions:
    """TensorFlow Serving's batching knobs (service options ``--max-batch-size`` and so on)."""

    max_batch_size: int = 16  # instances per TensorFlow call; a larger call runs alone
    batch_timeout_micros: int = 0  # an idle queue holding fewer instances waits this long for more
    num_batch_threads: int = 2 * (os.cpu_count() or 1)  # batches in TensorFlow at once, all signatures

    def __post_init__(self):
        if self.max_batch_size < 1 or self.batch_timeout_micros < 0 or self.num_batch_threads < 1:
            raise ValueError(f"batching options out of range: {self} (max_batch_size and num_batch_threads "
                             "at least 1, batch_timeout_micros at least 0)")

    @classmethod
    def from_environment(cls) -> BatchingOptions:
        """The options from ``ML_ENGINE_MAX_BATCH_SIZE``, ``..._BATCH_TIMEOUT_MICROS``, ``..._NUM_BATCH_THREADS``."""
        default, values = cls(), {}
        for option in ("max_batch_size", "batch_timeout_micros", "num_batch_threads"):
            variable = f"ML_ENGINE_{option.upper()}"
            try:
                values[option] = int(os.environ.get(variable) or getattr(default, option))
            except ValueError:
                raise ValueError(f"{variable} must be an integer, got {os.environ[variable]!r}") from None
        return cls(**values)


@dataclass
class _Call:
    batch: PreparedBatch
    answer: asyncio.Future


@dataclass
class _Report:
    """How a queue batched since its last log line."""

    since: float = field(default_factory=time.monotonic)
    calls: int = 0
    batches: int = 0
    largest: int = 0
    reruns: int = 0


@dataclass
class Batcher:
    """The queue of one signature's calls (see the module docstring)."""

    name: str  # the version (and signature) it serves, for the log
    signature: Signature
    options: BatchingOptions
    threads: ThreadPoolExecutor
    slow: bool = False  # measured slower than INLINE_BUDGET_S: every batch runs in a thread
    _queue: deque[_Call] = field(default_factory=deque)
    _in_flight: int = 0
    _scheduled: bool = False
    _report: _Report = field(default_factory=_Report)

    async def predict(self, batch: PreparedBatch) -> list[dict]:
        """This call's rows, from whichever batch it joins (raises PredictionError as ``prediction.run``)."""
        loop = asyncio.get_running_loop()
        call = _Call(batch, loop.create_future())
        self._queue.append(call)
        self._schedule(loop)
        return await call.answer

    def predict_from_thread(self, batch: PreparedBatch, loop: asyncio.AbstractEventLoop) -> list[dict]:
        """``predict`` for a caller on another thread (the gRPC surface's): joins the same queue, blocks."""
        return asyncio.run_coroutine_threadsafe(self.predict(batch), loop).result()

    def note_duration(self, seconds: float) -> None:
        """A lone call's time: over the inline budget, this signature's calls leave the event loop."""
        if seconds > INLINE_BUDGET_S and not self.slow:
            self.slow = True
            log.info("%s took %.0f ms to predict one call: its calls run in batch threads from now on",
                     self.name, seconds * 1000)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._scheduled or self._in_flight >= self.options.num_batch_threads:
            return  # a batch in flight takes the queue on when it ends
        self._scheduled = True
        waiting = sum(call.batch.count for call in self._queue)
        if self.options.batch_timeout_micros and self._in_flight == 0 and waiting < self.options.max_batch_size:
            loop.call_later(self.options.batch_timeout_micros / 1e6, self._dispatch, loop)
        else:
            loop.call_soon(self._dispatch, loop)

    def _dispatch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        while self._queue and self._in_flight < self.options.num_batch_threads:
            calls = self._take()
            if len(calls) == 1 and not self.slow and self._in_flight == 0:
                started = time.perf_counter()
                try:
                    outcome = _run(self.signature, calls)
                except Exception as error:  # a bug of ours: the caller answers 500, the queue goes on
                    outcome = [error]
                self.note_duration(time.perf_counter() - started)
                self._answer(calls, outcome)
                continue
            self._in_flight += 1
            loop.create_task(self._in_thread(calls, loop))

    def _take(self) -> list[_Call]:
        """The oldest call and the queued calls that fit ``max_batch_size`` with it and can be joined to it
        (looking past at most ``max_batch_size`` calls that cannot, so a long queue costs no more per batch)."""
        first = self._queue.popleft()
        calls, total, skipped = [first], first.batch.count, []
        while self._queue and total < self.options.max_batch_size and len(skipped) < self.options.max_batch_size:
            call = self._queue.popleft()
            if total + call.batch.count > self.options.max_batch_size or not _joinable(self.signature, first, call):
                skipped.append(call)
                continue
            calls.append(call)
            total += call.batch.count
        self._queue.extendleft(reversed(skipped))
        return calls

    async def _in_thread(self, calls: list[_Call], loop: asyncio.AbstractEventLoop) -> None:
        try:
            outcome = await loop.run_in_executor(self.threads, _run, self.signature, calls)
        except Exception as error:  # a bug of ours: every caller of the batch answers 500
            outcome = [error] * len(calls)
        finally:
            self._in_flight -= 1
        if self._queue and not self._scheduled:  # the next batch first: TensorFlow works while these are answered
            self._dispatch(loop)
        self._answer(calls, outcome)

    def _answer(self, calls: list[_Call], outcome: list) -> None:
        for call, result in zip(calls, outcome, strict=True):
            if call.answer.done():
                continue  # the caller went away
            if isinstance(result, BaseException):
                call.answer.set_exception(result)
            else:
                call.answer.set_result(result)
        self._record(calls, outcome)

    def _record(self, calls: list[_Call], outcome: list) -> None:
        report = self._report
        report.calls += len(calls)
        report.batches += 1
        report.largest = max(report.largest, sum(call.batch.count for call in calls))
        report.reruns += isinstance(outcome, _Rerun)
        if (elapsed := time.monotonic() - report.since) >= REPORT_EVERY_S:
            log.info("%s: %d predict calls in %d TensorFlow calls in the last %.0f s (largest %d instances%s)",
                     self.name, report.calls, report.batches, elapsed, report.largest,
                     f"; {report.reruns} batches failed joined and ran call by call" if report.reruns else "")
            self._report = _Report()


class _Rerun(list):
    """The outcome of a joined batch TensorFlow refused, rerun call by call."""


def _joinable(signature: Signature, first: _Call, other: _Call) -> bool:
    """Whether two calls' inputs can be joined: each input's shape past the batch axis agrees
    (nothing to compare when the signature fixes them all, the common case)."""
    if signature.fixed_shapes:
        return True
    return all(tensor.shape[1:] == other.batch.feeds[alias].shape[1:] for alias, tensor in first.batch.feeds.items())


def _run(signature: Signature, calls: list[_Call]) -> list:
    """Rows per call, or the exception that call answers with."""
    if len(calls) == 1:
        return [_alone(signature, calls[0].batch)]
    import tensorflow as tf

    joined = PreparedBatch(feeds={alias: tf.concat([call.batch.feeds[alias] for call in calls], axis=0)
                                  for alias in calls[0].batch.feeds},
                           count=sum(call.batch.count for call in calls))
    try:
        rows = prediction.run(signature, joined)
    except PredictionError:  # one call's values: each call alone, so each gets its own answer
        return _Rerun(_alone(signature, call.batch) for call in calls)
    outcome, start = [], 0
    for call in calls:
        outcome.append(rows[start:start + call.batch.count])
        start += call.batch.count
    return outcome


def _alone(signature: Signature, batch: PreparedBatch) -> list[dict] | PredictionError:
    try:
        return prediction.run(signature, batch)
    except PredictionError as error:
        return error


def batcher_for(name: str, signature: Signature, options: BatchingOptions, threads: ThreadPoolExecutor) -> Batcher:
    """The signature's queue, made on first use; it lives and dies with the loaded model."""
    if signature.batcher is None:
        signature.batcher = Batcher(name, signature, options, threads)
    return signature.batcher
