"""Bad input, one table: every case through googleapiclient gets its documented answer, stores nothing,
and the service answers the next valid request.

Request-level faults answer 400 (or 404) in Google's error shape; faults in one
prediction instance answer HTTP 200 `{"error": ...}` as the hosted service did.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from googleapiclient.errors import HttpError

from tests.include.local_platform.conftest import PARENT, PROJECT, unique


def deep_stack(build: Callable[[], object]) -> object:
    """Build a request under a raised recursion limit: the client itself must be able to encode
    a value nested past Python's default limit (the server gets no such allowance)."""
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(10_000)
    try:
        return build()
    finally:
        sys.setrecursionlimit(limit)


def nested(depth: int, leaf: object = 1.0) -> object:
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


@dataclass
class Target:
    """What the cases act on: a model with a READY version, a URL-reading model, a bucket."""

    model: str
    version: str
    urls_model: str
    bucket: str
    long_object: str


@pytest.fixture(scope="module")
def target(deploy, bucket) -> Target:
    model, version = deploy("tiny")
    urls_model, _ = deploy("urls")
    long_name = "o" * 250
    bucket.blob(long_name).upload_from_string(b"12345")
    return Target(model=model, version=version, urls_model=urls_model, bucket=bucket.name,
                  long_object=f"gs://{bucket.name}/{long_name}")


def job(t: Target, **changes) -> dict:
    prediction_input = {"modelName": t.model, "dataFormat": "JSON", "inputPaths": [f"gs://{t.bucket}/in.json"],
                        "outputPath": f"gs://{t.bucket}/out", "region": "us-central1"}
    body = {"jobId": unique("bad"), "predictionInput": prediction_input}
    for key, value in changes.items():
        if key in ("jobId", "labels"):
            body[key] = value
        else:
            prediction_input[key] = value
    return body


def version_body(t: Target, **changes) -> dict:
    return {"name": unique("v"), "deploymentUri": f"gs://{t.bucket}/savedmodels/tiny", **changes}


Call = Callable[[object, Target], object]  # (api, target) -> HttpRequest
M = lambda api: api.projects().models()  # noqa: E731
V = lambda api: api.projects().models().versions()  # noqa: E731
J = lambda api: api.projects().jobs()  # noqa: E731
P = lambda api: api.projects()  # noqa: E731
SIXTY_FIVE = {f"k{i}": "v" for i in range(65)}

# (case id, request, HTTP status, fragment of error.message; for status 200, of the instance's "error", or
# None when the prediction must succeed)
CASES: list[tuple[str, Call, int, str | None]] = [
    # models.create
    ("model name with dash", lambda a, t: M(a).create(parent=PARENT, body={"name": "has-dash"}), 400,
     "A name should start with a letter"),
    ("model name with dots", lambda a, t: M(a).create(parent=PARENT, body={"name": ".."}), 400,
     "A name should start with a letter"),
    ("model name too long", lambda a, t: M(a).create(parent=PARENT, body={"name": "x" * 129}), 400, "at most 128"),
    ("model labels as a list", lambda a, t: M(a).create(parent=PARENT, body={"name": unique("m"),
                                                                              "labels": ["a"]}), 400,
     "labels must be an object"),
    ("model label key uppercase", lambda a, t: M(a).create(parent=PARENT, body={"name": unique("m"),
                                                                                 "labels": {"Team": "a"}}), 400,
     "label key 'Team' is invalid"),
    ("model label key starts with digit", lambda a, t: M(a).create(parent=PARENT, body={
        "name": unique("m"), "labels": {"1x": "a"}}), 400, "label key '1x' is invalid"),
    ("model label value not a string", lambda a, t: M(a).create(parent=PARENT, body={
        "name": unique("m"), "labels": {"team": 3}}), 400, "label value of 'team'"),
    ("model label value too long", lambda a, t: M(a).create(parent=PARENT, body={
        "name": unique("m"), "labels": {"team": "a" * 64}}), 400, "label value of 'team'"),
    ("model 65 labels", lambda a, t: M(a).create(parent=PARENT, body={"name": unique("m"), "labels": SIXTY_FIVE}),
     400, "at most 64 labels"),
    ("model description over 8 KB", lambda a, t: M(a).create(parent=PARENT, body={
        "name": unique("m"), "description": "é" * 4097}), 400, "at most 8192 bytes"),
    ("model description nested", lambda a, t: M(a).create(parent=PARENT, body={
        "name": unique("m"), "description": nested(300)}), 400, "description must be a string"),
    ("model logging flag not boolean", lambda a, t: M(a).create(parent=PARENT, body={
        "name": unique("m"), "onlinePredictionLogging": "yes"}), 400, "true or false"),
    ("model region nested", lambda a, t: M(a).create(parent=PARENT, body={
        "name": unique("m"), "regions": [nested(300, "x")]}), 400, "at most 64 characters"),
    ("project id with underscore", lambda a, t: M(a).create(parent="projects/bad_project", body={
        "name": unique("m")}), 400, "Invalid project id"),
    ("project id dot-dot", lambda a, t: M(a).list(parent="projects/.."), 400, "Invalid project id"),
    # models.patch
    ("patch defaultVersion as a string", lambda a, t: M(a).patch(
        name=t.model, body={"defaultVersion": "v1"}, updateMask="defaultVersion.name"), 400,
     "defaultVersion.name must name a version"),
    ("patch defaultVersion name as a list", lambda a, t: M(a).patch(
        name=t.model, body={"defaultVersion": {"name": ["v1"]}}, updateMask="defaultVersion.name"), 400,
     "defaultVersion.name must name a version"),
    ("patch defaultVersion name with slashes", lambda a, t: M(a).patch(
        name=t.model, body={"defaultVersion": {"name": "../../x"}}, updateMask="defaultVersion.name"), 400,
     "A name should start with a letter"),
    ("patch labels as a list", lambda a, t: M(a).patch(name=t.model, body={"labels": ["x"]}, updateMask="labels"),
     400, "labels must be an object"),
    ("patch unknown mask", lambda a, t: M(a).patch(name=t.model, body={"name": "x"}, updateMask="name"), 400,
     "cannot be updated"),
    # versions
    ("version from a local path", lambda a, t: V(a).create(parent=t.model, body=version_body(
        t, deploymentUri="/etc/passwd")), 400, "deploymentUri (a SavedModel directory) must be a gs:// URI"),
    ("version from file://", lambda a, t: V(a).create(parent=t.model, body=version_body(
        t, deploymentUri="file:///etc")), 400, "must be a gs:// URI"),
    ("version uri with dot-dot", lambda a, t: V(a).create(parent=t.model, body=version_body(
        t, deploymentUri=f"gs://{t.bucket}/a/../b")), 400, "must be a gs:// URI"),
    ("version name invalid", lambda a, t: V(a).create(parent=t.model, body=version_body(t, name="v.1")), 400,
     "A name should start with a letter"),
    ("version runtimeVersion nested", lambda a, t: V(a).create(parent=t.model, body=version_body(
        t, runtimeVersion=nested(300, "2.11"))), 400, "runtime_version Error"),
    ("version labels bad", lambda a, t: V(a).create(parent=t.model, body=version_body(t, labels={"a": ["b"]})),
     400, "label value of 'a'"),
    ("version patch description nested", lambda a, t: V(a).patch(
        name=t.version, body={"description": nested(300)}, updateMask="description"), 400,
     "description must be a string"),
    ("version id dot-dot in the path", lambda a, t: V(a).get(name=f"{t.model}/versions/.."), 400,
     "A name should start with a letter"),
    # jobs.create
    ("job predictionInput 300 deep (unknown key)", lambda a, t: J(a).create(parent=PARENT, body=job(
        t, extra=nested(300))), 400, 'Unknown name "extra"'),
    ("job signatureName 300 deep", lambda a, t: J(a).create(parent=PARENT, body=job(
        t, signatureName=nested(300, "x"))), 400, "signature_name Error"),
    ("job labels as a list", lambda a, t: J(a).create(parent=PARENT, body=job(t, labels=["x"])), 400,
     "labels must be an object"),
    ("job batchSize 0", lambda a, t: J(a).create(parent=PARENT, body=job(t, batchSize=0)), 400,
     "between 1 and 10000"),
    ("job batchSize too big", lambda a, t: J(a).create(parent=PARENT, body=job(t, batchSize="10001")), 400,
     "between 1 and 10000"),
    ("job batchSize not a number", lambda a, t: J(a).create(parent=PARENT, body=job(t, batchSize="lots")), 400,
     "positive integer"),
    ("job batchSize boolean", lambda a, t: J(a).create(parent=PARENT, body=job(t, batchSize=True)), 400,
     "positive integer"),
    ("job maxWorkerCount negative", lambda a, t: J(a).create(parent=PARENT, body=job(t, maxWorkerCount=-1)), 400,
     "max_worker_count Error"),
    ("job 101 input paths", lambda a, t: J(a).create(parent=PARENT, body=job(
        t, inputPaths=[f"gs://{t.bucket}/i{n}" for n in range(101)])), 400, "1 to 100 gs:// paths"),
    ("job input path local", lambda a, t: J(a).create(parent=PARENT, body=job(t, inputPaths=["/etc/passwd"])),
     400, "must be a gs:// URI"),
    ("job uri from a local path", lambda a, t: J(a).create(parent=PARENT, body=job(
        t, modelName=None, uri="file:///etc")), 400, "must be a gs:// URI"),
    ("job output path nested", lambda a, t: J(a).create(parent=PARENT, body=job(
        t, outputPath=nested(300, "gs://x"))), 400, "outputPath (a directory) must be a gs:// URI"),
    ("job id dot-dot", lambda a, t: J(a).create(parent=PARENT, body=job(t, jobId="..")), 400,
     "A name should start with a letter"),
    ("job get with a bad id", lambda a, t: J(a).get(name=f"{PARENT}/jobs/a..b"), 400,
     "A name should start with a letter"),
    # predict: request-level
    ("predict instances not a list", lambda a, t: P(a).predict(name=t.model, body={"instances": {"x": 1}}), 200,
     "'instances' must be a non-empty list"),
    # predict: one instance's content
    ("predict 1010-deep key", lambda a, t: deep_stack(lambda: P(a).predict(name=t.model, body={
        "instances": [{"x": [1, 2], "key": nested(1010, "k")}]})), 200, "nested too deeply"),
    ("predict 900-deep x", lambda a, t: P(a).predict(name=t.model, body={
        "instances": [{"x": nested(900), "key": "k"}]}), 200, "cannot be read as float32"),
    ("predict URL /etc/passwd", lambda a, t: P(a).predict(name=t.urls_model, body={
        "instances": ["/etc/passwd"]}), 200, "Input 'file_url': only gs:// URLs are read; instance 0 is not one."),
    ("predict URL missing local file", lambda a, t: P(a).predict(name=t.urls_model, body={
        "instances": ["/no/such/file"]}), 200, "Input 'file_url': only gs:// URLs are read; instance 0 is not one."),
    ("predict URL file://", lambda a, t: P(a).predict(name=t.urls_model, body={
        "instances": ["file:///etc/passwd"]}), 200, "only gs:// URLs are read"),
    ("predict URL with NUL", lambda a, t: P(a).predict(name=t.urls_model, body={
        "instances": [f"gs://{t.bucket}/a\x00b"]}), 200, "is not a valid GCS object name"),
    ("predict URL missing object", lambda a, t: P(a).predict(name=t.urls_model, body={
        "instances": [f"gs://{t.bucket}/{'n' * 250}"]}), 200, "does not exist"),
    ("predict URL 250-character object name", lambda a, t: P(a).predict(name=t.urls_model, body={
        "instances": [t.long_object]}), 200, None),
]


def snapshot(api, t: Target) -> dict:
    """Everything a bad request could have touched, by name and etag (jobs by id: their states move)."""
    models = api.projects().models()
    jobs = api.projects().jobs()
    listed = models.list(parent=PARENT).execute().get("models", [])
    versions = models.versions().list(parent=t.model).execute().get("versions", [])
    filtered = jobs.list(parent=PARENT, filter="labels.owner=nobody").execute()  # a bad label breaks no filter
    return {
        "models": sorted((m["name"], m["etag"]) for m in listed),
        "versions": sorted((v["name"], v["etag"], v["state"]) for v in versions),
        "jobs": sorted(j["jobId"] for j in jobs.list(parent=PARENT).execute().get("jobs", [])),
        "filtered": filtered,
    }


@pytest.mark.parametrize(("case", "call", "status", "fragment"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_refused_and_changes_nothing(ml_api, target, case, call, status, fragment):
    before = snapshot(ml_api, target)
    request = call(ml_api, target)
    if status == 200:
        response = request.execute()
        if fragment is None:
            assert "predictions" in response, response
        else:
            assert set(response) == {"error"} and fragment in response["error"], response
    else:
        with pytest.raises(HttpError) as excinfo:
            request.execute()
        error = json.loads(excinfo.value.content)["error"]
        assert excinfo.value.resp.status == status == error["code"], error
        assert error["status"] == "INVALID_ARGUMENT" and fragment in error["message"], error
        for detail in error.get("details", []):  # Google's BadRequest: the description is the message's tail
            violation = detail["fieldViolations"][0]
            assert error["message"] == f"Field: {violation['field']} Error: {violation['description']}"
    assert snapshot(ml_api, target) == before
    # and the service still serves a valid request
    answer = ml_api.projects().predict(name=target.model, body={"instances": [{"x": [1, 2], "key": "ok"}]}).execute()
    assert answer["predictions"] == [{"y": 6.0, "key": "ok"}]


def test_valid_fields_are_stored_and_prediction_input_echoed_as_sent(ml_api, target):
    """The mirror image: what the checks accept is stored, and predictionInput comes back as sent."""
    created = ml_api.projects().models().create(parent=PARENT, body={
        "name": unique("ok"), "labels": {"team": "ml", "run-id": "r_1"}, "description": "é" * 4096,
        "onlinePredictionLogging": True}).execute()
    assert created["labels"] == {"team": "ml", "run-id": "r_1"} and created["onlinePredictionLogging"] is True
    body = job(target, labels={"owner": "me"})
    sent = json.loads(json.dumps(body["predictionInput"]))
    assert ml_api.projects().jobs().create(parent=PARENT, body=body).execute()["predictionInput"] == sent
    got = ml_api.projects().jobs().get(name=f"projects/{PROJECT}/jobs/{body['jobId']}").execute()
    assert got["predictionInput"] == sent and "batchSize" not in got["predictionInput"]


def test_batch_job_counts_bad_url_instances_and_predicts_the_rest(ml_api, target, bucket, gcs_prefix):
    """The same per-instance faults in a batch job: each is a line of errors_stats, the job SUCCEEDS."""
    from tests.include.local_platform.conftest import wait_job
    from tests.include.local_platform.workers.test_batch import read_outputs

    lines = [target.long_object, "/etc/passwd", "file:///etc/passwd", f"gs://{target.bucket}/a\x00b",
             json.dumps(nested(500, "x")), target.long_object]
    bucket.blob(f"{gcs_prefix}/urls.json").upload_from_string(
        "\n".join(line if line.startswith("[") else json.dumps(line) for line in lines))
    body = {"jobId": unique("urls"), "predictionInput": {
        "modelName": target.urls_model, "dataFormat": "JSON", "region": "us-central1", "batchSize": 3,
        "inputPaths": [f"gs://{bucket.name}/{gcs_prefix}/urls.json"], "outputPath": f"gs://{bucket.name}/{gcs_prefix}/out"}}
    ml_api.projects().jobs().create(parent=PARENT, body=body).execute()
    job = wait_job(ml_api, body["jobId"])
    assert job["state"] == "SUCCEEDED", job
    results, errors, _ = read_outputs(bucket, f"{gcs_prefix}/out")
    assert [row["size"] for row in results] == [5, 5]
    assert sum(count for _, count in errors) == 4 == int(job["predictionOutput"]["errorCount"])
    assert sum(count for message, count in errors if "only gs:// URLs are read" in message) == 3
