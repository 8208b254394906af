"""Vertex AI batch prediction jobs on the local service, through Google's JobServiceClient: JSON lines and
TFRecords in, Vertex AI's output folder and files out, bad lines to errors files, cancel and delete rules."""

from __future__ import annotations

import json
import os
import re
import time

import pytest
from google.api_core import exceptions
from google.cloud import aiplatform_v1 as v1
from google.oauth2.credentials import Credentials

from tests.include.local_platform.api.test_vertex_models_endpoints import IMAGE, OPTIONS
from tests.include.local_platform.workers.test_batch import image_examples, tfrecord

ENDED = ("JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED")


@pytest.fixture(scope="module")
def jobs(vertex):
    return v1.JobServiceClient(credentials=Credentials(token=os.environ["ML_ENGINE_TOKEN"]), client_options=OPTIONS)


@pytest.fixture(scope="module")
def models(vertex, model_uris):
    client = v1.ModelServiceClient(credentials=Credentials(token=os.environ["ML_ENGINE_TOKEN"]),
                                   client_options=OPTIONS)

    def upload(kind: str) -> str:
        return client.upload_model(parent=vertex, model={"display_name": f"batch-{kind}", "artifact_uri":
                                                        model_uris[kind], "container_spec": {"image_uri": IMAGE}}
                                   ).result(timeout=60).model

    return {kind: upload(kind) for kind in ("tiny", "examples")}


def wait(jobs, name: str, timeout: float = 120, states=ENDED):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = jobs.get_batch_prediction_job(name=name)
        if job.state.name in states:
            return job
        time.sleep(0.3)
    raise TimeoutError(f"{name} not in {states}")


def _job(vertex, model: str, uris: list[str], out: str, fmt: str = "jsonl", batch_size: int | None = None) -> dict:
    job = {"display_name": "local-batch", "model": model,
           "input_config": {"instances_format": fmt, "gcs_source": {"uris": uris}},
           "output_config": {"predictions_format": "jsonl", "gcs_destination": {"output_uri_prefix": out}}}
    if batch_size:
        job["manual_batch_tuning_parameters"] = {"batch_size": batch_size}
    return job


def _outputs(bucket, folder: str) -> dict[str, list]:
    prefix = folder[len(f"gs://{bucket.name}/"):] + "/"
    return {blob.name[len(prefix):]: [json.loads(line) for line in blob.download_as_text().splitlines()]
            for blob in bucket.list_blobs(prefix=prefix)}


def test_jsonl_job_writes_instances_with_predictions_and_errors(jobs, models, vertex, bucket, gcs_prefix):
    lines = [json.dumps({"x": [float(i), 1.0], "key": f"k{i}"}) for i in range(5)]
    lines.insert(2, "{not json")
    lines.insert(4, json.dumps({"x": [-1.0, 1.0], "key": "negative"}))  # the model refuses it
    bucket.blob(f"{gcs_prefix}/in/a.jsonl").upload_from_string("\n".join(lines) + "\n")
    created = jobs.create_batch_prediction_job(parent=vertex, batch_prediction_job=_job(
        vertex, models["tiny"], [f"gs://{bucket.name}/{gcs_prefix}/in/*.jsonl"], f"gs://{bucket.name}/{gcs_prefix}/out",
        batch_size=3))
    assert created.state.name == "JOB_STATE_PENDING" and created.model_version_id == "1"
    job = wait(jobs, created.name)
    assert job.state.name == "JOB_STATE_SUCCEEDED", job.error
    assert (job.completion_stats.successful_count, job.completion_stats.failed_count) == (5, 2)
    folder = job.output_info.gcs_output_directory
    # Vertex AI's naming: prediction-<model display name>-<create time>
    assert re.fullmatch(rf"gs://{bucket.name}/{gcs_prefix}/out/prediction-batch-tiny-\d{{4}}_\d\d_\d\dT[\d_]+Z",
                        folder)
    files = _outputs(bucket, folder)
    assert sorted(files) == ["errors_00001.jsonl", "predictions_00001.jsonl"]
    assert [line["instance"]["key"] for line in files["predictions_00001.jsonl"]] == [f"k{i}" for i in range(5)]
    assert files["predictions_00001.jsonl"][3]["prediction"] == {"y": 8.0, "key": "k3"}
    errors = files["errors_00001.jsonl"]
    assert [error["error"]["code"] for error in errors] == [3, 3]
    assert "Failed to parse input line 3 as JSON" in errors[0]["error"]["message"]
    assert errors[1]["instance"] == {"x": [-1.0, 1.0], "key": "negative"}


def test_tfrecord_job_and_the_job_rules(jobs, models, vertex, bucket, gcs_prefix):
    bucket.blob(f"{gcs_prefix}/in/images.tfrecord").upload_from_string(tfrecord(image_examples(["a", "b", "c"])))
    created = jobs.create_batch_prediction_job(parent=vertex, batch_prediction_job=_job(
        vertex, f"{models['examples']}@default", [f"gs://{bucket.name}/{gcs_prefix}/in/images.tfrecord"],
        f"gs://{bucket.name}/{gcs_prefix}/out", fmt="tf-record"))
    with pytest.raises(exceptions.FailedPrecondition):
        jobs.delete_batch_prediction_job(name=created.name)  # still running or pending
    job = wait(jobs, created.name)
    files = _outputs(bucket, job.output_info.gcs_output_directory)
    assert job.state.name == "JOB_STATE_SUCCEEDED" and job.completion_stats.successful_count == 3, files
    assert all(set(line["instance"]) == {"b64"} for line in files["predictions_00001.jsonl"])
    with pytest.raises(exceptions.FailedPrecondition):
        jobs.cancel_batch_prediction_job(name=created.name)  # ended
    jobs.delete_batch_prediction_job(name=created.name).result(timeout=30)
    with pytest.raises(exceptions.NotFound):
        jobs.get_batch_prediction_job(name=created.name)


@pytest.mark.parametrize(("change", "expected"), [
    ({"input_config": {"instances_format": "csv", "gcs_source": {"uris": ["gs://b/x"]}}}, exceptions.InvalidArgument),
    ({"input_config": {"instances_format": "jsonl", "gcs_source": {"uris": ["/etc/passwd"]}}},
     exceptions.InvalidArgument),
    ({"output_config": {"gcs_destination": {"output_uri_prefix": "s3://elsewhere"}}}, exceptions.InvalidArgument),
    ({"model": "projects/test-project/locations/us-central1/models/none_such"}, exceptions.NotFound),
    ({"display_name": ""}, exceptions.InvalidArgument),
])
def test_bad_jobs_are_refused_and_stored_nowhere(jobs, models, vertex, change, expected):
    before = len(list(jobs.list_batch_prediction_jobs(parent=vertex)))
    job = {**_job(vertex, models["tiny"], ["gs://b/in.jsonl"], "gs://b/out"), **change}
    with pytest.raises(expected):
        jobs.create_batch_prediction_job(parent=vertex, batch_prediction_job=job)
    assert len(list(jobs.list_batch_prediction_jobs(parent=vertex))) == before
