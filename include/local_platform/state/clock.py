"""Time stamps and etags as Google's APIs write them."""

from __future__ import annotations

import base64
import os
import time
from datetime import UTC, datetime


def now_rfc3339() -> str:
    """Now as RFC 3339 UTC with milliseconds, e.g. ``2026-01-02T03:04:05.678Z``."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_etag() -> str:
    """A fresh opaque etag: every change of a stored resource gets one."""
    return base64.b64encode(os.urandom(8)).decode("ascii")


def millis() -> int:
    return int(time.time() * 1000)
