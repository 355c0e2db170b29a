"""Real crowd data: LLMFAO (124 workers, 1-5 votes a pair) and PandaLM (3 annotators x 999)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from workbench.diagnostics import noise
from workbench.diagnostics.report import build_report


def test_pandalm_agreement_is_high_and_matches_the_unanimity_count(pandalm_table):
    c = pandalm_table
    ag = noise.agreement(c).row(0, named=True)
    assert ag["n_units"] == 999 and ag["mean_raters_per_unit"] == 3.0
    # 879 of 999 items are unanimous (dataset README); the others agree on one pair of three
    counts = noise.unit_counts(c)
    assert int((counts.max(axis=1) == 3).sum()) == 879
    assert ag["observed_agreement"] == pytest.approx((879 + (999 - 879 - (counts.max(axis=1) == 1).sum()) / 3) / 999)
    assert 0.6 < ag["krippendorff_alpha"] < 0.95 and 0.6 < ag["fleiss_kappa"] < 0.95
    pairs = noise.cohen_kappa_pairs(c)
    assert pairs.height == 3 and (pairs["n_shared"] == 999).all() and (pairs["kappa"] > 0.5).all()


def test_llmfao_reliability_of_124_workers(tmp_path, llmfao_table):
    c = llmfao_table
    rep = build_report(c, tmp_path / "llmfao", plots=False)
    a = rep.noise.annotators
    assert a.height == 124
    assert rep.metrics["size"]["labels"] == 8931
    ag = rep.noise.agreement.row(0, named=True)
    assert 0.0 < ag["krippendorff_alpha"] < 0.6  # crowd votes on close pairs agree only moderately
    r = a["reliability"].drop_nulls().to_numpy()
    assert np.median(r) > 0.6 and r.min() < np.median(r)
    assert (a["ci_low"].drop_nulls() <= a["reliability"].drop_nulls()).all()
    # model_x is always shown on the left: the left rate is the share of "left" votes among decisive ones
    raw = c.filter(pl.col("label") != "tie")
    assert rep.noise.left_side["left_rate"][0] == pytest.approx((raw["label"] == "a").mean())
    assert rep.metrics["coverage"]["model_components"] == 1
