"""Outcome models: analytic derivatives against finite differences, probabilities sum to one."""

import numpy as np
import pytest

from rm.choice.outcomes import make_outcome

CASES = [("logit", "half"), ("logit", "drop"), ("probit", "half"), ("logit", "davidson"),
         ("logit", "rao-kupper"), ("probit", "rao-kupper")]


def _setup(link, ties):
    rng = np.random.default_rng(3)
    d = np.concatenate([rng.normal(scale=2.0, size=30), [-12.0, 9.0, 0.0]])
    counts = tuple(rng.integers(0, 5, size=len(d)).astype(float) for _ in range(3))
    model = make_outcome(link, ties)
    params = np.array([0.7]) if model.n_params else np.zeros(0)
    return model, d, counts, params


@pytest.mark.parametrize("link,ties", CASES)
def test_derivatives_match_finite_differences(link, ties):
    model, d, counts, params = _setup(link, ties)
    der = model.derivatives(d, params, counts, order=2)
    ll = lambda dd, pp: model.loglik(dd, pp, counts)
    h = 1e-5
    fd_num = (ll(d + h, params) - ll(d - h, params)) / (2 * h)
    np.testing.assert_allclose(der.fd, fd_num, rtol=1e-6, atol=1e-6)
    fdd_num = (model.derivatives(d + h, params, counts).fd - model.derivatives(d - h, params, counts).fd) / (2 * h)
    np.testing.assert_allclose(der.fdd, fdd_num, rtol=1e-5, atol=1e-6)
    if model.n_params:
        e = np.array([h])
        fe_num = (ll(d, params + e) - ll(d, params - e)) / (2 * h)
        np.testing.assert_allclose(der.fe[0], fe_num, rtol=1e-6, atol=1e-6)
        fee_num = (model.derivatives(d, params + e, counts).fe[0] - model.derivatives(d, params - e, counts).fe[0]) / (2 * h)
        np.testing.assert_allclose(der.fee[0][0], fee_num, rtol=1e-5, atol=1e-6)
        fde_num = (model.derivatives(d, params + e, counts).fd - model.derivatives(d, params - e, counts).fd) / (2 * h)
        np.testing.assert_allclose(der.fde[0], fde_num, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("link,ties", CASES)
def test_probabilities_sum_to_one_and_match_loglik(link, ties):
    model, d, _, params = _setup(link, ties)
    pw, pt, pl = model.probabilities(d, params)
    np.testing.assert_allclose(pw + pt + pl, 1.0, atol=1e-12)
    assert np.all(pw >= 0) and np.all(pt >= 0) and np.all(pl >= 0)
    if ties in ("davidson", "rao-kupper"):
        one = np.ones_like(d)
        zero = np.zeros_like(d)
        np.testing.assert_allclose(np.exp(model.loglik(d, params, (zero, zero, one))), pt, rtol=1e-10)
        np.testing.assert_allclose(np.exp(model.loglik(d, params, (one, zero, zero))), pw, rtol=1e-10)


def test_extreme_differences_stay_finite():
    for link, ties in CASES:
        model, _, _, params = _setup(link, ties)
        d = np.array([-40.0, -25.0, 25.0, 40.0])
        one = np.ones(4)
        der = model.derivatives(d, params, (one, one, one if model.n_params else 0 * one))
        assert np.all(np.isfinite(der.fd)) and np.all(np.isfinite(der.fdd)), (link, ties)


def test_unknown_options_are_rejected():
    with pytest.raises(ValueError, match="ties must be"):
        make_outcome("logit", "quarter")
    with pytest.raises(ValueError, match="link must be"):
        make_outcome("cauchit", "half")
    with pytest.raises(ValueError, match="Davidson"):
        make_outcome("probit", "davidson")
