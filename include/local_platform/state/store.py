"""Durable state of the service: every resource is one JSON document in SQLite.

Models, versions, operations and jobs are stored as the exact JSON bodies the
API returns, keyed by their full resource name, so a restart (even kill -9)
finds them all again. Writes are serialised by one lock; SQLite runs in WAL
mode with synchronous=NORMAL, enough for a local service.

A resource's ``state`` changes in one place only, ``Store.transition``: a
compare-and-set, so a state read earlier is never written back over a newer one
(a cancel that arrived meanwhile, another worker that finished the work).
Keys starting with ``_`` are the service's own bookkeeping, never shown (``public``).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from include.local_platform.state.clock import new_etag

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resources (
    name    TEXT PRIMARY KEY,
    kind    TEXT NOT NULL,
    parent  TEXT NOT NULL,
    created REAL NOT NULL,
    body    TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS resources_by_parent ON resources (kind, parent, created);
"""


class Store:
    """A tiny document store: get / put / update / delete / list by (kind, parent)."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of transaction() in the thread holding the lock
        self._generation = 0  # moves on every write (and rollback): what `memo` results are valid for
        self._memo: dict[object, tuple[int, object]] = {}

    @contextmanager
    def transaction(self) -> Iterator[Store]:
        """Hold the write lock across several calls (check-then-write without races), all or nothing.

        Nested calls join the outer transaction: a kill -9 anywhere before the
        outermost block ends leaves none of its writes in the database.
        """
        with self._lock:
            if self._depth:
                self._depth += 1
                try:
                    yield self
                finally:
                    self._depth -= 1
                return
            self._db.execute("BEGIN IMMEDIATE")
            self._depth = 1
            try:
                yield self
            except BaseException:
                self._db.execute("ROLLBACK")
                self._generation += 1
                raise
            finally:
                self._depth = 0
            self._db.execute("COMMIT")

    def get(self, name: str) -> dict | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM resources WHERE name = ?", (name,)).fetchone()
        return json.loads(row[0]) if row else None

    def insert(self, name: str, kind: str, parent: str, body: dict) -> dict:
        with self._lock:
            self._db.execute(
                "INSERT INTO resources (name, kind, parent, created, body) VALUES (?, ?, ?, ?, ?)",
                (name, kind, parent, time.time(), json.dumps(body)),
            )
            self._generation += 1
        return body

    def put(self, name: str, body: dict) -> dict:
        with self._lock:
            self._db.execute("UPDATE resources SET body = ? WHERE name = ?", (json.dumps(body), name))
            self._generation += 1
        return body

    def update(self, name: str, change: Callable[[dict], None]) -> dict | None:
        """Read, change in place and write back one document atomically; None if it is gone."""
        with self._lock:
            body = self.get(name)
            if body is None:
                return None
            change(body)
            return self.put(name, body)

    def revise(self, name: str, **changes) -> dict | None:
        """Apply ``changes`` (never ``state``: see ``transition``) with a fresh etag; None if it is gone."""
        if "state" in changes:
            raise ValueError("a resource's state changes only through Store.transition")
        return self.update(name, lambda doc: doc.update(changes, etag=new_etag()))

    def transition(self, name: str, from_states: tuple[str, ...], **changes) -> dict | None:
        """The one way a state changes: apply ``changes`` only if the resource is in one of ``from_states``.

        Returns the changed resource, or None when it is gone or has moved on meanwhile.
        """
        with self.transaction():
            current = self.get(name)
            if current is None or current.get("state") not in from_states:
                return None
            current.update(changes, etag=new_etag())
            return self.put(name, current)

    def delete(self, name: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM resources WHERE name = ?", (name,))
            self._generation += 1

    def memo(self, key: object, compute: Callable[[], object], max_entries: int = 1024) -> object:
        """`compute()`, reused until the next write to the store (a read-only answer derived from it).

        A write while `compute` runs leaves its answer uncached. Callers must not change the result.
        """
        with self._lock:
            hit = self._memo.get(key)
            if hit is not None and hit[0] == self._generation:
                return hit[1]
            generation = self._generation
        value = compute()
        with self._lock:
            if generation == self._generation:
                if len(self._memo) >= max_entries:
                    self._memo.clear()
                self._memo[key] = (generation, value)
        return value

    def list(self, kind: str, parent: str | None = None) -> list[dict]:
        """Documents of one kind (under one parent), oldest first."""
        with self._lock:
            if parent is None:
                rows = self._db.execute(
                    "SELECT body FROM resources WHERE kind = ? ORDER BY created", (kind,)).fetchall()
            else:
                rows = self._db.execute(
                    "SELECT body FROM resources WHERE kind = ? AND parent = ? ORDER BY created",
                    (kind, parent)).fetchall()
        return [json.loads(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def public(resource: dict) -> dict:
    """A stored document without the service's private bookkeeping (keys starting with ``_``)."""
    return {key: value for key, value in resource.items() if not key.startswith("_")}
