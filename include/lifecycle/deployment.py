"""What model_lifecycle deploys: one ml/v1 version spec and one smoke-test target per variant.

The smoke-test instance files and the run manifest go to GCS first, so every
deployed version can be traced back to the run, its metrics and its exports.
"""

from __future__ import annotations

from include import config
from include.lifecycle import labels, samples, storage


def version_spec(plan: dict, variant: str, *, deployment_uri: str, metric: float, run_id: str, dag_id: str,
                 period: str | None = None) -> dict:
    """The ml/v1 Version body for one variant of the run (labels carry the gate's metric)."""
    return {
        "name": plan["versions"][variant],
        "deploymentUri": deployment_uri,
        "runtimeVersion": config.RUNTIME_VERSION,
        "pythonVersion": config.PYTHON_VERSION,
        "framework": "TENSORFLOW",
        "description": f"{variant} serving variant of run {plan['key']} ({run_id})",
        "labels": labels.version_labels(metric=metric, variant=variant, key=plan["key"], dag_id=dag_id,
                                        period=period),
    }


def stage(plan: dict, metrics: dict, exported: dict, *, smoke_instances: int, run_id: str,
          dag_id: str, period: str | None = None) -> list[dict]:
    """Write the smoke-test instance files and the run manifest; return the deployments.

    :param plan: the run's plan (include.lifecycle.planning).
    :param metrics: the training's metrics.json.
    :param exported: variant -> gs:// SavedModel directory.
    :param smoke_instances: instances per smoke test.
    :param period: the data period trained on (recorded in the versions' labels).
    :return: one {"spec": version body, "smoke": smoke-test target} per variant.
    """
    image_size = int(metrics.get("image_size", config.load().image_size))
    deployments = []
    for variant in plan["variants"]:
        written = samples.write_smoke_instances(f"{plan['smoke_uri']}/{variant}.jsonl", variant=variant,
                                                count=smoke_instances, image_size=image_size)
        smoke = {"variant": variant, "version": plan["versions"][variant], "instances_uri": written["uri"],
                 "keys": written["keys"]}
        spec = version_spec(plan, variant, deployment_uri=exported[variant], metric=metrics[config.METRIC],
                            run_id=run_id, dag_id=dag_id, period=period)
        deployments.append({"spec": spec, "smoke": smoke})
    storage.write_json(plan["manifest_uri"], {
        "plan": plan, "metrics": metrics, "exported": exported, "run_id": run_id,
        "versions": [d["spec"] for d in deployments], "smoke": [d["smoke"] for d in deployments]})
    return deployments
