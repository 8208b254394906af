"""Models, versions and operations through googleapiclient: life cycle and every refusal."""

from __future__ import annotations

import json

import pytest
from googleapiclient.errors import HttpError

from tests.include.local_platform.conftest import PARENT, unique, wait_operation


def error_of(excinfo) -> dict:
    return json.loads(excinfo.value.content)["error"]


def legacy_hook_sees_existing_model(error: HttpError) -> bool:
    """The check of apache-airflow-providers-google's last MLEngineHook.create_model (<= 14.x), step by step:
    only this exact shape makes it return the existing model instead of raising."""
    if error.resp.status != 409:
        return False
    str(error)  # fills in error_details, as the hook does
    if not error.error_details or len(error.error_details) != 1:
        return False
    detail = error.error_details[0]
    if detail["@type"] != "type.googleapis.com/google.rpc.BadRequest":
        return False
    if "fieldViolations" not in detail or len(detail["fieldViolations"]) != 1:
        return False
    violation = detail["fieldViolations"][0]
    return (violation["field"] == "model.name"
            and violation["description"] == "A model with the same name already exists.")


def test_model_create_get_list_patch_delete(ml_api):
    models = ml_api.projects().models()
    name = unique("lifecycle")
    body = {"name": name, "description": "d", "regions": ["europe-west1"]}
    created = models.create(parent=PARENT, body=body).execute()
    assert created["name"] == f"{PARENT}/models/{name}"
    assert created["regions"] == ["europe-west1"]
    assert models.get(name=created["name"]).execute()["description"] == "d"
    listed = [m["name"] for m in models.list(parent=PARENT).execute()["models"]]
    assert created["name"] in listed

    operation = models.patch(name=created["name"], body={"description": "new"}, updateMask="description").execute()
    assert operation["done"] is True and operation["response"]["description"] == "new"
    assert models.get(name=created["name"]).execute()["description"] == "new"

    deleted = models.delete(name=created["name"]).execute()
    assert deleted["done"] is True and deleted["metadata"]["operationType"] == "DELETE_MODEL"
    with pytest.raises(HttpError) as excinfo:
        models.get(name=created["name"]).execute()
    assert excinfo.value.resp.status == 404


def test_model_refusals(ml_api):
    models = ml_api.projects().models()
    name = unique("dup")
    models.create(parent=PARENT, body={"name": name}).execute()
    with pytest.raises(HttpError) as excinfo:
        models.create(parent=PARENT, body={"name": name}).execute()
    error = error_of(excinfo)
    assert error["code"] == 409 and error["status"] == "ALREADY_EXISTS"
    assert error["message"] == "Field: model.name Error: A model with the same name already exists."
    assert error["details"] == [{"@type": "type.googleapis.com/google.rpc.BadRequest", "fieldViolations": [
        {"field": "model.name", "description": "A model with the same name already exists."}]}]
    assert legacy_hook_sees_existing_model(excinfo.value)

    for bad in ("1starts_with_digit", "has-dash", "x" * 129, ""):
        with pytest.raises(HttpError) as excinfo:
            models.create(parent=PARENT, body={"name": bad}).execute()
        assert error_of(excinfo)["status"] == "INVALID_ARGUMENT", bad

    with pytest.raises(HttpError) as excinfo:
        models.create(parent=PARENT, body={"name": unique("regions"), "regions": ["a", "b"]}).execute()
    assert "at most one region" in error_of(excinfo)["message"]

    with pytest.raises(HttpError) as excinfo:
        models.patch(name=f"{PARENT}/models/{name}", body={"name": "x"}, updateMask="name").execute()
    assert error_of(excinfo)["status"] == "INVALID_ARGUMENT"


def test_list_pagination_and_empty(ml_api):
    project = f"projects/{unique('p').replace('_', '-')}"
    models = ml_api.projects().models()
    assert models.list(parent=project).execute() == {}
    names = [unique("page") for _ in range(5)]
    for name in names:
        models.create(parent=project, body={"name": name}).execute()
    first = models.list(parent=project, pageSize=2).execute()
    assert len(first["models"]) == 2 and first["nextPageToken"]
    seen, request = [], models.list(parent=project, pageSize=2)
    while request is not None:
        response = request.execute()
        seen += [m["name"].rsplit("/", 1)[-1] for m in response.get("models", [])]
        request = models.list_next(request, response)
    assert seen == names


def test_version_lifecycle_default_and_delete_rules(ml_api, deploy, model_uris):
    model, first = deploy("tiny")
    versions = ml_api.projects().models().versions()
    got = versions.get(name=first).execute()
    assert got["state"] == "READY" and got["isDefault"] is True
    assert ml_api.projects().models().get(name=model).execute()["defaultVersion"]["name"] == first

    operation = versions.create(parent=model, body={"name": "v2", "deploymentUri": model_uris["tiny3"],
                                                     "labels": {"val_iou": "0_5"}}).execute()
    assert operation["name"].startswith(f"{PARENT}/operations/create_{model.rsplit('/', 1)[-1]}_v2-")
    metadata = operation["metadata"]
    assert metadata["@type"] == "type.googleapis.com/google.cloud.ml.v1.OperationMetadata"
    assert metadata["operationType"] == "CREATE_VERSION" and metadata["version"]["state"] == "CREATING"
    done = wait_operation(ml_api, operation["name"])
    assert done["response"]["state"] == "READY"
    second = f"{model}/versions/v2"
    assert "isDefault" not in versions.get(name=second).execute()

    # the default cannot be deleted while others exist
    with pytest.raises(HttpError) as excinfo:
        versions.delete(name=first).execute()
    assert error_of(excinfo)["status"] == "FAILED_PRECONDITION"

    switched = versions.setDefault(name=second, body={}).execute()
    assert switched["isDefault"] is True
    assert ml_api.projects().models().get(name=model).execute()["defaultVersion"]["name"] == second

    patched = versions.patch(name=second, body={"description": "better"}, updateMask="description").execute()
    assert patched["done"] and patched["response"]["description"] == "better"
    assert versions.get(name=second).execute()["labels"] == {"val_iou": "0_5"}

    # model delete refused while versions exist
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().models().delete(name=model).execute()
    assert error_of(excinfo)["status"] == "FAILED_PRECONDITION"

    assert versions.delete(name=first).execute()["done"] is True
    listed = versions.list(parent=model).execute()["versions"]
    assert [v["name"] for v in listed] == [second]
    # the last version (the default) may go, and the model then has no default
    versions.delete(name=second).execute()
    assert "defaultVersion" not in ml_api.projects().models().get(name=model).execute()
    assert versions.list(parent=model).execute() == {}
    ml_api.projects().models().delete(name=model).execute()


def test_version_refusals(ml_api, deploy, model_uris):
    model, first = deploy("tiny")
    versions = ml_api.projects().models().versions()
    with pytest.raises(HttpError) as excinfo:
        versions.create(parent=model, body={"name": "v1", "deploymentUri": model_uris["tiny"]}).execute()
    assert error_of(excinfo)["code"] == 409  # Google documented no text: the model's wording (docs/local-service.md)
    assert error_of(excinfo)["message"] == "Field: version.name Error: A version with the same name already exists."
    with pytest.raises(HttpError) as excinfo:
        versions.create(parent=model, body={"name": "v-bad", "deploymentUri": model_uris["tiny"]}).execute()
    assert error_of(excinfo)["status"] == "INVALID_ARGUMENT"
    with pytest.raises(HttpError) as excinfo:
        versions.create(parent=model, body={"name": "v3", "deploymentUri": "/local/path"}).execute()
    assert "deployment_uri" in error_of(excinfo)["message"]
    with pytest.raises(HttpError) as excinfo:
        versions.create(parent=f"{PARENT}/models/nope", body={"name": "v1", "deploymentUri": "gs://b/x"}).execute()
    assert excinfo.value.resp.status == 404
    with pytest.raises(HttpError) as excinfo:
        versions.get(name=f"{model}/versions/nope").execute()
    assert excinfo.value.resp.status == 404
    with pytest.raises(HttpError) as excinfo:
        versions.patch(name=first, body={"deploymentUri": "gs://x/y"}, updateMask="deploymentUri").execute()
    assert error_of(excinfo)["status"] == "INVALID_ARGUMENT"


def test_bad_artifacts_end_failed_with_message(ml_api, bucket, gcs_prefix):
    models = ml_api.projects().models()
    model = unique("badart")
    models.create(parent=PARENT, body={"name": model}).execute()
    bucket.blob(f"{gcs_prefix}/junk/readme.txt").upload_from_string("not a model")
    cases = {"empty": f"gs://{bucket.name}/{gcs_prefix}/nothing_here",
             "junk": f"gs://{bucket.name}/{gcs_prefix}/junk"}
    for version, uri in cases.items():
        operation = models.versions().create(parent=f"{PARENT}/models/{model}",
                                             body={"name": version, "deploymentUri": uri}).execute()
        done = wait_operation(ml_api, operation["name"])
        assert "saved_model.pb" in done["error"]["message"]
        got = models.versions().get(name=f"{PARENT}/models/{model}/versions/{version}").execute()
        assert got["state"] == "FAILED" and got["errorMessage"].startswith("Create Version failed")
    # no READY version, so no default
    assert "defaultVersion" not in models.get(name=f"{PARENT}/models/{model}").execute()


def test_too_many_files_fails(ml_api, bucket, gcs_prefix):
    for i in range(1001):
        bucket.blob(f"{gcs_prefix}/many/f{i:04d}").upload_from_string(b"")
    models = ml_api.projects().models()
    model = unique("many")
    models.create(parent=PARENT, body={"name": model}).execute()
    operation = models.versions().create(parent=f"{PARENT}/models/{model}", body={
        "name": "v1", "deploymentUri": f"gs://{bucket.name}/{gcs_prefix}/many"}).execute()
    assert "more than 1000 files" in wait_operation(ml_api, operation["name"])["error"]["message"]


def test_operations_list_and_cancel_of_done(ml_api, deploy):
    model, _ = deploy("tiny")
    listed = ml_api.projects().operations().list(name=PARENT).execute()["operations"]
    mine = [op for op in listed if op["metadata"]["modelName"] == model]
    assert mine and all(op["done"] for op in mine)
    assert ml_api.projects().operations().cancel(name=mine[0]["name"]).execute() == {}
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().operations().get(name=f"{PARENT}/operations/nope").execute()
    assert excinfo.value.resp.status == 404


def test_unimplemented_methods_answer_501(ml_api, deploy):
    model, _ = deploy("tiny")
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().models().getIamPolicy(resource=model).execute()
    assert error_of(excinfo) == {"code": 501, "status": "UNIMPLEMENTED", "message": error_of(excinfo)["message"]}
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().explain(name=model, body={}).execute()
    assert excinfo.value.resp.status == 501
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().jobs().create(parent=PARENT, body={"jobId": unique("train"), "trainingInput": {
            "hyperparameters": {"goal": "MAXIMIZE", "maxTrials": 2}}}).execute()  # tuning; training works
    assert excinfo.value.resp.status == 501


def test_busy_version_refuses_updates_and_cancel_ends_it(ml_api, deploy, bucket, gcs_prefix, tmp_path):
    """A version with many files stays CREATING for seconds: updates are refused, cancel ends it FAILED."""
    from tests.savedmodels import export_tiny_model, upload_dir

    local = export_tiny_model(tmp_path / "slow")
    (local / "assets").mkdir(exist_ok=True)
    for i in range(900):
        (local / "assets" / f"pad{i:04d}.txt").write_text("x")
    slow_uri = upload_dir(bucket, local, f"{gcs_prefix}/slow")
    model, first = deploy("tiny")
    versions = ml_api.projects().models().versions()
    operation = versions.create(parent=model, body={"name": "slow", "deploymentUri": slow_uri}).execute()
    slow = f"{model}/versions/slow"
    assert versions.get(name=slow).execute()["state"] == "CREATING"
    for request in (versions.patch(name=slow, body={"description": "x"}, updateMask="description"),
                    versions.delete(name=slow), versions.setDefault(name=slow, body={}),
                    ml_api.projects().predict(name=slow, body={"instances": [{"x": [1, 2], "key": "a"}]})):
        with pytest.raises(HttpError) as excinfo:
            request.execute()
        assert error_of(excinfo)["status"] == "FAILED_PRECONDITION", request.uri
        assert "CREATING" in error_of(excinfo)["message"]
    assert ml_api.projects().operations().cancel(name=operation["name"]).execute() == {}
    done = wait_operation(ml_api, operation["name"])
    assert done["error"] == {"code": 1, "message": "Create Version cancelled."}
    assert done["metadata"]["isCancellationRequested"] is True
    got = versions.get(name=slow).execute()
    assert got["state"] == "FAILED" and got["errorMessage"] == "Create Version cancelled."
    assert ml_api.projects().models().get(name=model).execute()["defaultVersion"]["name"] == first


def test_object_names_cannot_escape_the_service_store(ml_api, bucket, gcs_prefix, tmp_path):
    """`prefix//abs/path` is a valid GCS object name; copying it must not write outside the store."""
    escape = tmp_path / "escaped"
    bucket.blob(f"{gcs_prefix}/evil/saved_model.pb").upload_from_string(b"x")
    bucket.blob(f"{gcs_prefix}/evil/{escape}").upload_from_string(b"pwned")
    model = unique("evil")
    ml_api.projects().models().create(parent=PARENT, body={"name": model}).execute()
    operation = ml_api.projects().models().versions().create(parent=f"{PARENT}/models/{model}", body={
        "name": "v1", "deploymentUri": f"gs://{bucket.name}/{gcs_prefix}/evil"}).execute()
    done = wait_operation(ml_api, operation["name"])
    assert "not a plain relative path" in done["error"]["message"]
    assert not escape.exists()


def test_a_model_holds_at_most_the_documented_number_of_versions(tmp_path, monkeypatch):
    """Each version keeps a copy of its artifacts on the service's disk: the number per model is bounded."""
    from fastapi.testclient import TestClient

    from include.local_platform.app import create_app
    from include.local_platform.resources import models

    monkeypatch.setattr(models, "MAX_VERSIONS_PER_MODEL", 2)
    client = TestClient(create_app(tmp_path), base_url="http://127.0.0.1")
    assert client.post(f"/v1/{PARENT}/models", json={"name": "capped"}).status_code == 200
    for name in ("v1", "v2"):
        answer = client.post(f"/v1/{PARENT}/models/capped/versions",
                             json={"name": name, "deploymentUri": "gs://nowhere/model"})
        assert answer.status_code == 200, answer.json()
    refused = client.post(f"/v1/{PARENT}/models/capped/versions", json={"name": "v3",
                                                                         "deploymentUri": "gs://nowhere/model"})
    assert refused.status_code == 429 and refused.json()["error"]["status"] == "RESOURCE_EXHAUSTED"
    assert [v["name"].rsplit("/", 1)[1] for v in client.get(
        f"/v1/{PARENT}/models/capped/versions").json()["versions"]] == ["v1", "v2"]


def test_a_version_deleted_and_created_again_at_once_is_deployed_each_time(ml_api, deploy, model_uris):
    """A version's name can be deployed again right after a delete (a cleared task re-running): each creation is
    its own piece of work (its lease is its operation's), so the next is never mistaken for the one that ended."""
    model_name, _ = deploy("tiny")
    versions = ml_api.projects().models().versions()
    for factor_model, expected in (("tiny3", 6.0), ("tiny", 4.0), ("tiny3", 6.0)):
        operation = versions.create(parent=model_name, body={"name": "again",
                                                             "deploymentUri": model_uris[factor_model]}).execute()
        assert wait_operation(ml_api, operation["name"], timeout=30)["response"]["state"] == "READY"
        answer = ml_api.projects().predict(name=f"{model_name}/versions/again",
                                           body={"instances": [{"x": [1, 1], "key": "k"}]}).execute()
        assert answer["predictions"][0]["y"] == expected
        wait_operation(ml_api, versions.delete(name=f"{model_name}/versions/again").execute()["name"])
