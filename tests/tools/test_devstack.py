"""tools.devstack's public API as `make services` / `make airflow` / `make stop` use it, with real processes."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tools import airflow_stack, devstack


def test_start_and_stop_services_with_pid_files(tmp_path, capsys):
    state = tmp_path / "state"
    gcs_port, ml_port = devstack.free_port(), devstack.free_port()
    devstack.start_services(state, gcs_port, ml_port)
    try:
        pids = {name: devstack.running_pid(devstack.pid_file(state, name))
                for name in ("gcs-emulator", "ml-engine-local")}
        assert all(pids.values()), pids
        devstack.start_services(state, gcs_port, ml_port)  # running: kept, not started twice
        assert "already running" in capsys.readouterr().out
        assert {name: devstack.running_pid(devstack.pid_file(state, name)) for name in pids} == pids
    finally:
        devstack.stop_services(state)
    assert not list((state / "run").glob("*.pid"))
    for pid in pids.values():
        status = Path(f"/proc/{pid}/status")
        assert not status.exists() or "zombie" in status.read_text().lower()


def test_stale_pid_file_is_not_ours(tmp_path):
    path = tmp_path / "run" / "x.pid"
    path.parent.mkdir()
    path.write_text(str(os.getpid()))
    assert devstack.running_pid(path) == os.getpid()  # written after this process started: ours
    os.utime(path, (1_000_000, 1_000_000))  # written long before this process started: a reused pid
    assert devstack.running_pid(path) is None
    path.write_text("not a pid")
    assert devstack.running_pid(path) is None
    devstack.stop_recorded([path], timeout=1)  # nothing of ours runs: nothing is signalled, the file goes
    assert not path.exists()


def test_stack_connection_from_a_mapping_carries_the_stacks_token(tmp_path, monkeypatch):
    monkeypatch.setenv("ML_ENGINE_TOKEN", "the-test-sessions-token")
    stack = airflow_stack.AirflowStack(state_dir=tmp_path, gcs_port=1234, ml_port=5678)
    env = stack._connection_env({"ML_ENGINE_TOKEN": "stack-token", "ML_ENGINE_ENDPOINT": "http://127.0.0.1:5678/",
                                 "STORAGE_EMULATOR_HOST": "http://127.0.0.1:1234", "ML_BUCKET": "b"})
    connection = json.loads(env["AIRFLOW_CONN_GOOGLE_CLOUD_DEFAULT"])
    assert connection["extra"]["ml_engine_token"] == "stack-token"
    assert connection["extra"]["ml_engine_endpoint"] == "http://127.0.0.1:5678/"
    assert env["STORAGE_EMULATOR_HOST"] == "http://127.0.0.1:1234"
