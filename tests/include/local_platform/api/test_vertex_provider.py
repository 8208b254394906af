"""The Airflow provider's maintained Vertex AI operators, unchanged, against the local Vertex AI surface.

They run with ``execute()`` (and their triggers, for the deferrable batch job) as a task would: the
connection has no key, so the hooks take Application Default Credentials from the route's metadata
server, and their clients dial us-central1-aiplatform.googleapis.com, taken to the local service.
"""

from __future__ import annotations

import asyncio
import json
import os

import pytest
from airflow.exceptions import TaskDeferred
from google.cloud import aiplatform_v1 as v1
from google.oauth2.credentials import Credentials

from tests.include.local_platform.api.test_vertex_models_endpoints import IMAGE, OPTIONS
from tests.plugins.conftest import FakeTI

PROJECT, REGION, CONN = "test-project", "us-central1", "google_cloud_vertex"


@pytest.fixture(scope="module", autouse=True)
def connection(vertex):
    """A connection with a project and no key: Application Default Credentials, as on GCP."""
    os.environ[f"AIRFLOW_CONN_{CONN.upper()}"] = json.dumps(
        {"conn_type": "google_cloud_platform", "extra": {"project": PROJECT}})
    yield
    os.environ.pop(f"AIRFLOW_CONN_{CONN.upper()}", None)


def run(operator_class, **kwargs):
    """``execute()`` the operator as a task would; (its return value, its XComs)."""
    ti = FakeTI()
    operator = operator_class(task_id="t", project_id=PROJECT, region=REGION, gcp_conn_id=CONN, **kwargs)
    return operator.execute({"ti": ti, "task_instance": ti}), ti.xcom


def test_model_and_endpoint_operators(model_uris):
    from airflow.providers.google.cloud.operators.vertex_ai import endpoint_service as ep
    from airflow.providers.google.cloud.operators.vertex_ai import model_service as ms

    model = {"display_name": "provider-tiny", "artifact_uri": model_uris["tiny"],
             "container_spec": {"image_uri": IMAGE}}
    uploaded, xcom = run(ms.UploadModelOperator, model=model)
    model_id = xcom["model_id"]
    second, _ = run(ms.UploadModelOperator, model={**model, "artifact_uri": model_uris["tiny3"]},
                    parent_model=model_id)
    assert (uploaded["model_version_id"], second["model_version_id"]) == ("1", "2")
    run(ms.AddVersionAliasesOnModelOperator, model_id=f"{model_id}@2", version_aliases=["candidate"])
    run(ms.SetDefaultVersionOnModelOperator, model_id=f"{model_id}@candidate")
    versions, _ = run(ms.ListModelVersionsOperator, model_id=model_id)
    assert {v["version_id"]: sorted(v["version_aliases"]) for v in versions} == {
        "1": [], "2": ["candidate", "default"]}
    endpoint, xcom = run(ep.CreateEndpointOperator, endpoint={"display_name": "provider-endpoint"})
    endpoint_id = xcom["endpoint_id"]
    deployed, xcom = run(ep.DeployModelOperator, endpoint_id=endpoint_id,
                         deployed_model={"model": f"projects/{PROJECT}/locations/{REGION}/models/{model_id}",
                                         "display_name": "candidate"}, traffic_split={"0": 100})
    # PredictionServiceHook.predict fails before any call with proto-plus 1.29 (proto-plus-python#488): the
    # client's flattened form, as the DAGs use it
    client = v1.PredictionServiceClient(credentials=Credentials(token=os.environ["ML_ENGINE_TOKEN"]),
                                        client_options=OPTIONS)
    answer = client.predict(endpoint=endpoint["name"], instances=[{"x": [1.0, 2.0], "key": "a"}])
    assert answer.model_version_id == "2" and dict(answer.predictions[0])["y"] == 9.0
    run(ep.UndeployModelOperator, endpoint_id=endpoint_id, deployed_model_id=xcom["deployed_model_id"])
    run(ep.DeleteEndpointOperator, endpoint_id=endpoint_id)
    run(ms.DeleteModelVersionOperator, model_id=f"{model_id}@1")
    run(ms.DeleteModelOperator, model_id=model_id)
    assert deployed["deployed_model"]["model"].endswith(model_id)


def _batch_kwargs(model_uris, bucket, gcs_prefix, model_id: str) -> dict:
    bucket.blob(f"{gcs_prefix}/in.jsonl").upload_from_string(
        "".join(json.dumps({"x": [i, 1.0], "key": f"k{i}"}) + "\n" for i in range(4)))
    return {"job_display_name": "provider-batch", "model_name": model_id, "instances_format": "jsonl",
            "predictions_format": "jsonl", "gcs_source": f"gs://{bucket.name}/{gcs_prefix}/in.jsonl",
            "gcs_destination_prefix": f"gs://{bucket.name}/{gcs_prefix}/out", "machine_type": "n1-standard-2",
            "starting_replica_count": 1, "max_replica_count": 1}


def test_batch_prediction_operator_sync_and_deferrable(model_uris, bucket, gcs_prefix):
    from airflow.providers.google.cloud.operators.vertex_ai import batch_prediction_job as bp
    from airflow.providers.google.cloud.operators.vertex_ai import model_service as ms

    _, xcom = run(ms.UploadModelOperator, model={"display_name": "provider-batch", "artifact_uri":
                                                 model_uris["tiny"], "container_spec": {"image_uri": IMAGE}})
    kwargs = _batch_kwargs(model_uris, bucket, gcs_prefix, xcom["model_id"])
    job, _ = run(bp.CreateBatchPredictionJobOperator, **kwargs)
    assert job["state"] == "JOB_STATE_SUCCEEDED" and job["completionStats"]["successfulCount"] == "4"
    ti = FakeTI()
    operator = bp.CreateBatchPredictionJobOperator(task_id="t", project_id=PROJECT, region=REGION, gcp_conn_id=CONN,
                                                   deferrable=True, poll_interval=1, **kwargs)
    with pytest.raises(TaskDeferred) as deferred:
        operator.execute({"ti": ti, "task_instance": ti})

    async def first_event():
        async for event in deferred.value.trigger.run():
            return event.payload

    event = asyncio.run(first_event())
    assert event["status"] == "success", event
    result = operator.execute_complete({"ti": ti, "task_instance": ti}, event)
    assert result["state"] == 4 or "SUCCEEDED" in str(result["state"]), result


def test_python_package_training_pipeline_makes_a_model_version(model_uris, bucket, gcs_prefix, tmp_path):
    from airflow.providers.google.cloud.operators.vertex_ai import custom_job as cj
    from airflow.providers.google.cloud.operators.vertex_ai import model_service as ms

    from tests.trainer_packages import build_vertex_sdist

    sdist = build_vertex_sdist(tmp_path / "vertextrainer")
    package = bucket.blob(f"{gcs_prefix}/{sdist.name}")
    package.upload_from_filename(str(sdist))
    _, xcom = run(ms.UploadModelOperator, model={"display_name": "provider-trained", "artifact_uri":
                                                 model_uris["tiny"], "container_spec": {"image_uri": IMAGE}})
    parent_id = xcom["model_id"]
    model, xcom = run(cj.CreateCustomPythonPackageTrainingJobOperator, display_name="provider-training",
                      python_package_gcs_uri=f"gs://{bucket.name}/{package.name}",
                      python_module_name="vertextrainer.task",
                      container_uri="us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-11.py310:latest",
                      model_serving_container_image_uri=IMAGE, model_display_name="provider-trained",
                      parent_model=parent_id, staging_bucket=f"gs://{bucket.name}/{gcs_prefix}/staging",
                      args=["--source", model_uris["tiny3"]], environment_variables={"ML_RUN": "r1"},
                      replica_count=1)
    assert xcom["model_id"] == parent_id and xcom["custom_job_id"] and xcom["training_id"]
    versions = v1.ModelServiceClient(credentials=Credentials(token=os.environ["ML_ENGINE_TOKEN"]),
                                     client_options=OPTIONS).list_model_versions(
        name=f"projects/{PROJECT}/locations/{REGION}/models/{parent_id}")
    assert [v.version_id for v in versions] == ["1", "2"]
    assert model["versionId"] == "2"


def test_pipelines_that_fail_or_are_cancelled_end_so_and_upload_nothing(model_uris, bucket, gcs_prefix, tmp_path,
                                                                        vertex):
    """Through PipelineServiceClient: a trainer that fails ends its pipeline FAILED with the trainer's error; a
    cancel ends it CANCELLED; neither uploads a model; the custom job shows Vertex AI's JobState."""
    from tests.trainer_packages import build_vertex_sdist

    sdist = build_vertex_sdist(tmp_path / "vertextrainer")
    package = bucket.blob(f"{gcs_prefix}/{sdist.name}")
    package.upload_from_filename(str(sdist))
    credentials = Credentials(token=os.environ["ML_ENGINE_TOKEN"])
    pipelines = v1.PipelineServiceClient(credentials=credentials, client_options=OPTIONS)
    jobs = v1.JobServiceClient(credentials=credentials, client_options=OPTIONS)
    models_before = len(list(v1.ModelServiceClient(credentials=credentials, client_options=OPTIONS).list_models(
        parent=vertex)))

    def pipeline(args: list[str]) -> str:
        return pipelines.create_training_pipeline(parent=vertex, training_pipeline={
            "display_name": "p", "training_task_definition":
                "gs://google-cloud-aiplatform/schema/trainingjob/definition/custom_task_1.0.0.yaml",
            "training_task_inputs": {"worker_pool_specs": [{"replica_count": 1, "python_package_spec": {
                "executor_image_uri": "us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-11.py310:latest",
                "package_uris": [f"gs://{bucket.name}/{package.name}"], "python_module": "vertextrainer.task",
                "args": args}}], "base_output_directory": {"output_uri_prefix":
                                                           f"gs://{bucket.name}/{gcs_prefix}/out"}},
            "model_to_upload": {"display_name": "never", "container_spec": {"image_uri": IMAGE}}}).name

    def ended(name: str):
        for _ in range(240):
            found = pipelines.get_training_pipeline(name=name)
            if found.state.name in ("PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED"):
                return found
            import time

            time.sleep(0.5)
        raise TimeoutError(name)

    failed = ended(pipeline(["--source", model_uris["tiny"], "--mode", "fail"]))
    assert failed.state.name == "PIPELINE_STATE_FAILED" and "this trainer was asked to fail" in failed.error.message
    job = jobs.get_custom_job(name=failed.training_task_metadata["backingCustomJob"])
    assert job.state.name == "JOB_STATE_FAILED"
    cancelled = pipeline(["--source", model_uris["tiny"]])
    pipelines.cancel_training_pipeline(name=cancelled)
    assert ended(cancelled).state.name == "PIPELINE_STATE_CANCELLED"
    assert len(list(v1.ModelServiceClient(credentials=credentials, client_options=OPTIONS).list_models(
        parent=vertex))) == models_before
