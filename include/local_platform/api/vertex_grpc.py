"""Vertex AI's gRPC surface (google.cloud.aiplatform.v1 and google.longrunning): server, token, status codes.

Every RPC is a plain function ``handler(ctx, request) -> response`` registered by its full
method name with the request and response classes generated from Google's protos, so
Google's own clients (the GAPIC clients, the aiplatform SDK, the Airflow provider's
Vertex AI hooks and operators) talk to it unchanged. The server speaks TLS only (Google's
clients always do; see ``vertex_tls``), checks the bearer token on every call, and answers
a refused request with the gRPC status code Google uses for it.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import grpc

from include.local_platform.api.faults import FaultInjector
from include.local_platform.api.security import INVALID_CREDENTIALS, MISSING_CREDENTIALS, Guard
from include.local_platform.api.vertex_tls import TlsFiles
from include.local_platform.context import Context
from include.local_platform.errors import ApiError

log = logging.getLogger("local_platform")
#: google.rpc.Code names as ApiError.status carries them -> gRPC status codes.
_CODES = {code.name: code for code in grpc.StatusCode}
MAX_MESSAGE_BYTES = 16 * 1024 * 1024
#: The fault switch's HTTP statuses as the gRPC codes Google's front end answers with.
_FAULT_CODES = {429: grpc.StatusCode.RESOURCE_EXHAUSTED, 500: grpc.StatusCode.INTERNAL,
                503: grpc.StatusCode.UNAVAILABLE, 504: grpc.StatusCode.DEADLINE_EXCEEDED,
                400: grpc.StatusCode.INVALID_ARGUMENT, 404: grpc.StatusCode.NOT_FOUND}


@dataclass(frozen=True)
class Rpc:
    """One method: its request and response classes and the function answering it."""

    request: Any
    response: Any
    handler: Callable[[Context, Any], Any]


def _fault_path(method: str, request) -> str:
    """``/<service>/<Method>/<the resource it names>``: fault rules may target one endpoint or model."""
    for field in ("endpoint", "name", "parent"):
        value = getattr(request, field, None)
        if isinstance(value, str) and value:
            return f"/{method}/{value}"
    return f"/{method}"


def _answering(ctx: Context, method: str, rpc: Rpc, faults: FaultInjector | None) -> Callable:
    def answer(request, context: grpc.ServicerContext):
        started = time.perf_counter()
        if faults is not None and (status := faults.take("POST", _fault_path(method, request))) is not None:
            log.info("gRPC %s injected fault %s", method, status)
            context.abort(_FAULT_CODES.get(status, grpc.StatusCode.UNKNOWN), f"Injected fault ({status}) for {method}.")
        code = grpc.StatusCode.OK
        try:
            return rpc.handler(ctx, request)
        except ApiError as error:
            code = _CODES.get(error.status, grpc.StatusCode.UNKNOWN)
            context.abort(code, error.message)
        except Exception as error:  # a bug of ours: still a proper status, and logged with its trace
            code = grpc.StatusCode.INTERNAL
            log.exception("%s failed", method)
            context.abort(code, f"Internal error: {error.__class__.__name__}: {error}")
        finally:
            log.info("gRPC %s %s %.1fms", method, code.name, (time.perf_counter() - started) * 1000)

    return answer


class TokenCheck(grpc.ServerInterceptor):
    """The service's bearer token on every call (``authorization`` metadata), with Google's UNAUTHENTICATED texts."""

    def __init__(self, guard: Guard):
        self._guard = guard

        def refuse(text: str):
            return grpc.unary_unary_rpc_method_handler(
                lambda request, context: context.abort(grpc.StatusCode.UNAUTHENTICATED, text))

        self._missing, self._invalid = refuse(MISSING_CREDENTIALS), refuse(INVALID_CREDENTIALS)

    def intercept_service(self, continuation, handler_call_details):
        if self._guard.token is None:
            return continuation(handler_call_details)
        given = dict(handler_call_details.invocation_metadata).get("authorization")
        if not given:
            return self._missing
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self._guard.token.encode()):
            return self._invalid
        return continuation(handler_call_details)


def serve(ctx: Context, guard: Guard, *, host: str, port: int, tls: TlsFiles, services: dict[str, dict[str, Rpc]],
          faults: FaultInjector | None = None) -> tuple[grpc.Server, int]:
    """Start the gRPC server on ``host:port`` (0: a free port) with TLS; (server, the port it listens on).

    :param faults: the fault switch (``/_local/faults``): a rule whose ``path_regex`` matches
        ``/google.cloud.aiplatform.v1.<Service>/<Method>/<resource>`` fails the call with the matching
        gRPC code (the resource: the request's ``endpoint``, ``name`` or ``parent``).
    """
    server = grpc.server(ThreadPoolExecutor(max_workers=16, thread_name_prefix="vertex"),
                         interceptors=[TokenCheck(guard)],
                         options=[("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                                  ("grpc.max_send_message_length", MAX_MESSAGE_BYTES)])
    for service, methods in services.items():
        handlers = {
            name: grpc.unary_unary_rpc_method_handler(
                _answering(ctx, f"{service}/{name}", rpc, faults), request_deserializer=rpc.request.FromString,
                response_serializer=rpc.response.SerializeToString)
            for name, rpc in methods.items()}
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(service, handlers)])
    bound = server.add_secure_port(f"{host}:{port}", grpc.ssl_server_credentials([tls.server_pair()]))
    server.start()
    log.info("Vertex AI surface (gRPC, TLS) on %s:%d: %d services", host, bound, len(services))
    return server, bound
