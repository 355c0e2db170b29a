"""Log-likelihood at the optimum equals independent references within 1e-6 (relative).

References: the per-comparison objective in torch minimised by scipy L-BFGS-B (tests/choice/
reference.py), choix (ILSR) and evalica (Bradley-Terry with ties as half wins).
"""

import numpy as np
import pytest

from rm.choice import AnnotatorBradleyTerry, BradleyTerry, Davidson, RaoKupper, Thurstone

from .conftest import simulate
from .reference import ll_binary_from_scores, ll_half_from_scores, reference_fit

RTOL = 1e-6

LLMFAO_CASES = [
    (BradleyTerry, {}, {}),
    (Thurstone, {}, {"link": "probit"}),
    (Davidson, {}, {"ties": "davidson"}),
    (RaoKupper, {}, {"ties": "rao-kupper"}),
    (RaoKupper, {"link": "probit"}, {"ties": "rao-kupper", "link": "probit"}),
    (BradleyTerry, {"position_effect": True}, {"position": True}),
    (Davidson, {"position_effect": True}, {"ties": "davidson", "position": True}),
    (AnnotatorBradleyTerry, {}, {"annotators": True}),
]


@pytest.mark.parametrize("cls,params,ref", LLMFAO_CASES,
                         ids=[f"{c.__name__}-{'-'.join(map(str, p.values())) or 'plain'}" for c, p, _ in LLMFAO_CASES])
def test_llmfao_loglik_matches_scipy_reference(llmfao, cls, params, ref):
    model = cls(**params).fit(llmfao)
    ll_ref, items, s_ref, extra = reference_fit(llmfao, **ref)
    assert model.converged_
    # our optimum is at least as good as L-BFGS-B's and equal to 1e-6
    assert model.log_likelihood_ == pytest.approx(ll_ref, rel=RTOL)
    assert model.log_likelihood_ >= ll_ref - 1e-6 * abs(ll_ref)
    if not ref.get("annotators"):
        ours = model.scores_.sort("item")
        assert ours["item"].to_list() == items
        np.testing.assert_allclose(ours["score"].to_numpy(), s_ref, atol=2e-3)
    if ref.get("position"):
        assert model.position_effect_ == pytest.approx(extra["beta"][0], abs=2e-3)
    if ref.get("ties") == "rao-kupper":
        assert model.tie_params_["eta"] == pytest.approx(extra["eta"][0], abs=1e-3)


def test_covariates_and_prior_match_scipy_reference():
    frame, _ = simulate(12, 1500, seed=5, covariate_coef=[0.8, -0.4], position=0.3)
    model = BradleyTerry(covariates=["x0", "x1"], position_effect=True, l2=0.5).fit(frame)
    ll_ref, _, _, extra = reference_fit(frame, position=True, covariates=("x0", "x1"), l2=0.5)
    assert model.log_likelihood_ == pytest.approx(ll_ref, rel=RTOL)
    np.testing.assert_allclose(model.coef_["coef"].to_numpy(), extra["beta"], atol=1e-4)


def test_binary_bt_matches_choix_ilsr():
    choix = pytest.importorskip("choix")
    frame, _ = simulate(25, 6000, seed=2)
    model = BradleyTerry().fit(frame)
    items = sorted(set(frame["model_a"]) | set(frame["model_b"]))
    idx = {v: i for i, v in enumerate(items)}
    data = [(idx[a], idx[b]) if lab == "a" else (idx[b], idx[a])
            for a, b, lab in frame.select("model_a", "model_b", "label").iter_rows()]
    params = choix.ilsr_pairwise(len(items), data, alpha=0.0, tol=1e-12, max_iter=10_000)
    ll_choix = ll_binary_from_scores(frame, dict(zip(items, params)))
    assert model.log_likelihood_ == pytest.approx(ll_choix, rel=RTOL)
    assert model.log_likelihood_ >= ll_choix - 1e-9 * abs(ll_choix)


def test_half_ties_match_evalica_on_llmfao(llmfao):
    evalica = pytest.importorskip("evalica")
    model = BradleyTerry(ties="half").fit(llmfao)
    winners = [evalica.Winner.X if x == "a" else evalica.Winner.Y if x == "b" else evalica.Winner.Draw
               for x in llmfao["label"].to_list()]
    res = evalica.bradley_terry(llmfao["model_a"].to_list(), llmfao["model_b"].to_list(), winners,
                                tolerance=1e-12, limit=100_000)
    scores = {k: float(np.log(v)) for k, v in res.scores.items()}
    ll_evalica = ll_half_from_scores(llmfao, scores)
    assert model.log_likelihood_ == pytest.approx(ll_evalica, rel=RTOL)
    ours = model.scores_.sort("item")
    ev = np.array([scores[k] for k in ours["item"].to_list()])
    np.testing.assert_allclose(ours["score"].to_numpy(), ev - ev.mean(), atol=1e-3)


def test_random_problems_match_reference_for_every_model():
    for seed, (cls, params, ref) in enumerate([
        (Davidson, {}, {"ties": "davidson"}),
        (RaoKupper, {}, {"ties": "rao-kupper"}),
        (Thurstone, {"ties": "drop"}, {"link": "probit", "ties": "drop"}),
    ]):
        frame, _ = simulate(10, 800, seed=10 + seed, ties=ref.get("ties") if ref.get("ties") != "drop" else None,
                            tie_param=0.6)
        model = cls(**params).fit(frame)
        ll_ref, *_ = reference_fit(frame, **ref)
        assert model.log_likelihood_ == pytest.approx(ll_ref, rel=RTOL), cls.__name__
