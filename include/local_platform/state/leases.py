"""Row leases: which replica does which piece of work, until when (the database's clock).

A replica claims work with one conditional upsert: it gets the row when nobody
holds it, when the holder's lease has expired (the holder died or stalled), or
when the holder is itself from an earlier life (same replica id, restarted).
Two replicas claiming at once serialize on the row; exactly one gets it back
(``RETURNING``). The holder renews all its leases every second or so; a replica
that dies stops renewing, and after ``lease_seconds`` another takes the work
over. This is the scheme of Airflow's HA scheduler and of Oban or
graphile-worker, on the same SQL in SQLite and PostgreSQL.
"""

from __future__ import annotations

import hashlib
import os
import socket
from pathlib import Path

from include.local_platform.state.store import Store

DEFAULT_LEASE_SECONDS = 15.0


def lease_seconds() -> float:
    """How long a lease lasts unrenewed (``ML_ENGINE_LEASE_SECONDS``): the longest a dead replica's work waits."""
    value = float(os.environ.get("ML_ENGINE_LEASE_SECONDS", str(DEFAULT_LEASE_SECONDS)))
    if value < 1:
        raise ValueError(f"ML_ENGINE_LEASE_SECONDS must be at least 1 second, got {value}")
    return value


def default_replica_id(state_dir: Path) -> str:
    """``ML_ENGINE_REPLICA_ID``, else host name and a digest of the state dir: stable across restarts (so a
    restarted replica resumes its own work at once) and distinct for replicas sharing one host."""
    configured = os.environ.get("ML_ENGINE_REPLICA_ID", "").strip()
    if configured:
        return configured
    digest = hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:8]
    return f"{socket.gethostname()}-{digest}"


class Leases:
    """One replica's view of the leases table."""

    def __init__(self, store: Store, owner: str, seconds: float):
        self.store = store
        self.owner = owner
        self.seconds = seconds

    def claim(self, name: str, kind: str) -> bool:
        """Take ``name`` if it is free, expired or held by this replica id; True if this replica holds it now."""
        rows = self.store.execute(
            "INSERT INTO leases (name, kind, owner, expires) VALUES (?, ?, ?, {now} + ?) "
            "ON CONFLICT (name) DO UPDATE SET owner = excluded.owner, kind = excluded.kind, "
            "expires = excluded.expires WHERE leases.expires < {now} OR leases.owner = excluded.owner "
            "RETURNING owner", (name, kind, self.owner, self.seconds))
        return bool(rows)

    def renew(self) -> set[str]:
        """Extend every lease this replica holds; returns the names it still holds."""
        self.store.execute("UPDATE leases SET expires = {now} + ? WHERE owner = ?", (self.seconds, self.owner))
        return {row[0] for row in self.store.execute("SELECT name FROM leases WHERE owner = ?", (self.owner,))}

    def release(self, names: list[str] | None = None) -> None:
        """Give leases back (all of this replica's when ``names`` is None), so another replica may start at once."""
        if names is None:
            self.store.execute("DELETE FROM leases WHERE owner = ?", (self.owner,))
        for name in names or ():
            self.store.execute("DELETE FROM leases WHERE name = ? AND owner = ?", (name, self.owner))

    def ask_cancel(self, name: str) -> None:
        """Record a cancel for whichever replica runs ``name`` (it polls ``cancels``)."""
        self.store.execute("INSERT INTO cancel_requests (name, asked) VALUES (?, {now}) ON CONFLICT (name) DO "
                           "UPDATE SET asked = excluded.asked", (name,))

    def cancels(self, max_age_s: float = 86400.0) -> set[str]:
        """Names a cancel was asked for (the last day's; older requests are dropped)."""
        self.store.execute("DELETE FROM cancel_requests WHERE asked < {now} - ?", (max_age_s,))
        return {row[0] for row in self.store.execute("SELECT name FROM cancel_requests")}
