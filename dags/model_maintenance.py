"""
## model_maintenance: roll back, set a named default, delete old versions (manual runs)

Trigger with a form; `action` picks what happens:

- **rollback**: make the version that was default before the current one the default
  again. `model_lifecycle` labels every version it promotes with `promoted_from`; when that
  trail is missing, the newest READY version of the same variant created before the
  current default is used.
- **set_default**: make the named `version` the default (it must be READY).
- **delete_older_than**: delete versions created more than `older_than_days` ago; never the
  default, the versions on its `promoted_from` trail (the rollback targets) or a version an
  unfinished batch run or active ml/v1 job has pinned. With `dry_run` the versions are only listed.

A change of default emits the promotion Asset, so `batch_prediction` runs on the new default.
"""

from __future__ import annotations

import logging
from datetime import timedelta

import pendulum
from airflow.sdk import Param, TriggerRule, dag, task
from ml_engine.operators import MLEngineDeleteVersionOperator, MLEngineSetDefaultVersionOperator

from include import assets, config

log = logging.getLogger(__name__)
CFG = config.load()
PROMOTION = assets.promotion_asset()
ACTIONS = ["rollback", "set_default", "delete_older_than"]


@dag(
    dag_id="model_maintenance",
    schedule=None,
    start_date=pendulum.datetime(2025, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "ml_engine", "maintenance"],
    default_args={"owner": "ml-platform", "retries": CFG.task_retries,
                  "retry_delay": timedelta(seconds=CFG.retry_delay_seconds)},
    params={
        "action": Param("rollback", type="string", enum=ACTIONS, title="Action"),
        "model_name": Param(CFG.model_name, type="string", pattern=r"^[A-Za-z][A-Za-z0-9_]{0,127}$",
                            title="Model name"),
        "version": Param("", type="string", title="Version (for set_default)"),
        "older_than_days": Param(30, type="number", minimum=0, title="Age in days (for delete_older_than)"),
        "dry_run": Param(False, type="boolean", title="Dry run (delete_older_than only lists)"),
    },
    render_template_as_native_obj=True,
)
def model_maintenance():
    @task.branch
    def choose_action(params: dict) -> str:
        """Route the run to the action asked for in the form."""
        action = params["action"]
        if action == "set_default" and not params["version"].strip():
            raise ValueError("action set_default needs a version")
        log.info("Action %s on model %s", action, params["model_name"])
        return "choose_default" if action in ("rollback", "set_default") else "choose_old_versions"

    @task
    def choose_default(params: dict, dag_run=None) -> str:
        """The version to make default: the previous default (rollback) or the named one.

        The choice is recorded in GCS per run, so clearing a rollback run repeats the
        same switch instead of rolling back one step further.
        """
        from include.lifecycle import naming, storage

        decision_uri = f"{CFG.bucket_uri}/maintenance/{params['model_name']}/{naming.ml_id(dag_run.run_id)}.json"
        if storage.exists(decision_uri):
            chosen = storage.read_json(decision_uri)["version"]
            log.info("Re-run: keeping the version this run chose first: %s", chosen)
            return chosen
        chosen = _choose_default(params)
        storage.ensure_bucket(decision_uri)
        storage.write_json(decision_uri, {"version": chosen, "action": params["action"]})
        return chosen

    def _choose_default(params: dict) -> str:
        from ml_engine.hooks import MLEngineHook

        from include.lifecycle import naming, retention

        hook = MLEngineHook(gcp_conn_id=CFG.gcp_conn_id)
        model_name = params["model_name"]
        model = hook.get_model(model_name=model_name)
        if model is None:
            raise ValueError(f"Model {model_name} does not exist")
        versions = hook.list_versions(model_name=model_name)
        current = naming.short_name((model.get("defaultVersion") or {}).get("name", "")) or None
        if params["action"] == "set_default":
            wanted = naming.ml_id(params["version"].strip())
            found = next((v for v in versions if naming.short_name(v["name"]) == wanted), None)
            if found is None or found.get("state") != "READY":
                raise ValueError(f"Version {wanted} of {model_name} is not a READY version: {found}")
            log.info("Default of %s: %s -> %s", model_name, current, wanted)
            return wanted
        target = retention.previous_default(versions, current_default=current) or retention.previous_of_variant(
            versions, current_default=current)
        if target is None:
            raise ValueError(f"No version to roll back to from {current}: no promotion trail and no older "
                             "READY version of the same variant")
        log.info("Rolling back %s: %s -> %s", model_name, current, target)
        return target

    set_default = MLEngineSetDefaultVersionOperator(
        task_id="set_default",
        model_name="{{ params.model_name }}",
        version_name="{{ ti.xcom_pull(task_ids='choose_default') }}",
        gcp_conn_id=CFG.gcp_conn_id,
    )

    @task(outlets=[PROMOTION])
    def record_default_change(params: dict, ti=None, outlet_events=None) -> dict:
        """Record the replaced default (set_default only) and emit the promotion Asset for batch predictions."""
        version = ti.xcom_pull(task_ids="choose_default")
        previous = ti.xcom_pull(task_ids="set_default", key="previous_default_version")
        if params["action"] == "set_default" and previous:
            # Extend the rollback trail; a rollback itself must not, or a second rollback would bounce back.
            from ml_engine.hooks import MLEngineHook

            from include.lifecycle import promotion

            promotion.patch_labels(MLEngineHook(gcp_conn_id=CFG.gcp_conn_id), model=params["model_name"],
                                   version=version, changes={"promoted_from": previous})
        event = {"model": params["model_name"], "version": version, "previous": previous,
                 "action": params["action"]}
        outlet_events[PROMOTION].extra = event
        log.info("Default of %s is now %s (was %s)", params["model_name"], version, previous)
        return event

    @task
    def choose_old_versions(params: dict, dag_run=None) -> list[str]:
        """Versions older than `older_than_days`, less the protected ones (see retention); empty in a dry run."""
        from ml_engine.hooks import MLEngineHook

        from include.lifecycle import naming, pins, retention

        hook = MLEngineHook(gcp_conn_id=CFG.gcp_conn_id)
        model = hook.get_model(model_name=params["model_name"]) or {}
        default = naming.short_name((model.get("defaultVersion") or {}).get("name", "")) or None
        versions = hook.list_versions(model_name=params["model_name"])
        now = dag_run.run_after or pendulum.now("UTC")
        pinned = pins.pinned_versions(hook, model=params["model_name"], batch_uri=CFG.batch_uri,
                                      now=pendulum.now("UTC"), max_age=timedelta(hours=CFG.batch_pin_hours))
        doomed = retention.older_than(versions, days=float(params["older_than_days"]), now=now,
                                      current_default=default, protect=pinned)
        log.info("%s of %s versions are older than %s days: %s%s", len(doomed), len(versions),
                 params["older_than_days"], doomed, " (dry run: nothing deleted)" if params["dry_run"] else "")
        return [] if params["dry_run"] else doomed

    delete = MLEngineDeleteVersionOperator.partial(
        task_id="delete_version",
        model_name="{{ params.model_name }}",
        gcp_conn_id=CFG.gcp_conn_id,
        poll_interval=1,
        trigger_rule=TriggerRule.NONE_FAILED,
    )

    branch = choose_action()
    chosen = choose_default()
    branch >> chosen >> set_default >> record_default_change()
    old = choose_old_versions()
    branch >> old
    delete.expand(version_name=old)


model_maintenance()
