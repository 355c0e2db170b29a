"""Agreement statistics against independent references: the krippendorff package, scikit-learn,
and the worked example of Fleiss (1971) as reproduced on Wikipedia."""

from __future__ import annotations

import krippendorff
import numpy as np
import polars as pl
import pytest
from sklearn.metrics import cohen_kappa_score

from workbench.diagnostics import noise
from workbench.simulate import SimulationConfig, simulate

FLEISS_EXAMPLE = np.array([
    [0, 0, 0, 0, 14], [0, 2, 6, 4, 2], [0, 0, 3, 5, 6], [0, 3, 9, 2, 0], [2, 2, 8, 1, 1],
    [7, 7, 0, 0, 0], [3, 2, 6, 3, 0], [2, 5, 3, 2, 2], [6, 5, 2, 1, 0], [0, 2, 2, 3, 7],
])


def test_fleiss_kappa_matches_the_worked_example():
    assert noise.fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.20993, abs=1e-4)


def test_krippendorff_alpha_matches_the_package_on_random_counts():
    rng = np.random.default_rng(0)
    for _ in range(5):
        counts = rng.integers(0, 4, size=(200, 4)).astype(float)
        counts[rng.random(200) < 0.2] = 0  # some units with no values
        ours = noise.krippendorff_alpha_nominal(counts)
        ref = krippendorff.alpha(value_counts=counts[counts.sum(axis=1) >= 2], level_of_measurement="nominal")
        assert ours == pytest.approx(ref, abs=1e-10)


def _small_sim():
    return simulate(SimulationConfig(n_prompts=40, n_pairs=600, labels_per_pair=3, n_annotators=8, flip_rate=0.1, tie_gap=0.1, seed=7))


def test_alpha_of_a_table_matches_the_package_on_coder_by_unit_data():
    c = _small_sim().comparisons()
    ours = noise.agreement(c)
    # the reference: a coders x units matrix of each annotator's first label per unordered pair
    f = c.sort("created_at").with_columns(
        pl.min_horizontal("response_a_id", "response_b_id").alias("f"), pl.max_horizontal("response_a_id", "response_b_id").alias("s"))
    f = f.with_columns(pl.when(pl.col("response_a_id") == pl.col("f")).then(pl.col("label"))
                       .otherwise(pl.col("label").replace({"a": "b", "b": "a"})).alias("canon"))
    f = f.unique(["f", "s", "annotator_id"], keep="first", maintain_order=True)
    wide = f.with_columns(pl.col("canon").replace_strict({"a": 0, "b": 1, "tie": 2, "both_bad": 3}, return_dtype=pl.Float64)).pivot(
        on="annotator_id", index=["f", "s"], values="canon")
    data = wide.drop("f", "s").to_numpy().T
    keep = (~np.isnan(data)).sum(axis=0) >= 2
    ref = krippendorff.alpha(reliability_data=data[:, keep], level_of_measurement="nominal")
    assert ours["krippendorff_alpha"][0] == pytest.approx(ref, abs=1e-10)
    assert ours["n_units"][0] == keep.sum()
    assert 0.2 < ours["fleiss_kappa"][0] < 0.9


def test_cohen_kappa_matches_scikit_learn():
    c = _small_sim().comparisons()
    pairs = noise.cohen_kappa_pairs(c, min_shared=5)
    assert pairs.height > 0
    top = pairs.row(0, named=True)
    f = c.sort("created_at").with_columns(
        pl.min_horizontal("response_a_id", "response_b_id").alias("f"), pl.max_horizontal("response_a_id", "response_b_id").alias("s"))
    f = f.with_columns(pl.when(pl.col("response_a_id") == pl.col("f")).then(pl.col("label"))
                       .otherwise(pl.col("label").replace({"a": "b", "b": "a"})).alias("canon"))
    f = f.unique(["f", "s", "annotator_id"], keep="first", maintain_order=True)
    one = f.filter(pl.col("annotator_id") == top["annotator_1"]).select("f", "s", "canon")
    two = f.filter(pl.col("annotator_id") == top["annotator_2"]).select("f", "s", "canon")
    j = one.join(two, on=["f", "s"])
    assert j.height == top["n_shared"]
    assert top["kappa"] == pytest.approx(cohen_kappa_score(j["canon"].to_list(), j["canon_right"].to_list()), abs=1e-10)


def test_perfect_agreement_survives_swapped_display_order():
    # three annotators agree on every pair, but some saw it as (x, y) and others as (y, x)
    rows = []
    for p in range(30):
        better, worse = (f"r{p}-1", f"r{p}-2") if p % 2 else (f"r{p}-2", f"r{p}-1")
        for k, ann in enumerate(("x", "y", "z")):
            a, b, label = (better, worse, "a") if (p + k) % 2 else (worse, better, "b")
            rows.append({"response_a_id": a, "response_b_id": b, "label": label, "annotator_id": ann, "prompt_id": f"p{p}"})
    out = noise.agreement(pl.DataFrame(rows))
    assert out["observed_agreement"][0] == 1.0
    assert out["krippendorff_alpha"][0] == pytest.approx(1.0) and out["fleiss_kappa"][0] == pytest.approx(1.0)
    rows[0]["label"] = "tie"
    assert noise.agreement(pl.DataFrame(rows))["krippendorff_alpha"][0] < 1.0


def test_no_overlap_gives_nan_not_an_error():
    f = pl.DataFrame({"response_a_id": ["a", "c"], "response_b_id": ["b", "d"], "label": ["a", "b"], "annotator_id": ["u", "v"]})
    out = noise.agreement(f)
    assert out["n_units"][0] == 0 and np.isnan(out["krippendorff_alpha"][0])
    assert noise.cohen_kappa_pairs(f).height == 0


@pytest.mark.parametrize("frame, match", [
    (pl.DataFrame({"response_a_id": ["a"], "response_b_id": ["b"], "label": ["maybe"], "annotator_id": ["u"]}), "label outside"),
    (pl.DataFrame({"response_a_id": ["a"], "response_b_id": ["a"], "label": ["a"], "annotator_id": ["u"]}), "itself"),
    (pl.DataFrame({"response_a_id": ["a"], "label": ["a"], "annotator_id": ["u"]}), "missing"),
    (pl.DataFrame(schema={"response_a_id": pl.String, "response_b_id": pl.String, "label": pl.String, "annotator_id": pl.String}), "empty"),
    (pl.DataFrame({"response_a_id": ["a"], "response_b_id": ["b"], "label": ["a"], "annotator_id": [None]}, schema_overrides={"annotator_id": pl.String}), "missing values"),
])
def test_bad_tables_get_a_clear_error(frame, match):
    with pytest.raises(ValueError, match=match):
        noise.agreement(frame)


def test_pandas_input_is_accepted():
    c = _small_sim().comparisons()
    assert noise.agreement(c.to_pandas()).equals(noise.agreement(c))
