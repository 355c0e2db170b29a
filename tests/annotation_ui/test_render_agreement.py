"""Sanitized rendering of untrusted text, and agreement statistics against reference libraries."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from annotation_ui import agreement as ag
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


def test_kappas_and_alpha_match_references():
    sklearn_metrics = pytest.importorskip("sklearn.metrics")
    krippendorff = pytest.importorskip("krippendorff")
    rng = np.random.default_rng(0)
    cats = np.array(ag.CATEGORIES)
    truth = rng.integers(0, 4, size=60)
    raters = [np.where(rng.random(60) < 0.7, truth, rng.integers(0, 4, size=60)) for _ in range(3)]
    x, y = list(cats[raters[0]]), list(cats[raters[1]])
    assert ag.cohen_kappa(x, y) == pytest.approx(sklearn_metrics.cohen_kappa_score(x, y, labels=list(cats)))
    # Krippendorff with missing ratings, via the reference package
    data = np.array(raters, dtype=float)
    data[0, :10] = np.nan
    counts = np.zeros((60, 4))
    for r in data:
        for i, v in enumerate(r):
            if not np.isnan(v):
                counts[i, int(v)] += 1
    assert ag.krippendorff_alpha_nominal(counts) == pytest.approx(krippendorff.alpha(reliability_data=data, level_of_measurement="nominal"))
    # Fleiss with 3 raters each, against the closed form on a textbook-style table
    full = np.zeros((60, 4))
    for r in raters:
        full[np.arange(60), r] += 1
    n = 3
    p_j = full.sum(0) / (60 * n)
    p_i = ((full**2).sum(1) - n) / (n * (n - 1))
    expected = (p_i.mean() - (p_j**2).sum()) / (1 - (p_j**2).sum())
    assert ag.fleiss_kappa(full) == pytest.approx(expected)


def test_agreement_orients_pairs_and_uses_latest_label():
    t = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
    rows = []
    for k in range(8):
        p, a, b = f"p{k}", f"r{k}a", f"r{k}b"
        lab, mirrored = ("a", "b") if k % 2 else ("b", "a")
        rows.append((p, a, b, lab, "u1", t))
        rows.append((p, b, a, mirrored, "u2", t))  # the same preference with the sides swapped
    rows.append(("p0", "r0a", "r0b", "tie", "u1", t - dt.timedelta(days=1)))  # an older label of u1: ignored
    f = pl.DataFrame(rows, schema=["prompt_id", "response_a_id", "response_b_id", "label", "annotator_id", "created_at"], orient="row")
    res = dict(zip(*ag.agreement(f, min_shared=5).select("metric", "value").to_dict(as_series=False).values()))
    assert res["cohen_kappa_mean"] == pytest.approx(1.0) and res["fleiss_kappa"] == pytest.approx(1.0)
    table = ag.overlap_table(f)
    assert table.height == 16 and (table.group_by("item").agg(pl.col("label").n_unique())["label"] == 1).all()
