"""The work queue's heartbeat on a real SQLite store: a lease taken while a renewal runs is not counted lost."""

from __future__ import annotations

from include.local_platform.state.leases import Leases
from include.local_platform.state.store import Store
from include.local_platform.state.work_queue import WorkQueue


class _TakeDuringRenewal(Leases):
    """Leases whose renewal answers, then lets ``take`` win a new lease before the heartbeat reads the answer:
    the interleaving of a request thread submitting work while the heartbeat thread renews."""

    queue: WorkQueue | None = None

    def renew(self) -> set[str]:
        still = super().renew()
        if self.queue is not None:
            assert self.queue.take("training", "projects/p/jobs/new")
        return still


def test_work_taken_during_a_renewal_stays_held_and_a_lost_lease_is_dropped(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'state.db'}")
    leases = _TakeDuringRenewal(store, "replica-a", 60)
    queue = WorkQueue(leases, {})
    assert queue.take("batch", "projects/p/jobs/old")
    store.execute("UPDATE leases SET expires = {now} - 1 WHERE name = ?", ("projects/p/jobs/old",))
    assert Leases(store, "replica-b", 60).claim("projects/p/jobs/old", "batch")  # expired: another replica's now

    leases.queue = queue
    queue.beat()

    assert queue.held() == {"projects/p/jobs/new"}
    leases.queue = None
    queue.beat()  # the next renewal sees it
    assert queue.held() == {"projects/p/jobs/new"}
    owners = dict(store.execute("SELECT name, owner FROM leases"))
    assert owners == {"projects/p/jobs/old": "replica-b", "projects/p/jobs/new": "replica-a"}
