"""Exports of a version: TRL standard and conversational (ties dropped or kept), Parquet, JSONL,
``datasets`` on disk, and TRL files that import back to the same comparisons."""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workbench
from workbench.cli import main as cli_main
from workbench.export import export_version, trl_frame

ROWS = [
    {"prompt": "Name a fruit.", "response_a": "Apple.", "response_b": "Rock.", "label": "a", "strength": 2.0, "annotator_id": "ann1"},
    {"prompt": "Name a fruit.", "response_a": "Pear.", "response_b": "Apple.", "label": "b", "annotator_id": "ann2"},
    {"prompt": "Name a colour.", "response_a": "Red.", "response_b": "Blue.", "label": "tie", "annotator_id": "ann1"},
    {"prompt": "Name a colour.", "response_a": "Dog.", "response_b": "Cat.", "label": "both_bad", "annotator_id": "ann2"},
    {"prompt_messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <script>alert(1)</script>"}],
     "response_a": "Hello.", "response_b": "Greetings, dear friend.", "label": "a", "annotator_id": "ann1", "model_a": "m1", "model_b": "m2"},
]


@pytest.fixture
def version(tmp_path):
    store = workbench.open(tmp_path / "w.db")
    src = tmp_path / "rows.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    store.import_file(src, "workbench")
    v = store.snapshot("v1")
    yield store, v
    store.close()


def test_trl_standard_swaps_b_wins_and_drops_ties_and_both_bad(version):
    _, v = version
    t = trl_frame(v.to_polars())
    assert t.columns == ["prompt", "chosen", "rejected", "margin", "comparison_id", "annotator_id"]
    got = sorted(t.select("prompt", "chosen", "rejected", "margin").rows(), key=str)
    assert got == sorted([
        ("Name a fruit.", "Apple.", "Rock.", 2.0),
        ("Name a fruit.", "Apple.", "Pear.", None),  # label b: chosen is response b
        ("System: Be brief.\n\nUser: Hi <script>alert(1)</script>", "Hello.", "Greetings, dear friend.", None),
    ], key=str)


def test_trl_ties_kept_with_a_flag(version):
    _, v = version
    t = trl_frame(v.to_polars(), ties="keep")
    assert t.height == 4 and t["tie"].sum() == 1
    tie = t.filter(pl.col("tie")).row(0, named=True)
    assert (tie["chosen"], tie["rejected"]) == ("Red.", "Blue.")
    with pytest.raises(ValueError, match="ties must be"):
        trl_frame(v.to_polars(), ties="maybe")


def test_trl_conversational_holds_messages(version):
    _, v = version
    t = trl_frame(v.to_polars(), conversational=True)
    row = t.filter(pl.col("chosen").list.first().struct.field("content") == "Hello.").row(0, named=True)
    assert row["prompt"] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi <script>alert(1)</script>"}]
    assert row["chosen"] == [{"role": "assistant", "content": "Hello."}]
    assert row["rejected"] == [{"role": "assistant", "content": "Greetings, dear friend."}]
    text = t.filter(pl.col("margin") == 2.0).row(0, named=True)
    assert text["prompt"] == [{"role": "user", "content": "Name a fruit."}]


@pytest.mark.parametrize("fmt, suffix", [("trl", ".jsonl"), ("trl", ".parquet"), ("trl", ""), ("trl-conversational", ".jsonl"),
                                         ("trl-conversational", "")])
def test_trl_files_read_back(version, tmp_path, fmt, suffix):
    _, v = version
    out = v.export(tmp_path / f"out{suffix}", fmt)
    if suffix == ".jsonl":
        back = pl.read_ndjson(out)
    elif suffix == ".parquet":
        back = pl.read_parquet(out)
    else:
        import datasets

        back = pl.from_arrow(datasets.load_from_disk(str(out)).data.table)
    expected = trl_frame(v.to_polars(), conversational=fmt == "trl-conversational")
    assert back.height == expected.height == 3
    assert sorted(map(str, back.select("chosen", "rejected").rows())) == sorted(map(str, expected.select("chosen", "rejected").rows()))


def test_whole_table_exports_keep_every_column(version, tmp_path):
    _, v = version
    frame = v.to_polars()
    pq = pl.read_parquet(v.export(tmp_path / "v.parquet", "parquet"))
    assert pq.equals(frame)
    js = pl.read_ndjson(v.export(tmp_path / "v.jsonl", "jsonl"))
    assert js.columns == frame.columns and js.height == 5
    assert js.sort("comparison_id")["response_b"].to_list() == frame.sort("comparison_id")["response_b"].to_list()
    first = json.loads((tmp_path / "v.jsonl").read_text().splitlines()[0])
    assert first["created_at"].endswith("Z")
    import datasets

    ds = datasets.load_from_disk(str(v.export(tmp_path / "v_ds", "datasets")))
    assert ds.num_rows == 5 and set(ds.column_names) == set(frame.columns)
    assert sorted(ds["annotator_id"]) == sorted(frame["annotator_id"].to_list())


def test_export_of_a_plain_frame_and_bad_arguments(version, tmp_path):
    _, v = version
    out = export_version(v.to_polars().to_pandas(), tmp_path / "p.jsonl", "trl")
    assert pl.read_ndjson(out).height == 3
    with pytest.raises(ValueError, match="unknown export format 'csv'"):
        v.export(tmp_path / "x.csv", "csv")


def test_reimported_trl_export_equals_the_original(version, tmp_path):
    store, v = version
    out = v.export(tmp_path / "trl.jsonl", "trl-conversational", ties="keep")
    fresh = workbench.open(tmp_path / "fresh.db")
    report = fresh.import_file(out)
    assert report.format == "trl" and report.labels_added == 4
    back = fresh.snapshot("back").to_polars()

    def key(f: pl.DataFrame) -> list:
        rows = []
        for r in f.iter_rows(named=True):
            a, b = (r["response_a"], r["response_b"]) if r["label"] != "b" else (r["response_b"], r["response_a"])
            rows.append((json.dumps(r["prompt_messages"]), a, b, r["label"] == "tie", r["strength"], r["annotator_id"]))
        return sorted(rows, key=str)

    original = v.to_polars().filter(pl.col("label") != "both_bad")
    assert key(back) == key(original)


def test_cli_export(version, tmp_path, capsys):
    store, v = version
    db = str(store.engine.url.database)
    assert cli_main(["--db", db, "export", "v1", "--format", "trl", "--ties", "keep", "--out", str(tmp_path / "e.jsonl")]) == 0
    assert "exported version v1" in capsys.readouterr().out
    assert pl.read_ndjson(tmp_path / "e.jsonl").height == 4
    assert cli_main(["--db", db, "export", "nope", "--out", str(tmp_path / "n.jsonl")]) == 1
    assert "nope" in capsys.readouterr().err


def test_trl_reads_the_exports_as_its_formats(version, tmp_path):
    """TRL's own data helpers recognise both exports (and find the explicit prompt already there)."""
    data_utils = pytest.importorskip("trl.data_utils")
    import datasets

    _, v = version
    conv = datasets.load_from_disk(str(v.export(tmp_path / "conv", "trl-conversational")))
    std = datasets.load_from_disk(str(v.export(tmp_path / "std", "trl")))
    assert all(data_utils.is_conversational(ex) for ex in conv)
    assert not any(data_utils.is_conversational(ex) for ex in std)
    for ex in list(conv) + list(std):
        assert data_utils.maybe_extract_prompt(ex) == ex  # the prompt is explicit: nothing to extract
    unpaired = data_utils.unpair_preference_dataset(std)
    assert unpaired.num_rows == 2 * std.num_rows and sorted(set(unpaired["label"])) == [False, True]


TEXT = st.builds(lambda head, tail: head + tail, st.sampled_from("abcxyz"),
                 st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=8))
ROW = st.fixed_dictionaries(
    {"prompt": TEXT, "response_a": TEXT, "response_b": TEXT, "label": st.sampled_from(["a", "b", "tie", "both_bad"]),
     "annotator_id": st.sampled_from(["w1", "w2"])},
    optional={"strength": st.sampled_from([0.5, 1.0, 2.0])},
)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(ROW, min_size=1, max_size=6), conversational=st.booleans())
def test_any_version_survives_export_and_reimport(rows, conversational):
    """Random labels -> version -> TRL file (ties kept) -> a new store: the same preferences."""
    rows = [dict(r, response_b=r["response_b"] + " (other)") for r in rows]
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        with workbench.open(tmp / "a.db") as store:
            store.import_file(tmp / "in.jsonl", "workbench")
            v = store.snapshot("v")
            out = v.export(tmp / "trl.jsonl", "trl-conversational" if conversational else "trl", ties="keep")
            original = v.to_polars()
        if not (tmp / "trl.jsonl").read_text().strip():  # only both_bad labels: nothing to export
            assert all(r["label"] == "both_bad" for r in rows)
            return
        with workbench.open(tmp / "b.db") as fresh:
            fresh.import_file(out, "trl")
            back = fresh.live()

    def prefs(f: pl.DataFrame) -> Counter:
        out = Counter()
        for r in f.filter(pl.col("label") != "both_bad").iter_rows(named=True):
            a, b = (r["response_b"], r["response_a"]) if r["label"] == "b" else (r["response_a"], r["response_b"])
            out[(json.dumps(r["prompt_messages"]), a, b, r["label"] == "tie", r["strength"], r["annotator_id"])] += 1
        return out

    assert prefs(back) == prefs(original)
    assert sum(prefs(original).values()) == sum(r["label"] != "both_bad" for r in rows)
