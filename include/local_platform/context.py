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

from include.local_platform.serving.runtime import ModelCache
from include.local_platform.state.crashpoints import CrashPoints
from include.local_platform.state.store import Store

PROJECT_NUMBER = "1234"
# Starts of one deployment or batch job: after this many interrupted ones (the service died while
# doing it, e.g. a poison input that kills the process) it ends FAILED instead of being resumed again.
MAX_ATTEMPTS = 3


def now_rfc3339() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_etag() -> str:
    return base64.b64encode(os.urandom(8)).decode("ascii")


def millis() -> int:
    return int(time.time() * 1000)


def revise(ctx: Context, name: str, **changes) -> dict | None:
    """Apply changes to a stored resource with a fresh etag (every change is a new revision)."""
    return ctx.store.update(name, lambda doc: doc.update(changes, etag=new_etag()))


def transition(ctx: Context, name: str, from_states: tuple[str, ...], **changes) -> dict | None:
    """Compare-and-set: apply ``changes`` only if the resource is still in one of ``from_states``.

    Returns the changed resource, or None when it is gone or has moved on
    meanwhile (a cancel arrived, another worker finished it): a state read
    earlier is never written back over a newer one.
    """
    with ctx.store.transaction():
        current = ctx.store.get(name)
        if current is None or current.get("state") not in from_states:
            return None
        return revise(ctx, name, **changes)


def public(resource: dict) -> dict:
    """A stored document without the service's private bookkeeping (keys starting with ``_``)."""
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
    crash: CrashPoints = field(default_factory=CrashPoints)
    batch_engine: str = "local"  # "local" (in process) or "beam" (Apache Beam RunInference, see beam_engine)
    beam_options: str = ""  # extra pipeline options for the beam engine, as on a command line

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
