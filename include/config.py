"""The one place for configuration: project, bucket, region, endpoints, model name and pipeline defaults.

Every value comes from an environment variable, with a default that fits the
embedded stack (`make services`: GCS emulator on 127.0.0.1:9023, local ml/v1
service on 127.0.0.1:8780). Reading the environment is all that happens at DAG
parse time: no Airflow Variables, no network.

| setting              | environment variable        | default (embedded stack)              |
| -------------------- | --------------------------- | ------------------------------------- |
| platform             | ML_PLATFORM                 | ml_engine (or vertex: docs/vertex-lifecycle.md) |
| project              | GOOGLE_CLOUD_PROJECT        | local-project                         |
| bucket               | ML_BUCKET                   | ml-lifecycle                          |
| region               | ML_REGION                   | us-central1                           |
| ml_engine_endpoint   | ML_ENGINE_ENDPOINT          | http://127.0.0.1:8780/                |
| (connection token)   | ML_ENGINE_TOKEN             | STATE_DIR/ml_engine_token (make run / make airflow) |
| storage_emulator_host| STORAGE_EMULATOR_HOST       | http://127.0.0.1:9023 (unset = real GCS, see below) |
| gcp_conn_id          | ML_GCP_CONN_ID              | google_cloud_default                  |
| model_name           | ML_MODEL_NAME               | heatmap                               |
| data_uri             | ML_DATA_URI                 | gs://{bucket}/data/default (root: one folder per period) |
| retrain_schedule     | ML_RETRAIN_SCHEDULE         | @weekly (and on the data Asset)       |
| data_schedule        | ML_DATA_SCHEDULE            | @weekly (the local feed, data_arrival; none: off) |
| data_drift_per_week  | ML_DATA_DRIFT_PER_WEEK      | 1.0 (the local feed's drift a week)   |
| generate_data        | ML_GENERATE_DATA            | true (false: a period without data fails the run) |
| batch_schedule       | ML_BATCH_SCHEDULE           | @daily                                |
| epochs               | ML_EPOCHS                   | 8                                     |
| num_examples         | ML_NUM_EXAMPLES             | 1024 (size of the generated dataset)  |
| variants             | ML_VARIANTS                 | b64,instances,url,tfexample           |
| serving_variant      | ML_SERVING_VARIANT          | b64                                   |
| promotion_policy     | ML_PROMOTION_POLICY         | better                                |
| min_metric           | ML_MIN_METRIC               | 0.0                                   |
| gate_margin          | ML_GATE_MARGIN              | 0.0 (IoU the interval must clear)     |
| eval_examples        | ML_EVAL_EXAMPLES            | 256 (held-out examples the gate scores) |
| keep_versions        | ML_KEEP_VERSIONS            | 8                                     |
| batch_pin_hours      | ML_BATCH_PIN_HOURS          | 48 (an unfinished batch run pins its version this long) |
| batch_input_uris     | ML_BATCH_INPUT_URIS         | (empty: generated sample inputs)      |
| batch_sample_count   | ML_BATCH_SAMPLE_COUNT       | 64                                    |
| max_error_rate       | ML_MAX_ERROR_RATE           | 0.05 (errors / (predictions + errors))|
| vertex_serving_image | ML_VERTEX_SERVING_IMAGE     | us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-11:latest |
| vertex_machine_type  | ML_VERTEX_MACHINE_TYPE      | n1-standard-2 (deployed models, batch jobs) |
| vertex_training_image| ML_VERTEX_TRAINING_IMAGE    | us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-11.py310:latest |
| canary_percent       | ML_CANARY_PERCENT           | 10 (Vertex AI: the candidate's first share of traffic) |
| canary_seconds       | ML_CANARY_SECONDS           | 60 (Vertex AI: how long the canary is watched) |
| canary_max_error_rate| ML_CANARY_MAX_ERROR_RATE    | 0.01 (Vertex AI: failed probes the canary tolerates) |
| task_retries         | ML_TASK_RETRIES             | 2                                     |
| retry_delay_seconds  | ML_RETRY_DELAY_SECONDS      | 30                                    |

The ml/v1 endpoint and credentials the operators use come from the Airflow
connection `gcp_conn_id` (extras `ml_engine_endpoint`, `ml_engine_token`, `is_anonymous`, `project`)
or, when it names no endpoint, from ML_ENGINE_ENDPOINT; `airflow_connection_json()`
builds that connection for the embedded stack (`make run`, the tests). On real
GCP, leave STORAGE_EMULATOR_HOST and ML_ENGINE_ENDPOINT unset and point the
connection at a project with credentials.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import timedelta

from include.trainer.variants import VARIANTS

DEFAULT_PROJECT = "local-project"
DEFAULT_BUCKET = "ml-lifecycle"
DEFAULT_REGION = "us-central1"
DEFAULT_ML_ENGINE_ENDPOINT = "http://127.0.0.1:8780/"
DEFAULT_STORAGE_EMULATOR_HOST = "http://127.0.0.1:9023"
DEFAULT_MODEL_NAME = "heatmap"

#: What each serving variant (VARIANTS, owned by the trainer) expects per instance.
VARIANT_INPUTS = {
    "instances": "image (nested JSON list) + key",
    "b64": 'image_bytes ({"b64": JPEG}) + key',
    "url": "image_url (gs:// JPEG) + key",
    "tfexample": "examples (serialized tf.Example: image/encoded, key)",
}
#: The platforms the DAGs run on (ML_PLATFORM): ml/v1 (the local service, or a self-hosted one) or Vertex AI.
PLATFORMS = ("ml_engine", "vertex")
#: Promotion policies of the gate (see include.lifecycle.gate).
PROMOTION_POLICIES = ("better", "not_worse", "always", "never")
#: The data Asset: "new data for period P" (extra: period, data_uri); model_lifecycle is scheduled on it.
DATA_ASSET_URI = "x-ml-engine://data/{model}"
#: The gate's metric (from metrics.json, higher is better) and the version label that records it.
METRIC = "val_iou"
METRIC_LABEL = "val_iou_x10000"
#: Runtime fields of created versions (ml/v1's last TF runtime; the local service accepts any).
RUNTIME_VERSION = "2.11"
PYTHON_VERSION = "3.7"
#: ml/v1's id rule (models, versions, jobs): the Params that name one validate against it.
ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"
#: Waits on ml/v1 (first poll interval in seconds, it grows; and the time limit). The long ones defer.
VERSION_POLL_SECONDS = 1
VERSION_TIMEOUT = timedelta(minutes=30)
TRAINING_POLL_SECONDS = 2
TRAINING_TIMEOUT = timedelta(hours=6)
BATCH_POLL_SECONDS = 2
BATCH_TIMEOUT = timedelta(hours=6)
DELETE_POLL_SECONDS = 1
EXPORT_TIMEOUT = timedelta(hours=1)
EVALUATION_TIMEOUT = timedelta(hours=1)
#: Asset event marking a promotion; batch_prediction is scheduled on it (`x-`: see include/assets.py).
PROMOTION_ASSET_URI = "x-ml-engine://models/{model}/default-version"


# The mapping `load(env)` reads while it runs; None: the process environment.
_load_env: ContextVar[Mapping[str, str] | None] = ContextVar("config_env", default=None)


def _environ() -> Mapping[str, str]:
    env = _load_env.get()
    return os.environ if env is None else env


def _env(name: str, default: str) -> str:
    value = _environ().get(name, "").strip()
    return value or default


def _schedule(name: str) -> str | None:
    """A cron schedule setting: @weekly by default; none or off: no schedule."""
    value = _env(name, "@weekly")
    return None if value.lower() in ("none", "off") else value


def _env_list(name: str, default: tuple[str, ...]) -> tuple[str, ...]:
    raw = _environ().get(name)
    if raw is None or not raw.strip():
        return default
    return tuple(part.strip() for part in raw.split(",") if part.strip())


@dataclass(frozen=True)
class Settings:
    """The resolved configuration; build it with `load()`."""

    platform: str = "ml_engine"
    project: str = DEFAULT_PROJECT
    bucket: str = DEFAULT_BUCKET
    region: str = DEFAULT_REGION
    ml_engine_endpoint: str = DEFAULT_ML_ENGINE_ENDPOINT
    storage_emulator_host: str | None = DEFAULT_STORAGE_EMULATOR_HOST
    gcp_conn_id: str = "google_cloud_default"
    model_name: str = DEFAULT_MODEL_NAME
    data_uri: str = ""
    retrain_schedule: str | None = "@weekly"
    data_schedule: str | None = "@weekly"
    data_drift_per_week: float = 1.0
    generate_data: bool = True
    batch_schedule: str = "@daily"
    epochs: int = 8
    num_examples: int = 1024
    image_size: int = 32
    variants: tuple[str, ...] = VARIANTS
    serving_variant: str = "b64"
    promotion_policy: str = "better"
    min_metric: float = 0.0
    gate_margin: float = 0.0
    eval_examples: int = 256
    keep_versions: int = 8
    batch_pin_hours: float = 48.0
    smoke_instances: int = 4
    batch_input_uris: tuple[str, ...] = ()
    batch_sample_count: int = 64
    max_error_rate: float = 0.05
    vertex_serving_image: str = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-11:latest"
    vertex_machine_type: str = "n1-standard-2"
    vertex_training_image: str = "us-docker.pkg.dev/vertex-ai/training/tf-cpu.2-11.py310:latest"
    canary_percent: int = 10
    canary_seconds: int = 60
    canary_max_error_rate: float = 0.01
    task_retries: int = 2
    retry_delay_seconds: int = 30

    @property
    def bucket_uri(self) -> str:
        """gs://BUCKET: the root of every object the DAGs write."""
        return f"gs://{self.bucket}"

    @property
    def runs_uri(self) -> str:
        """Per-run artifacts: gs://BUCKET/runs/MODEL/RUN_KEY/{train,export,smoke}."""
        return f"{self.bucket_uri}/runs"

    @property
    def batch_uri(self) -> str:
        """Batch inputs and outputs: gs://BUCKET/batch/MODEL/JOB_ID/{inputs,outputs}."""
        return f"{self.bucket_uri}/batch"

    @property
    def batch_pin_age(self) -> timedelta:
        """How long an unfinished batch run pins its version against deletion."""
        return timedelta(hours=self.batch_pin_hours)

    def promotion_asset_uri(self, model_name: str | None = None) -> str:
        """URI of the promotion Asset of `model_name` (default: the configured model); see include/assets.py."""
        return PROMOTION_ASSET_URI.format(model=model_name or self.model_name)

    def data_asset_uri(self, model_name: str | None = None) -> str:
        """URI of the data Asset of `model_name`'s feed (default: the configured model); see include/assets.py."""
        return DATA_ASSET_URI.format(model=model_name or self.model_name)


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from `env`, by default the process environment (cheap: safe at DAG parse time)."""
    token = _load_env.set(env)
    try:
        return _load()
    finally:
        _load_env.reset(token)


def _load() -> Settings:
    bucket = _env("ML_BUCKET", DEFAULT_BUCKET)
    emulator = _environ().get("STORAGE_EMULATOR_HOST")
    schedule = _schedule("ML_RETRAIN_SCHEDULE")
    platform = _env("ML_PLATFORM", "ml_engine").lower()
    if platform not in PLATFORMS:
        raise ValueError(f"ML_PLATFORM must be one of {PLATFORMS}, not {platform!r}")
    return Settings(
        platform=platform,
        project=_env("GOOGLE_CLOUD_PROJECT", DEFAULT_PROJECT),
        bucket=bucket,
        region=_env("ML_REGION", DEFAULT_REGION),
        ml_engine_endpoint=_env("ML_ENGINE_ENDPOINT", DEFAULT_ML_ENGINE_ENDPOINT),
        storage_emulator_host=emulator.strip() if emulator is not None else DEFAULT_STORAGE_EMULATOR_HOST,
        gcp_conn_id=_env("ML_GCP_CONN_ID", "google_cloud_default"),
        model_name=_env("ML_MODEL_NAME", DEFAULT_MODEL_NAME),
        data_uri=_env("ML_DATA_URI", f"gs://{bucket}/data/default"),
        retrain_schedule=schedule,
        data_schedule=_schedule("ML_DATA_SCHEDULE"),
        data_drift_per_week=float(_env("ML_DATA_DRIFT_PER_WEEK", "1.0")),
        generate_data=_env("ML_GENERATE_DATA", "true").lower() not in ("false", "0", "no", "off"),
        batch_schedule=_env("ML_BATCH_SCHEDULE", "@daily"),
        epochs=int(_env("ML_EPOCHS", "8")),
        num_examples=int(_env("ML_NUM_EXAMPLES", "1024")),
        image_size=int(_env("ML_IMAGE_SIZE", "32")),
        variants=_env_list("ML_VARIANTS", VARIANTS),
        serving_variant=_env("ML_SERVING_VARIANT", "b64"),
        promotion_policy=_env("ML_PROMOTION_POLICY", "better"),
        min_metric=float(_env("ML_MIN_METRIC", "0.0")),
        gate_margin=float(_env("ML_GATE_MARGIN", "0.0")),
        eval_examples=int(_env("ML_EVAL_EXAMPLES", "256")),
        keep_versions=int(_env("ML_KEEP_VERSIONS", "8")),
        batch_pin_hours=float(_env("ML_BATCH_PIN_HOURS", "48")),
        smoke_instances=int(_env("ML_SMOKE_INSTANCES", "4")),
        batch_input_uris=_env_list("ML_BATCH_INPUT_URIS", ()),
        batch_sample_count=int(_env("ML_BATCH_SAMPLE_COUNT", "64")),
        max_error_rate=float(_env("ML_MAX_ERROR_RATE", "0.05")),
        vertex_serving_image=_env("ML_VERTEX_SERVING_IMAGE", Settings.vertex_serving_image),
        vertex_machine_type=_env("ML_VERTEX_MACHINE_TYPE", Settings.vertex_machine_type),
        vertex_training_image=_env("ML_VERTEX_TRAINING_IMAGE", Settings.vertex_training_image),
        canary_percent=int(_env("ML_CANARY_PERCENT", "10")),
        canary_seconds=int(_env("ML_CANARY_SECONDS", "60")),
        canary_max_error_rate=float(_env("ML_CANARY_MAX_ERROR_RATE", "0.01")),
        task_retries=int(_env("ML_TASK_RETRIES", "2")),
        retry_delay_seconds=int(_env("ML_RETRY_DELAY_SECONDS", "30")),
    )


def airflow_connection_json(settings: Settings | None = None) -> str:
    """AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT for the embedded stack: local endpoint, project, and the
    service's bearer token (`ml_engine_token`) when ML_ENGINE_TOKEN is set; no Google credentials.

    On Vertex AI the connection names only the project: the provider's hooks take Application
    Default Credentials, which the local stack's route serves from its metadata server."""
    settings = settings or load()
    if settings.platform == "vertex":
        return json.dumps({"conn_type": "google_cloud_platform", "extra": {"project": settings.project}})
    extra: dict = {"project": settings.project, "is_anonymous": True,
                   "ml_engine_endpoint": settings.ml_engine_endpoint}
    if token := os.environ.get("ML_ENGINE_TOKEN", "").strip():
        extra["ml_engine_token"] = token
    return json.dumps({"conn_type": "google_cloud_platform", "extra": extra})


def embedded_environment(settings: Settings | None = None) -> dict[str, str]:
    """The environment a process needs to run the DAGs against the embedded stack."""
    settings = settings or load()
    env = {
        "GOOGLE_CLOUD_PROJECT": settings.project,
        "ML_ENGINE_ENDPOINT": settings.ml_engine_endpoint,
        f"AIRFLOW_CONN_{settings.gcp_conn_id.upper()}": airflow_connection_json(settings),
    }
    if settings.storage_emulator_host:
        env["STORAGE_EMULATOR_HOST"] = settings.storage_emulator_host
    return env


def main(argv: list[str] | None = None) -> None:
    """`python -m include.config`: the resolved settings; `--exports`: shell exports for the embedded stack."""
    import shlex
    import sys

    argv = sys.argv[1:] if argv is None else argv
    if "--exports" in argv:
        for key, value in embedded_environment().items():
            print(f"export {key}={shlex.quote(value)}")
        return
    for key, value in load().__dict__.items():
        print(f"{key} = {value!r}")


if __name__ == "__main__":
    main()
