"""Fixtures for the service tests: SavedModels exported here, deployed through the real API."""

from __future__ import annotations

import json
import os
import time
import urllib.request
import uuid

import pytest

from tests.crashing import crashing_service  # noqa: F401 - a fixture for the crash tests
from tests.savedmodels import (
    export_batch_probe_model,
    export_bytes_model,
    export_single_input_model,
    export_slow_model,
    export_tiny_model,
    export_url_model,
    upload_dir,
)

PROJECT = "test-project"
PARENT = f"projects/{PROJECT}"


def unique(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:8]}"


def wait_operation(api, name: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        operation = api.projects().operations().get(name=name).execute()
        if operation.get("done"):
            return operation
        time.sleep(0.2)
    raise TimeoutError(f"operation {name} not done after {timeout} s")


def wait_job(api, job_id: str, timeout: float = 120, states=("SUCCEEDED", "FAILED", "CANCELLED")) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = api.projects().jobs().get(name=f"{PARENT}/jobs/{job_id}").execute()
        if job["state"] in states:
            return job
        time.sleep(0.2)
    raise TimeoutError(f"job {job_id} not in {states} after {timeout} s")


def post_fault(service_url: str, rule: dict | None) -> None:
    """POST a rule to the service's fault switch (DELETE all rules when `rule` is None), with the bearer token."""
    headers = {"Content-Type": "application/json"}
    if os.environ.get("ML_ENGINE_TOKEN"):
        headers["Authorization"] = f"Bearer {os.environ['ML_ENGINE_TOKEN']}"
    request = urllib.request.Request(f"{service_url}_local/faults", headers=headers,
                                     data=None if rule is None else json.dumps(rule).encode(),
                                     method="DELETE" if rule is None else "POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status == 200


@pytest.fixture(scope="session")
def model_uris(bucket, tmp_path_factory) -> dict[str, str]:
    """gs:// URIs of the test SavedModels: tiny (x, key), single (x), images (image_bytes, key), urls (file_url)."""
    root = tmp_path_factory.mktemp("savedmodels")
    return {
        "tiny": upload_dir(bucket, export_tiny_model(root / "tiny"), "savedmodels/tiny"),
        "tiny3": upload_dir(bucket, export_tiny_model(root / "tiny3", factor=3.0), "savedmodels/tiny3"),
        "single": upload_dir(bucket, export_single_input_model(root / "single"), "savedmodels/single"),
        "images": upload_dir(bucket, export_bytes_model(root / "images"), "savedmodels/images"),
        "examples": upload_dir(bucket, export_bytes_model(root / "examples", examples_by_default=True),
                               "savedmodels/examples"),
        "urls": upload_dir(bucket, export_url_model(root / "urls"), "savedmodels/urls"),
        "slow": upload_dir(bucket, export_slow_model(root / "slow"), "savedmodels/slow"),
        "probe": upload_dir(bucket, export_batch_probe_model(root / "probe", rounds=150), "savedmodels/probe"),
    }


@pytest.fixture(scope="session")
def deploy(ml_api, model_uris):
    """deploy(kind) -> (model_name, version_name) of a new model whose first version is READY."""

    def _deploy(kind: str = "tiny", model: str | None = None, version: str = "v1") -> tuple[str, str]:
        model = model or unique(f"m_{kind}")
        models = ml_api.projects().models()
        models.create(parent=PARENT, body={"name": model}).execute()
        operation = models.versions().create(
            parent=f"{PARENT}/models/{model}", body={"name": version, "deploymentUri": model_uris[kind]}).execute()
        done = wait_operation(ml_api, operation["name"])
        assert "error" not in done, done
        return f"{PARENT}/models/{model}", f"{PARENT}/models/{model}/versions/{version}"

    return _deploy
