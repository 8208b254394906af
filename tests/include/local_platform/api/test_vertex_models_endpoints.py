"""The local Vertex AI surface through Google's own GAPIC clients (google-cloud-aiplatform), unchanged.

The clients dial us-central1-aiplatform.googleapis.com:443 over TLS; the route the session sets up
(CONNECT proxy, throwaway CA) takes them to the session service. Models, versions and aliases,
endpoints, deployments with traffic splits, online prediction in every instance format.
"""

from __future__ import annotations

import base64
import os

import grpc
import pytest
from google.api_core import exceptions
from google.cloud import aiplatform_v1 as v1
from google.oauth2.credentials import Credentials

from tests.include.local_platform.api.test_ml_v1_predict import jpeg

OPTIONS = {"api_endpoint": "us-central1-aiplatform.googleapis.com:443"}
IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-11:latest"


@pytest.fixture(scope="module")
def clients(vertex):
    credentials = Credentials(token=os.environ["ML_ENGINE_TOKEN"])
    return {"models": v1.ModelServiceClient(credentials=credentials, client_options=OPTIONS),
            "endpoints": v1.EndpointServiceClient(credentials=credentials, client_options=OPTIONS),
            "predict": v1.PredictionServiceClient(credentials=credentials, client_options=OPTIONS),
            "parent": vertex}


def _upload(clients, uri: str, display_name: str = "tiny", parent_model: str | None = None, aliases=()) -> tuple:
    request = {"parent": clients["parent"], "model": {"display_name": display_name, "artifact_uri": uri,
                                                      "version_aliases": list(aliases),
                                                      "container_spec": {"image_uri": IMAGE}}}
    if parent_model:
        request["parent_model"] = parent_model
    result = clients["models"].upload_model(request=request).result(timeout=60)
    return result.model, result.model_version_id


def test_versions_aliases_and_the_default(clients, model_uris):
    models = clients["models"]
    name, first = _upload(clients, model_uris["tiny"])
    assert first == "1" and "@" not in name
    _, second = _upload(clients, model_uris["tiny3"], parent_model=f"{name}@1", aliases=["candidate"])
    _, third = _upload(clients, model_uris["tiny"], parent_model=name, aliases=["candidate"])  # moves it
    assert (second, third) == ("2", "3")
    listed = {m.version_id: list(m.version_aliases) for m in models.list_model_versions(name=name)}
    assert listed == {"1": ["default"], "2": [], "3": ["candidate"]}
    assert models.get_model(name=name).version_id == "1"
    assert models.get_model(name=f"{name}@candidate").version_id == "3"
    assert models.get_model(name=f"{name}@2").version_id == "2"
    moved = models.merge_version_aliases(name=f"{name}@3", version_aliases=["default", "-candidate"])
    assert list(moved.version_aliases) == ["default"]
    assert models.get_model(name=name).version_id == "3"
    with pytest.raises(exceptions.FailedPrecondition):
        models.delete_model_version(name=f"{name}@3").result()  # the default
    with pytest.raises(exceptions.InvalidArgument):
        models.merge_version_aliases(name=f"{name}@3", version_aliases=["-default"])
    models.delete_model_version(name=f"{name}@2").result(timeout=30)
    _, fourth = _upload(clients, model_uris["tiny"], parent_model=name)
    assert fourth == "4"  # version ids are never reused
    with pytest.raises(exceptions.NotFound):
        models.get_model(name=f"{name}@2")
    filtered = list(models.list_models(request={"parent": clients["parent"], "filter": 'display_name="tiny"'}))
    assert name in {m.name for m in filtered} and all(m.display_name == "tiny" for m in filtered)
    models.delete_model(name=name).result(timeout=30)
    with pytest.raises(exceptions.NotFound):
        models.get_model(name=name)


def test_update_model_changes_one_versions_labels(clients, model_uris):
    from google.protobuf import field_mask_pb2

    models = clients["models"]
    name, _ = _upload(clients, model_uris["tiny"], display_name="labelled")
    _upload(clients, model_uris["tiny3"], parent_model=name, aliases=["candidate"])
    mask = field_mask_pb2.FieldMask(paths=["labels"])
    updated = models.update_model(model={"name": f"{name}@candidate", "labels": {"eval_iou_x10000": "6291"}},
                                  update_mask=mask)
    assert (updated.version_id, dict(updated.labels)) == ("2", {"eval_iou_x10000": "6291"})
    assert dict(models.get_model(name=f"{name}@1").labels) == {}  # the other version is untouched
    with pytest.raises(exceptions.InvalidArgument, match="update_mask"):
        models.update_model(model={"name": name, "display_name": "x"},
                            update_mask=field_mask_pb2.FieldMask(paths=["display_name"]))
    with pytest.raises(exceptions.InvalidArgument):
        models.update_model(model={"name": name, "labels": {"Bad Key": "x"}}, update_mask=mask)
    cleared = models.update_model(model={"name": f"{name}@candidate"}, update_mask=mask)
    assert dict(cleared.labels) == {}
    models.delete_model(name=name).result(timeout=30)


def test_deploy_with_traffic_split_predict_in_every_format_and_undeploy(clients, model_uris):
    endpoints, predict = clients["endpoints"], clients["predict"]
    tiny, _ = _upload(clients, model_uris["tiny"], display_name="tiny")
    _, tiny3 = _upload(clients, model_uris["tiny3"], parent_model=tiny)
    endpoint = endpoints.create_endpoint(parent=clients["parent"], endpoint={"display_name": "e"}).result().name
    operation = endpoints.deploy_model(endpoint=endpoint, deployed_model={"model": tiny, "display_name": "v1"},
                                       traffic_split={"0": 100})
    first = operation.result(timeout=120).deployed_model  # polled through google.longrunning.Operations
    answer = predict.predict(endpoint=endpoint, instances=[{"x": [1.0, 2.0], "key": "a"}])
    assert (answer.deployed_model_id, answer.model_version_id) == (first.id, "1")
    assert dict(answer.predictions[0]) == {"y": 6.0, "key": "a"}
    second = endpoints.deploy_model(endpoint=endpoint, deployed_model={"model": f"{tiny}@{tiny3}"},
                                    traffic_split={first.id: 0, "0": 100}).result(timeout=120).deployed_model
    assert predict.predict(endpoint=endpoint, instances=[{"x": [1.0, 2.0], "key": "a"}]).model_version_id == "2"
    assert dict(endpoints.get_endpoint(name=endpoint).traffic_split) == {second.id: 100}
    with pytest.raises(exceptions.FailedPrecondition):  # it has all the traffic: move it first
        endpoints.undeploy_model(endpoint=endpoint, deployed_model_id=second.id).result()
    endpoints.update_endpoint(endpoint={"name": endpoint, "traffic_split": {first.id: 100}},
                              update_mask={"paths": ["traffic_split"]})
    assert predict.predict(endpoint=endpoint, instances=[{"x": [1.0, 2.0], "key": "a"}]).model_version_id == "1"
    endpoints.undeploy_model(endpoint=endpoint, deployed_model_id=second.id).result(timeout=30)
    with pytest.raises(exceptions.FailedPrecondition):
        endpoints.delete_endpoint(name=endpoint).result()  # a model is still deployed
    with pytest.raises(exceptions.FailedPrecondition):
        clients["models"].delete_model(name=tiny).result()  # version 1 is deployed
    endpoints.undeploy_model(endpoint=endpoint, deployed_model_id=first.id).result(timeout=30)
    endpoints.delete_endpoint(name=endpoint).result(timeout=30)


def test_predict_b64_urls_and_bad_instances(clients, model_uris, bucket, gcs_prefix):
    endpoints, predict = clients["endpoints"], clients["predict"]
    images, _ = _upload(clients, model_uris["images"], display_name="images")
    urls, _ = _upload(clients, model_uris["urls"], display_name="urls")
    served = {}
    for model in (images, urls):
        endpoint = endpoints.create_endpoint(parent=clients["parent"], endpoint={"display_name": "e"}).result().name
        endpoints.deploy_model(endpoint=endpoint, deployed_model={"model": model}).result(timeout=120)
        served[model] = endpoint
    b64 = {"image_bytes": {"b64": base64.b64encode(jpeg(128)).decode()}, "key": "k"}
    answer = predict.predict(endpoint=served[images], instances=[b64])
    assert set(dict(answer.predictions[0])) == {"brightness", "key"}
    bucket.blob(f"{gcs_prefix}/a.jpg").upload_from_string(jpeg(255))
    answer = predict.predict(endpoint=served[urls], instances=[f"gs://{bucket.name}/{gcs_prefix}/a.jpg"])
    assert len(answer.predictions) == 1  # one output: its value alone, as TF Serving answers
    with pytest.raises(exceptions.InvalidArgument, match="Invalid base64"):
        predict.predict(endpoint=served[images], instances=[{"image_bytes": {"b64": "%%%"}, "key": "k"}])
    with pytest.raises(exceptions.InvalidArgument):
        predict.predict(endpoint=served[urls], instances=["/etc/passwd"])


def test_concurrent_predicts_are_batched_and_each_gets_its_own_rows(clients, model_uris):
    """Ten PredictionService callers at once on one deployed version (the probe model reports the batch size
    TensorFlow ran with): fewer, larger TensorFlow calls, every caller its own rows; a caller whose values the
    model refuses gets INVALID_ARGUMENT alone."""
    from concurrent.futures import ThreadPoolExecutor

    endpoints, predict = clients["endpoints"], clients["predict"]
    probe, _ = _upload(clients, model_uris["probe"], display_name="probe")
    endpoint = endpoints.create_endpoint(parent=clients["parent"], endpoint={"display_name": "e"}).result().name
    endpoints.deploy_model(endpoint=endpoint, deployed_model={"model": probe}).result(timeout=120)
    assert predict.predict(endpoint=endpoint, instances=[[0.0, 0.0]]).predictions[0]["batch"] == 1

    def call(index: int):
        try:
            return predict.predict(endpoint=endpoint, instances=[[float(index), 1.0]] if index != 3 else [[-1.0, 0]])
        except exceptions.InvalidArgument as error:
            return error

    with ThreadPoolExecutor(10) as pool:
        answers = list(pool.map(call, range(10)))
    assert isinstance(answers[3], exceptions.InvalidArgument) and "must not be negative" in str(answers[3])
    rows = {index: dict(answer.predictions[0]) for index, answer in enumerate(answers) if index != 3}
    assert all(list(row["x"]) == [float(index), 1.0] for index, row in rows.items()), rows
    batches = [row["batch"] for row in rows.values()]
    if max(batches) == 1:  # every joined batch held the refused call and reran call by call: once more without it
        with ThreadPoolExecutor(10) as pool:
            batches = [dict(answer.predictions[0])["batch"] for answer in pool.map(call, [i for i in range(10)
                                                                                          if i != 3])]
    assert max(batches) > 1, batches
    endpoints.undeploy_model(endpoint=endpoint, deployed_model_id=endpoints.get_endpoint(
        name=endpoint).deployed_models[0].id).result(timeout=30)


def test_bad_requests_get_googles_status_codes_and_change_nothing(clients, model_uris):
    models, endpoints = clients["models"], clients["endpoints"]
    before = {m.name for m in models.list_models(parent=clients["parent"])}
    cases = [
        (lambda: models.upload_model(request={"parent": clients["parent"], "model": {"display_name": "x"}}),
         exceptions.InvalidArgument),  # no container image
        (lambda: models.upload_model(request={"parent": clients["parent"], "model": {
            "display_name": "x", "artifact_uri": "/local/dir", "container_spec": {"image_uri": IMAGE}}}),
         exceptions.InvalidArgument),
        (lambda: models.upload_model(request={"parent": clients["parent"], "parent_model":
                                               f"{clients['parent']}/models/nope", "model": {
            "display_name": "x", "artifact_uri": model_uris["tiny"], "container_spec": {"image_uri": IMAGE}}}),
         exceptions.NotFound),
        (lambda: models.get_model(name="projects/p/locations/us-central1/models/../../x"),
         exceptions.InvalidArgument),
        (lambda: models.merge_version_aliases(name=f"{clients['parent']}/models/nope@1",
                                              version_aliases=["Bad Alias"]), exceptions.InvalidArgument),
        (lambda: endpoints.deploy_model(endpoint=f"{clients['parent']}/endpoints/nope",
                                        deployed_model={"model": "x"}), exceptions.NotFound),
    ]
    for call, expected in cases:
        with pytest.raises(expected):
            call()
    assert {m.name for m in models.list_models(parent=clients["parent"])} == before


def test_every_call_needs_the_token(vertex):
    anonymous = v1.ModelServiceClient(credentials=Credentials(token="wrong"), client_options=OPTIONS)
    with pytest.raises(exceptions.Unauthenticated) as excinfo:
        anonymous.list_models(parent=vertex)
    assert excinfo.value.grpc_status_code == grpc.StatusCode.UNAUTHENTICATED
    assert "invalid authentication credentials" in str(excinfo.value)
