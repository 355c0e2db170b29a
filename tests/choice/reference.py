"""Independent reference: the per-comparison objective written in torch (autograd gradient),
minimised with scipy L-BFGS-B.  It shares no code with rm.choice (no aggregation, no Newton)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
from scipy.optimize import minimize


def reference_fit(*args, **kwargs):
    """Return (log-likelihood, item names, scores centred, extra dict).

    Runs in float64 on one thread, and puts torch's global settings back afterwards so that
    other tests in the same process are not changed by it.
    """
    import torch

    old_dtype, old_threads = torch.get_default_dtype(), torch.get_num_threads()
    torch.set_num_threads(1)  # the 2 cores are shared; threaded torch is 10x slower here
    torch.set_default_dtype(torch.float64)
    try:
        return _reference_fit(*args, **kwargs)
    finally:
        torch.set_default_dtype(old_dtype)
        torch.set_num_threads(old_threads)


def _reference_fit(frame: pl.DataFrame, *, link="logit", ties="half", position=False,
                   annotators=False, covariates=(), l2=0.0, annotator_l2=1.0):
    import torch

    items = sorted(set(frame["model_a"].to_list()) | set(frame["model_b"].to_list()))
    idx = {v: i for i, v in enumerate(items)}
    a = torch.tensor([idx[v] for v in frame["model_a"].to_list()])
    b = torch.tensor([idx[v] for v in frame["model_b"].to_list()])
    lab = frame["label"].to_list()
    y_a = torch.tensor([x == "a" for x in lab], dtype=torch.float64)
    y_b = torch.tensor([x == "b" for x in lab], dtype=torch.float64)
    y_t = torch.tensor([x in ("tie", "both_bad") for x in lab], dtype=torch.float64)
    side = torch.tensor([1.0 if x == "a" else -1.0 if x == "b" else 0.0
                         for x in frame["shown_left"].to_list()]) if position else None
    X = torch.tensor(frame.select(list(covariates)).to_numpy()) if covariates else None
    ann_names = sorted(set(frame["annotator_id"].to_list())) if annotators else []
    ann = torch.tensor([ann_names.index(v) for v in frame["annotator_id"].to_list()]) if annotators else None
    K, M, q = len(items), len(ann_names), (1 if position else 0) + len(covariates)
    m = 1 if ties in ("davidson", "rao-kupper") else 0

    def split(theta):
        s = theta[:K]
        beta = theta[K:K + q]
        tau = theta[K + q:K + q + M]
        eta = theta[K + q + M:]
        return s, beta, tau, eta

    def logF(x):
        if link == "logit":
            return torch.nn.functional.logsigmoid(x)
        return torch.special.log_ndtr(x)

    def loglik(theta):
        s, beta, tau, eta = split(theta)
        d = s[a] - s[b]
        col = 0
        if position:
            d = d + beta[0] * side
            col = 1
        if X is not None:
            d = d + X @ beta[col:]
        if annotators:
            d = d * tau[ann]
        if ties == "half":
            return torch.sum((y_a + 0.5 * y_t) * logF(d) + (y_b + 0.5 * y_t) * logF(-d))
        if ties == "drop":
            return torch.sum(y_a * logF(d) + y_b * logF(-d))
        if ties == "davidson":
            logits = torch.stack([d / 2, -d / 2, eta[0].expand_as(d)], dim=1)
            logp = logits - torch.logsumexp(logits, dim=1, keepdim=True)
            return torch.sum(y_a * logp[:, 0] + y_b * logp[:, 1] + y_t * logp[:, 2])
        # threshold ties, eta parametrised as exp(rho) inside the reference
        e = torch.exp(eta[0])
        cdf = torch.sigmoid if link == "logit" else torch.special.ndtr
        pt = cdf(e - d) - cdf(-e - d)
        return torch.sum(y_a * logF(d - e) + y_b * logF(-d - e) + y_t * torch.log(pt))

    def objective(theta_np):
        theta = torch.tensor(theta_np, requires_grad=True)
        s, _, tau, _ = split(theta)
        val = -loglik(theta) + 0.5 * l2 * torch.sum(s * s)
        if annotators:
            val = val + 0.5 * annotator_l2 * torch.sum((tau - 1.0) ** 2)
        val.backward()
        return float(val.detach()), theta.grad.numpy().copy()

    theta0 = np.zeros(K + q + M + m)
    theta0[K + q:K + q + M] = 1.0
    if m:
        theta0[-1] = 0.0
    res = minimize(objective, theta0, jac=True, method="L-BFGS-B",
                   options={"maxiter": 20000, "maxfun": 40000, "ftol": 1e-16, "gtol": 1e-10,
                            "maxcor": 30})
    theta = torch.tensor(res.x)
    ll = float(loglik(theta).detach())
    s, beta, tau, eta = split(res.x)
    extra = {"beta": beta, "tau": dict(zip(ann_names, tau)), "eta": eta, "result": res}
    if ties == "rao-kupper":
        extra["eta"] = np.exp(eta)
    return ll, items, s - s.mean(), extra


def ll_binary_from_scores(frame: pl.DataFrame, scores: dict) -> float:
    """Bradley-Terry log-likelihood of binary labels for given item scores."""
    s_a = np.array([scores[v] for v in frame["model_a"].to_list()])
    s_b = np.array([scores[v] for v in frame["model_b"].to_list()])
    d = s_a - s_b
    y = np.array([x == "a" for x in frame["label"].to_list()])
    return float(np.sum(np.where(y, -np.logaddexp(0, -d), -np.logaddexp(0, d))))


def ll_half_from_scores(frame: pl.DataFrame, scores: dict) -> float:
    s_a = np.array([scores[v] for v in frame["model_a"].to_list()])
    s_b = np.array([scores[v] for v in frame["model_b"].to_list()])
    d = s_a - s_b
    lab = np.array(frame["label"].to_list())
    wa = (lab == "a") + 0.5 * (lab == "tie")
    wb = (lab == "b") + 0.5 * (lab == "tie")
    return float(np.sum(-wa * np.logaddexp(0, -d) - wb * np.logaddexp(0, d)))


LOG10 = math.log(10)
