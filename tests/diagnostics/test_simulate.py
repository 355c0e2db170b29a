"""The simulator: configs, determinism, the stated annotator models, the store round trip."""

from __future__ import annotations

import polars as pl
import pytest

import workbench
from workbench.frames import COMPARISONS_SCHEMA
from workbench.simulate import SimulationConfig, load_truth, simulate


def test_config_yaml_round_trip_and_digest(tmp_path):
    cfg = SimulationConfig(n_prompts=7, flip_rate=0.2, categories={"a": 1.0, "b": 3.0}, seed=4)
    p = tmp_path / "sim.yaml"
    p.write_text(cfg.to_yaml())
    back = SimulationConfig.from_yaml(p)
    assert back == cfg and back.digest() == cfg.digest()
    assert SimulationConfig.from_yaml("n_prompts: 3\nseed: 2\n").n_prompts == 3


@pytest.mark.parametrize("bad, match", [
    ({"flip_rate": 1.5}, "flip_rate"), ({"n_prompts": 0}, "n_prompts"), ({"responses_per_prompt": 1}, "responses_per_prompt"),
    ({"labels_per_pair": 5, "n_annotators": 3}, "labels_per_pair"), ({"temperature": 0}, "temperature"),
    ({"spammer_share": 0.6, "adversarial_share": 0.6}, "shares"), ({"categories": {}}, "categories"),
    ({"start": "yesterday"}, "start"), ({"n_prompts": True}, "n_prompts"), ({"tie_gap": float("nan")}, "tie_gap"),
])
def test_bad_configs_are_refused(bad, match):
    with pytest.raises(ValueError, match=match):
        SimulationConfig(**bad)


def test_unknown_fields_are_named():
    with pytest.raises(ValueError, match="unknown fields.*n_promts"):
        SimulationConfig.from_dict({"n_promts": 3})


def test_deterministic_and_in_the_comparisons_shape():
    cfg = SimulationConfig(n_prompts=20, n_pairs=100, seed=3)
    a, b = simulate(cfg), simulate(cfg)
    assert a.labels.equals(b.labels) and a.truth_labels.equals(b.truth_labels)
    c = a.comparisons()
    assert c.schema == pl.Schema(COMPARISONS_SCHEMA)
    assert c.height == 300 and c["comparison_id"].n_unique() == 300
    assert (c["response_a_id"] != c["response_b_id"]).all()
    # every pair is labelled by distinct annotators
    per_pair = a.labels.with_columns(pl.min_horizontal("response_a_id", "response_b_id").alias("f"), pl.max_horizontal("response_a_id", "response_b_id").alias("s"))
    assert simulate(cfg.__class__(**{**cfg.to_dict(), "seed": 4})).labels["label"].to_list() != a.labels["label"].to_list()
    assert per_pair.height == 300


def test_annotator_models_behave_as_stated():
    sim = simulate(SimulationConfig(
        n_prompts=100, responses_per_prompt=5, n_pairs=4000, labels_per_pair=2, n_annotators=40, spammer_share=0.25,
        adversarial_share=0.25, fatigued_share=0.25, fatigue_rate=0.4, session_length=40, temperature=0.2, utility_sd=2.0,
        tie_gap=0.05, seed=2))
    t = sim.truth_labels.join(sim.labels.select("comparison_id", "label", "duration_ms"), on="comparison_id")
    rate = t.filter(pl.col("label") != "tie").group_by("kind").agg(pl.col("correct").mean(), pl.col("duration_ms").median())
    r = dict(zip(rate["kind"], rate["correct"]))
    assert r["honest"] > 0.9 and r["adversarial"] < 0.1 and abs(r["spammer"] - 0.5) < 0.05
    speed = dict(zip(rate["kind"], rate["duration_ms"]))
    assert speed["spammer"] < speed["honest"] / 5
    fat = t.filter(pl.col("kind") == "fatigued").with_columns((pl.col("session_position") % 40 >= 20).alias("late"))
    early, late = fat.filter(~pl.col("late"))["flipped"].mean(), fat.filter(pl.col("late"))["flipped"].mean()
    assert late > early + 0.1  # noise rises through a session
    ties = t.filter(pl.col("label") == "tie")
    assert ties.height > 0 and (ties["utility_gap"].abs() < 0.05).all() and (ties["kind"] != "spammer").all()


def test_left_bias_and_length_bias_are_realized():
    sim = simulate(SimulationConfig(n_prompts=50, n_pairs=3000, labels_per_pair=1, left_bias=0.7, seed=1))
    lab = sim.labels
    left = ((lab["label"] == "a") & (lab["shown_left"] == "a")) | ((lab["label"] == "b") & (lab["shown_left"] == "b"))
    assert abs(left.mean() - 0.7) < 0.03
    sim = simulate(SimulationConfig(n_prompts=100, n_pairs=4000, labels_per_pair=1, utility_sd=0.0, models={"m": 0.0}, length_bias=3.0, seed=1))
    lab = sim.labels
    longer_a = lab["response_a"].str.len_chars() > lab["response_b"].str.len_chars()
    chose_longer = (longer_a & (lab["label"] == "a")) | (~longer_a & (lab["label"] == "b"))
    assert chose_longer.mean() > 0.75


def test_repeats_are_the_same_annotator_with_sides_swapped():
    sim = simulate(SimulationConfig(n_prompts=30, n_pairs=500, labels_per_pair=2, repeat_rate=0.2, seed=5))
    t = sim.truth_labels.join(sim.labels, on=["comparison_id", "annotator_id"])
    reps = t.filter(pl.col("repeat"))
    assert 150 < reps.height < 250
    first = t.filter(~pl.col("repeat"))
    j = reps.join(first, on=["annotator_id", "response_a_id", "response_b_id"], suffix="_first")
    assert j.height >= reps.height and (j["shown_left"] != j["shown_left_first"]).any()
    earliest = j.group_by("comparison_id").agg(pl.col("created_at").first(), pl.col("created_at_first").min())
    assert (earliest["created_at"] > earliest["created_at_first"]).all()


def test_to_store_round_trip_keeps_ids_and_truth(tmp_path):
    sim = simulate(SimulationConfig(n_prompts=15, n_pairs=120, gold_rate=0.2, seed=9))
    store = workbench.open(tmp_path / "w.db")
    receipt = sim.to_store(store, snapshot="sim-1")
    v = receipt.version
    assert v.n_comparisons == sim.labels.height
    got = v.to_polars()
    assert set(got["comparison_id"]) == set(sim.labels["comparison_id"])
    assert (got["source"] == "simulated").all() and got["gold"].sum() == sim.labels["gold"].sum()
    joined = got.join(sim.labels.select("comparison_id", "response_a_id", "label"), on="comparison_id", suffix="_sim")
    assert (joined["response_a_id"] == joined["response_a_id_sim"]).all() and (joined["label"] == joined["label_sim"]).all()
    meta = store.responses()["metadata"].str.json_decode(pl.Struct({"true_utility": pl.Float64, "simulation": pl.String}))
    assert meta.struct.field("true_utility").null_count() == 0
    truth = load_truth(receipt.truth_path)
    assert truth["labels"].equals(sim.truth_labels) and truth["config"] == sim.config
    # writing it again adds nothing (content-addressed)
    again = sim.to_store(store)
    assert again.report.labels_added == 0


def test_load_truth_refuses_a_folder_without_one(tmp_path):
    with pytest.raises(FileNotFoundError, match="no simulation truth"):
        load_truth(tmp_path)


def test_cli_simulate_and_print_config(tmp_path, capsys):
    from workbench.cli import main

    db = str(tmp_path / "w.db")
    assert main(["--db", db, "simulate", "--set", "n_prompts=5", "--set", "n_pairs=40", "--print-config"]) == 0
    assert "n_prompts: 5" in capsys.readouterr().out
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("n_prompts: 8\nn_pairs: 60\nspammer_share: 0.1\n")
    assert main(["--db", db, "simulate", "--config", str(cfg), "--snapshot", "s1", "--truth", str(tmp_path / "truth")]) == 0
    out = capsys.readouterr().out
    assert "180 labels" in out and "version s1" in out
    assert (tmp_path / "truth" / "truth_labels.parquet").exists()
    assert main(["--db", db, "simulate", "--set", "flip_rate=2"]) == 1
    assert "flip_rate" in capsys.readouterr().err
    assert main(["--db", db, "simulate", "--set", "nonsense"]) == 1
