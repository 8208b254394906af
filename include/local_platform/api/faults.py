"""The fault switch for tests (``/_local/faults``, only with ``--enable-faults``): failed calls, crashes, pauses.

``{"status": 503, "times": 2, "path_regex": ..., "method": ..., "probability": ..., "seed": ...,
"after": N}`` makes matching requests fail (after letting the first N through);
``{"crash_at": POINT, "after": N}`` kills the service (SIGKILL) at a named crash point,
``{"delay_at": POINT, "seconds": S}`` pauses there once (``state.crashpoints``); ``DELETE`` clears every rule.
"""

from __future__ import annotations

import random
import re
import threading

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from include.local_platform.api.calls import read_body
from include.local_platform.api.security import check_json_body
from include.local_platform.context import Context
from include.local_platform.errors import invalid_argument


class FaultInjector:
    """Test switch: make matching requests fail with a given status.

    A rule lets the first ``after`` matching requests through (default 0), then fails the next
    ``times`` (-1: no limit), each with ``probability`` (0..1, default 1; ``seed`` makes the draws
    repeatable); ``matched`` and ``injected`` count the requests it saw and those it answered.
    """

    def __init__(self):
        self._rules: list[dict] = []
        self._lock = threading.Lock()
        self._random = random.Random()

    def add(self, rule: dict) -> None:
        status = int(rule.get("status", 503))
        probability = float(rule.get("probability", 1.0))
        if not 0.0 <= probability <= 1.0:
            raise ValueError("probability must be between 0 and 1")
        draws = random.Random(rule["seed"]) if "seed" in rule else self._random
        with self._lock:
            self._rules.append({"status": status, "times": int(rule.get("times", 1)), "probability": probability,
                                "after": int(rule.get("after", 0)),
                                "draws": draws,
                                "method": rule.get("method", "*").upper(),
                                "path": re.compile(rule.get("path_regex", ".*")), "matched": 0, "injected": 0})

    def clear(self) -> None:
        with self._lock:
            self._rules.clear()

    def rules(self) -> list[dict]:
        with self._lock:
            return [{**{k: v for k, v in rule.items() if k not in ("path", "draws")},
                     "path_regex": rule["path"].pattern} for rule in self._rules]

    def take(self, method: str, path: str) -> int | None:
        """The status to fail this request with, or None to serve it."""
        with self._lock:
            for rule in self._rules:
                if rule["times"] != 0 and rule["method"] in ("*", method) and rule["path"].search(path):
                    rule["matched"] += 1
                    if rule["matched"] <= rule["after"]:
                        continue
                    if rule["probability"] < 1.0 and rule["draws"].random() >= rule["probability"]:
                        continue
                    if rule["times"] > 0:
                        rule["times"] -= 1
                    rule["injected"] += 1
                    return rule["status"]
        return None


def add_routes(app: FastAPI, ctx: Context, faults: FaultInjector) -> None:
    """``/_local/faults``: POST a rule, GET the rules with their counts, DELETE them all."""

    @app.post("/_local/faults")
    async def _add_fault(request: Request) -> Response:
        raw = await read_body(request.receive, 64 * 1024)
        if error := check_json_body("POST", request.headers.get("content-type"), raw):
            return JSONResponse(error.body(), status_code=error.code)
        try:
            rule = orjson.loads(raw)
            if "crash_at" in rule or "delay_at" in rule:
                ctx.crash.arm(rule.get("crash_at") or rule["delay_at"], int(rule.get("after", 0)),
                              delay_s=float(rule.get("seconds", 1)) if "delay_at" in rule else None)
            else:
                faults.add(rule)
        except (ValueError, TypeError, AttributeError, KeyError, re.error) as error:
            error = invalid_argument(f"Invalid fault rule: {error}")
            return JSONResponse(error.body(), status_code=error.code)
        return JSONResponse({})

    @app.get("/_local/faults")
    def _list_faults() -> dict:
        return {"rules": faults.rules()}

    @app.delete("/_local/faults")
    def _clear_faults() -> dict:
        faults.clear()
        ctx.crash.clear()
        return {}
