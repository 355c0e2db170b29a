"""The single-label path (``Store.add_label``): on SQLite it runs one ``INSERT ... SELECT`` on the
driver's connection, on PostgreSQL through SQLAlchemy. Both must write the same row and refuse the
same input, and a failure must leave nothing written and no transaction open."""

from __future__ import annotations

import datetime as dt
import sqlite3
import threading
import time

import pytest

from workbench import ids
from workbench.store import NotFound, StoreError


@pytest.fixture
def seeded(store):
    p = store.add_prompt("What is 2+2?", category="math")
    a = store.add_response(p, "4", model="m1")
    b = store.add_response(p, "5", model="m2")
    q = store.add_prompt("What is 3+3?")
    c = store.add_response(q, "6")
    store.add_annotator("alice")
    return store, p, a, b, c


def _raw_rows(store) -> list[dict]:
    con = sqlite3.connect(store.engine.url.database)
    try:
        cur = con.execute("SELECT * FROM label_events ORDER BY event_id")
        names = [d[0] for d in cur.description]
        return [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()


@pytest.mark.parametrize("backend", ["sqlite"])  # compares the two paths on one SQLite file
@pytest.mark.parametrize("fields", [
    dict(strength=0.75, shown_left="b", gold=True, rationale="ünïcödé ✓ \"quoted\" 'single' \n newline", duration_ms=1234,
         source="model_judge"),
    dict(),  # the optional fields left out: NULLs and defaults
])
def test_sqlite_label_row_is_the_row_sqlalchemy_writes(seeded, fields):
    """The row the SQLite path stores, column by column and type by type, is the one the
    SQLAlchemy statement (the PostgreSQL path) stores for the same label on the same file."""
    store, p, a, b, _ = seeded
    created = dt.datetime(2026, 3, 4, 5, 6, 7, 891011, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    store.add_label(p, a, b, "tie", "alice", client_token="fast-1", created_at=created, **fields)
    row = dict(
        comparison_id=ids.comparison_id_of("slow-1"), kind="label", supersedes=None, prompt_id=p, response_a_id=a,
        response_b_id=b, label="tie", strength=fields.get("strength"), annotator_id="alice",
        shown_left=fields.get("shown_left"), source=fields.get("source", "human"), gold=bool(fields.get("gold", False)),
        rationale=fields.get("rationale"), duration_ms=fields.get("duration_ms"),
        created_at=created.astimezone(dt.timezone.utc), client_token="slow-1", import_id=None,
    )
    with store._write() as conn:
        conn.execute(store._statements["insert_event"], row)
    fast, slow = _raw_rows(store)
    for key in ("event_id", "comparison_id", "client_token"):
        fast.pop(key), slow.pop(key)
    assert fast == slow
    assert [type(v) for v in fast.values()] == [type(v) for v in slow.values()]
    assert fast["created_at"] == "2026-03-04 03:06:07.891011"  # UTC, as SQLAlchemy's DateTime stores it
    # And both read back the same through the store.
    ev = store.events()
    assert ev.drop("event_id", "comparison_id", "client_token").row(0) == ev.drop("event_id", "comparison_id", "client_token").row(1)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(annotator_id="alice'; DROP TABLE label_events; --"), NotFound, "unknown annotator"),
    (dict(response_b_id="r' OR '1'='1"), NotFound, "unknown response"),
    (dict(response_b_id="C"), StoreError, "does not answer"),  # a response of another prompt
    (dict(prompt_id="p-nope"), StoreError, "does not answer"),
])
def test_refused_label_writes_nothing_and_leaves_no_transaction(seeded, kwargs, exc, match):
    store, p, a, b, c = seeded
    args = dict(prompt_id=p, response_a_id=a, response_b_id=b, label="a", annotator_id="alice")
    args.update(kwargs)
    if args["response_b_id"] == "C":
        args["response_b_id"] = c
    before = store.stats()
    with pytest.raises(exc, match=match):
        store.add_label(**args)
    assert store.stats() == before
    # The store still takes labels (no transaction left open on a pooled connection).
    r = store.add_label(p, a, b, "a", "alice", client_token="after")
    assert r.created and store.stats()["label_events"] == 1


def test_a_token_taken_by_another_label_is_refused_before_the_references(seeded):
    """A resubmitted token names one submission: with other fields (here an unknown annotator) it
    is refused as a reused token, on both paths, and nothing is written."""
    store, p, a, b, _ = seeded
    first = store.add_label(p, a, b, "a", "alice", client_token="tok")
    with pytest.raises(StoreError, match="already used"):
        store.add_label(p, a, b, "a", "nobody", client_token="tok")
    again = store.add_label(p, a, b, "a", "alice", client_token="tok")
    assert (again.event_id, again.created) == (first.event_id, False)
    assert store.stats()["label_events"] == 1


def test_large_and_hostile_text_is_stored_exactly(seeded):
    store, p, a, b, _ = seeded
    rationale = ("<script>alert(1)</script> '; DELETE FROM label_events; -- " + "é" * 19_000 + "😀" * 2_000)[:20_000]
    store.add_label(p, a, b, "b", "alice", rationale=rationale, client_token="big")
    ev = store.events()
    assert ev["rationale"].to_list() == [rationale]
    assert store.stats()["label_events"] == 1


@pytest.mark.parametrize("backend", ["sqlite"])
def test_sqlite_failed_insert_rolls_back_and_releases_the_write_lock(seeded):
    """A statement that fails inside the write transaction: nothing is written, the connection
    goes back to the pool with no transaction open, and another writer gets the lock at once."""
    store, p, a, b, _ = seeded
    good = store._label_sql["insert"]
    # NOT NULL on comparison_id fails while the statement runs, after BEGIN IMMEDIATE took the lock
    store._label_sql["insert"] = good.replace("SELECT ?, ", "SELECT NULL + ?, ", 1)
    with pytest.raises(sqlite3.IntegrityError):
        store.add_label(p, a, b, "a", "alice", client_token="broken")
    other = sqlite3.connect(store.engine.url.database, timeout=0)  # no waiting: fails if the lock is still held
    try:
        other.execute("BEGIN IMMEDIATE")
        other.execute("ROLLBACK")
    finally:
        other.close()
    assert store.stats()["label_events"] == 0
    store._label_sql["insert"] = good
    assert store.add_label(p, a, b, "a", "alice", client_token="broken").created
    assert store.stats()["label_events"] == 1


@pytest.mark.parametrize("kwargs, match", [
    (dict(rationale="nul \x00 inside"), "rationale contains a NUL"),
    (dict(rationale="lone \ud800 surrogate"), "rationale contains"),
    (dict(client_token="tok\x00"), "client_token contains"),
    (dict(annotator_id="ali\x00ce"), "annotator_id contains"),
    (dict(prompt_id="p\x00"), "prompt_id contains"),
    (dict(response_a_id=b"bytes"), "response_a_id must be a text"),
    (dict(annotator_id=None), "annotator_id must be a text"),
])
def test_unstorable_text_is_refused_alike_on_both_databases(seeded, kwargs, match):
    """PostgreSQL's text holds no NUL, and neither database takes a lone surrogate: both paths
    refuse them with the same clear error before writing (SQLite would store a NUL)."""
    store, p, a, b, _ = seeded
    args = dict(prompt_id=p, response_a_id=a, response_b_id=b, label="a", annotator_id="alice")
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        store.add_label(**args)
    assert store.stats()["label_events"] == 0


def _hold_write_lock(path: str, seconds: float) -> tuple[sqlite3.Connection, threading.Thread]:
    """Another connection takes the write lock now and lets it go after ``seconds``."""
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    t = threading.Timer(seconds, lambda: other.execute("COMMIT"))
    t.start()
    return other, t


def _busy_timeout(store) -> int:
    fairy = store.engine.raw_connection()
    try:
        return fairy.driver_connection.execute("PRAGMA busy_timeout").fetchone()[0]
    finally:
        fairy.close()


@pytest.mark.parametrize("backend", ["sqlite"])
@pytest.mark.parametrize("held", [0.0005, 0.3])
def test_sqlite_label_waits_for_another_writer(seeded, held):
    """A label whose write lock is taken waits for it: within the quick tries (held 0.5 ms) or
    in SQLite's own wait after them (held 0.3 s), and records the label once it is free. The
    connection's busy timeout is SQLite's 60 s again afterwards."""
    store, p, a, b, _ = seeded
    other, timer = _hold_write_lock(store.engine.url.database, held)
    try:
        t = time.perf_counter()
        r = store.add_label(p, a, b, "a", "alice", client_token="waits")
        waited = time.perf_counter() - t
    finally:
        timer.join()
        other.close()
    assert r.created and store.stats()["label_events"] == 1
    if held > 0.1:  # it did wait (the timer started before the clock, hence the margin)
        assert waited >= held - 0.05
    assert _busy_timeout(store) == 60_000


def test_begin_immediate_quick_tries_then_sqlite_wait_and_other_errors(tmp_path, monkeypatch):
    """Busy: the quick tries, then SQLite's wait up to the busy timeout, then the error; another
    error: raised at once. The connection's busy timeout is restored either way."""
    from workbench import store as store_module

    path = str(tmp_path / "x.db")
    con = sqlite3.connect(path, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("PRAGMA busy_timeout = 60000")
    con.execute("CREATE TABLE t (x)")
    # Held for longer than the quick tries and a (shortened) SQLite wait.
    other, timer = _hold_write_lock(path, 1.0)
    monkeypatch.setattr(store_module, "BUSY_TIMEOUT_MS", 50)
    sleeps: list[float] = []
    real_sleep = time.sleep
    monkeypatch.setattr(time, "sleep", lambda s: (sleeps.append(s), real_sleep(s)))
    try:
        t = time.perf_counter()
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            store_module._begin_immediate(con)
        waited = time.perf_counter() - t
    finally:
        timer.join()
        other.close()
    assert 0.05 <= waited < 0.9
    assert sleeps == [store_module.QUICK_WAIT] * store_module.QUICK_TRIES
    assert con.execute("PRAGMA busy_timeout").fetchone()[0] == 50
    assert not con.in_transaction
    con.close()
    # An error other than a busy lock is raised at once, not tried again.
    con = sqlite3.connect(path, isolation_level=None)
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    con.execute("BEGIN")
    with pytest.raises(sqlite3.OperationalError, match="within a transaction"):
        store_module._begin_immediate(con)
    assert sleeps == [] and con.execute("PRAGMA busy_timeout").fetchone()[0] == 50
    con.close()
