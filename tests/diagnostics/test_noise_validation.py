"""Noise diagnostics scored against the simulator's known truth (the issue's validation list)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from workbench.diagnostics import noise
from workbench.diagnostics.reliability import PairDawidSkene
from workbench.simulate import SimulationConfig, simulate


def _with_kind(table: pl.DataFrame, sim) -> pl.DataFrame:
    return table.join(sim.truth_annotators.select("annotator_id", "kind"), on="annotator_id")


def test_spammers_and_adversaries_rank_below_every_honest_annotator(mixed_sim, mixed_diagnostics):
    a = _with_kind(mixed_diagnostics.annotators, mixed_sim).filter(pl.col("kind") != "gold")
    bad = a["kind"].is_in(["spammer", "adversarial"]).to_numpy()
    assert bad.sum() == 6 and (~bad).sum() == 54  # 5% spammers + 5% adversaries of 60
    rel = a["reliability"].to_numpy()
    assert roc_auc_score(bad, -rel) >= 0.95
    assert rel[bad].max() < rel[~bad].min()
    # and the flags say which is which
    flags = dict(zip(a["annotator_id"], a["flags"].fill_null("")))
    for row in a.filter(pl.col("kind") == "adversarial").iter_rows(named=True):
        assert "adversarial" in flags[row["annotator_id"]]
    for row in a.filter(pl.col("kind") == "spammer").iter_rows(named=True):
        assert "random" in flags[row["annotator_id"]] and "too fast" in flags[row["annotator_id"]]
    for row in a.filter(pl.col("kind") == "honest").iter_rows(named=True):
        assert not any(f in (row["flags"] or "") for f in ("adversarial", "random", "too fast")), row
    # intervals cover the point estimates
    assert (a["ci_low"] <= a["reliability"]).all() and (a["reliability"] <= a["ci_high"]).all()


@pytest.mark.parametrize("flip_rate", [0.10, 0.25])
def test_estimated_flip_rate_within_two_points(flip_rate):
    # honest annotators with a sharp Bradley-Terry (temperature 0.05): the noise is the flips
    sim = simulate(SimulationConfig(n_prompts=200, responses_per_prompt=5, n_pairs=2000, labels_per_pair=3, n_annotators=30,
                                    temperature=0.05, utility_sd=2.0, flip_rate=flip_rate, seed=3))
    fitted = PairDawidSkene().fit(sim.comparisons())
    assert abs(fitted.flip_rate_ - sim.true_flip_rate) < 0.02
    # the suspects are the flipped labels: ranking quality against the truth
    sus = noise.suspect_labels(sim.comparisons(), fitted=fitted)
    assert sus["rank"].to_list() == list(range(1, sus.height + 1))
    assert sus["flip_posterior"].is_sorted(descending=True)
    sus = sus.join(sim.truth_labels, on="comparison_id")
    assert roc_auc_score(sus["flipped"].to_numpy(), sus["flip_posterior"].to_numpy()) > 0.9


def test_flip_rate_with_one_label_per_pair_uses_the_out_of_fold_model():
    sim = simulate(SimulationConfig(n_prompts=200, responses_per_prompt=5, n_pairs=5000, labels_per_pair=1, n_annotators=30,
                                    temperature=0.05, utility_sd=2.0, flip_rate=0.15, seed=8))
    fitted = PairDawidSkene().fit(sim.comparisons())
    assert abs(fitted.flip_rate_ - sim.true_flip_rate) < 0.03


@pytest.mark.parametrize("bias, detected", [(0.6, True), (0.5, False)])
def test_left_side_bias_detected_at_point_six_not_at_half(bias, detected):
    sim = simulate(SimulationConfig(n_prompts=100, n_pairs=2000, labels_per_pair=1, n_annotators=10, left_bias=bias, seed=21))
    c = sim.comparisons()
    overall = noise.left_side_overall(c).row(0, named=True)
    assert overall["n_sided"] == 2000
    if detected:
        assert overall["p_value"] < 0.01 and overall["biased"] and overall["left_rate"] > 0.55
    else:
        assert overall["p_value"] > 0.01 and not overall["biased"]
        assert not noise.left_side_bias(c)["left_biased"].any()


def test_left_side_p_values_match_scipy():
    from scipy.stats import binomtest

    sim = simulate(SimulationConfig(n_prompts=30, n_pairs=400, labels_per_pair=1, n_annotators=6, left_bias=0.65, seed=2))
    t = noise.left_side_bias(sim.comparisons())
    for r in t.iter_rows(named=True):
        k = round(r["left_rate"] * r["n_sided"])
        assert r["left_p_value"] == pytest.approx(binomtest(k, r["n_sided"], 0.5).pvalue, rel=1e-9)
    assert (t["left_p_adjusted"] >= t["left_p_value"]).all()


def test_gold_accuracy_and_self_consistency_follow_the_truth(mixed_sim, mixed_diagnostics):
    a = _with_kind(mixed_diagnostics.annotators, mixed_sim)
    mean = a.group_by("kind").agg(pl.col("gold_accuracy").mean(), pl.col("self_consistency").mean(), pl.col("n_gold").sum())
    g = dict(zip(mean["kind"], mean["gold_accuracy"]))
    assert g["honest"] > 0.75 and g["adversarial"] < 0.3 and 0.3 < g["spammer"] < 0.7
    sc = dict(zip(mean["kind"], mean["self_consistency"]))
    assert sc["honest"] > 0.65 and sc["spammer"] < 0.7
    # the gold expert is never graded by its own labels
    assert a.filter(pl.col("kind") == "gold")["n_gold"].item() == 0


def test_gold_accuracy_with_an_explicit_reference():
    f = pl.DataFrame({
        "response_a_id": ["x", "y", "x", "x"], "response_b_id": ["y", "x", "y", "z"], "label": ["a", "a", "b", "a"],
        "annotator_id": ["u", "u", "v", "v"],
    })
    ref = pl.DataFrame({"response_a_id": ["y"], "response_b_id": ["x"], "label": ["b"]})  # x is better than y
    t = noise.gold_accuracy(f, reference=ref)
    got = {r["annotator_id"]: (r["n_gold"], r["gold_correct"]) for r in t.iter_rows(named=True)}
    assert got == {"u": (2, 1), "v": (1, 0)}
    with pytest.raises(ValueError, match="gold reference"):
        noise.gold_accuracy(f, reference=pl.DataFrame({"a": [1]}))


def test_speed_and_length_bias_are_flagged():
    sim = simulate(SimulationConfig(n_prompts=150, n_pairs=3000, labels_per_pair=2, n_annotators=30, spammer_share=0.1, seed=4))
    t = _with_kind(noise.duration_outliers(sim.comparisons()), sim)
    assert set(t.filter(pl.col("too_fast"))["annotator_id"]) == set(t.filter(pl.col("kind") == "spammer")["annotator_id"])
    # one annotator with a strong length bias among unbiased ones
    base = simulate(SimulationConfig(n_prompts=150, n_pairs=3000, labels_per_pair=2, n_annotators=10, seed=5))
    biased = simulate(SimulationConfig(n_prompts=150, n_pairs=3000, labels_per_pair=2, n_annotators=10, length_bias=2.0, seed=5))
    swap_in = biased.labels.filter(pl.col("annotator_id") == "sim-03")
    c = pl.concat([base.labels.filter(pl.col("annotator_id") != "sim-03"), swap_in])
    fitted = PairDawidSkene().fit(c)
    from workbench.diagnostics.noise import _p_model_a
    from workbench.diagnostics._data import code

    lb = noise.length_bias(c, _p_model_a(code(c), fitted, "p_consensus"))
    top = lb.sort("length_z", descending=True).row(0, named=True)
    assert top["annotator_id"] == "sim-03" and top["length_biased"]
    assert lb.filter(pl.col("annotator_id") != "sim-03")["length_biased"].sum() == 0


def test_intransitivity_is_zero_for_consistent_labels_and_a_quarter_for_random_ones():
    clean = simulate(SimulationConfig(n_prompts=60, responses_per_prompt=6, n_pairs=3000, labels_per_pair=1, temperature=0.01, utility_sd=2, seed=1))
    t = noise.intransitivity(clean.comparisons())
    assert t["n_triads"].sum() > 500 and t["n_cyclic"].sum() == 0
    rand = simulate(SimulationConfig(n_prompts=60, responses_per_prompt=6, n_pairs=3000, labels_per_pair=1, spammer_share=1.0, seed=1))
    t = noise.intransitivity(rand.comparisons())
    share = t["n_cyclic"].sum() / t["n_triads"].sum()
    assert abs(share - 0.25) < 0.05


def test_intransitivity_counts_a_hand_made_cycle():
    f = pl.DataFrame({
        "prompt_id": ["p"] * 4, "response_a_id": ["x", "y", "z", "x"], "response_b_id": ["y", "z", "x", "w"],
        "label": ["a", "a", "a", "a"], "annotator_id": ["u"] * 4,
    })
    t = noise.intransitivity(f)
    assert t.row(0, named=True) == {"prompt_id": "p", "n_triads": 1, "n_cyclic": 1, "cyclic_share": 1.0}


def test_a_caller_model_can_supply_the_prior(mixed_sim):
    truth = mixed_sim.candidates.select("response_id", "utility")

    class TrueUtility:
        def predict_proba(self, frame):
            u = dict(zip(truth["response_id"], truth["utility"]))
            d = np.array([u[a] - u[b] for a, b in zip(frame["response_a_id"], frame["response_b_id"])])
            return np.column_stack([1 / (1 + np.exp(-d / 0.3)), np.zeros_like(d), 1 - 1 / (1 + np.exp(-d / 0.3))])

    fitted = PairDawidSkene().fit(mixed_sim.comparisons(), model=TrueUtility())
    a = _with_kind(fitted.reliability_, mixed_sim).filter(pl.col("kind") != "gold")
    bad = a["kind"].is_in(["spammer", "adversarial"]).to_numpy()
    assert roc_auc_score(bad, -a["reliability"].to_numpy()) == 1.0

    class Broken:
        def predict_proba(self, frame):
            return np.zeros(3)

    with pytest.raises(ValueError, match="predict_proba returned shape"):
        PairDawidSkene().fit(mixed_sim.comparisons(), model=Broken())
    with pytest.raises(TypeError, match="no predict_proba"):
        PairDawidSkene().fit(mixed_sim.comparisons(), model=object())


def test_only_ties_is_a_clear_error():
    f = pl.DataFrame({"response_a_id": ["x"], "response_b_id": ["y"], "label": ["tie"], "annotator_id": ["u"]})
    with pytest.raises(ValueError, match="no decisive labels"):
        PairDawidSkene().fit(f)


def test_intransitivity_samples_prompts_within_a_budget():
    sim = simulate(SimulationConfig(n_prompts=60, responses_per_prompt=6, n_pairs=3000, labels_per_pair=1, spammer_share=1.0, seed=1))
    full = noise.intransitivity(sim.comparisons())
    part = noise.intransitivity(sim.comparisons(), max_two_paths=2000)
    assert 0 < part.height < full.height
    assert set(part["prompt_id"]) <= set(full["prompt_id"])
    assert noise.intransitivity(sim.comparisons(), max_two_paths=1).height == 0
