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

import pendulum
from airflow.sdk import Param, dag, task
from ml_engine.operators import MLEngineSetDefaultVersionOperator

from include import assets, config, dag_defaults
from include.lifecycle.maintenance import ACTIONS

log = logging.getLogger(__name__)
CFG = config.load()
PROMOTION = assets.promotion_asset()


def _hook():
    """What the decisions read models through: an MLEngineHook, or the Vertex AI registry (ML_PLATFORM)."""
    return dag_defaults.platform_hook(CFG)


def _set_default(chosen):
    """ml/v1: setDefault. Vertex AI: all the serving traffic to the version, then the `default` alias."""
    if CFG.platform == "vertex":
        from include.vertex.tasks import switch_default

        return switch_default(chosen)
    return MLEngineSetDefaultVersionOperator(
        task_id="set_default",
        model_name="{{ params.model_name }}",
        version_name=chosen,
        gcp_conn_id=CFG.gcp_conn_id,
    ).output


@dag(
    dag_id="model_maintenance",
    schedule=None,
    start_date=dag_defaults.START_DATE,
    catchup=False,
    max_active_runs=1,
    doc_md=__doc__,
    tags=["ml", "ml_engine", "maintenance"],
    default_args=dag_defaults.default_args(CFG),
    params={
        "action": Param("rollback", type="string", enum=list(ACTIONS), title="Action"),
        "model_name": dag_defaults.model_name_param(CFG.model_name),
        "version": Param("", type="string", title="Version (for set_default)"),
        "older_than_days": Param(30, type="number", minimum=0, title="Age in days (for delete_older_than)"),
        "dry_run": Param(False, type="boolean", title="Dry run (delete_older_than only lists)"),
    },
    render_template_as_native_obj=True,
)
def model_maintenance():
    """Wiring only; the choices live in include/lifecycle (maintenance, retention)."""
    @task.branch
    def choose_action(params: dict) -> str:
        """Route the run to the action asked for in the form; a request it cannot route fails without retries."""
        from include.lifecycle import maintenance

        branch = maintenance.branch_for(params["action"], params["version"])
        log.info("Action %s on model %s", params["action"], params["model_name"])
        return branch

    @task
    def choose_default(params: dict, dag_run=None) -> str:
        """The version to make default: the previous default (rollback) or the named one.

        The choice is recorded in GCS per run, so clearing a rollback run repeats the
        same switch instead of rolling back one step further.
        """
        from include.lifecycle import maintenance, naming, storage

        model = params["model_name"]
        decision_uri = f"{CFG.bucket_uri}/maintenance/{model}/{naming.ml_id(dag_run.run_id)}.json"
        chosen = storage.first_choice(decision_uri, lambda: maintenance.next_default(
            _hook(), model=model, action=params["action"], version=params["version"]))
        return chosen["version"]

    @task(outlets=[PROMOTION])
    def record_default_change(version: str, previous: str | None, params: dict, outlet_events=None) -> dict:
        """Record the replaced default (set_default only) and emit the promotion Asset for batch predictions."""
        if params["action"] == "set_default" and previous:
            # Extend the rollback trail; a rollback itself must not, or a second rollback would bounce back.
            from include.lifecycle import promotion

            promotion.patch_labels(_hook(), model=params["model_name"], version=version,
                                   changes={"promoted_from": previous})
        event = {"model": params["model_name"], "version": version, "previous": previous,
                 "action": params["action"]}
        outlet_events[PROMOTION].extra = event
        log.info("Default of %s is now %s (was %s)", params["model_name"], version, previous)
        return event

    @task
    def choose_old_versions(params: dict, dag_run=None) -> list[str]:
        """Versions older than `older_than_days`, less the protected ones (see retention); empty in a dry run."""
        from include.lifecycle import retention

        found = retention.survey(_hook(), model=params["model_name"], batch_uri=CFG.batch_uri,
                                 now=pendulum.now("UTC"), pin_max_age=CFG.batch_pin_age)
        doomed = retention.older_than(found.versions, days=float(params["older_than_days"]),
                                      now=dag_run.run_after or pendulum.now("UTC"), current_default=found.default,
                                      protect=found.pinned)
        log.info("%s of %s versions are older than %s days: %s%s", len(doomed), len(found.versions),
                 params["older_than_days"], doomed, " (dry run: nothing deleted)" if params["dry_run"] else "")
        return [] if params["dry_run"] else doomed

    branch = choose_action()
    chosen = choose_default()
    switched = _set_default(chosen)
    branch >> chosen
    record_default_change(chosen, switched["previous_default_version"])
    old = choose_old_versions()
    branch >> old
    dag_defaults.delete_versions(old, settings=CFG)


model_maintenance()
