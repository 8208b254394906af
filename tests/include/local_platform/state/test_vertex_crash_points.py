"""kill -9 at the named crash points, for Vertex AI resources: a deployment and a batch job each converge.

A service of the test's own (the session's must not die) serves Vertex AI with the session's certificate,
so this process's gRPC clients (which trust one CA per process) reach it through a route of its own.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest
from google.cloud import aiplatform_v1 as v1
from google.oauth2.credentials import Credentials

from tests.conftest import SESSION_STATE, ServiceHandle, session_token_file
from tests.crashing import Lives
from tests.include.local_platform.api.test_vertex_models_endpoints import IMAGE, OPTIONS
from tests.include.local_platform.workers.test_vertex_batch import _job, _outputs, wait
from tools import devstack

pytestmark = pytest.mark.slow


@pytest.fixture
def vertex_lives(vertex, gcs_emulator, passable_dir, tmp_path, monkeypatch):
    state = passable_dir / f"crash-{tmp_path.name}"
    shutil.copytree(SESSION_STATE / "vertex_tls", state / "vertex_tls")
    port, vertex_port, proxy_port = devstack.free_port(), devstack.free_port(), devstack.free_port()
    token_file = session_token_file()
    server = devstack.ml_service(port=port, state_dir=state, gcs_host=gcs_emulator, log_path=tmp_path / "service.log",
                                 token_file=token_file, vertex_port=vertex_port)
    server.env["ML_ENGINE_ENABLE_FAULTS"] = "1"
    route = devstack.vertex_route(vertex_port=vertex_port, proxy_port=proxy_port,
                                  metadata_port=devstack.free_port(), token_file=token_file, project="test-project",
                                  log_path=tmp_path / "route.log").start()
    monkeypatch.setenv("grpc_proxy", f"http://127.0.0.1:{proxy_port}")
    lives = Lives(ServiceHandle(server=server, port=port))
    yield lives, state
    server.stop()
    route.stop()


def _clients() -> dict:
    credentials = Credentials(token=os.environ["ML_ENGINE_TOKEN"])
    return {"models": v1.ModelServiceClient(credentials=credentials, client_options=OPTIONS),
            "endpoints": v1.EndpointServiceClient(credentials=credentials, client_options=OPTIONS),
            "jobs": v1.JobServiceClient(credentials=credentials, client_options=OPTIONS)}


@pytest.mark.parametrize("point", ["deploy.copying", "deploy.ready"])
def test_a_deployment_killed_at_each_point_ends_deployed_once(vertex_lives, vertex, model_uris, point):
    lives, state = vertex_lives
    lives.restart(crash_at=point)
    clients = _clients()
    model = clients["models"].upload_model(parent=vertex, model={
        "display_name": "crash", "artifact_uri": model_uris["tiny"], "container_spec": {"image_uri": IMAGE}}
    ).result(timeout=60).model
    endpoint = clients["endpoints"].create_endpoint(parent=vertex, endpoint={"display_name": "e"}).result().name
    operation = clients["endpoints"].deploy_model(endpoint=endpoint, deployed_model={"model": model})
    lives.wait_death()
    lives.restart()
    clients = _clients()  # new channels: the old ones died with the service
    operations = clients["endpoints"]._transport.operations_client
    deadline = time.monotonic() + 120
    while not (got := operations.get_operation(operation.operation.name)).done and time.monotonic() < deadline:
        time.sleep(0.5)
    assert got.done and not got.error.code, got
    deployed = clients["endpoints"].get_endpoint(name=endpoint).deployed_models
    assert len(deployed) == 1 and dict(clients["endpoints"].get_endpoint(name=endpoint).traffic_split) == {
        deployed[0].id: 100}
    copies = list((state / "vertex_artifacts").glob("*/*/*"))
    assert len(copies) == 1, copies  # the interrupted copy was cleaned up, one copy serves


def test_a_batch_job_killed_mid_prediction_writes_every_instance_once(vertex_lives, vertex, model_uris, bucket,
                                                                        gcs_prefix):
    lives, _ = vertex_lives
    lives.restart(crash_at="batch.predicting:2")
    clients = _clients()
    model = clients["models"].upload_model(parent=vertex, model={
        "display_name": "crash", "artifact_uri": model_uris["tiny"], "container_spec": {"image_uri": IMAGE}}
    ).result(timeout=60).model
    bucket.blob(f"{gcs_prefix}/in.jsonl").upload_from_string(
        "".join(json.dumps({"x": [float(i), 1.0], "key": f"k{i}"}) + "\n" for i in range(40)))
    job = clients["jobs"].create_batch_prediction_job(parent=vertex, batch_prediction_job=_job(
        vertex, model, [f"gs://{bucket.name}/{gcs_prefix}/in.jsonl"], f"gs://{bucket.name}/{gcs_prefix}/out",
        batch_size=4))
    lives.wait_death()
    lives.restart()
    clients = _clients()
    ended = wait(clients["jobs"], job.name, timeout=180)
    assert ended.state.name == "JOB_STATE_SUCCEEDED", ended.error
    files = _outputs(bucket, ended.output_info.gcs_output_directory)
    keys = [line["instance"]["key"] for line in files["predictions_00001.jsonl"]]
    assert keys == [f"k{i}" for i in range(40)] and ended.completion_stats.successful_count == 40
