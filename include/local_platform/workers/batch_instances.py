"""What both batch engines share: reading instances from input files, predicting a batch, the job's totals.

Input files are read as streams: JSON/TEXT lines in growing chunks, TFRecord
records by their framing. A line over MAX_LINE_BYTES or a record over
MAX_RECORD_BYTES is that line's or record's error, skipped without being held
in memory; a line that is not JSON is its own error. A batch whose tensors fail
to build or whose prediction fails is predicted again one instance at a time,
so one bad instance costs only itself (its message is counted, the rest are
predicted). The local engine (``local_engine``) and the Beam engine
(``beam_engine``) both call these, so both write the same rows and error counts.
"""

from __future__ import annotations

import gzip
import os
import struct
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson

from include.local_platform import gcs
from include.local_platform.errors import PredictionError
from include.local_platform.serving import numeric_json, prediction, tensors
from include.local_platform.serving.saved_model import Signature
from include.local_platform.serving.tensors import PreparedBatch

DEFAULT_BATCH_SIZE = 64  # ml/v1's default; applied here, never written into the stored predictionInput
MAX_LINE_BYTES = 1_572_864  # one JSON/TEXT input line: ml/v1's online request limit (1.5 MB)
MAX_RECORD_BYTES = 16 * 1024 * 1024  # one TFRecord record (a serialized tf.Example)
#: Input bytes one batch may hold, whatever its batchSize: with the batches read ahead and in TensorFlow,
#: what a job holds in flight stays a few times this (ML_ENGINE_BATCH_MAX_BYTES).
MAX_BATCH_BYTES = int(os.environ.get("ML_ENGINE_BATCH_MAX_BYTES", str(32 * 1024 * 1024)))


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


def open_instances(uri: str, data_format: str) -> Iterator[tuple[object, str | None, int]]:
    """(instance, None, bytes) for each good input and (None, error, bytes) for each bad one."""
    text = data_format in ("JSON", "TEXT")
    with gcs.open_read(uri, chunk_size=FIRST_READ_BYTES if text else 4 * 1024 * 1024) as raw:
        yield from read_instances(raw, data_format, sized=True)


def read_instances(raw, data_format: str, *, sized: bool = False, first_line: int = 1) -> Iterator[tuple]:
    """Instances of one input file's byte stream, as both batch engines read them (see `open_instances`):
    (instance, error), or with ``sized`` (instance, error, bytes it took in the input). ``first_line``: the
    number of the stream's first line in its file (a stream that starts mid-file, see `line_ranges`)."""
    def found(instance: object, error: str | None, size: int) -> tuple:
        return (instance, error, size) if sized else (instance, error)

    if data_format in ("JSON", "TEXT"):
        for number, line in enumerate(_lines(raw), start=first_line):
            if line is None:
                yield found(None, f"Input line {number} is longer than the limit of {MAX_LINE_BYTES} bytes.", 0)
                continue
            if not line.strip():
                continue
            try:
                yield found(numeric_json.loads(line), None, len(line))
            except orjson.JSONDecodeError as error:
                yield found(None, f"Failed to parse input line {number} as JSON: {error.__class__.__name__}", 0)
        return
    stream = gzip.GzipFile(fileobj=raw) if data_format == "TF_RECORD_GZIP" else raw
    try:
        for number, record in enumerate(_records(stream), start=1):
            if record is None:
                yield found(None, f"TFRecord record {number} is longer than the limit of {MAX_RECORD_BYTES} "
                            "bytes.", 0)
            else:
                yield found(record, None, len(record))
    except (ValueError, OSError, EOFError) as error:
        yield found(None, f"Corrupt TFRecord input: {error}", 0)


def line_ranges(stream, range_bytes: int, chunk_size: int = 4 * 1024 * 1024) -> Iterator[tuple[int, int, int]]:
    """(start, end, first line number) of consecutive runs of whole lines of about ``range_bytes`` each, so
    readers can each take one run of a JSON/TEXT file and still number its lines as the whole file does."""
    start, first_line, position, lines = 0, 1, 0, 0  # lines: newlines between start and position
    while chunk := stream.read(chunk_size):
        cut = chunk.rfind(b"\n") + 1
        if cut and position + cut - start >= range_bytes:
            counted = chunk.count(b"\n", 0, cut)
            yield start, position + cut, first_line
            first_line += lines + counted
            start, lines = position + cut, chunk.count(b"\n", cut)
        else:
            lines += chunk.count(b"\n")
        position += len(chunk)
    if position > start:
        yield start, position, first_line


class ByteWindow:
    """``stream`` read from ``start`` for at most ``length`` bytes (one of `line_ranges`' runs)."""

    def __init__(self, stream, start: int, length: int):
        stream.seek(start)
        self._stream, self._left = stream, length

    def read(self, size: int = -1) -> bytes:
        size = self._left if size < 0 else min(size, self._left)
        data = self._stream.read(size) if size else b""
        self._left -= len(data)
        return data


def batches(items: Iterable[tuple[object, str | None, int]], size: int,
            max_bytes: int = MAX_BATCH_BYTES) -> Iterator[list[tuple[object, str | None]]]:
    """(instance, error) lists of at most ``size`` instances and, past the first, at most ``max_bytes`` of
    input: a batch size of thousands over megabyte lines cannot hold gigabytes in flight."""
    batch: list = []
    weight = 0
    for instance, error, nbytes in items:
        if batch and weight + nbytes > max_bytes:
            yield batch
            batch, weight = [], 0
        batch.append((instance, error))
        weight += nbytes
        if len(batch) == size:
            yield batch
            batch, weight = [], 0
    if batch:
        yield batch


@dataclass
class InputBatch:
    """One batch as read: the good instances, the read errors, and (if they converted) their tensors."""

    instances: list
    read_errors: list[str]
    prepared: PreparedBatch | None


def prepare_batches(items: Iterator[list], signature: Signature, scratch: Path) -> Iterator[InputBatch]:
    for batch in items:
        good = [instance for instance, error in batch if error is None]
        prepared = None
        if good:
            try:
                prepared = tensors.prepare(signature, good, scratch)
            except PredictionError:
                prepared = None  # isolated one by one by the consumer
        yield InputBatch(good, [error for _, error in batch if error is not None], prepared)


def predict_batch(signature: Signature, batch: InputBatch, errors: Counter, staging: Path) -> list[dict]:
    """Predict a batch; on an instance-content error, isolate the bad instances one by one."""
    if batch.prepared is not None:
        try:
            return prediction.run(signature, batch.prepared)
        except PredictionError:
            pass
    rows = []
    for instance in batch.instances:
        try:
            rows.extend(prediction.predict(signature, [instance], staging))
        except PredictionError as error:
            errors[str(error)] += 1
    return rows


def predict_instances(signature: Signature, instances: list, staging: Path | None) -> tuple[list[dict], Counter]:
    """One batch the way the local engine predicts it: rows of the good instances, error messages counted."""
    errors: Counter = Counter()
    prepared = next(prepare_batches(iter([[(instance, None) for instance in instances]]), signature, staging))
    return predict_batch(signature, prepared, errors, staging), errors


Outcome = tuple[dict | None, str | None]


def predict_outcomes(signature: Signature, instances: list, staging: Path | None) -> list[Outcome]:
    """(row, None) or (None, error) for each instance, in order: the whole batch at once, one by one if it fails
    (Vertex AI's batch output pairs every instance with its prediction or its error)."""
    try:
        return [(row, None) for row in prediction.predict(signature, instances, staging)]
    except PredictionError:
        pass
    outcomes: list[Outcome] = []
    for instance in instances:
        try:
            outcomes.append((prediction.predict(signature, [instance], staging)[0], None))
        except PredictionError as error:
            outcomes.append((None, str(error)))
    return outcomes
