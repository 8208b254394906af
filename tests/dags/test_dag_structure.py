"""The shape of each DAG: tasks, order, branches, trigger rules, mapping, schedules, params, Assets."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def dags(tmp_path_factory) -> dict:
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    return bag.dags


def _downstream(dag, task_id: str) -> set[str]:
    return set(dag.get_task(task_id).downstream_task_ids)


def test_model_lifecycle_order(dags):
    dag = dags["model_lifecycle"]
    chain = ["plan", "choose_data", "prepare_data", "package_trainer", "train_job", "train", "export_variants",
             "upload", "create_model", "create_version", "smoke_test", "evaluate", "gate"]
    for upstream, downstream in itertools.pairwise(chain):
        assert downstream in _downstream(dag, upstream), f"{upstream} >> {downstream} missing"
    assert _downstream(dag, "gate") == {"set_default", "not_promoted"}
    assert "record_promotion" in _downstream(dag, "set_default")
    assert _downstream(dag, "record_promotion") == {"retention"}
    assert _downstream(dag, "not_promoted") == {"retention"}
    assert _downstream(dag, "retention") == {"delete_version"}


def test_model_lifecycle_trigger_rules_and_mapping(dags):
    dag = dags["model_lifecycle"]
    assert dag.get_task("package_trainer").trigger_rule == "none_failed"  # skipped itself when in_task
    choose = dag.get_task("choose_data")  # a scheduled run with no new data skips everything after it
    assert type(choose).__name__ == "_ShortCircuitDecoratedOperator" and choose.ignore_downstream_trigger_rules
    assert dag.get_task("train_job").trigger_rule == "all_success"  # skipped with package_trainer (in_task)
    assert dag.get_task("train").trigger_rule == "none_failed"  # runs after the job, or alone when in_task
    assert dag.get_task("retention").trigger_rule == "none_failed"  # runs after either gate outcome
    assert dag.get_task("record_promotion").trigger_rule == "all_success"  # only after a real promotion
    for mapped in ("create_version", "smoke_test"):
        assert dag.get_task(mapped).is_mapped, f"{mapped} should map over the variants"
    assert type(dag.get_task("gate")).__name__ == "_BranchPythonDecoratedOperator"


def test_model_lifecycle_schedule_params_and_asset(dags):
    from include import config

    dag = dags["model_lifecycle"]
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"  # weekly, and when new data arrives
    assert dag.timetable.timetable.expression == "0 0 * * 0" and config.load().retrain_schedule == "@weekly"
    assert [a.uri for a in dag.timetable.asset_condition.objects] == [config.load().data_asset_uri()]
    params = dag.params.dump()
    assert {"model_name", "epochs", "variants", "serving_variant", "promotion_policy", "min_metric",
            "training_backend", "gate_margin", "data_period"} <= set(params)
    assert params["data_period"] == "latest" and params["gate_margin"] == 0.0
    assert params["training_backend"] == "ml_engine"
    assert dag.params.get_param("training_backend").schema["enum"] == ["ml_engine", "in_task"]
    assert dag.params.get_param("promotion_policy").schema["enum"] == list(config.PROMOTION_POLICIES)
    assert dag.params.get_param("serving_variant").schema["enum"] == list(config.VARIANTS)
    outlets = dag.get_task("record_promotion").outlets
    assert [a.uri for a in outlets] == [config.load().promotion_asset_uri()]
    assert dag.max_active_runs == 1


def test_batch_prediction_runs_daily_and_on_promotion(dags):
    from include import config

    dag = dags["batch_prediction"]
    assert type(dag.timetable).__name__ == "AssetOrTimeSchedule"
    assert dag.timetable.timetable.expression == "0 0 * * *"  # @daily
    assert [a.uri for a in dag.timetable.asset_condition.objects] == [config.load().promotion_asset_uri()]
    assert [t.task_id for t in dag.topological_sort()] == ["resolve_target", "prepare_inputs", "batch_predict",
                                                             "summarize"]
    job = dag.get_task("batch_predict")
    assert type(job).__name__ == "MLEngineStartBatchPredictionJobOperator"
    assert job.max_error_rate is None  # judged by summarize, after the summary is written
    assert "max_error_rate" in dag.params


def test_data_arrival_writes_weekly_and_marks_the_data_asset(dags):
    from include import config

    dag = dags["data_arrival"]
    assert dag.timetable.expression == "0 0 * * 0"  # @weekly, the retrain's schedule
    assert [a.uri for a in dag.get_task("write_period").outlets] == [config.load().data_asset_uri()]
    assert {"period", "data_uri", "num_examples"} <= set(dag.params.dump())


def test_model_maintenance_is_manual_with_three_actions(dags):
    dag = dags["model_maintenance"]
    assert dag.schedule is None
    assert dag.params.get_param("action").schema["enum"] == ["rollback", "set_default", "delete_older_than"]
    assert _downstream(dag, "choose_action") == {"choose_default", "choose_old_versions"}
    assert "set_default" in _downstream(dag, "choose_default")
    assert dag.get_task("delete_version").is_mapped
    assert [a.uri for a in dag.get_task("record_default_change").outlets]


def test_long_waits_defer_with_the_configured_polls_and_timeouts(dags):
    from include import config

    lifecycle, batch = dags["model_lifecycle"], dags["batch_prediction"]
    waits = {"train_job": (lifecycle.get_task("train_job"), config.TRAINING_POLL_SECONDS, config.TRAINING_TIMEOUT),
             "batch_predict": (batch.get_task("batch_predict"), config.BATCH_POLL_SECONDS, config.BATCH_TIMEOUT)}
    for name, (task, poll, timeout) in waits.items():
        assert (task.deferrable, task.poll_interval, task.wait_timeout) == (True, poll, timeout.total_seconds()), name
    version = lifecycle.get_task("create_version").partial_kwargs
    assert (version["deferrable"], version["poll_interval"]) == (True, config.VERSION_POLL_SECONDS)
    for dag in (lifecycle, dags["model_maintenance"]):  # one way to delete versions: the plugin's operator
        assert type(dag.get_task("delete_version")).__name__ == "MappedOperator"


def test_one_definition_of_defaults_the_id_rule_and_the_promotion_asset(dags):
    from include import config, dag_defaults

    uris = set()
    for dag in dags.values():
        assert dag.default_args == dag_defaults.default_args()
        if dag.dag_id != "data_arrival":  # writes data, names no model
            assert dag.params.get_param("model_name").schema["pattern"] == config.ID_PATTERN
        uris |= {a.uri for task in dag.tasks for a in task.outlets}
    uris |= {a.uri for name in ("batch_prediction", "model_lifecycle")
             for a in dags[name].timetable.asset_condition.objects}
    assert uris == {config.load().promotion_asset_uri(), config.load().data_asset_uri()}


def test_every_task_has_retries_and_the_ml_tasks_share_the_connection(dags):
    from include import config

    for dag in dags.values():
        for task in dag.tasks:
            assert task.retries >= 1, f"{dag.dag_id}.{task.task_id}"
            if hasattr(task, "gcp_conn_id") or "gcp_conn_id" in getattr(task, "partial_kwargs", {}):
                conn = getattr(task, "gcp_conn_id", None) or task.partial_kwargs["gcp_conn_id"]
                assert conn == config.load().gcp_conn_id


def _task_functions(tree: ast.AST) -> list[ast.FunctionDef]:
    """Functions decorated with ``@task`` or ``@task.<kind>(...)``."""
    def is_task(decorator: ast.expr) -> bool:
        target = decorator.func if isinstance(decorator, ast.Call) else decorator
        while isinstance(target, ast.Attribute):
            target = target.value
        return isinstance(target, ast.Name) and target.id == "task"

    return [node for node in ast.walk(tree)
            if isinstance(node, ast.FunctionDef) and any(is_task(d) for d in node.decorator_list)]


def test_task_bodies_stay_short():
    """Decisions live in include/lifecycle: a task only fetches, calls one decision, acts and logs (<= 25 lines)."""
    long = {}
    for path in (ROOT / "dags").glob("*.py"):
        functions = _task_functions(ast.parse(path.read_text()))
        assert functions or path.name == "__init__.py"
        long |= {f"{path.name}:{f.name}": f.end_lineno - f.lineno + 1 for f in functions
                 if f.end_lineno - f.lineno + 1 > 25}
    assert long == {}
