"""Importers, format by format, on small files built here (the real files: test_real_data.py)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import polars as pl
import pytest

import workbench
from workbench.cli import main as cli_main
from workbench.frames import InvalidRows
from workbench.importers import (
    ImportFormatError,
    TableMapping,
    detect_format,
    read_records,
)


@pytest.fixture
def store(tmp_path):
    s = workbench.open(tmp_path / "w.db")
    yield s
    s.close()


def write_jsonl(path: Path, records: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def write_csv(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def live(store) -> pl.DataFrame:
    return store.live().sort("prompt", "response_a", "annotator_id")


# ---------------------------------------------------------------------------- HH-RLHF
def test_hh_rlhf_splits_the_shared_prompt_from_the_last_turns(store, tmp_path):
    f = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
         "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away."},
        {"chosen": "\n\nHuman: Q1\n\nAssistant: A1\n\nHuman: Q2\n\nAssistant: good answer",
         "rejected": "\n\nHuman: Q1\n\nAssistant: A1\n\nHuman: Q2\n\nAssistant: bad answer"},
    ])
    assert detect_format(f) == "hh-rlhf"
    report = store.import_file(f)
    assert (report.format, report.labels_added, report.prompts_added) == ("hh-rlhf", 2, 2)
    rows = live(store)
    one = rows.filter(pl.col("response_a") == "Hello! How can I help?").row(0, named=True)
    assert one["response_b"] == "Go away." and one["label"] == "a"
    assert one["prompt_messages"] == [{"role": "user", "content": "Hi there"}]
    two = rows.filter(pl.col("response_a") == "good answer").row(0, named=True)
    assert [m["role"] for m in two["prompt_messages"]] == ["user", "assistant", "user"]
    assert two["prompt"] == "User: Q1\n\nAssistant: A1\n\nUser: Q2"


def test_hh_rlhf_empty_last_turn_is_an_empty_text_row(store, tmp_path):
    f = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": "\n\nHuman: a\n\nAssistant: fine", "rejected": "\n\nHuman: a\n\nAssistant: worse"},
        {"chosen": "\n\nHuman: b\n\nAssistant:", "rejected": "\n\nHuman: b\n\nAssistant: something"},
    ])
    with pytest.raises(InvalidRows, match=r"hh\.jsonl: line 2: field 'response_a': empty text"):
        store.import_file(f)
    assert store.stats()["label_events"] == 0
    report = store.import_file(f, skip_invalid=True, rejects_path=tmp_path / "rej.jsonl")
    assert (report.labels_added, report.rows_rejected) == (1, 1)
    assert pl.read_ndjson(tmp_path / "rej.jsonl").to_dicts() == [{"line": 2, "field": "response_a", "reason": "empty text"}]


# ---------------------------------------------------------------------------- TRL
def test_trl_standard_and_conversational_explicit_and_implicit(store, tmp_path):
    f = write_jsonl(tmp_path / "trl.jsonl", [
        {"prompt": "The sky is", "chosen": " blue.", "rejected": " green.", "margin": 2.0},
        {"chosen": "The sea is wet.", "rejected": "The sea is dry."},
        {"prompt": [{"role": "user", "content": "What color is the sky?"}],
         "chosen": [{"role": "assistant", "content": "It is blue."}],
         "rejected": [{"role": "assistant", "content": "It is green."}], "annotator_id": "ann-1"},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Bye."}], "tie": True},
    ])
    assert detect_format(f) == "trl"
    report = store.import_file(f)
    assert report.labels_added == 4
    rows = {r["response_a"]: r for r in live(store).to_dicts()}
    assert rows[" blue."]["prompt"] == "The sky is" and rows[" blue."]["strength"] == 2.0
    assert rows[" wet."]["prompt"] == "The sea is" and rows[" wet."]["response_b"] == " dry."  # as TRL cuts it
    assert rows["It is blue."]["prompt_messages"] == [{"role": "user", "content": "What color is the sky?"}]
    assert rows["It is blue."]["annotator_id"] == "ann-1"
    assert rows["Hello."]["label"] == "tie" and rows["Hello."]["response_b"] == "Bye."
    assert rows["Hello."]["prompt_messages"] == [{"role": "user", "content": "Hi"}]


def test_trl_mapping_renames_columns(store, tmp_path):
    f = write_jsonl(tmp_path / "x.jsonl", [{"question": "2+2?", "good": "4", "bad": "5"}])
    report = store.import_file(f, "trl", mapping={"prompt": "question", "chosen": "good", "rejected": "bad"})
    assert report.labels_added == 1
    r = live(store).row(0, named=True)
    assert (r["prompt"], r["response_a"], r["response_b"], r["label"]) == ("2+2?", "4", "5", "a")


# ---------------------------------------------------------------------------- LLMFAO
def make_llmfao(folder: Path, *, extra_votes: list[list] = (), missing_pair: bool = False) -> Path:
    folder.mkdir()
    write_jsonl(folder / "models.jsonl", [{"id": 1, "name": "Model One"}, {"id": 2, "name": "Model Two"}, {"id": 3, "name": "Model Three"}])
    write_jsonl(folder / "prompts.jsonl", [{"id": 7, "text": "Name a colour.", "type": "creativity"}])
    write_jsonl(folder / "pairs-crowd.jsonl", [
        {"id": 0, "prompt": 7, "text": "Name a colour.", "type": "creativity", "model_x": 1, "result_x": "Blue.", "model_y": 2, "result_y": ""},
        {"id": 1, "prompt": 7, "text": "Name a colour.", "type": "creativity", "model_x": 3, "result_x": "Green <b>bold</b>", "model_y": 1, "result_y": "Blue."},
    ])
    rows = [
        [0, 7, 1, 2, 10, "left", "Model One", "Model Two"],
        [0, 7, 1, 2, 11, "tie", "Model One", "Model Two"],
        [0, 7, 1, 2, 12, "right", "Model One", "Model Two"],
        # shown the other way round: the left model is model_y, so "left" means b won
        [1, 7, 3, 1, 10, "left", "Model One", "Model Three"],
        *extra_votes,
    ]
    if missing_pair:
        rows.append([99, 7, 1, 2, 13, "left", "Model One", "Model Two"])
    write_csv(folder / "crowd-comparisons.csv", ["id", "prompt", "model_x", "model_y", "worker", "winner", "left", "right"], rows)
    return folder


def test_llmfao_votes_with_workers_ties_sides_and_empty_outputs(store, tmp_path):
    folder = make_llmfao(tmp_path / "llmfao")
    assert detect_format(folder) == "llmfao"
    assert detect_format(folder / "crowd-comparisons.csv") == "llmfao"
    report = store.import_file(folder)
    assert report.path.endswith("crowd-comparisons.csv")
    assert (report.labels_added, report.annotators_added) == (4, 3)
    rows = store.live()
    assert sorted(rows["annotator_id"].unique()) == ["llmfao:10", "llmfao:11", "llmfao:12"]
    by = {(r["annotator_id"], r["model_a"]): r for r in rows.to_dicts()}
    r = by[("llmfao:10", "Model One")]
    assert (r["label"], r["shown_left"], r["model_b"], r["response_a"], r["response_b"]) == ("a", "a", "Model Two", "Blue.", "")
    assert r["prompt"] == "Name a colour." and r["category"] == "creativity"
    assert by[("llmfao:11", "Model One")]["label"] == "tie"
    assert by[("llmfao:12", "Model One")]["label"] == "b"
    swapped = by[("llmfao:10", "Model Three")]
    assert (swapped["shown_left"], swapped["label"], swapped["response_a"]) == ("b", "b", "Green <b>bold</b>")
    # the CSV path with the JSONL files beside it gives the same data, so nothing new
    again = store.import_file(folder / "crowd-comparisons.csv", "llmfao")
    assert (again.labels_added, again.prompts_added, again.responses_added) == (0, 0, 0)


def test_llmfao_errors_name_the_csv_line_and_field(store, tmp_path):
    folder = make_llmfao(tmp_path / "llmfao", extra_votes=[[0, 7, 1, 2, 14, "maybe", "Model One", "Model Two"]], missing_pair=True)
    with pytest.raises(InvalidRows) as err:
        store.import_file(folder)
    msg = str(err.value)
    assert "crowd-comparisons.csv: line 6: field 'winner': unknown winner 'maybe'" in msg
    assert err.value.rejects.filter(pl.col("line") == 7)["field"].to_list() == ["id"]
    assert store.stats()["label_events"] == 0
    report = store.import_file(folder, skip_invalid=True, rejects_path=tmp_path / "r.jsonl")
    assert (report.labels_added, report.rows_rejected) == (4, 2)


def test_llmfao_bad_sidecar_line_stops_the_import(store, tmp_path):
    folder = make_llmfao(tmp_path / "llmfao")
    with open(folder / "pairs-crowd.jsonl", "a") as f:
        f.write("{not json\n")
    with pytest.raises(ImportFormatError, match=r"pairs-crowd\.jsonl: line 3: field 'record': bad JSON"):
        store.import_file(folder)
    assert store.stats()["label_events"] == 0


def test_llmfao_without_side_files(store, tmp_path):
    folder = make_llmfao(tmp_path / "llmfao")
    (folder / "models.jsonl").unlink()  # model ids stand in for names; the sides are unknown
    (folder / "prompts.jsonl").unlink()
    store.import_file(folder)
    rows = store.live()
    assert set(rows["model_a"]) == {"1", "3"} and rows["shown_left"].null_count() == 4
    assert sorted(rows["label"]) == ["a", "a", "b", "tie"]  # x taken as the left one
    (folder / "pairs-crowd.jsonl").unlink()
    with pytest.raises(ImportFormatError, match="no pairs-crowd.jsonl beside crowd-comparisons.csv"):
        store.import_file(folder)


# ---------------------------------------------------------------------------- PandaLM
PANDALM_ITEMS = [
    {"idx": 0, "motivation_app": "Grammarly", "cmp_key": "bloom-7b_llama-7b", "instruction": "Fix the sentence.",
     "input": "He go home.", "response1": "He goes home.", "response2": "He went home.", "annotator1": 1, "annotator2": 0, "annotator3": 2},
    {"idx": 1, "motivation_app": "Quiz", "cmp_key": "opt-7b_pythia-6.9b", "instruction": "Is the sky blue?",
     "input": "", "response1": True, "response2": "", "annotator1": 1, "annotator2": 1, "annotator3": 1},
]


def test_pandalm_one_label_per_annotator_column(store, tmp_path):
    f = tmp_path / "testset.json"
    f.write_text(json.dumps(PANDALM_ITEMS, indent=1))
    assert detect_format(f) == "pandalm"
    report = store.import_file(f)
    assert (report.labels_added, report.annotators_added) == (6, 3)
    rows = store.live()
    first = rows.filter(pl.col("category") == "Grammarly").sort("annotator_id")
    assert first["label"].to_list() == ["a", "tie", "b"]
    assert first["annotator_id"].to_list() == ["pandalm:annotator1", "pandalm:annotator2", "pandalm:annotator3"]
    r = first.row(0, named=True)
    assert r["prompt"] == "Fix the sentence.\n\nHe go home." and (r["model_a"], r["model_b"]) == ("bloom-7b", "llama-7b")
    second = rows.filter(pl.col("category") == "Quiz").row(0, named=True)
    assert (second["prompt"], second["response_a"], second["response_b"]) == ("Is the sky blue?", "True", "")


def test_pandalm_json_array_errors_name_the_record_line(store, tmp_path):
    items = [dict(PANDALM_ITEMS[0]), dict(PANDALM_ITEMS[0], idx=1, annotator2=7)]
    f = tmp_path / "testset.json"
    f.write_text(json.dumps(items, indent=1))
    starts = [i + 1 for i, line in enumerate(f.read_text().splitlines()) if line.strip() == "{"]
    start = starts[1]  # the line where the second record starts
    with pytest.raises(InvalidRows, match=rf"line {start}: field 'annotator2': unknown label '7'"):
        store.import_file(f, "pandalm")
    assert store.stats()["label_events"] == 0


def test_annotators_in_columns_through_a_table_mapping(store, tmp_path):
    f = write_csv(tmp_path / "votes.csv", ["q", "x", "y", "r1", "r2", "r3"], [
        ["2+2?", "4", "5", "1", "1", ""],
        ["3+3?", "6", "7", "2", "0", "1"],
    ])
    report = store.import_file(f, "table", mapping={
        "prompt": "q", "response_a": "x", "response_b": "y", "label": "r1,r2,r3",
        "label_values": "1:a,2:b,0:tie", "annotator_prefix": "rater-",
    })
    assert report.labels_added == 5  # the empty cell is no label
    got = sorted((r["prompt"], r["annotator_id"], r["label"]) for r in store.live().to_dicts())
    assert got == [("2+2?", "rater-r1", "a"), ("2+2?", "rater-r2", "a"), ("3+3?", "rater-r1", "b"),
                   ("3+3?", "rater-r2", "tie"), ("3+3?", "rater-r3", "a")]


# ---------------------------------------------------------------------------- arena
def conv(q: str, a: str) -> list[dict]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def test_arena_battles_with_conversations(store, tmp_path):
    f = write_jsonl(tmp_path / "battles.jsonl", [
        {"question_id": "q1", "model_a": "gpt-4", "model_b": "vicuna-13b", "winner": "model_a", "judge": "arena_user_1",
         "conversation_a": conv("Hi", "Hello!"), "conversation_b": conv("Hi", "Hey."), "tstamp": 1682351591.1},
        {"question_id": "q2", "model_a": "gpt-4", "model_b": "vicuna-13b", "winner": "tie (bothbad)", "judge": "arena_user_2",
         "conversation_a": conv("Sum 2+2", "5") + conv("Sure?", "6"), "conversation_b": conv("Sum 2+2", "3") + conv("Sure?", "yes")},
        {"question_id": "q3", "model_a": "claude-v1", "model_b": "gpt-4", "winner": "model_b", "judge": "arena_user_1",
         "conversation_a": conv("Hi", "Hello!"), "conversation_b": conv("Hi", "Hello!")},
        {"question_id": "q4", "model_a": "claude-v1", "model_b": "gpt-4", "winner": "tie", "judge": "arena_user_2",
         "conversation_a": conv("Tell a joke", "No."), "conversation_b": conv("Tell a joke", "Why did...")},
    ])
    assert detect_format(f) == "arena"
    report = store.import_file(f)
    assert report.labels_added == 4
    rows = {r["response_b"]: r for r in store.live().to_dicts()}
    one = rows["Hey."]
    assert (one["prompt"], one["response_a"], one["label"], one["model_a"], one["annotator_id"]) == ("Hi", "Hello!", "a", "gpt-4", "arena_user_1")
    assert one["created_at"].timestamp() == pytest.approx(1682351591.1, abs=1e-3)
    multi = rows["3\n\nUser: Sure?\n\nAssistant: yes"]
    assert multi["label"] == "both_bad" and multi["prompt"] == "Sum 2+2"
    assert multi["response_a"] == "5\n\nUser: Sure?\n\nAssistant: 6"
    same_words = rows["Hello!"]  # the same text from two models is two responses
    assert same_words["label"] == "b" and same_words["response_a_id"] != same_words["response_b_id"]
    assert rows["Why did..."]["label"] == "tie"


def test_arena_human_preference_style_csv(store, tmp_path):
    f = write_csv(tmp_path / "train.csv",
                  ["id", "model_a", "model_b", "prompt", "response_a", "response_b", "winner_model_a", "winner_model_b", "winner_tie"], [
                      [1, "m1", "m2", json.dumps(["What is 1+1?"]), json.dumps(["2"]), json.dumps(["3"]), 0, 1, 0],
                      [2, "m1", "m3", json.dumps(["Hi", "And?"]), json.dumps(["Hello", "Nothing"]), json.dumps(["Yo", None]), 0, 0, 1],
                  ])
    assert detect_format(f) == "arena"
    store.import_file(f)
    rows = {r["model_b"]: r for r in store.live().to_dicts()}
    assert (rows["m2"]["prompt"], rows["m2"]["response_a"], rows["m2"]["label"]) == ("What is 1+1?", "2", "b")
    assert rows["m3"]["label"] == "tie"
    # the two conversations part at the first answer: the prompt is the first turn, the rest is the response
    assert rows["m3"]["prompt"] == "Hi"
    assert rows["m3"]["response_a"] == "Hello\n\nUser: And?\n\nAssistant: Nothing"
    assert rows["m3"]["response_b"] == "Yo\n\nUser: And?\n\nAssistant: "


def test_arena_bad_winner_and_missing_texts(store, tmp_path):
    f = write_jsonl(tmp_path / "b.jsonl", [
        {"model_a": "x", "model_b": "y", "winner": "model_c", "conversation_a": conv("a", "b"), "conversation_b": conv("a", "c")},
        {"model_a": "x", "model_b": "y", "winner": "tie"},
    ])
    with pytest.raises(InvalidRows) as err:
        store.import_file(f, "arena")
    assert err.value.rejects.select("line", "field").rows() == [(1, "winner"), (2, "conversation_a")]


# ---------------------------------------------------------------------------- ratings
def test_ratings_nested_all_pairs_ties_and_strength(store, tmp_path):
    f = write_jsonl(tmp_path / "uf.jsonl", [{"instruction": "Write a haiku.", "completions": [
        {"model": "m1", "response": "haiku one", "overall_score": 8},
        {"model": "m2", "response": "haiku two", "overall_score": 5},
        {"model": "m3", "response": "haiku three", "overall_score": 8},
    ]}])
    assert detect_format(f) == "ratings"
    report = store.import_file(f)
    assert report.labels_added == 3
    got = {(r["model_a"], r["model_b"]): (r["label"], r["strength"]) for r in store.live().to_dicts()}
    assert got == {("m1", "m2"): ("a", 3.0), ("m1", "m3"): ("tie", None), ("m2", "m3"): ("b", 3.0)}


def test_ratings_best_worst_and_flat_rows(store, tmp_path):
    f = write_csv(tmp_path / "flat.csv", ["prompt", "response", "score", "model"], [
        ["p1", "r1", "1", "m1"], ["p1", "r2", "3", "m2"], ["p1", "r3", "2", "m3"], ["p2", "only one", "5", "m1"],
    ])
    with pytest.raises(InvalidRows, match="line 5: field 'prompt': only one scored response"):
        store.import_file(f, "ratings")
    report = store.import_file(f, "ratings", mapping={"pairs": "best_worst"}, skip_invalid=True, rejects_path=tmp_path / "r.jsonl")
    assert (report.labels_added, report.rows_rejected) == (1, 1)
    r = store.live().row(0, named=True)
    assert (r["model_a"], r["model_b"], r["label"], r["strength"]) == ("m1", "m2", "b", 2.0)


def test_ratings_bad_score_names_the_completion(store, tmp_path):
    f = write_jsonl(tmp_path / "uf.jsonl", [{"prompt": "p", "completions": [
        {"model": "m1", "response": "a", "score": 1}, {"model": "m2", "response": "b", "score": "high"}]}])
    with pytest.raises(InvalidRows, match=r"field 'completions\[1\]\.score': expected a number"):
        store.import_file(f)


# ---------------------------------------------------------------------------- table
TABLE_ROWS = [
    {"instruction": "Say hi", "output_1": "hi", "output_2": "hello", "preference": 1, "gen1": "m1", "gen2": "m2", "who": "w1"},
    {"instruction": "Say bye", "output_1": "bye", "output_2": "ciao", "preference": 2, "gen1": "m1", "gen2": "m2", "who": "w2"},
    {"instruction": "Say yes", "output_1": "yes", "output_2": "si", "preference": 0, "gen1": "m1", "gen2": "m2", "who": "w1"},
]
TABLE_MAPPING = {"prompt": "instruction", "response_a": "output_1", "response_b": "output_2", "label": "preference",
                 "label_values": {"1": "a", "2": "b", "0": "tie"}, "model_a": "gen1", "model_b": "gen2", "annotator_id": "who"}


def _table_file(kind: str, tmp_path: Path) -> Path:
    frame = pl.DataFrame(TABLE_ROWS)
    if kind == "jsonl":
        return write_jsonl(tmp_path / "t.jsonl", TABLE_ROWS)
    if kind == "csv":
        frame.write_csv(tmp_path / "t.csv")
        return tmp_path / "t.csv"
    if kind == "parquet":
        frame.write_parquet(tmp_path / "t.parquet")
        return tmp_path / "t.parquet"
    import datasets

    ds = datasets.Dataset(frame.to_arrow())
    if kind == "datasets":
        ds.save_to_disk(str(tmp_path / "ds"))
    else:  # a DatasetDict: every split is read
        datasets.DatasetDict({"train": ds.select([0, 1]), "test": ds.select([2])}).save_to_disk(str(tmp_path / "ds"))
    return tmp_path / "ds"


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet", "datasets", "datasetdict"])
def test_table_with_a_mapping_reads_every_container(store, tmp_path, kind):
    f = _table_file(kind, tmp_path)
    report = store.import_file(f, "table", mapping=TABLE_MAPPING)
    assert report.labels_added == 3
    got = sorted((r["prompt"], r["response_a"], r["response_b"], r["label"], r["model_a"], r["annotator_id"]) for r in store.live().to_dicts())
    assert got == [("Say bye", "bye", "ciao", "b", "m1", "w2"), ("Say hi", "hi", "hello", "a", "m1", "w1"), ("Say yes", "yes", "si", "tie", "m1", "w1")]


def test_table_constants_joined_prompt_and_chosen_rejected(store, tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"q": "Translate", "ctx": "chat", "good": "bavarder", "bad": "chat", "m": 0.5}])
    report = store.import_file(f, "table", mapping={"prompt": ["q", "ctx"], "chosen": "good", "rejected": "bad",
                                                    "annotator_id": "=gpt-4-judge", "strength": "m"}, source="model_judge")
    assert report.labels_added == 1
    r = store.live().row(0, named=True)
    assert (r["prompt"], r["response_a"], r["label"], r["annotator_id"], r["strength"], r["source"]) == (
        "Translate\n\nchat", "bavarder", "a", "gpt-4-judge", 0.5, "model_judge")


def test_table_without_a_mapping_reads_field_names(store, tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "p", "response_a": "x", "response_b": "y", "label": "B", "gold": "true"}])
    store.import_file(f, "table")
    r = store.live().row(0, named=True)
    assert (r["label"], r["gold"]) == ("b", True)


@pytest.mark.parametrize("mapping, message", [
    ({"prompt": "q", "response_a": "x", "response_b": "y", "label": "l", "colour": "c"}, "unknown mapping field 'colour'"),
    ({"prompt": "q", "response_a": "x", "label": "l"}, "needs response_a and response_b"),
    ({"response_a": "x", "response_b": "y", "label": "l"}, "needs prompt"),
    ({"prompt": "q", "response_a": "x", "response_b": "y", "label": "l", "label_values": "1:a,2:best"}, "'best' is not a label"),
    ({"prompt": "q", "response_a": "x", "response_b": "y", "label": "l1,l2", "annotator_id": "w"}, "drop annotator_id"),
])
def test_table_mapping_mistakes_are_clear(mapping, message):
    with pytest.raises(ValueError, match=message):
        TableMapping.parse(mapping)


def test_table_unknown_label_without_label_values(store, tmp_path):
    f = write_jsonl(tmp_path / "t.jsonl", [{"q": "p", "x": "1", "y": "2", "l": "left"}])
    with pytest.raises(InvalidRows, match="line 1: field 'l': unknown label 'left'"):
        store.import_file(f, "table", mapping={"prompt": "q", "response_a": "x", "response_b": "y", "label": "l"})


# ---------------------------------------------------------------------------- detection and containers
def test_detect_format_needs_recognisable_fields(tmp_path):
    f = write_jsonl(tmp_path / "odd.jsonl", [{"foo": 1, "bar": 2}])
    with pytest.raises(ImportFormatError, match="cannot tell the format.*bar, foo.*format='table'"):
        detect_format(f)
    assert detect_format(write_jsonl(tmp_path / "n.jsonl", [{"prompt": "p", "response_a": "a", "response_b": "b", "label": "a"}])) == "workbench"
    assert detect_format(write_jsonl(tmp_path / "r.jsonl", [{"prompt": "p", "response": "a", "score": 1}])) == "ratings"


def test_gzipped_jsonl_and_json_array_lines(tmp_path):
    import gzip

    with gzip.open(tmp_path / "x.jsonl.gz", "wt") as f:
        f.write('{"a": 1}\n\n{"a": 2}\n')
    assert list(read_records(tmp_path / "x.jsonl.gz")) == [(1, {"a": 1}), (3, {"a": 2})]
    (tmp_path / "bom.jsonl").write_bytes(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n')
    assert list(read_records(tmp_path / "bom.jsonl")) == [(1, {"a": 1}), (2, {"a": 2})]
    (tmp_path / "x.json").write_text('[\n  {"a": 1},\n\n  {"a":\n 2}\n]\n')
    assert list(read_records(tmp_path / "x.json")) == [(2, {"a": 1}), (4, {"a": 2})]


# ---------------------------------------------------------------------------- CLI
def test_cli_import_formats_map_skip_invalid_and_errors(tmp_path, capsys):
    db = str(tmp_path / "cli.db")
    f = write_jsonl(tmp_path / "t.jsonl", TABLE_ROWS + [{"instruction": "bad", "output_1": "x", "output_2": "y", "preference": 9}])
    maps = ["--map", "prompt=instruction", "--map", "response_a=output_1", "--map", "response_b=output_2",
            "--map", "label=preference", "--map", "label_values=1:a,2:b,0:tie", "--map", "model_a=gen1", "--map", "model_b=gen2"]
    assert cli_main(["--db", db, "import", str(f), "--format", "table", *maps]) == 1
    err = capsys.readouterr().err
    assert "t.jsonl: line 4: field 'preference': unknown label '9'" in err and "nothing was written" in err
    assert workbench.open(db).stats()["label_events"] == 0
    rejects = tmp_path / "rejects.jsonl"
    assert cli_main(["--db", db, "import", str(f), "--format", "table", *maps, "--skip-invalid", "--rejects", str(rejects)]) == 0
    out = capsys.readouterr().out
    assert "3 labels" in out and "1 rows rejected" in out
    assert pl.read_ndjson(rejects)["line"].to_list() == [4]
    # auto-detected formats, and errors that are not about rows
    hh = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: q\n\nAssistant: a", "rejected": "\n\nHuman: q\n\nAssistant: b"}])
    assert cli_main(["--db", db, "import", str(hh)]) == 0
    assert "(hh-rlhf): 1 rows read, 1 labels" in capsys.readouterr().out
    assert cli_main(["--db", db, "import", str(tmp_path / "missing.jsonl")]) == 1
    assert "missing.jsonl: no such file" in capsys.readouterr().err
    assert cli_main(["--db", db, "import", str(f), "--format", "nonsense"]) == 1
    assert "unknown import format 'nonsense'" in capsys.readouterr().err
    assert cli_main(["--db", db, "import", str(f), "--format", "table", "--map", "colour=x"]) == 1
    assert "unknown mapping field 'colour'" in capsys.readouterr().err
    assert workbench.open(db).stats()["label_events"] == 4


# ---------------------------------------------------------------------------- both backends
def test_every_format_on_every_backend(open_store, tmp_path):
    """The same imports on SQLite and PostgreSQL (``open_store`` comes from tests/conftest.py)."""
    s = open_store()
    files = {
        "hh-rlhf": write_jsonl(tmp_path / "hh.jsonl", [{"chosen": "\n\nHuman: q\n\nAssistant: yes", "rejected": "\n\nHuman: q\n\nAssistant: no"}]),
        "llmfao": make_llmfao(tmp_path / "llmfao"),
        "arena": write_jsonl(tmp_path / "arena.jsonl", [{"model_a": "m1", "model_b": "m2", "winner": "tie (bothbad)",
                                                         "conversation_a": conv("Hi", "A"), "conversation_b": conv("Hi", "B")}]),
        "ratings": write_jsonl(tmp_path / "uf.jsonl", [{"prompt": "p", "completions": [{"response": "x", "score": 1}, {"response": "y", "score": 2}]}]),
        "workbench": write_jsonl(tmp_path / "n.jsonl", [{"prompt": "p", "response_a": "a\u00e9\U0001F600", "response_b": "<b>b</b>", "label": "a", "strength": 1.0}]),
    }
    (tmp_path / "pandalm.json").write_text(json.dumps(PANDALM_ITEMS))
    files["pandalm"] = tmp_path / "pandalm.json"
    expected = {"hh-rlhf": 1, "llmfao": 4, "arena": 1, "ratings": 1, "workbench": 1, "pandalm": 6}
    for fmt, f in files.items():
        assert s.import_file(f).labels_added == expected[fmt], fmt
    before = s.stats()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p2", "response_a": "x", "response_b": "y", "label": "a"},
                                               {"prompt": "p3", "response_a": "x", "response_b": "y", "label": "worse"}])
    with pytest.raises(InvalidRows, match="line 2: field 'label'"):
        s.import_file(bad, "workbench")
    for fmt, f in files.items():
        assert s.import_file(f).labels_added == 0, fmt
    assert s.stats() == before
    frame = s.snapshot("all").to_polars()
    assert frame.height == sum(expected.values())
    assert set(frame["label"]) == {"a", "b", "tie", "both_bad"}
    assert {"a\u00e9\U0001F600", "<b>b</b>", ""} <= set(frame["response_a"]) | set(frame["response_b"])


def test_implicit_prompts_match_trl_extract_prompt(store, tmp_path):
    """TRL's own ``extract_prompt`` is the reference for implicit prompts (standard and conversational)."""
    data_utils = pytest.importorskip("trl.data_utils")
    examples = [
        {"chosen": "The sea is wet.", "rejected": "The sea is dry."},
        {"chosen": "Hello world", "rejected": "Help me"},
        {"chosen": "Q: 2+2?\nA: 4", "rejected": "Q: 2+2?\nA: 5"},
        {"chosen": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Go."}]},
    ]
    f = write_jsonl(tmp_path / "implicit.jsonl", examples)
    assert store.import_file(f, "trl").labels_added == len(examples)
    got = {r["response_a"]: r for r in store.live().to_dicts()}
    for ex in examples:
        want = data_utils.extract_prompt(ex)
        if isinstance(ex["chosen"], list):
            r = got[want["chosen"][0]["content"]]
            assert r["prompt_messages"] == want["prompt"]
            assert r["response_b"] == want["rejected"][0]["content"]
        else:
            r = got[want["chosen"]]
            assert (r["prompt"], r["response_b"]) == (want["prompt"], want["rejected"])
