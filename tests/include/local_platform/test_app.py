"""The service's lifespan: crash recovery runs before the first request, a graceful stop releases attempts."""

from __future__ import annotations

from fastapi.testclient import TestClient

from include.local_platform.app import create_app

PROJECT = "projects/p"


def test_lifespan_recovers_before_serving_and_releases_attempts_at_stop(tmp_path):
    app = create_app(tmp_path)
    ctx = app.state.ctx
    dangling = f"{PROJECT}/operations/delete-1"
    ctx.store.insert(dangling, "operation", PROJECT,
                     {"name": dangling, "done": False, "metadata": {"operationType": "DELETE_VERSION"}})
    job = f"{PROJECT}/jobs/j1"
    ctx.store.insert(job, "job", PROJECT, {"name": job, "_name": job, "jobId": "j1", "state": "FAILED", "_attempts": 1})
    version, deploying = f"{PROJECT}/models/m/versions/v1", f"{PROJECT}/operations/create-v1"
    ctx.store.insert(version, "version", f"{PROJECT}/models/m",
                     {"name": version, "state": "FAILED", "_attempts": 2, "_operation": deploying})

    with TestClient(app, base_url="http://127.0.0.1") as client:
        assert client.get("/healthz").json() == {"status": "ok", "replica": ctx.replica_id}
        assert ctx.store.get(dangling)["done"] is True  # the crash's leftover was finished at startup
        ctx.store.update(job, lambda doc: doc.update(state="RUNNING"))  # in flight here when the stop comes
        assert ctx.work.take("batch", job)
        ctx.store.update(version, lambda doc: doc.update(state="CREATING"))  # its lease is its operation's name
        assert ctx.work.take("deployment", deploying)
        assert not ctx.stopping.is_set()
    assert ctx.stopping.is_set()  # workers were told to stop
    reopened = create_app(tmp_path).state.ctx
    assert reopened.store.get(job)["_attempts"] == 0  # a graceful stop costs no attempt
    assert reopened.store.get(version)["_attempts"] == 1
