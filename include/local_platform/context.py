"""What every layer of the service shares: the store, the loaded models, the work queue, stop signals.

One ``Context`` per process, made by ``app.create_app``. Threads that do work
(deployments, batch jobs) come from its two pools; a cancel reaches the thread
doing the work through ``cancel_event``.
"""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from include.local_platform.serving.batching import BatchingOptions
from include.local_platform.serving.model_cache import ModelCache
from include.local_platform.state.crashpoints import CrashPoints
from include.local_platform.state.store import Store
from include.local_platform.state.work_queue import WorkQueue


@dataclass
class Context:
    """The service's shared state; one per process."""

    state_dir: Path
    store: Store = field(init=False)
    models: ModelCache = field(default_factory=ModelCache)
    work: WorkQueue = field(default_factory=WorkQueue)
    deployments: ThreadPoolExecutor = field(init=False)
    jobs: ThreadPoolExecutor = field(init=False)
    cancel_events: dict[str, threading.Event] = field(default_factory=dict)
    stopping: threading.Event = field(default_factory=threading.Event)
    crash: CrashPoints = field(default_factory=CrashPoints)
    batch_engine: str = "local"  # "local" (in process) or "beam" (Apache Beam RunInference, see beam_engine)
    beam_options: str = ""  # extra pipeline options for the beam engine, as on a command line
    batching: BatchingOptions = field(default_factory=BatchingOptions.from_environment)  # online predict
    batch_threads: ThreadPoolExecutor = field(init=False)  # where batches of online calls run
    event_loop: asyncio.AbstractEventLoop | None = None  # the HTTP server's, once it runs (batch queues live on it)

    def __post_init__(self):
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.state_dir / "state.sqlite")
        self.deployments = ThreadPoolExecutor(max_workers=2, thread_name_prefix="deploy")
        self.jobs = ThreadPoolExecutor(max_workers=2, thread_name_prefix="job")
        self.batch_threads = ThreadPoolExecutor(max_workers=self.batching.num_batch_threads,
                                                thread_name_prefix="predict-batch")

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
        self.batch_threads.shutdown(wait=False, cancel_futures=True)
        self.store.close()
