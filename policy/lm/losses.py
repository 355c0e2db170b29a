"""Losses: short functions of tensors, each naming the paper's equation.

Notation (DPO family): ``chosen_logratio = log pi(y_w|x) - log pi_ref(y_w|x)`` (summed over tokens)
and likewise for the rejected response; ``margin = chosen_logratio - rejected_logratio``. The
distribution-learning objectives of Yun et al. take the policy's own sequence log-probabilities
(``chosen_log_prob``), no reference. Every pair loss returns per-example values (shape (B,)); the
caller averages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def dpo_sigmoid_loss(chosen_logratio: torch.Tensor, rejected_logratio: torch.Tensor, beta: float) -> torch.Tensor:
    """DPO (Rafailov et al. 2023, eq. 7): ``-log sigma(beta * margin)``."""
    return -F.logsigmoid(beta * (chosen_logratio - rejected_logratio))


def conservative_dpo_loss(chosen_logratio, rejected_logratio, beta: float, label_smoothing: float) -> torch.Tensor:
    """cDPO (Mitchell 2023, "A note on DPO with noisy preferences"): labels flipped with
    probability eps, so the target is 1 - eps:
    ``-(1 - eps) log sigma(beta m) - eps log sigma(-beta m)``."""
    margin = beta * (chosen_logratio - rejected_logratio)
    return -(1 - label_smoothing) * F.logsigmoid(margin) - label_smoothing * F.logsigmoid(-margin)


def robust_dpo_loss(chosen_logratio, rejected_logratio, beta: float, label_smoothing: float) -> torch.Tensor:
    """rDPO (Chowdhury et al. 2024, "Provably Robust DPO", eq. 8): the unbiased loss under label
    flips with rate eps: ``[(1 - eps) l(m) - eps l(-m)] / (1 - 2 eps)`` with ``l = -log sigma(beta .)``."""
    margin = beta * (chosen_logratio - rejected_logratio)
    clean = -(1 - label_smoothing) * F.logsigmoid(margin)
    flipped = -label_smoothing * F.logsigmoid(-margin)
    return (clean - flipped) / (1 - 2 * label_smoothing)


def ipo_loss(chosen_logratio, rejected_logratio, beta: float, chosen_length: torch.Tensor,
             rejected_length: torch.Tensor) -> torch.Tensor:
    """IPO (Azar et al. 2023, eq. 17) with tau = beta: ``(m - 1 / (2 tau))^2``, the log-ratios
    averaged per token (as TRL does, confirmed with the IPO authors)."""
    margin = chosen_logratio / chosen_length.clamp(min=1) - rejected_logratio / rejected_length.clamp(min=1)
    return (margin - 1 / (2 * beta)) ** 2


def explicit_preference_logit(chosen_log_prob: torch.Tensor, rejected_log_prob: torch.Tensor,
                              gamma: float) -> torch.Tensor:
    """The logit of the preference model that a language model *is* under Yun et al. (2025,
    "Alignment as Distribution Learning", eq. 3): ``P_pi(a > b | x) = pi(a|x)^gamma /
    (pi(a|x)^gamma + pi(b|x)^gamma) = sigma(gamma log pi(a|x) / pi(b|x))``. The arguments are the
    policy's sequence log-probabilities (no reference inside, unlike DPO's implicit reward)."""
    return gamma * (chosen_log_prob - rejected_log_prob)


def preference_mle_loss(chosen_log_prob, rejected_log_prob, gamma: float, label_prob: torch.Tensor) -> torch.Tensor:
    """Preference MLE (Yun et al. 2025, eq. 4): ``-log sigma(gamma log pi(a+|x) / pi(a-|x))``, the
    negative log-likelihood of the label under the policy's explicit preference model (eq. 3).
    ``label_prob`` is 1 for a decided pair; a kept tie counts as half a win each way (1/2). The
    KL regularizer ``beta KL(pi || pi_0)`` of eq. 5 is a separate term: :func:`sampled_kl_loss`."""
    logit = explicit_preference_logit(chosen_log_prob, rejected_log_prob, gamma)
    return -label_prob * F.logsigmoid(logit) - (1 - label_prob) * F.logsigmoid(-logit)


def _bernoulli_entropy(p: torch.Tensor) -> torch.Tensor:
    return -(torch.xlogy(p, p) + torch.xlogy(1 - p, 1 - p))


def preference_distillation_loss(chosen_log_prob, rejected_log_prob, gamma: float,
                                 teacher_prob: torch.Tensor) -> torch.Tensor:
    """Preference distillation (Yun et al. 2025, eq. 11):
    ``KL(Bern(P_hat(a+ > a-|x)) || Bern(P_pi(a+ > a-|x)))`` where ``P_hat = sigma(R(a+) - R(a-))``
    comes from a fitted reward / preference model and ``P_pi`` is the policy's explicit preference
    model (eq. 3). It is the expected PMLE loss under the fitted model's labels minus the
    labels' entropy, so it is 0 exactly when the policy's preferences match the teacher's."""
    logit = explicit_preference_logit(chosen_log_prob, rejected_log_prob, gamma)
    cross_entropy = -teacher_prob * F.logsigmoid(logit) - (1 - teacher_prob) * F.logsigmoid(-logit)
    return cross_entropy - _bernoulli_entropy(teacher_prob)


def sampled_kl_loss(sample_log_prob: torch.Tensor, sample_reference_log_prob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The regularizer ``KL(pi || pi_0)`` of Yun et al. (2025, eqs. 5 and 12) from completions
    sampled from the policy itself (the paper's PMLE uses on-policy samples for it).

    Returns ``(surrogate, kl)``: ``kl`` is the Monte-Carlo estimate ``mean(log pi(y) - log pi_0(y))``
    (no gradient) and ``surrogate`` is a scalar whose gradient is an unbiased estimate of
    ``grad KL(pi || pi_0) = E_{y~pi}[grad log pi(y) * log(pi(y) / pi_0(y))]`` (score function, with
    a leave-one-out baseline over the batch to cut its variance)."""
    log_ratio = (sample_log_prob - sample_reference_log_prob).detach()
    n = log_ratio.numel()
    baseline = (log_ratio.sum() - log_ratio) / (n - 1) if n > 1 else torch.zeros_like(log_ratio)
    surrogate = ((log_ratio - baseline) * sample_log_prob).mean()
    return surrogate, log_ratio.mean()


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (values * mask).sum() / mask.sum().clamp(min=1)
    return (values * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    mean = masked_mean(values, mask)
    var = masked_mean((values - mean) ** 2, mask)
    return (values - mean) * torch.rsqrt(var + eps) * mask


def generalized_advantages(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, discount: float,
                           gae_lambda: float) -> tuple[torch.Tensor, torch.Tensor]:
    """GAE (Schulman et al. 2016, eq. 16): ``A_t = sum_l (gamma lambda)^l delta_{t+l}``,
    ``delta_t = r_t + gamma V_{t+1} - V_t`` (V = 0 after the last token). Returns advantages and
    returns ``A + V``. ``mask`` must be a contiguous run of ones per row (a completion)."""
    rewards, values, mask = rewards * mask, values * mask, mask
    advantages = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        next_value = values[:, t + 1] * mask[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + discount * next_value - values[:, t]
        last = (delta + discount * gae_lambda * last) * mask[:, t]
        advantages[:, t] = last
    return advantages, (advantages + values) * mask


def ppo_clipped_policy_loss(log_probs, old_log_probs, advantages, mask, clip_range: float) -> torch.Tensor:
    """PPO-clip (Schulman et al. 2017, eq. 7): ``-min(rho A, clip(rho, 1 - eps, 1 + eps) A)``, per token."""
    ratio = torch.exp(log_probs - old_log_probs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    return masked_mean(torch.maximum(unclipped, clipped), mask)


def clipped_value_loss(values, old_values, returns, mask, clip_range: float) -> torch.Tensor:
    """Value loss with the PPO2 clipping of the value update: ``1/2 max((V - R)^2, (V_clip - R)^2)``."""
    clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    return 0.5 * masked_mean(torch.maximum((values - returns) ** 2, (clipped - returns) ** 2), mask)


def nash_md_policy_gradient_loss(log_prob: torch.Tensor, log_ratio_to_reference: torch.Tensor,
                                 preference: torch.Tensor, tau: float) -> torch.Tensor:
    """Nash-MD-PG (Munos et al. 2023, Sec. 7): the surrogate whose gradient is
    ``grad log pi(y|x) * (P(y > y'|x) - 1/2 - tau log(pi(y|x) / mu(y|x)))`` with ``y ~ pi`` and
    ``y'`` from the geometric mixture; the coefficient is held constant (detached)."""
    coefficient = (preference - 0.5 - tau * log_ratio_to_reference).detach()
    return -coefficient * log_prob
