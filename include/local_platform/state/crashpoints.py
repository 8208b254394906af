"""Named crash points: the fault switch can make the service kill itself (SIGKILL) at one of them.

Only for tests of crash safety: a ``kill -9`` from outside lands at a random
place, a crash point lands exactly where a restart is hardest (halfway
through a copy, just before a commit, mid-batch, mid-upload). Nothing is
armed unless a test arms it through the fault switch (`{"crash_at": POINT,
"after": N}`) or, to crash at every start (a poison input), through the
environment: ``ML_ENGINE_CRASH_AT=POINT[:N][,POINT[:N]...]`` when faults are enabled.
``{"delay_at": POINT, "seconds": S}`` pauses there instead (once), so a test
can act at an exact moment (say, cancel a job while it is PREPARING).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from dataclasses import dataclass

log = logging.getLogger(__name__)

POINTS = (
    "deploy.copying",    # a deployment copied some artifact files, not all
    "deploy.ready",      # a deployment loaded its model; the READY/default/done transaction is not committed
    "batch.preparing",   # a job loaded its model and listed its inputs, still PREPARING
    "batch.predicting",  # a job predicted and queued N batches of its current input file
    "batch.uploading",   # a job's writer sent N blocks of result lines to the upload stream
)
ENV_RULES = "ML_ENGINE_CRASH_AT"


class UnknownPoint(ValueError):
    pass


@dataclass
class _Rule:
    after: int  # arrivals to let pass first
    delay_s: float | None = None  # None: SIGKILL; else sleep this long (once)


class CrashPoints:
    """Armed points: each acts (SIGKILL, or a pause) when reached for the (after + 1)-th time."""

    def __init__(self):
        self._armed: dict[str, _Rule] = {}
        self._lock = threading.Lock()

    def arm(self, point: str, after: int = 0, *, delay_s: float | None = None) -> None:
        if point not in POINTS:
            raise UnknownPoint(f"unknown crash point {point!r}; known: {list(POINTS)}")
        with self._lock:
            self._armed[point] = _Rule(max(0, int(after)), None if delay_s is None else float(delay_s))

    def arm_from(self, spec: str) -> None:
        """``POINT[:N],...`` as in ML_ENGINE_CRASH_AT."""
        for item in filter(None, (part.strip() for part in spec.split(","))):
            point, _, after = item.partition(":")
            self.arm(point, int(after or 0))

    def clear(self) -> None:
        with self._lock:
            self._armed.clear()

    def reach(self, point: str) -> None:
        """Called by the code at ``point``; returns unless this point is armed and due."""
        with self._lock:
            rule = self._armed.get(point)
            if rule is None:
                return
            if rule.after > 0:
                rule.after -= 1
                return
            if rule.delay_s is not None:
                del self._armed[point]
        if rule.delay_s is not None:
            log.warning("crash point %s reached: pausing %.1f s", point, rule.delay_s)
            time.sleep(rule.delay_s)
            return
        log.warning("crash point %s reached: killing the service (SIGKILL)", point)
        for handler in logging.getLogger().handlers:
            handler.flush()
        os.kill(os.getpid(), signal.SIGKILL)
