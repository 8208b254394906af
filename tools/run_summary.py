"""The short human summary ``make run`` prints: model, versions and their state, default, metrics, batch counts.

Everything is read back from where the DAGs left it — the ml/v1 API (versions,
labels, default) and GCS (run manifest, gate decision, batch summary) — with
the same googleapiclient client Google's docs use, so the summary shows what a
user of the API would see, not what the DAGs believe they did.

    python -m tools.run_summary [--lifecycle STATE] [--batch STATE] [--seconds N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys

from include import config
from include.lifecycle import labels as version_labels
from include.lifecycle.naming import short_name


def _ml_api(settings: config.Settings):
    from tools import devstack

    return devstack.ml_api(settings.ml_engine_endpoint)


def _latest_json(prefix: str, name: str) -> tuple[str, dict] | None:
    """The most recently written ``.../name`` under a gs:// prefix, parsed."""
    from include.trainer import gcs

    bucket, path = gcs.parse_uri(prefix)
    blobs = [b for b in gcs.client().list_blobs(bucket, prefix=path.rstrip("/") + "/") if b.name.endswith(f"/{name}")]
    if not blobs:
        return None
    newest = max(blobs, key=lambda b: b.updated)
    return f"gs://{bucket}/{newest.name}", json.loads(newest.download_as_text())


def _vertex_versions(settings: config.Settings) -> tuple[list[dict], str | None, dict]:
    """Versions (ml/v1's shape), the default and each endpoint's traffic by version, from Vertex AI."""
    from include.vertex.registry import Registry
    from include.vertex.serving import Endpoints, staging

    registry = Registry(gcp_conn_id=settings.gcp_conn_id, project=settings.project, region=settings.region)
    versions = registry.list_versions(model_name=settings.model_name)
    endpoints, traffic = Endpoints(registry), {}
    for role in ("serving", *(staging(v) for v in settings.variants)):
        if (endpoint := endpoints.get(settings.model_name, role)) is not None:
            traffic[endpoint["name"]] = {d.version: d.share for d in endpoints.deployments(endpoint)}
    default = next((short_name(v["name"]) for v in versions if v.get("isDefault")), None)
    return versions, default, traffic


def collect(settings: config.Settings) -> dict:
    """Everything the summary shows, as plain data (also handy for tests)."""
    traffic = None
    if settings.platform == "vertex":
        versions, default, traffic = _vertex_versions(settings)
    else:
        api = _ml_api(settings)
        model_path = f"projects/{settings.project}/models/{settings.model_name}"
        model = api.projects().models().get(name=model_path).execute()
        versions = api.projects().models().versions().list(parent=model_path).execute().get("versions", [])
        default = short_name((model.get("defaultVersion") or {}).get("name", "")) or None
    rows = []
    for version in sorted(versions, key=lambda v: (v.get("createTime", ""), v["name"])):
        labels = version.get("labels") or {}
        rows.append({
            "version": short_name(version["name"]),
            "state": version.get("state"),
            "variant": labels.get("variant", "?"),
            config.METRIC: version_labels.decode_metric(labels),
            "default": short_name(version["name"]) == default,
            "created": version.get("createTime", ""),
        })
    run = _latest_json(f"{settings.runs_uri}/{settings.model_name}", "manifest.json")
    gate = _latest_json(f"{settings.runs_uri}/{settings.model_name}", "gate.json")
    batch = _latest_json(f"{settings.batch_uri}/{settings.model_name}", "summary.json")
    return {"model": settings.model_name, "project": settings.project, "default": default, "versions": rows,
            "platform": settings.platform, "traffic": traffic,
            "run": run[1] if run else None, "gate": gate[1] if gate else None,
            "batch": batch[1] if batch else None, "endpoint": settings.ml_engine_endpoint}


def render(info: dict, *, lifecycle: str | None = None, batch_state: str | None = None,
           seconds: float | None = None) -> str:
    """
    The end-of-run summary ``make run`` prints.

    :param info: What :func:`collect` found (model, versions, run, gate, batch).
    :param lifecycle: Final state of the model_lifecycle run.
    :param batch_state: Final state of the batch_prediction run.
    :param seconds: How long the whole run took.
    :return: the summary text.
    """
    out = []
    head = f"== make run summary: model {info['model']} (project {info['project']})"
    out.append(head + (f", {seconds:.0f} s" if seconds else "") + " ==")
    if lifecycle or batch_state:
        out.append(f"DAG runs: model_lifecycle {lifecycle or '?'}, batch_prediction {batch_state or '?'}")
    run = info.get("run")
    if run:
        metrics = run.get("metrics", {})
        out.append(f"Latest training run {run['plan']['key']}: val_iou {metrics.get('val_iou', float('nan')):.4f}, "
                   f"val_loss {metrics.get('val_loss', float('nan')):.4f}, {metrics.get('epochs')} epochs on "
                   f"{metrics.get('train_examples')} examples (eval {metrics.get('eval_examples')})")
        out.append(f"  artifacts: {run['plan']['job_dir'].rsplit('/', 1)[0]}/")
    gate = info.get("gate")
    if gate:
        if gate.get("evaluation"):
            out.append(f"Evaluation: {gate['evaluation']}")
        verdict = "PROMOTED" if gate["promote"] else "NOT PROMOTED"
        out.append(f"Gate ({gate['policy']}, margin {gate.get('margin', 0.0):.4f}): {verdict} - {gate['reason']}")
    out.append(f"Default version: {info['default'] or '(none)'}")
    for endpoint, shares in (info.get("traffic") or {}).items():
        served = ", ".join(f"{version} {share}%" for version, share in shares.items()) or "nothing deployed"
        out.append(f"Endpoint {endpoint}: {served}")
    out.append(f"Versions ({len(info['versions'])}):")
    for row in info["versions"]:
        metric = f"{row[config.METRIC]:.4f}" if row[config.METRIC] is not None else "  -   "
        mark = "  <- default" if row["default"] else ""
        out.append(f"  {row['version']:<32} {row['state']:<8} {row['variant']:<10} val_iou {metric}{mark}")
    batch = info.get("batch")
    if batch:
        out.append(f"Batch job {batch['job_id']} on {batch['version']} ({batch['variant']}): "
                   f"{batch['prediction_count']} predictions, {batch['error_count']} errors "
                   f"(rate {batch['error_rate']:.3f}, max {batch['max_error_rate']})")
        for error, count in batch.get("error_types", {}).items():
            out.append(f"  {count:>5} x {error}")
        out.append(f"  outputs: {batch['output_path']}/ ({len(batch['result_files'])} results file(s), "
                   f"{len(batch['errors_stats_files'])} errors_stats file(s), summary.json)")
    else:
        out.append("Batch: no batch prediction summary found")
    if info.get("platform") == "vertex":
        out.append("Vertex AI: the local surface at us-central1-aiplatform.googleapis.com through the route "
                   "(docs/vertex-ai.md); on Google Cloud, the console's Vertex AI pages")
    else:
        out.append(f"ml/v1 service: {info['endpoint']}  (pages at {info['endpoint']}ui: `make services` prints a "
                   "link that logs a browser in)")
    return "\n".join(out)


def _print_default(settings: config.Settings) -> int:
    if settings.platform == "vertex":
        with contextlib.suppress(Exception):  # no model yet (or no service): no default
            print(_vertex_versions(settings)[1] or "")
        return 0
    try:
        model = _ml_api(settings).projects().models().get(
            name=f"projects/{settings.project}/models/{settings.model_name}").execute()
    except Exception:  # no model yet (or no service): no default
        return 0
    print(short_name((model.get("defaultVersion") or {}).get("name", "")))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lifecycle", help="final state of the model_lifecycle run")
    parser.add_argument("--batch", help="final state of the batch_prediction run")
    parser.add_argument("--seconds", type=float, help="wall time so far")
    parser.add_argument("--json", action="store_true", help="print the collected data as JSON")
    parser.add_argument("--default", action="store_true",
                        help="print only the model's default version (nothing when it has none)")
    args = parser.parse_args(argv)
    if args.default:
        return _print_default(config.load())
    try:
        info = collect(config.load())
    except Exception as error:  # the summary must never hide the run's own result
        print(f"(summary unavailable: {error})", file=sys.stderr)
        return 1
    print(json.dumps(info, indent=2, default=str) if args.json
          else render(info, lifecycle=args.lifecycle, batch_state=args.batch, seconds=args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
