"""Simulations with known truth: scores, tie and position parameters, reliabilities, CIs."""

import numpy as np
import pytest

from rm.choice import AnnotatorBradleyTerry, BradleyTerry, Davidson, RaoKupper, Thurstone

from .conftest import simulate


def _aligned(model, truth):
    table = model.scores_.sort("item")
    true = np.array([truth["scores"][k] for k in table["item"].to_list()])
    return table, true - true.mean()


def _coverage(table, true):
    return float(np.mean((table["ci_low"].to_numpy() <= true) & (true <= table["ci_high"].to_numpy())))


@pytest.mark.parametrize("cls,link", [(BradleyTerry, "logit"), (Thurstone, "probit")])
def test_scores_recovered_with_calibrated_intervals(cls, link):
    coverages = []
    for seed in range(4):
        frame, truth = simulate(40, 6000, seed=seed, link=link)
        model = cls().fit(frame)
        table, true = _aligned(model, truth)
        assert np.corrcoef(table["score"].to_numpy(), true)[0, 1] > 0.97
        coverages.append(_coverage(table, true))
    # 160 intervals at 95%: the mean coverage is within a few points of nominal
    assert 0.88 <= np.mean(coverages) <= 0.995


def test_davidson_tie_parameter_recovered():
    frame, truth = simulate(20, 8000, seed=1, ties="davidson", tie_param=np.log(1.5))
    model = Davidson().fit(frame)
    tp = model.tie_params_
    assert abs(tp["alpha"] - np.log(1.5)) < 3.5 * tp["alpha_std_error"]
    table, true = _aligned(model, truth)
    assert np.corrcoef(table["score"].to_numpy(), true)[0, 1] > 0.97


@pytest.mark.parametrize("link", ["logit", "probit"])
def test_rao_kupper_threshold_recovered(link):
    frame, truth = simulate(20, 8000, seed=2, ties="rao-kupper", tie_param=0.5, link=link)
    model = RaoKupper(link=link).fit(frame)
    tp = model.tie_params_
    assert abs(tp["eta"] - 0.5) < 3.5 * tp["eta_std_error"]


def test_position_effect_recovered_and_kept_out_of_scores():
    frame, truth = simulate(20, 8000, seed=3, position=0.4)
    model = BradleyTerry(position_effect=True).fit(frame)
    coef = model.coef_.row(0, named=True)
    assert coef["name"] == "position_left"
    assert abs(coef["coef"] - 0.4) < 3.5 * coef["std_error"]
    table, true = _aligned(model, truth)
    assert _coverage(table, true) >= 0.8


def test_annotator_reliabilities_recovered():
    rel = np.array([1.6, 1.4, 1.2, 1.0, 1.0, 0.8, 0.5, 0.2, 0.0, -0.6])
    frame, truth = simulate(15, 12000, seed=4, reliabilities=rel, scale=1.2)
    model = AnnotatorBradleyTerry(annotator_l2=0.1).fit(frame)
    ann = model.annotators_.sort("annotator")
    est = ann["reliability"].to_numpy()
    # the scale of (scores, reliabilities) is fixed only by the prior: compare up to a factor
    assert np.corrcoef(est, rel)[0, 1] > 0.95
    assert est[np.argmin(rel)] < 0  # the adversarial annotator is found
    plain = BradleyTerry().fit(frame)
    table, true = _aligned(model, truth)
    table_plain, _ = _aligned(plain, truth)
    err = lambda t: np.corrcoef(t["score"].to_numpy(), true)[0, 1]
    assert err(table) >= err(table_plain)
    assert model.log_likelihood_ > plain.log_likelihood_ + 50


def test_annotator_reliability_interval_coverage():
    rel = np.array([1.3, 1.0, 0.7, 1.2, 0.8, 1.1, 0.9, 1.0])
    hits = []
    for seed in range(3):
        frame, _ = simulate(12, 8000, seed=20 + seed, reliabilities=rel, scale=1.0)
        model = AnnotatorBradleyTerry(annotator_l2=1e-3).fit(frame)
        ann = model.annotators_.sort("annotator")
        # compare after removing the common scale (the geometric mean) fixed by the prior
        scale = np.exp(np.mean(np.log(np.clip(ann["reliability"].to_numpy(), 1e-3, None))))
        truth = rel * scale / np.exp(np.mean(np.log(rel)))
        hits += list((ann["ci_low"].to_numpy() <= truth) & (truth <= ann["ci_high"].to_numpy()))
    assert np.mean(hits) >= 0.75


def test_covariate_style_control_recovered():
    frame, truth = simulate(15, 6000, seed=6, covariate_coef=[0.7])
    model = BradleyTerry(covariates=["x0"]).fit(frame)
    coef = model.coef_.row(0, named=True)
    assert abs(coef["coef"] - 0.7) < 3.5 * coef["std_error"]
