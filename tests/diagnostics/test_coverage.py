"""Coverage diagnostics: graph components, spectral gaps (against networkx), degrees, categories,
generators, score range, embedding coverage."""

from __future__ import annotations

import networkx as nx
import numpy as np
import polars as pl
import pytest

from workbench.diagnostics import coverage
from workbench.simulate import SimulationConfig, simulate


def _halves_sim():
    sim = simulate(SimulationConfig(n_prompts=80, responses_per_prompt=4, n_pairs=1500, labels_per_pair=1, seed=6,
                                    models={"a1": 0.0, "a2": 0.5, "b1": 1.0, "b2": -0.5}))
    half = {"a1": 0, "a2": 0, "b1": 1, "b2": 1}
    lab = sim.comparisons()
    same = lab["model_a"].replace_strict(half) == lab["model_b"].replace_strict(half)
    return lab.filter(same)


def test_two_disconnected_halves_are_two_components():
    lab = _halves_sim()
    comps = coverage.graph_components(coverage.comparison_graph(lab, node="model"))
    assert comps.height == 2 and comps["n_nodes"].to_list() == [2, 2]
    assert comps["spectral_gap"].min() > 0
    # within one prompt: responses compared only within two halves
    f = pl.DataFrame({
        "prompt_id": ["p"] * 4, "response_a_id": ["r1", "r2", "r3", "r4"], "response_b_id": ["r2", "r1", "r4", "r3"],
        "label": ["a", "b", "a", "tie"], "annotator_id": ["u"] * 4,
    })
    per_prompt = coverage.responses_per_prompt(f)
    assert per_prompt["n_components"].to_list() == [2] and per_prompt["n_responses"].to_list() == [4]
    assert coverage.graph_components(coverage.comparison_graph(f)).height == 2


def test_report_flags_the_split(tmp_path):
    from workbench.diagnostics import build_report

    rep = build_report(_halves_sim(), tmp_path / "r", plots=False)
    assert rep.metrics["coverage"]["model_components"] == 2
    assert any("2 groups never compared" in f for f in rep.findings["finding"])


@pytest.mark.parametrize("graph", [nx.path_graph(12), nx.cycle_graph(9), nx.complete_graph(6), nx.random_regular_graph(3, 600, seed=1),
                                   nx.connected_watts_strogatz_graph(900, 4, 0.1, seed=2)])
def test_spectral_gap_matches_networkx(graph):
    a = nx.to_scipy_sparse_array(graph, format="csr")
    ref = sorted(nx.normalized_laplacian_spectrum(graph))[1]
    assert coverage.spectral_gap(a) == pytest.approx(ref, abs=1e-6)


def test_batched_component_gaps_match_one_by_one():
    rng = np.random.default_rng(0)
    graphs = [nx.gnp_random_graph(int(rng.integers(2, 9)), 0.7, seed=int(s)) for s in range(40)]
    graphs = [g for g in graphs if nx.is_connected(g)] + [nx.path_graph(450)]
    big = nx.disjoint_union_all(graphs)
    comps = coverage.graph_components(coverage.ComparisonGraph(pl.Series([str(i) for i in big.nodes]), nx.to_scipy_sparse_array(big, format="csr"), "response"))
    expected = sorted(round(sorted(nx.normalized_laplacian_spectrum(g))[1], 6) for g in graphs)
    assert sorted(round(x, 6) for x in comps["spectral_gap"].to_list()) == pytest.approx(expected, abs=1e-5)


def test_degrees_and_under_compared_items():
    f = pl.DataFrame({"prompt_id": ["p"] * 5, "response_a_id": ["x", "x", "x", "y", "y"], "response_b_id": ["y", "z", "w", "z", "z"],
                      "label": ["a"] * 5, "annotator_id": ["u"] * 5})
    d = coverage.degree_table(coverage.comparison_graph(f), min_comparisons=3)
    got = {r["node"]: (r["n_comparisons"], r["n_neighbours"], r["under_compared"]) for r in d.iter_rows(named=True)}
    assert got == {"x": (3, 3, False), "y": (3, 2, False), "z": (3, 2, False), "w": (1, 1, True)}


def test_category_mix_against_a_target():
    sim = simulate(SimulationConfig(n_prompts=300, n_pairs=900, categories={"coding": 0.7, "math": 0.3}, seed=1))
    mix = coverage.category_mix(sim.comparisons(), {"coding": 0.2, "math": 0.5, "writing": 0.3})
    rows = {r["category"]: r for r in mix.iter_rows(named=True)}
    assert rows["writing"]["n_prompts"] == 0 and rows["writing"]["gap"] == pytest.approx(-0.3)
    assert rows["coding"]["gap"] > 0.4
    assert coverage.category_mix_test(mix) < 1e-6
    on_target = coverage.category_mix(sim.comparisons(), {"coding": 0.7, "math": 0.3})
    assert coverage.category_mix_test(on_target) > 0.01
    assert coverage.category_mix(sim.comparisons())["target_share"].null_count() == 2
    with pytest.raises(ValueError, match="target mix"):
        coverage.category_mix(sim.comparisons(), {"coding": -1.0})


def test_model_matrix_counts_and_win_rates():
    f = pl.DataFrame({"response_a_id": ["1", "2", "3", "4"], "response_b_id": ["5", "6", "7", "8"], "model_a": ["m", "n", "m", "m"],
                      "model_b": ["n", "m", "n", "o"], "label": ["a", "a", "tie", "b"], "annotator_id": ["u"] * 4})
    mm = coverage.model_matrix(f)
    r = mm.filter((pl.col("model_1") == "m") & (pl.col("model_2") == "n")).row(0, named=True)
    assert (r["n_labels"], r["n_decisive"], r["wins_1"], r["win_rate_1"]) == (3, 2, 1.0, 0.5)
    r = mm.filter(pl.col("model_2") == "o").row(0, named=True)
    assert r["win_rate_1"] == 0.0


def test_score_range_bands():
    f = pl.DataFrame({"response_a_id": ["1", "2", "3", "4"], "response_b_id": ["5", "6", "7", "8"], "label": ["a"] * 4, "annotator_id": ["u"] * 4})
    sr = coverage.score_range(f, p_a=np.array([0.5, 0.55, 0.99, 0.2]))
    assert dict(zip(sr["band"], sr["n_pairs"])) == {"near boundary": 2, "middle": 1, "easy": 1}
    with pytest.raises(ValueError, match="one probability per row"):
        coverage.score_range(f, p_a=np.array([0.5]))


def test_embedding_coverage_with_arrays_and_texts():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 32)) * 5
    labelled = np.vstack([c + rng.normal(size=(200, 32)) for c in centers])
    near = centers[rng.integers(5, size=50)] + rng.normal(size=(50, 32))
    far = rng.normal(size=(50, 32)) * 5 + 20  # a region no label reaches
    frame, summary = coverage.embedding_coverage(labelled, np.vstack([near, far]))
    unc = frame["uncovered"].to_numpy()
    assert unc[:50].mean() < 0.15 and unc[50:].mean() > 0.9
    assert summary["n_labelled"] == 1000 and 0 < summary["threshold"] < 2
    texts = [f"how do I fix a {w} error in my python loop" for w in ("syntax", "type", "index", "key", "value", "name")] * 5
    frame, summary = coverage.embedding_coverage(texts, ["fix a syntax error in a python loop", "a sonnet about the autumn sea and gulls"])
    assert frame["uncovered"].to_list() == [False, True]
    with pytest.raises(ValueError, match="same width"):
        coverage.embedding_coverage(labelled, np.zeros((3, 5)))
    with pytest.raises(ValueError, match="nan or inf"):
        coverage.embedding_coverage(labelled, np.full((2, 32), np.nan))
    with pytest.raises(ValueError, match="at least one"):
        coverage.embedding_coverage([], ["x"])


def test_analyze_coverage_on_a_simulation_with_new_samples(mixed_sim):
    cov = coverage.analyze_coverage(mixed_sim.comparisons(), target_mix={"coding": 1, "math": 1},
                                    new_samples=["[coding #1] Please help with: function loop", "zebra giraffe safari"])
    assert cov.response_components.height == mixed_sim.comparisons()["prompt_id"].n_unique()
    assert cov.model_components.height == 1
    assert cov.embedding["uncovered"].to_list()[1] is True
    assert set(cov.score_range["band"]) == {"near boundary", "middle", "easy"}
    assert cov.score_range["share"].sum() == pytest.approx(1.0)
