"""Losses: short functions of tensors, each naming the paper's equation.

Notation: ``chosen_logratio = log pi(y_w|x) - log pi_ref(y_w|x)`` (summed over tokens) and likewise
for the rejected response; ``margin = chosen_logratio - rejected_logratio``. Every function
returns per-example losses (shape (B,)); the caller averages.
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


def soft_preference_loss(chosen_logratio, rejected_logratio, beta: float, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy between a target P(y_w > y_l) and the policy's explicit preference model
    ``P_theta(y_w > y_l) = sigma(beta m)``: ``-t log sigma(beta m) - (1 - t) log sigma(-beta m)``."""
    margin = beta * (chosen_logratio - rejected_logratio)
    return -target * F.logsigmoid(margin) - (1 - target) * F.logsigmoid(-margin)


def preference_mle_loss(chosen_logratio, rejected_logratio, beta: float, label_prob: torch.Tensor) -> torch.Tensor:
    """Preference MLE (Yun et al. 2025, "Alignment as Distribution Learning", Sec. 4.1): the
    negative log-likelihood of the observed labels under the preference model that the policy
    defines explicitly, ``P_theta(y > y') = sigma(beta log pi_theta(y)/pi_ref(y) - beta log pi_theta(y')/pi_ref(y'))``.
    Every label counts, ties included (target 1/2), which keeps the MLE finite."""
    return soft_preference_loss(chosen_logratio, rejected_logratio, beta, label_prob)


def preference_distillation_loss(chosen_logratio, rejected_logratio, beta: float,
                                 teacher_prob: torch.Tensor) -> torch.Tensor:
    """Preference distillation (Yun et al. 2025, Sec. 4.2): match the policy's explicit preference
    model to a fitted preference (or reward) model's soft probabilities ``P_hat(y_w > y_l)``
    instead of the hard labels, which avoids DPO's degenerate, deterministic optimum."""
    return soft_preference_loss(chosen_logratio, rejected_logratio, beta, teacher_prob)


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
