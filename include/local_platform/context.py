"""What every layer of the service shares: the store, the loaded models, the work queue, stop signals.

One ``Context`` per process, made by ``app.create_app``. Threads that do work
(deployments, batch jobs) come from its two pools; a cancel reaches the thread
doing the work through ``cancel_event`` (on another replica: through the work
queue's cancel requests). ``database_url`` picks the store's database; with
several replicas on one PostgreSQL database, ``artifact_uri`` is where deployed
models are kept for all of them.
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
from include.local_platform.state.database import default_url
from include.local_platform.state.leases import Leases, default_replica_id, lease_seconds
from include.local_platform.state.store import Store
from include.local_platform.state.work_queue import WorkQueue


@dataclass
class Context:
    """The service's shared state; one per process."""

    state_dir: Path
    database_url: str = ""  # sqlite:///... (default: state.sqlite in state_dir) or postgresql://...
    artifact_uri: str = ""  # gs://bucket/prefix: deployed models, shared by replicas ("": this machine only)
    replica_id: str = ""  # who holds this process's leases (default: host name and state dir)
    store: Store = field(init=False)
    models: ModelCache = field(default_factory=ModelCache)
    work: WorkQueue = field(init=False)
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
        self.database_url = self.database_url or default_url(self.state_dir)
        self.store = Store(self.database_url)
        self.replica_id = self.replica_id or default_replica_id(self.state_dir)
        self.work = WorkQueue(Leases(self.store, self.replica_id, lease_seconds()), self.cancel_events)
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
        self.work.stop()
        self.deployments.shutdown(wait=False, cancel_futures=True)
        self.jobs.shutdown(wait=False, cancel_futures=True)
        self.batch_threads.shutdown(wait=False, cancel_futures=True)
        self.store.close()
