"""
## model_lifecycle: train, deploy, smoke-test, gate and promote the heatmap model on ml/v1

Runs weekly (`ML_RETRAIN_SCHEDULE`, see `include/config.py`) and on demand from
the **Trigger** form (model name, epochs, variants to deploy, the serving variant
to promote, the promotion policy and a minimum metric).

1. **plan**: derive every name from the run (`v<run key>_<variant>`, GCS prefixes), validate params.
2. **prepare_data**: generate the toy dataset at `data_uri`; *skipped* when data is already there.
3. Training, by the `training_backend` param:
   - `ml_engine` (default): **package_trainer** builds `include/trainer` into an sdist and stages it
     under a hash of its sources (built once per code change), then **train_job** runs it as an
     ml/v1 training job (`python -m trainer.task --data-uri ... --epochs N --job-dir <run>/train`),
     streaming the trainer's log into the task log; **train** reads the job's `metrics.json`.
   - `in_task`: the two are skipped and **train** calls `include.trainer.task.train` itself.
   Either way `model.keras` + `metrics.json` land in the run's job dir.
4. **export_variants**: SavedModel per serving variant (`instances`, `b64`, `url`, `tfexample`),
   each verified against the Keras model before it leaves the task.
5. **upload**: smoke-test instance files and the run manifest to GCS; the version specs to deploy.
6. **create_model** (idempotent) -> **create_version** (one mapped task per variant, waits for READY).
7. **smoke_test**: real online predictions against each new version (count, keys, heatmap shape).
8. **gate**: the candidate's `val_iou` against the current default's (from its
   `val_iou_x10000` label) by the promotion policy. A rejected candidate goes to
   **not_promoted**, which says why; the default is not touched.
9. **set_default** -> **record_promotion** (labels the new default with the version it
   replaced, emits the promotion Asset that triggers `batch_prediction`).
10. **retention**: keep the `keep_versions` newest versions; never the default, the versions on its
    `promoted_from` trail (rollback targets), versions unfinished batch runs pinned, or this run's.

Every task is idempotent: names come from the run, creates reuse what matches,
so clearing any task converges. Data moves through GCS; XCom holds only small JSON.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.sdk import Param, TriggerRule, dag, task
from ml_engine.operators import (
    MLEngineCreateModelOperator,
    MLEngineCreateVersionOperator,
    MLEngineSetDefaultVersionOperator,
    MLEngineStartTrainingJobOperator,
)

from include import assets, config

log = logging.getLogger(__name__)
CFG = config.load()
PROMOTION = assets.promotion_asset()
ID_PATTERN = r"^[A-Za-z][A-Za-z0-9_]{0,127}$"
# Instances per online request in the smoke test: a 32x32 image as JSON floats is ~32 KB.
SMOKE_REQUEST_SIZE = 8
TRAINING_BACKENDS = ("ml_engine", "in_task")
TRAINER_MODULE = "trainer.task"  # include/trainer as the package `trainer` (include/trainer/pyproject.toml)
PACKAGES_URI = f"{CFG.bucket_uri}/packages"


def _gcs_usage(uri: str) -> tuple[int, int]:
    """Objects and bytes at `uri` (one object, or everything under it as a prefix), for the task logs."""
    from include.trainer import gcs

    bucket, path = gcs.parse_uri(uri)
    blobs = [b for b in gcs.client().list_blobs(bucket, prefix=path) if b.name == path or
             b.name.startswith(path.rstrip("/") + "/")]
    return len(blobs), sum(b.size or 0 for b in blobs)


def _version_spec(deployment: dict) -> dict:
    return deployment["spec"]


def _smoke_target(deployment: dict) -> dict:
    return deployment["smoke"]


@dag(
    dag_id="model_lifecycle",
    schedule=CFG.retrain_schedule,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "ml_engine", "training", "deployment"],
    default_args={"owner": "ml-platform", "retries": CFG.task_retries,
                  "retry_delay": timedelta(seconds=CFG.retry_delay_seconds)},
    params={
        "model_name": Param(CFG.model_name, type="string", pattern=ID_PATTERN, title="Model name",
                            description="ml/v1 model to deploy into (created when missing)."),
        "epochs": Param(CFG.epochs, type="integer", minimum=1, maximum=500, title="Epochs"),
        "variants": Param(list(CFG.variants), type="array", title="Variants to deploy",
                          items={"type": "string", "enum": list(config.VARIANTS)},
                          examples=list(config.VARIANTS),
                          description="One version per variant: " + "; ".join(
                              f"{k}: {v}" for k, v in config.VARIANT_INPUTS.items())),
        "serving_variant": Param(CFG.serving_variant, type="string", enum=list(config.VARIANTS),
                                 title="Serving variant to promote",
                                 description="The variant that becomes the default when the gate passes."),
        "promotion_policy": Param(CFG.promotion_policy, type="string", enum=list(config.PROMOTION_POLICIES),
                                  title="Promotion policy",
                                  description="better: beat the default's val_iou; not_worse: match it; "
                                              "always; never (deploy only)."),
        "min_metric": Param(CFG.min_metric, type="number", minimum=0, maximum=1, title="Minimum val_iou",
                            description="A candidate below this is never promoted."),
        "num_examples": Param(CFG.num_examples, type="integer", minimum=2, title="Generated dataset size",
                              description="Used only when data_uri holds no data yet."),
        "training_backend": Param("ml_engine", type="string", enum=list(TRAINING_BACKENDS), title="Training backend",
                                  description="ml_engine: an ml/v1 training job runs the packaged trainer "
                                              "(logs streamed into train_job's log); in_task: train inside "
                                              "the Airflow task."),
        "data_uri": Param(CFG.data_uri, type="string", pattern=r"^gs://", title="Training data (gs://)"),
        "keep_versions": Param(CFG.keep_versions, type="integer", minimum=1, title="Versions to keep"),
        "smoke_instances": Param(CFG.smoke_instances, type="integer", minimum=1, maximum=64,
                                 title="Instances per smoke test"),
    },
    render_template_as_native_obj=True,
)
def model_lifecycle():
    @task
    def plan(params: dict, dag_run=None) -> dict:
        """Every name of this run, derived from the run only, so a re-run lands on the same ones."""
        from include.lifecycle import naming

        variants = list(dict.fromkeys(params["variants"]))
        unknown = sorted(set(variants) - set(config.VARIANTS))
        if unknown or not variants:
            raise ValueError(f"variants must be a non-empty subset of {config.VARIANTS}, got {params['variants']}")
        serving = params["serving_variant"]
        if serving not in variants:
            raise ValueError(f"serving_variant {serving!r} is not among the variants to deploy {variants}")
        key = naming.run_key(dag_run.logical_date or dag_run.run_after)
        model = params["model_name"]
        run_uri = f"{CFG.runs_uri}/{model}/{key}"
        versions = {variant: naming.version_id(key, variant) for variant in variants}
        result = {
            "key": key,
            "model": model,
            "variants": variants,
            "serving_variant": serving,
            "serving_version": versions[serving],
            "versions": versions,
            "data_uri": params["data_uri"].rstrip("/"),
            "job_dir": f"{run_uri}/train",
            "training_job_id": naming.training_job_id(model, key),
            "export_uri": f"{run_uri}/export",
            "smoke_uri": f"{run_uri}/smoke",
            "manifest_uri": f"{run_uri}/manifest.json",
            "gate_uri": f"{run_uri}/gate.json",
        }
        log.info("Run %s of model %s: versions %s, artifacts under %s", key, model, versions, run_uri)
        return result

    @task
    def prepare_data(plan: dict, params: dict) -> dict:
        """Generate the toy dataset where none is; skipped when the data prefix already holds data."""
        from airflow.sdk.exceptions import AirflowSkipException

        from include.lifecycle import storage

        storage.ensure_bucket(plan["data_uri"])
        if storage.list_uris(plan["data_uri"]):
            raise AirflowSkipException(f"Training data already present under {plan['data_uri']}")
        from include.trainer import data

        summary = data.generate_dataset(plan["data_uri"], num_examples=params["num_examples"],
                                        image_size=CFG.image_size)
        return {k: summary[k] for k in ("num_examples", "train_examples", "eval_examples", "image_size")}

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def package_trainer(params: dict) -> str:
        """Stage the trainer sdist for the training job (named by a hash of its sources); skipped when in_task."""
        from airflow.sdk.exceptions import AirflowSkipException

        if params["training_backend"] != "ml_engine":
            raise AirflowSkipException(f"training_backend is {params['training_backend']}: no training job")
        from include.lifecycle import packaging, storage

        storage.ensure_bucket(PACKAGES_URI)
        return packaging.ensure_package(PACKAGES_URI)

    @task(trigger_rule=TriggerRule.NONE_FAILED, execution_timeout=timedelta(hours=6))
    def train(plan: dict, params: dict) -> dict:
        """The training's metrics.json; with training_backend in_task, train here first (unless already done)."""
        from include.lifecycle import storage

        metrics_uri = f"{plan['job_dir']}/metrics.json"
        if storage.exists(metrics_uri):
            metrics = storage.read_json(metrics_uri)
            log.info("Training of this run finished (%s): %s", metrics_uri, metrics)
            return metrics
        if params["training_backend"] != "in_task":
            raise FileNotFoundError(f"The training job succeeded but wrote no {metrics_uri}")
        from include.trainer import task as trainer

        metrics = trainer.train(plan["data_uri"], plan["job_dir"], epochs=params["epochs"])
        files, size = _gcs_usage(plan["job_dir"])
        log.info("Uploaded the trained model: %s files, %s bytes -> %s", files, size, plan["job_dir"])
        return metrics

    @task(execution_timeout=timedelta(hours=1))
    def export_variants(plan: dict, metrics: dict) -> dict:
        """One SavedModel per serving variant under the run's export prefix, each verified before upload."""
        from include.lifecycle import storage

        verification_uri = f"{plan['export_uri']}/verification.json"
        if storage.exists(verification_uri):
            done = storage.read_json(verification_uri).get("variants", {})
            if set(plan["variants"]) <= set(done):
                log.info("Variants already exported and verified (%s); reusing them", verification_uri)
                return {variant: done[variant] for variant in plan["variants"]}
        from include.trainer import export

        exported = export.export_variants(plan["job_dir"], plan["export_uri"], variants=plan["variants"])
        for variant, uri in exported.items():
            files, size = _gcs_usage(uri)
            log.info("Uploaded %s variant: %s files, %s bytes -> %s", variant, files, size, uri)
        return exported

    @task
    def upload(plan: dict, metrics: dict, exported: dict, params: dict, dag_run=None) -> list[dict]:
        """Smoke-test instance files and the run manifest to GCS; per variant, the version spec and smoke target."""
        from include.lifecycle import labels, samples, storage

        image_size = int(metrics.get("image_size", CFG.image_size))
        smoke = []
        specs = []
        for variant in plan["variants"]:
            written = samples.write_smoke_instances(f"{plan['smoke_uri']}/{variant}.jsonl", variant=variant,
                                                    count=params["smoke_instances"], image_size=image_size)
            smoke.append({"variant": variant, "version": plan["versions"][variant],
                          "instances_uri": written["uri"], "keys": written["keys"]})
            specs.append({
                "name": plan["versions"][variant],
                "deploymentUri": exported[variant],
                "runtimeVersion": config.RUNTIME_VERSION,
                "pythonVersion": config.PYTHON_VERSION,
                "framework": "TENSORFLOW",
                "description": f"{variant} serving variant of run {plan['key']} ({dag_run.run_id})",
                "labels": labels.version_labels(metric=metrics[config.METRIC], variant=variant, key=plan["key"],
                                                dag_id=dag_run.dag_id),
            })
        storage.write_json(plan["manifest_uri"], {"plan": plan, "metrics": metrics, "exported": exported,
                                                  "versions": specs, "smoke": smoke, "run_id": dag_run.run_id})
        for uri in [target["instances_uri"] for target in smoke] + [plan["manifest_uri"]]:
            log.info("Uploaded %s (%s bytes)", uri, _gcs_usage(uri)[1])
        return [{"spec": spec, "smoke": target} for spec, target in zip(specs, smoke, strict=True)]

    @task(map_index_template="{{ variant }}")
    def smoke_test(target: dict, plan: dict) -> dict:
        """Real online predictions against one new version: count, keys and heatmap shape must hold."""
        from airflow.sdk import get_current_context
        from ml_engine.hooks import MLEngineHook

        from include.lifecycle import smoke, storage

        get_current_context()["variant"] = target["variant"]
        instances = storage.read_jsonl(target["instances_uri"])
        predictions = MLEngineHook(gcp_conn_id=CFG.gcp_conn_id).predict_in_chunks(
            model_name=plan["model"], version_name=target["version"], instances=instances,
            batch_size=SMOKE_REQUEST_SIZE)  # stay under ml/v1's 1.5 MB per request
        report = smoke.check_predictions(instances, predictions, keys=target["keys"])
        log.info("Smoke test of %s (%s) passed: %s", target["version"], target["variant"], report)
        return {"variant": target["variant"], "version": target["version"], **report}

    @task.branch
    def gate(plan: dict, metrics: dict, params: dict, ti=None) -> str:
        """Promote only a candidate that beats the current default by the policy; else say why."""
        from ml_engine.hooks import MLEngineHook

        from include.lifecycle import gate as gating
        from include.lifecycle import labels, naming, storage

        hook = MLEngineHook(gcp_conn_id=CFG.gcp_conn_id)
        model = hook.get_model(model_name=plan["model"]) or {}
        default_name = (model.get("defaultVersion") or {}).get("name")
        current_version = naming.short_name(default_name) if default_name else None
        current_metric = None
        own_default = None
        if current_version in plan["versions"].values():
            # ml/v1 makes a model's first READY version its default: that is not a baseline.
            own_default, current_version = current_version, None
        elif current_version:
            version = hook.get_version(model_name=plan["model"], version_name=current_version) or {}
            current_metric = labels.decode_metric(version.get("labels"))
        decision = gating.decide(candidate=float(metrics[config.METRIC]), current=current_metric,
                                 current_version=current_version, policy=params["promotion_policy"],
                                 min_metric=float(params["min_metric"]), own_default=own_default)
        ti.xcom_push(key="decision", value=decision.to_dict())
        storage.write_json(plan["gate_uri"], decision.to_dict())
        log.info("Gate (%s): %s -> %s", decision.policy, decision.reason,
                 "PROMOTE" if decision.promote else "DO NOT PROMOTE")
        return "set_default" if decision.promote else "not_promoted"

    @task
    def not_promoted(plan: dict, ti=None) -> dict:
        """The gate rejected the candidate: the default stays as it was; the new versions stay deployed."""
        decision = ti.xcom_pull(task_ids="gate", key="decision")
        log.warning("NOT PROMOTED: %s. Default unchanged (%s). Versions %s stay deployed for inspection; "
                    "promote one by hand with model_maintenance (action set_default) if wanted.",
                    decision["reason"], decision["current_version"], sorted(plan["versions"].values()))
        return decision

    set_default = MLEngineSetDefaultVersionOperator(
        task_id="set_default",
        model_name="{{ params.model_name }}",
        version_name="{{ ti.xcom_pull(task_ids='plan')['serving_version'] }}",
        gcp_conn_id=CFG.gcp_conn_id,
    )

    @task(outlets=[PROMOTION])
    def record_promotion(plan: dict, metrics: dict, ti=None, outlet_events=None) -> dict:
        """Label the new default with the version it replaced (rollback trail) and emit the promotion Asset."""
        from ml_engine.hooks import MLEngineHook

        from include.lifecycle import promotion

        decision = ti.xcom_pull(task_ids="gate", key="decision")
        hook = MLEngineHook(gcp_conn_id=CFG.gcp_conn_id)
        promotion.label_promoted(hook, model=plan["model"], version=plan["serving_version"],
                                 previous=decision["current_version"], key=plan["key"])
        event = {"model": plan["model"], "version": plan["serving_version"],
                 "variant": plan["serving_variant"], config.METRIC: metrics[config.METRIC],
                 "previous": decision["current_version"], "run_key": plan["key"]}
        outlet_events[PROMOTION].extra = event
        log.info("Promoted %s/%s (replacing %s)", plan["model"], plan["serving_version"], decision["current_version"])
        return event

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def retention(plan: dict, params: dict) -> list[str]:
        """Delete versions beyond the `keep_versions` newest; never the default, its rollback trail,
        a version a batch run has pinned, or this run's."""
        from ml_engine.hooks import MLEngineHook

        from include.lifecycle import naming, pins
        from include.lifecycle import retention as keep

        hook = MLEngineHook(gcp_conn_id=CFG.gcp_conn_id)
        default = naming.short_name(((hook.get_model(model_name=plan["model"]) or {}).get("defaultVersion")
                                     or {}).get("name", "")) or None
        versions = hook.list_versions(model_name=plan["model"])
        pinned = pins.pinned_versions(hook, model=plan["model"], batch_uri=CFG.batch_uri, now=pendulum.now("UTC"),
                                      max_age=timedelta(hours=CFG.batch_pin_hours))
        doomed = keep.beyond_newest(versions, keep=params["keep_versions"], current_default=default,
                                    protect=set(plan["versions"].values()) | pinned)
        for name in doomed:
            hook.delete_version(model_name=plan["model"], version_name=name)
        log.info("Retention kept %s of %s versions; deleted %s", len(versions) - len(doomed), len(versions), doomed)
        return doomed

    planned = plan()
    prepared = prepare_data(planned)
    package = package_trainer()
    plan_value = "ti.xcom_pull(task_ids='plan')"
    train_job = MLEngineStartTrainingJobOperator(
        task_id="train_job",
        job_id=f"{{{{ {plan_value}['training_job_id'] }}}}",
        region=CFG.region,
        package_uris=["{{ ti.xcom_pull(task_ids='package_trainer') }}"],
        training_python_module=TRAINER_MODULE,
        training_args=["--data-uri", f"{{{{ {plan_value}['data_uri'] }}}}", "--epochs", "{{ params.epochs }}"],
        job_dir=f"{{{{ {plan_value}['job_dir'] }}}}",
        scale_tier="BASIC",
        runtime_version=config.RUNTIME_VERSION,
        python_version=config.PYTHON_VERSION,
        labels={"dag": "model_lifecycle", "model": "{{ params.model_name | lower }}"},
        gcp_conn_id=CFG.gcp_conn_id,
        poll_interval=2,
        execution_timeout=timedelta(hours=6),
    )
    metrics = train(planned)
    planned >> prepared >> package >> train_job >> metrics
    exported = export_variants(planned, metrics)
    uploaded = upload(planned, metrics, exported)
    model = MLEngineCreateModelOperator(
        task_id="create_model",
        model={"name": "{{ params.model_name }}", "regions": [CFG.region],
               "description": "tf.keras heatmap model managed by model_lifecycle"},
        gcp_conn_id=CFG.gcp_conn_id,
    )
    versions = MLEngineCreateVersionOperator.partial(
        task_id="create_version",
        model_name="{{ params.model_name }}",
        gcp_conn_id=CFG.gcp_conn_id,
        wait_timeout=1800,
        poll_interval=1,
        map_index_template="{{ task.version['name'] }}",
    ).expand(version=uploaded.map(_version_spec))
    smoked = smoke_test.partial(plan=planned).expand(target=uploaded.map(_smoke_target))
    decided = gate(planned, metrics)
    promoted = record_promotion(planned, metrics)
    rejected = not_promoted(planned)

    uploaded >> model >> versions >> smoked >> decided >> [set_default, rejected]
    set_default >> promoted
    [promoted, rejected] >> retention(planned)


model_lifecycle()
