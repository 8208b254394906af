"""The service's test switch: rules with a probability that never run out (`times: -1`)."""

from __future__ import annotations

import json
import os
import urllib.request

import pytest
from googleapiclient.errors import HttpError

PARENT = "projects/test-project"


def _local(url: str, method: str, body: dict | None = None) -> dict:
    headers = {"Content-Type": "application/json"}
    if os.environ.get("ML_ENGINE_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['ML_ENGINE_TOKEN']}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{url}_local/faults", data=data, headers=headers, method=method)
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read() or b"{}")


def test_probabilistic_unlimited_rule(ml_api, ml_service):
    _local(ml_service.url, "DELETE")  # spent rules other tests left stay listed until cleared
    _local(ml_service.url, "POST", {"status": 429, "times": -1, "probability": 0.5, "method": "GET",
                                    "path_regex": "/models$"})
    try:
        failed = 0
        for _ in range(60):
            try:
                ml_api.projects().models().list(parent=PARENT).execute()
            except HttpError as error:
                assert error.resp.status == 429 and b"RESOURCE_EXHAUSTED" in error.content
                failed += 1
        ml_api.projects().jobs().list(parent=PARENT).execute()  # other paths are not touched
        [rule] = _local(ml_service.url, "GET")["rules"]
    finally:
        _local(ml_service.url, "DELETE")
    assert 10 <= failed <= 50  # 60 tries at 0.5: outside this is a 1-in-a-million draw
    assert (rule["matched"], rule["injected"], rule["times"], rule["probability"]) == (60, failed, -1, 0.5)
    assert _local(ml_service.url, "GET")["rules"] == []
    ml_api.projects().models().list(parent=PARENT).execute()


def test_the_switch_fails_vertex_ai_calls_with_googles_grpc_codes(ml_service, vertex):
    from google.api_core import exceptions
    from google.cloud import aiplatform_v1 as v1
    from google.oauth2.credentials import Credentials

    from tests.include.local_platform.api.test_vertex_models_endpoints import OPTIONS

    client = v1.EndpointServiceClient(credentials=Credentials(token=os.environ["ML_ENGINE_TOKEN"]),
                                      client_options=OPTIONS)
    _local(ml_service.url, "DELETE")
    listing = f"EndpointService/ListEndpoints/{vertex}$"  # the method, then the resource the request names
    _local(ml_service.url, "POST", {"status": 429, "times": 1, "path_regex": listing})
    _local(ml_service.url, "POST", {"status": 503, "times": 1, "path_regex": listing})
    _local(ml_service.url, "POST", {"status": 500, "times": 1, "after": 1, "path_regex": listing})
    try:
        try:
            list(client.list_endpoints(parent=vertex, retry=None))
        except exceptions.ResourceExhausted as error:
            assert "Injected fault (429)" in error.message
        else:
            raise AssertionError("the first call should have failed")
        try:
            list(client.list_endpoints(parent=vertex, retry=None))
        except exceptions.ServiceUnavailable:
            pass
        else:
            raise AssertionError("the second call should have failed")
        list(client.list_endpoints(parent=vertex, retry=None))  # the third rule lets its first match through
        with pytest.raises(exceptions.InternalServerError):
            list(client.list_endpoints(parent=vertex, retry=None))
        list(client.list_endpoints(parent=vertex, retry=None))  # every rule spent: served
        rules = _local(ml_service.url, "GET")["rules"]
    finally:
        _local(ml_service.url, "DELETE")
    assert [rule["injected"] for rule in rules] == [1, 1, 1]
