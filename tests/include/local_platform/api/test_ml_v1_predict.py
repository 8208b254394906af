"""Online prediction through the client everyone copied from Google's docs (predict_json)."""

from __future__ import annotations

import base64
import json
import re
import urllib.request

import numpy as np
import pytest
from googleapiclient.errors import HttpError

from tests.include.local_platform.conftest import PARENT, unique, wait_operation


def predict_json(api, name: str, instances: list) -> list:
    """The ml/v1 sample client, unchanged in substance."""
    response = api.projects().predict(name=name, body={"instances": instances}).execute()
    if "error" in response:
        raise RuntimeError(response["error"])
    return response["predictions"]


def jpeg(brightness: int) -> bytes:
    import tensorflow as tf

    return tf.io.encode_jpeg(np.full((8, 8, 3), brightness, dtype=np.uint8), quality=95).numpy()


@pytest.fixture(scope="module")
def tiny_model(deploy) -> str:
    return deploy("tiny")[0]


def test_named_inputs_model_and_version_paths(ml_api, deploy):
    model, version = deploy("tiny")
    instances = [{"x": [1.0, 2.0], "key": "a"}, {"x": [3.0, 4.0], "key": "b"}]
    expected = [{"y": 6.0, "key": "a"}, {"y": 14.0, "key": "b"}]
    assert predict_json(ml_api, model, instances) == expected  # the default version
    assert predict_json(ml_api, version, instances) == expected


def test_single_input_plain_lists(ml_api, deploy):
    model, _ = deploy("single")
    assert predict_json(ml_api, model, [[1, 2, 3], [0.5, 0.5, 0]]) == [{"total": 6.0}, {"total": 1.0}]
    assert predict_json(ml_api, model, [{"x": [1, 1, 1]}]) == [{"total": 3.0}]


def test_b64_bytes_and_signature_name(ml_api, deploy):
    import tensorflow as tf

    model, _ = deploy("images")
    dark, bright = jpeg(20), jpeg(230)
    predictions = predict_json(ml_api, model, [
        {"image_bytes": {"b64": base64.b64encode(dark).decode()}, "key": "dark"},
        {"image_bytes": {"b64": base64.b64encode(bright).decode()}, "key": "bright"},
    ])
    assert [p["key"] for p in predictions] == ["dark", "bright"]
    assert predictions[0]["brightness"] < 0.15 < 0.85 < predictions[1]["brightness"]

    example = tf.train.Example(features=tf.train.Features(feature={
        "image/encoded": tf.train.Feature(bytes_list=tf.train.BytesList(value=[bright])),
        "key": tf.train.Feature(bytes_list=tf.train.BytesList(value=[b"ex1"]))})).SerializeToString()
    response = ml_api.projects().predict(name=model, body={
        "instances": [{"b64": base64.b64encode(example).decode()}], "signature_name": "examples"}).execute()
    assert response["predictions"][0]["key"] == "ex1"
    assert response["predictions"][0]["brightness"] == pytest.approx(predictions[1]["brightness"], abs=1e-6)


@pytest.mark.parametrize(("instances", "fragment"), [
    ([{"x": [1.0], "key": "a"}], "shape"),
    ([{"x": [1.0, 2.0]}], "missing ['key']"),
    ([{"x": [1.0, 2.0], "key": "a", "extra": 1}], "unexpected ['extra']"),
    ([[1.0, 2.0]], "must be an object"),
    ([{"x": ["a", "b"], "key": "a"}], "cannot be read as float32"),
    ([{"x": [-1.0, 2.0], "key": "a"}], "must not be negative"),
    ([], "non-empty list"),
])
def test_instance_errors_answer_error_field(ml_api, tiny_model, instances, fragment):
    response = ml_api.projects().predict(name=tiny_model, body={"instances": instances}).execute()
    assert set(response) == {"error"} and fragment in response["error"], response


def test_unknown_signature_is_an_error_field(ml_api, deploy):
    model, _ = deploy("tiny")
    response = ml_api.projects().predict(name=model, body={"instances": [{"x": [1, 2], "key": "a"}],
                                                           "signature_name": "nope"}).execute()
    assert "no signature 'nope'" in response["error"]


def _post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict]:
    request = urllib.request.Request(url, data=data, method="POST",
                                     headers={"Content-Type": "application/json", **headers})
    try:
        with urllib.request.urlopen(request) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def test_request_level_faults_use_google_error_shape(ml_api, ml_service, deploy):
    model, _ = deploy("tiny")
    url = f"{ml_service.url}v1/{model}:predict"
    status, body = _post(url, b"{not json", ml_service.headers)
    assert status == 400 and body["error"]["status"] == "INVALID_ARGUMENT"
    assert "Invalid JSON payload" in body["error"]["message"]
    status, body = _post(url, json.dumps({"instances": [{"x": [1, 2], "key": "k" * 2_000_000}]}).encode(),
                         ml_service.headers)
    assert status == 400 and "payload size exceeds the limit: 1572864" in body["error"]["message"]
    status, body = _post(url, b'{"no_instances": 1}', ml_service.headers)
    assert status == 400
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().predict(name=f"{PARENT}/models/nope", body={"instances": [1]}).execute()
    assert excinfo.value.resp.status == 404
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().predict(name=f"{model}/versions/nope", body={"instances": [1]}).execute()
    assert excinfo.value.resp.status == 404


def test_not_ready_and_no_default_are_failed_precondition(ml_api, bucket, gcs_prefix):
    models = ml_api.projects().models()
    model = unique("noready")
    models.create(parent=PARENT, body={"name": model}).execute()
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().predict(name=f"{PARENT}/models/{model}", body={"instances": [1]}).execute()
    assert excinfo.value.resp.status == 400 and b"no default version" in excinfo.value.content
    operation = models.versions().create(parent=f"{PARENT}/models/{model}", body={
        "name": "broken", "deploymentUri": f"gs://{bucket.name}/{gcs_prefix}/missing"}).execute()
    wait_operation(ml_api, operation["name"])
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().predict(name=f"{PARENT}/models/{model}/versions/broken",
                                  body={"instances": [1]}).execute()
    assert excinfo.value.resp.status == 400 and b"FAILED_PRECONDITION" in excinfo.value.content


def test_injected_faults_then_recovery(ml_api, ml_service, deploy):
    model, _ = deploy("tiny")
    _post(f"{ml_service.url}_local/faults", json.dumps({"status": 503, "times": 1, "method": "POST",
                                                         "path_regex": ":predict$"}).encode(), ml_service.headers)
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().predict(name=model, body={"instances": [{"x": [1, 2], "key": "a"}]}).execute()
    assert excinfo.value.resp.status == 503
    assert predict_json(ml_api, model, [{"x": [1, 2], "key": "a"}]) == [{"y": 6.0, "key": "a"}]


def test_version_page_and_upload_form(ml_service, deploy):
    _, version = deploy("images")
    with urllib.request.urlopen(urllib.request.Request(f"{ml_service.url}ui/{version}",
                                                       headers=ml_service.headers)) as response:
        page = response.read().decode()
    assert "READY" in page and "type='file'" in page
    csrf = re.search(r"name='csrf_token' value='([0-9a-f]+)'", page).group(1)
    boundary = "----testboundary"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"csrf_token\"\r\n\r\n{csrf}\r\n"
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.jpg\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + jpeg(200) + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{ml_service.url}ui/{version}?csrf_token={csrf}", data=body, method="POST",
                                     headers={**ml_service.headers,
                                              "Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(request) as response:
        page = response.read().decode()
    assert "<h2>Prediction</h2>" in page and "brightness" in page


def test_default_version_follows_every_change(ml_api, deploy, model_uris):
    """The remembered model -> version lookup never outlives a change: create, setDefault, delete."""
    model, v1 = deploy("tiny")
    instances = [{"x": [1.0, 2.0], "key": "a"}]
    versions = ml_api.projects().models().versions()
    assert predict_json(ml_api, model, instances) == [{"y": 6.0, "key": "a"}]
    created = versions.create(parent=model, body={"name": "v2", "deploymentUri": model_uris["tiny3"]}).execute()
    assert "error" not in wait_operation(ml_api, created["name"])
    assert predict_json(ml_api, model, instances) == [{"y": 6.0, "key": "a"}]  # v1 is still the default
    versions.setDefault(name=f"{model}/versions/v2", body={}).execute()
    assert predict_json(ml_api, model, instances) == [{"y": 9.0, "key": "a"}]
    versions.setDefault(name=v1, body={}).execute()
    assert predict_json(ml_api, model, instances) == [{"y": 6.0, "key": "a"}]
    assert predict_json(ml_api, f"{model}/versions/v2", instances) == [{"y": 9.0, "key": "a"}]
    deleted = versions.delete(name=f"{model}/versions/v2").execute()
    wait_operation(ml_api, deleted["name"])
    with pytest.raises(HttpError) as raised:
        predict_json(ml_api, f"{model}/versions/v2", instances)
    assert raised.value.resp.status == 404


def test_large_number_arrays_single_and_named(ml_api, deploy):
    """Instances whose arrays are large enough for the numeric fast path answer like small ones."""
    single, _ = deploy("single")
    rows = [[0.25, 0.5, 1]] * 200  # one 200x3 array: the whole `instances` list is read natively
    assert predict_json(ml_api, single, rows) == [{"total": 1.75}] * 200
    with pytest.raises(RuntimeError, match="ragged"):  # irregular: read as lists, answered as before
        predict_json(ml_api, single, [*rows, [1, 2]])


def test_caller_hanging_up_mid_body_leaves_the_service_answering(ml_api, ml_service, tiny_model):
    """A predict whose body never arrives in full (the caller closes first) is dropped without an answer."""
    import socket

    head = (f"POST /v1/{tiny_model}:predict HTTP/1.1\r\nHost: 127.0.0.1:{ml_service.port}\r\n"
            f"Authorization: Bearer {ml_service.token}\r\nContent-Type: application/json\r\n"
            "Content-Length: 100000\r\n\r\n").encode()
    traces_before = ml_service.server.log_path.read_text().count("Traceback")
    for _ in range(3):
        with socket.create_connection(("127.0.0.1", ml_service.port), timeout=10) as caller:
            caller.sendall(head + b'{"instances": [{"x": [1, 2], ')
    assert predict_json(ml_api, tiny_model, [{"x": [1, 2], "key": "a"}]) == [{"y": 6.0, "key": "a"}]
    with urllib.request.urlopen(f"{ml_service.url}healthz", timeout=10) as response:
        assert response.status == 200
    assert ml_service.server.log_path.read_text().count("Traceback") == traces_before  # not logged as a bug


def test_a_slow_model_is_answered_off_the_event_loop(ml_api, ml_service, deploy):
    """Small calls for a loaded model run on the event loop; one slow model once stalled every request.
    A version measured slower than the inline budget runs in worker threads: the service keeps answering."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    model, _ = deploy("slow")
    started = time.monotonic()
    assert predict_json(ml_api, model, [[1, 2, 3]]) == [{"total": 6.0}]  # measured: slow
    one_call = time.monotonic() - started
    assert one_call > 0.1, f"the slow model took only {one_call:.3f} s: no test"

    def slow_call(_) -> list:
        request = urllib.request.Request(f"{ml_service.url}v1/{model}:predict", method="POST",
                                         data=json.dumps({"instances": [[1, 2, 3]]}).encode(),
                                         headers={**ml_service.headers, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())["predictions"]

    latencies = []
    with ThreadPoolExecutor(3) as pool:
        calls = [pool.submit(slow_call, index) for index in range(3)]
        while not all(call.done() for call in calls):
            before = time.monotonic()
            urllib.request.urlopen(f"{ml_service.url}healthz", timeout=30).read()
            latencies.append(time.monotonic() - before)
            time.sleep(0.02)
    assert [call.result() for call in calls] == [[{"total": 6.0}]] * 3
    assert len(latencies) >= 3 and max(latencies) < one_call / 2, (one_call, latencies)


def test_concurrent_calls_are_batched_and_each_caller_gets_its_own_answer(ml_api, ml_service, deploy):
    """Twelve callers at once on one version (a model that takes a while per call, so calls pile up):
    TensorFlow sees fewer, larger calls (the probe model answers the batch size it ran with) and every caller
    gets its own rows. Then the same with one caller whose values the model refuses: it gets its own error,
    the others their rows."""
    from concurrent.futures import ThreadPoolExecutor

    model, _ = deploy("probe")
    assert predict_json(ml_api, model, [[0.0, 0.0]])[0]["batch"] == 1  # loads the model; a lone call runs alone

    def call(index: int, failing: int | None = None) -> dict:
        x = [-1.0, 0.0] if index == failing else [float(index), float(index) / 2]
        request = urllib.request.Request(f"{ml_service.url}v1/{model}:predict", method="POST",
                                         data=json.dumps({"instances": [x, x]}).encode(),
                                         headers={**ml_service.headers, "Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=120) as response:
            return json.loads(response.read())

    def own_rows(index: int, answer: dict) -> int:
        assert [row["x"] for row in answer["predictions"]] == [[float(index), index / 2]] * 2, answer
        return answer["predictions"][0]["batch"]

    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(call, range(12)))
        joined = [own_rows(index, answer) for index, answer in enumerate(answers)]
        assert max(joined) > 2, f"no call was joined with another: batch sizes {joined}"
        answers = list(pool.map(lambda index: call(index, failing=5), range(12)))
    assert "x[0] must not be negative" in answers[5]["error"] and "predictions" not in answers[5]
    for index, answer in enumerate(answers):
        if index != 5:
            own_rows(index, answer)
