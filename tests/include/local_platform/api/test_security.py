"""Who may drive the service: the bearer token, JSON-only bodies, Host/Origin checks, CSRF, the fault switch."""

from __future__ import annotations

import http.client
import json
import logging
import re

import pytest
from googleapiclient.errors import HttpError

from include.local_platform.api.security import INVALID_CREDENTIALS, MISSING_CREDENTIALS, Guard
from tests.include.local_platform.conftest import PARENT, unique
from tools import devstack


def raw(service, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One request with exactly the given headers (http.client adds Host unless one is given)."""
    connection = http.client.HTTPConnection("127.0.0.1", service.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def model_names(ml_api) -> set[str]:
    return {m["name"] for m in ml_api.projects().models().list(parent=PARENT).execute().get("models", [])}


def test_token_required_on_v1_and_local_with_googles_401(ml_service, ml_api):
    path = f"/v1/{PARENT}/models"
    status, body = raw(ml_service, "GET", path)
    assert status == 401 and json.loads(body) == {"error": {
        "code": 401, "message": MISSING_CREDENTIALS, "status": "UNAUTHENTICATED"}}
    status, body = raw(ml_service, "GET", path, headers={"Authorization": "Bearer wrong"})
    assert status == 401 and json.loads(body)["error"]["message"] == INVALID_CREDENTIALS
    assert MISSING_CREDENTIALS.startswith("Request is missing required authentication credential.")
    status, _ = raw(ml_service, "GET", path, headers={"Authorization": f"Basic {ml_service.token}"})
    assert status == 401
    status, _ = raw(ml_service, "DELETE", "/_local/faults")
    assert status == 401
    status, _ = raw(ml_service, "GET", path, headers=ml_service.headers)
    assert status == 200

    anonymous = devstack.ml_api(ml_service.url, token="not-the-token")
    with pytest.raises(HttpError) as excinfo:
        anonymous.projects().models().list(parent=PARENT).execute()
    assert excinfo.value.resp.status == 401


def test_health_stays_open_and_the_index_opens_with_the_token(ml_service):
    assert raw(ml_service, "GET", "/healthz")[0] == 200
    status, page = raw(ml_service, "GET", "/ui", headers=ml_service.headers)
    assert status == 200 and b"Models, versions and jobs" in page


def test_v1_bodies_must_be_json(ml_service, ml_api):
    before = model_names(ml_api)
    body = json.dumps({"name": unique("form")}).encode()
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {**ml_service.headers, **({"Content-Type": content_type} if content_type else {})}
        status, answer = raw(ml_service, "POST", f"/v1/{PARENT}/models", body, headers)
        error = json.loads(answer)["error"]
        assert status == 400 and error["status"] == "INVALID_ARGUMENT" and "application/json" in error["message"]
    assert model_names(ml_api) == before
    # an HTML form always sends a Content-Type, even with nothing in it
    status, _ = raw(ml_service, "POST", f"/v1/{PARENT}/jobs/{unique('j')}:cancel", b"",
                    {**ml_service.headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 400
    # what googleapiclient sends: GET/DELETE without a body, :cancel without one, setDefault with {}
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().jobs().cancel(name=f"{PARENT}/jobs/{unique('nope')}").execute()
    assert excinfo.value.resp.status == 404
    with pytest.raises(HttpError) as excinfo:
        ml_api.projects().models().versions().setDefault(name=f"{PARENT}/models/{unique('m')}/versions/v",
                                                         body={}).execute()
    assert excinfo.value.resp.status == 404
    status, _ = raw(ml_service, "POST", f"/v1/{PARENT}/models", body,
                    {**ml_service.headers, "Content-Type": "application/json; charset=utf-8"})
    assert status == 200


def test_foreign_host_and_origin_are_refused(ml_service, ml_api):
    before = model_names(ml_api)
    create = (f"/v1/{PARENT}/models", json.dumps({"name": unique("xsite")}).encode())
    json_headers = {**ml_service.headers, "Content-Type": "application/json"}
    for extra in ({"Host": "evil.example"}, {"Host": f"attacker.test:{ml_service.port}"},
                  {"Origin": "http://evil.example"}, {"Origin": "null"},
                  {"Origin": f"http://localhost:{ml_service.port + 1}"}):
        status, answer = raw(ml_service, "POST", *create, {**json_headers, **extra})
        assert status == 403 and json.loads(answer)["error"]["status"] == "PERMISSION_DENIED", extra
    status, _ = raw(ml_service, "GET", "/ui", headers={**ml_service.headers, "Host": "rebound.example"})
    assert status == 403
    assert model_names(ml_api) == before
    for host in (f"localhost:{ml_service.port}", f"127.0.0.1:{ml_service.port}", "[::1]"):
        status, _ = raw(ml_service, "GET", f"/v1/{PARENT}/models", headers={**ml_service.headers, "Host": host})
        assert status == 200, host
    same_origin = {**json_headers, "Origin": f"http://127.0.0.1:{ml_service.port}"}
    assert raw(ml_service, "POST", *create, same_origin)[0] == 200


def test_upload_form_needs_its_csrf_token_and_same_origin(ml_service, deploy):
    _, version = deploy("images")
    _, page = raw(ml_service, "GET", f"/ui/{version}", headers=ml_service.headers)
    token = re.search(rb"action='\?csrf_token=([0-9a-f]+)'", page).group(1).decode()
    boundary = "b0undary"
    form = f'--{boundary}\r\nContent-Disposition: form-data; name="note"\r\n\r\nx\r\n--{boundary}--\r\n'.encode()

    def post(path: str, csrf: str | None, **extra) -> int:
        query = f"?csrf_token={csrf}" if csrf else ""
        headers = {**ml_service.headers, "Content-Type": f"multipart/form-data; boundary={boundary}", **extra}
        return raw(ml_service, "POST", f"/ui/{path}{query}", form, headers)[0]

    assert post(version, None) == 403
    assert post(version, "0" * 64) == 403
    other_page = version.rsplit("/", 1)[0] + "/other"
    assert post(other_page, token) == 403  # bound to its page
    assert post(version, token, Origin="http://evil.example") == 403
    assert post(version, token) == 200


def test_fault_switch_exists_only_when_enabled(tmp_path):
    from fastapi.testclient import TestClient

    from include.local_platform.app import create_app

    rule = {"status": 503, "times": 1, "path_regex": "nothing"}
    off = TestClient(create_app(tmp_path / "off"), base_url="http://127.0.0.1")
    assert off.post("/_local/faults", json=rule).status_code == 404
    assert off.delete("/_local/faults").status_code == 404
    on = TestClient(create_app(tmp_path / "on", enable_faults=True), base_url="http://127.0.0.1")
    assert on.post("/_local/faults", json=rule).status_code == 200
    assert on.post("/_local/faults", content=b"status=503").status_code == 400  # JSON only here too


def test_deployment_uri_limited_to_allowed_buckets(tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    from include.local_platform.app import create_app

    monkeypatch.setenv("ML_ENGINE_ALLOWED_BUCKETS", "models-ok, other-ok")
    client = TestClient(create_app(tmp_path), base_url="http://127.0.0.1")
    assert client.post(f"/v1/{PARENT}/models", json={"name": "m"}).status_code == 200
    for uri in ("gs://elsewhere/model", "gs://models-ok.evil/model"):
        answer = client.post(f"/v1/{PARENT}/models/m/versions", json={"name": "v1", "deploymentUri": uri})
        assert answer.status_code == 400 and "ML_ENGINE_ALLOWED_BUCKETS" in answer.json()["error"]["message"]
    job = {"jobId": "j", "predictionInput": {"uri": "gs://elsewhere/m", "dataFormat": "JSON", "region": "r",
                                             "inputPaths": ["gs://models-ok/in"], "outputPath": "gs://models-ok/o"}}
    assert client.post(f"/v1/{PARENT}/jobs", json=job).status_code == 400
    assert client.get(f"/v1/{PARENT}/models/m/versions").json() == {}
    assert client.get(f"/v1/{PARENT}/jobs").json() == {}


def test_anonymous_mode_logs_a_warning(caplog):
    with caplog.at_level(logging.INFO, logger="local_platform"):
        Guard().announce()
        Guard(token="t").announce()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "anonymous" in warnings[0].getMessage()


def test_allowed_hosts_for_a_service_bound_to_all_interfaces(tmp_path):
    """compose: bound to 0.0.0.0 and called `ml-engine` by the Airflow containers; no other name passes."""
    from fastapi.testclient import TestClient

    from include.local_platform.app import create_app

    guard = Guard.from_settings(token=None, bind_host="0.0.0.0", allowed_hosts="ml-engine, Other.Example")
    app = create_app(tmp_path, guard=guard)
    for host, status in (("ml-engine:8780", 200), ("other.example", 200), ("0.0.0.0:8780", 403),
                         ("evil.example:8780", 403), ("localhost:8780", 200)):
        answer = TestClient(app, base_url=f"http://{host}").get(f"/v1/{PARENT}/models")
        assert answer.status_code == status, host


def test_slow_header_connections_are_closed(gcs_emulator, tmp_path):
    """Connections that start a request and never finish its headers were held open forever (200 of them in
    the review); with ML_ENGINE_HEADER_TIMEOUT_S=1 each is closed, and the service still answers."""
    import socket
    import time

    server = devstack.ml_service(port=devstack.free_port(), state_dir=tmp_path / "state", gcs_host=gcs_emulator,
                                 log_path=tmp_path / "service.log")
    server.env["ML_ENGINE_HEADER_TIMEOUT_S"] = "1"
    server.start(timeout=120)
    try:
        port = int(server.health_url.split(":")[2].split("/")[0])
        slow = []
        for index in range(50):
            connection = socket.create_connection(("127.0.0.1", port), timeout=10)
            if index % 2:  # half send part of their headers, half send nothing at all
                connection.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            slow.append(connection)
        time.sleep(2.5)
        closed = 0
        for connection in slow:
            try:
                closed += connection.recv(1) == b""
            except ConnectionResetError:
                closed += 1
            connection.close()
        assert closed == len(slow)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as fresh:
            fresh.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert fresh.recv(100).startswith(b"HTTP/1.1 200")
    finally:
        server.stop()
