"""Versions on SQLite and PostgreSQL: naming, hashing, watermark, lineage, filters, reading, tampering."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from workbench.frames import COMPARISONS_SCHEMA, MESSAGES
from workbench.store import NotFound, StoreError
from workbench.versions import TamperedVersion, content_hash

from test_store import pairs_frame


def test_snapshot_reads_as_the_comparisons_table(store):
    store.add_comparisons(pairs_frame(6))
    v = store.snapshot("v1", description="first")
    frame = v.to_polars()
    assert frame.schema == pl.Schema(COMPARISONS_SCHEMA)
    assert frame.height == v.n_comparisons == 6
    assert frame["prompt_messages"].dtype == MESSAGES
    assert frame["prompt_messages"][0].to_list() == [{"role": "user", "content": frame["prompt"][0]}]
    assert v.stats["labels"] == {"a": 2, "b": 2, "tie": 1, "both_bad": 1}
    assert (v.stats["prompts"], v.stats["annotators"]) == (3, 2)
    pdf = v.to_pandas()
    assert list(pdf.columns) == list(COMPARISONS_SCHEMA) and len(pdf) == 6
    assert str(pdf["created_at"].dt.tz) == "UTC"
    ds = v.to_datasets()
    assert ds.num_rows == 6 and ds.column_names == list(COMPARISONS_SCHEMA)
    assert ds[0]["prompt_messages"] == [{"role": "user", "content": ds[0]["prompt"]}]
    assert store.versions()["name"].to_list() == ["v1"]
    assert store.version(v.hash).name == "v1" and store.version(v.hash[:10]).name == "v1"


def test_names_are_never_reused_and_lineage_is_kept(store):
    store.add_comparisons(pairs_frame(4))
    v1 = store.snapshot("v1")
    with pytest.raises(StoreError, match="never reused"):
        store.snapshot("v1")
    for bad in ("", "has space", "../etc", "x" * 129, "-lead"):
        with pytest.raises(ValueError):
            store.snapshot(bad)
    v2 = store.snapshot("v2")
    assert v2.parent == "v1" and v1.parent is None
    assert v2.hash == v1.hash and v2.watermark == v1.watermark  # same events, same hash
    assert store.diff("v1", "v2").height == 0
    store.add_comparisons(pairs_frame(6, seed=1).tail(2))
    v3 = store.snapshot("v3")
    assert v3.hash != v1.hash and v3.watermark > v1.watermark and v3.n_comparisons == 6
    assert store.diff("v1", "v3")["change"].to_list() == ["added", "added"]
    assert store.versions()["name"].to_list() == ["v1", "v2", "v3"]


def test_same_events_give_the_same_hash_across_stores(open_store, store):
    created = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    frame = pairs_frame(6).with_columns(pl.lit(created).alias("created_at"))
    store.add_comparisons(frame)
    h1 = store.snapshot("a").hash
    import tempfile

    import workbench

    with tempfile.TemporaryDirectory() as d:
        other = workbench.open(d + "/other.db", files_dir=d + "/files")
        other.add_comparisons(frame.reverse())  # other order, other backend maybe
        assert other.snapshot("b").hash == h1
        other.close()
    assert content_hash(store.version("a").to_polars().sample(fraction=1.0, shuffle=True, seed=3)) == h1


def test_watermark_and_filters(store):
    store.add_comparisons(pairs_frame(6))
    store.add_annotator("carol")
    human = store.add_label(*_first_pair(store), "tie", "carol")
    v = store.snapshot("only-import", sources=["import"], exclude_annotators=["ann1"])
    frame = v.to_polars()
    assert set(frame["source"]) == {"import"} and "ann1" not in set(frame["annotator_id"])
    assert frame.height == 3
    assert v.filters == {"exclude_annotators": ["ann1"], "sources": ["import"]}
    assert v.watermark == human.event_id
    full = store.snapshot("full")
    assert full.n_comparisons == 7 and full.filters == {"exclude_annotators": [], "sources": None}


def _first_pair(store):
    live = store.live().row(0, named=True)
    return live["prompt_id"], live["response_a_id"], live["response_b_id"]


def test_empty_store_snapshot(store):
    v = store.snapshot("empty")
    assert v.n_comparisons == 0 and v.to_polars().schema == pl.Schema(COMPARISONS_SCHEMA)
    v.verify(deep=True)


def test_tampered_parquet_is_refused(store):
    store.add_comparisons(pairs_frame(6))
    v = store.snapshot("v1")
    v.verify(deep=True)
    frame = v.to_polars()
    # Rewrite the file with one label changed.
    frame.with_columns(pl.when(pl.col("label") == "a").then(pl.lit("b")).otherwise(pl.col("label")).alias("label")).write_parquet(v.path)
    again = store.version("v1")
    with pytest.raises(TamperedVersion, match="does not match"):
        again.to_polars()
    with pytest.raises(TamperedVersion):
        again.verify(deep=True)
    v.path.write_bytes(b"garbage")
    with pytest.raises(TamperedVersion):
        store.version("v1").to_polars()
    v.path.unlink()
    with pytest.raises(TamperedVersion, match="missing"):
        store.version("v1").to_polars()


def test_version_refs(store):
    store.add_comparisons(pairs_frame(2))
    store.snapshot("v1")
    with pytest.raises(NotFound):
        store.version("v9")
    with pytest.raises(NotFound):
        store.version("abcdef0123")
