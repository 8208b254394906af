"""model_lifecycle's plan: every name of a run, derived from the run and its Params only.

A re-run computes the same plan, so every later task lands on the same versions,
job and GCS objects. Params that cannot make a plan are an `InvalidRequest`.
"""

from __future__ import annotations

from include.config import VARIANTS
from include.lifecycle import naming
from include.lifecycle.errors import InvalidRequest


def run_plan(params: dict, *, key: str, runs_uri: str) -> dict:
    """The run's names: versions per variant, the training job, and its GCS prefixes.

    :param params: the run's Params (model_name, variants, serving_variant, data_uri: the data root).
    :param key: the run key (`naming.run_key` of the run's date).
    :param runs_uri: gs:// prefix of all runs' artifacts (`Settings.runs_uri`).
    :return: the plan, a small JSON-able dict.
    """
    variants = list(dict.fromkeys(params["variants"]))
    if not variants or set(variants) - set(VARIANTS):
        raise InvalidRequest(f"variants must be a non-empty subset of {VARIANTS}, got {params['variants']}")
    serving = params["serving_variant"]
    if serving not in variants:
        raise InvalidRequest(f"serving_variant {serving!r} is not among the variants to deploy {variants}")
    model = params["model_name"]
    run_uri = f"{runs_uri}/{model}/{key}"
    versions = {variant: naming.version_id(key, variant) for variant in variants}
    return {
        "key": key,
        "model": model,
        "variants": variants,
        "serving_variant": serving,
        "serving_version": versions[serving],
        "versions": versions,
        "data_root": params["data_uri"].rstrip("/"),
        "job_dir": f"{run_uri}/train",
        "training_job_id": naming.training_job_id(model, key),
        "export_uri": f"{run_uri}/export",
        "smoke_uri": f"{run_uri}/smoke",
        "manifest_uri": f"{run_uri}/manifest.json",
        "gate_uri": f"{run_uri}/gate.json",
        "evaluation_uri": f"{run_uri}/evaluation",
    }
