"""The beam batch engine against the local one: same inputs, same rows, counts and errors_stats files.

Both services are real processes on the same GCS emulator; the beam one runs
each job as an Apache Beam pipeline (RunInference) on DirectRunner, in its own
process and with two worker processes (Beam's portability layer: pickled
transforms, one model load per worker).
"""

from __future__ import annotations

import gzip
import json
import time
from collections import Counter

import pytest

from tests.conftest import start_beam_service
from tests.include.local_platform.conftest import PARENT, unique, wait_job, wait_operation
from tests.include.local_platform.workers.test_batch import (
    image_examples,
    prediction_input,
    read_outputs,
    start_job,
    tfrecord,
)

MULTI_PROCESS_OPTIONS = "--direct_running_mode=multi_processing --direct_num_workers=2"


@pytest.fixture(scope="session")
def beam_mp_service(gcs_emulator, tmp_path_factory):
    """The beam engine with two DirectRunner worker processes."""
    handle = start_beam_service(gcs_emulator, tmp_path_factory.mktemp("ml_engine_beam_mp_state"),
                                MULTI_PROCESS_OPTIONS)
    yield handle
    handle.server.stop()


def deploy_on(api, model_uri: str) -> tuple[str, str]:
    """A new model on one service whose version v1 serves `model_uri`; (model name, version name)."""
    model = unique("m_beam")
    api.projects().models().create(parent=PARENT, body={"name": model}).execute()
    operation = api.projects().models().versions().create(
        parent=f"{PARENT}/models/{model}", body={"name": "v1", "deploymentUri": model_uri}).execute()
    assert "error" not in wait_operation(api, operation["name"])
    return f"{PARENT}/models/{model}", f"{PARENT}/models/{model}/versions/v1"


@pytest.fixture(scope="module")
def equivalence_inputs(bucket):
    """Inputs with every kind of outcome: good lines, bad JSON, instances the model refuses, two files,
    TFRecord with a record that is no tf.Example, the same gzipped."""
    root = f"beam-equivalence-{unique('in')}"
    good = [json.dumps({"x": [i, 1], "key": f"k{i}"}) for i in range(30)]
    bucket.blob(f"{root}/json/part-0.json").upload_from_string("\n".join(
        [*good[:17], "{broken json", json.dumps({"x": [-5, 1], "key": "neg"}), "", "[1, 2"]))
    bucket.blob(f"{root}/json/part-1.json").upload_from_string("\n".join(
        [*good[17:], '{"x": [1], "key": "short"}', json.dumps({"x": [-1, 1], "key": "neg2"})]))
    records = [*image_examples([f"r{i}" for i in range(9)]), b"not an example"]
    bucket.blob(f"{root}/tf/in.tfrecord").upload_from_string(tfrecord(records))
    bucket.blob(f"{root}/gz/in.tfrecord.gz").upload_from_string(gzip.compress(tfrecord(records[4:])))
    padded = [json.dumps({"x": [i % 7, 1], "key": f"p{i}"}).replace(", ", "," + " " * 2000, 1) for i in range(1500)]
    for broken in (3, 700, 1499):  # bad lines in the first, a middle and the last run of lines
        padded[broken] = "{broken json"
    padded[1200] = json.dumps({"x": [-3, 1], "key": "refused"})
    bucket.blob(f"{root}/runs/big.json").upload_from_string("\n".join(padded))  # 3 MB: three runs of lines
    return f"gs://{bucket.name}/{root}"


CASES = {  # name -> (model kind, input pattern under the root, dataFormat, extra predictionInput)
    "json_two_files": ("tiny", "json/part-*", "JSON", {"batchSize": 4}),
    "tfrecord": ("images", "tf/in.tfrecord", "TF_RECORD", {"signatureName": "examples", "batchSize": 3}),
    "tfrecord_gzip": ("images", "gz/*.gz", "TF_RECORD_GZIP", {"signatureName": "examples", "batchSize": 2}),
}
#: Worker processes read it apart, in runs of lines of about beam_engine.RANGE_BYTES each.
MULTI_PROCESS_CASES = {"json_runs": ("tiny", "runs/big.json", "JSON", {"batchSize": 16})}


def run_case(api, bucket, source: dict, inputs_root: str, case: str, engine: str) -> dict:
    """One job on one service; its state, counts, rows (sorted JSON), summed errors_stats and file names."""
    _, pattern, data_format, extra = {**CASES, **MULTI_PROCESS_CASES}[case]
    prefix = f"{inputs_root[len('gs://' + bucket.name) + 1:]}-out/{case}-{engine}-{unique('o')}"
    job = wait_job(api, start_job(api, prediction_input(
        source, [f"{inputs_root}/{pattern}"], f"gs://{bucket.name}/{prefix}", data_format, **extra)), timeout=240)
    results, errors, names = read_outputs(bucket, prefix)
    summed: Counter = Counter()
    for message, count in errors:
        summed[message] += count
    return {"state": job["state"], "error": job.get("errorMessage"),
            "counts": (job["predictionOutput"]["predictionCount"], job["predictionOutput"]["errorCount"]),
            "rows": sorted(json.dumps(row, sort_keys=True) for row in results), "errors": dict(summed),
            "names": names}


def assert_same_outputs(local: dict, beam: dict) -> None:
    assert local["state"] == "SUCCEEDED", local
    assert beam == local


@pytest.mark.parametrize("case", sorted(CASES))
def test_beam_in_process_writes_what_the_local_engine_writes(case, ml_api, beam_service, model_uris, bucket,
                                                             equivalence_inputs):
    beam_api = beam_service.build_api()
    kind = CASES[case][0]
    local = run_case(ml_api, bucket, {"versionName": deploy_on(ml_api, model_uris[kind])[1]}, equivalence_inputs,
                     case, "local")
    beam = run_case(beam_api, bucket, {"versionName": deploy_on(beam_api, model_uris[kind])[1]},
                    equivalence_inputs, case, "beam")
    assert_same_outputs(local, beam)
    assert int(local["counts"][1]) > 0 and local["errors"]  # every case has failures to compare


@pytest.mark.slow
def test_beam_on_two_worker_processes_writes_what_the_local_engine_writes(ml_api, beam_mp_service, model_uris,
                                                                         bucket, equivalence_inputs):
    """Beam's portability layer: transforms pickled to two SDK worker processes, each loading the model."""
    beam_api = beam_mp_service.build_api()
    for case in ("json_two_files", "json_runs", "tfrecord_gzip"):  # each job starts two workers importing TF
        kind = {**CASES, **MULTI_PROCESS_CASES}[case][0]
        source = {"uri": model_uris[kind]}  # the model comes from GCS in the workers
        local = run_case(ml_api, bucket, source, equivalence_inputs, case, "local")
        beam = run_case(beam_api, bucket, source, equivalence_inputs, case, "beam-mp")
        assert_same_outputs(local, beam)


def test_beam_job_failures_and_page(beam_service, model_uris, bucket, gcs_prefix):
    """The job page names the engine and the runner; jobs that cannot run end FAILED with the reason."""
    import urllib.request

    api = beam_service.build_api()
    bucket.blob(f"{gcs_prefix}/in.json").upload_from_string("[1, 2, 3]\n[4, 5, 6]\n")
    output = f"gs://{bucket.name}/{gcs_prefix}/out"
    job = wait_job(api, start_job(api, prediction_input({"uri": model_uris["single"]},
                                                        [f"gs://{bucket.name}/{gcs_prefix}/in.json"], output)))
    assert job["state"] == "SUCCEEDED" and job["predictionOutput"]["predictionCount"] == "2", job
    request = urllib.request.Request(f"{beam_service.url}ui/{PARENT}/jobs/{job['jobId']}",
                                     headers=beam_service.headers)
    with urllib.request.urlopen(request, timeout=30) as response:
        page = response.read().decode()
    assert "Batch engine" in page and "beam" in page and "DirectRunner" in page
    job = wait_job(api, start_job(api, prediction_input({"uri": model_uris["single"]},
                                                        [f"gs://{bucket.name}/{gcs_prefix}/nope*"], output)))
    assert job["state"] == "FAILED" and "No input files match" in job["errorMessage"]
    job = wait_job(api, start_job(api, prediction_input({"uri": f"gs://{bucket.name}/{gcs_prefix}/no-model"},
                                                        [f"gs://{bucket.name}/{gcs_prefix}/in.json"], output)))
    assert job["state"] == "FAILED" and "no-model is empty or does not exist" in job["errorMessage"], job


def _big_input(bucket, path: str, lines: int) -> str:
    bucket.blob(path).upload_from_string("\n".join(json.dumps({"x": [i % 7, 1], "key": str(i)})
                                                   for i in range(lines)))
    return f"gs://{bucket.name}/{path}"


def test_beam_cancel_cancels_the_pipeline(beam_service, model_uris, bucket, gcs_prefix):
    api = beam_service.build_api()
    _, version = deploy_on(api, model_uris["tiny"])
    source = _big_input(bucket, f"{gcs_prefix}/big.json", 40_000)
    job_id = start_job(api, prediction_input({"versionName": version}, [source],
                                             f"gs://{bucket.name}/{gcs_prefix}/out", batchSize=1))
    wait_job(api, job_id, states=("RUNNING",))
    time.sleep(1)
    api.projects().jobs().cancel(name=f"{PARENT}/jobs/{job_id}", body={}).execute()
    job = wait_job(api, job_id, timeout=60)
    assert job["state"] == "CANCELLED", job
    assert "errorMessage" not in job


@pytest.mark.slow
def test_beam_restart_reruns_the_job_without_old_shards(beam_service, model_uris, bucket, gcs_prefix):
    """Killed while its pipeline runs: after the restart the job runs again and only its new shards remain."""
    api = beam_service.build_api()
    source = _big_input(bucket, f"{gcs_prefix}/big.json", 20_000)
    out = f"{gcs_prefix}/out"
    bucket.blob(f"{out}/prediction.results-00003-of-00007").upload_from_string('{"stale": true}\n')
    bucket.blob(f"{out}/beam-temp-prediction.results-0123/part").upload_from_string("stale temp")
    job_id = start_job(api, prediction_input({"uri": model_uris["tiny"]}, [source], f"gs://{bucket.name}/{out}",
                                             batchSize=8))
    wait_job(api, job_id, states=("RUNNING",))
    beam_service.restart(kill=True)
    api = beam_service.build_api()
    job = wait_job(api, job_id, timeout=240)
    assert job["state"] == "SUCCEEDED", job
    assert job["predictionOutput"]["predictionCount"] == "20000"
    results, _, names = read_outputs(bucket, out)
    assert names == ["prediction.errors_stats-00000-of-00001", "prediction.results-00000-of-00001"]
    assert len(results) == 20_000


def test_job_settings_map_onto_pipeline_options():
    """maxWorkerCount -> max workers, region -> region (the job's values win), the emulator plugin on workers."""
    from apache_beam.options.pipeline_options import GoogleCloudOptions, SetupOptions, WorkerOptions

    from include.local_platform.workers import beam_engine

    options = beam_engine.pipeline_options(
        "--runner=DataflowRunner --project=p1 --region=us-east1 --temp_location=gs://b/tmp",
        {"maxWorkerCount": "7", "region": "europe-west4"}, "nightly_20260101T000000")
    cloud = options.view_as(GoogleCloudOptions)
    assert options.view_as(WorkerOptions).max_num_workers == 7
    assert (cloud.region, cloud.project, cloud.job_name) == ("europe-west4", "p1", "ml-batch-nightly-20260101t000000")
    assert "include.local_platform.workers.beam_gcs" in options.view_as(SetupOptions).beam_plugins
    assert beam_engine.runner_name(options) == "DataflowRunner"
    assert beam_engine.console_url(options, "2026-01-01_00_00_00-123") == (
        "https://console.cloud.google.com/dataflow/jobs/europe-west4/2026-01-01_00_00_00-123?project=p1")
    assert beam_engine.runner_name(beam_engine.pipeline_options("", {}, "j")) == "DirectRunner"


def test_beam_gcs_io_reaches_the_emulator_without_credentials(bucket):
    """Beam's own GcsIO, built as its GCS filesystem builds it, lists the emulator at once (no 30 s ADC retries)."""
    from apache_beam.io.gcp import gcsio

    from include.local_platform.workers import beam_gcs

    bucket.blob("beam-gcs-probe/a.txt").upload_from_string("a")
    assert beam_gcs.use_emulator_without_credentials()
    started = time.monotonic()
    io = gcsio.GcsIO()
    assert [name for name, _ in io.list_files(f"gs://{bucket.name}/beam-gcs-probe/")] == [
        f"gs://{bucket.name}/beam-gcs-probe/a.txt"]
    assert io.size(f"gs://{bucket.name}/beam-gcs-probe/a.txt") == 1
    assert time.monotonic() - started < 10


def test_a_failing_pipeline_ends_with_its_error(bucket, model_uris, tmp_path):
    """An input that vanished between listing and reading fails the pipeline (DirectRunner in this process);
    the engine raises batch_instances.JobFailed with the pipeline's error, which run_job records as the job's FAILED."""
    from include.local_platform import gcs
    from include.local_platform.context import Context
    from include.local_platform.serving.saved_model import LoadedModel
    from include.local_platform.workers import batch_instances, beam_engine

    gcs.download_prefix(model_uris["single"], tmp_path / "model", max_files=100)
    signature = LoadedModel(tmp_path / "model").signature(None)
    ctx = Context(state_dir=tmp_path / "state", batch_engine="beam")
    try:
        prediction_input = {"uri": model_uris["single"], "dataFormat": "JSON",
                            "outputPath": f"gs://{bucket.name}/beam-failing/{unique('o')}"}
        with pytest.raises(batch_instances.JobFailed) as excinfo:
            beam_engine.run_pipeline(ctx, f"{PARENT}/jobs/failing", prediction_input,
                                     [f"gs://{bucket.name}/beam-failing/vanished.json"], batch_instances.Totals(),
                                     tmp_path / "scratch", signature)
    finally:
        ctx.shutdown()
    assert "The Beam pipeline failed" in str(excinfo.value) and "vanished.json" in str(excinfo.value)


def test_beam_temp_cleanup_touches_only_beam_temp_folders(bucket, gcs_prefix):
    """A file merely named like Beam's temp folder, directly under the output path, once made the clean-up
    delete everything beside it; only objects inside a `beam-temp-...` folder go."""
    from include.local_platform.workers import beam_engine

    out = f"{gcs_prefix}/out"
    for name in ("keep.txt", "prediction.results-00000-of-00001", "beam-temp-prediction.results-9f3a",
                 "beam-temp-prediction.results-0a1b/part-1", "beam-temp-prediction.errors_stats-77/part-1"):
        bucket.blob(f"{out}/{name}").upload_from_string("x")
    beam_engine._delete_beam_temp(f"gs://{bucket.name}/{out}")
    left = sorted(blob.name[len(out) + 1:] for blob in bucket.list_blobs(prefix=f"{out}/"))
    assert left == ["beam-temp-prediction.results-9f3a", "keep.txt", "prediction.results-00000-of-00001"]
