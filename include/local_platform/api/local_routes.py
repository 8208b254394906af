"""What the local service adds beside ml/v1: the health check and training logs.

Hosted ml/v1 sent a trainer's output to Cloud Logging; here it is read from
``/_local/projects/P/jobs/J/logs?offset=N`` (whole lines, a next offset, the job's
state), which the Airflow operators follow while a job runs.
"""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from include.local_platform.context import Context
from include.local_platform.errors import ApiError
from include.local_platform.workers import training


def add_routes(app: FastAPI, ctx: Context) -> None:
    @app.get("/healthz")
    def _health() -> dict:
        """Liveness for load balancers: this process answers (the database is not asked; calls that need it
        answer 503 while it is away)."""
        return {"status": "ok", "replica": ctx.replica_id}

    @app.get("/_local/projects/{project}/jobs/{job}/logs")
    async def _training_log(project: str, job: str, offset: int = 0, limit: int = training.LOG_READ_LIMIT):
        """A training job's output lines from byte ``offset``."""
        try:
            return await run_in_threadpool(training.read_log, ctx, project, job, offset, limit)
        except ApiError as error:
            return JSONResponse(error.body(), status_code=error.code)
