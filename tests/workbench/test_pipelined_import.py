"""The chunked (pipelined) SQLite import: the same store as the one-piece import, one transaction.

``Store.add_comparisons(frame, chunk_rows=k)`` splits a SQLite import by prompt into chunks of
about ``k`` rows and prepares chunk i+1 in a worker thread while chunk i is inserted
(``workbench.bulk.write_pipelined``). These tests force small chunks and compare with the
one-piece path, inject failures in either thread and kill the process between chunks.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading

import polars as pl
import pytest

import workbench
from workbench import bulk
from workbench.frames import InvalidRows
from workbench.store import StoreError

ONE_PIECE = 10**9  # chunk_rows that never splits


def frame_with_everything(n: int = 3000, seed: int = 0, tag: str = "") -> pl.DataFrame:
    """Text and chat prompts (one of them a one-user-message chat equal to a text prompt), repeated
    identical votes far apart in the input, given client tokens, strengths, ties, timestamps.
    Frames with different ``tag``s share no prompt."""
    import random

    rng = random.Random(seed)
    chat = json.dumps([{"role": "system", "content": "be brief"}, {"role": "user", "content": f"{tag}chat prompt"}])
    same_as_text = json.dumps([{"role": "user", "content": f"{tag}prompt 3"}])
    rows = []
    t0 = dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)
    for i in range(n):
        p = rng.randrange(40)
        msgs = chat if p == 0 else same_as_text if p == 1 else None
        a, b = rng.sample(range(4), 2)
        rows.append({
            "prompt": None if msgs else f"{tag}prompt {p}", "prompt_messages": msgs,
            "response_a": f"answer {a} to {p}", "model_a": f"m{a}",
            "response_b": f"answer {b} to {p}", "model_b": f"m{b}",
            "label": rng.choice(["a", "b", "tie", "both_bad"]), "strength": rng.choice([None, 1.0, 2.0]),
            "annotator_id": f"ann{rng.randrange(5)}", "shown_left": rng.choice(["a", "b", None]),
            "duration_ms": rng.randrange(100, 5000), "created_at": t0 + dt.timedelta(seconds=i),
            "client_token": f"given-{seed}-{i}" if i % 97 == 0 else None,
        })
    # The same vote at the start and near the end: two labels, numbered 0 and 1 in both paths.
    rows[-5] = {**rows[2], "created_at": rows[-5]["created_at"], "client_token": None}
    rows[2] = {**rows[2], "client_token": None}
    return pl.DataFrame(rows, schema_overrides={"created_at": pl.Datetime("us", "UTC"), "strength": pl.Float64})


def contents(store: workbench.Store) -> dict:
    """Every stored row that an import writes, in key order, without the per-import values
    (``event_id`` order, ``import_id``, the annotators' ``created_at``)."""
    events = store.events().drop("event_id", "supersedes").sort("comparison_id")
    return {
        "prompts": store.prompts().sort("prompt_id").to_dicts(),
        "responses": store.responses().sort("response_id").to_dicts(),
        "annotators": store.annotators().drop("created_at").sort("annotator_id").to_dicts(),
        "events": events.to_dicts(),
    }


@pytest.fixture
def two_stores(tmp_path):
    one = workbench.open(tmp_path / "one.db", files_dir=tmp_path / "f1")
    chunked = workbench.open(tmp_path / "chunked.db", files_dir=tmp_path / "f2")
    yield one, chunked
    one.close()
    chunked.close()


def count_chunks(monkeypatch) -> list:
    seen: list = []
    real = bulk.write_chunk

    def spy(tx, frame, tables, import_id):
        seen.append(frame.height)
        return real(tx, frame, tables, import_id)

    monkeypatch.setattr(bulk, "write_chunk", spy)
    return seen


def test_the_chunked_import_writes_what_the_one_piece_import_writes(two_stores, monkeypatch):
    one, chunked = two_stores
    frame = frame_with_everything()
    chunks = count_chunks(monkeypatch)
    r1 = one.add_comparisons(frame, chunk_rows=ONE_PIECE)
    assert chunks == []
    r2 = chunked.add_comparisons(frame, chunk_rows=300)
    assert len(chunks) >= 5 and sum(chunks) == frame.height  # really in chunks, every row once
    assert (r1.labels_added, r1.prompts_added, r1.responses_added, r1.annotators_added) == \
           (r2.labels_added, r2.prompts_added, r2.responses_added, r2.annotators_added)
    assert r2.labels_added == frame.height
    assert contents(one) == contents(chunked)
    # The same snapshot, hash included; the single-row path finds the chunked path's ids.
    assert one.snapshot("v").hash == chunked.snapshot("v").hash
    row = frame.row(2, named=True)
    pid = chunked.add_prompt(row["prompt"])
    rid = chunked.add_response(pid, row["response_a"], model=row["model_a"])
    events = chunked.events()
    assert events.filter(pl.col("prompt_id") == pid).height > 0
    assert events.filter(pl.col("response_a_id") == rid).height > 0
    given = frame.filter(pl.col("client_token").is_not_null()).height
    assert events.filter(~pl.col("client_token").str.starts_with("imp:")).height == given
    # Re-importing, chunked, adds nothing.
    again = chunked.add_comparisons(frame, chunk_rows=300)
    assert (again.labels_added, again.prompts_added, again.responses_added) == (0, 0, 0)
    assert chunked.stats()["label_events"] == frame.height


def test_chunked_rejects_equal_the_one_piece_rejects(two_stores, tmp_path):
    one, chunked = two_stores
    frame = frame_with_everything(2000, seed=1)
    bad = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 1700).then(pl.lit("nope")).otherwise(pl.col("label")).alias("label"),
        pl.when(pl.int_range(pl.len()) == 1800).then(pl.lit("[{\"role\": \"robot\", \"content\": \"x\"}]"))
        .otherwise(pl.col("prompt_messages")).alias("prompt_messages"),
        pl.when(pl.int_range(pl.len()).is_in([1900, 1950])).then(pl.lit("dup-token"))
        .otherwise(pl.col("client_token")).alias("client_token"),
    )
    for store, rows in ((one, ONE_PIECE), (chunked, 200)):
        with pytest.raises(InvalidRows):
            store.add_comparisons(bad, chunk_rows=rows)
        assert store.stats()["label_events"] == 0
        assert store.prompts().height == 0
    r1 = one.add_comparisons(bad, skip_invalid=True, chunk_rows=ONE_PIECE)
    r2 = chunked.add_comparisons(bad, skip_invalid=True, chunk_rows=200)
    assert r1.rejects.to_dicts() == r2.rejects.to_dicts()
    assert r2.rejects["line"].to_list() == [1701, 1801, 1951]
    assert r1.labels_added == r2.labels_added == 2000 - 3
    assert contents(one) == contents(chunked)


def test_postgresql_and_small_frames_are_written_in_one_piece(tmp_path):
    store = workbench.open(tmp_path / "w.db")
    frame = bulk.canonical_prompts(workbench.frames.to_input_frame({"prompt": ["p"] * 10}))[0]
    assert bulk.plan_chunks(store, frame, 5) == 2
    assert bulk.plan_chunks(store, frame, 6) == 1  # fewer than two chunks' rows
    imp = frame.with_columns(pl.lit("imp:0123").alias("client_token"))
    assert bulk.plan_chunks(store, imp, 5) == 1  # a given token that looks like an import's own
    with pytest.raises(ValueError, match="chunk_rows"):
        bulk.plan_chunks(store, frame, 0)

    class FakePg:
        dialect = "postgresql"

    assert bulk.plan_chunks(FakePg(), frame, 5) == 1  # type: ignore[arg-type]
    store.close()


def _state(store) -> tuple:
    return store.stats(), store.events().to_dicts(), store.prompts().to_dicts(), store.responses().height


def _no_worker_left() -> bool:
    return not any(t.name == "workbench-import-prepare" for t in threading.enumerate())


def test_an_error_in_the_worker_thread_rolls_the_whole_import_back(tmp_path, monkeypatch):
    store = workbench.open(tmp_path / "w.db")
    store.add_comparisons(frame_with_everything(500, seed=2, tag="seed "))
    before = _state(store)
    real = bulk.attach_ids
    calls = []

    def fail_on_the_fourth_chunk(frame):
        calls.append(frame.height)
        if len(calls) == 4:
            raise RuntimeError("injected failure in the worker")
        return real(frame)

    monkeypatch.setattr(bulk, "attach_ids", fail_on_the_fourth_chunk)
    written = count_chunks(monkeypatch)
    with pytest.raises(RuntimeError, match="injected failure in the worker"):
        store.add_comparisons(frame_with_everything(3000, seed=3), chunk_rows=300)
    assert len(written) >= 2  # chunks were inserted before the failure ...
    assert _state(store) == before  # ... and rolled back with everything else
    assert _no_worker_left()
    monkeypatch.undo()
    assert store.add_comparisons(frame_with_everything(3000, seed=3), chunk_rows=300).labels_added == 3000
    store.close()


def test_an_error_in_the_writing_thread_stops_the_worker_and_rolls_back(tmp_path, monkeypatch):
    store = workbench.open(tmp_path / "w.db")
    before = _state(store)
    real = bulk.write_chunk
    seen = []

    def fail_on_the_third_chunk(tx, frame, tables, import_id):
        seen.append(frame.height)
        if len(seen) == 3:
            raise KeyboardInterrupt  # as Ctrl-C would, between two chunks
        return real(tx, frame, tables, import_id)

    monkeypatch.setattr(bulk, "write_chunk", fail_on_the_third_chunk)
    with pytest.raises(KeyboardInterrupt):
        store.add_comparisons(frame_with_everything(3000, seed=4), chunk_rows=300)
    assert _state(store) == before
    assert _no_worker_left()
    store.close()


def test_a_row_the_database_refuses_in_a_late_chunk_rolls_everything_back(tmp_path):
    """A given client token already used for another label: found only when its chunk is inserted."""
    store = workbench.open(tmp_path / "w.db")
    pid = store.add_prompt("unrelated prompt")
    a, b = store.add_response(pid, "x"), store.add_response(pid, "y")
    store.add_annotator("someone")
    store.add_label(pid, a, b, "a", "someone", client_token="taken")
    before = _state(store)
    frame = frame_with_everything(3000, seed=5)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 2990).then(pl.lit("taken")).otherwise(pl.col("client_token")).alias("client_token"))
    written = []
    real = bulk.write_chunk
    bulk.write_chunk = lambda *args: written.append(1) or real(*args)  # type: ignore[assignment]
    try:
        with pytest.raises(StoreError, match="'taken' was already used"):
            store.add_comparisons(frame, chunk_rows=300)
    finally:
        bulk.write_chunk = real  # type: ignore[assignment]
    assert len(written) >= 2
    assert _state(store) == before
    assert _no_worker_left()
    store.close()


KILL_BETWEEN_CHUNKS = textwrap.dedent("""
    import sys, time
    import workbench, workbench.bulk as bulk
    sys.path.insert(0, sys.argv[3])
    from test_pipelined_import import frame_with_everything

    # Pause inside the import's transaction after its third chunk is inserted.
    real, done = bulk.write_chunk, []
    def hold(*args, **kwargs):
        out = real(*args, **kwargs)
        done.append(out["labels"])
        if len(done) == 3:
            print("WRITTEN", sum(done), flush=True)
            time.sleep(60)
        return out
    bulk.write_chunk = hold
    s = workbench.open(sys.argv[1])
    s.add_comparisons(frame_with_everything(int(sys.argv[2]), seed=6), chunk_rows=300)
""")


def test_a_process_killed_between_chunks_leaves_the_store_as_it_was(tmp_path):
    db = tmp_path / "w.db"
    store = workbench.open(db)
    store.add_comparisons(frame_with_everything(400, seed=7, tag="seed "))
    before = _state(store)
    store.close()
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_BETWEEN_CHUNKS)
    here = os.path.dirname(__file__)
    proc = subprocess.Popen([sys.executable, str(script), str(db), "3000", here],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("WRITTEN"), proc.stderr.read()  # type: ignore[union-attr]
        assert int(line.split()[1]) > 0  # labels were inserted, inside the open transaction
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    again = workbench.open(db)
    assert _state(again) == before
    assert again.add_comparisons(frame_with_everything(3000, seed=6), chunk_rows=300).labels_added == 3000
    again.close()


def test_a_chunked_import_leaves_its_events_in_a_versions_file_order(tmp_path, monkeypatch):
    """Rows without a time get one per chunk, a microsecond apart, and each chunk's events go in
    comparison-id order: read in event order they are in a version's file order
    (created_at, comparison_id), so a snapshot sorts nothing."""
    from workbench import versions

    store = workbench.open(tmp_path / "wb.db", files_dir=tmp_path / "files")
    frame = frame_with_everything().drop("created_at")
    chunks = count_chunks(monkeypatch)
    store.add_comparisons(frame, chunk_rows=300)
    assert len(chunks) >= 5
    events = store.events().sort("event_id")
    stamps = events["created_at"].unique().sort()
    assert len(stamps) == len(chunks)
    assert stamps.diff().drop_nulls().to_list() == [dt.timedelta(microseconds=1)] * (len(chunks) - 1)
    assert versions._in_file_order(events)
    sorts = []
    real = versions._file_order
    monkeypatch.setattr(versions, "_file_order", lambda f: sorts.append(f.height) or real(f))
    v = store.snapshot("v")
    assert sorts == []
    rows = v.to_polars()
    assert rows.equals(rows.sort("created_at", "comparison_id")) and rows.height == frame.height
    v.verify(deep=True)
    store.close()
