"""Tabular policies: a softmax policy over a finite candidate set per prompt, with exact answers.

For every prompt the candidates are the responses the store holds for it. A policy is then a
(n_prompts, n_candidates) table of log-probabilities; prompts with fewer candidates are padded and
the padding carries ``-inf`` (probability 0) and ``mask == False``. Every solver works on the whole
table at once (numpy, no Python loop over prompts), so thousands of prompts take milliseconds.

Exact answers this module computes and the tests check against each other:

* the KL-regularized RLHF optimum ``pi(y) ∝ pi_ref(y) exp(r(y) / beta)``
  (Rafailov et al. 2023, eq. 4) — :func:`kl_regularized_optimum`;
* the DPO optimum on Bradley-Terry preferences, which equals it (Rafailov et al., Thm. 1) —
  :func:`fit_direct_preference` with ``loss="sigmoid"``; the IPO optimum
  ``pi(y) ∝ pi_ref(y) exp(P(y > mu) / tau)`` (Azar et al. 2023, Prop. 3) with ``loss="ipo"``;
* Yun et al.'s (2025) preference MLE / preference distillation, which with ``beta = 0`` recovers
  the target policy ``pi*`` of ``P(y > y') = sigma(gamma log pi*(y) / pi*(y'))`` (eq. 3) —
  :func:`fit_preference_mle`;
* Nash-MD (Munos et al. 2023, "Nash Learning from Human Feedback", eq. 9-10):
  ``pi_t^mu ∝ pi_t^(1 - eta tau) mu^(eta tau)``, ``pi_{t+1} ∝ pi_t^mu exp(eta P(y > pi_t^mu))``,
  ``eta_t = 2 / (tau (t + 2))``, whose last iterate satisfies
  ``KL(pi*, pi_T) <= 8 / (tau^2 (T + 1))`` (Theorem 1) — :func:`nash_md`;
* the regularized Nash equilibrium itself, the fixed point
  ``pi* = softmax(log mu + P pi* / tau)``, solved by Newton's method — :func:`regularized_nash_equilibrium`;
* the exact best-of-N distribution ``P(y) = F(y)^N - F(y^-)^N`` — :func:`best_of_n_distribution`.

``TabularPreferences`` builds the table from a comparisons frame (or a store ``Version``) and
fills rewards and preference matrices from any object that follows the ``RewardModel`` /
``PreferenceModel`` protocols of :mod:`policy.protocols`. The estimators ``TabularRLHF``,
``TabularDPO``, ``TabularNashMD`` and ``TabularBestOfN`` follow the scikit-learn contract.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy.optimize import minimize
from scipy.special import expit, log_expit, logsumexp

from .protocols import PreferenceModel, RewardModel

__all__ = [
    "TabularPreferences",
    "TabularRLHF",
    "TabularDPO",
    "TabularPreferenceMLE",
    "TabularNashMD",
    "TabularBestOfN",
    "kl_regularized_optimum",
    "fit_direct_preference",
    "fit_preference_mle",
    "bradley_terry_rewards",
    "nash_md",
    "regularized_nash_equilibrium",
    "best_of_n_distribution",
    "kl_divergence",
    "win_rate",
    "normalize_log_probs",
]

NEG_INF = -np.inf


# --------------------------------------------------------------------------------------------
# Small exact helpers (all vectorized over the prompt axis)
# --------------------------------------------------------------------------------------------


def _mask_of(log_probs: np.ndarray) -> np.ndarray:
    return np.isfinite(log_probs)


def normalize_log_probs(logits: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Log-softmax over the candidate axis; masked entries become ``-inf``."""
    logits = np.asarray(logits, dtype=np.float64)
    if mask is None:
        mask = np.isfinite(logits)
    logits = np.where(mask, logits, NEG_INF)
    return np.where(mask, logits - logsumexp(logits, axis=-1, keepdims=True), NEG_INF)


def kl_divergence(log_p: np.ndarray, log_q: np.ndarray) -> np.ndarray:
    """KL(p || q) per prompt; 0 log 0 = 0. Infinite if p puts mass where q has none."""
    log_p = np.asarray(log_p, dtype=np.float64)
    log_q = np.asarray(log_q, dtype=np.float64)
    p = np.exp(log_p)
    support = p > 0
    diff = np.where(support, log_p - np.where(support, log_q, 0.0), 0.0)
    return np.sum(np.where(support, p * diff, 0.0), axis=-1)


def win_rate(log_p: np.ndarray, log_q: np.ndarray, preference: np.ndarray) -> np.ndarray:
    """P(y > y') with y ~ p, y' ~ q, per prompt: ``p^T P q``."""
    p = np.exp(np.asarray(log_p, dtype=np.float64))
    q = np.exp(np.asarray(log_q, dtype=np.float64))
    return np.einsum("pi,pij,pj->p", p, np.asarray(preference, dtype=np.float64), q)


def _check_positive(name: str, value: float) -> float:
    value = float(value)
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return value


def _check_preference(preference: np.ndarray, mask: np.ndarray) -> np.ndarray:
    preference = np.asarray(preference, dtype=np.float64)
    n, k = mask.shape
    if preference.shape != (n, k, k):
        raise ValueError(f"preference must have shape {(n, k, k)}, got {preference.shape}")
    pair = mask[:, :, None] & mask[:, None, :]
    values = preference[pair]
    if not np.all(np.isfinite(values)) or values.min(initial=0.5) < 0 or values.max(initial=0.5) > 1:
        raise ValueError("preference probabilities must lie in [0, 1]")
    if not np.allclose((preference + preference.transpose(0, 2, 1))[pair], 1.0, atol=1e-6):
        raise ValueError("preference must satisfy P(y > y') + P(y' > y) = 1")
    return np.where(pair, preference, 0.5)


# --------------------------------------------------------------------------------------------
# Solvers
# --------------------------------------------------------------------------------------------


def _checked_wins(log_reference: np.ndarray, wins: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a win-count table against the reference's candidate mask; returns
    ``(log_reference, mask, pair_mask, wins)`` with the wins zeroed outside real pairs."""
    log_reference = np.asarray(log_reference, dtype=np.float64)
    mask = _mask_of(log_reference)
    wins = np.asarray(wins, dtype=np.float64)
    if wins.shape != mask.shape + (mask.shape[1],):
        raise ValueError(f"wins must have shape {mask.shape + (mask.shape[1],)}, got {wins.shape}")
    if np.any(wins < 0) or not np.all(np.isfinite(wins)):
        raise ValueError("wins must be finite and >= 0")
    pair = mask[:, :, None] & mask[:, None, :]
    return log_reference, mask, pair, np.where(pair, wins, 0.0)


def kl_regularized_optimum(log_reference: np.ndarray, reward: np.ndarray, beta: float) -> np.ndarray:
    """argmax_pi E_pi[r] - beta KL(pi || pi_ref) = pi_ref exp(r / beta) / Z (DPO paper, eq. 4)."""
    beta = _check_positive("beta", beta)
    log_reference = np.asarray(log_reference, dtype=np.float64)
    mask = _mask_of(log_reference)
    reward = np.where(mask, np.asarray(reward, dtype=np.float64), 0.0)
    return normalize_log_probs(np.where(mask, log_reference, 0.0) + reward / beta, mask)


def fit_direct_preference(
    log_reference: np.ndarray,
    wins: np.ndarray,
    beta: float,
    loss: str = "sigmoid",
    l2: float = 0.0,
    max_iter: int = 5000,
    tol: float = 1e-12,
) -> np.ndarray:
    """Minimize the DPO-family loss over a tabular softmax policy, all prompts at once.

    ``wins[p, i, j]`` is the (possibly fractional) number of times candidate ``i`` was preferred
    over ``j`` for prompt ``p``. With implicit reward ``h = log pi / pi_ref``:

    * ``"sigmoid"`` (DPO, Rafailov et al. 2023, eq. 7): ``-sum w_ij log sigma(beta (h_i - h_j))``;
    * ``"ipo"`` (IPO, Azar et al. 2023, eq. 17, with ``tau = beta``):
      ``sum w_ij (h_i - h_j - 1 / (2 beta))^2``.

    The loss is convex in ``h``; it is minimized with L-BFGS on analytic gradients. ``l2`` adds
    ``l2/2 * |h|^2`` (needed when a candidate never loses: DPO's optimum then runs to infinity).
    Returns the policy's log-probabilities.
    """
    beta = _check_positive("beta", beta)
    if loss not in ("sigmoid", "ipo"):
        raise ValueError(f"loss must be 'sigmoid' or 'ipo', got {loss!r}")
    log_reference, mask, pair, wins = _checked_wins(log_reference, wins)
    shape = mask.shape
    margin = 1.0 / (2.0 * beta)

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        h = flat.reshape(shape)
        diff = h[:, :, None] - h[:, None, :]  # h_i - h_j
        if loss == "sigmoid":
            value = -np.sum(wins * log_expit(beta * diff))
            coef = -beta * wins * expit(-beta * diff)  # d/d diff
        else:
            resid = diff - margin
            value = np.sum(wins * resid**2)
            coef = 2.0 * wins * resid
        grad = coef.sum(axis=2) - coef.sum(axis=1)
        if l2:
            value += 0.5 * l2 * np.sum(h**2)
            grad = grad + l2 * h
        return value, (grad * mask).ravel()

    result = minimize(
        objective,
        np.zeros(mask.size),
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-10, "maxcor": 30},
    )
    h = result.x.reshape(shape)
    return normalize_log_probs(np.where(mask, log_reference, 0.0) + h, mask)


def fit_preference_mle(
    log_reference: np.ndarray,
    wins: np.ndarray,
    gamma: float,
    beta: float = 0.0,
    max_iter: int = 5000,
    tol: float = 1e-13,
) -> np.ndarray:
    """Yun et al. (2025, "Alignment as Distribution Learning") on a tabular softmax policy, exactly.

    Minimizes, for every prompt ``p`` at once,
    ``(1 / n_p) sum_ij wins_ij * -log sigma(gamma (log pi_i - log pi_j)) + beta KL(pi || pi_ref)``:
    preference MLE (eq. 5) with observed win counts, and preference distillation (eq. 12, up to a
    constant) with expected wins ``n_ij * P_hat(i > j)`` from a fitted model. ``n_p`` is the
    prompt's number of comparisons. With ``beta = 0`` the population optimum is the target
    ``pi*`` itself when ``P(i > j) = sigma(gamma log pi*_i / pi*_j)`` (eq. 3): the estimator is
    consistent, unlike DPO's deterministic limit. Returns the policy's log-probabilities.
    """
    gamma = _check_positive("gamma", gamma)
    beta = float(beta)
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"beta must be a finite number >= 0, got {beta!r}")
    log_reference, mask, pair, wins = _checked_wins(log_reference, wins)
    per_prompt = wins.sum(axis=(1, 2))
    if np.any(per_prompt <= 0):
        raise ValueError(f"{int(np.sum(per_prompt <= 0))} prompt(s) have no comparison: nothing to learn from")
    wins = wins / per_prompt[:, None, None]
    log_ref = np.where(mask, log_reference, 0.0)
    shape = mask.shape

    def objective(flat: np.ndarray) -> tuple[float, np.ndarray]:
        log_pi = normalize_log_probs(flat.reshape(shape), mask)
        diff = gamma * (log_pi[:, :, None] - log_pi[:, None, :])
        diff = np.where(pair, diff, 0.0)
        value = -np.sum(wins * log_expit(diff))
        coef = -gamma * wins * expit(-diff)
        grad = coef.sum(axis=2) - coef.sum(axis=1)  # d/d log pi; the softmax's shift cancels in diffs
        if beta:
            pi = np.where(mask, np.exp(log_pi), 0.0)
            log_ratio = np.where(mask, log_pi - log_ref, 0.0)
            kl = np.sum(pi * log_ratio, axis=1, keepdims=True)
            value += beta * kl.sum()
            grad = grad + beta * pi * (log_ratio - kl)  # d KL / d logits
        return value, (grad * mask).ravel()

    result = minimize(objective, np.where(mask, log_ref, 0.0).ravel(), jac=True, method="L-BFGS-B",
                      options={"maxiter": max_iter, "ftol": tol, "gtol": 1e-11, "maxcor": 30})
    return normalize_log_probs(result.x.reshape(shape), mask)


def bradley_terry_rewards(wins: np.ndarray, mask: np.ndarray, l2: float = 0.0) -> np.ndarray:
    """Maximum-likelihood Bradley-Terry rewards per prompt (centred to mean 0 over candidates).

    The BT likelihood is DPO's loss with ``beta = 1`` and a uniform reference, so this reuses it.
    """
    mask = np.asarray(mask, dtype=bool)
    log_uniform = normalize_log_probs(np.zeros(mask.shape), mask)
    log_p = fit_direct_preference(log_uniform, wins, beta=1.0, loss="sigmoid", l2=l2)
    h = np.where(mask, log_p, 0.0)
    count = mask.sum(axis=1, keepdims=True)
    return np.where(mask, h - h.sum(axis=1, keepdims=True) / count, 0.0)


def nash_md(
    log_reference: np.ndarray,
    preference: np.ndarray,
    tau: float,
    n_iterations: int,
    log_init: np.ndarray | None = None,
    return_path: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Nash-MD (Munos et al. 2023, eq. 9-10) on every prompt at once.

    ``pi_t^mu ∝ pi_t^(1 - eta_t tau) mu^(eta_t tau)``, then
    ``pi_{t+1} ∝ pi_t^mu exp(eta_t P(y > pi_t^mu))`` with ``eta_t = 2 / (tau (t + 2))`` and
    ``pi_0 = mu`` (the reference) unless ``log_init`` is given. Returns ``log pi_T``; with
    ``return_path`` also the stack of iterates ``log pi_0 .. log pi_T``.
    """
    tau = _check_positive("tau", tau)
    if int(n_iterations) != n_iterations or n_iterations < 0:
        raise ValueError(f"n_iterations must be an integer >= 0, got {n_iterations!r}")
    log_mu = np.asarray(log_reference, dtype=np.float64)
    mask = _mask_of(log_mu)
    preference = _check_preference(preference, mask)
    log_mu0 = np.where(mask, log_mu, 0.0)
    log_pi = log_mu if log_init is None else normalize_log_probs(log_init, mask)
    path = [log_pi] if return_path else None
    for t in range(int(n_iterations)):
        eta = 2.0 / (tau * (t + 2))
        eta_tau = eta * tau
        log_mix = normalize_log_probs((1.0 - eta_tau) * np.where(mask, log_pi, 0.0) + eta_tau * log_mu0, mask)
        advantage = np.einsum("pij,pj->pi", preference, np.exp(log_mix))  # P(y > pi_t^mu)
        log_pi = normalize_log_probs(np.where(mask, log_mix, 0.0) + eta * advantage, mask)
        if return_path:
            path.append(log_pi)
    if return_path:
        return log_pi, np.stack(path)
    return log_pi


def regularized_nash_equilibrium(
    log_reference: np.ndarray,
    preference: np.ndarray,
    tau: float,
    tol: float = 1e-13,
    max_newton: int = 100,
) -> np.ndarray:
    """The unique Nash equilibrium of the tau-regularized preference game, all prompts at once.

    ``max_pi min_pi' P(pi > pi') - tau KL(pi || mu) + tau KL(pi' || mu)`` (Munos et al., eq. 6).
    The game is symmetric and strongly monotone, so the equilibrium is the fixed point
    ``pi = softmax(log mu + P pi / tau)``. Warm start with Nash-MD, then Newton's method on
    ``F(pi) = pi - softmax(log mu + P pi / tau)`` with batched Jacobians
    ``I - (diag(s) - s s^T) P / tau`` and a backtracking line search.
    """
    tau = _check_positive("tau", tau)
    log_mu = np.asarray(log_reference, dtype=np.float64)
    mask = _mask_of(log_mu)
    preference = _check_preference(preference, mask)
    log_mu0 = np.where(mask, log_mu, 0.0)
    k = mask.shape[1]
    eye = np.eye(k)

    def best_response(pi: np.ndarray) -> np.ndarray:
        return np.exp(normalize_log_probs(log_mu0 + np.einsum("pij,pj->pi", preference, pi) / tau, mask))

    pi = np.exp(nash_md(log_mu, preference, tau, 200))
    residual = pi - best_response(pi)
    for _ in range(max_newton):
        norm = np.abs(residual).max(axis=1)
        if norm.max(initial=0.0) < tol:
            break
        s = best_response(pi)
        jac_s = (s[:, :, None] * eye) - s[:, :, None] * s[:, None, :]
        jac = eye - jac_s @ preference / tau
        step = np.linalg.solve(jac, residual[..., None])[..., 0]
        step_size = np.ones(len(pi))
        for _ in range(30):
            candidate = np.clip(pi - step_size[:, None] * step, 0.0, None) * mask
            candidate /= candidate.sum(axis=1, keepdims=True)
            new_residual = candidate - best_response(candidate)
            worse = np.abs(new_residual).max(axis=1) > norm * (1 - 1e-4 * step_size) + 1e-300
            worse &= norm > tol
            if not worse.any():
                break
            step_size = np.where(worse, step_size / 2, step_size)
        pi, residual = candidate, new_residual
    with np.errstate(divide="ignore"):
        return normalize_log_probs(np.log(pi), mask & (pi > 0))


def best_of_n_distribution(log_reference: np.ndarray, reward: np.ndarray, n: int) -> np.ndarray:
    """Exact law of best-of-n sampling from pi_ref under reward r (ties broken by candidate order).

    Sort candidates by reward; with ``F`` the reference CDF in that order,
    ``P(BoN = y) = F(y)^n - F(y^-)^n``. Returns log-probabilities.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n!r}")
    log_reference = np.asarray(log_reference, dtype=np.float64)
    mask = _mask_of(log_reference)
    reward = np.where(mask, np.asarray(reward, dtype=np.float64), -np.inf)
    # ascending by reward; among equal rewards the later candidate ranks higher (stable order)
    order = np.argsort(reward, axis=1, kind="stable")
    p_sorted = np.take_along_axis(np.exp(log_reference), order, axis=1)
    cdf = np.clip(np.cumsum(p_sorted, axis=1), 0.0, 1.0)
    prev = np.concatenate([np.zeros((len(cdf), 1)), cdf[:, :-1]], axis=1)
    prob_sorted = cdf**n - prev**n
    prob = np.empty_like(prob_sorted)
    np.put_along_axis(prob, order, prob_sorted, axis=1)
    with np.errstate(divide="ignore"):
        return np.where(mask & (prob > 0), np.log(np.where(prob > 0, prob, 1.0)), NEG_INF)


# --------------------------------------------------------------------------------------------
# The table built from comparisons
# --------------------------------------------------------------------------------------------


def _as_frame(data: Any) -> pl.DataFrame:
    try:
        from workbench.frames import as_comparisons
    except ImportError:  # pragma: no cover - the core is part of the project
        as_comparisons = None
    if as_comparisons is not None:
        return as_comparisons(data)
    if hasattr(data, "to_polars"):
        return data.to_polars()
    if isinstance(data, pl.DataFrame):
        return data
    return pl.from_pandas(data)


REQUIRED_COLUMNS = ("prompt_id", "prompt", "response_a", "response_b", "label")


@dataclass
class TabularPreferences:
    """Candidates, win counts and reference policy for every prompt, padded to a common width.

    ``wins[p, i, j]``: how often candidate ``i`` was preferred to ``j`` (a tie counts 1/2 each way,
    ``both_bad`` counts nowhere). ``log_reference``: the reference policy (uniform over candidates
    unless given), ``-inf`` on padding.
    """

    prompt_ids: np.ndarray
    prompts: list[str]
    candidate_ids: np.ndarray  # (n_prompts, k) object, None on padding
    candidate_texts: np.ndarray  # (n_prompts, k) object, None on padding
    wins: np.ndarray
    log_reference: np.ndarray
    version_hash: str | None = None
    dropped_prompts: list[str] = field(default_factory=list)

    @property
    def mask(self) -> np.ndarray:
        return np.isfinite(self.log_reference)

    @property
    def n_prompts(self) -> int:
        return len(self.prompt_ids)

    @classmethod
    def from_comparisons(cls, data: Any, drop_prompts_without_pairs: bool = False) -> TabularPreferences:
        """Build the table from a ``Version`` or a comparisons frame.

        A prompt whose comparisons are all ``both_bad`` (no pair says which is better) is an error,
        naming the prompts, unless ``drop_prompts_without_pairs``.
        """
        frame = _as_frame(data)
        version_hash = getattr(data, "hash", None)
        missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
        if missing:
            raise ValueError(f"comparisons are missing columns {missing}")
        if frame.height == 0:
            raise ValueError("no comparisons: the version is empty")
        bad = frame.filter(~pl.col("label").is_in(["a", "b", "tie", "both_bad"]) | pl.col("label").is_null())
        if bad.height:
            raise ValueError(f"unknown labels {sorted(set(bad['label'].to_list()), key=str)}; expected a|b|tie|both_bad")
        for col in ("response_a_id", "response_b_id"):
            if col not in frame.columns:
                frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(col))
        frame = frame.with_columns(
            pl.coalesce("response_a_id", pl.col("response_a")).alias("_ida"),
            pl.coalesce("response_b_id", pl.col("response_b")).alias("_idb"),
        )
        decided = frame.filter(pl.col("label") != "both_bad").group_by("prompt_id").len()
        without = sorted(set(frame["prompt_id"].unique().to_list()) - set(decided["prompt_id"].to_list()), key=str)
        if without and not drop_prompts_without_pairs:
            raise ValueError(
                f"{len(without)} prompt(s) have no usable pair (every label is both_bad): "
                f"{without[:5]}{' ...' if len(without) > 5 else ''}; pass drop_prompts_without_pairs=True to skip them"
            )
        frame = frame.filter(~pl.col("prompt_id").is_in(without))
        if frame.height == 0:
            raise ValueError("no prompt has a usable pair")
        sides = pl.concat(
            [
                frame.select("prompt_id", "prompt", pl.col("_ida").alias("rid"), pl.col("response_a").alias("text")),
                frame.select("prompt_id", "prompt", pl.col("_idb").alias("rid"), pl.col("response_b").alias("text")),
            ]
        )
        candidates = (
            sides.unique(["prompt_id", "rid"], keep="first", maintain_order=True)
            .sort("prompt_id", "rid")
            .with_columns(pl.int_range(pl.len()).over("prompt_id").alias("slot"))
        )
        prompts = candidates.group_by("prompt_id", maintain_order=True).agg(pl.col("prompt").first(), pl.len().alias("n"))
        prompts = prompts.with_row_index("pidx")
        n, k = prompts.height, int(prompts["n"].max())
        candidates = candidates.join(prompts.select("prompt_id", "pidx"), on="prompt_id")
        cand_ids = np.full((n, k), None, dtype=object)
        cand_texts = np.full((n, k), None, dtype=object)
        pidx = candidates["pidx"].to_numpy().astype(np.int64)
        slot = candidates["slot"].to_numpy().astype(np.int64)
        cand_ids[pidx, slot] = np.array(candidates["rid"].to_list(), dtype=object)
        cand_texts[pidx, slot] = np.array(candidates["text"].to_list(), dtype=object)
        lookup = candidates.select("prompt_id", "rid", "pidx", "slot")
        rows = (
            frame.select("prompt_id", "_ida", "_idb", "label")
            .join(lookup.rename({"rid": "_ida", "slot": "ia"}), on=["prompt_id", "_ida"])
            .join(lookup.drop("pidx").rename({"rid": "_idb", "slot": "ib"}), on=["prompt_id", "_idb"])
        )
        wins = np.zeros((n, k, k))
        p = rows["pidx"].to_numpy().astype(np.int64)
        ia = rows["ia"].to_numpy().astype(np.int64)
        ib = rows["ib"].to_numpy().astype(np.int64)
        label = rows["label"].to_numpy()
        w_a = np.select([label == "a", label == "tie"], [1.0, 0.5], 0.0)
        w_b = np.select([label == "b", label == "tie"], [1.0, 0.5], 0.0)
        np.add.at(wins, (p, ia, ib), w_a)
        np.add.at(wins, (p, ib, ia), w_b)
        idx = np.arange(k)
        wins[:, idx, idx] = 0.0  # a response compared with itself says nothing
        mask = np.arange(k)[None, :] < prompts["n"].to_numpy()[:, None]
        return cls(
            prompt_ids=np.array(prompts["prompt_id"].to_list(), dtype=object),
            prompts=prompts["prompt"].to_list(),
            candidate_ids=cand_ids,
            candidate_texts=cand_texts,
            wins=wins,
            log_reference=normalize_log_probs(np.zeros((n, k)), mask),
            version_hash=version_hash,
            dropped_prompts=without,
        )

    def with_reference(self, log_reference: np.ndarray) -> TabularPreferences:
        log_reference = np.asarray(log_reference, dtype=np.float64)
        if log_reference.shape != self.log_reference.shape:
            raise ValueError(f"reference must have shape {self.log_reference.shape}, got {log_reference.shape}")
        if np.any(np.isfinite(log_reference) & ~self.mask):
            raise ValueError("reference puts mass on padding")
        new = TabularPreferences(**{**self.__dict__})
        new.log_reference = normalize_log_probs(log_reference, self.mask & np.isfinite(log_reference))
        return new

    def _pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        p, i, j = np.nonzero(self.mask[:, :, None] & self.mask[:, None, :] & np.triu(np.ones((self.wins.shape[1],) * 2, bool), 1))
        return p, i, j

    def reward_table(self, reward_model: RewardModel | np.ndarray) -> np.ndarray:
        """Rewards of every candidate from a reward model (one batched call), 0 on padding."""
        if isinstance(reward_model, np.ndarray):
            if reward_model.shape != self.mask.shape:
                raise ValueError(f"reward table must have shape {self.mask.shape}, got {reward_model.shape}")
            return np.where(self.mask, reward_model, 0.0)
        p, i = np.nonzero(self.mask)
        prompts = [self.prompts[x] for x in p]
        responses = list(self.candidate_texts[p, i])
        values = np.asarray(reward_model.reward(prompts, responses), dtype=np.float64).reshape(-1)
        if values.shape != (len(p),) or not np.all(np.isfinite(values)):
            raise ValueError(f"reward model returned {values.shape} values (expected {len(p)}, all finite)")
        table = np.zeros(self.mask.shape)
        table[p, i] = values
        return table

    def preference_table(self, preference_model: PreferenceModel | np.ndarray) -> np.ndarray:
        """P[p, i, j] = P(candidate i > candidate j) from a pairwise preference model.

        Each unordered pair is asked in both orders and averaged, so a model with a position bias
        still gives ``P + P^T = 1``. 1/2 on the diagonal and on padding.
        """
        n, k = self.mask.shape
        if isinstance(preference_model, np.ndarray):
            return _check_preference(preference_model, self.mask)
        p, i, j = self._pairs()
        prompts = [self.prompts[x] for x in p]
        ra, rb = list(self.candidate_texts[p, i]), list(self.candidate_texts[p, j])
        forward = np.asarray(preference_model.proba(prompts + prompts, ra + rb, rb + ra), dtype=np.float64).reshape(-1)
        if forward.shape != (2 * len(p),) or not np.all((forward >= 0) & (forward <= 1)):
            raise ValueError("preference model must return one probability in [0, 1] per pair")
        prob = 0.5 * (forward[: len(p)] + 1.0 - forward[len(p):])
        table = np.full((n, k, k), 0.5)
        table[p, i, j] = prob
        table[p, j, i] = 1.0 - prob
        return table

    def empirical_preference(self, prior: float = 1.0) -> np.ndarray:
        """P(i > j) from the win counts with a symmetric Beta(prior, prior); 1/2 where never compared."""
        total = self.wins + self.wins.transpose(0, 2, 1)
        table = (self.wins + prior) / (total + 2 * prior)
        table = np.where(total > 0, table, 0.5)
        idx = np.arange(table.shape[1])
        table[:, idx, idx] = 0.5
        return table

    def policy_frame(self, log_probs: np.ndarray) -> pl.DataFrame:
        """One row per (prompt, candidate): ids, probability and reference probability."""
        p, i = np.nonzero(self.mask)
        return pl.DataFrame(
            {
                "prompt_id": [self.prompt_ids[x] for x in p],
                "response_id": list(self.candidate_ids[p, i]),
                "probability": np.exp(log_probs[p, i]),
                "reference_probability": np.exp(self.log_reference[p, i]),
            }
        )


# --------------------------------------------------------------------------------------------
# Estimators
# --------------------------------------------------------------------------------------------


class _TabularPolicy:
    """Shared state and evaluation of a fitted tabular policy."""

    log_probs_: np.ndarray
    table_: TabularPreferences

    def _set(self, table: TabularPreferences, log_probs: np.ndarray) -> None:
        self.table_ = table
        self.log_probs_ = log_probs
        self.version_hash_ = table.version_hash

    def _check_fitted(self) -> None:
        if not hasattr(self, "log_probs_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted: call fit() first")

    def policy_frame(self) -> pl.DataFrame:
        self._check_fitted()
        return self.table_.policy_frame(self.log_probs_)

    def evaluate(
        self,
        preference: PreferenceModel | np.ndarray,
        reward: RewardModel | np.ndarray | None = None,
    ) -> pl.DataFrame:
        """Per prompt: win rate against the reference under ``preference``, KL to the reference,
        and (with a reward) the reward gain ``E_pi[r] - E_ref[r]``."""
        self._check_fitted()
        table = self.table_
        pref = table.preference_table(preference)
        out = {
            "prompt_id": list(table.prompt_ids),
            "win_rate": win_rate(self.log_probs_, table.log_reference, pref),
            "kl_to_reference": kl_divergence(self.log_probs_, table.log_reference),
        }
        if reward is not None:
            r = table.reward_table(reward)
            out["reward_gain"] = np.sum((np.exp(self.log_probs_) - np.exp(table.log_reference)) * r, axis=1)
        return pl.DataFrame(out)

    def save(self, path: str | Path) -> Path:
        """Write the fitted table and hyper-parameters to ``path`` (an .npz file)."""
        self._check_fitted()
        path = Path(path)
        t = self.table_
        np.savez_compressed(
            path,
            log_probs=self.log_probs_,
            log_reference=t.log_reference,
            wins=t.wins,
            prompt_ids=t.prompt_ids.astype(str),
            candidate_ids=np.where(t.candidate_ids == None, "", t.candidate_ids).astype(str),  # noqa: E711
            candidate_texts=np.where(t.candidate_texts == None, "", t.candidate_texts).astype(str),  # noqa: E711
            prompts=np.array(t.prompts, dtype=str),
            meta=np.array(json.dumps({"class": type(self).__name__, "params": self.get_params(), "version_hash": t.version_hash})),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> _TabularPolicy:
        with np.load(Path(path), allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            if meta["class"] != cls.__name__:
                raise ValueError(f"{path} holds a {meta['class']}, not a {cls.__name__}")
            mask = np.isfinite(data["log_reference"])
            ids = np.where(mask, data["candidate_ids"].astype(object), None)
            texts = np.where(mask, data["candidate_texts"].astype(object), None)
            table = TabularPreferences(
                prompt_ids=data["prompt_ids"].astype(object),
                prompts=list(data["prompts"]),
                candidate_ids=ids,
                candidate_texts=texts,
                wins=data["wins"],
                log_reference=data["log_reference"],
                version_hash=meta["version_hash"],
            )
            model = cls(**meta["params"])
            model._set(table, data["log_probs"])
        return model

    def get_params(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self._params}


class TabularRLHF(_TabularPolicy):
    """The KL-regularized RLHF optimum for a reward model: ``pi ∝ pi_ref exp(r / beta)``."""

    _params = ("beta",)

    def __init__(self, beta: float = 0.1):
        self.beta = beta

    def fit(self, table: TabularPreferences, reward: RewardModel | np.ndarray) -> TabularRLHF:
        _check_positive("beta", self.beta)
        self.rewards_ = table.reward_table(reward)
        self._set(table, kl_regularized_optimum(table.log_reference, self.rewards_, self.beta))
        return self


class TabularDPO(_TabularPolicy):
    """DPO / IPO fitted directly on the table's win counts (or on expected wins from a
    preference model: ``wins = n_pairs * P``)."""

    _params = ("beta", "loss", "l2")

    def __init__(self, beta: float = 0.1, loss: str = "sigmoid", l2: float = 0.0):
        self.beta = beta
        self.loss = loss
        self.l2 = l2

    def fit(self, table: TabularPreferences, wins: np.ndarray | None = None) -> TabularDPO:
        _check_positive("beta", self.beta)
        wins = table.wins if wins is None else wins
        self._set(table, fit_direct_preference(table.log_reference, wins, self.beta, self.loss, self.l2))
        return self


class TabularPreferenceMLE(_TabularPolicy):
    """Yun et al.'s preference MLE on the table's win counts, or preference distillation when
    ``wins`` are a fitted model's expected wins (``n_pairs * P_hat``): :func:`fit_preference_mle`."""

    _params = ("gamma", "beta")

    def __init__(self, gamma: float = 0.1, beta: float = 0.0):
        self.gamma = gamma
        self.beta = beta

    def fit(self, table: TabularPreferences, wins: np.ndarray | None = None) -> TabularPreferenceMLE:
        wins = table.wins if wins is None else wins
        self._set(table, fit_preference_mle(table.log_reference, wins, self.gamma, self.beta))
        return self


class TabularNashMD(_TabularPolicy):
    """Nash-MD's last iterate after ``n_iterations`` steps against a preference model."""

    _params = ("tau", "n_iterations")

    def __init__(self, tau: float = 0.1, n_iterations: int = 1000):
        self.tau = tau
        self.n_iterations = n_iterations

    def fit(self, table: TabularPreferences, preference: PreferenceModel | np.ndarray) -> TabularNashMD:
        _check_positive("tau", self.tau)
        self.preference_ = table.preference_table(preference)
        self._set(table, nash_md(table.log_reference, self.preference_, self.tau, self.n_iterations))
        return self

    def equilibrium(self) -> np.ndarray:
        """The exact regularized Nash equilibrium of the game this policy was fitted on."""
        self._check_fitted()
        return regularized_nash_equilibrium(self.table_.log_reference, self.preference_, self.tau)


class TabularBestOfN(_TabularPolicy):
    """The exact best-of-n policy of the reference under a reward model."""

    _params = ("n",)

    def __init__(self, n: int = 4):
        self.n = n

    def fit(self, table: TabularPreferences, reward: RewardModel | np.ndarray) -> TabularBestOfN:
        self.rewards_ = table.reward_table(reward)
        self._set(table, best_of_n_distribution(table.log_reference, self.rewards_, self.n))
        return self
