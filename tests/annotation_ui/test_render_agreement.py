"""Sanitized rendering of untrusted text, and agreement statistics against reference libraries."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from annotation_ui.admin import agreement_table
from annotation_ui.render import conversation_to_safe_html, markdown_to_safe_html


@pytest.mark.parametrize("payload", [
    "<script>alert(1)</script>", "<img src=x onerror=alert(1)>", "[x](javascript:alert(1))",
    "<a href='javascript:alert(1)'>y</a>", "![t](http://198.51.100.7/t.png)", "<iframe src=//e.com></iframe>",
    "<svg onload=alert(1)>", "<div style='background:url(http://e.com)'>z</div>", "[x](JaVaScRiPt:alert(1))",
])
def test_hostile_markup_is_inert(payload):
    from html.parser import HTMLParser

    found = []

    class Tags(HTMLParser):
        def handle_starttag(self, tag, attrs):
            found.append((tag, dict(attrs)))

    Tags().feed(markdown_to_safe_html(payload))
    for tag, attrs in found:
        assert tag not in ("script", "img", "iframe", "svg", "style"), (payload, tag)
        assert not any(k.startswith("on") or k in ("style", "src") for k in attrs), (payload, attrs)
        assert not attrs.get("href", "").lower().startswith("javascript"), (payload, attrs)


def test_markdown_and_code_blocks_render():
    out = markdown_to_safe_html("**bold** and `x`\n\n```python\nprint('<b>')\n```\n\n[ok](https://example.org)")
    assert "<strong>bold</strong>" in out and "<pre><code" in out and "&lt;b&gt;" in out
    assert 'href="https://example.org"' in out and "noopener" in out
    conv = conversation_to_safe_html([{"role": "user", "content": "hi <script>x</script>"}, {"role": "assistant", "content": "yo"}])
    assert "<script" not in conv and "Assistant" in conv
    assert markdown_to_safe_html("x" * 300_000).count("more characters not shown") == 1


def test_agreement_orients_pairs_and_counts_one_label_per_annotator():
    # the statistics themselves are checked against scikit-learn and krippendorff in tests/diagnostics/test_agreement.py
    t = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    rows = []
    for k in range(8):
        p, a, b = f"p{k}", f"r{k}a", f"r{k}b"
        lab, mirrored = ("a", "b") if k % 2 else ("b", "a")
        rows.append((p, a, b, lab, "u1", t))
        rows.append((p, b, a, mirrored, "u2", t))  # the same preference with the sides swapped
    rows.append(("p0", "r0a", "r0b", "tie", "u1", t + dt.timedelta(days=1)))  # a later repeat of u1: self-consistency, not agreement
    f = pl.DataFrame(rows, schema=["prompt_id", "response_a_id", "response_b_id", "label", "annotator_id", "created_at"], orient="row")
    table = agreement_table(f, min_shared=5)
    res = dict(zip(table["metric"].to_list(), table["value"].to_list()))
    assert res["cohen_kappa_mean"] == pytest.approx(1.0) and res["fleiss_kappa"] == pytest.approx(1.0)
    assert res["krippendorff_alpha"] == pytest.approx(1.0)
    assert table["items"].to_list() == [8, 8, 8] and table["annotators"].to_list() == [2, 2, 2]
    # disagreeing on half the pairs brings every statistic down
    flipped = f.with_columns(pl.when((pl.col("annotator_id") == "u2") & (pl.col("prompt_id").is_in(["p1", "p2", "p3", "p4"])))
                             .then(pl.lit("tie")).otherwise(pl.col("label")).alias("label"))
    low = agreement_table(flipped, min_shared=5)
    assert (low["value"] < 0.7).all()
    empty = agreement_table(f.head(0))
    assert empty["items"].to_list() == [0, 0, 0] and empty["value"].is_nan().all()


def test_admin_progress_scores_gold_side_and_repeats(tmp_path, make_ui_store):
    from annotation_ui.service import AnnotationService
    from workbench import assign

    store, _logins = make_ui_store(tmp_path / "admin.db")
    pool = assign.pool(store)
    for pid in pool["pair_id"].head(4).to_list():
        assign.set_gold(store, pid, "a")
    assign.save_config(store, assign.AssignConfig(strategy="balanced", overlap=3, gold_rate=0.3, repeat_rate=0.3))
    svc = AnnotationService(store)
    # ann1 always clicks left (side-biased, inconsistent on swapped repeats); ann2 always prefers response a
    shown = {}
    for name in ("ann1", "ann2"):
        acct = svc.account(name)
        item = svc.next_item(acct)
        while item is not None:
            a = assign.get_assignment(store, item.assignment_id)
            shown[item.assignment_id] = a.kind
            choice = "left" if name == "ann1" or a.shown_left == "a" else "right"
            item = svc.submit(acct, item.assignment_id, choice)["next"]
    admin = svc.admin(svc.account("admin1"))
    per = {r["annotator_id"]: r for r in admin.progress_by_annotator().to_dicts()}
    assert per["ann1"]["left_rate"] == 1.0 and per["ann1"]["left_biased"]
    assert 0.2 < per["ann2"]["left_rate"] < 0.8 and per["ann2"]["gold_accuracy"] == 1.0 and per["ann2"]["n_gold"] == 4
    assert per["ann2"]["consistency"] == 1.0 and per["ann2"]["n_repeats"] >= 1
    assert per["ann1"]["consistency"] == 0.0  # every repeat is shown the other way round, so "left" flips the answer
    assert per["admin1"]["labels"] == 0 and per["admin1"]["n_gold"] is None
    assert "repeat" in shown.values() and "gold" in shown.values()
    agree = admin.agreement(min_shared=5)
    assert agree["items"][1] > 0 and agree["annotators"][1] == 2
    with pytest.raises(Exception, match="admin"):
        svc.admin(svc.account("ann1"))
