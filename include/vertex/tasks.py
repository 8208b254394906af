"""The DAGs' tasks that differ on Vertex AI (ML_PLATFORM=vertex): versions, staging, the canary, promotion.

Wiring only, as the DAG files are: each body calls ``include.vertex`` (the provider's hooks) and
``include.lifecycle`` (the platform-neutral decisions). Imports of Google's clients happen
inside the tasks, so parsing a DAG stays cheap.
"""

from __future__ import annotations

import logging

from airflow.sdk import TriggerRule, task

from include import config

log = logging.getLogger(__name__)
CFG = config.load()


def _registry():
    from include.vertex.registry import Registry

    return Registry(gcp_conn_id=CFG.gcp_conn_id, project=CFG.project, region=CFG.region)


def _endpoints():
    from include.vertex.serving import Endpoints

    return Endpoints(_registry(), machine_type=CFG.vertex_machine_type)


@task(map_index_template="{{ variant }}")
def upload_version(deployment: dict, plan: dict) -> dict:
    """One Vertex AI model version per variant, aliased by the run's version id; a retry finds it by that alias."""
    from airflow.sdk import get_current_context

    spec = deployment["spec"]
    get_current_context()["variant"] = deployment["smoke"]["variant"]
    found = _registry().upload_version(model_name=plan["model"], version_name=spec["name"], spec={
        "artifactUri": spec["deploymentUri"], "containerSpec": {"imageUri": CFG.vertex_serving_image},
        "labels": spec["labels"], "description": spec["description"]})
    return {"version": spec["name"], "vertex_version": found["vertexVersionId"], **deployment["smoke"]}


@task(map_index_template="{{ variant }}")
def stage_version(target: dict, plan: dict) -> dict:
    """The candidate alone on its variant's staging endpoint (all of its traffic), for the smoke test and the
    evaluation; whatever an earlier run left there is undeployed."""
    from airflow.sdk import get_current_context

    from include.vertex.serving import staging

    get_current_context()["variant"] = target["variant"]
    endpoints, role = _endpoints(), staging(target["variant"])
    deployed = endpoints.deploy(plan["model"], target["version"], role, share=100)
    for old in endpoints.deployments(endpoints.ensure(plan["model"], role)):
        if old.version != target["version"]:
            endpoints.undeploy(plan["model"], role, old.version)
    log.info("Staged %s on %s", target["version"], deployed.endpoint)
    return target


@task
def canary(plan: dict, params: dict) -> dict:
    """The candidate on the serving endpoint with `canary_percent` of the traffic (all of it when nothing serves
    yet); what served before is recorded, so the traffic can go back."""
    from include.lifecycle import storage
    from include.vertex.serving import SERVING

    def start() -> dict:
        endpoints = _endpoints()
        before = {d.version: d.share for d in endpoints.deployments(endpoints.ensure(plan["model"], SERVING))
                  if d.share}
        share = int(params["canary_percent"]) if set(before) - {plan["serving_version"]} else 100
        endpoints.deploy(plan["model"], plan["serving_version"], SERVING, share=share)
        return {"before": before, "share": share}

    started = storage.first_choice(f"{plan['evaluation_uri']}/canary_start.json", start)
    log.info("Canary: %s takes %s%% of the serving traffic (before: %s)", plan["serving_version"],
             started["share"], started["before"] or "nothing served")
    return started


@task.branch
def canary_check(plan: dict, started: dict, params: dict, ti=None) -> str:
    """Probe the serving endpoint for `canary_seconds`: all the traffic to the candidate when failed probes stay
    at or under `canary_max_error_rate` and it answered some; else the traffic goes back."""
    from include.lifecycle import canary as live
    from include.lifecycle import storage

    def judge() -> dict:
        if started["share"] == 100:
            return {"promote": True, "reason": "nothing else served: the candidate took all the traffic at once"}
        instances = storage.read_jsonl(f"{plan['smoke_uri']}/{plan['serving_variant']}.jsonl")
        seen = live.watch(_endpoints().probe(plan["model"]), instances, seconds=float(params["canary_seconds"]),
                          candidate=plan["serving_version"])
        promote, reason = live.verdict(seen, candidate=plan["serving_version"],
                                       max_error_rate=float(params["canary_max_error_rate"]))
        return {"promote": promote, "reason": reason, "watch": seen.to_dict()}

    verdict = storage.first_choice(f"{plan['evaluation_uri']}/canary.json", judge)
    ti.xcom_push(key="canary", value=verdict)
    (log.info if verdict["promote"] else log.warning)("Canary of %s: %s", plan["serving_version"], verdict["reason"])
    return "take_all_traffic" if verdict["promote"] else "canary_rollback"


@task
def take_all_traffic(plan: dict) -> dict:
    """All of the serving endpoint's traffic to the candidate (the `default` alias moves next)."""
    from include.vertex.serving import SERVING

    deployed = _endpoints().route(plan["model"], SERVING, {plan["serving_version"]: 100})
    log.info("%s serves all traffic on %s", plan["serving_version"], deployed.endpoint)
    return {"endpoint": deployed.endpoint, "deployed_model_id": deployed.deployed_id}


@task
def set_default(plan: dict) -> str:
    """The `default` alias to the candidate (what batch prediction and rollback read as the default)."""
    moved = _registry().set_default_version(model_name=plan["model"], version_name=plan["serving_version"])
    log.info("The default version of %s is %s (Vertex AI version %s)", plan["model"], plan["serving_version"],
             moved["vertexVersionId"])
    return plan["serving_version"]


@task
def release_previous(plan: dict) -> list[str]:
    """Undeploy from the serving endpoint what no longer takes traffic (kept as versions for rollback)."""
    from include.vertex.serving import SERVING

    endpoints = _endpoints()
    idle = [d.version for d in endpoints.deployments(endpoints.ensure(plan["model"], SERVING))
            if d.share == 0 and d.version != plan["serving_version"]]
    for version in idle:
        endpoints.undeploy(plan["model"], SERVING, version)
    log.info("Undeployed from serving: %s", idle or "nothing")
    return idle


@task
def canary_rollback(plan: dict, started: dict, ti=None) -> dict:
    """The canary failed: the traffic goes back to what served before, the candidate leaves the serving endpoint."""
    from include.vertex.serving import SERVING

    endpoints = _endpoints()
    endpoints.route(plan["model"], SERVING, started["before"])
    endpoints.undeploy(plan["model"], SERVING, plan["serving_version"])
    verdict = ti.xcom_pull(task_ids="canary_check", key="canary")
    log.warning("NOT PROMOTED after the canary: %s. Traffic back to %s; the default is unchanged.",
                verdict["reason"], started["before"])
    return verdict


@task(trigger_rule=TriggerRule.ALL_DONE)
def release_staging(plan: dict) -> list[str]:
    """Undeploy this run's candidates from the staging endpoints, whatever the gate and the canary decided."""
    from include.vertex.serving import staging

    endpoints = _endpoints()
    released = [version for variant, version in plan["versions"].items()
                if endpoints.undeploy(plan["model"], staging(variant), version)]
    log.info("Released from staging: %s", released or "nothing")
    return released


@task(trigger_rule=TriggerRule.NONE_FAILED, map_index_template="{{ version }}")
def delete_version(version: str, params: dict) -> bool:
    """Delete one version retention chose: undeployed first from any endpoint where it takes no traffic."""
    from airflow.sdk import get_current_context

    get_current_context()["version"] = version
    registry, endpoints = _registry(), _endpoints()
    found = registry.get_version(model_name=params["model_name"], version_name=version)
    for ref in (found or {}).get("deployedModels", []):
        role = ref["endpoint"].rsplit("/", 1)[-1].removeprefix(f"{params['model_name'].lower()}-")
        endpoints.undeploy(params["model_name"], role, version)
    deleted = registry.delete_version(model_name=params["model_name"], version_name=version)
    log.info("Version %s of %s: %s", version, params["model_name"], "deleted" if deleted else "already gone")
    return deleted


@task(multiple_outputs=True)
def switch_default(version: str, params: dict) -> dict:
    """model_maintenance on Vertex AI: `version` takes all of the serving endpoint's traffic, then the `default`
    alias; the previous default leaves the endpoint (its version stays). Output as the ml/v1 operator's."""
    from include.lifecycle.promotion import current_default
    from include.vertex.serving import SERVING

    model, registry, endpoints = params["model_name"], _registry(), _endpoints()
    previous = current_default(registry, model=model)
    endpoints.deploy(model, version, SERVING, share=100)
    registry.set_default_version(model_name=model, version_name=version)
    for idle in endpoints.deployments(endpoints.ensure(model, SERVING)):
        if idle.version != version and idle.share == 0:
            endpoints.undeploy(model, SERVING, idle.version)
    log.info("Default of %s: %s (was %s); it serves all traffic", model, version, previous)
    return {"default_version": version, "previous_default_version": previous if previous != version else None}
