"""The shared training loop under `accelerate launch`: 2 CPU processes (gloo) follow the same
loss curve as one process, with no code change (``batch_size`` is the global batch)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]

SCRIPT = r'''
import json, sys
sys.path.insert(0, {tests!r})
from conftest import make_comparisons
from policy.config import DPOConfig
from policy.lm import DPO
from policy.lm.tiny import tiny_causal_lm, train_tokenizer

comparisons = make_comparisons()
texts = comparisons["prompt"].to_list() + comparisons["response_a"].to_list() + comparisons["response_b"].to_list()
tokenizer = train_tokenizer(texts, vocab_size=300)
cfg = DPOConfig(output_dir={out!r}, max_steps=4, learning_rate=2e-3, beta=0.5, max_length=32,
                max_prompt_length=16, batch_size=8, progress=False, log_every=1, seed=0)
dpo = DPO(cfg).fit(comparisons, tiny_causal_lm(tokenizer, seed=0), tokenizer,
                   reference_model=tiny_causal_lm(tokenizer, seed=0))
from accelerate import PartialState
if PartialState().is_main_process:
    with open({result!r}, "w") as f:
        json.dump(dpo.history_["loss"].to_list(), f)
'''


def _run(tmp_path: Path, name: str, launcher: list[str]) -> list[float]:
    out, result = tmp_path / name, tmp_path / f"{name}.json"
    script = tmp_path / f"{name}.py"
    script.write_text(SCRIPT.format(tests=str(REPO / "tests" / "policy"), out=str(out), result=str(result)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    res = subprocess.run([*launcher, str(script)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(result.read_text())


def test_dpo_under_accelerate_launch_matches_one_process(tmp_path):
    one = _run(tmp_path, "one", [sys.executable])
    two = _run(tmp_path, "two", [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
                                  "--mixed_precision", "no", "--dynamo_backend", "no"])
    assert len(one) == len(two) == 4
    assert abs(one[0] - np.log(2)) < 1e-4  # policy == reference at the first step
    np.testing.assert_allclose(two, one, rtol=1e-3, atol=1e-4)
    assert two[-1] < two[0]  # and it trains


PPO_SCRIPT = r'''
import json, sys
sys.path.insert(0, {tests!r})
from conftest import PositiveWordPreference, PositiveWordReward, make_comparisons
from policy.config import DPOConfig, NashMDConfig, PPOConfig
from policy.lm import DPO, PPO, NashMDPG
from policy.lm.tiny import tiny_causal_lm, train_tokenizer

comparisons = make_comparisons()
texts = comparisons["prompt"].to_list() + comparisons["response_a"].to_list() + comparisons["response_b"].to_list()
tokenizer = train_tokenizer(texts, vocab_size=300)
common = dict(max_steps=2, learning_rate=1e-3, max_new_tokens=6, max_length=32, max_prompt_length=16,
              batch_size=4, progress=False, log_every=1, seed=0)
ppo = PPO(PPOConfig(output_dir={out!r} + "/ppo", ppo_epochs=1, num_minibatches=1, **common)).fit(
    comparisons, tiny_causal_lm(tokenizer, seed=0), tokenizer, PositiveWordReward())
nash = NashMDPG(NashMDConfig(output_dir={out!r} + "/nash", **common)).fit(
    comparisons, tiny_causal_lm(tokenizer, seed=0), tokenizer, PositiveWordPreference())
pmle = DPO(DPOConfig(output_dir={out!r} + "/pmle", loss="preference_mle", gamma=0.5, beta=0.05, **common)).fit(
    comparisons, tiny_causal_lm(tokenizer, seed=0), tokenizer)
from accelerate import PartialState
if PartialState().is_main_process:
    with open({result!r}, "w") as f:
        json.dump({{"ppo": ppo.history_["loss"].to_list(), "nash": nash.history_["loss"].to_list(),
                   "preference_mle": pmle.history_["loss"].to_list()}}, f)
'''


def test_sampling_stages_run_under_accelerate_launch(tmp_path):
    """PPO, Nash-MD-PG and preference MLE (generation inside the loop) train under 2 CPU processes."""
    out, result = tmp_path / "out", tmp_path / "result.json"
    script = tmp_path / "sampling.py"
    script.write_text(PPO_SCRIPT.format(tests=str(REPO / "tests" / "policy"), out=str(out), result=str(result)))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", str(script)]
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    losses = json.loads(result.read_text())
    for stage in ("ppo", "nash", "preference_mle"):
        assert len(losses[stage]) >= 2 and all(np.isfinite(losses[stage])), (stage, losses[stage])
