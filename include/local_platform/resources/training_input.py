"""A training job's ``trainingInput``, checked as ml/v1 checked it."""

from __future__ import annotations

import re
import shutil
import subprocess

from include.local_platform.errors import ApiError, invalid_argument, unimplemented
from include.local_platform.resources import validation
from include.local_platform.resources.proto_json import check_message

MAX_PACKAGES = 100
SCALE_TIERS = ("BASIC", "STANDARD_1", "PREMIUM_1", "BASIC_GPU", "BASIC_TPU", "CUSTOM")
MODULE_RULE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
PACKAGE_FILE_RULE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*\.(tar\.gz|whl|zip|tgz)$")


def _field_error(field: str, message: str) -> ApiError:
    return invalid_argument(f"Field: training_input.{field} Error: {message}", f"training_input.{field}")


def container_engine() -> str | None:
    """``docker`` or ``podman`` when its client is installed AND an engine answers; None otherwise."""
    for client in ("docker", "podman"):
        if shutil.which(client) is None:
            continue
        try:
            if subprocess.run([client, "info"], capture_output=True, timeout=10).returncode == 0:
                return client
        except (OSError, subprocess.TimeoutExpired):
            continue
    return None


def scale_tier(training_input: dict) -> str:
    """scaleTier, BASIC when absent: BASIC is the enum's zero value, which proto3 JSON omits."""
    return training_input.get("scaleTier", "BASIC")


def validate(given: object) -> dict:
    """Check trainingInput as ml/v1 did; the stored copy is what the request said (defaults apply when it runs).

    The message must fit ml/v1's TrainingInput schema (known fields, JSON types, bounded
    sizes), so a stored job can always be read back and answered.
    """
    if not isinstance(given, dict):
        raise invalid_argument("Field: job.training_input Error: trainingInput must be an object.",
                               "job.training_input")
    check_message(given, "GoogleCloudMlV1__TrainingInput", "job.training_input")
    training_input = dict(given)
    if training_input.get("hyperparameters"):
        raise unimplemented("Hyperparameter tuning (trainingInput.hyperparameters)")
    image = (training_input.get("masterConfig") or {}).get("imageUri") \
        if isinstance(training_input.get("masterConfig"), dict) else None
    if image:
        engine = container_engine()
        raise (invalid_argument(
            "Field: training_input.master_config.image_uri Error: custom containers need a container engine, "
            "and none answers on this machine (docker/podman missing or its daemon not running); package the "
            "trainer as a Python package (packageUris + pythonModule) instead.",
            "training_input.master_config.image_uri") if engine is None else
            unimplemented(f"Custom containers (masterConfig.imageUri; {engine} is available but not used)"))
    module = training_input.get("pythonModule")
    if not isinstance(module, str) or not MODULE_RULE.match(module):
        raise _field_error("python_module", "pythonModule is required: a dotted Python module name, "
                           f"e.g. trainer.task (got {module!r}).")
    packages = training_input.get("packageUris")
    if not isinstance(packages, list) or not packages:
        raise _field_error("package_uris", "packageUris must list at least one gs:// package.")
    if len(packages) > MAX_PACKAGES:
        raise _field_error("package_uris", f"at most {MAX_PACKAGES} packageUris are allowed, got {len(packages)}.")
    for uri in packages:
        if not isinstance(uri, str) or not uri.startswith("gs://") or "/" not in uri[5:]:
            raise _field_error("package_uris", f"'{uri}' is not a gs:// URI of a package file.")
        if not PACKAGE_FILE_RULE.match(uri.rsplit("/", 1)[1]):
            raise _field_error("package_uris", f"'{uri}' must name a Python package file (.tar.gz, .whl or .zip).")
        validation.allowed_bucket(uri, "training_input.package_uris")  # packages are code, as models are
    args = training_input.get("args", [])
    if not isinstance(args, list) or not all(isinstance(arg, str) for arg in args):
        raise _field_error("args", "args must be a list of strings.")
    if not isinstance(training_input.get("region"), str) or not training_input["region"]:
        raise _field_error("region", "region is required.")
    job_dir = training_input.get("jobDir")
    if job_dir is not None and (not isinstance(job_dir, str) or not job_dir.startswith("gs://") or len(job_dir) <= 5):
        raise _field_error("job_dir", f"jobDir must be a gs:// path, got {job_dir!r}.")
    tier = scale_tier(training_input)
    if tier not in SCALE_TIERS:
        raise _field_error("scale_tier", f"scaleTier must be one of {list(SCALE_TIERS)}, got {tier!r}.")
    if tier == "CUSTOM" and not training_input.get("masterType"):
        raise _field_error("master_type", "masterType is required when scaleTier is CUSTOM.")
    for field in ("runtimeVersion", "pythonVersion", "masterType"):
        if training_input.get(field) is not None and not isinstance(training_input[field], str):
            raise _field_error(field, f"{field} must be a string.")
    return training_input
