"""The trainer's command line and job variables, as hosted ml/v1 documented them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from include.local_platform.workers import trainer_process


@pytest.mark.parametrize(("runtime", "task"), [("2.11", "chief"), ("2.1", "chief"), ("10.0", "chief"),
                                               ("2.0", "master"), ("1.15", "master"), (None, "master")])
def test_tf_config_names_the_primary_task_by_runtime_version(runtime, task):
    """Google: the primary VM's task is `chief` from runtime 2.1 on, `master` before; useChiefInTfConfig only
    concerns custom containers (not run by this service)."""
    training_input = {"pythonModule": "t.task", "useChiefInTfConfig": False,
                      **({"runtimeVersion": runtime} if runtime else {})}
    variables = trainer_process.job_variables({"jobId": "j", "trainingInput": training_input}, Path("/site"))
    tf_config = json.loads(variables["TF_CONFIG"])
    assert tf_config["cluster"] == {task: ["127.0.0.1:2222"]} and tf_config["task"]["type"] == task
    assert json.loads(variables["CLOUD_ML_JOB"])["python_module"] == "t.task"


def test_job_dir_is_appended_unless_the_args_carry_it():
    assert trainer_process.argv({"pythonModule": "m", "jobDir": "gs://b/j"}, "py") == [
        "py", "-m", "m", "--job-dir", "gs://b/j"]
    assert trainer_process.argv({"pythonModule": "m", "jobDir": "gs://b/j", "args": ["--job-dir=x"]}, "py") == [
        "py", "-m", "m", "--job-dir=x"]
