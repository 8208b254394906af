"""include/lifecycle decisions that read ml/v1 or GCS, against the real local service and the GCS emulator.

Each takes the hook as an argument (like promotion.py), so the DAG task that calls it
only fetches, decides with one call, acts and logs. The last test runs a whole DAG
with dag.test(): a request it cannot meet fails the task at once, without retries.
"""

from __future__ import annotations

import importlib.util
import uuid
from pathlib import Path

import pendulum
import pytest

from include import config
from include.lifecycle import batch_target, gate, maintenance, naming, planning, retention, smoke, storage
from include.lifecycle.errors import CheckFailed, InvalidRequest, LifecycleError

ROOT = Path(__file__).resolve().parents[3]


def _deploy(hook, model: str, uri: str, name: str, **labels) -> dict:
    spec = {"name": name, "deploymentUri": uri, "runtimeVersion": "2.11", "labels": labels}
    return hook.create_version(model_name=model, version_spec=spec, poll_interval=0.2, timeout=120)


def test_gate_baseline_own_default_and_judge(hook, model_name, tiny_model_uri):
    assert gate.baseline(hook, model=model_name, own_versions=set()) == gate.Baseline()  # no model yet
    hook.create_model(model={"name": model_name})
    _deploy(hook, model_name, tiny_model_uri, "v1", **{config.METRIC_LABEL: "5000", "variant": "b64"})
    # ml/v1 made v1 the default; for the run that deployed it, that is no baseline.
    assert gate.baseline(hook, model=model_name, own_versions={"v1"}) == gate.Baseline(own_default="v1")
    assert gate.baseline(hook, model=model_name, own_versions={"v2"}) == gate.Baseline(version="v1", metric=0.5,
                                                                                    variant="b64")
    better = gate.judge(hook, model=model_name, own_versions={"v2"}, candidate=0.6, policy="better", min_metric=0)
    worse = gate.judge(hook, model=model_name, own_versions={"v2"}, candidate=0.4, policy="better", min_metric=0)
    own = gate.judge(hook, model=model_name, own_versions={"v1"}, candidate=0.1, policy="better", min_metric=0)
    assert (better.promote, better.current_version, worse.promote, own.promote) == (True, "v1", False, True)


def test_next_default_set_default_rollback_and_impossible_requests(hook, model_name, tiny_model_uri):
    with pytest.raises(InvalidRequest, match="does not exist"):
        maintenance.next_default(hook, model=model_name, action="rollback")
    hook.create_model(model={"name": model_name})
    _deploy(hook, model_name, tiny_model_uri, "v1", variant="b64")
    with pytest.raises(InvalidRequest, match="No version to roll back to from v1"):
        maintenance.next_default(hook, model=model_name, action="rollback")
    _deploy(hook, model_name, tiny_model_uri, "v2", variant="b64")
    with pytest.raises(InvalidRequest, match="v9 is not a READY version"):
        maintenance.next_default(hook, model=model_name, action="set_default", version="v9")
    assert maintenance.next_default(hook, model=model_name, action="set_default", version=" v2 ") == {
        "version": "v2", "previous": "v1", "action": "set_default"}
    hook.set_default_version(model_name=model_name, version_name="v2")
    assert maintenance.next_default(hook, model=model_name, action="rollback")["version"] == "v1"


def test_branch_for_routes_and_refuses_a_set_default_without_version():
    assert maintenance.branch_for("rollback", "") == "choose_default"
    assert maintenance.branch_for("delete_older_than", "") == "choose_old_versions"
    with pytest.raises(InvalidRequest, match="needs a version"):
        maintenance.branch_for("set_default", "  ")


def test_batch_target_default_named_and_missing(hook, model_name, tiny_model_uri):
    where = {"job_id": "job_1", "prefix": "gs://b/batch/m/job_1", "default_variant": "b64"}
    with pytest.raises(batch_target.NothingToPredict, match="does not exist"):
        batch_target.resolve(hook, model=model_name, wanted=None, **where)
    hook.create_model(model={"name": model_name})
    with pytest.raises(batch_target.NothingToPredict, match="has no default version"):
        batch_target.resolve(hook, model=model_name, wanted="", **where)
    _deploy(hook, model_name, tiny_model_uri, "v1", variant="tfexample")
    assert batch_target.resolve(hook, model=model_name, wanted=None, **where) == {
        "model": model_name, "version": "v1", "variant": "tfexample", "job_id": "job_1",
        "inputs_uri": "gs://b/batch/m/job_1/inputs", "output_path": "gs://b/batch/m/job_1/outputs"}
    with pytest.raises(InvalidRequest, match=r"v7 of .* is not READY"):
        batch_target.resolve(hook, model=model_name, wanted="v7", **where)


def test_retention_survey_reads_default_versions_and_pins(hook, model_name, tiny_model_uri, bucket, gcs_prefix):
    hook.create_model(model={"name": model_name})
    _deploy(hook, model_name, tiny_model_uri, "v1")
    _deploy(hook, model_name, tiny_model_uri, "v2")
    batch_uri = f"gs://{bucket.name}/{gcs_prefix}/batch"
    storage.write_json(f"{batch_uri}/{model_name}/job_x/target.json", {"model": model_name, "version": "v2"})
    found = retention.survey(hook, model=model_name, batch_uri=batch_uri, now=pendulum.now("UTC"),
                             pin_max_age=config.load().batch_pin_age)
    assert (sorted(naming.short_name(v["name"]) for v in found.versions), found.default, found.pinned) == (
        ["v1", "v2"], "v1", {"v2"})


def test_smoke_run_predicts_in_chunks_and_fails_with_its_own_error(hook, model_name, tiny_model_uri):
    hook.create_model(model={"name": model_name})
    _deploy(hook, model_name, tiny_model_uri, "v1")
    instances = [{"x": [float(i), 1.0], "key": f"k{i}"} for i in range(5)]
    with pytest.raises(smoke.SmokeTestError, match="prediction 0 has no 'heatmap'") as raised:
        smoke.run(hook, model=model_name, version="v1", instances=instances, request_size=2)
    assert isinstance(raised.value, LifecycleError) and not isinstance(raised.value, AssertionError)
    assert isinstance(raised.value, CheckFailed)  # a wrong answer is not transient: no retries


def test_first_choice_keeps_the_first_and_usage_counts(bucket, gcs_prefix):
    uri = f"gs://{bucket.name}/{gcs_prefix}/choice.json"
    assert storage.first_choice(uri, lambda: {"version": "v1"}) == {"version": "v1"}
    assert storage.first_choice(uri, lambda: {"version": "v2"}) == {"version": "v1"}  # a re-run repeats it
    with pytest.raises(InvalidRequest):  # a failed choice writes nothing
        storage.first_choice(f"{uri}.2", lambda: (_ for _ in ()).throw(InvalidRequest("no")))
    assert not storage.exists(f"{uri}.2")
    storage.write_json(f"gs://{bucket.name}/{gcs_prefix}/dir/a.json", {"a": 1})
    assert storage.usage(f"gs://{bucket.name}/{gcs_prefix}/dir") == (1, len(storage.read_text(
        f"gs://{bucket.name}/{gcs_prefix}/dir/a.json")))
    assert storage.usage(f"gs://{bucket.name}/{gcs_prefix}/di") == (0, 0)  # a prefix is a whole path segment


def test_run_plan_names_and_refusals():
    params = {"model_name": "heatmap", "variants": ["b64", "tfexample", "b64"], "serving_variant": "b64",
              "data_uri": "gs://b/data/"}
    plan = planning.run_plan(params, key="20260101T000000", runs_uri="gs://b/runs")
    assert plan["variants"] == ["b64", "tfexample"] and plan["serving_version"] == "v20260101T000000_b64"
    assert plan["data_root"] == "gs://b/data" and plan["gate_uri"] == "gs://b/runs/heatmap/20260101T000000/gate.json"
    with pytest.raises(InvalidRequest, match="serving_variant 'url'"):
        planning.run_plan({**params, "serving_variant": "url"}, key="k", runs_uri="gs://b/runs")
    with pytest.raises(InvalidRequest, match="non-empty subset"):
        planning.run_plan({**params, "variants": ["png"]}, key="k", runs_uri="gs://b/runs")


def test_ids_over_128_characters_follow_the_plugin_rule():
    from ml_engine.names import normalize_id

    long_a, long_b = "x" * 200 + "a", "x" * 200 + "b"
    assert naming.ml_id(long_a) == normalize_id(long_a, prefix="v")
    assert len(naming.ml_id(long_a)) == 128 and naming.ml_id(long_a) != naming.ml_id(long_b)  # no collision
    assert naming.job_id("batch_prediction", "manual__" + "9" * 200) == normalize_id(
        "batch_prediction_manual__" + "9" * 200, prefix="job")


def test_an_impossible_request_fails_the_task_without_retries(ml_conn, airflow_db, monkeypatch):
    from airflow import settings

    monkeypatch.setattr(settings, "DAGS_FOLDER", str(ROOT / "dags"))
    spec = importlib.util.spec_from_file_location("model_maintenance", ROOT / "dags" / "model_maintenance.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dag = module.model_maintenance()
    assert dag.get_task("choose_default").retries >= 1  # retries exist, and are not used
    missing = f"missing_{uuid.uuid4().hex[:8]}"
    run = dag.test(logical_date=pendulum.now("UTC"), run_conf={"action": "rollback", "model_name": missing})
    [ti] = [ti for ti in run.get_task_instances() if ti.task_id == "choose_default"]
    assert (str(run.state), str(ti.state), ti.try_number) == ("failed", "failed", 1)


def test_an_automatic_run_finds_the_period_already_judged(hook, model_name, tiny_model_uri):
    from include.lifecycle import datafeed
    from include.lifecycle.periods import PeriodData

    p1, p2 = PeriodData("2026-01-05", "gs://b/d/2026-01-05"), PeriodData("2026-01-12", "gs://b/d/2026-01-12")
    assert datafeed.judged_on(hook, model=model_name, chosen=p1) is None  # no model yet
    hook.create_model(model={"name": model_name})
    _deploy(hook, model_name, tiny_model_uri, "v1", data_period="2026-01-05", eval_period="2026-01-05")
    _deploy(hook, model_name, tiny_model_uri, "v2", data_period="2026-01-12")  # its run stopped before evaluate
    assert datafeed.judged_on(hook, model=model_name, chosen=p1) == "v1"
    assert datafeed.judged_on(hook, model=model_name, chosen=p2) is None
    assert datafeed.judged_on(hook, model=model_name, chosen=PeriodData(None, "gs://b/flat")) is None
