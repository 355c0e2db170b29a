"""Outcome models: the probability of each outcome of one comparison given the score difference.

Every pairwise model in :mod:`rm.choice` is a function of one linear predictor per comparison,
``d = s[first] - s[second] (+ position and covariate terms) (x annotator reliability)``, and of
at most one tie parameter.  An outcome model turns ``d`` into the log-probabilities of the four
outcomes ``first wins``, ``second wins``, ``tie`` and ``both bad`` and gives the first and second
derivatives of the log-likelihood with respect to ``d`` and the tie parameter, row by row.  The
solvers (:mod:`rm.choice.solvers`) chain these with the (sparse) derivatives of ``d``.

Links (``F`` is the CDF of the latent utility difference):

* logit  (Bradley-Terry, 1952):  ``F(x) = 1 / (1 + exp(-x))``
* probit (Thurstone case V, 1927): ``F(x) = Phi(x)``

Tie models:

* ``half``: a tie counts as half a win for each side (no tie parameter; the arena convention).
* ``drop``: ties are ignored.
* ``davidson`` (Davidson 1970, eq. 2.1): ``P(i) = pi_i / Z``, ``P(tie) = nu sqrt(pi_i pi_j) / Z``
  with ``Z = pi_i + pi_j + nu sqrt(pi_i pi_j)``; the parameter is ``alpha = log nu``.
* ``rao-kupper`` (Rao & Kupper 1967; the probit version is Glenn & David 1960): a threshold
  model ``P(i) = F(d - eta)``, ``P(j) = F(-d - eta)``, ``P(tie) = F(d + eta) - F(d - eta)`` with
  ``eta > 0``; for the logit link ``theta = exp(eta)`` is Rao-Kupper's tie parameter.

All functions broadcast: ``d`` and the counts may be ``(R,)`` or ``(R, B)`` (B bootstrap rounds).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.special import log_ndtr

LOG_SQRT_2PI = 0.5 * np.log(2.0 * np.pi)


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Logistic function via ``np.exp`` (much faster than ``scipy.special.expit`` here)."""
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-x))


def log_sigmoid(x: np.ndarray) -> np.ndarray:
    """``log(1 / (1 + exp(-x)))`` without overflow."""
    return -(np.maximum(-x, 0.0) + np.log1p(np.exp(-np.abs(x))))


class Link:
    """A symmetric latent-difference distribution: ``log F``, ``log f`` and ``psi = f'/f``."""

    name = "link"

    def log_cdf(self, x):
        raise NotImplementedError

    def log_pdf(self, x):
        raise NotImplementedError

    def psi(self, x):
        raise NotImplementedError

    def hazard(self, x):
        """``lambda(x) = f(x) / F(x)``, the derivative of ``log F``."""
        return np.exp(self.log_pdf(x) - self.log_cdf(x))

    def curvature(self, x):
        """Second derivative of ``log F``: ``lambda (psi - lambda)``."""
        lam = self.hazard(x)
        return lam * (self.psi(x) - lam)

    def cdf(self, x):
        return np.exp(self.log_cdf(x))


class LogitLink(Link):
    name = "logit"

    def log_cdf(self, x):
        return log_sigmoid(x)

    def log_pdf(self, x):
        return log_sigmoid(x) + log_sigmoid(-x)

    def psi(self, x):
        return -np.tanh(0.5 * x)

    def hazard(self, x):
        return sigmoid(-x)

    def curvature(self, x):
        p = sigmoid(x)
        return -p * (1.0 - p)

    def cdf(self, x):
        return sigmoid(x)


class ProbitLink(Link):
    name = "probit"

    def log_cdf(self, x):
        return log_ndtr(x)

    def log_pdf(self, x):
        return -0.5 * np.square(x) - LOG_SQRT_2PI

    def psi(self, x):
        return -x


LINKS = {"logit": LogitLink(), "probit": ProbitLink()}


@dataclass
class Derivatives:
    """Row-wise log-likelihood pieces. ``fe``/``fde``/``fee`` are lists over tie parameters."""

    loglik: np.ndarray  # per row (or per row and round)
    fd: np.ndarray
    fdd: np.ndarray
    fe: list
    fde: list
    fee: list


class OutcomeModel:
    """Base class. ``counts`` is a tuple ``(first_wins, second_wins, ties)`` after both-bad mapping."""

    n_params = 0
    link: Link

    def initial_params(self, counts) -> np.ndarray:
        return np.zeros(self.n_params)

    def param_lower_bounds(self) -> np.ndarray:
        return np.full(self.n_params, -np.inf)

    def prepare_counts(self, counts):
        """Counts in the form :meth:`derivatives` uses (``prepared=True`` skips this step)."""
        return counts

    def derivatives(self, d, params, counts, order: int = 2, prepared: bool = False) -> Derivatives:
        raise NotImplementedError

    def loglik(self, d, params, counts):
        return self.derivatives(d, params, counts, order=0, prepared=False).loglik

    def probabilities(self, d, params):
        """``(P(first wins), P(tie), P(second wins))`` for each ``d``."""
        raise NotImplementedError


class BinaryOutcome(OutcomeModel):
    """No tie parameter: ties count half (``tie_weight=0.5``) or are dropped (``tie_weight=0``)."""

    def __init__(self, link: str = "logit", tie_weight: float = 0.5):
        self.link = LINKS[link]
        self.tie_weight = tie_weight

    def prepare_counts(self, counts):
        w, l, t = counts[:3]
        if self.tie_weight and not (np.ndim(t) == 0 and t == 0):
            w, l = w + self.tie_weight * t, l + self.tie_weight * t
        return w, l, w + l

    def derivatives(self, d, params, counts, order=2, prepared=False):
        w, l, n = counts if prepared else self.prepare_counts(counts)
        if self.link.name == "logit":
            # one exp: e = exp(-|d|), p = sigmoid(d), log p = -log1p(e) + min(d, 0)
            e = np.exp(-np.abs(d))
            ll = None
            if order == 0 or order >= 3:
                ll = -n * np.log1p(e) + w * np.minimum(d, 0.0) - l * np.maximum(d, 0.0)
            if order == 0:
                return Derivatives(ll, None, None, [], [], [])
            inv = 1.0 / (1.0 + e)
            p = np.where(d >= 0, inv, e * inv)
            fd = w - n * p
            fdd = -n * (e * inv * inv) if order >= 2 else None  # p (1 - p) = e / (1 + e)^2
            return Derivatives(ll, fd, fdd, [], [], [])
        link = self.link
        ll = w * link.log_cdf(d) + l * link.log_cdf(-d)
        if order == 0:
            return Derivatives(ll, None, None, [], [], [])
        fd = w * link.hazard(d) - l * link.hazard(-d)
        fdd = w * link.curvature(d) + l * link.curvature(-d) if order >= 2 else None
        return Derivatives(ll, fd, fdd, [], [], [])

    def probabilities(self, d, params):
        p = self.link.cdf(d)
        return p, np.zeros_like(p), 1.0 - p


class DavidsonOutcome(OutcomeModel):
    """Davidson (1970) ties, logit link; parameter ``alpha = log(nu)`` (eq. 2.1 of the paper)."""

    n_params = 1

    def __init__(self):
        self.link = LINKS["logit"]

    def initial_params(self, counts):
        w, l, t = (np.sum(c) for c in counts)
        frac = min(max(t / max(w + l + t, 1.0), 1e-3), 0.999)
        # at d = 0, P(tie) = nu / (2 + nu)
        return np.array([np.log(2.0 * frac / (1.0 - frac))])

    def _probs(self, d, alpha):
        h = 0.5 * d
        m = np.maximum(np.abs(h), alpha)
        ew, el, et = np.exp(h - m), np.exp(-h - m), np.exp(alpha - m)
        z = ew + el + et
        log_z = m + np.log(z)
        return h, log_z, ew / z, el / z, et / z

    def derivatives(self, d, params, counts, order=2, prepared=False):
        alpha = params[0]
        w, l, t = counts
        h, log_z, pw, pl, pt = self._probs(d, alpha)
        n = w + l + t
        ll = w * (h - log_z) + l * (-h - log_z) + t * (alpha - log_z)
        if order == 0:
            return Derivatives(ll, None, None, [], [], [])
        diff = pw - pl
        fd = 0.5 * (w - l) - 0.5 * n * diff
        fa = t - n * pt
        if order < 2:
            return Derivatives(ll, fd, None, [fa], [], [])
        fdd = -0.25 * n * ((pw + pl) - np.square(diff))
        faa = -n * pt * (1.0 - pt)
        fda = 0.5 * n * pt * diff
        return Derivatives(ll, fd, fdd, [fa], [fda], [[faa]])

    def probabilities(self, d, params):
        _, _, pw, pl, pt = self._probs(d, params[0])
        return pw, pt, pl


class ThresholdOutcome(OutcomeModel):
    """Rao-Kupper (logit) / Glenn-David (probit) threshold ties with ``eta > 0``."""

    n_params = 1

    def __init__(self, link: str = "logit"):
        self.link = LINKS[link]

    def initial_params(self, counts):
        w, l, t = (np.sum(c) for c in counts)
        frac = min(max(t / max(w + l + t, 1.0), 1e-3), 0.999)
        # at d = 0, P(tie) = 1 - 2 F(-eta) = frac
        from scipy.stats import logistic, norm

        dist = logistic if self.link.name == "logit" else norm
        return np.array([max(float(dist.ppf(0.5 + frac / 2.0)), 1e-3)])

    def param_lower_bounds(self):
        return np.array([0.0])

    def _tie_terms(self, d, eta, order):
        link = self.link
        sg = np.where(d > 0, -1.0, 1.0)
        dn = -np.abs(d)
        x1, x2 = dn + eta, dn - eta
        l1, l2 = link.log_cdf(x1), link.log_cdf(x2)
        with np.errstate(divide="ignore"):
            log_g = l1 + np.log(-np.expm1(l2 - l1))
        if order == 0:
            return log_g, None
        r1 = np.exp(link.log_pdf(x1) - log_g)
        r2 = np.exp(link.log_pdf(x2) - log_g)
        gd = sg * (r1 - r2)
        ge = r1 + r2
        if order < 2:
            return log_g, (gd, ge)
        a = r1 * link.psi(x1)
        b = r2 * link.psi(x2)
        gdd = (a - b) - np.square(r1 - r2)
        gee = (a - b) - np.square(r1 + r2)
        gde = sg * ((a + b) - (r1 - r2) * (r1 + r2))
        return log_g, (gd, ge, gdd, gee, gde)

    def derivatives(self, d, params, counts, order=2, prepared=False):
        eta = params[0]
        link = self.link
        w, l, t = counts
        xw, xl = d - eta, -d - eta
        log_g, tie = self._tie_terms(d, eta, order)
        ll = w * link.log_cdf(xw) + l * link.log_cdf(xl) + t * log_g
        if order == 0:
            return Derivatives(ll, None, None, [], [], [])
        hw, hl = link.hazard(xw), link.hazard(xl)
        fd = w * hw - l * hl + t * tie[0]
        fe = -w * hw - l * hl + t * tie[1]
        if order < 2:
            return Derivatives(ll, fd, None, [fe], [], [])
        kw, kl = link.curvature(xw), link.curvature(xl)
        fdd = w * kw + l * kl + t * tie[2]
        fee = w * kw + l * kl + t * tie[3]
        fde = -w * kw + l * kl + t * tie[4]
        return Derivatives(ll, fd, fdd, [fe], [fde], [[fee]])

    def probabilities(self, d, params):
        eta = params[0]
        pw = self.link.cdf(d - eta)
        pl = self.link.cdf(-d - eta)
        log_g, _ = self._tie_terms(d, eta, 0)
        return pw, np.exp(log_g), pl


def make_outcome(link: str, ties: str) -> OutcomeModel:
    if link not in LINKS:
        raise ValueError(f"link must be one of {sorted(LINKS)}, got {link!r}")
    if ties == "half":
        return BinaryOutcome(link, 0.5)
    if ties == "drop":
        return BinaryOutcome(link, 0.0)
    if ties == "davidson":
        if link != "logit":
            raise ValueError("Davidson ties are defined for the logit link; use ties='rao-kupper' "
                             "(Glenn-David thresholds) with link='probit'")
        return DavidsonOutcome()
    if ties == "rao-kupper":
        return ThresholdOutcome(link)
    raise ValueError(f"ties must be 'half', 'drop', 'davidson' or 'rao-kupper', got {ties!r}")
