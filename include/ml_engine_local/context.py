"""What every part of the service shares: state, loaded models, workers, clocks."""

from __future__ import annotations

import base64
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from include.ml_engine_local.runtime import ModelCache
from include.ml_engine_local.store import Store

PROJECT_NUMBER = "1234"


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_etag() -> str:
    return base64.b64encode(os.urandom(8)).decode("ascii")


def millis() -> int:
    return int(time.time() * 1000)


def revise(ctx: Context, name: str, **changes) -> dict | None:
    """Apply changes to a stored resource with a fresh etag (every change is a new revision)."""
    return ctx.store.update(name, lambda doc: doc.update(changes, etag=new_etag()))


def public(resource: dict) -> dict:
    """A stored document without the service's private bookkeeping (keys starting with `_`)."""
    return {key: value for key, value in resource.items() if not key.startswith("_")}


@dataclass
class Context:
    """The service's shared state; one per process."""

    state_dir: Path
    store: Store = field(init=False)
    models: ModelCache = field(default_factory=ModelCache)
    deployments: ThreadPoolExecutor = field(init=False)
    jobs: ThreadPoolExecutor = field(init=False)
    cancel_events: dict[str, threading.Event] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.state_dir / "state.sqlite")
        self.deployments = ThreadPoolExecutor(max_workers=2, thread_name_prefix="deploy")
        self.jobs = ThreadPoolExecutor(max_workers=2, thread_name_prefix="job")

    @property
    def artifacts_dir(self) -> Path:
        return self.state_dir / "artifacts"

    @property
    def scratch_dir(self) -> Path:
        path = self.state_dir / "scratch"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def cancel_event(self, name: str) -> threading.Event:
        return self.cancel_events.setdefault(name, threading.Event())

    def shutdown(self) -> None:
        """Stop workers; their in-flight work is left as is and resumed at the next start."""
        self.stopping.set()
        self.deployments.shutdown(wait=False, cancel_futures=True)
        self.jobs.shutdown(wait=False, cancel_futures=True)
        self.store.close()
