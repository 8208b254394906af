"""Durable state of the service: every resource is one JSON document in SQL (SQLite or PostgreSQL).

Models, versions, operations and jobs are stored as the exact JSON bodies the
API returns, keyed by their full resource name, so a restart (even kill -9)
finds them all again, and every replica on one PostgreSQL database sees them at
once. Every write runs in a write transaction under one database-wide lock
(``database``); SQLite runs in WAL mode with synchronous=NORMAL.

A resource's ``state`` changes in one place only, ``Store.transition``: a
compare-and-set, so a state read earlier is never written back over a newer one
(a cancel that arrived meanwhile, another worker that finished the work).
Keys starting with ``_`` are the service's own bookkeeping, never shown (``public``).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from include.local_platform.state import migrations
from include.local_platform.state.clock import new_etag
from include.local_platform.state.database import connect


class Store:
    """A tiny document store: get / put / update / delete / list by (kind, parent)."""

    def __init__(self, url: str):
        self._db = connect(url)
        migrations.migrate(self._db)
        self._lock = threading.RLock()
        self._depth = 0  # nesting of transaction() in the thread holding the lock
        self._changed = False  # whether the open transaction wrote anything
        # moves on every write here, every rollback, and every write another replica commits: what `memo`
        # results are valid for
        self._generation = 0
        self._memo: dict[object, tuple[int, object]] = {}
        self._db.on_change(self._bump)

    def _bump(self) -> None:
        with self._lock:
            self._generation += 1

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
            self._db.begin_write()
            self._depth, self._changed = 1, False
            try:
                yield self
            except BaseException:
                self._db.rollback()
                self._generation += 1
                raise
            finally:
                self._depth = 0
            self._db.commit(changed=self._changed)

    def _write(self, sql: str, params: Sequence) -> None:
        with self.transaction():
            self._db.execute(sql, params)
            self._changed = True
            self._generation += 1

    def execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        """One statement on the state layer's own tables (leases), atomic by itself."""
        with self._lock:
            return self._db.execute(sql, params)

    def get(self, name: str) -> dict | None:
        with self._lock:
            rows = self._db.execute("SELECT body FROM resources WHERE name = ?", (name,))
        return json.loads(rows[0][0]) if rows else None

    def insert(self, name: str, kind: str, parent: str, body: dict) -> dict:
        self._write("INSERT INTO resources (name, kind, parent, created, body) VALUES (?, ?, ?, ?, ?)",
                    (name, kind, parent, time.time(), json.dumps(body)))
        return body

    def put(self, name: str, body: dict) -> dict:
        self._write("UPDATE resources SET body = ? WHERE name = ?", (json.dumps(body), name))
        return body

    def update(self, name: str, change: Callable[[dict], None]) -> dict | None:
        """Read, change in place and write back one document atomically; None if it is gone."""
        with self.transaction():
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
        self._write("DELETE FROM resources WHERE name = ?", (name,))

    def memo(self, key: object, compute: Callable[[], object], max_entries: int = 1024) -> object:
        """`compute()`, reused until the next write to the store (a read-only answer derived from it): a write
        here or, on PostgreSQL, one any replica commits (its notification).

        A write while `compute` runs leaves its answer uncached. Callers must not change the result.
        """
        if not self._db.change_signal_alive:
            return compute()  # another replica's write could go unnoticed: nothing is cached
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

    def list(self, kind: str, parent: str | None = None, *, states: Sequence[str] | None = None,
             undone: bool = False) -> list[dict]:
        """Documents of one kind (under one parent), oldest first; only those whose "state" is one of `states`
        (`()` matches nothing), or (`undone`) whose "done" is not true. The filters run in the database, so a
        pass over the work in flight does not decode every job and operation ever kept."""
        sql, params = "SELECT body FROM resources WHERE kind = ?", [kind]
        if parent is not None:
            sql, params = sql + " AND parent = ?", [*params, parent]
        if states is not None:
            sql += f" AND {{state}} IN ({', '.join('?' * len(states)) or 'NULL'})"
            params += list(states)
        if undone:
            sql += " AND NOT ({done})"
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY created, name", params)
        return [json.loads(row[0]) for row in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def public(resource: dict) -> dict:
    """A stored document without the service's private bookkeeping (keys starting with ``_``)."""
    return {key: value for key, value in resource.items() if not key.startswith("_")}
