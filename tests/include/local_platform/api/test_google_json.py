"""Google's JSON rules, through googleapiclient: both field spellings in, lowerCamelCase out, defaults not echoed.

googleapiclient sends a body as given, so a client written against the proto names
(``deployment_uri``) reaches the service exactly as it reached Google's API.
"""

from __future__ import annotations

import json

import pytest
from googleapiclient.errors import HttpError

from include.local_platform.api.calls import encoded
from include.local_platform.serving.numeric_json import dumps
from tests.include.local_platform.conftest import PARENT, unique, wait_operation


def _spelled(body: dict, snake: bool) -> dict:
    """``body`` with its message fields in snake_case (``snake``) or as given (lowerCamelCase); labels untouched."""
    if not snake:
        return body
    import re

    def convert(value):
        if isinstance(value, list):
            return [convert(item) for item in value]
        if not isinstance(value, dict):
            return value
        return {re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower(): item if key == "labels" else convert(item)
                for key, item in value.items()}

    return convert(body)


@pytest.mark.parametrize("snake", [False, True], ids=["camelCase", "snake_case"])
def test_model_and_version_create_and_patch_take_both_spellings(ml_api, model_uris, snake):
    models = ml_api.projects().models()
    model = unique("m_json")
    created = models.create(parent=PARENT, body=_spelled({
        "name": model, "description": "d", "onlinePredictionLogging": True, "labels": {"team_name": "a"}},
        snake)).execute()
    assert created["onlinePredictionLogging"] is True and created["labels"] == {"team_name": "a"}
    assert "online_prediction_logging" not in created
    operation = models.versions().create(parent=f"{PARENT}/models/{model}", body=_spelled({
        "name": "v1", "deploymentUri": model_uris["tiny"], "runtimeVersion": "2.11", "pythonVersion": "3.7",
        "machineType": "mls1-c1-m2", "labels": {"variant_name": "b64"}}, snake)).execute()
    version = wait_operation(ml_api, operation["name"])["response"]
    assert version["deploymentUri"] == model_uris["tiny"] and version["labels"] == {"variant_name": "b64"}
    assert "deployment_uri" not in version
    mask = "default_version.name" if snake else "defaultVersion.name"
    patched = models.patch(name=f"{PARENT}/models/{model}", updateMask=f"description,{mask}", body=_spelled({
        "description": "new", "defaultVersion": {"name": f"{PARENT}/models/{model}/versions/v1"}},
        snake)).execute()
    assert patched["response"]["description"] == "new"
    models.versions().patch(name=f"{PARENT}/models/{model}/versions/v1", updateMask="labels",
                            body=_spelled({"labels": {"stage_name": "x"}}, snake)).execute()
    assert models.versions().get(name=f"{PARENT}/models/{model}/versions/v1").execute()["labels"] == {
        "stage_name": "x"}


@pytest.mark.parametrize("snake", [False, True], ids=["camelCase", "snake_case"])
def test_jobs_take_both_spellings_and_echo_only_what_was_sent(ml_api, deploy, bucket, gcs_prefix, snake):
    _, version = deploy("tiny")
    jobs = ml_api.projects().jobs()
    prediction = _spelled({"jobId": unique("j_json"), "predictionInput": {
        "dataFormat": "JSON", "inputPaths": [f"gs://{bucket.name}/{gcs_prefix}/in.json"],
        "outputPath": f"gs://{bucket.name}/{gcs_prefix}/out", "region": "us-central1", "versionName": version}},
        snake)
    created = jobs.create(parent=PARENT, body=prediction).execute()
    assert created["predictionInput"]["versionName"] == version and "batchSize" not in created["predictionInput"]
    training = _spelled({"jobId": unique("t_json"), "trainingInput": {
        "packageUris": [f"gs://{bucket.name}/{gcs_prefix}/missing-0.1.tar.gz"], "pythonModule": "trainer.task",
        "region": "us-central1", "runtimeVersion": "2.11"}}, snake)
    created = jobs.create(parent=PARENT, body=training).execute()
    job_id = training["job_id" if snake else "jobId"]
    stored = jobs.get(name=f"{PARENT}/jobs/{job_id}").execute()
    # proto3 JSON omits defaults: scaleTier BASIC (the enum's zero value) was not sent, so it is not echoed
    assert "scaleTier" not in created["trainingInput"] and "scaleTier" not in stored["trainingInput"]
    assert stored["trainingInput"]["packageUris"] == training.get("trainingInput", training.get("training_input"))[
        "package_uris" if snake else "packageUris"]


@pytest.mark.parametrize(("method", "body", "text"), [
    ("models", {"name": "m_twice", "description": "a", "des_cription": "b"}, None),
    ("models", {"name": "m_twice", "online_prediction_logging": True, "onlinePredictionLogging": False},
     'Field "online_prediction_logging" is set twice'),
    ("jobs", {"jobId": "j_twice", "job_id": "j_twice", "predictionInput": {}}, 'Field "job_id" is set twice'),
])
def test_a_field_in_both_spellings_is_refused(ml_api, method, body, text):
    resource = getattr(ml_api.projects(), method)()
    if text is None:  # an unrelated underscore name is simply another (unknown) field, as before
        resource.create(parent=PARENT, body={**body, "name": unique("m_ok")}).execute()
        return
    with pytest.raises(HttpError) as error:
        resource.create(parent=PARENT, body=body).execute()
    assert error.value.status_code == 400 and text in json.loads(error.value.content)["error"]["message"]


def test_an_answer_that_cannot_be_written_is_a_500_in_googles_shape():
    deep: list = []
    for _ in range(300):
        deep = [deep]
    status, data = encoded(200, {"predictions": deep}, dumps)
    assert status == 500 and json.loads(data)["error"]["status"] == "INTERNAL"
    assert encoded(200, {"ok": 1}, dumps) == (200, b'{"ok":1}')
