"""Work waiting for a worker: resources record it, a replica claims it, its registered runner does it.

A request that needs work done (a version to deploy, a batch or training job to
run) stores its resource in its first state and hands the resource's name here
by kind; the workers registered one runner per kind when the service started
(``workers.supervisor``), so the resource rules never import the workers. Work
is claimed, not assigned: ``submit`` runs the work here only if this replica
wins its lease (``leases``). A heartbeat thread renews the leases this replica
holds, and hands it the cancels other replicas recorded for its work. What a
dead replica left is found by the supervisor's take-over pass (``adopt``).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from include.local_platform.state.leases import Leases

log = logging.getLogger(__name__)
#: The kinds of work, each with one runner: an ml/v1 version to deploy, a batch prediction job, a training job,
#: and Vertex AI's: a model version to deploy to an endpoint, a batch prediction job, a training pipeline.
KINDS = ("deployment", "batch", "training", "vertex_deployment", "vertex_batch", "vertex_training")
HEARTBEAT_S = 1.0


class WorkQueue:
    """Runners by kind of work; the leases this replica holds; the heartbeat that keeps them."""

    def __init__(self, leases: Leases, cancel_events: dict[str, threading.Event]):
        self.leases = leases
        self._cancel_events = cancel_events  # the context's: created by the work when it starts
        self._runners: dict[str, Callable[[str], None]] = {}
        self._held: dict[str, int] = {}  # name -> the serial of the take that got it (see ``beat``)
        self._takes = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._heartbeat: threading.Thread | None = None

    def register(self, kind: str, runner: Callable[[str], None]) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown kind of work {kind!r}; known: {list(KINDS)}")
        with self._lock:
            self._runners[kind] = runner

    def take(self, kind: str, name: str) -> bool:
        """Claim ``name`` for this replica; True only when it was not already held here (start the work)."""
        with self._lock:
            if name in self._held:
                return False
        if not self.leases.claim(name, kind):
            return False
        with self._lock:
            if name in self._held:
                return False
            self._takes += 1
            self._held[name] = self._takes
        return True

    def holds(self, name: str) -> bool:
        with self._lock:
            return name in self._held

    def held(self) -> set[str]:
        with self._lock:
            return set(self._held)

    def submit(self, kind: str, name: str, *, lease: str | None = None) -> bool:
        """Start the work on ``name`` here if this replica wins its lease (``lease``: a key unique to this piece
        of work, when ``name`` can be reused, as a version's can after a delete; default ``name``). The runner
        returns at once; the work goes on in the background. False: another replica does it, or this one does."""
        with self._lock:
            runner = self._runners.get(kind)
        if runner is None:
            raise RuntimeError(f"no worker takes {kind} work in this process")
        if not self.take(kind, lease or name):
            return False
        runner(name)
        return True

    def finished(self, names: set[str]) -> None:
        """Give back the leases of work that has ended (its resource left its working states)."""
        with self._lock:
            names = names & self._held.keys()
            for name in names:
                del self._held[name]
        if names:
            self.leases.release(sorted(names))

    def cancel(self, name: str) -> None:
        """Ask whoever does ``name`` to stop: this replica at once, another at its next heartbeat."""
        self._cancel_events.setdefault(name, threading.Event()).set()
        self.leases.ask_cancel(name)

    def start(self) -> None:
        if self._heartbeat is None:
            self._heartbeat = threading.Thread(target=self._beat, daemon=True, name="work-heartbeat")
            self._heartbeat.start()

    def _beat(self) -> None:
        while not self._stopping.wait(HEARTBEAT_S):
            try:
                self.beat()
            except Exception as error:  # the database away for a moment: leases last lease_seconds
                log.warning("work heartbeat failed (%s); retried in %.0f s", error, HEARTBEAT_S)

    def beat(self) -> None:
        """Renew this replica's leases, notice lost ones, deliver cancels asked through other replicas.

        Only a take older than the renewal can be lost: work taken while the renewal ran is missing from its
        answer but is held (counting it lost let the take-over pass start a running job a second time)."""
        with self._lock:
            before = dict(self._held)
        still = self.leases.renew()
        with self._lock:
            lost = {name for name, take in before.items() if name not in still and self._held.get(name) == take}
            for name in lost:
                del self._held[name]
        for name in sorted(lost):
            log.error("lost the lease of %s (this replica stalled past its lease; another may run it now)", name)
        for name in self.leases.cancels():
            event = self._cancel_events.get(name)  # work running here made it; a cancel key may be an operation's
            if event is not None and not event.is_set():
                log.info("cancel of %s asked through another replica", name)
                event.set()

    def stop(self) -> None:
        """A graceful stop: no more renewals, and every lease given back so other replicas take over at once."""
        self._stopping.set()
        with self._lock:
            self._held.clear()
        try:
            self.leases.release()
        except Exception as error:
            log.warning("could not give leases back at stop (%s); they expire by themselves", error)
