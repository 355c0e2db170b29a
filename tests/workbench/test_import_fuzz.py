"""Bad input: malformed, empty, huge and hostile files get a clear error and leave the store as it
was; ``skip_invalid`` keeps the good rows; a killed import leaves nothing; fuzzing finds no crash."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import workbench
from workbench.frames import InvalidRows
from workbench.importers import MAX_LINE_BYTES, ImportFormatError

GOOD = [
    {"prompt": "Say hi", "response_a": "hi", "response_b": "hello", "label": "a"},
    {"prompt": "Say bye", "response_a": "bye", "response_b": "ciao", "label": "b"},
]
DOCUMENTED = (ImportFormatError, InvalidRows)


def state(store) -> tuple:
    """Everything an import could change: the counts and the whole event log."""
    return store.stats(), store.events().to_dicts(), store.prompts().height, store.responses().height


@pytest.fixture
def store(tmp_path):
    s = workbench.open(tmp_path / "w.db")
    yield s
    s.close()


def with_bad_line(tmp_path: Path, bad: bytes, name: str = "in.jsonl") -> Path:
    f = tmp_path / name
    f.write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in GOOD) + bad + b"\n")
    return f


def row(**over) -> bytes:
    rec = {"prompt": "Say what", "response_a": "this", "response_b": "that", "label": "tie"}
    rec.update(over)
    return json.dumps({k: v for k, v in rec.items() if v is not ...}).encode()


BAD_LINES = {
    "malformed JSON": (b'{"prompt": "x", "response_a": ', "record", "bad JSON"),
    "not an object": (b'["a", "b"]', "record", "not a JSON object"),
    "missing field": (row(response_b=...), "response_b", "missing field"),
    "wrong type": (row(response_a=12), "response_a", "expected text, got int"),
    "wrong type number": (row(strength="strong"), "strength", "expected a number"),
    "unknown label": (row(label="left"), "label", "unknown label 'left'"),
    "non-UTF-8": (b'{"prompt": "caf\xe9", "response_a": "a", "response_b": "b", "label": "a"}', "record", "not UTF-8 text"),
    "empty text": (row(response_a="   "), "response_a", "empty text"),
    "NUL byte": (row(response_b="bad\u0000text"), "response_b", "NUL"),
    "control character": (row(prompt="ring \u0007 the bell"), "prompt", "control character (U+0007)"),
    "escape sequence": (row(response_a="\u001b[31mred\u001b[0m"), "response_a", "control character (U+001B)"),
    "RTL override": (row(response_a="invoice\u202egnp.exe"), "response_a", "bidirectional control character (U+202E)"),
    "lone surrogate": (b'{"prompt": "x\\ud800y", "response_a": "a", "response_b": "b", "label": "a"}', "prompt", "lone surrogate"),
    "deep nesting": (b'{"prompt_messages": ' + b"[" * 5000 + b"]" * 5000 + b"}", "record", "nested too deeply"),
    "very deep nesting": (b'{"prompt": "x", "response_a": "a", "response_b": "b", "label": "a", "extra": ' + b"[" * 100_000
                          + b"]" * 100_000 + b"}", "record", "nested too deeply"),
    "huge field": (row(response_a="x" * 1_000_001), "response_a", "longer than 1,000,000 characters"),
    "huge number": (b'{"prompt": "x", "response_a": "a", "response_b": "b", "label": "a", "strength": ' + b"9" * 5000 + b"}", "record", "bad JSON"),
    "same response": (row(response_b="this"), "response_b", "same response"),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_a_bad_row_names_file_line_field_and_writes_nothing(store, tmp_path, case):
    bad, field, reason = BAD_LINES[case]
    f = with_bad_line(tmp_path, bad)
    store.import_file(with_bad_line(tmp_path, b"", "seed.jsonl"), "workbench")  # the store is not empty
    before = state(store)
    with pytest.raises(InvalidRows) as err:
        store.import_file(f, "workbench")
    msg = str(err.value)
    assert f"{f}: line 3: field '{field}': " in msg and reason in msg and "nothing was written" in msg
    assert state(store) == before
    report = store.import_file(f, "workbench", skip_invalid=True, rejects_path=tmp_path / "rejects.jsonl")
    assert (report.rows_rejected, report.labels_added) == (1, 0)  # the good rows were there already
    rejects = pl.read_ndjson(tmp_path / "rejects.jsonl")
    assert rejects.select("line", "field").rows() == [(3, field)] and reason in rejects["reason"][0]


def test_html_and_script_are_stored_verbatim(store, tmp_path):
    text = '<script>alert("x")</script><img src=x onerror=alert(1)> &amp; \u200f\u05e9\u05dc\u05d5\u05dd\t\r\n'
    f = with_bad_line(tmp_path, row(response_a=text))
    assert store.import_file(f, "workbench").labels_added == 3
    assert text in store.live()["response_a"].to_list()


def test_a_huge_line_is_one_rejected_row(store, tmp_path):
    f = with_bad_line(tmp_path, row(response_a="y" * (MAX_LINE_BYTES + 10)))
    with pytest.raises(InvalidRows, match=r"line 3: field 'record': line longer than 16,777,216 bytes"):
        store.import_file(f, "workbench")
    assert store.import_file(f, "workbench", skip_invalid=True, rejects_path=tmp_path / "r.jsonl").labels_added == 2


def test_csv_bad_bytes_name_the_field(store, tmp_path):
    f = tmp_path / "t.csv"
    f.write_bytes(b"q,x,y,l\nfine,a,b,a\nok,caf\xe9,b,a\n")
    mapping = {"prompt": "q", "response_a": "x", "response_b": "y", "label": "l"}
    with pytest.raises(InvalidRows, match=r"t\.csv: line 3: field 'x': not UTF-8 text"):
        store.import_file(f, "table", mapping=mapping)
    assert store.stats()["label_events"] == 0
    (tmp_path / "q.csv").write_bytes(b'q,x,y,l\n"unterminated,a,b,a\n')
    with pytest.raises(ImportFormatError, match=r"q\.csv: line \d+: bad CSV"):
        store.import_file(tmp_path / "q.csv", "table", mapping=mapping)


@pytest.mark.parametrize("name, content, message", [
    ("empty.jsonl", b"", "no records (the file is empty)"),
    ("blank.jsonl", b"\n \n\n", "no records (the file is empty)"),
    ("header.csv", b"prompt,response_a,response_b,label\n", "no records (the file is empty)"),
    ("broken.json", b'[{"prompt": "x"},\n {"prompt": ', "line 2: bad JSON"),
    ("trailing.json", b'[{"prompt": "x"}] [', "text after the closing"),
    ("bad.parquet", b"PAR1 this is not parquet", "not a readable Parquet file"),
    ("bad.jsonl.gz", b"\x1f\x8b\x08\x00garbage", "cannot read"),
])
def test_unreadable_files_raise_import_format_error(store, tmp_path, name, content, message):
    f = tmp_path / name
    f.write_bytes(content)
    with pytest.raises(ImportFormatError, match=re.escape(message)) as err:
        store.import_file(f, "workbench")
    assert str(err.value).startswith(str(f))
    assert store.stats()["label_events"] == 0


def test_every_row_bad_with_skip_invalid_is_a_zero_label_report(store, tmp_path):
    f = tmp_path / "all_bad.jsonl"
    f.write_bytes(row(label="nope") + b"\n" + row(response_a="") + b"\n")
    report = store.import_file(f, "workbench", skip_invalid=True, rejects_path=tmp_path / "r.jsonl")
    assert (report.labels_added, report.rows_rejected) == (0, 2)
    assert pl.read_ndjson(tmp_path / "r.jsonl")["line"].to_list() == [1, 2]


# ---------------------------------------------------------------------------- a killed import
KILL_SCRIPT = textwrap.dedent("""
    import sys, time
    import workbench, workbench.bulk as bulk

    # Pause inside the import's transaction, after its rows are written and before the commit.
    real = bulk.write_prepared
    def hold(*args, **kwargs):
        out = real(*args, **kwargs)
        print("WRITTEN", out, flush=True)
        time.sleep(60)
        return out
    bulk.write_prepared = hold
    s = workbench.open(sys.argv[1])
    s.import_file(sys.argv[2], "workbench")
""")


def test_a_killed_import_leaves_the_store_as_it_was(tmp_path, store_url):
    """On SQLite and on PostgreSQL (``store_url`` comes from tests/conftest.py)."""
    db = store_url
    store = workbench.open(db, files_dir=tmp_path / "files")
    store.import_file(with_bad_line(tmp_path, b"", "seed.jsonl"), "workbench")
    before = state(store)
    store.close()
    big = tmp_path / "big.jsonl"
    with open(big, "w") as f:
        for i in range(20_000):
            f.write(json.dumps({"prompt": f"prompt {i % 500}", "response_a": f"answer {i}", "response_b": f"other {i}",
                                "label": "ab"[i % 2], "annotator_id": f"w{i % 7}"}) + "\n")
    script = tmp_path / "kill_me.py"
    script.write_text(KILL_SCRIPT)
    proc = subprocess.Popen([sys.executable, str(script), str(db), str(big)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert line.startswith("WRITTEN") and "20000" in line, proc.stderr.read()  # type: ignore[union-attr]
        # All 20,000 labels are written inside the import's transaction, not yet committed: kill.
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    again = workbench.open(db, files_dir=tmp_path / "files")
    assert state(again) == before
    assert again.import_file(big, "workbench").labels_added == 20_000  # and it still takes writes
    again.close()


def test_a_process_killed_at_a_random_moment_leaves_a_whole_store(tmp_path):
    """Kill while the import is parsing or writing: the store holds all of it or none of it."""
    db = tmp_path / "w.db"
    workbench.open(db).close()
    big = tmp_path / "big.jsonl"
    with open(big, "w") as f:
        for i in range(30_000):
            f.write(json.dumps({"prompt": f"p{i % 300}", "response_a": f"a{i}", "response_b": f"b{i}", "label": "a"}) + "\n")
    code = "import sys, workbench; workbench.open(sys.argv[1]).import_file(sys.argv[2], 'workbench'); print('DONE', flush=True)"
    start = time.monotonic()
    proc = subprocess.Popen([sys.executable, "-c", code, str(db), str(big)], stdout=subprocess.PIPE, text=True)
    time.sleep(2.0)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert time.monotonic() - start < 60
    s = workbench.open(db)
    assert s.stats()["label_events"] in (0, 30_000)
    s.close()


# ---------------------------------------------------------------------------- fuzzing
TEXTS = st.one_of(
    st.text(max_size=30),
    st.sampled_from(["", " ", "a", "tie", "b", "model_a", "tie (bothbad)", "<script>x</script>", "\u202e", "\x00", "1", "0", "2"]),
)
VALUES = st.one_of(TEXTS, st.integers(-3, 3), st.floats(allow_nan=True, allow_infinity=True), st.none(), st.booleans(),
                   st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "bot"]), "content": TEXTS}), max_size=3))
FIELDS = ["prompt", "prompt_messages", "response_a", "response_b", "label", "strength", "annotator_id", "chosen", "rejected",
          "model_a", "model_b", "winner", "conversation_a", "conversation_b", "completions", "response", "score", "gold",
          "instruction", "response1", "response2", "annotator1", "cmp_key", "margin", "tstamp", "shown_left", "created_at"]
RECORDS = st.lists(st.dictionaries(st.sampled_from(FIELDS), VALUES, max_size=8), min_size=0, max_size=5)
FORMATS = ["auto", "workbench", "trl", "hh-rlhf", "arena", "ratings", "pandalm", "table"]


SMALL = st.builds(lambda head, tail: head + tail, st.sampled_from("abcxyz"),
                  st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), max_size=10))


@st.composite
def record_for(draw, fmt: str) -> dict:
    """A record that is mostly valid for ``fmt``; one time in six, one field is replaced by junk."""
    t = lambda: draw(SMALL)  # noqa: E731
    if fmt == "workbench":
        rec: dict = {"prompt": t(), "response_a": t(), "response_b": t(), "label": draw(st.sampled_from(["a", "b", "tie", "both_bad"])),
                     "annotator_id": draw(st.sampled_from(["w1", "w2"]))}
    elif fmt == "trl":
        rec = {"prompt": t(), "chosen": t(), "rejected": t()}
    elif fmt == "arena":
        q = t()
        rec = {"model_a": t(), "model_b": t(), "winner": draw(st.sampled_from(["model_a", "model_b", "tie", "tie (bothbad)"])),
               "conversation_a": [{"role": "user", "content": q}, {"role": "assistant", "content": t()}],
               "conversation_b": [{"role": "user", "content": q}, {"role": "assistant", "content": t()}]}
    elif fmt == "ratings":
        rec = {"prompt": t(), "completions": [{"model": t(), "response": t(), "score": draw(st.integers(0, 3))}
                                              for _ in range(draw(st.integers(2, 4)))]}
    else:  # pandalm
        rec = {"instruction": t(), "input": draw(st.sampled_from(["", "ctx"])), "response1": t(), "response2": t(),
               "cmp_key": "m1_m2", "annotator1": draw(st.integers(0, 2)), "annotator2": draw(st.integers(0, 2))}
    if draw(st.integers(0, 5)) == 0:
        rec[draw(st.sampled_from(sorted(rec)))] = draw(VALUES)
    return rec


class FuzzStore:
    def __init__(self) -> None:
        self.dir = tempfile.TemporaryDirectory()
        self.path = Path(self.dir.name)
        self.store = workbench.open(self.path / "fuzz.db")
        self.n = 0
        self.imported = 0

    def check(self, content: bytes, suffix: str, fmt: str, skip: bool, mapping: dict | None = None) -> None:
        self.n += 1
        f = self.path / f"in{self.n}{suffix}"
        f.write_bytes(content)
        before = self.store.stats()
        try:
            report = self.store.import_file(f, fmt, mapping=mapping, skip_invalid=skip, rejects_path=self.path / "rejects.jsonl")
        except DOCUMENTED:
            assert self.store.stats() == before
            return
        after = self.store.stats()
        assert after["label_events"] == before["label_events"] + report.labels_added
        assert after["prompts"] == before["prompts"] + report.prompts_added
        self.imported += report.labels_added
        again = self.store.import_file(f, fmt, mapping=mapping, skip_invalid=True, rejects_path=self.path / "rejects.jsonl")
        assert again.labels_added == 0 and self.store.stats() == after  # importing twice adds nothing


@pytest.fixture(scope="module")
def fuzz_store():
    fs = FuzzStore()
    yield fs
    fs.store.close()
    fs.dir.cleanup()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(records=RECORDS, fmt=st.sampled_from(FORMATS), skip=st.booleans())
def test_fuzz_records(fuzz_store, records, fmt, skip):
    content = "".join(json.dumps(r) + "\n" for r in records).encode()
    mapping = {"prompt": "prompt", "response_a": "response_a", "response_b": "response_b", "label": "label",
               "label_values": "1:a,2:b,0:tie"} if fmt == "table" else None
    fuzz_store.check(content, ".jsonl", fmt, skip, mapping)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(data=st.data(), fmt=st.sampled_from(["workbench", "trl", "arena", "ratings", "pandalm"]), auto=st.booleans(), skip=st.booleans())
def test_fuzz_mostly_valid_records(fuzz_store, data, fmt, auto, skip):
    records = data.draw(st.lists(record_for(fmt), min_size=1, max_size=6))
    suffix = ".json" if fmt == "pandalm" else ".jsonl"
    content = json.dumps(records).encode() if suffix == ".json" else "".join(json.dumps(r) + "\n" for r in records).encode()
    fuzz_store.check(content, suffix, "auto" if auto else fmt, skip)


def test_fuzzing_reached_the_store(fuzz_store):
    assert fuzz_store.imported > 50  # the fuzz tests above wrote labels, not only errors


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=st.binary(max_size=300), suffix=st.sampled_from([".jsonl", ".csv", ".json", ".parquet", ".jsonl.gz"]),
       fmt=st.sampled_from(FORMATS), skip=st.booleans())
def test_fuzz_bytes(fuzz_store, content, suffix, fmt, skip):
    fuzz_store.check(content, suffix, fmt, skip, {"prompt": "a", "response_a": "b", "response_b": "c", "label": "d"} if fmt == "table" else None)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.lists(st.one_of(TEXTS, st.sampled_from(["a", "b", "tie"])), min_size=3, max_size=5), max_size=5), skip=st.booleans())
def test_fuzz_csv_tables(fuzz_store, rows, skip):
    import csv
    import io

    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["q", "x", "y", "l"])
    w.writerows(rows)
    fuzz_store.check(buf.getvalue().encode("utf-8", "surrogatepass"), ".csv", "table", skip,
                     {"prompt": "q", "response_a": "x", "response_b": "y", "label": "l"})


# ---------------------------------------------------------------------------- the fast path
def test_clean_files_take_the_column_path(tmp_path):
    from workbench import importers

    rows = [dict(r, strength=1.5, gold=False) for r in GOOD]
    f = tmp_path / "clean.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec = {k: k for k in ("prompt", "response_a", "response_b", "label", "strength", "gold")}
    fast = importers._fast_input(f, spec, {}, None, False, False)
    assert fast is not None and fast["line"].to_list() == [1, 2] and fast["strength"].to_list() == [1.5, 1.5]
    pl.DataFrame(rows).write_parquet(tmp_path / "clean.parquet")
    assert importers._fast_input(tmp_path / "clean.parquet", spec, {}, None, False, False) is not None
    f.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")  # a blank line: line numbers need care
    assert importers._fast_input(f, spec, {}, None, False, False) is None


OPTIONAL = {
    "strength": st.one_of(st.floats(0, 3), st.integers(0, 3)), "duration_ms": st.integers(0, 10_000), "gold": st.booleans(),
    "model_a": SMALL, "model_b": SMALL, "category": st.sampled_from(["", "qa", "code"]), "shown_left": st.sampled_from(["a", "b"]),
    "rationale": st.text(max_size=10), "source": st.sampled_from(["human", "import"]), "annotator_id": st.sampled_from(["", "w1", "w2"]),
}


@st.composite
def native_record(draw) -> dict:
    rec = draw(record_for("workbench"))
    for key in draw(st.lists(st.sampled_from(sorted(OPTIONAL)), max_size=4, unique=True)):
        rec[key] = draw(st.one_of(OPTIONAL[key], VALUES) if draw(st.integers(0, 4)) == 0 else OPTIONAL[key])
    return rec


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(records=st.lists(native_record(), min_size=1, max_size=8), as_table=st.booleans(), parquet=st.booleans())
def test_fast_path_reads_what_the_careful_path_reads(fuzz_store, records, as_table, parquet):
    """Whichever path runs, the frame and the rejects are the same as record by record."""
    from workbench import importers

    f = fuzz_store.path / f"same{fuzz_store.n}.{'parquet' if parquet else 'jsonl'}"
    fuzz_store.n += 1
    if parquet:
        try:
            pl.DataFrame(records).write_parquet(f)
        except Exception:  # columns of mixed types cannot be a Parquet file; JSONL only
            return
        careful_records = [(i, r) for i, r in enumerate(pl.read_parquet(f).iter_rows(named=True), start=1)]
    else:
        f.write_text("".join(json.dumps(r) + "\n" for r in records))
        careful_records = None
    if as_table:
        mapping = {"prompt": "prompt", "response_a": "response_a", "response_b": "response_b", "label": "label",
                   "label_values": {"a": "a", "b": "b", "tie": "tie", "both_bad": "both_bad"},
                   **{k: k for k in OPTIONAL if k != "source"}}
        got = importers.read_table(f, mapping)
        m = importers.TableMapping.parse(mapping)
        want = importers._collect(f, lambda rec: m.parse_row(rec, False), reads=m.reads(), records=careful_records)
    else:
        got = importers.read_native(f)
        want = importers._collect(f, importers._parse_native, reads=importers._NATIVE_TEXT + ("prompt_messages",),
                                  records=careful_records)
    if want[1].height == 0:
        assert got[0].equals(want[0])
    else:  # a bad record: the careful path ran and named it
        assert got[1].equals(want[1])


LLMFAO_CELL = {
    "id": st.sampled_from(["0", "1", "7", "x", ""]), "prompt": st.sampled_from(["7", "8", ""]),
    "model_x": st.sampled_from(["1", "2", "3", ""]), "model_y": st.sampled_from(["1", "2", ""]),
    "worker": st.one_of(st.sampled_from(["10", "11", ""]), TEXTS), "winner": st.one_of(st.sampled_from(["left", "right", "tie"]), TEXTS),
    "left": st.sampled_from(["Model One", "Model Two", "Model Three", "?"]), "right": st.sampled_from(["Model One", "Model Two", "Model Three", "?"]),
}


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(rows=st.lists(st.fixed_dictionaries(LLMFAO_CELL), max_size=6), skip=st.booleans())
def test_fuzz_llmfao_votes(fuzz_store, rows, skip):
    import csv
    import io

    folder = fuzz_store.path / "llmfao"
    if not folder.exists():
        folder.mkdir()
        for name, recs in {
            "models.jsonl": [{"id": 1, "name": "Model One"}, {"id": 2, "name": "Model Two"}, {"id": 3, "name": "Model Three"}],
            "pairs-crowd.jsonl": [{"id": 0, "prompt": 7, "text": "Name a colour.", "type": "t", "model_x": 1, "result_x": "Blue.", "model_y": 2, "result_y": ""},
                                  {"id": 1, "prompt": 7, "text": "Name a colour.", "type": "t", "model_x": 3, "result_x": "Red", "model_y": 1, "result_y": "Blue."}],
        }.items():
            (folder / name).write_text("".join(json.dumps(r) + "\n" for r in recs))
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(list(LLMFAO_CELL))
    w.writerows([list(r.values()) for r in rows])
    (folder / "crowd-comparisons.csv").write_bytes(buf.getvalue().encode("utf-8", "surrogatepass"))
    before = fuzz_store.store.stats()
    try:
        report = fuzz_store.store.import_file(folder, "llmfao", skip_invalid=skip, rejects_path=fuzz_store.path / "r.jsonl")
    except DOCUMENTED:
        assert fuzz_store.store.stats() == before
        return
    assert fuzz_store.store.stats()["label_events"] == before["label_events"] + report.labels_added
