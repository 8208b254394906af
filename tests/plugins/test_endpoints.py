"""Which endpoints count as Google's: only googleapis.com and its subdomains (security review).

The decision picks the credentials: Google's (the connection's key, impersonation
or ADC) for Google's endpoints, the local service's token otherwise. A host that
merely ends in "googleapis.com" (attacker-googleapis.com) must never get Google's.
"""

from __future__ import annotations

import json

import pytest

# host (as in a URL's authority), is it Google's?
HOSTS = [
    ("ml.googleapis.com", True),
    ("us-central1-ml.googleapis.com", True),
    ("googleapis.com", True),
    ("ML.GOOGLEAPIS.COM.", True),
    ("ml.googleapis.com:443", True),
    ("ml.googleapis.com.:443", True),
    ("attacker-googleapis.com", False),
    ("attackergoogleapis.com", False),
    ("googleapis.com.attacker.net", False),
    ("ml.googleapis.com.attacker.net", False),
    ("googleapis.com..", False),
    ("ml..googleapis.com", False),
    (".googleapis.com", False),
    ("ml.googleapis.co", False),
    ("googleapis.community", False),
    ("localhost", False),
    ("localhost:8780", False),
    ("127.0.0.1:8780", False),
    ("[::1]:8780", False),
    ("", False),
]


@pytest.mark.parametrize(("host", "google"), HOSTS)
def test_is_google_host(host, google):
    from ml_engine.endpoints import is_google_host

    assert is_google_host(host) is google


@pytest.mark.parametrize(("host", "google"), [(h, g) for h, g in HOSTS if h])
@pytest.mark.parametrize("scheme", ["https", "http"])
def test_is_local_endpoint(scheme, host, google):
    from ml_engine.endpoints import is_local_endpoint

    assert is_local_endpoint(f"{scheme}://{host}/") is not google
    assert is_local_endpoint(f"{scheme}://{host}") is not google


@pytest.mark.parametrize(
    "endpoint",
    [
        "https://googleapis.com@attacker.net/",  # userinfo, not the host
        "https://attacker.net/ml.googleapis.com/",  # a path, not the host
        "https://attacker.net/?x=.googleapis.com",
        "ml.googleapis.com",  # no scheme: no host at all
    ],
)
def test_look_alike_endpoints_are_not_google(endpoint):
    from ml_engine.endpoints import is_local_endpoint

    assert is_local_endpoint(endpoint)


def test_no_endpoint_means_google_global():
    from ml_engine.endpoints import GLOBAL_ENDPOINT, is_local_endpoint, regional_endpoint

    assert not is_local_endpoint(None) and not is_local_endpoint("")
    assert not is_local_endpoint(GLOBAL_ENDPOINT)
    assert not is_local_endpoint(regional_endpoint("europe-west1"))


@pytest.mark.parametrize(
    ("endpoint", "google"),
    [
        ("https://ml.googleapis.com/", True),
        ("https://us-central1-ml.googleapis.com/", True),
        ("https://attacker-googleapis.com/", False),
        ("https://googleapis.com.attacker.net/", False),
    ],
)
def test_the_hook_gives_google_credentials_only_to_google(endpoint, google, monkeypatch):
    """What the decision is for: an attacker's host gets the local token, never the connection's Google identity."""
    from airflow.providers.google.common.hooks.base_google import GoogleBaseHook
    from google.oauth2.credentials import Credentials
    from ml_engine.hooks import MLEngineHook

    google_identity = (object(), "google-project")
    monkeypatch.setattr(GoogleBaseHook, "get_credentials_and_project_id", lambda self: google_identity)
    monkeypatch.setenv(
        "AIRFLOW_CONN_ENDPOINT_CHECK",
        json.dumps({"conn_type": "google_cloud_platform", "extra": {"ml_engine_token": "local-token"}}),
    )
    hook = MLEngineHook(gcp_conn_id="endpoint_check", endpoint=endpoint)
    credentials, _ = hook.get_credentials_and_project_id()
    assert hook.is_local is not google
    if google:
        assert credentials is google_identity[0]
    else:
        assert isinstance(credentials, Credentials) and credentials.token == "local-token"
