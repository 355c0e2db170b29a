"""The fast bulk paths give what the plain ones give: version files, response ids, checks, connections."""

from __future__ import annotations

import json

import polars as pl
import pyarrow.parquet as pq
import pytest

from workbench import bulk, ids
from workbench.frames import COMPARISONS_SCHEMA, find_invalid, to_input_frame

from test_store import pairs_frame


def _mixed_frame(n: int = 40) -> pl.DataFrame:
    """Text and chat prompts, a response shown by two models, missing models, several annotators."""
    rows = []
    for i in range(n):
        chat = i % 3 == 0
        rows.append({
            "prompt": None if chat else f"prompt {i % 7}",
            "prompt_messages": json.dumps([{"role": "system", "content": "be brief"}, {"role": "user", "content": f"q{i % 5}"}]) if chat else None,
            "category": None if i % 4 else "math",
            "response_a": f"answer {i % 6}", "model_a": None if i % 5 == 0 else f"m{i % 2}",
            "response_b": f"answer {(i % 6) + 1}", "model_b": "m1",
            "label": ["a", "b", "tie", "both_bad"][i % 4], "strength": [None, 1.0, 2.0][i % 3],
            "annotator_id": f"ann-{i % 3}", "shown_left": ["a", "b", None][i % 3],
            "rationale": "because" if i % 6 == 0 else None, "duration_ms": None if i % 7 == 0 else 100 * i,
        })
    return pl.DataFrame(rows)


def test_version_file_equals_the_live_table(store):
    store.add_comparisons(_mixed_frame())
    c = store.live().row(0, named=True)["comparison_id"]
    store.correct(c, "tie", "ann-0")
    v = store.snapshot("v")
    live = store.live()
    back = v.to_polars()
    assert back.schema == pl.Schema(COMPARISONS_SCHEMA)
    assert back.equals(live)  # same rows, same order, same nulls
    assert back.filter(pl.col("comparison_id") == c)["label"].item() == "tie"
    v.verify(deep=True)
    # Texts are dictionary-encoded in the file; readers see plain strings (checked above).
    meta = pq.ParquetFile(v.path).metadata
    names = [meta.schema.column(i).path for i in range(meta.num_columns)]
    enc = meta.row_group(0).column(names.index("prompt")).encodings  # 12 prompts in 40 rows
    assert any("DICTIONARY" in e for e in enc)


def test_empty_snapshot_reads_back(store):
    v = store.snapshot("empty")
    assert v.to_polars().schema == pl.Schema(COMPARISONS_SCHEMA) and v.n_comparisons == 0


def test_response_ids_fast_path_matches_exact_and_reference():
    f = to_input_frame({c: s for c, s in _mixed_frame().to_dict().items()})
    f = f.with_columns(pl.col("prompt").fill_null("chat"), pl.lit("p0").alias("prompt_id"))
    fast = bulk._response_ids_by_hash(f)
    exact = bulk._response_ids_exact(f)
    assert fast is not None
    assert fast.select("response_a_id", "response_b_id").equals(exact.select("response_a_id", "response_b_id"))
    for row in fast.iter_rows(named=True):
        assert row["response_a_id"] == ids.response_id_of("p0", row["response_a"], row["model_a"])
        assert row["response_b_id"] == ids.response_id_of("p0", row["response_b"], row["model_b"])


def test_response_ids_fall_back_on_a_hash_collision(monkeypatch):
    f = to_input_frame({c: s for c, s in _mixed_frame(12).to_dict().items()}).with_columns(pl.lit("p0").alias("prompt_id"))
    monkeypatch.setattr(bulk, "_response_ids_by_hash", lambda frame: None)  # as if two triples shared a hash
    out = bulk._attach_response_ids(f)
    row = out.row(1, named=True)
    assert row["response_a_id"] == ids.response_id_of("p0", row["response_a"], row["model_a"])


def test_find_invalid_reports_the_first_failing_check_per_row():
    f = to_input_frame({
        "prompt": ["", "ok", "ok", "ok"], "response_a": ["x", "", "x", "x"], "response_b": ["y", "y", "x", "y"],
        "label": ["nope", "a", "a", None], "strength": [None, None, None, -1.0],
    })
    bad = find_invalid(f)
    assert bad.rows() == [
        (1, "prompt", "empty text"),
        (2, "response_a", "empty text"),
        (3, "response_b", "response_a and response_b are the same response"),
        (4, "label", "missing label"),
    ]


def test_bulk_import_restores_the_connection_settings(tmp_path):
    import workbench

    store = workbench.open(str(tmp_path / "s.db"), files_dir=tmp_path / "files")
    store.add_comparisons(pairs_frame(6))
    with pytest.raises(Exception):
        store.add_comparisons(pairs_frame(3).with_columns(pl.lit("?").alias("label")))
    # Every pooled connection has foreign-key checks on again, and the default page cache.
    conns = [store.engine.connect() for _ in range(3)]
    try:
        for conn in conns:
            raw = conn.connection.driver_connection
            assert raw.execute("PRAGMA foreign_keys").fetchone()[0] == 1
            assert raw.execute("PRAGMA cache_size").fetchone()[0] == -2000
            assert raw.execute("PRAGMA temp_store").fetchone()[0] == 0
    finally:
        for conn in conns:
            conn.close()
    with store.engine.connect() as conn:
        raw = conn.connection.driver_connection
        with pytest.raises(Exception, match="FOREIGN KEY"):
            raw.execute("INSERT INTO responses (response_id, prompt_id, text, created_at) VALUES ('r1', 'no-such-prompt', 't', '2024-01-01')")
    store.close()


def test_versions_hashed_with_the_first_definition_still_verify(store):
    """A store written before content hash v2 holds v1 hashes: deep verify accepts them and still
    refuses rows that match neither."""
    import sqlalchemy as sa

    from workbench import schema
    from workbench.versions import TamperedVersion, content_hash, content_hash_v1

    store.add_comparisons(_mixed_frame())
    v = store.snapshot("old")
    frame = v.to_polars()
    assert content_hash(frame) == v.hash and content_hash_v1(frame) != v.hash
    with store.engine.begin() as conn:  # what an older workbench recorded
        conn.execute(sa.update(schema.versions).where(schema.versions.c.name == "old")
                     .values(content_hash=content_hash_v1(frame)))
    old = store.version("old")
    assert old.hash == content_hash_v1(frame)
    old.verify(deep=True)
    with store.engine.begin() as conn:
        conn.execute(sa.update(schema.versions).where(schema.versions.c.name == "old").values(content_hash="0" * 64))
    with pytest.raises(TamperedVersion, match="content hash"):
        store.version("old").verify(deep=True)
