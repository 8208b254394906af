"""The SQL database under the store: SQLite (embedded, the default) or PostgreSQL (replicas share it).

``connect(url, state_dir)`` gives one ``Database`` per process. Both speak the
same small SQL (``?`` placeholders, ``{now}`` for the database's clock in
seconds) and the same write discipline: a write transaction holds one
database-wide write lock (SQLite's ``BEGIN IMMEDIATE``; on PostgreSQL a
transaction-scoped advisory lock every replica takes), so a check-then-write is
as safe across replicas as it is across threads. Reads take no lock.

PostgreSQL also tells every replica that something changed: each committed
write sends a notification, and a listener thread per replica counts them
(``changes``), which is what cached answers are checked against.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import urlsplit

from include.local_platform.errors import ApiError

log = logging.getLogger(__name__)
#: The advisory lock key every replica's write transaction takes (any constant shared by all replicas).
WRITE_LOCK_KEY = 727_1001
CHANNEL = "ml_engine_store"


class DatabaseUnavailable(ApiError):
    """The database cannot be reached (a PostgreSQL restart, a network cut): answered 503 UNAVAILABLE in
    Google's words, which clients retry; the cause goes to the log, not to the caller."""

    def __init__(self, cause: str):
        super().__init__(503, "UNAVAILABLE", "The service is currently unavailable.")
        self.cause = cause
        log.warning("database unavailable: %s", cause)


def default_url(state_dir: Path) -> str:
    return f"sqlite:///{state_dir / 'state.sqlite'}"


def describe(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def connect(url: str) -> Database:
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        path = url.removeprefix("sqlite:///") if url.startswith("sqlite:///") else url.removeprefix("sqlite://")
        return SqliteDatabase(Path(path))
    if scheme in ("postgresql", "postgres"):
        return PostgresDatabase(url)
    raise ValueError(f"unsupported database URL {describe(url)!r}: use sqlite:///PATH or postgresql://...")


class Database:
    """What the store needs from SQL: statements, one write lock per transaction, a change signal.

    A statement may name ``{now}``, ``{state}`` and ``{done}``: each dialect's SQL for them (below)."""

    dialect = ""
    now_sql = ""
    #: SQL for a resource document's top-level "state" (text), and whether its "done" is true (operations);
    #: an index on the first (migration 3) makes a list of the work in flight cost what is in flight
    state_sql = ""
    done_sql = ""

    def execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        raise NotImplementedError

    def dialect_sql(self, sql: str) -> str:
        return sql.format(now=self.now_sql, state=self.state_sql, done=self.done_sql)

    def begin_write(self) -> None:
        raise NotImplementedError

    def commit(self, changed: bool) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` whenever another process committed a write (nothing to do for SQLite: one process)."""

    @property
    def change_signal_alive(self) -> bool:
        """Whether ``on_change`` callbacks are being delivered (cached answers are only trusted then)."""
        return True

    def close(self) -> None:
        raise NotImplementedError


class SqliteDatabase(Database):
    """One file in the state directory, WAL mode; one process uses it (the embedded default)."""

    dialect = "sqlite"
    now_sql = "((julianday('now') - 2440587.5) * 86400.0)"
    state_sql = "json_extract(body, '$.state')"
    done_sql = "coalesce(json_extract(body, '$.done'), 0) = 1"

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")

    def execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        return self._db.execute(self.dialect_sql(sql), tuple(params)).fetchall()

    def begin_write(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def commit(self, changed: bool) -> None:
        self._db.execute("COMMIT")

    def rollback(self) -> None:
        self._db.execute("ROLLBACK")

    def close(self) -> None:
        self._db.close()


class PostgresDatabase(Database):
    """A PostgreSQL database several replicas share; a lost connection is opened again on the next call."""

    dialect = "postgresql"
    now_sql = "extract(epoch from clock_timestamp())::double precision"
    state_sql = "(body::jsonb ->> 'state')"
    done_sql = "coalesce((body::jsonb ->> 'done') = 'true', false)"

    def __init__(self, url: str):
        import psycopg

        self._psycopg = psycopg
        self._url = url
        self._conn = self._open()
        self._in_transaction = False
        self._callbacks: list[Callable[[], None]] = []
        self._listening = threading.Event()
        self._closing = threading.Event()
        self._listener: threading.Thread | None = None

    def _open(self):
        try:
            return self._psycopg.connect(self._url, autocommit=True, connect_timeout=10,
                                         application_name="ml-engine-local")
        except self._psycopg.OperationalError as error:
            raise DatabaseUnavailable(f"cannot reach the database {describe(self._url)}: {error}") from error

    def _sql(self, sql: str) -> str:
        return self.dialect_sql(sql.replace("%", "%%").replace("?", "%s"))

    def execute(self, sql: str, params: Sequence = ()) -> list[tuple]:
        for attempt in (1, 2):
            if self._conn.closed or self._conn.broken:
                if self._in_transaction:  # its earlier statements went with the connection: the caller rolls back
                    raise DatabaseUnavailable("the database connection was lost inside a transaction")
                self._conn = self._open()
            try:
                cursor = self._conn.execute(self._sql(sql), tuple(params))
            except self._psycopg.OperationalError as error:
                if attempt == 1 and not self._in_transaction and (self._conn.closed or self._conn.broken):
                    continue  # a connection lost while idle (say, the database restarted): once more on a new one
                raise DatabaseUnavailable(f"database call failed: {error}") from error
            return cursor.fetchall() if cursor.description is not None else []
        raise AssertionError("unreachable")

    def begin_write(self) -> None:
        self.execute("BEGIN")
        self._in_transaction = True
        try:
            self.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK_KEY,))
        except BaseException:
            self.rollback()
            raise

    def commit(self, changed: bool) -> None:
        try:
            if changed:
                self.execute("SELECT pg_notify(?, '')", (CHANNEL,))  # delivered to every listener at commit
            self.execute("COMMIT")
        finally:
            self._in_transaction = False

    def rollback(self) -> None:
        self._in_transaction = False
        if not (self._conn.closed or self._conn.broken):
            self.execute("ROLLBACK")

    def on_change(self, callback: Callable[[], None]) -> None:
        self._callbacks.append(callback)
        if self._listener is None:
            self._listener = threading.Thread(target=self._listen, daemon=True, name="store-listener")
            self._listener.start()
            self._listening.wait(10)

    @property
    def change_signal_alive(self) -> bool:
        return self._listening.is_set()

    def _listen(self) -> None:
        """Count other replicas' commits; while the connection is down, cached answers are not trusted."""
        backoff = 0.2
        while not self._closing.is_set():
            try:
                with self._psycopg.connect(self._url, autocommit=True, connect_timeout=10,
                                           application_name="ml-engine-local-listener") as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    self._changed()  # anything may have changed while not listening
                    self._listening.set()
                    backoff = 0.2
                    while not self._closing.is_set():
                        for _ in conn.notifies(timeout=1.0):
                            self._changed()
            except self._psycopg.Error as error:
                if self._closing.is_set():
                    return
                if self._listening.is_set():
                    log.warning("lost the database's change notifications (%s); answers are not cached until "
                                "they are back", error)
                self._listening.clear()
                self._changed()
                time.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    def _changed(self) -> None:
        for callback in self._callbacks:
            callback()

    def close(self) -> None:
        self._closing.set()
        self._listening.clear()
        self._conn.close()
