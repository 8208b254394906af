"""A batch prediction job's ``predictionInput``: checked field by field, stored exactly as sent.

Defaults (``batchSize``...) are applied when the job runs, never written into the
stored input, so a client comparing its request with the job after a 409 sees no
difference (proto3 JSON omits defaults).
"""

from __future__ import annotations

from include.local_platform.context import Context
from include.local_platform.errors import invalid_argument
from include.local_platform.resources import models, validation

DATA_FORMATS = ("JSON", "TEXT", "TF_RECORD", "TF_RECORD_GZIP")


MAX_BATCH_SIZE = 10_000
MAX_WORKER_COUNT = 1_000
MAX_INPUT_PATHS = 100
PREDICTION_INPUT_FIELDS = frozenset({
    "dataFormat", "outputDataFormat", "inputPaths", "maxWorkerCount", "region", "runtimeVersion", "batchSize",
    "signatureName", "modelName", "versionName", "uri", "outputPath"})


def _field_error(field: str, message: str):
    return invalid_argument(f"Field: prediction_input.{field} Error: {message}", f"prediction_input.{field}")


def _validate_source(ctx: Context, project: str, prediction_input: dict) -> None:
    sources = [key for key in ("modelName", "versionName", "uri") if prediction_input.get(key)]
    if len(sources) != 1:
        raise _field_error("model_name", "exactly one of modelName, versionName or uri is required, "
                           f"got {sources or 'none'}.")
    source = sources[0]
    if source == "uri":
        uri = validation.gcs_uri(prediction_input["uri"], "prediction_input.uri",
                                 "uri (a SavedModel directory)")
        validation.allowed_bucket(uri, "prediction_input.uri")
        return
    name = prediction_input[source]
    parts = name.split("/") if isinstance(name, str) and len(name) <= 1024 else []
    expected = 4 if source == "modelName" else 6
    if len(parts) != expected or parts[0] != "projects" or parts[1] != project:
        shown = name[:200] if isinstance(name, str) else type(name).__name__
        raise _field_error(source, f"'{shown}' is not a resource name of project {project}.")
    try:
        if source == "modelName":
            models.get_model(ctx, project, parts[3])
        else:
            models.get_version(ctx, project, parts[3], parts[5])
    except Exception:
        raise _field_error(source, f"{name} was not found.") from None


def validate(ctx: Context, project: str, given: object) -> dict:
    """Check predictionInput field by field; it is stored exactly as sent (defaults apply at run time)."""
    if not isinstance(given, dict):
        raise invalid_argument("Field: job.prediction_input Error: predictionInput or trainingInput is required.",
                               "job.prediction_input")
    validation.unknown_keys(given, PREDICTION_INPUT_FIELDS, "job.prediction_input")
    _validate_source(ctx, project, given)
    if given.get("dataFormat") not in DATA_FORMATS:
        shown = given.get("dataFormat") if isinstance(given.get("dataFormat"), str) else None
        raise _field_error("data_format", f"dataFormat must be one of {list(DATA_FORMATS)}, got {str(shown)[:40]!r}.")
    paths = given.get("inputPaths")
    if not isinstance(paths, list) or not paths or len(paths) > MAX_INPUT_PATHS:
        raise _field_error("input_paths", f"inputPaths must list 1 to {MAX_INPUT_PATHS} gs:// paths.")
    for path in paths:
        validation.gcs_uri(path, "prediction_input.input_paths", "each input path")
        if "*" in path[:-1].rsplit("/", 1)[0]:
            raise _field_error("input_paths", f"'{path[:200]}' must be a gs:// path, with a wildcard only in "
                               "its last component.")
    validation.gcs_uri(given.get("outputPath"), "prediction_input.output_path", "outputPath (a directory)")
    if not given.get("region"):
        raise _field_error("region", "region is required.")
    validation.short_text(given["region"], "prediction_input.region", limit=64)
    for key, field in (("runtimeVersion", "runtime_version"), ("signatureName", "signature_name")):
        if key in given:
            validation.short_text(given[key], f"prediction_input.{field}")
    if "batchSize" in given:
        validation.positive_int(given["batchSize"], "prediction_input.batch_size", name="batchSize",
                                maximum=MAX_BATCH_SIZE)
    if "maxWorkerCount" in given:
        validation.positive_int(given["maxWorkerCount"], "prediction_input.max_worker_count",
                                name="maxWorkerCount", maximum=MAX_WORKER_COUNT)
    if given.get("outputDataFormat", "JSON") != "JSON":
        raise _field_error("output_data_format", "only JSON output is supported.")
    return dict(given)
