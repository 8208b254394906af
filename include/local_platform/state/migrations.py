"""The store's schema, as an ordered list of versioned steps run at start (no migration tool: a dozen lines).

Each step runs once, in its own write transaction, and is recorded in
``schema_migrations``; replicas starting together take the same write lock, so
one applies a step and the others find it recorded. A step is written once and
never changed: a later change is a new step. The SQL is what both SQLite and
PostgreSQL accept (``{state}`` and the like: ``Database.dialect_sql``).
"""

from __future__ import annotations

import logging

from include.local_platform.state.database import Database

log = logging.getLogger(__name__)

#: (version, what it does, statements). Version 1 is the schema before versioning (IF NOT EXISTS: old state dirs).
MIGRATIONS: list[tuple[int, str, tuple[str, ...]]] = [
    (1, "resources: every resource one JSON document", (
        "CREATE TABLE IF NOT EXISTS resources (name TEXT PRIMARY KEY, kind TEXT NOT NULL, parent TEXT NOT NULL, "
        "created DOUBLE PRECISION NOT NULL, body TEXT NOT NULL)",
        "CREATE INDEX IF NOT EXISTS resources_by_parent ON resources (kind, parent, created)",
    )),
    (2, "leases: which replica does which work, until when; cancel requests for the replica doing it", (
        "CREATE TABLE leases (name TEXT PRIMARY KEY, kind TEXT NOT NULL, owner TEXT NOT NULL, "
        "expires DOUBLE PRECISION NOT NULL)",
        "CREATE INDEX leases_by_owner ON leases (owner)",
        "CREATE TABLE cancel_requests (name TEXT PRIMARY KEY, asked DOUBLE PRECISION NOT NULL)",
    )),
    (3, "resources by state: the take-over pass lists the work in flight, not every job ever kept", (
        "CREATE INDEX resources_by_state ON resources (kind, {state})",
    )),
]


def migrate(db: Database) -> list[int]:
    """Apply the steps this database lacks, in order; returns the versions applied now."""
    applied_now = []
    db.begin_write()
    try:
        db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, "
                   "description TEXT NOT NULL, applied DOUBLE PRECISION NOT NULL)")
        done = {row[0] for row in db.execute("SELECT version FROM schema_migrations")}
    except BaseException:
        db.rollback()
        raise
    db.commit(changed=False)
    newest = max(version for version, _, _ in MIGRATIONS)
    if done and max(done) > newest:
        raise RuntimeError(f"the database's schema is version {max(done)}, newer than this service knows "
                           f"({newest}): run the newer service, or a database of its own")
    for version, description, statements in MIGRATIONS:
        if version in done:
            continue
        db.begin_write()
        try:
            if db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", (version,)):
                db.rollback()  # another replica applied it meanwhile
                continue
            for statement in statements:
                db.execute(statement)
            db.execute("INSERT INTO schema_migrations (version, description, applied) VALUES (?, ?, {now})",
                       (version, description))
        except BaseException:
            db.rollback()
            raise
        db.commit(changed=True)
        applied_now.append(version)
        log.info("database schema: applied step %d (%s)", version, description)
    return applied_now
