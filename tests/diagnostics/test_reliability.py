"""The annotator model's solver against an independent optimizer (scipy L-BFGS on the same objective)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import minimize
from scipy.special import expit

from workbench.diagnostics import reliability
from workbench.diagnostics.reliability import fit_scores


def _problem(seed: int = 0):
    rng = np.random.default_rng(seed)
    w, l = [], []
    for c in range(300):  # many small components (responses of one prompt)
        k = 3 + c % 3
        for _ in range(3 * k):
            i, j = rng.choice(k, 2, replace=False)
            w.append(c * 6 + i)
            l.append(c * 6 + j)
    for _ in range(1500):  # and one component of 450 items (above the dense limit)
        i, j = rng.choice(450, 2, replace=False)
        w.append(1800 + i)
        l.append(1800 + j)
    return np.array(w), np.array(l), 1800 + 450 + 5  # a few items never compared


def _objective(w, l, eta, m, l2):
    e = np.ones(w.size) if eta is None else eta

    def f(x):
        sig = expit(x[w] - x[l])
        p = e * sig + (1 - e) * (1 - sig)
        r = (2 * e - 1) * sig * (1 - sig) / p
        return -np.log(p).sum() + 0.5 * l2 * x @ x, -(np.bincount(w, r, m) - np.bincount(l, r, m)) + l2 * x

    return f


@pytest.mark.parametrize("with_eta", [False, True])
def test_component_newton_matches_lbfgs(with_eta, monkeypatch):
    monkeypatch.setattr(reliability, "DENSE_LIMIT", 400)
    w, l, m = _problem()
    eta = np.random.default_rng(1).choice([0.1, 0.5, 0.95], size=w.size, p=[0.1, 0.1, 0.8]) if with_eta else None
    ours = fit_scores(w, l, eta, m, l2=0.3)
    f = _objective(w, l, eta, m, 0.3)
    ref = minimize(f, np.zeros(m), jac=True, method="L-BFGS-B", options={"maxiter": 20000, "gtol": 1e-10}).x
    assert f(ours)[0] <= f(ref)[0] + 1e-6
    # plain BT is strictly concave (one optimum, where the gradient vanishes); the mixture can
    # be flat where eta is near 1/2
    assert np.abs(ours - ref).max() < (1e-2 if with_eta else 1e-3)
    if not with_eta:
        assert np.abs(f(ours)[1]).max() < 1e-5
    assert (ours[-5:] == 0).all()


def test_warm_start_keeps_uncompared_items():
    w, l = np.array([0, 1]), np.array([1, 2])
    s0 = np.array([0.0, 0.0, 0.0, 7.0])
    s = fit_scores(w, l, None, 4, s0=s0)
    assert s[3] == 7.0 and s[0] > s[1] > s[2]
