"""`workbench train ...` on a store holding simulated labels with known truth (tabular stages)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from policy import cli
from policy.tabular import TabularBestOfN, TabularDPO, TabularNashMD, TabularPreferenceMLE, TabularRLHF, win_rate

workbench = pytest.importorskip("workbench")
simulate_mod = pytest.importorskip("workbench.simulate")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="workbench")
    parser.add_argument("--db", default=None)
    cli.register(parser.add_subparsers(dest="command"))
    return parser


@pytest.fixture(scope="module")
def simulated_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    db = f"sqlite:///{root / 'workbench.db'}"
    store = workbench.open(db)
    sim = simulate_mod.simulate(seed=3, n_prompts=25, responses_per_prompt=4, n_pairs=500, labels_per_pair=3,
                                n_annotators=10, length_words=6.0, temperature=0.5)
    sim.to_store(store, snapshot="v1")
    return db, store, sim


def true_preference(table, sim):
    utility = dict(zip(sim.candidates["response"].to_list(), sim.candidates["utility"].to_list()))
    u = np.array([[utility.get(t, 0.0) if t is not None else 0.0 for t in row] for row in table.candidate_texts])
    return 1 / (1 + np.exp(-(u[:, :, None] - u[:, None, :]) / sim.config.temperature))


@pytest.mark.parametrize("stage,cls,yaml_text", [
    ("dpo", TabularDPO, "representation: tabular\nbeta: 0.5\n"),
    ("dpo", TabularPreferenceMLE, "representation: tabular\nloss: preference_mle\ngamma: 0.5\nbeta: 0.05\n"),
    ("dpo", TabularPreferenceMLE, "representation: tabular\nloss: preference_distillation\ngamma: 0.5\nbeta: 0.05\n"),
    ("ppo", TabularRLHF, "representation: tabular\nkl_coef: 0.5\n"),
    ("nash", TabularNashMD, "representation: tabular\ntau: 0.5\nn_iterations: 200\n"),
    ("bon", TabularBestOfN, "representation: tabular\nn: 4\n"),
])
def test_train_tabular_stage_records_a_run_and_beats_the_reference(tmp_path, simulated_store, stage, cls, yaml_text, capsys):
    db, store, sim = simulated_store
    config = tmp_path / "config.yaml"
    config.write_text(yaml_text + f"output_dir: {tmp_path / 'out'}\n")
    args = build_parser().parse_args(["--db", db, "train", stage, "v1", "--config", str(config)])
    assert args.func(args) == 0
    result = json.loads(capsys.readouterr().out)
    policy = cls.load(result["artifact_path"])
    assert type(policy) is cls
    assert policy.version_hash_ == store.version("v1").hash
    truth = true_preference(policy.table_, sim)
    gain = float(np.mean(win_rate(policy.log_probs_, policy.table_.log_reference, truth))) - 0.5
    print(f"{stage}: true win-rate gain over the reference {gain:+.3f}")
    assert gain > 0.02
    runs = store.runs()
    row = runs.filter(pl.col("kind") == f"policy_{stage}_tabular").row(-1, named=True)
    assert row["status"] == "completed" and row["artifact_path"] == result["artifact_path"]


def test_bad_config_fails_before_touching_the_store(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("beta: 0\n")
    db = f"sqlite:///{tmp_path / 'never.db'}"
    args = build_parser().parse_args(["--db", db, "train", "dpo", "v1", "--config", str(config)])
    assert args.func(args) == 1
    assert "beta must be a number > 0" in capsys.readouterr().err
    assert not (tmp_path / "never.db").exists()
    config.write_text("taux: 0.1\n")
    args = build_parser().parse_args(["--db", db, "train", "nash", "v1", "--config", str(config)])
    assert args.func(args) == 1
    assert "unknown key(s) ['taux']" in capsys.readouterr().err


def test_lm_stage_needs_a_fitted_model_and_a_local_model(tmp_path, simulated_store, capsys):
    db, _, _ = simulated_store
    config = tmp_path / "c.yaml"
    config.write_text(f"model: {tmp_path / 'missing'}\n")
    args = build_parser().parse_args(["--db", db, "train", "ppo", "v1", "--config", str(config)])
    assert args.func(args) == 1
    assert "needs --rm" in capsys.readouterr().err
    args = build_parser().parse_args(["--db", db, "train", "sft", "v1", "--config", str(config)])
    assert args.func(args) == 1
    assert "model folder not found" in capsys.readouterr().err


def test_ppo_on_a_fitted_reward_model_run_keeps_lineage_and_beats_the_reference(tmp_path, simulated_store, capsys):
    """labels -> `workbench rm train feature` (a recorded run) -> `workbench train ppo --rm RUN`."""
    from workbench.cli import main

    db, store, sim = simulated_store
    assert main(["--db", db, "rm", "train", "feature", "--version", "v1", "--output", str(tmp_path / "rm")]) == 0
    rm_run = store.runs(kind="reward_model").row(-1, named=True)
    assert rm_run["status"] == "completed"
    capsys.readouterr()
    config = tmp_path / "ppo.yaml"
    config.write_text(f"representation: tabular\nkl_coef: 0.5\noutput_dir: {tmp_path / 'out'}\n")
    assert main(["--db", db, "train", "ppo", "v1", "--rm", rm_run["run_id"], "--config", str(config)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["fitted_model"] == "given"
    run = store.run(result["run_id"])
    assert run.parent_run_id == rm_run["run_id"] and run.version_hash == store.version("v1").hash
    policy = TabularRLHF.load(result["artifact_path"])
    truth = true_preference(policy.table_, sim)
    gain = float(np.mean(win_rate(policy.log_probs_, policy.table_.log_reference, truth))) - 0.5
    print(f"ppo on the feature reward model: true win-rate gain over the reference {gain:+.3f}")
    assert gain > 0.02


def test_lm_stages_through_the_cli_train_a_local_checkpoint_and_record_runs(tmp_path, simulated_store, capsys):
    """`train sft` then `train dpo` with representation lm on a local (tiny) checkpoint folder."""
    from policy.lm.tiny import tiny_causal_lm, train_tokenizer
    from workbench.cli import main

    db, store, _ = simulated_store
    frame = store.version("v1").to_polars()
    tokenizer = train_tokenizer(frame["prompt"].to_list() + frame["response_a"].to_list() + frame["response_b"].to_list(), vocab_size=400)
    folder = tmp_path / "tiny-lm"
    tiny_causal_lm(tokenizer, seed=0, max_positions=128).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    common = "representation: lm\nmax_length: 64\nmax_prompt_length: 32\nbatch_size: 4\nprogress: false\nlog_every: 1\n"
    (tmp_path / "sft.yaml").write_text(common + f"model: {folder}\nmax_steps: 3\nlearning_rate: 0.001\noutput_dir: {tmp_path / 'sft'}\n")
    capsys.readouterr()
    assert main(["--db", db, "train", "sft", "v1", "--config", str(tmp_path / "sft.yaml")]) == 0
    sft = json.loads(capsys.readouterr().out)
    (tmp_path / "dpo.yaml").write_text(common + f"model: {folder}\nmax_steps: 3\nlearning_rate: 0.001\nbeta: 0.5\noutput_dir: {tmp_path / 'dpo'}\n")
    assert main(["--db", db, "train", "dpo", "v1", "--config", str(tmp_path / "dpo.yaml")]) == 0
    dpo = json.loads(capsys.readouterr().out)
    kinds = store.runs(version="v1")["kind"].to_list()
    assert any("sft" in k for k in kinds) and any("dpo" in k and "tabular" not in k for k in kinds)
    for result in (sft, dpo):
        assert result["artifact_path"] and (Path(result["artifact_path"]) / "config.json").exists()
    # best-of-n with a fitted reward model: the run names the reward-model run it consumed
    assert main(["--db", db, "rm", "train", "feature", "--version", "v1", "--output", str(tmp_path / "rm")]) == 0
    rm_run = store.runs(kind="reward_model").row(-1, named=True)["run_id"]
    (tmp_path / "bon.yaml").write_text(common + f"model: {folder}\nn: 2\nmax_new_tokens: 4\noutput_dir: {tmp_path / 'bon'}\n")
    capsys.readouterr()
    before = set(store.runs()["run_id"].to_list())
    assert main(["--db", db, "train", "bon", "v1", "--rm", rm_run, "--config", str(tmp_path / "bon.yaml")]) == 0
    new = store.runs().filter(~pl.col("run_id").is_in(list(before)))
    assert new.height == 1 and new["parent_run_id"][0] == rm_run and new["status"][0] == "completed"
    # preference distillation on the LM from the feature reward model's sigmoid(r(a) - r(b))
    (tmp_path / "distill.yaml").write_text(common + f"model: {folder}\nmax_steps: 2\nlearning_rate: 0.001\n"
                                           f"loss: preference_distillation\ngamma: 0.5\nbeta: 0.05\nmax_new_tokens: 4\n"
                                           f"output_dir: {tmp_path / 'distill'}\n")
    capsys.readouterr()
    assert main(["--db", db, "train", "dpo", "v1", "--rm", rm_run, "--config", str(tmp_path / "distill.yaml")]) == 0
    distill = json.loads(capsys.readouterr().out)
    assert "final_kl" in distill and "final_pair_loss" in distill
    row = store.runs().filter(pl.col("artifact_path").str.starts_with(str(tmp_path / "distill"))).row(0, named=True)
    assert row["parent_run_id"] == rm_run and row["status"] == "completed"
