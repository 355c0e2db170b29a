"""End to end on the project's demo data (hidden true quality per response): labels from the
simulated demo annotators -> a fitted reward model (a recorded run) -> DPO, PPO (RLHF) and Nash-MD
on the tabular policy -> each improves the true win rate over the reference (by how much is printed
and asserted), and every stage's run names the version and the reward-model run it consumed."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pytest

import workbench
from policy.cli import run_tabular
from policy.config import DPOConfig, NashMDConfig, PPOConfig
from policy.tabular import TabularPreferences, win_rate
from workbench.cli_core import load_demo


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    store = workbench.open(root / "workbench.db")
    load_demo(store)
    version = store.snapshot("demo-1")
    responses = store.responses().with_columns(
        pl.col("metadata").str.json_path_match("$.true_quality").cast(pl.Float64).alias("true_quality"))
    quality = dict(zip(responses["response_id"].to_list(), responses["true_quality"].to_list()))
    return store, version, quality, root


def true_preference(table: TabularPreferences, quality: dict) -> np.ndarray:
    """The demo annotators' model: P(i > j) = sigmoid(2 (q_i - q_j)) (see data/make_demo.py)."""
    q = np.array([[quality.get(c, 0.0) if c is not None else 0.0 for c in row] for row in table.candidate_ids])
    return 1 / (1 + np.exp(-2.0 * (q[:, :, None] - q[:, None, :])))


def test_demo_labels_to_reward_model_to_policies_improve_the_true_win_rate(demo, capsys):
    from rm.cli import load_model
    from rm.features import FeatureRewardModel

    store, version, quality, root = demo
    with store.start_run("reward_model", version, config={"encoder": "tfidf"}) as rm_run:
        model = FeatureRewardModel(encoder="tfidf").fit(version)
        rm_run.artifact_path = str(model.save(root / "rm"))
    fitted = load_model(rm_run.artifact_path)
    gains = {}
    for stage, config in (("dpo", DPOConfig(representation="tabular", beta=0.5, output_dir=str(root / "dpo"))),
                          ("ppo", PPOConfig(representation="tabular", kl_coef=0.5, output_dir=str(root / "ppo"))),
                          ("nash", NashMDConfig(representation="tabular", tau=0.5, n_iterations=200, output_dir=str(root / "nash")))):
        result = run_tabular(stage, version, config, None if stage == "dpo" else fitted, store,
                             parent_run_id=None if stage == "dpo" else rm_run.run_id)
        from policy.tabular import TabularDPO, TabularNashMD, TabularRLHF

        policy = {"dpo": TabularDPO, "ppo": TabularRLHF, "nash": TabularNashMD}[stage].load(result["artifact_path"])
        truth = true_preference(policy.table_, quality)
        gains[stage] = float(np.mean(win_rate(policy.log_probs_, policy.table_.log_reference, truth))) - 0.5
        run = store.run(result["run_id"])
        assert run.version_hash == version.hash and run.status == "completed"
        assert run.parent_run_id == (None if stage == "dpo" else rm_run.run_id)
    print("true win-rate gain over the reference on the demo data: " + json.dumps({k: round(v, 3) for k, v in gains.items()}))
    for stage, gain in gains.items():
        assert gain > 0.03, f"{stage} does not improve the true win rate ({gain:+.3f})"
