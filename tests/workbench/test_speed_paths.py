"""The speed paths of the store give what the plain paths give.

- A snapshot reads the events and texts with two SQLite connections, the texts either as a
  whole-table scan or by id; every way gives the same version (rows, bytes of the content hash)
  as a plain row-by-row resolution of the events (the reference of ``test_snapshot_paths``).
- A chunk of events whose ids have gaps (which SQLite only gets from ids set by hand) is read
  row by row, and still resolves correctly.
- A large bulk write returns once committed and runs its WAL checkpoint in a thread; the store
  is complete and consistent before and after, and ``close`` waits for the checkpoint.
- Without ``skip_invalid`` the rows are checked while they are written: a bad row still stops
  the import with the same error, and nothing is written.
"""

from __future__ import annotations

import sqlite3

import polars as pl
import pytest

import workbench
from workbench import bulk, versions
from workbench.frames import COMPARISONS_SCHEMA, InvalidRows

from test_snapshot_paths import _awkward_frame, _reference, _with_history


@pytest.fixture
def history_store(tmp_path):
    store = workbench.open(str(tmp_path / "wb.db"), files_dir=tmp_path / "files")
    _with_history(store)
    yield store
    store.close()


def _snapshot_with(store, monkeypatch, name: str, *, scan: bool, event_chunk: int, text_chunk: int):
    monkeypatch.setattr(versions, "SCAN_TEXTS_PER_EVENT", 1e9 if scan else 0.0)
    monkeypatch.setattr(versions, "EVENT_CHUNK", event_chunk)
    monkeypatch.setattr(versions, "TEXT_CHUNK", text_chunk)
    return store.snapshot(name)


@pytest.mark.parametrize("scan", [True, False], ids=["scan", "by-id"])
@pytest.mark.parametrize("chunks", [(10**6, 10**6), (7, 3), (1, 1)], ids=["one", "some", "single-rows"])
def test_every_read_path_gives_the_reference_version(history_store, monkeypatch, scan, chunks):
    ref = _reference(history_store)
    v = _snapshot_with(history_store, monkeypatch, f"v-{scan}-{chunks[0]}", scan=scan, event_chunk=chunks[0], text_chunk=chunks[1])
    back = v.to_polars()
    assert back.schema == pl.Schema(COMPARISONS_SCHEMA)
    assert back.equals(ref)
    assert v.hash == versions.content_hash(ref)
    v.verify(deep=True)


def test_read_paths_give_byte_identical_hashes_and_stats(history_store, monkeypatch):
    a = _snapshot_with(history_store, monkeypatch, "a", scan=True, event_chunk=5, text_chunk=2)
    b = _snapshot_with(history_store, monkeypatch, "b", scan=False, event_chunk=10**6, text_chunk=10**6)
    assert a.hash == b.hash and a.stats == b.stats
    assert a.to_polars().equals(b.to_polars())


def test_the_scan_keeps_only_the_texts_the_events_name(history_store, monkeypatch):
    # Candidates nobody labelled: in the tables, not in the version (nor in its file's dictionaries).
    history_store.add_candidates(pl.DataFrame({"prompt": ["unlabelled prompt"] * 3, "response": ["x", "y", "z"]}))
    v = _snapshot_with(history_store, monkeypatch, "v", scan=True, event_chunk=4, text_chunk=2)
    back = v.to_polars()
    assert back.equals(_reference(history_store))
    assert "unlabelled prompt" not in back["prompt"].to_list()
    import pyarrow.parquet as pq

    for col in ("response_a", "response_b"):
        stored = pq.read_table(v.path, columns=[col], read_dictionary=[col]).column(0)
        dictionary = set().union(*(chunk.dictionary.to_pylist() for chunk in stored.chunks))
        # the response columns share one dictionary: the responses the events name, and no other
        assert dictionary == set(back["response_a"].to_list()) | set(back["response_b"].to_list())
        assert not dictionary & {"x", "y", "z"}


def test_event_ids_with_gaps_are_read_row_by_row(history_store, monkeypatch):
    """SQLite numbers events max + 1, so a gap only comes from an id set by hand: such a chunk is
    read row by row (its ids cannot be inferred from its position)."""
    db = history_store.engine.url.database
    with sqlite3.connect(db) as con:
        row = con.execute("SELECT * FROM label_events ORDER BY event_id DESC LIMIT 1").fetchone()
        cols = [d[0] for d in con.execute("SELECT * FROM label_events LIMIT 0").description]
        new = dict(zip(cols, row))
        new.update(event_id=new["event_id"] + 50, client_token="by-hand", label="both_bad", kind="label", supersedes=new["event_id"])
        con.execute(f"INSERT INTO label_events ({', '.join(new)}) VALUES ({', '.join('?' * len(new))})", list(new.values()))
    ref = _reference(history_store)
    assert "both_bad" in ref.filter(pl.col("comparison_id") == new["comparison_id"])["label"].to_list()
    for chunk in (10**6, 4):
        v = _snapshot_with(history_store, monkeypatch, f"gap-{chunk}", scan=True, event_chunk=chunk, text_chunk=3)
        assert v.to_polars().equals(ref)
        assert v.watermark == new["event_id"]


def test_an_in_memory_store_reads_on_one_connection(tmp_path, monkeypatch):
    store = workbench.open(":memory:", files_dir=tmp_path / "files")
    try:
        store.add_comparisons(_awkward_frame())
        for scan in (True, False):
            v = _snapshot_with(store, monkeypatch, f"m-{scan}", scan=scan, event_chunk=4, text_chunk=2)
            assert v.to_polars().equals(_reference(store))
    finally:
        store.close()


def _wal_frames(db: str) -> int:
    with sqlite3.connect(db) as con:
        return con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[1]


def test_a_large_bulk_write_checkpoints_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setattr(bulk, "BACKGROUND_CHECKPOINT_CHANGES", 100)
    started = []
    real = bulk._checkpoint_in_background

    def spy(store):
        started.append(True)
        return real(store)

    monkeypatch.setattr(bulk, "_checkpoint_in_background", spy)
    db = str(tmp_path / "wb.db")
    store = workbench.open(db, files_dir=tmp_path / "files")
    frame = _awkward_frame(300)
    report = store.add_comparisons(frame)
    assert started == [True]
    # Committed and visible at once, from another connection, checkpoint or not.
    other = workbench.open(db, files_dir=tmp_path / "files")
    assert other.stats()["label_events"] == report.labels_added == 300
    store.wait_for_checkpoint()
    assert store._checkpoints == []
    with sqlite3.connect(db) as con:  # every page of the WAL is in the database file now
        busy, frames, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert busy == 0 and frames == done
        assert con.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    # The connection's own settings are back (automatic checkpoints on for its next user).
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
        assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
    v = store.snapshot("v")
    assert v.to_polars().equals(_reference(store))
    store.add_comparisons(frame)  # a re-import adds nothing, background or not
    store.close()  # waits for any checkpoint still running
    assert store._checkpoints == []
    other.close()


def test_a_small_bulk_write_checkpoints_at_once(tmp_path):
    db = str(tmp_path / "wb.db")
    store = workbench.open(db, files_dir=tmp_path / "files")
    store.add_comparisons(_awkward_frame(20))
    assert store._checkpoints == []
    with sqlite3.connect(db) as con:
        busy, frames, done = con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames == done
    store.close()


def test_a_bad_row_found_while_writing_stops_the_import(store, monkeypatch):
    """The check runs beside the writing; a bad row (here one the database would take) still
    stops the import with the error naming it, and nothing is written."""
    store.add_comparisons(_awkward_frame(10))
    before = store.stats()
    bad = _awkward_frame(40).with_columns(
        pl.when(pl.int_range(pl.len()) == 33).then(pl.lit(-5)).otherwise(pl.col("duration_ms")).alias("duration_ms"),
        pl.lit("other-annotator").alias("annotator_id"))
    with pytest.raises(InvalidRows, match="line 34: field 'duration_ms'") as err:
        store.add_comparisons(bad, chunk_rows=8)
    assert err.value.rejects["line"].to_list() == [34]
    assert store.stats() == before


def test_a_bad_row_that_breaks_the_writing_is_reported_as_a_bad_row(tmp_path, monkeypatch):
    """When the writing fails first (here a chunk's preparation raises on a missing prompt), the
    error is still the rejects' error, and nothing is written."""
    store = workbench.open(str(tmp_path / "wb.db"), files_dir=tmp_path / "files")
    frame = _awkward_frame(40).with_columns(
        pl.when(pl.int_range(pl.len()) == 5).then(pl.lit("z")).otherwise(pl.col("label")).alias("label"))
    real = bulk.write_chunk

    def boom(tx, frame, tables, import_id):
        raise RuntimeError("the database refused a row")

    monkeypatch.setattr(bulk, "write_chunk", boom)
    with pytest.raises(InvalidRows, match="line 6: field 'label'"):
        store.add_comparisons(frame, chunk_rows=8)
    monkeypatch.setattr(bulk, "write_chunk", real)
    assert store.stats()["label_events"] == 0
    report = store.add_comparisons(frame, chunk_rows=8, skip_invalid=True)
    assert report.labels_added == 39 and report.rejects["line"].to_list() == [6]
    store.close()


@pytest.mark.parametrize("n", [1, 2, 6, 7, 8, 13, 24])
def test_values_statements_write_every_row_once(tmp_path, monkeypatch, n):
    """Rows go to SQLite in INSERT ... VALUES statements of VALUES_ROWS rows and one for the
    rest: at and around the boundaries, every row is written once, with its values, and the
    counts of new rows are right (re-importing adds nothing)."""
    monkeypatch.setattr(bulk, "VALUES_ROWS", 3)
    store = workbench.open(str(tmp_path / "wb.db"), files_dir=tmp_path / "files")
    frame = _awkward_frame(n)
    report = store.add_comparisons(frame)
    assert report.labels_added == n
    assert store.stats()["label_events"] == n
    assert store.add_comparisons(frame).labels_added == 0
    assert store.live().equals(_reference(store))
    # The constant columns (bound once per statement, before the rows' values) are right too.
    events = store.events()
    assert set(events["source"]) == {"import"} and set(events["kind"]) == {"label"}
    rows = bulk.SqliteRows.of(pl.DataFrame({"a": list(range(n)), "b": ["x"] * n, "c": [str(i) for i in range(n)]}))
    batches = [(k, list(ps)) for k, ps in rows.batches()]
    assert [k for k, _ in batches] == ([3] if n >= 3 else []) + ([n % 3] if n % 3 else [])
    params = [p for _, ps in batches for p in ps]
    assert all(p[0] == "x" for p in params) if n > 1 else params == [(0, "x", "0")]
    assert sum(k * len(ps) for k, ps in batches) == n
    flat = [v for p in params for v in (p[1:] if n > 1 else p)]  # "b" is constant: bound first, once per statement
    assert flat == [v for i in range(n) for v in ((i, str(i)) if n > 1 else (i, "x", str(i)))]
    store.close()


def test_version_file_compresses_texts_with_zstd_and_the_rest_with_lz4(store):
    import pyarrow.parquet as pq

    store.add_comparisons(_awkward_frame(40))
    v = store.snapshot("v")
    meta = pq.ParquetFile(v.path).metadata
    rg = meta.row_group(0)
    codecs = {meta.schema.column(i).path: rg.column(i).compression for i in range(meta.num_columns)}
    for path, codec in codecs.items():
        expected = "ZSTD" if path.split(".")[0] in versions.ZSTD_COLUMNS else "LZ4"
        assert codec.upper().startswith(expected), (path, codec)
    assert v.to_polars().equals(_reference(store))


# -- string views over fetched bytes (ColumnQuery's "id" columns) ------------------------------

VIEW_VALUES = ["", "a", "x" * 12, "y" * 13, "c" + "0123456789abcdef" * 2, "é漢字☃ ünï", "z" * 300, "tie", "é" * 6, "é" * 7]


@pytest.mark.parametrize("values", [VIEW_VALUES, VIEW_VALUES[::-1], [""], ["only one long value, longer than twelve"], [""] * 5, []],
                         ids=["mixed", "reversed", "one-empty", "one-long", "all-empty", "none"])
def test_string_views_give_the_values_a_split_gives(values):
    data = bulk.US.join(values).encode("utf-8")
    arr = bulk.string_views(data, len(values))
    arr.validate(full=True)
    assert arr.to_pylist() == values
    got = pl.Series("v", arr, dtype=pl.String)
    split = pl.Series("v", [data.decode()], dtype=pl.String).str.split(bulk.US).explode() if values else pl.Series("v", [], dtype=pl.String)
    assert got.equals(split)
    # the views point into the fetched bytes: polars takes them as they are, and they survive the bytes' owner
    del data
    assert got.to_list() == values


@pytest.mark.parametrize("data, n, match", [
    (f"a{bulk.US}b{bulk.US}c".encode(), 2, "3 values for 2 rows"),  # a value held the separator
    (b"abc", 2, "1 values for 2 rows"),
    (b"abc", 0, "for no values"),
    (b"ok\x1f\xff\xfe not utf-8 at all", 2, "(?i)utf-?8"),
    (b"\xc3", 1, "(?i)utf-?8"),  # a value cut inside a character, inline (short)
])
def test_string_views_refuse_bad_bytes(data, n, match):
    with pytest.raises(ValueError, match=match):
        bulk.string_views(data, n)


def test_an_id_column_with_a_separator_falls_back_to_rows(tmp_path):
    """An id that holds the unit separator (only a row written by hand has one): the column-wise
    read of that chunk refuses it (ColumnReadError) and the snapshot reads the chunk row by row."""
    from workbench.bulk import ColumnQuery, ColumnReadError, transaction

    store = workbench.open(str(tmp_path / "wb.db"), files_dir=tmp_path / "files")
    store.add_comparisons(_awkward_frame(6))
    odd = f"c-by-hand{bulk.US}with a separator"
    with sqlite3.connect(store.engine.url.database) as con:
        row = con.execute("SELECT * FROM label_events ORDER BY event_id DESC LIMIT 1").fetchone()
        cols = [d[0] for d in con.execute("SELECT * FROM label_events LIMIT 0").description]
        new = dict(zip(cols, row))
        new.update(event_id=new["event_id"] + 1, client_token="by-hand", comparison_id=odd, label="tie")
        con.execute(f"INSERT INTO label_events ({', '.join(new)}) VALUES ({', '.join('?' * len(new))})", list(new.values()))
    q = ColumnQuery("FROM label_events WHERE event_id > ? AND event_id <= ?", (0, 100), {"comparison_id": ("comparison_id", "id")})
    with transaction(store, write=False) as tx:
        with pytest.raises(ColumnReadError, match="values for 7 rows"):
            tx.sqlite_columns(q)
    v = store.snapshot("v")
    back = v.to_polars()
    assert odd in back["comparison_id"].to_list() and back.height == 7
    assert back.equals(_reference(store))
    v.verify(deep=True)
    store.close()


def test_colliding_hashes_take_the_exact_paths(history_store, monkeypatch):
    """Distinct counts go by 64-bit hashes first (comparison ids, texts, the ids the events
    name); with every hash the same, the exact counts decide, and the version is the same."""
    a = _snapshot_with(history_store, monkeypatch, "a", scan=True, event_chunk=5, text_chunk=2)
    history_store.add_candidates(pl.DataFrame({"prompt": ["unlabelled prompt"] * 2, "response": ["x", "y"]}))
    monkeypatch.setattr(pl.Series, "hash", lambda self, *a, **k: pl.Series(self.name, [0] * len(self), dtype=pl.UInt64))
    assert versions._all_distinct(pl.Series(["a", "b"])) and not versions._all_distinct(pl.Series(["a", "a"]))
    b = _snapshot_with(history_store, monkeypatch, "b", scan=True, event_chunk=5, text_chunk=2)
    assert b.hash == a.hash and b.stats == a.stats
    assert b.to_polars().equals(a.to_polars()) and b.to_polars().equals(_reference(history_store))


def test_the_scan_keeps_every_text_when_the_events_name_them_all(tmp_path, monkeypatch):
    """An import's store: the events name every prompt and response, the scan keeps all of them
    (no filtering), and the version is the reference."""
    store = workbench.open(str(tmp_path / "wb.db"), files_dir=tmp_path / "files")
    store.add_comparisons(_awkward_frame(40))
    v = _snapshot_with(store, monkeypatch, "v", scan=True, event_chunk=7, text_chunk=3)
    assert v.stats["prompts"] == store.stats()["prompts"] and v.stats["responses"] == store.stats()["responses"]
    assert v.to_polars().equals(_reference(store))
    store.close()
