"""Pairwise reward losses: short functions of reward tensors (chosen / rejected, or a / b)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def bradley_terry_loss(
    r_chosen: torch.Tensor,
    r_rejected: torch.Tensor,
    margin: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair Bradley-Terry negative log-likelihood (Bradley & Terry 1952; Ouyang et al. 2022 eq. 1).

        loss = -(1 - eps) log sigmoid(r_c - r_r - m) - eps log sigmoid(-(r_c - r_r - m))

    m: the margin of Llama 2 (Touvron et al. 2023, eq. 2), e.g. from the label strength;
    eps: label smoothing for noisy labels (conservative loss, as in Mitchell 2023's cDPO).
    """
    z = r_chosen - r_rejected
    if margin is not None:
        z = z - margin
    return -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)


def reward_centering_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor) -> torch.Tensor:
    """Per-pair centering penalty (r_c + r_r)^2 (Eisenstein et al. 2023, "Helping or herding?");
    scaled by a small coefficient it pins the free additive constant of the reward near zero."""
    return (r_chosen + r_rejected) ** 2


def davidson_loss(
    r_a: torch.Tensor,
    r_b: torch.Tensor,
    is_tie: torch.Tensor,
    log_nu: torch.Tensor,
    margin: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-pair Davidson (1970) negative log-likelihood, with r_a the winner unless `is_tie`.

        P(a wins) = e^{s/2} / (e^{s/2} + e^{-s/2} + nu),  P(tie) = nu / (same),  s = r_a - r_b - m

    Label smoothing moves eps of a win's mass to the loss outcome, as in `bradley_terry_loss`.
    """
    s = r_a - r_b
    if margin is not None:
        s = s - torch.where(is_tie, torch.zeros_like(margin), margin)
    log_nu = log_nu.to(s.dtype).expand_as(s)
    log_den = torch.logsumexp(torch.stack([0.5 * s, -0.5 * s, log_nu]), dim=0)
    win = -(1.0 - label_smoothing) * (0.5 * s - log_den) - label_smoothing * (-0.5 * s - log_den)
    tie = -(log_nu - log_den)
    return torch.where(is_tie, tie, win)
