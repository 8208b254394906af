"""The beam batch engine: a batch prediction job as an Apache Beam pipeline built on RunInference.

Hosted ml/v1 ran batch prediction as Dataflow pipelines; this engine does the
same, so one `jobs.create` runs on Beam's DirectRunner here and on Dataflow,
Flink or Spark at scale (runner and options from ML_ENGINE_BEAM_OPTIONS).

The pipeline reuses the local engine's code, not a copy of it: input files are
read by `batch_instances.read_instances` (same line/record framing and error messages),
instances are predicted by `batch_instances.predict_instances` (same tensor conversion,
same one-by-one isolation of a failing instance) and rows are encoded by
`numeric_json.dumps`. So both engines write the same rows and error counts into the
same files: one `prediction.results-SSSSS-of-NNNNN` and one
`prediction.errors_stats-SSSSS-of-NNNNN` per input file, through Beam's own
sharded text writer.

Job state stays in `batch.run_job` (attempts, stale shards, final states); this
module runs the pipeline, maps cancel and shutdown onto it and reports Beam's
metrics as the job's counts.
"""

from __future__ import annotations

import functools
import logging
import os
import queue
import re
import shlex
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import apache_beam as beam
from apache_beam.io import fileio, textio
from apache_beam.io.filesystem import CompressionTypes
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter
from apache_beam.ml.inference.base import ModelHandler, RunInference
from apache_beam.options.pipeline_options import (
    DirectOptions,
    GoogleCloudOptions,
    PipelineOptions,
    SetupOptions,
    StandardOptions,
    WorkerOptions,
)

from include.local_platform import gcs
from include.local_platform.context import Context
from include.local_platform.resources import artifacts, models
from include.local_platform.serving.numeric_json import dumps
from include.local_platform.serving.saved_model import LoadedModel, Signature
from include.local_platform.workers import batch_instances, beam_gcs
from include.local_platform.workers.local_engine import PREDICT_IN_FLIGHT

log = logging.getLogger(__name__)
METRICS_NAMESPACE = "ml_engine_batch"
ERRORS = "errors"
SHARD_TEMPLATE = "-SSSSS-of-NNNNN"  # Beam's template for ml/v1's `-00000-of-00002`
#: Beam's temporary folder of one sharded write, and an object in it: ``beam-temp-<prefix>-<uuid>/<file>``.
BEAM_TEMP = re.compile(r"(beam-temp-prediction\.(results|errors_stats)-[0-9a-f]+)/[^/]+$")
DIRECT_RUNNERS = ("DirectRunner", "SwitchingDirectRunner")
CANCEL_POLL_S = 0.2
#: With worker processes, a JSON/TEXT input is read in runs of about this many bytes, one worker each.
RANGE_BYTES = 1024 * 1024
#: Signatures the service has loaded already, for pipelines that run in its own process (DirectRunner
#: in_memory): their workers use the service's model instead of loading a second copy.
_IN_PROCESS_SIGNATURES: dict[str, Signature] = {}


class PipelineCancelled(Exception):
    """Raised inside a DirectRunner worker when the job's cancel marker appears."""


def _check_marker(marker: str) -> None:
    if marker and os.path.exists(marker):
        raise PipelineCancelled("the job was cancelled")


class ReadInstances(beam.DoFn):
    """One input file -> its instances; a bad line or record goes to the `errors` output (never fails)."""

    def __init__(self, data_format: str, cancel_marker: str):
        self._data_format = data_format
        self._cancel_marker = cancel_marker
        self._errors = Metrics.counter(METRICS_NAMESPACE, "errors")

    def process(self, readable: fileio.ReadableFile):
        # Raw bytes: TF_RECORD_GZIP is inflated by read_instances, as in the local engine.
        with readable.open(compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            yield from self._outputs(batch_instances.read_instances(raw, self._data_format))

    def _outputs(self, found):
        for count, (instance, error) in enumerate(found):
            if count % 4096 == 0:
                _check_marker(self._cancel_marker)
            if error is None:
                yield instance
            else:
                self._errors.inc()
                yield beam.pvalue.TaggedOutput(ERRORS, error)


class SplitLines(beam.DoFn):
    """One JSON/TEXT input file -> (path, start, end, first line) runs of whole lines of about RANGE_BYTES:
    only these cross to the workers, which read their runs themselves (``ReadRange``)."""

    def __init__(self, cancel_marker: str):
        self._cancel_marker = cancel_marker

    def process(self, readable: fileio.ReadableFile):
        path = readable.metadata.path
        with readable.open(compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            for start, end, first_line in batch_instances.line_ranges(raw, RANGE_BYTES):
                _check_marker(self._cancel_marker)
                yield path, start, end, first_line


class ReadRange(ReadInstances):
    """One run of lines (``SplitLines``) -> its instances, numbered as in the whole file; errors as there."""

    def process(self, line_range: tuple):
        path, start, end, first_line = line_range
        with FileSystems.open(path, compression_type=CompressionTypes.UNCOMPRESSED) as raw:
            window = batch_instances.ByteWindow(raw, start, end - start)
            yield from self._outputs(batch_instances.read_instances(window, self._data_format,
                                                                    first_line=first_line))


class SignatureModelHandler(ModelHandler[Any, tuple, Signature]):
    """RunInference's view of an ml/v1 version: its SavedModel signature, predicted as the service does.

    Each result is ("row", bytes) for a predicted instance (one JSON line) or
    ("error", message) for an instance the model refused.
    """

    def __init__(self, *, model_uri: str, local_path: str, signature_name: str | None, batch_size: int,
                 in_process_key: str, cancel_marker: str, calls_in_flight: int = 1):
        self._calls_in_flight = calls_in_flight
        self._model_uri = model_uri
        self._local_path = local_path
        self._signature_name = signature_name
        self._batch_size = batch_size
        self._in_process_key = in_process_key
        self._cancel_marker = cancel_marker

    def load_model(self) -> Signature:
        """The service's own signature in its process; else the SavedModel from this machine or from GCS."""
        signature = _IN_PROCESS_SIGNATURES.get(self._in_process_key)
        if signature is not None:
            return signature
        path = Path(self._local_path) if self._local_path else None
        if path is None or not path.is_dir():
            path = Path(tempfile.mkdtemp(prefix="ml-engine-model-"))
            if gcs.download_prefix(self._model_uri, path, max_files=1000) == 0:
                raise batch_instances.JobFailed(f"Model directory {self._model_uri} is empty or does not exist.")
        return LoadedModel(path).signature(self._signature_name)

    def run_inference(self, batch_: list, model: Signature, inference_args: dict | None = None) -> list[tuple]:
        """One batch's outcomes. In the service's own process its slices are in TensorFlow side by side,
        one per core, as the local engine keeps its batches (one intra-op thread per call leaves the
        other cores idle otherwise)."""
        _check_marker(self._cancel_marker)
        instances = list(batch_)
        step = -(-len(instances) // self._calls_in_flight)
        slices = [instances[start:start + step] for start in range(0, len(instances), step)]
        if len(slices) == 1:
            outcomes = [batch_instances.predict_instances(model, instances, None)]
        else:
            pool = _slice_pool(self._calls_in_flight)
            outcomes = list(pool.map(lambda part: batch_instances.predict_instances(model, part, None), slices))
        return [("row", dumps(row)) for rows, _ in outcomes for row in rows] + [
            ("error", message) for _, errors in outcomes for message, count in errors.items() for _ in range(count)]

    def batch_elements_kwargs(self) -> dict:
        return {"min_batch_size": self._batch_size, "max_batch_size": self._batch_size}

    def get_num_bytes(self, batch_: list) -> int:
        """Cheap size for RunInference's metrics (its default pickles the whole batch once more)."""
        return sum(len(item) for item in batch_ if isinstance(item, bytes))

    def get_metrics_namespace(self) -> str:
        return METRICS_NAMESPACE


@functools.cache
def _slice_pool(size: int) -> ThreadPoolExecutor:
    """Threads that predict a batch's slices side by side (one pool per process, shared by its jobs)."""
    return ThreadPoolExecutor(size, thread_name_prefix="beam-predict")


class SplitOutcomes(beam.DoFn):
    """("row", line) to the main output, ("error", message) to `errors`; counted in Beam metrics."""

    def __init__(self):
        self._predictions = Metrics.counter(METRICS_NAMESPACE, "predictions")
        self._errors = Metrics.counter(METRICS_NAMESPACE, "errors")

    def process(self, outcome: tuple):
        kind, value = outcome
        if kind == "row":
            self._predictions.inc()
            yield value
        else:
            self._errors.inc()
            yield beam.pvalue.TaggedOutput(ERRORS, value)


def _errors_stats_line(message_count: tuple[str, int]) -> str:
    """One errors_stats line, as the local engine writes it: `('message', count)`."""
    return repr(tuple(message_count))


class BackgroundUpload:
    """A file handle whose bytes a thread of its own writes on, in pieces: the bundle that predicts never
    waits on the upload (GCS's resumable upload sends a chunk per 16 MB, synchronously). At most two
    pieces wait; an upload error is raised at the next write or at ``close``."""

    PIECE_BYTES = 4 * 1024 * 1024

    def __init__(self, handle):
        self._handle, self._pending, self._size, self._error = handle, [], 0, None
        self._pieces: queue.Queue = queue.Queue(maxsize=2)
        self._uploader = threading.Thread(target=self._upload, daemon=True, name="beam-upload")
        self._uploader.start()

    def write(self, data: bytes) -> int:
        self._raise()
        self._pending.append(data)
        self._size += len(data)
        if self._size >= self.PIECE_BYTES:
            self._hand_over(b"".join(self._pending))
        return len(data)

    def close(self) -> None:
        if self._pending:
            self._hand_over(b"".join(self._pending))
        self._pieces.put(None)
        self._uploader.join()
        self._raise()
        self._handle.close()

    def _hand_over(self, piece: bytes | None) -> None:
        self._pending, self._size = [], 0
        while True:
            try:
                self._pieces.put(piece, timeout=CANCEL_POLL_S)
                return
            except queue.Full:
                self._raise()

    def _upload(self) -> None:
        while (piece := self._pieces.get()) is not None:
            if self._error is None:  # after an error, drain so the writer never blocks
                try:
                    self._handle.write(piece)
                except BaseException as error:  # raised in the writing thread
                    self._error = error

    def _raise(self) -> None:
        if self._error is not None:
            raise self._error


class _BackgroundTextSink(textio._TextSink):
    """Beam's text sink, each shard written through ``BackgroundUpload``."""

    def open(self, temp_path):
        return BackgroundUpload(super().open(temp_path))


class WriteTextInBundles(beam.PTransform):
    """``WriteToText`` with ``num_shards`` files, each bundle writing its own as its elements come.

    Beam writes a fixed number of shards through a GroupByKey of every element: in the
    DirectRunner all results are buffered and encoded once more, and only written after
    the last prediction (at 65,536 heatmap rows, a third of the job's time: docs/benchmarks.md);
    with worker processes every row also travels to the runner and back. Here each bundle
    writes its own file in the same stage as the predictions (in the worker that predicted
    them); more files than ``num_shards`` are composed into ``num_shards`` on the storage
    side (``_merge_into_shards``), fewer get empty ones from Beam's own finalize step, as
    ``WriteToText(num_shards=...)`` does on a small input. So the files and their names are
    those ``WriteToText`` writes. Built from Beam's ``WriteImpl`` parts.
    """

    def __init__(self, file_path_prefix: str, num_shards: int):
        super().__init__()
        self._sink = _BackgroundTextSink(file_path_prefix, shard_name_template=SHARD_TEMPLATE)
        self._num_shards = num_shards

    def expand(self, pcoll):
        from apache_beam.io import iobase
        from apache_beam.pvalue import AsIter, AsSingleton
        from apache_beam.transforms import window

        sink = self._sink
        do_once = pcoll.pipeline | "DoOnce" >> beam.Create([None])
        init = do_once | "InitializeWrite" >> beam.Map(lambda _, sink: sink.initialize_write(), sink)
        written = (pcoll
                   | beam.WindowInto(window.GlobalWindows())
                   | "WriteBundles" >> beam.ParDo(iobase._WriteBundleDoFn(sink), AsSingleton(init))
                   | "Pair" >> beam.Map(lambda result: (None, result))
                   | beam.GroupByKey()
                   | "Extract" >> beam.FlatMap(lambda pair: pair[1]))
        merged = do_once | "MergeIntoShards" >> beam.FlatMap(_merge_into_shards, AsIter(written), self._num_shards)
        pre_finalize = do_once | "PreFinalize" >> beam.FlatMap(iobase._pre_finalize, sink, AsSingleton(init),
                                                               AsIter(merged))
        return do_once | "FinalizeWrite" >> beam.FlatMap(iobase._finalize_write, sink, AsSingleton(init),
                                                         AsIter(merged), self._num_shards,
                                                         AsSingleton(pre_finalize))


def _merge_into_shards(_, written, num_shards: int) -> list[str]:
    """The bundles' temporary files as at most ``num_shards`` (each a concatenation of whole bundle files, in
    Beam's temporary folder; the parts are deleted); GCS composes them without the bytes passing through here."""
    written = sorted(written)
    if len(written) <= num_shards:
        return written
    merged = []
    for shard in range(num_shards):
        group = written[shard::num_shards]
        target = f"{group[0].rsplit('/', 1)[0]}/merged-{shard:05d}"
        gcs.compose(group, target)  # outputPath is a gs:// URI (prediction_input's validation)
        FileSystems.delete(group)
        merged.append(target)
    log.info("Composed %d bundle files into %d shards", len(written), num_shards)
    return merged


def build_pipeline(pipeline: beam.Pipeline, *, inputs: list[str], data_format: str, output_path: str,
                   handler: SignatureModelHandler, cancel_marker: str, reshuffle: bool) -> None:
    """Read -> parse (bad input to a dead-letter output) -> RunInference -> sharded results and errors_stats.

    With ``reshuffle`` (worker processes) one file's work is spread over every worker: runs of JSON/TEXT lines,
    each read by the worker that takes it, or TFRecord records (their framing has no line to cut at); either
    way each bundle writes its results where it predicted them (``WriteTextInBundles``).
    """
    shards = len(inputs)
    files = (pipeline
             | "InputFiles" >> beam.Create(inputs)
             | "Match" >> fileio.MatchAll(fileio.EmptyMatchTreatment.DISALLOW)  # a vanished input fails, as locally
             | "Open" >> fileio.ReadMatches(compression=CompressionTypes.UNCOMPRESSED))
    by_lines = reshuffle and data_format in ("JSON", "TEXT")  # each worker reads runs of lines of its own
    if by_lines:
        files = files | "SplitLines" >> beam.ParDo(SplitLines(cancel_marker)) | "Spread" >> beam.Reshuffle()
    reader = (ReadRange if by_lines else ReadInstances)(data_format, cancel_marker)
    parsed = files | "ReadInstances" >> beam.ParDo(reader).with_outputs(ERRORS, main="instances")
    instances = parsed.instances
    if reshuffle and not by_lines:  # spread one file's records over every worker
        instances = instances | "Spread" >> beam.Reshuffle()
    outcomes = (instances
                | "Predict" >> RunInference(handler)
                | "Split" >> beam.ParDo(SplitOutcomes()).with_outputs(ERRORS, main="rows"))
    _ = outcomes.rows | "WriteResults" >> WriteTextInBundles(f"{output_path}/prediction.results", shards)
    _ = ((parsed[ERRORS], outcomes[ERRORS])
         | "AllErrors" >> beam.Flatten()
         | "CountErrors" >> beam.combiners.Count.PerElement()
         | "ErrorLines" >> beam.Map(_errors_stats_line)
         | "WriteErrorsStats" >> beam.io.WriteToText(f"{output_path}/prediction.errors_stats", num_shards=shards,
                                                     shard_name_template=SHARD_TEMPLATE))


def pipeline_options(beam_options: str, prediction_input: dict, job_id: str) -> PipelineOptions:
    """The service's options plus the job's: maxWorkerCount -> max workers, region -> region, as ml/v1 did."""
    options = PipelineOptions(shlex.split(beam_options or ""))
    if prediction_input.get("maxWorkerCount"):
        options.view_as(WorkerOptions).max_num_workers = int(prediction_input["maxWorkerCount"])
    if prediction_input.get("region"):
        options.view_as(GoogleCloudOptions).region = prediction_input["region"]
    cloud = options.view_as(GoogleCloudOptions)
    if not cloud.job_name:
        cloud.job_name = re.sub(r"[^a-z0-9-]", "-", f"ml-batch-{job_id}".lower())[:63].rstrip("-")
    setup = options.view_as(SetupOptions)
    setup.beam_plugins = sorted(set(setup.beam_plugins or []) | {beam_gcs.__name__})
    return options


def runner_name(options: PipelineOptions) -> str:
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    return runner if isinstance(runner, str) else type(runner).__name__


def warm() -> None:
    """Import what a pipeline needs beyond this module (the FnApiRunner, Beam's GCS IO) before the first job."""
    started = time.monotonic()
    from apache_beam.io.gcp import gcsio  # noqa: F401
    from apache_beam.runners.portability.fn_api_runner import fn_runner  # noqa: F401
    from apache_beam.runners.portability.portable_runner import JobServiceHandle  # noqa: F401

    log.info("Apache Beam %s ready in %.1f s", beam.__version__, time.monotonic() - started)


def _direct_runner(options: PipelineOptions):
    """Beam's DirectRunner minus its Prism attempt (Prism downloads a Go binary at run time): the FnApiRunner,
    configured as SwitchingDirectRunner configures it (direct_running_mode, direct_num_workers honoured)."""
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle

    encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
    return fn_runner.FnApiRunner(provision_info=fn_runner.ExtendedProvisionInfo(
        beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)))


def _model_source(ctx: Context, prediction_input: dict, scratch: Path) -> tuple[str, str]:
    """(gs:// URI, directory on this machine) of the SavedModel the job predicts with."""
    if prediction_input.get("uri"):
        return prediction_input["uri"], str(scratch / "model")  # where batch._load_signature put it
    version = models.resolve_for_prediction(ctx, prediction_input.get("versionName")
                                            or prediction_input["modelName"])
    return version.get("deploymentUri", ""), str(artifacts.local_dir(ctx, version)) if version.get("_path") else ""


def _delete_beam_temp(output_path: str) -> None:
    """Beam's temporary shard folders an interrupted run left under the output path: only what is inside a
    ``beam-temp-...`` folder, never an object beside them (a file merely named like one is left alone)."""
    prefix = output_path.rstrip("/") + "/"
    folders = {match[1] for uri in gcs.list_objects(prefix) if (match := BEAM_TEMP.match(uri[len(prefix):]))}
    for folder in sorted(folders):
        gcs.delete_matching(prefix + folder, re.compile(r".*"))


def console_url(options: PipelineOptions, job_id: str) -> str:
    cloud = options.view_as(GoogleCloudOptions)
    return (f"https://console.cloud.google.com/dataflow/jobs/{cloud.region}/{job_id}"
            f"?project={cloud.project}")


def counters(result) -> dict[str, int]:
    """The pipeline's prediction and error counts from Beam metrics (committed where the runner has them)."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(METRICS_NAMESPACE))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def _pipeline_error(error: BaseException) -> str:
    """The line of a pipeline failure that says what went wrong (runners wrap worker errors in tracebacks)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    named = [line for line in lines if re.match(r"^[\w.]+(Error|Exception|Failed|Cancelled): ", line)]
    return ((named or lines or [type(error).__name__])[-1])[:800]


def run_pipeline(ctx: Context, name: str, prediction_input: dict, inputs: list[str], totals: batch_instances.Totals,
                 scratch: Path, signature: Signature) -> None:
    """Run the job's pipeline to its end, raising batch_instances.JobCancelled, ServiceStopping or JobFailed as the
    local engine does; `totals` gets Beam's counts.

    :param signature: the signature the service loaded, used by pipelines running in its own process.
    """
    output_path = prediction_input["outputPath"].rstrip("/")
    job_id = name.rsplit("/", 1)[-1]
    options = pipeline_options(ctx.beam_options, prediction_input, job_id)
    runner = runner_name(options)
    direct = runner in DIRECT_RUNNERS
    scratch.mkdir(parents=True, exist_ok=True)
    cancel_marker = str(scratch / f"cancel-{uuid.uuid4().hex}") if direct else ""
    model_uri, local_path = _model_source(ctx, prediction_input, scratch)
    key = f"{name}#{uuid.uuid4().hex}"
    mode = options.view_as(DirectOptions).direct_running_mode if direct else ""
    if direct and mode == "in_memory":
        _IN_PROCESS_SIGNATURES[key] = signature
    handler = SignatureModelHandler(model_uri=model_uri, local_path=local_path if direct else "",
                                    signature_name=prediction_input.get("signatureName"),
                                    batch_size=batch_instances.batch_size(prediction_input), in_process_key=key,
                                    cancel_marker=cancel_marker,
                                    calls_in_flight=PREDICT_IN_FLIGHT if direct and mode == "in_memory" else 1)
    _delete_beam_temp(output_path)
    pipeline = beam.Pipeline(runner=_direct_runner(options) if direct else runner, options=options)
    build_pipeline(pipeline, inputs=inputs, data_format=prediction_input["dataFormat"], output_path=output_path,
                   handler=handler, cancel_marker=cancel_marker, reshuffle=not (direct and mode == "in_memory"))
    ctx.store.revise(name, _batchEngine="beam", _beamRunner=runner + (f" ({mode})" if direct else ""))
    log.info("job %s: Beam pipeline on %s%s", name, runner, f" ({mode})" if direct else "")
    outcome: dict[str, Any] = {}

    def execute() -> None:
        try:
            outcome["result"] = result = pipeline.run()
            if not direct:
                job = result.job_id() if callable(getattr(result, "job_id", None)) else ""
                if job:
                    ctx.store.revise(name, _beamJobId=job, _beamConsoleUrl=console_url(options, job)
                           if runner == "DataflowRunner" else "")
            result.wait_until_finish()
        except BaseException as error:  # handed to the job's thread
            outcome["error"] = error

    worker = threading.Thread(target=execute, daemon=True, name=f"beam-{job_id}")
    worker.start()
    stop_asked, cancelled = "", None
    try:
        while worker.is_alive():
            worker.join(CANCEL_POLL_S)
            if not stop_asked and (ctx.cancel_event(name).is_set() or ctx.stopping.is_set()):
                stop_asked = "cancel" if ctx.cancel_event(name).is_set() else "stop"
                if cancel_marker:
                    Path(cancel_marker).touch()  # DirectRunner: its workers stop at their next batch
            result = outcome.get("result")
            if stop_asked and result is not None and cancelled is not result:  # also once submission ends
                cancelled = result
                _cancel_through_runner(result, name)
    finally:
        _IN_PROCESS_SIGNATURES.pop(key, None)
    if stop_asked == "cancel" or ctx.cancel_event(name).is_set():
        raise batch_instances.JobCancelled()
    if stop_asked == "stop" or ctx.stopping.is_set():
        raise batch_instances.ServiceStopping()
    result = outcome.get("result")
    if result is not None:
        counts = counters(result)
        totals.predictions = counts.get("predictions", 0)
        totals.errors = counts.get("errors", 0)
    if "error" in outcome:
        raise batch_instances.JobFailed(f"The Beam pipeline failed: {_pipeline_error(outcome['error'])}")
    state = str(getattr(result, "state", "DONE"))
    if "DONE" not in state:
        raise batch_instances.JobFailed(f"The Beam pipeline ended {state}.")


def _cancel_through_runner(result, name: str) -> None:
    """Cancel a submitted pipeline (Dataflow, Flink, Spark); a runner that cannot is waited for."""
    try:
        result.cancel()
    except Exception as error:  # a runner that cannot cancel (or already ended) must not crash the job thread
        log.info("job %s: the runner cannot cancel (%s); waiting for the workers to stop", name, error)
