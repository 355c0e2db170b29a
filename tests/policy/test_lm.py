"""Language-model stages on a tiny GPT-2 with a BPE tokenizer trained on the fly."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PositiveWordPreference, PositiveWordReward

from policy.config import BestOfNConfig, ConfigError, DPOConfig, NashMDConfig, PPOConfig, SFTConfig
from policy.lm import DPO, PPO, SFT, BestOfN, NashMDPG, evaluate_policy
from policy.lm import losses
from policy.lm.data import PairDataset, preference_pairs
from policy.lm.logprobs import completion_log_probs
from policy.lm.tiny import tiny_causal_lm

SMALL = dict(max_length=32, max_prompt_length=16, batch_size=8, progress=False, log_every=1)


# ---------------------------------------------------------------------------------------------
# losses against their definitions
# ---------------------------------------------------------------------------------------------


def test_dpo_family_losses_against_definitions():
    torch.manual_seed(0)
    cw, cl = torch.randn(64), torch.randn(64)
    beta, eps = 0.5, 0.2
    m = cw - cl
    np.testing.assert_allclose(losses.dpo_sigmoid_loss(cw, cl, beta), np.log1p(np.exp(-beta * m.numpy())), rtol=1e-5)
    np.testing.assert_allclose(losses.conservative_dpo_loss(cw, cl, beta, 0.0), losses.dpo_sigmoid_loss(cw, cl, beta))
    # robust DPO is unbiased: its expectation over label flips is the clean loss
    flipped = losses.robust_dpo_loss(cl, cw, beta, eps)
    expected = (1 - eps) * losses.robust_dpo_loss(cw, cl, beta, eps) + eps * flipped
    np.testing.assert_allclose(expected, losses.dpo_sigmoid_loss(cw, cl, beta), rtol=1e-5, atol=1e-6)
    # conservative DPO is the expected loss under flipped labels
    np.testing.assert_allclose(
        losses.conservative_dpo_loss(cw, cl, beta, eps),
        (1 - eps) * losses.dpo_sigmoid_loss(cw, cl, beta) + eps * losses.dpo_sigmoid_loss(cl, cw, beta), rtol=1e-5)
    # IPO is zero exactly at the per-token margin 1 / (2 beta)
    lengths = torch.full((64,), 4.0)
    at_target = losses.ipo_loss(cl + 4 / (2 * beta), cl, beta, lengths, lengths)
    np.testing.assert_allclose(at_target, 0.0, atol=1e-10)
    # preference MLE on the policy's own log-probs is DPO's formula with a uniform reference;
    # a tie (t = 1/2) has its minimum at equal log-probabilities
    np.testing.assert_allclose(losses.preference_mle_loss(cw, cl, beta, torch.ones(64)),
                               losses.dpo_sigmoid_loss(cw, cl, beta), rtol=1e-6)
    margin = torch.zeros(1, requires_grad=True)
    losses.preference_mle_loss(margin, torch.zeros(1), beta, torch.tensor([0.5])).sum().backward()
    assert abs(margin.grad.item()) < 1e-7


def test_generalized_advantages_against_direct_sums():
    rng = np.random.default_rng(0)
    rewards, values = torch.tensor(rng.normal(size=(3, 6))), torch.tensor(rng.normal(size=(3, 6)))
    mask = torch.tensor([[0, 1, 1, 1, 1, 0], [0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], dtype=torch.float64)
    gamma, lam = 0.9, 0.8
    adv, ret = losses.generalized_advantages(rewards, values, mask, gamma, lam)
    for row in range(3):
        idx = np.nonzero(mask[row].numpy())[0]
        r, v = rewards[row, idx].numpy(), values[row, idx].numpy()
        v_next = np.append(v[1:], 0.0)
        delta = r + gamma * v_next - v
        expected = [sum((gamma * lam) ** k * delta[t + k] for k in range(len(idx) - t)) for t in range(len(idx))]
        np.testing.assert_allclose(adv[row, idx].numpy(), expected, rtol=1e-10)
        np.testing.assert_allclose(ret[row, idx].numpy(), np.array(expected) + v, rtol=1e-10)
    assert torch.all(adv[mask == 0] == 0)


def test_ppo_clip_stops_the_gradient_outside_the_trust_region():
    old = torch.zeros(1, 4)
    mask = torch.ones(1, 4)
    new = torch.full((1, 4), 0.5, requires_grad=True)  # ratio e^0.5 > 1.2
    losses.ppo_clipped_policy_loss(new, old, torch.ones(1, 4), mask, 0.2).backward()
    assert torch.all(new.grad == 0)
    new = torch.full((1, 4), 0.05, requires_grad=True)  # inside: gradient -A ratio / n
    losses.ppo_clipped_policy_loss(new, old, torch.ones(1, 4), mask, 0.2).backward()
    np.testing.assert_allclose(new.grad.numpy(), -np.exp(0.05) / 4, rtol=1e-6)


def test_nash_md_pg_gradient_is_the_papers_coefficient():
    log_prob = torch.tensor([-2.0, -3.0], requires_grad=True)
    ratio = torch.tensor([0.4, -0.2])
    pref = torch.tensor([0.9, 0.3])
    losses.nash_md_policy_gradient_loss(log_prob, ratio, pref, tau=0.5).sum().backward()
    np.testing.assert_allclose(log_prob.grad.numpy(), -(pref - 0.5 - 0.5 * ratio).numpy(), rtol=1e-6)


# ---------------------------------------------------------------------------------------------
# log-probabilities and data
# ---------------------------------------------------------------------------------------------


def test_completion_log_probs_match_a_full_forward(tokenizer, tiny_model, comparisons):
    dataset = PairDataset(tokenizer, preference_pairs(comparisons), 32, 16)
    batch = dataset.collate(list(range(6)))
    tiny_model.eval()
    with torch.no_grad():
        fast = completion_log_probs(tiny_model, batch)
        logits = tiny_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        token_logps = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
        slow = (token_logps * batch["completion_mask"][:, 1:]).sum(-1)
    np.testing.assert_allclose(fast.numpy(), slow.numpy(), rtol=1e-5, atol=1e-5)


def test_preference_pairs_orient_labels_and_reject_empty(comparisons):
    pairs = preference_pairs(comparisons)
    frame = comparisons.filter(comparisons["label"] != "tie")
    assert pairs.height == frame.height
    row = frame.row(0, named=True)
    winner = row["response_a"] if row["label"] == "a" else row["response_b"]
    assert pairs["chosen"][0] == winner
    with pytest.raises(ValueError, match="no decided pair"):
        preference_pairs(comparisons.filter(comparisons["label"] == "tie"))


# ---------------------------------------------------------------------------------------------
# stages
# ---------------------------------------------------------------------------------------------


def test_sft_lowers_the_chosen_nll(tmp_path, tokenizer, tiny_model, comparisons):
    sft = SFT(SFTConfig(output_dir=str(tmp_path), max_steps=15, learning_rate=3e-3, **SMALL)).fit(comparisons, tiny_model, tokenizer)
    nll = sft.history_["loss"].to_numpy()
    assert nll[-3:].mean() < nll[:3].mean() - 0.5
    saved = sft.save(tmp_path / "sft")
    assert (saved / "config.json").is_file() and (saved / "policy_config.json").is_file()


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "robust", "conservative", "preference_mle", "preference_distillation"])
def test_dpo_family_trains_and_caches_reference_log_probs(tmp_path, tokenizer, comparisons, loss):
    steps = 8 if loss == "sigmoid" else 3
    cfg = DPOConfig(output_dir=str(tmp_path), max_steps=steps, learning_rate=2e-3, loss=loss, beta=0.5,
                    label_smoothing=0.1 if loss in ("robust", "conservative") else 0.0, **SMALL)
    model = tiny_causal_lm(tokenizer, seed=0)
    reference = tiny_causal_lm(tokenizer, seed=0)
    dpo = DPO(cfg).fit(comparisons, model, tokenizer, reference_model=reference, preference_model=PositiveWordPreference())
    hist = dpo.history_
    assert hist.height == steps and hist["loss"].is_finite().all()
    if loss == "sigmoid":
        assert abs(hist["loss"][0] - np.log(2)) < 1e-4  # policy == reference at step 0
        assert hist["reward_accuracy"][-3:].mean() > 0.6
        assert hist["loss"][-3:].mean() < hist["loss"][0]
    if loss in ("preference_mle", "preference_distillation"):  # eq. 3 reads no reference log-probs on the pairs
        assert dpo.reference_cache_ is None and "kl" in hist.columns
        return
    assert not dpo.metrics_["reference_cache_hit"]
    if loss != "sigmoid":
        return
    # a second fit with the same reference reads the cache; another reference does not
    again = DPO(cfg).fit(comparisons, tiny_causal_lm(tokenizer, seed=0), tokenizer, reference_model=reference,
                         preference_model=PositiveWordPreference())
    assert again.metrics_["reference_cache_hit"]
    assert again.reference_cache_["key"] == dpo.reference_cache_["key"]
    other = DPO(cfg).fit(comparisons, tiny_causal_lm(tokenizer, seed=1), tokenizer)
    assert other.reference_cache_["key"] != dpo.reference_cache_["key"]


def test_dpo_checkpoint_resume_reproduces_the_uninterrupted_run(tmp_path, tokenizer, comparisons):
    def run(out, steps, resume=False, model=None):
        cfg = DPOConfig(output_dir=str(out), max_steps=steps, learning_rate=1e-3, checkpoint_every=2, **SMALL)
        return DPO(cfg).fit(comparisons, model or tiny_causal_lm(tokenizer, seed=0), tokenizer,
                            reference_model=tiny_causal_lm(tokenizer, seed=0), resume=resume)

    full = run(tmp_path / "full", 4)
    run(tmp_path / "part", 2)
    import shutil
    shutil.copytree(tmp_path / "part" / "checkpoint-2", tmp_path / "resumed" / "checkpoint-2")
    resumed = run(tmp_path / "resumed", 4, resume=True)
    for a, b in zip(full.model_.parameters(), resumed.model_.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert resumed.history_["step"].to_list() == [1, 2, 3, 4]


def test_distillation_requires_a_preference_model(tmp_path, tokenizer, tiny_model, comparisons):
    cfg = DPOConfig(output_dir=str(tmp_path), max_steps=1, loss="preference_distillation", **SMALL)
    with pytest.raises(TypeError, match="preference_model"):
        DPO(cfg).fit(comparisons, tiny_model, tokenizer)


def test_ppo_improves_reward_after_sft(tmp_path, tokenizer, comparisons):
    model = tiny_causal_lm(tokenizer, seed=0)
    model = SFT(SFTConfig(output_dir=str(tmp_path / "sft"), max_steps=25, learning_rate=3e-3, **SMALL)).fit(
        comparisons, model, tokenizer).model_
    cfg = PPOConfig(output_dir=str(tmp_path), max_steps=24, learning_rate=3e-3, max_new_tokens=8, ppo_epochs=2,
                    num_minibatches=2, kl_coef=0.02, entropy_coef=0.01, **{**SMALL, "batch_size": 12})
    ppo = PPO(cfg).fit(comparisons, model, tokenizer, PositiveWordReward())
    hist = ppo.history_
    assert {"score", "kl", "value_loss", "policy_loss", "clip_fraction"} <= set(hist.columns)
    assert hist["score"][-4:].mean() > hist["score"][:4].mean()
    report = evaluate_policy(ppo.model_, SFT(SFTConfig(output_dir=str(tmp_path / "sft2"), max_steps=25, learning_rate=3e-3, **SMALL)).fit(
        comparisons, tiny_causal_lm(tokenizer, seed=0), tokenizer).model_, tokenizer, comparisons["prompt"].unique().to_list()[:4],
        preference_model=PositiveWordPreference(), reward_model=PositiveWordReward(), n_samples=4, max_new_tokens=8)
    assert set(report.columns) == {"prompt", "kl_to_reference", "win_rate", "reward_gain"}
    print("PPO after SFT:", report.select("win_rate", "reward_gain", "kl_to_reference").mean().row(0, named=True))


def test_nash_md_pg_runs_and_records_preferences(tmp_path, tokenizer, tiny_model, comparisons):
    cfg = NashMDConfig(output_dir=str(tmp_path), max_steps=3, learning_rate=1e-3, max_new_tokens=6, tau=0.1,
                       mixture_coef=0.25, **SMALL)
    nash = NashMDPG(cfg).fit(comparisons, tiny_model, tokenizer, PositiveWordPreference())
    hist = nash.history_
    assert hist.height == 3 and ((hist["preference"] >= 0) & (hist["preference"] <= 1)).all()
    with pytest.raises(TypeError, match="proba"):
        NashMDPG(cfg).fit(comparisons, tiny_model, tokenizer, PositiveWordReward())


def test_best_of_n_picks_the_highest_reward(tokenizer, tiny_model, comparisons):
    bon = BestOfN(BestOfNConfig(n=6, max_new_tokens=8, max_length=32, max_prompt_length=16)).fit(
        comparisons.head(9), tiny_model, tokenizer, PositiveWordReward())
    samples = bon.samples_
    assert samples.height == comparisons.head(9)["prompt"].n_unique()
    assert (samples["reward"] >= samples["mean_reward"]).all()
    assert (samples["reward"].to_numpy() == PositiveWordReward().reward([], samples["response"].to_list())).all()


def test_tokenizer_mismatch_is_rejected_before_training(tmp_path, tokenizer, tiny_model, comparisons):
    from policy.lm.tiny import train_tokenizer

    class TokenReward:
        reads_token_ids = True
        tokenizer = train_tokenizer(["completely different text"], vocab_size=270)

        def reward(self, prompts, responses):
            return np.zeros(len(responses))

    cfg = PPOConfig(output_dir=str(tmp_path), max_steps=1, max_new_tokens=4, **SMALL)
    with pytest.raises(ValueError, match="another tokenizer"):
        PPO(cfg).fit(comparisons, tiny_model, tokenizer, TokenReward())


def test_configs_reject_bad_values_before_training(tmp_path):
    with pytest.raises(ConfigError, match="beta"):
        DPOConfig(beta=0)
    with pytest.raises(ConfigError, match="tau"):
        NashMDConfig(tau=-0.1)
    with pytest.raises(ConfigError, match="label_smoothing"):
        DPOConfig(loss="robust", label_smoothing=0.5)
    with pytest.raises(ConfigError, match="label_smoothing > 0"):
        DPOConfig(loss="robust")
    with pytest.raises(ConfigError, match="max_prompt_length"):
        SFTConfig(max_length=16, max_prompt_length=16)
    with pytest.raises(ConfigError, match="divisible"):
        PPOConfig(batch_size=6, num_minibatches=4)
    with pytest.raises(ConfigError, match="unknown key"):
        DPO({"beta": 0.1, "betta": 0.2})
