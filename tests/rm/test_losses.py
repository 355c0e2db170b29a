import math

import numpy as np
import pytest
import torch

from rm.losses import bradley_terry_loss, davidson_loss, reward_centering_loss


def test_bradley_terry_loss_and_gradient_match_direct_formula():
    torch.manual_seed(0)
    rc = torch.randn(50, dtype=torch.float64, requires_grad=True)
    rr = torch.randn(50, dtype=torch.float64, requires_grad=True)
    loss = bradley_terry_loss(rc, rr).sum()
    loss.backward()
    z = (rc - rr).detach().numpy()
    direct = np.log1p(np.exp(-z))
    assert loss.item() == pytest.approx(direct.sum(), rel=1e-12)
    sig = 1 / (1 + np.exp(-z))
    np.testing.assert_allclose(rc.grad.numpy(), -(1 - sig), rtol=1e-10)
    np.testing.assert_allclose(rr.grad.numpy(), 1 - sig, rtol=1e-10)


def test_margin_and_label_smoothing():
    rc, rr = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.0])
    m = torch.tensor([0.5, 0.0])
    eps = 0.1
    got = bradley_terry_loss(rc, rr, m, eps)
    z = np.array([0.5, -0.5])
    want = -(1 - eps) * np.log(1 / (1 + np.exp(-z))) - eps * np.log(1 / (1 + np.exp(z)))
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    # smoothing keeps the optimum finite: the loss at huge margins grows again
    big = bradley_terry_loss(torch.tensor([50.0]), torch.tensor([0.0]), label_smoothing=0.1)
    assert big.item() > 1.0


def test_reward_centering():
    assert reward_centering_loss(torch.tensor([1.0, -2.0]), torch.tensor([1.0, 2.0])).tolist() == [4.0, 0.0]


def test_davidson_loss_matches_formula_and_gradcheck():
    torch.manual_seed(1)
    ra = torch.randn(20, dtype=torch.float64, requires_grad=True)
    rb = torch.randn(20, dtype=torch.float64, requires_grad=True)
    log_nu = torch.tensor(-0.3, dtype=torch.float64, requires_grad=True)
    tie = torch.arange(20) % 3 == 0
    got = davidson_loss(ra, rb, tie, log_nu)
    s = (ra - rb).detach().numpy()
    nu = math.exp(-0.3)
    den = np.exp(s / 2) + np.exp(-s / 2) + nu
    want = np.where(tie.numpy(), -np.log(nu / den), -np.log(np.exp(s / 2) / den))
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-10)
    assert torch.autograd.gradcheck(lambda a, b, n: davidson_loss(a, b, tie, n).sum(), (ra, rb, log_nu))
    # probabilities of the three outcomes sum to one
    p_a = np.exp(s / 2) / den
    p_b = np.exp(-s / 2) / den
    np.testing.assert_allclose(p_a + p_b + nu / den, 1.0)


def test_davidson_without_ties_approaches_bradley_terry():
    ra, rb = torch.tensor([1.0, -0.5]), torch.tensor([0.0, 0.3])
    d = davidson_loss(ra, rb, torch.tensor([False, False]), torch.tensor(-30.0))
    np.testing.assert_allclose(d.numpy(), bradley_terry_loss(ra, rb).numpy(), atol=1e-6)
