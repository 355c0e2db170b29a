"""The snapshot's fast paths give what a plain row-by-row reading of the events gives.

The reference here is independent of ``workbench.versions``: the raw events
(``store.events()``, read row by row through SQLAlchemy), resolved in a few lines of polars
(latest event per comparison, retracted comparisons dropped) and joined with the prompts and
responses tables.
"""

from __future__ import annotations

import datetime as dt
import json

import polars as pl
import pyarrow.parquet as pq
import pytest

import workbench

from workbench import versions
from workbench.bulk import US, ColumnQuery, ColumnReadError, transaction
from workbench.frames import COMPARISONS_SCHEMA, MESSAGES
from workbench.versions import HASH_COLUMNS, content_hash

AWKWARD_FLOATS = [0.1 + 0.2, 1 / 3, 0.42197902746585503, 752473.8530383171, 2.0, 1e-300, 0.0]


def _awkward_frame(n: int = 30) -> pl.DataFrame:
    """Values that a column-wise read could get wrong: separators, newlines, quotes, unicode,
    empty texts, nulls, floats that 15 digits do not round-trip, chat prompts."""
    rows = []
    for i in range(n):
        chat = i % 4 == 0
        rows.append({
            "prompt": None if chat else f"prompt {i % 5}\nline two, 'quoted' \"double\" {US} unit-sep é漢字",
            "prompt_messages": json.dumps([{"role": "system", "content": f"sys{US}\n"}, {"role": "user", "content": f"q {i % 3} ✓"}]) if chat else None,
            "category": None if i % 3 else f"cat,{i % 2}\n",
            "response_a": f"answer {i % 6}{US}," + "x" * (i % 4), "model_a": None if i % 5 == 0 else f"m{i % 2}\t",
            "response_b": f"answer {(i % 6) + 1}", "model_b": "m1",
            "label": ["a", "b", "tie", "both_bad"][i % 4],
            "strength": None if i % 2 else AWKWARD_FLOATS[i % len(AWKWARD_FLOATS)],
            "annotator_id": ["ann-0", "ann,1\n", "ännotator ☃"][i % 3],
            "shown_left": ["a", "b", None][i % 3],
            "rationale": [None, "", f"because{US}\n,'\"", "ok"][i % 4],
            "duration_ms": None if i % 7 == 0 else 100 * i,
        })
    return pl.DataFrame(rows, schema_overrides={"strength": pl.Float64})


def _reference(store) -> pl.DataFrame:
    """The comparisons table from the raw events, resolved without workbench.versions."""
    events = store.events()
    latest = events.sort("event_id").unique(subset="comparison_id", keep="last")
    live = latest.filter(pl.col("kind") == "label")
    prompts = store.prompts().select(
        "prompt_id", pl.col("text").alias("prompt"), "category",
        pl.when(pl.col("messages").is_null())
        .then(pl.concat_list(pl.struct(pl.lit("user").alias("role"), pl.col("text").alias("content"))))
        .otherwise(pl.col("messages").str.json_decode(MESSAGES)).alias("prompt_messages"),
    )
    responses = store.responses().select("response_id", "text", "model")
    out = (
        live.join(prompts, on="prompt_id", how="left")
        .join(responses.rename({"response_id": "response_a_id", "text": "response_a", "model": "model_a"}), on="response_a_id", how="left")
        .join(responses.rename({"response_id": "response_b_id", "text": "response_b", "model": "model_b"}), on="response_b_id", how="left")
    )
    return out.select([pl.col(c).cast(t) for c, t in COMPARISONS_SCHEMA.items()]).sort("created_at", "comparison_id")


def _with_history(store) -> None:
    """Corrections, a retraction, a correction of a correction, and a label added by hand."""
    store.add_comparisons(_awkward_frame())
    live = store.live()
    ids = live["comparison_id"].to_list()
    store.correct(ids[0], "tie", "ann-0", strength=0.1 + 0.2, rationale=f"fixed{US}")
    store.correct(ids[0], "b", "ann-0")
    store.retract(ids[1], "ann-0")
    store.correct(ids[2], "both_bad", "ann-0", shown_left="a")
    store.retract(ids[2], "ann-0")
    row = live.row(3, named=True)
    store.add_label(row["prompt_id"], row["response_a_id"], row["response_b_id"], "a", "ann-0", strength=1 / 3, rationale="by hand")


@pytest.fixture
def small_chunks(monkeypatch):
    """Chunks of a few rows, so that chunk boundaries fall inside the data."""
    monkeypatch.setattr(versions, "EVENT_CHUNK", 7)
    monkeypatch.setattr(versions, "TEXT_CHUNK", 4)


@pytest.mark.parametrize("chunks", ["one", "many"])
def test_snapshot_equals_a_row_by_row_resolution(store, request, chunks):
    if chunks == "many":
        request.getfixturevalue("small_chunks")
    _with_history(store)
    v = store.snapshot("v")
    back = v.to_polars()
    ref = _reference(store)
    assert back.schema == pl.Schema(COMPARISONS_SCHEMA)
    assert back.height == ref.height == 30 + 1 - 2  # two retracted, one added by hand
    assert back.equals(ref)
    assert back.equals(store.live())
    # Exact floats (SQLite's 15-digit text would give 0.3 here), and the correction won.
    first = back.filter(pl.col("strength") == 0.1 + 0.2)
    assert first.height == 0 or first["label"].to_list() != ["tie"]
    assert set(back["strength"].drop_nulls().to_list()) <= set(AWKWARD_FLOATS) | {1 / 3}
    assert "" in back["rationale"].to_list() and None in back["rationale"].to_list()
    v.verify(deep=True)
    assert v.stats == versions.frame_stats(ref)


def test_column_reader_round_trips_every_value(tmp_path):
    store = workbench.open(str(tmp_path / "wb.db"))  # the column-wise reader is SQLite's
    _with_history(store)
    with transaction(store, write=False) as tx:
        fast = versions._read_events(tx, versions.current_watermark(store))
    raw = store.events().sort("event_id")
    assert fast.height == raw.height
    for c in ["kind", *HASH_COLUMNS]:
        assert fast[c].cast(COMPARISONS_SCHEMA.get(c, pl.String)).equals(raw[c].cast(COMPARISONS_SCHEMA.get(c, pl.String)), check_names=False), c


def test_column_reader_refuses_a_separator_and_falls_back(tmp_path):
    store = workbench.open(str(tmp_path / "wb.db"))  # the column-wise reader is SQLite's
    store.add_comparisons(_awkward_frame(6).with_columns(pl.lit(f"odd{US}annotator").alias("annotator_id")))
    q = ColumnQuery("FROM label_events WHERE event_id > ? AND event_id <= ?", (0, 100), {"annotator_id": ("annotator_id", "token")})
    with transaction(store, write=False) as tx:
        with pytest.raises(ColumnReadError, match="values for 6 rows"):
            tx.sqlite_columns(q)
        text, _ = tx.sqlite_columns(ColumnQuery(q.sql.split(" FROM ", 1)[0] and "FROM label_events", (), {"annotator_id": ("annotator_id", "text")}))
    assert text["annotator_id"].to_list() == [f"odd{US}annotator"] * 6
    v = store.snapshot("v")  # the event read falls back to rows for that chunk
    assert v.to_polars()["annotator_id"].to_list() == [f"odd{US}annotator"] * 6
    assert v.to_polars().equals(_reference(store))


def test_hash_is_a_function_of_the_content(store):
    store.add_comparisons(_awkward_frame())
    v = store.snapshot("v")
    frame = v.to_polars()
    assert content_hash(frame) == v.hash
    assert content_hash(frame.reverse()) == v.hash  # any row order
    assert content_hash(frame.drop("prompt", "response_a")) == v.hash  # texts are covered by their ids
    i = frame["rationale"].is_null().arg_true()[0]
    changed = [
        frame.with_columns(pl.when(pl.int_range(pl.len()) == i).then(pl.lit("")).otherwise(pl.col("rationale")).alias("rationale")),  # null -> ""
        frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.col("strength").fill_null(0.0) + 1e-12).otherwise(pl.col("strength")).alias("strength")),
        frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.col("created_at") + pl.duration(microseconds=1)).otherwise(pl.col("created_at")).alias("created_at")),
        frame.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(~pl.col("gold")).otherwise(pl.col("gold")).alias("gold")),
        frame.head(frame.height - 1),
    ]
    hashes = {content_hash(f) for f in changed}
    assert len(hashes) == len(changed) and v.hash not in hashes


def test_version_file_keeps_texts_once_and_statistics_off_the_texts(store):
    store.add_comparisons(_awkward_frame(60))
    v = store.snapshot("v")
    meta = pq.ParquetFile(v.path).metadata
    paths = [meta.schema.column(i).path for i in range(meta.num_columns)]
    rg = meta.row_group(0)
    for text in ("prompt", "response_a", "response_b", "prompt_messages.list.element.content"):
        col = rg.column(paths.index(text))
        assert any("DICTIONARY" in e for e in col.encodings), text
        assert not col.is_stats_set, text
    assert rg.column(paths.index("label")).is_stats_set
    assert not pq.read_schema(v.path).metadata or b"ARROW:schema" not in pq.read_schema(v.path).metadata
    assert pq.read_table(v.path).schema.field("response_a").type in ("string", "large_string")


def test_bulk_digests_equal_the_single_row_ids():
    from workbench import ids

    keys = ["plain", "", "ünïcödé ☃ 漢字", f"a{ids.SEP}b", "\n\t'\"", "x" * 10_000]
    assert ids.digest_series(pl.Series(keys), "r").to_list() == ["r" + ids._digest(k) for k in keys]
    assert ids.digest_keys(keys, "c") == ["c" + ids._digest(k) for k in keys]
    assert ids.digest_series(pl.Series([f"p{ids.SEP}m{ids.SEP}t"]), "r").item() == ids.response_id_of("p", "t", "m")


def _hash_by_definition(frame: pl.DataFrame) -> str:
    """The content hash written out value by value from its definition (no polars or Arrow
    buffers): rows by (created_at, comparison_id); per column its name, then for a text the
    byte length of each value (-1 for null) and the values' bytes, for a number, time or flag a
    null byte per row and each value as a little-endian 64-bit number (null as 0)."""
    import hashlib
    import struct

    rows = sorted(frame.select(HASH_COLUMNS).iter_rows(named=True), key=lambda r: (r["created_at"], r["comparison_id"]))
    h = hashlib.sha256(b"workbench-comparisons-v2\n" + len(rows).to_bytes(8, "little"))
    for name in HASH_COLUMNS:
        h.update(name.encode() + b"\n")
        values = [r[name] for r in rows]
        dtype = frame.schema[name]
        if dtype == pl.String:
            h.update(b"".join(struct.pack("<q", -1 if v is None else len(v.encode())) for v in values))
            h.update(b"".join(v.encode() for v in values if v is not None))
            continue
        h.update(bytes(v is None for v in values))
        if dtype == pl.Float64:
            h.update(b"".join(struct.pack("<d", 0.0 if v is None else v + 0.0) for v in values))
        elif isinstance(dtype, pl.Datetime):
            epoch = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
            h.update(b"".join(struct.pack("<q", 0 if v is None else (v - epoch) // dt.timedelta(microseconds=1)) for v in values))
        else:
            h.update(b"".join(struct.pack("<q", 0 if v is None else int(v)) for v in values))
    return h.hexdigest()


@pytest.mark.parametrize("block", [1, 3, 64, 1 << 16])
def test_the_hash_is_its_definition_over_blocks_and_chunks(store, monkeypatch, block):
    """Text columns are hashed a block of values at a time (a snapshot reads its id columns
    from the dictionaries it writes); any block size, any chunking of the columns and null
    texts give the hash its definition gives."""
    store.add_comparisons(_awkward_frame(45))
    monkeypatch.setattr(versions, "HASH_BLOCK", block)
    v = store.snapshot("v")  # its hash read the ids from the table's dictionaries, a block at a time
    frame = v.to_polars()
    assert frame["rationale"].null_count() and frame["rationale"].is_not_null().any()
    chunked = pl.concat([frame.slice(0, 7), frame.slice(7, 20), frame.slice(27)], rechunk=False)
    assert chunked["comparison_id"].n_chunks() == 3
    expected = _hash_by_definition(frame)
    assert v.hash == expected
    assert content_hash(frame) == content_hash(chunked) == content_hash(chunked.reverse()) == expected
