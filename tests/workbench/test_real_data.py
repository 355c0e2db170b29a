"""Round trips on the real data sets in ``<repo>/../shared/data`` (skipped when absent).

HH-RLHF harmless-base test (2,312 transcripts; 4 end in an empty assistant turn, which the strict
import rejects and ``skip_invalid`` leaves out), LLMFAO crowd votes (8,931 votes, 124 workers,
ties) and PandaLM (999 items x 3 annotators): counts, texts and annotators survive the import,
a snapshot, every reader and the TRL export; importing twice adds nothing.
"""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

import workbench
from workbench.frames import InvalidRows

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
HH = DATA / "hh_rlhf_harmless_base_test" / "test.jsonl.gz"
LLMFAO = DATA / "llmfao_crowd"
PANDALM = DATA / "pandalm_testset_v1" / "testset-v1.json"

pytestmark = pytest.mark.skipif(
    not (HH.exists() and (LLMFAO / "crowd-comparisons.csv").exists() and PANDALM.exists()),
    reason="the real data sets are not in <repo>/../shared/data (a user's clone has none)",
)


@pytest.fixture(scope="module")
def loaded(tmp_path_factory):
    """One store with all three imported, and a snapshot of it."""
    tmp = tmp_path_factory.mktemp("real")
    store = workbench.open(tmp / "w.db")
    with pytest.raises(InvalidRows) as err:
        store.import_file(HH)
    hh_rejects = err.value.rejects
    assert store.stats()["label_events"] == 0
    reports = {
        "hh": store.import_file(HH, skip_invalid=True, rejects_path=tmp / "hh.rejects.jsonl"),
        "llmfao": store.import_file(LLMFAO),
        "pandalm": store.import_file(PANDALM),
    }
    version = store.snapshot("real-v1")
    yield store, version, reports, hh_rejects, tmp
    store.close()


def by_source(frame: pl.DataFrame, which: str) -> pl.DataFrame:
    if which == "llmfao":
        return frame.filter(pl.col("annotator_id").str.starts_with("llmfao:"))
    if which == "pandalm":
        return frame.filter(pl.col("annotator_id").str.starts_with("pandalm:"))
    return frame.filter(pl.col("annotator_id") == "import")


def test_counts(loaded):
    store, version, reports, hh_rejects, tmp = loaded
    assert hh_rejects.select("line", "field", "reason").rows() == [
        (87, "response_a", "empty text"), (517, "response_a", "empty text"),
        (926, "response_a", "empty text"), (1104, "response_a", "empty text")]
    assert (reports["hh"].labels_added, reports["hh"].rows_rejected) == (2308, 4)
    assert pl.read_ndjson(tmp / "hh.rejects.jsonl")["line"].to_list() == [87, 517, 926, 1104]
    assert (reports["llmfao"].labels_added, reports["llmfao"].annotators_added, reports["llmfao"].prompts_added) == (8931, 124, 13)
    assert (reports["pandalm"].labels_added, reports["pandalm"].annotators_added) == (2997, 3)
    assert version.n_comparisons == 2308 + 8931 + 2997


def test_import_twice_adds_nothing(loaded):
    store, version, *_ = loaded
    before = store.stats()
    for path, kw in ((HH, {"skip_invalid": True}), (LLMFAO, {}), (PANDALM, {})):
        r = store.import_file(path, rejects_path=Path(loaded[4]) / "again.jsonl", **kw)
        assert (r.labels_added, r.prompts_added, r.responses_added, r.annotators_added) == (0, 0, 0, 0)
    assert store.stats() == before


def test_llmfao_votes_match_the_csv(loaded):
    _, version, *_ = loaded
    f = by_source(version.to_polars(), "llmfao")
    csv = pl.read_csv(LLMFAO / "crowd-comparisons.csv")
    assert f.height == csv.height == 8931
    assert f["annotator_id"].n_unique() == csv["worker"].n_unique() == 124
    want = Counter({"left": "a", "right": "b", "tie": "tie"}[w] for w in csv["winner"])  # model_x is always shown left
    assert Counter(f["label"]) == want and want["tie"] == 3471
    assert (f["shown_left"] == "a").all()
    # per worker, the same votes
    got = Counter(zip(f["annotator_id"], f["label"]))
    exp = Counter((f"llmfao:{w}", {"left": "a", "right": "b", "tie": "tie"}[x]) for w, x in zip(csv["worker"], csv["winner"]))
    assert got == exp
    # texts: every stored pair is a pair of the JSONL, byte for byte, with model names
    pairs = pl.read_ndjson(LLMFAO / "pairs-crowd.jsonl", infer_schema_length=None)
    models = dict(pl.read_ndjson(LLMFAO / "models.jsonl").select("id", "name").iter_rows())
    truth = {(models[r["model_x"]], models[r["model_y"]], r["result_x"], r["result_y"], r["text"]) for r in pairs.iter_rows(named=True)}
    stored = set(f.select("model_a", "model_b", "response_a", "response_b", "prompt").iter_rows())
    assert stored <= truth and len(stored) == csv["id"].n_unique() == 2139
    assert (f["response_a"].str.strip_chars() == "").sum() > 0  # empty outputs were judged and are kept


def test_pandalm_labels_match_the_annotator_columns(loaded):
    _, version, *_ = loaded
    f = by_source(version.to_polars(), "pandalm")
    items = json.loads(PANDALM.read_text())
    assert f.height == 3 * len(items) == 2997
    code = {0: "tie", 1: "a", 2: "b"}
    want = Counter((f"pandalm:annotator{k}", code[it[f"annotator{k}"]]) for it in items for k in (1, 2, 3))
    assert Counter(zip(f["annotator_id"], f["label"])) == want
    # instruction and input joined by a blank line, a blank part left out
    prompt = {it["idx"]: "\n\n".join(t for t in (it["instruction"], it["input"]) if t.strip()) for it in items}
    stored = set(f.select("prompt", "response_a", "response_b", "model_a", "model_b").iter_rows())
    truth = {(prompt[it["idx"]], str(it["response1"]), str(it["response2"]), *it["cmp_key"].split("_")) for it in items}
    assert stored == truth


def test_hh_texts_survive(loaded):
    _, version, *_ = loaded
    f = by_source(version.to_polars(), "hh")
    assert f.height == 2308 and set(f["label"]) == {"a"}
    rows = [json.loads(line) for line in gzip.open(HH, "rt", encoding="utf-8")]
    # An independent reading of the common case (the two transcripts differ only in the last
    # turn): the texts after the last "Assistant:" are the responses, the last Human turn ends the prompt.
    expected = Counter()
    for r in rows:
        c_head, c_last = r["chosen"].rsplit("\n\nAssistant:", 1)
        r_head, r_last = r["rejected"].rsplit("\n\nAssistant:", 1)
        if c_head == r_head and c_last.strip() and r_last.strip():
            expected[(c_head.rsplit("\n\nHuman:", 1)[1].strip(), c_last.strip(), r_last.strip())] += 1
    stored = Counter((m[-1]["content"], a, b) for m, a, b in f.select("prompt_messages", "response_a", "response_b").iter_rows())
    assert sum(expected.values()) > 2250
    assert not expected - stored  # every one of them is stored, texts intact


def test_readers_agree(loaded):
    _, version, *_ = loaded
    f = version.to_polars()
    pd_frame = version.to_pandas()
    ds = version.to_datasets()
    assert len(pd_frame) == ds.num_rows == f.height
    assert Counter(pd_frame["annotator_id"]) == Counter(ds["annotator_id"]) == Counter(f["annotator_id"])
    assert Counter(ds["label"]) == Counter(f["label"])
    i = f["response_a"].str.len_chars().arg_max()
    assert pd_frame["response_a"].iloc[i] == ds[int(i)]["response_a"] == f["response_a"][i]


def test_trl_exports_and_reimport(loaded):
    store, version, _, _, tmp = loaded
    f = version.to_polars()
    n_ab = f.filter(pl.col("label").is_in(["a", "b"])).height
    n_tie = (f["label"] == "tie").sum()
    std = pl.read_ndjson(version.export(tmp / "trl.jsonl", "trl"))
    assert std.height == n_ab
    kept = pl.read_parquet(version.export(tmp / "trl.parquet", "trl", ties="keep"))
    assert kept.height == n_ab + n_tie and kept["tie"].sum() == n_tie
    # HH comparisons exported as conversations come back as the very same comparisons
    hh_only = by_source(f, "hh")
    from workbench.export import export_version

    conv = export_version(hh_only, tmp / "hh_conv.jsonl", "trl-conversational")
    again = store.import_file(conv)
    assert (again.labels_added, again.prompts_added, again.responses_added) == (0, 0, 0)
    # LLMFAO exported as standard TRL, imported into a new store: the same preferences, ties dropped
    llm = by_source(f, "llmfao")
    out = export_version(llm, tmp / "llmfao_trl.jsonl", "trl")
    fresh = workbench.open(tmp / "fresh.db")
    r = fresh.import_file(out, mapping={"allow_empty_responses": True})  # LLMFAO has empty outputs
    back = fresh.snapshot("back").to_polars()
    assert r.labels_added == back.height == llm.filter(pl.col("label") != "tie").height

    def prefs(frame: pl.DataFrame) -> Counter:
        won = frame.filter(pl.col("label").is_in(["a", "b"]))
        return Counter(
            (p, a, b, who) if lab == "a" else (p, b, a, who)
            for p, a, b, lab, who in won.select("prompt", "response_a", "response_b", "label", "annotator_id").iter_rows()
        )

    assert prefs(back) == prefs(llm)
    ds = version.export(tmp / "all_ds", "datasets")
    import datasets

    assert datasets.load_from_disk(str(ds)).num_rows == f.height
