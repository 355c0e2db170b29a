"""The store on SQLite and PostgreSQL: entities, content-addressed ids, labels, bad input, faults."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest

from workbench import ids
from workbench.frames import InvalidRows
from workbench.store import NotFound, StoreError

REPO = Path(__file__).resolve().parents[2]


def pairs_frame(n: int = 6, *, prompts: int = 3, annotators: int = 2, seed: int = 0) -> pl.DataFrame:
    rows = []
    for i in range(n):
        p = i % prompts
        rows.append({
            "prompt": f"question {p}?",
            "response_a": f"answer {p}-{i % 4}",
            "model_a": f"m{i % 3}",
            "response_b": f"answer {p}-{(i % 4) + 10}",
            "model_b": None,
            "label": ["a", "b", "tie", "both_bad"][(i + seed) % 4],
            "annotator_id": f"ann{i % annotators}",
            "strength": None if i % 2 else 1.0,
            "duration_ms": 1000 + i,
            "shown_left": "a" if i % 2 else "b",
        })
    return pl.DataFrame(rows, schema_overrides={"model_b": pl.String, "strength": pl.Float64})


def table_counts(store) -> dict:
    s = store.stats()
    return {k: s[k] for k in ("prompts", "responses", "annotators", "label_events", "versions", "runs")}


@pytest.fixture
def seeded(store):
    p = store.add_prompt("What is 2+2?", category="math")
    a = store.add_response(p, "4", model="m1")
    b = store.add_response(p, "5", model="m2")
    store.add_annotator("alice")
    return store, p, a, b


# ------------------------------------------------------------------ entities and ids
def test_prompt_response_annotator_are_content_addressed(seeded):
    store, p, a, b = seeded
    assert store.add_prompt("What is 2+2?", category="math") == p
    assert store.add_response(p, "4", model="m1") == a
    assert store.add_response(p, "4", model="m2") != a  # same words from another model: another response
    assert p == ids.prompt_id_of(ids.prompt_key("What is 2+2?", None))
    assert a == ids.response_id_of(p, "4", "m1")
    msgs = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}, {"role": "user", "content": "2+2?"}]
    pm = store.add_prompt(msgs)
    assert pm == store.add_prompt([dict(m) for m in msgs]) and pm != p
    prompts = store.prompts()
    assert prompts.height == 2
    row = prompts.filter(pl.col("prompt_id") == pm).row(0, named=True)
    assert row["kind"] == "messages" and json.loads(row["messages"]) == msgs
    assert row["text"] == "User: hi\n\nAssistant: hello\n\nUser: 2+2?"
    assert store.responses(p).height == 3
    assert store.add_annotator("alice", name="Someone else") == "alice"
    assert store.annotator("alice")["name"] == "alice"  # an existing annotator is left as it is
    store.set_annotator("alice", name="Alice", role="admin")
    assert store.annotator("alice")["role"] == "admin"
    assert store.annotators()["annotator_id"].to_list() == ["alice"]


def test_bulk_ids_equal_single_ids(store):
    """add_comparisons and add_prompt/add_response give the same ids for the same content."""
    p = store.add_prompt("question 0?")
    a = store.add_response(p, "answer 0-0", model="m0")
    msgs = [{"role": "user", "content": "hello"}]
    pm = store.add_prompt(msgs)
    frame = pairs_frame(3, prompts=1)
    conv = pl.DataFrame({"prompt_messages": [json.dumps(msgs)], "response_a": ["x"], "response_b": ["y"], "label": ["a"]})
    store.add_comparisons(frame)
    store.add_comparisons(conv)
    assert set(store.prompts()["prompt_id"]) == {p, pm}
    assert a in set(store.responses()["response_id"])
    live = store.live()
    assert (live.filter(pl.col("prompt_id") == p)["response_a_id"] == a).any()


def test_importing_the_same_data_twice_adds_nothing(store):
    frame = pairs_frame(8)
    first = store.add_comparisons(frame)
    assert (first.labels_added, first.prompts_added, first.annotators_added) == (8, 3, 2)
    before = table_counts(store)
    again = store.add_comparisons(frame)
    assert (again.labels_added, again.prompts_added, again.responses_added, again.annotators_added) == (0, 0, 0, 0)
    assert table_counts(store) == before
    # Two identical votes in one input stay two votes (occurrence is part of the token).
    dup = pl.concat([pairs_frame(1), pairs_frame(1)])
    assert store.add_comparisons(dup).labels_added == 1  # the first is already there from `frame`
    assert store.stats()["label_events"] == 9


def test_add_comparisons_keeps_every_field(store):
    created = dt.datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=dt.timezone.utc)
    frame = pairs_frame(4).with_columns(
        pl.lit("why not").alias("rationale"), pl.lit(True).alias("gold"), pl.lit("simulated").alias("source"),
        pl.lit(created).alias("created_at"), pl.lit("news").alias("category"),
    )
    store.add_comparisons(frame)
    live = store.live().sort("duration_ms")
    assert live.height == 4
    assert live["label"].to_list() == frame["label"].to_list()
    assert live["strength"].to_list() == frame["strength"].to_list()
    assert live["shown_left"].to_list() == frame["shown_left"].to_list()
    assert live["model_a"].to_list() == frame["model_a"].to_list()
    assert live["model_b"].null_count() == 4
    assert live["response_a"].to_list() == frame["response_a"].to_list()
    assert set(live["rationale"]) == {"why not"} and live["gold"].all() and set(live["source"]) == {"simulated"}
    assert set(live["category"]) == {"news"}
    assert live["created_at"].to_list() == [created] * 4


# ------------------------------------------------------------------ labels
def test_add_label_idempotent_on_client_token(seeded):
    store, p, a, b = seeded
    r1 = store.add_label(p, a, b, "a", "alice", client_token="tok-1", strength=2.0, shown_left="b", duration_ms=1500)
    r2 = store.add_label(p, a, b, "a", "alice", client_token="tok-1", strength=2.0, shown_left="b", duration_ms=1500)
    assert r1.created and not r2.created and r1.event_id == r2.event_id and r1.comparison_id == r2.comparison_id
    assert store.stats()["label_events"] == 1
    with pytest.raises(StoreError, match="already used"):
        store.add_label(p, a, b, "b", "alice", client_token="tok-1")
    assert store.stats()["label_events"] == 1
    ev = store.events().row(0, named=True)
    assert (ev["label"], ev["strength"], ev["shown_left"], ev["duration_ms"], ev["source"]) == ("a", 2.0, "b", 1500, "human")
    assert ev["created_at"].tzinfo is not None


def test_add_comparisons_refuses_a_token_reused_for_another_label(seeded):
    store, p, a, b = seeded
    store.add_label(p, a, b, "a", "alice", client_token="tok-9")
    before = table_counts(store)
    frame = pairs_frame(2).with_columns(pl.Series("client_token", ["tok-9", "tok-10"]))
    with pytest.raises(StoreError, match="tok-9"):
        store.add_comparisons(frame)
    assert table_counts(store) == before
    # The same label under the same token is a harmless resubmission.
    same = pl.DataFrame({"prompt": ["What is 2+2?"], "response_a": ["4"], "model_a": ["m1"], "response_b": ["5"],
                         "model_b": ["m2"], "label": ["a"], "annotator_id": ["alice"], "client_token": ["tok-9"]})
    assert store.add_comparisons(same).labels_added == 0


def test_corrections_and_undo_are_superseding_events(seeded):
    store, p, a, b = seeded
    r = store.add_label(p, a, b, "a", "alice")
    v1 = store.snapshot("v1")
    c = store.correct(r.comparison_id, "b", "alice", strength=2.0)
    assert c.comparison_id == r.comparison_id and c.event_id > r.event_id
    live = store.live()
    assert live.height == 1 and live["label"][0] == "b" and live["strength"][0] == 2.0
    u = store.undo_last("alice")
    assert u is not None and u.comparison_id == r.comparison_id
    assert store.live().height == 0
    assert store.undo_last("alice") is None  # nothing live left to undo
    with pytest.raises(StoreError, match="already retracted"):
        store.retract(r.comparison_id, "alice")
    events = store.events()
    assert events["kind"].to_list() == ["label", "label", "retract"]
    assert events["supersedes"].to_list()[1:] == [r.event_id, c.event_id]
    # Nothing was updated in place: the first version still reads the first label.
    assert v1.to_polars()["label"].to_list() == ["a"]
    v2 = store.snapshot("v2")
    assert v2.n_comparisons == 0
    d = store.diff("v1", "v2")
    assert d["change"].to_list() == ["removed"]


def test_undo_last_with_client_token_is_idempotent(seeded):
    store, p, a, b = seeded
    r1 = store.add_label(p, a, b, "a", "alice")
    b2 = store.add_response(p, "22", model="m3")
    r2 = store.add_label(p, a, b2, "tie", "alice")
    u1 = store.undo_last("alice", client_token="undo-1")
    u2 = store.undo_last("alice", client_token="undo-1")
    assert u1.comparison_id == r2.comparison_id and u2.event_id == u1.event_id and not u2.created
    assert store.live()["comparison_id"].to_list() == [r1.comparison_id]


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(label="x"), ValueError, "label must be"),
    (dict(label=None), ValueError, "label must be"),
    (dict(strength=-1.0), ValueError, "strength"),
    (dict(strength=float("nan")), ValueError, "strength"),
    (dict(strength="2"), ValueError, "strength"),
    (dict(strength=True), ValueError, "strength"),
    (dict(shown_left="left"), ValueError, "shown_left"),
    (dict(source="robot"), ValueError, "source"),
    (dict(rationale="x" * 20_001), ValueError, "rationale"),
    (dict(rationale=5), ValueError, "rationale"),
    (dict(duration_ms=-5), ValueError, "duration_ms"),
    (dict(duration_ms=1.5), ValueError, "duration_ms"),
    (dict(client_token=""), ValueError, "client_token"),
    (dict(client_token="t" * 201), ValueError, "client_token"),
    (dict(annotator_id="nobody"), NotFound, "unknown annotator"),
    (dict(response_a_id="r000"), NotFound, "unknown response"),
    (dict(prompt_id="p000"), StoreError, "does not answer"),
    (dict(response_b_id="SAME"), ValueError, "two different responses"),
])
def test_add_label_rejects_bad_input_and_writes_nothing(seeded, kwargs, exc, match):
    store, p, a, b = seeded
    args = dict(prompt_id=p, response_a_id=a, response_b_id=b, label="a", annotator_id="alice")
    args.update(kwargs)
    if args["response_b_id"] == "SAME":
        args["response_b_id"] = args["response_a_id"]
    with pytest.raises(exc, match=match):
        store.add_label(**args)
    assert store.stats()["label_events"] == 0


def test_entity_methods_reject_bad_input(seeded):
    store, p, a, b = seeded
    before = table_counts(store)
    for bad in ("", "   ", [], [{"role": "wizard", "content": "x"}], [{"role": "user", "content": 5}], "ab", [1]):
        if bad == "ab":
            continue
        with pytest.raises(ValueError):
            store.add_prompt(bad)
    with pytest.raises(NotFound):
        store.add_response("p-nope", "text")
    with pytest.raises(ValueError):
        store.add_response(p, "")
    with pytest.raises(ValueError):
        store.add_annotator("")
    with pytest.raises(ValueError):
        store.add_annotator("x" * 201)
    with pytest.raises(ValueError):
        store.add_annotator("bob", role="god")
    with pytest.raises(NotFound):
        store.set_annotator("nobody", name="x")
    with pytest.raises(ValueError):
        store.set_annotator("alice", password="x")
    with pytest.raises(NotFound):
        store.correct("c-nope", "a", "alice")
    with pytest.raises(ValueError):
        store.correct("c-nope", "maybe", "alice")
    with pytest.raises(ValueError):
        store.correct("c-nope", "a", "alice", colour="red")
    with pytest.raises(NotFound):
        store.version("nope")
    with pytest.raises(NotFound):
        store.run("run_nope")
    assert table_counts(store) == before


def test_hostile_text_round_trips_exactly(seeded):
    store, p, a, b = seeded
    hostile = "'; DROP TABLE label_events; --\n<script>alert(1)</script> \u202e\U0001F600 \\N \"q\" \t,|"
    hp = store.add_prompt(hostile)
    ha = store.add_response(hp, hostile + " a", model="m'1")
    hb = store.add_response(hp, "x" * 200_000)
    store.add_label(hp, ha, hb, "a", "alice", rationale=hostile)
    frame = pl.DataFrame({"prompt": [hostile], "response_a": [hostile + " a"], "model_a": ["m'1"], "response_b": ["\\N"], "label": ["b"]})
    store.add_comparisons(frame)
    live = store.live()
    assert set(live["prompt"]) == {hostile}
    assert set(live["response_b"]) == {"x" * 200_000, "\\N"}
    assert live["rationale"].drop_nulls().to_list() == [hostile]
    assert live["prompt_id"].n_unique() == 1 and live["response_a_id"].n_unique() == 1


def test_add_comparisons_rejects_bad_rows_and_writes_nothing(store):
    store.add_comparisons(pairs_frame(2))
    before = table_counts(store)
    bad = pairs_frame(5).with_columns(pl.Series("label", ["a", "b", "sideways", "a", None]))
    with pytest.raises(InvalidRows) as info:
        store.add_comparisons(bad, path="votes.jsonl")
    msg = str(info.value)
    assert "votes.jsonl" in msg and "line 3" in msg and "label" in msg
    assert info.value.rejects["line"].to_list() == [3, 5]
    assert table_counts(store) == before
    for col, value in [("response_a", ""), ("response_b", "nul\x00byte"), ("prompt", None), ("strength", -2.0),
                       ("annotator_id", "a" * 300), ("shown_left", "middle"), ("duration_ms", -1)]:
        f = pairs_frame(3).with_columns(pl.Series(col, [value] * 3, dtype=pairs_frame(1).schema.get(col, pl.String)))
        with pytest.raises(InvalidRows):
            store.add_comparisons(f)
        assert table_counts(store) == before, col
    report = store.add_comparisons(bad, skip_invalid=True)
    assert report.labels_added == 1 and report.rows_rejected == 2  # valid rows 1, 2, 4; 1 and 2 already there
    assert report.rejects["line"].to_list() == [3, 5]


def test_add_comparisons_rejects_malformed_conversations(store):
    frame = pl.DataFrame({"prompt_messages": ['[{"role": "user", "content": "ok"}]', "not json", '[{"role": "alien", "content": "x"}]'],
                          "response_a": ["x", "y", "z"], "response_b": ["u", "v", "w"], "label": ["a", "a", "a"]})
    with pytest.raises(InvalidRows) as info:
        store.add_comparisons(frame)
    assert info.value.rejects["line"].to_list() == [2, 3]
    assert store.stats()["label_events"] == 0


def test_candidates_without_labels(store):
    frame = pl.DataFrame({"prompt": ["q1", "q1", "q2"], "response": ["a", "b", "c"], "model": ["m", "m", None],
                          "metadata": ['{"true_quality": 1.0}', '{"true_quality": 2.0}', None]})
    assert store.add_candidates(frame) == {"prompts": 2, "responses": 3}
    assert store.add_candidates(frame) == {"prompts": 0, "responses": 0}
    resp = store.responses()
    assert sorted(resp["text"].to_list()) == ["a", "b", "c"]
    assert json.loads(resp.filter(pl.col("text") == "b")["metadata"][0]) == {"true_quality": 2.0}
    with pytest.raises(ValueError, match="nothing was written"):
        store.add_candidates(pl.DataFrame({"prompt": ["q3", "q3"], "response": ["ok", ""]}))
    assert store.stats()["prompts"] == 2


# ------------------------------------------------------------------ settings and stats
def test_settings_and_stats(store):
    assert store.get_setting("missing", 7) == 7
    store.set_setting("assign", {"overlap": 3, "names": ["x"]})
    store.set_setting("assign", {"overlap": 4})
    assert store.get_setting("assign") == {"overlap": 4}
    store.add_comparisons(pairs_frame(6))
    s = store.stats()
    assert (s["prompts"], s["annotators"], s["label_events"], s["live_comparisons"]) == (3, 2, 6, 6)


def test_reopen_keeps_everything(store, open_store):
    store.add_comparisons(pairs_frame(4))
    v = store.snapshot("v1")
    store.close()
    again = open_store()
    assert again.version("v1").hash == v.hash
    assert again.stats()["label_events"] == 4


# ------------------------------------------------------------------ a killed import
KILLED_IMPORT = textwrap.dedent("""
    import sys, os, time
    import polars as pl
    import workbench
    from workbench import bulk
    store = workbench.open(sys.argv[1], files_dir=sys.argv[2])
    n = int(sys.argv[3])
    frame = pl.DataFrame({
        "prompt": [f"kill prompt {i % 500}" for i in range(n)],
        "response_a": [f"ra {i}" for i in range(n)], "response_b": [f"rb {i}" for i in range(n)],
        "label": ["a"] * n, "annotator_id": ["killer"] * n,
    })
    original = bulk.ArrowTransaction.insert_ignore
    def insert_then_wait(self, table, frame):
        count = original(self, table, frame)
        if table.name == "label_events":
            print("INSIDE", count, flush=True)  # the rows are written, the transaction is open
            time.sleep(60)
        return count
    bulk.ArrowTransaction.insert_ignore = insert_then_wait
    store.add_comparisons(frame)
""")


def test_killed_import_leaves_the_store_as_it_was(store, store_url, tmp_path):
    store.add_comparisons(pairs_frame(4))
    before = table_counts(store)
    live_before = store.live().sort("comparison_id")
    proc = subprocess.Popen(
        [sys.executable, "-c", KILLED_IMPORT, store_url, str(tmp_path / "files"), "20000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    try:
        line = proc.stdout.readline()
        assert line.startswith("INSIDE 20000"), line + proc.stderr.read()
        # While the import's transaction is open, nobody sees its rows.
        assert table_counts(store) == before
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    deadline = time.time() + 30
    while True:  # PostgreSQL notices the dropped connection and rolls back
        try:
            counts = table_counts(store)
            if counts == before or time.time() > deadline:
                break
        except Exception:  # noqa: BLE001 - a lock still held by the dying backend
            if time.time() > deadline:
                raise
        time.sleep(0.2)
    assert counts == before
    assert store.live().sort("comparison_id").equals(live_before)
    # The store still takes writes (no stale lock, no half-written rows).
    assert store.add_comparisons(pairs_frame(6, seed=1)).labels_added == 6


def test_public_transaction_commits_or_rolls_back(store):
    """`Store.transaction()`: what the UI's own tables use; an error inside leaves nothing."""
    import sqlalchemy as sa

    from workbench import schema

    with store.transaction() as conn:
        conn.execute(sa.insert(schema.meta).values(key="probe", value="1"))
    with pytest.raises(RuntimeError, match="boom"):
        with store.transaction() as conn:
            conn.execute(sa.update(schema.meta).where(schema.meta.c.key == "probe").values(value="2"))
            raise RuntimeError("boom")
    with store.transaction(write=False) as conn:
        assert conn.execute(sa.select(schema.meta.c.value).where(schema.meta.c.key == "probe")).scalar_one() == "1"


@pytest.mark.parametrize("call, match", [
    (lambda s, p: s.add_prompt("a\x00b"), "prompt contains a NUL"),
    (lambda s, p: s.add_prompt([{"role": "user", "content": "x"}, {"role": "assistant", "content": "\ud800"}]), "prompt contains"),
    (lambda s, p: s.add_prompt("fine", category="c\x00"), "category contains"),
    (lambda s, p: s.add_response(p, "r\x00"), "response text contains"),
    (lambda s, p: s.add_response(p, "ok", model="m\x00"), "model contains"),
    (lambda s, p: s.add_annotator("bo\x00b"), "annotator id contains"),
    (lambda s, p: s.add_annotator("bob", name="\udfff"), "annotator name contains"),
    (lambda s, p: s.set_annotator("alice", name="x\x00"), "annotator name contains"),
])
def test_entity_methods_refuse_unstorable_text(seeded, call, match):
    """A NUL (PostgreSQL's text cannot hold one: it raised a raw DataError) or a lone surrogate is
    refused with the same clear error on both databases, and nothing is written."""
    store, p, a, b = seeded
    before = table_counts(store)
    with pytest.raises(ValueError, match=match):
        call(store, p)
    assert table_counts(store) == before
    assert store.annotator("alice")["name"] == "alice"
