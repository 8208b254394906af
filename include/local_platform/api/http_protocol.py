"""uvicorn's HTTP protocol with a deadline on a request's headers (slow-header connections are closed).

uvicorn times out idle keep-alive connections, but not one that sends part of a
request's headers and then nothing: such connections were held open forever, so a
client could hold hundreds of them. Here a connection must finish each request's
headers within ``ML_ENGINE_HEADER_TIMEOUT_S`` seconds (default 20) of its first byte (or,
for a new connection, of connecting); then it is closed.
"""

from __future__ import annotations

import asyncio
import logging
import os

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("local_platform")
HEADER_TIMEOUT_S = float(os.environ.get("ML_ENGINE_HEADER_TIMEOUT_S", "20"))


class HeaderDeadlineProtocol(HttpToolsProtocol):
    """HttpToolsProtocol plus the header deadline."""

    _header_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        self._arm()
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        if self._header_deadline is None:
            self._header_deadline = self.loop.call_later(HEADER_TIMEOUT_S, self._too_slow)

    def _disarm(self) -> None:
        if self._header_deadline is not None:
            self._header_deadline.cancel()
            self._header_deadline = None

    def _too_slow(self) -> None:
        self._header_deadline = None
        if not self.transport.is_closing():
            log.info("closed a connection from %s: no complete request headers within %.0f s",
                     ":".join(map(str, self.client)) if self.client else "?", HEADER_TIMEOUT_S)
            self.transport.close()
