"""Yun et al. (2025), "Alignment as Distribution Learning": preference MLE (eq. 4-5), preference
distillation (eq. 11-12) and their KL regularizer, checked against the paper's definitions, a
generic optimizer, the closed-form gradient of the KL, and the paper's consistency claim (the
estimator recovers the target policy pi* of eq. 3, with error shrinking like 1/n)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import PositiveWordPreference
from scipy.optimize import minimize
from scipy.special import expit, log_expit, log_softmax

from policy.config import ConfigError, DPOConfig
from policy.lm import DPO, losses
from policy.lm.data import PairDataset, preference_pairs
from policy.lm.logprobs import completion_log_probs
from policy.lm.tiny import tiny_causal_lm
from policy.tabular import fit_preference_mle, kl_divergence, normalize_log_probs

SMALL = dict(max_length=32, max_prompt_length=16, batch_size=8, progress=False, log_every=1)


# ---------------------------------------------------------------------------------------------
# the losses against the paper's formulas
# ---------------------------------------------------------------------------------------------


def test_preference_mle_is_the_negative_log_likelihood_of_eq_3():
    torch.manual_seed(0)
    chosen, rejected = torch.randn(32) * 5, torch.randn(32) * 5
    gamma = 0.3
    # eq. 3 literally: pi(a)^gamma / (pi(a)^gamma + pi(b)^gamma)
    p = np.exp(gamma * chosen.numpy()) / (np.exp(gamma * chosen.numpy()) + np.exp(gamma * rejected.numpy()))
    np.testing.assert_allclose(losses.preference_mle_loss(chosen, rejected, gamma, torch.ones(32)), -np.log(p), rtol=1e-5)
    # a kept tie is half a win each way; the loss is symmetric in that case
    tie = torch.full((32,), 0.5)
    np.testing.assert_allclose(losses.preference_mle_loss(chosen, rejected, gamma, tie),
                               losses.preference_mle_loss(rejected, chosen, gamma, tie), rtol=1e-6)
    # no reference inside: shifting both responses' log-probabilities by the same amount changes nothing
    np.testing.assert_allclose(losses.preference_mle_loss(chosen + 3.0, rejected + 3.0, gamma, torch.ones(32)),
                               losses.preference_mle_loss(chosen, rejected, gamma, torch.ones(32)), rtol=1e-5)


def test_preference_distillation_is_a_bernoulli_kl_that_vanishes_at_the_teacher():
    torch.manual_seed(1)
    chosen, rejected = torch.randn(64), torch.randn(64)
    gamma = 0.7
    teacher = torch.rand(64)
    q = expit(gamma * (chosen - rejected).numpy())
    t = teacher.numpy()
    kl = t * np.log(t / q) + (1 - t) * np.log((1 - t) / (1 - q))
    np.testing.assert_allclose(losses.preference_distillation_loss(chosen, rejected, gamma, teacher), kl, rtol=1e-4, atol=1e-6)
    # it is the expected PMLE loss under teacher labels minus a constant (the labels' entropy)
    expected_mle = t * losses.preference_mle_loss(chosen, rejected, gamma, torch.ones(64)).numpy() + \
        (1 - t) * losses.preference_mle_loss(rejected, chosen, gamma, torch.ones(64)).numpy()
    np.testing.assert_allclose(expected_mle - losses.preference_distillation_loss(chosen, rejected, gamma, teacher).numpy(),
                               -(t * np.log(t) + (1 - t) * np.log(1 - t)), rtol=1e-4, atol=1e-6)
    # zero loss and zero gradient where the policy's preference equals the teacher's
    margin = torch.tensor([0.8], requires_grad=True)
    matched = torch.sigmoid(torch.tensor([gamma * 0.8]))
    value = losses.preference_distillation_loss(margin, torch.zeros(1), gamma, matched)
    value.sum().backward()
    assert abs(value.item()) < 1e-7 and abs(margin.grad.item()) < 1e-6
    # hard teacher labels (0 or 1) reduce it to PMLE exactly
    np.testing.assert_allclose(losses.preference_distillation_loss(chosen, rejected, gamma, torch.ones(64)),
                               losses.preference_mle_loss(chosen, rejected, gamma, torch.ones(64)), rtol=1e-6)


def test_sampled_kl_surrogate_gradient_matches_the_exact_kl_gradient():
    """On a categorical policy (a one-token language model) the score-function surrogate's gradient,
    averaged over samples from pi, equals grad KL(pi || pi_0) computed in closed form."""
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(6, generator=generator, dtype=torch.float64, requires_grad=True)
    reference = torch.log_softmax(torch.randn(6, generator=generator, dtype=torch.float64), -1)
    log_pi = torch.log_softmax(logits, -1)
    exact_kl = (log_pi.exp() * (log_pi - reference)).sum()
    (exact_grad,) = torch.autograd.grad(exact_kl, logits)
    samples = torch.multinomial(log_pi.detach().exp(), 400_000, replacement=True, generator=generator)
    log_pi = torch.log_softmax(logits, -1)
    surrogate, kl = losses.sampled_kl_loss(log_pi[samples], reference[samples])
    (estimate,) = torch.autograd.grad(surrogate, logits)
    assert abs(kl.item() - exact_kl.item()) < 0.01
    np.testing.assert_allclose(estimate.numpy(), exact_grad.numpy(), atol=0.01)
    assert np.linalg.norm(exact_grad.numpy()) > 0.1  # the check is not vacuous


# ---------------------------------------------------------------------------------------------
# the tabular solver: exact optimum, consistency, 1/n rate
# ---------------------------------------------------------------------------------------------


def _targets(n_prompts: int, k: int, seed: int, scale: float = 1.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return normalize_log_probs(rng.normal(scale=scale, size=(n_prompts, k)))


def _population_preference(log_target: np.ndarray, gamma: float) -> np.ndarray:
    return expit(gamma * (log_target[:, :, None] - log_target[:, None, :]))


def test_population_preference_mle_recovers_the_target_policy():
    """Eq. 3 data, beta = 0: the minimizer is pi* itself (consistency). Distillation with the
    true preference as teacher gives the same answer; DPO-style hard labels would not."""
    gamma, k = 0.5, 6
    log_target = _targets(200, k, seed=0, scale=1.5)
    uniform = np.full(log_target.shape, -np.log(k))
    pairs = np.ones((200, k, k)) - np.eye(k)  # every ordered pair compared once
    wins = pairs * _population_preference(log_target, gamma)
    fitted = fit_preference_mle(uniform, wins, gamma, beta=0.0)
    assert kl_divergence(log_target, fitted).max() < 1e-8
    # beta > 0 pulls towards the reference, monotonically in beta
    kls_to_target, kls_to_reference = [], []
    for beta in (0.01, 0.1, 1.0):
        pulled = fit_preference_mle(uniform, wins, gamma, beta=beta)
        kls_to_target.append(kl_divergence(log_target, pulled).mean())
        kls_to_reference.append(kl_divergence(pulled, uniform).mean())
    assert kls_to_target == sorted(kls_to_target) and kls_to_reference == sorted(kls_to_reference, reverse=True)


def test_tabular_solver_matches_a_generic_optimizer_with_the_kl_term():
    gamma, beta, k = 0.8, 0.3, 5
    rng = np.random.default_rng(3)
    log_reference = normalize_log_probs(rng.normal(size=(1, k)))
    wins = rng.integers(0, 6, size=(1, k, k)).astype(float) * (1 - np.eye(k))

    def objective(theta: np.ndarray) -> float:  # written out independently, no shared code
        log_pi = log_softmax(theta)
        d = gamma * (log_pi[:, None] - log_pi[None, :])
        nll = -np.sum(wins[0] * log_expit(d)) / wins.sum()
        return nll + beta * np.sum(np.exp(log_pi) * (log_pi - log_reference[0]))

    reference = minimize(objective, np.zeros(k), method="Nelder-Mead",
                         options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 40_000, "maxfev": 40_000})
    ours = fit_preference_mle(log_reference, wins, gamma, beta)
    np.testing.assert_allclose(np.exp(ours[0]), np.exp(log_softmax(reference.x)), atol=2e-5)


def test_finite_sample_error_shrinks_like_one_over_n():
    """Theorem 4: E KL(pi* || pi_hat) = O(1/n). Ten times the comparisons, about a tenth the error."""
    gamma, k, n_prompts = 1.0, 4, 300
    log_target = _targets(n_prompts, k, seed=1)
    uniform = np.full(log_target.shape, -np.log(k))
    preference = _population_preference(log_target, gamma)
    rng = np.random.default_rng(2)
    i, j = np.triu_indices(k, 1)
    errors = {}
    for per_pair in (60, 600):
        a_wins = rng.binomial(per_pair, preference[:, i, j])
        wins = np.zeros((n_prompts, k, k))
        wins[:, i, j], wins[:, j, i] = a_wins, per_pair - a_wins
        errors[per_pair] = kl_divergence(log_target, fit_preference_mle(uniform, wins, gamma, beta=0.0)).mean()
    ratio = errors[60] / errors[600]
    print(f"mean KL(pi* || pi_hat): {errors[60]:.2e} (60 per pair) -> {errors[600]:.2e} (600 per pair), ratio {ratio:.1f}")
    assert 6.0 < ratio < 16.0


def test_tabular_solver_rejects_bad_input():
    log_reference = np.full((2, 3), -np.log(3))
    wins = np.ones((2, 3, 3)) - np.eye(3)
    with pytest.raises(ValueError, match="gamma"):
        fit_preference_mle(log_reference, wins, gamma=0.0)
    with pytest.raises(ValueError, match="beta"):
        fit_preference_mle(log_reference, wins, gamma=1.0, beta=-1.0)
    with pytest.raises(ValueError, match="no comparison"):
        fit_preference_mle(log_reference, np.zeros((2, 3, 3)), gamma=1.0)
    with pytest.raises(ValueError, match="shape"):
        fit_preference_mle(log_reference, np.ones((2, 3)), gamma=1.0)


# ---------------------------------------------------------------------------------------------
# the language-model stage
# ---------------------------------------------------------------------------------------------


@torch.no_grad()
def _pair_loss(model, tokenizer, comparisons, cfg) -> float:
    pairs = PairDataset(tokenizer, preference_pairs(comparisons), cfg.max_length, cfg.max_prompt_length)
    chosen, rejected = completion_log_probs(model, pairs.collate(list(range(len(pairs))))).chunk(2)
    return losses.preference_mle_loss(chosen, rejected, cfg.gamma, torch.ones(len(pairs))).mean().item()


@pytest.mark.parametrize("loss", ["preference_mle", "preference_distillation"])
def test_lm_stage_trains_with_the_on_policy_kl_regularizer(tmp_path, tokenizer, comparisons, loss):
    cfg = DPOConfig(output_dir=str(tmp_path), max_steps=10, learning_rate=3e-3, loss=loss, gamma=0.5, beta=0.05,
                    max_new_tokens=6, **SMALL)
    model, reference = tiny_causal_lm(tokenizer, seed=0), tiny_causal_lm(tokenizer, seed=0)
    fitted = DPO(cfg).fit(comparisons, model, tokenizer, reference_model=reference,
                          preference_model=PositiveWordPreference())
    hist = fitted.history_
    assert {"pair_loss", "kl", "policy_preference", "reward_accuracy"} <= set(hist.columns)
    assert hist.height == 10 and hist["loss"].is_finite().all()
    assert abs(hist["kl"][0]) < 1e-5  # the policy is the reference at step 0: log pi - log pi_0 = 0 exactly
    # on the whole pair set (not one noisy batch): the trained policy's explicit preference model fits better
    before = _pair_loss(reference, tokenizer, comparisons, cfg)
    after = _pair_loss(fitted.model_, tokenizer, comparisons, cfg)
    print(f"{loss}: pair loss {before:.4f} -> {after:.4f}, KL {hist['kl'][-1]:.4f}")
    assert after < before - 0.01
    assert fitted.reference_cache_ is None  # no reference log-probs on the pairs: eq. 3 has none
    assert not any(p.grad is not None for p in reference.parameters())


def test_gamma_and_sample_length_are_validated():
    with pytest.raises(ConfigError, match="gamma"):
        DPOConfig(loss="preference_mle", gamma=0.0)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        DPOConfig(loss="preference_mle", max_new_tokens=0)
