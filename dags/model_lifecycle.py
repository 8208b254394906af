"""
## model_lifecycle: train, deploy, smoke-test, gate and promote the heatmap model on ml/v1

Runs weekly (`ML_RETRAIN_SCHEDULE`, see `include/config.py`) and on demand from
the **Trigger** form (model name, epochs, variants to deploy, the serving variant
to promote, the promotion policy and a minimum metric).

1. **plan**: derive every name from the run (`v<run key>_<variant>`, GCS prefixes), validate params.
2. **choose_data**: the run's data period under the data root (`data_uri`): the data Asset event's
   period, else the `data_period` Param (`latest`: the newest period present). A scheduled or
   Asset-triggered run on a period already trained and judged on stops here (the rest skipped).
   **prepare_data**: the local feed writes the period's examples when the folder is empty.
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
6. **create_model** (idempotent) -> **create_version** (one mapped task per variant, waits for READY
   in the triggerer; the training job and the batch job wait there too).
7. **smoke_test**: real online predictions against each new version (count, keys, heatmap shape).
8. **evaluate**: the candidate (serving version) and the current default predict the same held-out
   examples of the period; IoU of both, the difference's bootstrap interval (seeded by the run),
   written to `<run>/evaluation/evaluation.json` once and recorded in the candidate's `eval_*` labels.
9. **gate**: `better` promotes when the interval's lower bound clears `gate_margin`; `not_worse`
   when its upper bound is not below -`gate_margin`; `min_metric` applies to the evaluated IoU.
   A rejected candidate goes to **not_promoted**, which says why; the default is not touched.
10. **set_default** -> **record_promotion** (labels the new default with the version it
   replaced, emits the promotion Asset that triggers `batch_prediction`).
11. **retention**: keep the `keep_versions` newest versions; never the default, the versions on its
    `promoted_from` trail (rollback targets), versions unfinished batch runs pinned, or this run's.
    **delete_version** deletes the rest, one mapped task per version.

Scheduled weekly (`ML_RETRAIN_SCHEDULE`) and whenever the data Asset marks a new period
(`data_arrival`, or a user's feed). See docs/retrains.md.

Every task is idempotent: names come from the run, creates reuse what matches,
so clearing any task converges. Data moves through GCS; XCom holds only small JSON.
"""

from __future__ import annotations

import logging

import pendulum
from airflow.sdk import AssetOrTimeSchedule, CronTriggerTimetable, Param, TriggerRule, dag, task
from ml_engine.operators import (
    MLEngineCreateModelOperator,
    MLEngineCreateVersionOperator,
    MLEngineSetDefaultVersionOperator,
    MLEngineStartTrainingJobOperator,
)

from include import assets, config, dag_defaults

log = logging.getLogger(__name__)
CFG = config.load()
PROMOTION = assets.promotion_asset()
DATA = assets.data_asset()
AUTOMATIC_RUNS = ("scheduled", "asset_triggered")
ON_VERTEX = CFG.platform == "vertex"
#: The platform's training job (an ml/v1 training job, or a Vertex AI training pipeline), or the task itself.
TRAINING_BACKENDS = ("vertex" if ON_VERTEX else "ml_engine", "in_task")
#: The first task of a promotion: ml/v1 sets the default at once; Vertex AI starts with a canary.
PROMOTE_FIRST = "canary" if ON_VERTEX else "set_default"
TRAINER_MODULE = "trainer.task"  # include/trainer as the package `trainer` (include/trainer/pyproject.toml)
PACKAGES_URI = f"{CFG.bucket_uri}/packages"


def _hook():
    """What the decisions read models through: an MLEngineHook, or the Vertex AI registry (ML_PLATFORM)."""
    return dag_defaults.platform_hook(CFG)


def _version_spec(deployment: dict) -> dict:
    """The ml/v1 Version body of one upload result (mapped into create_version)."""
    return deployment["spec"]


def _smoke_target(deployment: dict) -> dict:
    """The smoke-test target of one upload result (mapped into smoke_test)."""
    return deployment["smoke"]


def _schedule():
    """Weekly (ML_RETRAIN_SCHEDULE) or when new data arrives; only on new data when the cron is off."""
    if CFG.retrain_schedule is None:
        return [DATA]
    return AssetOrTimeSchedule(timetable=CronTriggerTimetable(CFG.retrain_schedule, timezone="UTC"), assets=[DATA])


def _canary_params() -> dict:
    """Vertex AI only: how a promotion's canary runs on the serving endpoint."""
    return {
        "canary_percent": Param(CFG.canary_percent, type="integer", minimum=1, maximum=100,
                                title="Canary share (%)", description="The candidate's first share of the "
                                "serving endpoint's traffic; 100 skips the canary."),
        "canary_seconds": Param(CFG.canary_seconds, type="integer", minimum=0, maximum=86400,
                                title="Canary watch (s)", description="How long probes watch the canary."),
        "canary_max_error_rate": Param(CFG.canary_max_error_rate, type="number", minimum=0, maximum=1,
                                       title="Canary's maximum error rate", description="Failed probes "
                                       "above this send the traffic back to the previous default."),
    }


@dag(
    dag_id="model_lifecycle",
    schedule=_schedule(),
    start_date=dag_defaults.START_DATE,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "ml_engine", "training", "deployment"],
    default_args=dag_defaults.default_args(CFG),
    params={
        "model_name": dag_defaults.model_name_param(
            CFG.model_name, "ml/v1 model to deploy into (created when missing)."),
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
        "min_metric": Param(CFG.min_metric, type="number", minimum=0, maximum=1, title="Minimum IoU",
                            description="A candidate whose evaluated IoU is below this is never promoted."),
        "gate_margin": Param(CFG.gate_margin, type="number", minimum=0, maximum=1, title="Gate margin (IoU)",
                             description="better: the interval's lower bound must exceed it; not_worse: its "
                                         "upper bound must not fall below minus it. See docs/retrains.md."),
        "data_period": Param("latest", type="string", pattern=r"^(latest|\d{4}-\d{2}-\d{2})$",
                             title="Data period", description="latest: the newest period folder under the data "
                             "root (on or before the run's date); or a period's date YYYY-MM-DD."),
        "num_examples": Param(CFG.num_examples, type="integer", minimum=2, title="Generated dataset size",
                              description="The local feed's examples for a period that holds no data yet."),
        "training_backend": Param(TRAINING_BACKENDS[0], type="string", enum=list(TRAINING_BACKENDS),
                                  title="Training backend",
                                  description="ml_engine: an ml/v1 training job runs the packaged trainer "
                                              "(logs streamed into train_job's log); vertex (ML_PLATFORM=vertex): "
                                              "a Vertex AI Python package training pipeline runs it; in_task: "
                                              "train inside the Airflow task."),
        "data_uri": Param(CFG.data_uri, type="string", pattern=r"^gs://", title="Training data root (gs://)",
                          description="One folder per period (YYYY-MM-DD), or one dataset without periods."),
        "keep_versions": Param(CFG.keep_versions, type="integer", minimum=1, title="Versions to keep"),
        "smoke_instances": Param(CFG.smoke_instances, type="integer", minimum=1, maximum=64,
                                 title="Instances per smoke test"),
        **(_canary_params() if ON_VERTEX else {}),
    },
    render_template_as_native_obj=True,
)
def model_lifecycle():
    """Wiring only; each task's decision lives in include/lifecycle."""
    @task(multiple_outputs=True)
    def plan(params: dict, dag_run=None) -> dict:
        """Every name of this run, derived from the run only, so a re-run lands on the same ones."""
        from include.lifecycle import naming, planning

        key = naming.run_key(dag_run.logical_date or dag_run.run_after)
        result = planning.run_plan(params, key=key, runs_uri=CFG.runs_uri)
        log.info("Run %s of model %s: versions %s, artifacts under %s/%s/%s", key, result["model"],
                 result["versions"], CFG.runs_uri, result["model"], key)
        return result

    @task.short_circuit
    def choose_data(plan: dict, params: dict, dag_run=None, triggering_asset_events=None) -> dict | bool:
        """The run's data period: the data Asset event's, else the data_period Param. A scheduled or
        Asset-triggered run on a period a version was already trained and judged on stops here, and
        every later task is skipped (the weekly cron and the data Asset may both fire for one period)."""
        from include.lifecycle import datafeed, periods

        run_period = periods.period_of(dag_run.logical_date or dag_run.run_after)
        if chosen := datafeed.from_events(triggering_asset_events):
            log.info("Data period %s (%s), from the data Asset event", chosen.period, chosen.data_uri)
        else:
            chosen = datafeed.choose(plan["data_root"], wanted=params["data_period"], run_period=run_period)
        if dag_run.run_type in AUTOMATIC_RUNS and (done := datafeed.judged_on(_hook(), model=plan["model"],
                                                                              chosen=chosen)):
            log.info("No new data: %s was already trained and judged on period %s; nothing to retrain "
                     "(trigger by hand to retrain anyway)", done, chosen.period)
            return False
        return {"period": chosen.period, "data_uri": chosen.data_uri}

    @task(multiple_outputs=True)
    def prepare_data(chosen: dict, params: dict) -> dict:
        """The period's dataset: kept when present, else written by the local feed (with the period's drift)."""
        from include.lifecycle import datafeed
        from include.lifecycle.periods import PeriodData

        return datafeed.ensure(PeriodData(**chosen), num_examples=params["num_examples"],
                               image_size=CFG.image_size, drift_per_week=CFG.data_drift_per_week,
                               generate=CFG.generate_data)

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def package_trainer(params: dict) -> str:
        """Stage the trainer sdist for the training job (named by a hash of its sources); skipped when in_task."""
        from airflow.sdk.exceptions import AirflowSkipException

        if params["training_backend"] != TRAINING_BACKENDS[0]:
            raise AirflowSkipException(f"training_backend is {params['training_backend']}: no training job")
        from include.lifecycle import packaging, storage

        storage.ensure_bucket(PACKAGES_URI)
        return packaging.ensure_package(PACKAGES_URI)

    @task(trigger_rule=TriggerRule.NONE_FAILED, execution_timeout=config.TRAINING_TIMEOUT)
    def train(plan: dict, data_uri: str, params: dict) -> dict:
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

        with storage.connection_identity():
            metrics = trainer.train(data_uri, plan["job_dir"], epochs=params["epochs"])
        files, size = storage.usage(plan["job_dir"])
        log.info("Uploaded the trained model: %s files, %s bytes -> %s", files, size, plan["job_dir"])
        return metrics

    @task(execution_timeout=config.EXPORT_TIMEOUT)
    def export_variants(plan: dict, metrics: dict) -> dict:
        """One SavedModel per serving variant under the run's export prefix, each verified before upload."""
        from include.lifecycle import storage

        verification_uri = f"{plan['export_uri']}/verification.json"
        if storage.exists(verification_uri):
            done = storage.read_json(verification_uri).get("variants", {})
            if set(plan["variants"]) <= set(done):
                log.info("Variants already exported and verified (%s); reusing them", verification_uri)
                return {variant: done[variant] for variant in plan["variants"]}
        from include.lifecycle.errors import CheckFailed
        from include.trainer import export

        try:
            with storage.connection_identity():
                exported = export.export_variants(plan["job_dir"], plan["export_uri"], variants=plan["variants"])
        except export.VerificationError as error:
            raise CheckFailed(f"Export verification failed: {error}") from error
        for variant, uri in exported.items():
            log.info("Uploaded %s variant: %s files, %s bytes -> %s", variant, *storage.usage(uri), uri)
        return exported

    @task
    def upload(plan: dict, metrics: dict, exported: dict, period: str | None, params: dict,
               dag_run=None) -> list[dict]:
        """Smoke-test instance files and the run manifest to GCS; per variant, the version spec and smoke target."""
        from include.lifecycle import deployment, storage

        deployments = deployment.stage(plan, metrics, exported, smoke_instances=params["smoke_instances"],
                                       run_id=dag_run.run_id, dag_id=dag_run.dag_id, period=period)
        for uri in [d["smoke"]["instances_uri"] for d in deployments] + [plan["manifest_uri"]]:
            log.info("Uploaded %s (%s bytes)", uri, storage.usage(uri)[1])
        return deployments

    @task(map_index_template="{{ variant }}")
    def smoke_test(target: dict, plan: dict) -> dict:
        """Real online predictions against one new version: count, keys and heatmap shape must hold."""
        from airflow.sdk import get_current_context

        from include.lifecycle import smoke, storage

        get_current_context()["variant"] = target["variant"]
        instances = storage.read_jsonl(target["instances_uri"])
        report = smoke.run(_hook(), model=plan["model"], version=target["version"], instances=instances,
                           keys=target["keys"])
        log.info("Smoke test of %s (%s) passed: %s", target["version"], target["variant"], report)
        return {"variant": target["variant"], "version": target["version"], **report}

    @task(execution_timeout=config.EVALUATION_TIMEOUT)
    def evaluate(plan: dict, data: dict, smoked: list) -> dict:
        """The candidate and the current default on the same held-out examples, through their versions
        (after every new version passed its smoke test: `smoked`).

        Recorded once per run (evaluation.json): a cleared task repeats its first evaluation, even after
        the promotion made the candidate the default."""
        from include.lifecycle import evaluation, promotion, storage

        found = storage.first_choice(f"{plan['evaluation_uri']}/evaluation.json", lambda: evaluation.for_run(
            _hook(), plan=plan, data=data, limit=CFG.eval_examples).to_dict())
        promotion.patch_labels(_hook(), model=plan["model"], version=plan["serving_version"],
                               changes=evaluation.label_changes(found))
        log.info("Evaluation: %s", evaluation.Evaluation(**found).summary())
        return found

    @task.branch
    def gate(plan: dict, found: dict, params: dict, ti=None) -> str:
        """Promote only a candidate the evaluation shows better than the current default; else say why."""
        from include.lifecycle import gate as gating
        from include.lifecycle import storage

        decision = gating.on_evaluation(found, policy=params["promotion_policy"],
                                        min_metric=float(params["min_metric"]), margin=float(params["gate_margin"]))
        ti.xcom_push(key="decision", value=decision.to_dict())
        storage.write_json(plan["gate_uri"], decision.to_dict())
        log.info("Gate (%s): %s -> %s", decision.policy, decision.reason,
                 "PROMOTE" if decision.promote else "DO NOT PROMOTE")
        return PROMOTE_FIRST if decision.promote else "not_promoted"

    @task
    def not_promoted(plan: dict, ti=None) -> dict:
        """The gate rejected the candidate: the default stays as it was; the new versions stay deployed."""
        decision = ti.xcom_pull(task_ids="gate", key="decision")
        log.warning("NOT PROMOTED: %s. Default unchanged (%s). Versions %s stay deployed for inspection; "
                    "promote one by hand with model_maintenance (action set_default) if wanted.",
                    decision["reason"], decision["current_version"], sorted(plan["versions"].values()))
        return decision

    @task(outlets=[PROMOTION])
    def record_promotion(plan: dict, metrics: dict, ti=None, outlet_events=None) -> dict:
        """Label the new default with the version it replaced (rollback trail) and emit the promotion Asset."""
        from include.lifecycle import promotion

        previous = ti.xcom_pull(task_ids="gate", key="decision")["current_version"]
        promotion.label_promoted(_hook(), model=plan["model"], version=plan["serving_version"],
                                 previous=previous, key=plan["key"])
        event = {"model": plan["model"], "version": plan["serving_version"], "variant": plan["serving_variant"],
                 config.METRIC: metrics[config.METRIC], "previous": previous, "run_key": plan["key"]}
        outlet_events[PROMOTION].extra = event
        log.info("Promoted %s/%s (replacing %s)", plan["model"], plan["serving_version"], previous)
        return event

    @task(trigger_rule=TriggerRule.NONE_FAILED)
    def retention(plan: dict, params: dict) -> list[str]:
        """Versions beyond the `keep_versions` newest, to delete; never the default, its rollback trail,
        a version a batch run has pinned, or this run's."""
        from include.lifecycle import retention as keep

        found = keep.survey(_hook(), model=plan["model"], batch_uri=CFG.batch_uri, now=pendulum.now("UTC"),
                            pin_max_age=CFG.batch_pin_age)
        doomed = keep.beyond_newest(found.versions, keep=params["keep_versions"], current_default=found.default,
                                    protect=set(plan["versions"].values()) | found.pinned)
        log.info("Retention keeps %s of %s versions; deleting %s", len(found.versions) - len(doomed),
                 len(found.versions), doomed)
        return doomed

    planned = plan()
    data = prepare_data(choose_data(planned))
    package = package_trainer()
    train_job = (_vertex_training_job if ON_VERTEX else _ml_engine_training_job)(planned, data, package)
    metrics = train(planned, data["data_uri"])
    data >> package  # data first: the training job reads it
    train_job >> metrics  # the job writes metrics.json; train reads it (or trains in_task)
    uploaded = upload(planned, metrics, export_variants(planned, metrics), data["period"])
    serve = _serve_on_vertex if ON_VERTEX else _serve_on_ml_engine
    rejected = not_promoted(planned)
    outcomes = serve(planned, uploaded, decided=lambda smoked: gate(planned, evaluate(planned, data, smoked)),
                     smoke_test=smoke_test, record_promotion=lambda: record_promotion(planned, metrics),
                     rejected=rejected)
    doomed = retention(planned)
    [*outcomes, rejected] >> doomed
    dag_defaults.delete_versions(doomed, settings=CFG)


def _ml_engine_training_job(planned, data, package):
    """The trainer sdist as an ml/v1 training job; its log streams into the task log (deferred while it runs)."""
    return MLEngineStartTrainingJobOperator(
        task_id="train_job",
        job_id=planned["training_job_id"],
        region=CFG.region,
        package_uris=[package],
        training_python_module=TRAINER_MODULE,
        training_args=["--data-uri", data["data_uri"], "--epochs", "{{ params.epochs }}"],
        job_dir=planned["job_dir"],
        scale_tier="BASIC",
        runtime_version=config.RUNTIME_VERSION,
        python_version=config.PYTHON_VERSION,
        labels={"dag": "model_lifecycle", "model": "{{ params.model_name | lower }}"},
        gcp_conn_id=CFG.gcp_conn_id,
        deferrable=True,
        poll_interval=config.TRAINING_POLL_SECONDS,
        wait_timeout=config.TRAINING_TIMEOUT.total_seconds(),
        execution_timeout=config.TRAINING_TIMEOUT,
    )


def _vertex_training_job(planned, data, package):
    """The same sdist as a Vertex AI Python package training pipeline (the provider's operator, reused by
    display name on a retry); it writes metrics.json and the model to the run's job dir."""
    from include.vertex.training import VertexTrainingJobOperator

    return VertexTrainingJobOperator(
        task_id="train_job",
        project_id=CFG.project,
        region=CFG.region,
        display_name=planned["training_job_id"],
        python_package_gcs_uri=package,
        python_module_name=TRAINER_MODULE,
        container_uri=CFG.vertex_training_image,
        args=["--data-uri", data["data_uri"], "--epochs", "{{ params.epochs }}", "--job-dir", planned["job_dir"]],
        staging_bucket=f"{CFG.bucket_uri}/vertex-staging",
        machine_type=CFG.vertex_machine_type,
        labels={"dag": "model_lifecycle", "model": "{{ params.model_name | lower }}"},
        gcp_conn_id=CFG.gcp_conn_id,
        execution_timeout=config.TRAINING_TIMEOUT,
    )


def _serve_on_ml_engine(planned, uploaded, *, decided, smoke_test, record_promotion, rejected) -> list:
    """ml/v1: create the model and a version per variant (READY in the triggerer), smoke-test each version,
    then the gate; a promotion sets the default at once. The tasks the retention waits for."""
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
        deferrable=True,
        poll_interval=config.VERSION_POLL_SECONDS,
        wait_timeout=config.VERSION_TIMEOUT.total_seconds(),
        map_index_template="{{ task.version['name'] }}",
    ).expand(version=uploaded.map(_version_spec))
    smoked = smoke_test.partial(plan=planned).expand(target=uploaded.map(_smoke_target))
    uploaded >> model >> versions >> smoked
    gate_task = decided(smoked)
    set_default = MLEngineSetDefaultVersionOperator(
        task_id="set_default",
        model_name="{{ params.model_name }}",
        version_name=planned["serving_version"],
        gcp_conn_id=CFG.gcp_conn_id,
    )
    promoted = record_promotion()
    gate_task >> [set_default, rejected]
    set_default >> promoted
    return [promoted]


def _serve_on_vertex(planned, uploaded, *, decided, smoke_test, record_promotion, rejected) -> list:
    """Vertex AI: a model version per variant (alias: the run's version id), each alone on its variant's staging
    endpoint for the smoke test and the evaluation; a promotion is a canary on the serving endpoint, then all
    the traffic and the `default` alias; staging is released whatever happens. The tasks the retention waits for."""
    from include.vertex import tasks as vertex

    staged = vertex.stage_version.partial(plan=planned).expand(
        target=vertex.upload_version.partial(plan=planned).expand(deployment=uploaded))
    smoked = smoke_test.partial(plan=planned).expand(target=staged)
    gate_task = decided(smoked)
    started = vertex.canary(planned)
    checked = vertex.canary_check(planned, started)
    all_traffic = vertex.take_all_traffic(planned)
    set_default = vertex.set_default(planned)
    promoted = record_promotion()
    released = vertex.release_previous(planned)
    rolled_back = vertex.canary_rollback(planned, started)
    gate_task >> [started, rejected]
    checked >> [all_traffic, rolled_back]
    all_traffic >> set_default >> promoted >> released
    [released, rejected, rolled_back] >> vertex.release_staging(planned)
    return [released, rolled_back]

model_lifecycle()
