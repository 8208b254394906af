"""The request log: every call a line, except a flood of successful predict calls, which is summed up."""

from __future__ import annotations

import asyncio
import logging

from include.local_platform.api import request_log
from include.local_platform.api.request_log import RequestLog

PREDICT = "/v1/projects/p/models/m:predict"


async def _app(scope, receive, send) -> None:
    """Answers 400 for a body of b"bad", else 200."""
    body = (await receive()).get("body", b"")
    await send({"type": "http.response.start", "status": 400 if body == b"bad" else 200, "headers": []})
    await send({"type": "http.response.body", "body": b"{}"})


async def _calls(log: RequestLog, path: str, bodies: list[bytes]) -> None:
    async def noop(_message) -> None:
        return None

    for body in bodies:
        async def receive(body=body) -> dict:
            return {"type": "http.request", "body": body, "more_body": False}

        await log({"type": "http", "method": "POST", "path": path}, receive, noop)


def test_a_flood_of_predict_calls_is_summed_up_and_failures_and_other_calls_are_logged_each(caplog, monkeypatch):
    monkeypatch.setattr(request_log, "WINDOW_S", 0.2)
    log = RequestLog(_app)

    async def main() -> None:
        await _calls(log, PREDICT, [b"ok"] * 30 + [b"bad"] * 3)
        await _calls(log, "/v1/projects/p/models", [b"ok"] * 25)
        await asyncio.sleep(0.4)  # the window closes

    with caplog.at_level(logging.INFO, logger="local_platform"):
        asyncio.run(main())
    lines = [record.getMessage() for record in caplog.records]
    assert sum(line.startswith(f"POST {PREDICT} 200 ") for line in lines) == request_log.PREDICT_LINES_PER_WINDOW
    assert sum(line.startswith(f"POST {PREDICT} 400 ") for line in lines) == 3
    assert sum(line.startswith("POST /v1/projects/p/models 200 ") for line in lines) == 25
    summary = [line for line in lines if "more calls" in line]
    assert len(summary) == 1 and summary[0].startswith(f"POST {PREDICT} 200: 10 more calls in the last"), lines
