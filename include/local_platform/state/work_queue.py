"""Work waiting for a worker: resources record it, the workers registered for its kind take it.

A request that needs work done (a version to deploy, a batch or training job to
run) stores its resource in its first state and hands the resource's name here by
kind; the workers registered one runner per kind when the service started
(``workers.supervisor``). So the resource rules never import the workers, and the
stored first state is what a restart finds again. With several replicas this is
where work will be claimed (row leases) instead of handed over in process.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

#: The kinds of work, each with one runner: an ml/v1 version to deploy, a batch prediction job, a training job,
#: and Vertex AI's: a model version to deploy to an endpoint, a batch prediction job, a training pipeline.
KINDS = ("deployment", "batch", "training", "vertex_deployment", "vertex_batch", "vertex_training")


class WorkQueue:
    """Runners by kind of work; ``submit`` hands a resource name to its kind's runner."""

    def __init__(self):
        self._runners: dict[str, Callable[[str], None]] = {}
        self._lock = threading.Lock()

    def register(self, kind: str, runner: Callable[[str], None]) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind of work {kind!r}; known: {list(KINDS)}")
        with self._lock:
            self._runners[kind] = runner

    def submit(self, kind: str, name: str) -> None:
        """Start the work on ``name`` (the runner returns at once; the work goes on in the background)."""
        with self._lock:
            runner = self._runners.get(kind)
        if runner is None:
            raise RuntimeError(f"no worker takes {kind} work in this process")
        runner(name)
