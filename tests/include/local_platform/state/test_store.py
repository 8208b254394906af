"""The store's filtered lists, on a real SQLite file and a real PostgreSQL database: the take-over pass asks the
database for the work in flight (by an index on the document's state) instead of decoding every resource."""

from __future__ import annotations

import uuid

import pytest

from include.local_platform.state.store import Store


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        url = request.getfixturevalue("postgres_server").create_database(f"store_{uuid.uuid4().hex[:8]}")
    opened = Store(url)
    yield opened
    opened.close()


def _fill(store: Store) -> None:
    for number, (parent, state) in enumerate([("a", "RUNNING"), ("b", "SUCCEEDED"), ("a", "QUEUED"),
                                              ("a", "SUCCEEDED"), ("b", "RUNNING")]):
        store.insert(f"jobs/j{number}", "job", parent, {"name": f"jobs/j{number}", "state": state})
    store.insert("ops/done", "operation", "a", {"name": "ops/done", "done": True})
    store.insert("ops/not-done", "operation", "a", {"name": "ops/not-done", "done": False})
    store.insert("ops/new", "operation", "a", {"name": "ops/new"})
    store.insert("versions/no-state", "version", "a", {"name": "versions/no-state"})


def _names(documents: list[dict]) -> list[str]:
    return [document["name"] for document in documents]


def test_lists_filter_by_state_and_by_done_in_the_database(store):
    _fill(store)

    assert _names(store.list("job", states=("RUNNING", "QUEUED"))) == ["jobs/j0", "jobs/j2", "jobs/j4"]
    assert _names(store.list("job", "a", states=("RUNNING", "QUEUED"))) == ["jobs/j0", "jobs/j2"]
    assert store.list("job", states=()) == []
    assert store.list("version", states=("CREATING",)) == []
    assert _names(store.list("operation", undone=True)) == ["ops/not-done", "ops/new"]
    assert len(store.list("job")) == 5  # no filter: every document, as before

    store.update("jobs/j0", lambda job: job.update(state="SUCCEEDED"))  # the filter reads the state written now
    assert _names(store.list("job", states=("RUNNING",))) == ["jobs/j4"]


def test_a_database_from_before_the_state_index_gets_it_at_start(store):
    _fill(store)
    db = store._db
    db.begin_write()
    db.execute("DROP INDEX resources_by_state")
    db.execute("DELETE FROM schema_migrations WHERE version = 3")
    db.commit(changed=False)

    from include.local_platform.state import migrations

    assert migrations.migrate(db) == [3]
    assert _names(store.list("job", states=("QUEUED",))) == ["jobs/j2"]
    if db.dialect == "sqlite":
        plan = " ".join(str(row) for row in db.execute(
            "EXPLAIN QUERY PLAN SELECT body FROM resources WHERE kind = ? AND {state} IN (?)", ("job", "QUEUED")))
        assert "resources_by_state" in plan, plan
    else:
        assert db.execute("SELECT indexname FROM pg_indexes WHERE indexname = 'resources_by_state'")
