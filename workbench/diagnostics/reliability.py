"""Annotator reliability: one-coin Dawid-Skene on pairs, with a Bradley-Terry prior on each pair.

Each unordered pair ``P`` of responses has a true order ``z_P`` (which of the two is better).
Annotator ``j`` reports it correctly with probability ``eta_j`` (the one-coin model of Dawid and
Skene 1979, "Maximum likelihood estimation of observer error-rates using the EM algorithm", with
one confusion parameter per annotator): ``eta = 1`` follows the truth, ``0.5`` clicks at random,
``0`` inverts it. ``1 - eta_j`` is the annotator's flip rate.

The prior on ``z_P`` is a Bradley-Terry model of the *other* pairs: the labels are split into
folds by pair and the scores that give ``P(z_P = first) = sigmoid(s_first - s_second)`` are
fitted without ``P``'s fold under the annotator-aware likelihood of Chen et al. (2013),
"Pairwise ranking aggregation in a crowdsourced setting", eq. (2):
``P(label says i > k) = eta_j sigmoid(s_i - s_k) + (1 - eta_j) sigmoid(s_k - s_i)``.
So a pair labelled once is judged by the rest of the graph (confident-learning style, out of
fold), and a pair labelled several times also by its other labels. EM alternates the posterior
of every ``z_P`` with ``eta_j = E[#correct_j] / n_j`` (with a Beta prior).

A label's flip posterior is ``P(z_P != label | all labels, prior)``; their mean is the
estimated flip rate (share of decisive labels that contradict the true order).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
from scipy.special import expit, logit

from ._data import Coded, code

_EPS = 1e-4


def _objective_terms(d: np.ndarray, eta: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per label: log-likelihood, its derivative in delta = s_w - s_l, and a positive curvature weight."""
    sig = expit(d)
    if eta is None:
        return -np.logaddexp(0.0, -d), 1.0 - sig, sig * (1.0 - sig)
    p = np.clip(eta * sig + (1 - eta) * (1 - sig), 1e-300, 1.0)
    dp = (2 * eta - 1) * sig * (1 - sig)
    # the observed curvature -(log p)'' where it is positive (Newton), a small floor where the
    # mixture is locally convex (the step halving and the prior keep the step safe)
    curv = (dp / p) ** 2 - dp * (1 - 2 * sig) / p
    return np.log(p), dp / p, np.maximum(curv, 1e-6)


def fit_scores(w: np.ndarray, l: np.ndarray, eta: np.ndarray | None, m: int, l2: float = 0.3,
               s0: np.ndarray | None = None, maxiter: int = 50, tol: float = 1e-7) -> np.ndarray:
    """Bradley-Terry scores (MAP, Gaussian prior of precision ``l2``) from winner/loser codes.

    With ``eta`` (per label), each label is trusted as in CrowdBT (Chen et al. 2013, eq. 2):
    ``P = eta sigmoid(s_w - s_l) + (1 - eta) sigmoid(s_l - s_w)``; without it, plain BT.

    The objective separates over connected components of the comparison graph, so each
    component is solved on its own by Newton's method (curvature floored where the mixture
    likelihood is locally convex) with step halving: components of equal size are batched into one dense ``(C, k, k)`` solve; a
    component above ``DENSE_LIMIT`` items gets a sparse solve.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    s = np.zeros(m) if s0 is None else np.array(s0, dtype=float, copy=True)
    if w.size == 0:
        return s
    n_comp, comp = connected_components(coo_matrix((np.ones(w.size), (w, l)), shape=(m, m)), directed=False)
    sizes = np.bincount(comp, minlength=n_comp)
    order = np.argsort(comp, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    pos = np.empty(m, dtype=np.int64)
    pos[order] = np.arange(m) - starts[comp[order]]
    label_comp = comp[w]
    for size in np.unique(sizes[sizes >= 2]):
        comps = np.flatnonzero(sizes == size)
        if size > DENSE_LIMIT:
            for c in comps:
                items = order[starts[c]:starts[c + 1]]
                sel = label_comp == c
                s[items] = _fit_component_sparse(w[sel], l[sel], None if eta is None else eta[sel], items, s, l2, maxiter, tol)
            continue
        slot = np.full(n_comp, -1)
        slot[comps] = np.arange(comps.size)
        sel = np.flatnonzero(slot[label_comp] >= 0)
        _fit_batched(w[sel], l[sel], None if eta is None else eta[sel], slot[label_comp[sel]], pos, order, starts, comps, int(size), s, l2, maxiter, tol)
    # an item alone (no comparisons here) stays at the prior mean
    alone = sizes[comp] == 1
    s[alone] = 0.0 if s0 is None else s[alone]
    return s


DENSE_LIMIT = 400


def _fit_batched(w, l, eta, slot, pos, order, starts, comps, k, s, l2, maxiter, tol) -> None:
    """Newton steps on ``C`` components of ``k`` items at once; converged components drop out."""
    C = comps.size
    items_all = order[(starts[comps][:, None] + np.arange(k)[None, :]).ravel()].reshape(C, k)
    eye = l2 * np.eye(k)[None]
    active = np.arange(C)
    loc_of = np.arange(C)
    lw, lb, lslot, le = w, l, slot, eta
    ll, g, h = _objective_terms(s[lw] - s[lb], le)
    cur = np.bincount(lslot, ll, C) - 0.5 * l2 * (s[items_all] ** 2).sum(axis=1)
    for _ in range(maxiter):
        nA = active.size
        items = items_all[active]
        loc = loc_of[lslot]
        grad_items = np.bincount(lw, g, s.size) - np.bincount(lb, g, s.size) - l2 * s
        grad = grad_items[items]
        pw, pb = pos[lw], pos[lb]
        base_idx = loc * (k * k)
        idx = np.concatenate([base_idx + pw * (k + 1), base_idx + pb * (k + 1), base_idx + pw * k + pb, base_idx + pb * k + pw])
        H = np.bincount(idx, np.concatenate([h, h, -h, -h]), nA * k * k).reshape(nA, k, k) + eye
        step = np.linalg.solve(H, grad[..., None])[..., 0]
        base = s[items]
        t = np.ones(nA)
        for _half in range(30):
            s[items] = base + t[:, None] * step
            ll, g, h = _objective_terms(s[lw] - s[lb], le)
            new = np.bincount(loc, ll, nA) - 0.5 * l2 * (s[items] ** 2).sum(axis=1)
            worse = new < cur - 1e-12
            if not worse.any():
                break
            t = np.where(worse, t / 2, t)
        if worse.any():  # no improvement found: keep those components where they were
            s[items[worse]] = base[worse]
            t = np.where(worse, 0.0, t)
            ll, g, h = _objective_terms(s[lw] - s[lb], le)
            new = np.where(worse, cur, new)
        cur = new
        keep = np.abs(t[:, None] * step).max(axis=1) >= tol
        if not keep.any():
            break
        if not keep.all():  # converged components drop out
            lab = keep[loc]
            lw, lb, lslot = lw[lab], lb[lab], lslot[lab]
            le = None if le is None else le[lab]
            ll, g, h = ll[lab], g[lab], h[lab]
            active, cur = active[keep], cur[keep]
            loc_of = np.full(C, -1)
            loc_of[active] = np.arange(active.size)


def _fit_component_sparse(w, l, eta, items, s_all, l2, maxiter, tol) -> np.ndarray:
    import scipy.sparse as sp
    from scipy.sparse.linalg import spsolve

    k = items.size
    local = np.full(s_all.size, -1)
    local[items] = np.arange(k)
    a, b = local[w], local[l]
    s = s_all[items].copy()

    def objective(sc: np.ndarray) -> float:
        return float(_objective_terms(sc[a] - sc[b], eta)[0].sum() - 0.5 * l2 * sc @ sc)

    cur = objective(s)
    for _ in range(maxiter):
        _, g, h = _objective_terms(s[a] - s[b], eta)
        grad = np.bincount(a, g, k) - np.bincount(b, g, k) - l2 * s
        rows = np.concatenate([a, b, a, b])
        cols = np.concatenate([a, b, b, a])
        vals = np.concatenate([h, h, -h, -h])
        H = sp.coo_matrix((vals, (rows, cols)), shape=(k, k)).tocsc() + l2 * sp.identity(k, format="csc")
        step = spsolve(H, grad)
        t = 1.0
        for _half in range(30):
            new = objective(s + t * step)
            if new >= cur - 1e-12:
                break
            t /= 2
        else:
            break
        s = s + t * step
        cur = new
        if np.max(np.abs(t * step)) < tol:
            break
    return s


def predict_pair_proba(model: Any, frame: pl.DataFrame) -> np.ndarray:
    """P(response_a preferred) per row from a caller's fitted model (duck-typed ``predict_proba``).

    ``model.predict_proba(frame)`` may return P(a) (1-d) or rows ``[P(a), ..., P(b)]`` (as
    ``rm.choice`` models do, ties in between); then ``P(a) / (P(a) + P(b))`` is used. Models
    whose ``predict_proba`` takes ``(a_ids, b_ids)`` are called with the response ids.
    """
    if not hasattr(model, "predict_proba"):
        raise TypeError(f"model {type(model).__name__} has no predict_proba")
    try:
        out = model.predict_proba(frame)
    except TypeError:
        out = model.predict_proba(frame["response_a_id"].to_numpy(), frame["response_b_id"].to_numpy())
    out = np.asarray(out, dtype=float)
    if out.ndim == 2:
        out = out[:, 0] / np.maximum(out[:, 0] + out[:, -1], 1e-12)
    if out.shape != (frame.height,):
        raise ValueError(f"model.predict_proba returned shape {out.shape}, expected ({frame.height},)")
    return out


class PairDawidSkene:
    """Annotator reliability and label flip posteriors (see the module docstring).

    Hyper-parameters: ``l2`` (prior precision of BT scores), ``prior_mean`` and
    ``prior_strength`` (Beta prior on each reliability: that many pseudo-labels at that mean),
    ``n_folds`` (pair folds for the out-of-fold prior; 0 = no BT prior), ``max_iter``, ``tol``,
    ``seed``, ``ci_level``.

    Learned: ``reliability_`` (annotator_id, n_decisive, reliability, ci_low, ci_high),
    ``labels_`` (row, annotator_id, p_model: the out-of-fold prior probability of the label as
    given, p_consensus: its probability given the prior and the pair's other labels,
    flip_posterior; one row per decisive label),
    ``pairs_`` (pair posteriors), ``scores_`` (response_id, score; all data), ``flip_rate_``.
    """

    def __init__(self, l2: float = 0.3, prior_mean: float = 0.8, prior_strength: float = 2.0, n_folds: int = 5,
                 max_iter: int = 200, tol: float = 1e-7, seed: int = 0, ci_level: float = 0.95):
        self.l2 = l2
        self.prior_mean = prior_mean
        self.prior_strength = prior_strength
        self.n_folds = n_folds
        self.max_iter = max_iter
        self.tol = tol
        self.seed = seed
        self.ci_level = ci_level

    def fit(self, data: Any, model: Any = None) -> "PairDawidSkene":
        """Fit on a Version or comparisons frame; ``model`` (optional) supplies the pair prior instead of BT."""
        c = code(data)
        d = np.flatnonzero(c.label < 2)
        if d.size == 0:
            raise ValueError("no decisive labels (a or b) to estimate reliability from")
        J, m = len(c.annotators), len(c.items)
        pair = c.pair[d]
        j = c.annotator[d]
        says_first = (c.canon[d] == 0)
        sign = np.where(says_first, 1.0, -1.0)
        upairs, pidx = np.unique(pair, return_inverse=True)
        P = upairs.size
        first, second = c.pair_first[upairs], c.pair_second[upairs]

        # 1) Dawid-Skene with a flat prior: a first look at who is reliable
        eta = self._em(np.zeros(P), pidx, j, sign, J, P)[0]
        # 2) the out-of-fold prior on each pair's order
        w = np.where(says_first, first[pidx], second[pidx])
        l = np.where(says_first, second[pidx], first[pidx])
        if model is not None:
            p_a = predict_pair_proba(model, c.frame)[d]
            a_first = c.item_a[d] == first[pidx]
            p_first_label = np.where(a_first, p_a, 1 - p_a)
            prior_logit = np.clip(logit(np.clip(np.bincount(pidx, p_first_label, P) / np.bincount(pidx, minlength=P), _EPS, 1 - _EPS)), -12, 12)
            self.score_array_ = None
        elif self.n_folds and self.n_folds > 1:
            rng = np.random.default_rng(self.seed)
            fold_of_pair = rng.integers(self.n_folds, size=P)
            fold = fold_of_pair[pidx]
            s_all = fit_scores(w, l, eta[j], m, self.l2)
            prior_logit = np.zeros(P)
            for k in range(self.n_folds):
                tr = fold != k
                s = fit_scores(w[tr], l[tr], eta[j[tr]], m, self.l2, s0=s_all)
                held = fold_of_pair == k
                prior_logit[held] = s[first[held]] - s[second[held]]
            self.score_array_ = s_all
        else:
            prior_logit = np.zeros(P)
            self.score_array_ = fit_scores(w, l, eta[j], m, self.l2)
        # 3) Dawid-Skene with that prior
        eta, post_logit, n_iter = self._em(prior_logit, pidx, j, sign, J, P, eta0=eta)
        self.n_iter_ = n_iter
        self.eta_ = eta
        q_first = expit(post_logit)  # P(z_P = first | all)
        correct = np.where(says_first, q_first[pidx], 1 - q_first[pidx])  # P(label agrees with z)
        n_dec = np.bincount(j, minlength=J)
        a_, b_ = self._beta_prior()
        agree = np.bincount(j, correct, J)
        from scipy.stats import beta as beta_dist

        alpha_lvl = (1 - self.ci_level) / 2
        lo = beta_dist.ppf(alpha_lvl, a_ + agree, b_ + n_dec - agree)
        hi = beta_dist.ppf(1 - alpha_lvl, a_ + agree, b_ + n_dec - agree)
        has = n_dec > 0
        self.reliability_ = pl.DataFrame({
            "annotator_id": c.annotators, "n_decisive": n_dec,
            "reliability": np.where(has, eta, np.nan), "ci_low": np.where(has, lo, np.nan), "ci_high": np.where(has, hi, np.nan),
        })
        p_model = expit(np.where(says_first, prior_logit[pidx], -prior_logit[pidx]))
        # the consensus without the label itself: the prior and the pair's *other* labels
        lo_eta = logit(np.clip(eta, _EPS, 1 - _EPS))
        q_others = expit(np.where(says_first, 1.0, -1.0) * (post_logit[pidx] - sign * lo_eta[j]))  # P(z = what the label says | others)
        p_consensus = eta[j] * q_others + (1 - eta[j]) * (1 - q_others)  # P(this annotator gives this label | others)
        self.labels_ = pl.DataFrame({
            "row": d, "annotator_id": c.annotators.gather(j), "p_model": p_model, "p_consensus": p_consensus,
            "flip_posterior": 1 - correct,
        })
        self.pairs_ = pl.DataFrame({
            "response_first_id": c.items.gather(first), "response_second_id": c.items.gather(second),
            "n_labels": np.bincount(pidx, minlength=P), "prior_first": expit(prior_logit), "posterior_first": q_first,
        })
        self.flip_rate_ = float(np.mean(1 - correct))
        if self.score_array_ is not None:
            self.scores_ = pl.DataFrame({"response_id": c.items, "score": self.score_array_})
        self.coded_ = c
        return self

    def _beta_prior(self) -> tuple[float, float]:
        return self.prior_strength * self.prior_mean, self.prior_strength * (1 - self.prior_mean)

    def _em(self, prior_logit: np.ndarray, pidx: np.ndarray, j: np.ndarray, sign: np.ndarray, J: int, P: int,
            eta0: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, int]:
        a_, b_ = self._beta_prior()
        n_j = np.bincount(j, minlength=J)
        eta = np.full(J, self.prior_mean) if eta0 is None else eta0.copy()
        post = prior_logit
        it = 0
        for it in range(1, self.max_iter + 1):
            lo = logit(np.clip(eta, _EPS, 1 - _EPS))
            post = prior_logit + np.bincount(pidx, sign * lo[j], P)
            q = expit(post)
            correct = np.where(sign > 0, q[pidx], 1 - q[pidx])
            new = (np.bincount(j, correct, J) + a_) / (n_j + a_ + b_)
            if np.max(np.abs(new - eta)) < self.tol:
                eta = new
                break
            eta = new
        lo = logit(np.clip(eta, _EPS, 1 - _EPS))
        post = prior_logit + np.bincount(pidx, sign * lo[j], P)
        return eta, post, it

    def predict_proba(self, data: Any) -> np.ndarray:
        """P(response_a preferred) per row from the fitted scores (nan for unseen responses)."""
        if getattr(self, "score_array_", None) is None:
            raise RuntimeError("PairDawidSkene has no scores (not fitted, or fitted with a caller's model)")
        from ..frames import as_comparisons

        frame = as_comparisons(data.frame if isinstance(data, Coded) else data)
        lut = self.scores_.rename({"response_id": "k"})
        sa = frame.select(pl.col("response_a_id").alias("k")).join(lut, on="k", how="left", maintain_order="left")["score"].to_numpy()
        sb = frame.select(pl.col("response_b_id").alias("k")).join(lut, on="k", how="left", maintain_order="left")["score"].to_numpy()
        return expit(sa.astype(float) - sb.astype(float))
