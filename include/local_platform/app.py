"""The service's wiring: one context, the API routes, the middleware order, the workers' start and stop.

Nothing is decided here. A request goes: ``RequestLog`` -> ``CallerCheck``
(token, Host, Origin) -> ``PredictRoute`` (``:predict`` fast path) -> FastAPI's
routes (``api.ml_v1_http``, ``api.ui_login``, ``api.pages``, ``api.local_routes``, ``api.faults``)
-> resource rules (``resources``) -> the store (``state``); work the rules record
goes to the workers (``workers``), which serve with ``serving``.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from include.local_platform.api import faults as fault_switch
from include.local_platform.api import local_routes, ml_v1_http, pages, ui_login, vertex_grpc, vertex_tls
from include.local_platform.api.faults import FaultInjector
from include.local_platform.api.ml_v1_http import PredictRoute
from include.local_platform.api.request_log import RequestLog
from include.local_platform.api.security import CallerCheck, Guard
from include.local_platform.context import Context
from include.local_platform.serving.batching import BatchingOptions
from include.local_platform.state import crashpoints
from include.local_platform.state.database import describe
from include.local_platform.workers import supervisor

log = logging.getLogger("local_platform")


def create_app(state_dir: Path, *, guard: Guard | None = None, enable_faults: bool = False,
               batch_engine: str = "local", beam_options: str = "", vertex_port: int | None = None,
               vertex_host: str = "127.0.0.1", batching: BatchingOptions | None = None, database_url: str = "",
               artifact_uri: str = "") -> FastAPI:
    """
    The local service as an ASGI app; work interrupted by a crash resumes when it starts.

    :param state_dir: The service's store, deployed models and job work.
    :param guard: The token and allowed hosts; default: anonymous, loopback only.
    :param enable_faults: Expose the fault switch (``/_local/faults``) for tests.
    :param batch_engine: ``local`` runs batch jobs in this process, ``beam`` as Apache Beam pipelines.
    :param beam_options: Pipeline options for the beam engine (runner, project, region, temp_location...).
    :param vertex_port: Serve Vertex AI's gRPC API (TLS) on this port too (0: a free one; None: not at all).
    :param vertex_host: The address the Vertex AI surface binds.
    :param batching: How concurrent online predict calls are joined (default: from the environment).
    :param database_url: The store's database: ``sqlite:///PATH`` (default: in ``state_dir``) or
        ``postgresql://...`` (several replicas may share it; docs/replicas.md).
    :param artifact_uri: gs:// prefix deployed models are copied to, so every replica loads them from there
        (required with PostgreSQL; "": models stay on this machine).
    :return: the FastAPI app (``app.state.vertex_port``: where the Vertex AI surface listens, once started).
    """
    if database_url.startswith("postgres") and not artifact_uri:
        raise ValueError("a PostgreSQL database is shared by replicas: give --artifact-uri (gs://BUCKET/PREFIX) "
                         "too, where deployed models are kept for all of them")
    ctx = Context(state_dir=state_dir, batch_engine=batch_engine, beam_options=beam_options,
                  batching=batching or BatchingOptions.from_environment(), database_url=database_url,
                  artifact_uri=artifact_uri.rstrip("/"))
    guard = guard or Guard()
    faults = FaultInjector()
    supervisor.register(ctx)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        """Resume interrupted work before serving; on a graceful stop release attempts (not a crash)."""
        guard.announce()
        log.info("replica %s, database %s%s", ctx.replica_id, describe(ctx.database_url),
                 f", artifact store {ctx.artifact_uri}" if ctx.artifact_uri else "")
        ctx.event_loop = asyncio.get_running_loop()
        supervisor.start(ctx)
        vertex = None
        if vertex_port is not None:
            tls = vertex_tls.ensure(state_dir / "vertex_tls")
            vertex, app.state.vertex_port = vertex_grpc.serve(ctx, guard, host=vertex_host, port=vertex_port,
                                                              tls=tls, services=vertex_services(), faults=faults)
        yield
        if vertex is not None:
            vertex.stop(grace=2)
        supervisor.stop(ctx)

    app = FastAPI(title="Local ml/v1 service", docs_url=None, redoc_url=None, openapi_url=None, lifespan=lifespan)
    app.state.ctx = ctx
    app.state.guard = guard
    if enable_faults and os.environ.get(crashpoints.ENV_RULES):
        ctx.crash.arm_from(os.environ[crashpoints.ENV_RULES])  # armed before anything resumes

    # Each one added wraps the ones before: the request log runs first, then the caller check.
    app.add_middleware(PredictRoute, endpoint=ml_v1_http.predict_endpoint(ctx, faults))
    app.add_middleware(CallerCheck, guard=guard)
    app.add_middleware(RequestLog)

    local_routes.add_routes(app, ctx)
    if enable_faults:
        fault_switch.add_routes(app, ctx, faults)
    ml_v1_http.add_routes(app, ctx, faults)
    ui_login.add_routes(app, guard)  # before the pages: /ui/{path} would take /ui/login
    pages.add_routes(app, ctx, guard)
    return app


def vertex_services() -> dict:
    """Every Vertex AI service the local surface answers (imported only when it is served)."""
    from include.local_platform.api import vertex_job_service, vertex_model_service, vertex_prediction_service

    return {**vertex_model_service.SERVICES, **vertex_prediction_service.SERVICES, **vertex_job_service.SERVICES}
