"""Tabular policies against exact answers (closed forms, an independent root finder, Monte Carlo)."""

from __future__ import annotations

import time

import numpy as np
import polars as pl
import pytest
from scipy.optimize import root

from policy.tabular import (
    TabularBestOfN,
    TabularDPO,
    TabularNashMD,
    TabularPreferences,
    TabularRLHF,
    best_of_n_distribution,
    bradley_terry_rewards,
    fit_direct_preference,
    kl_divergence,
    kl_regularized_optimum,
    nash_md,
    normalize_log_probs,
    regularized_nash_equilibrium,
    win_rate,
)


def random_preferences(rng, n, k, scale=1.0):
    """Random skew-symmetric games: P = 1/2 + A/2 with A antisymmetric in [-1, 1]; generally intransitive."""
    a = rng.uniform(-1, 1, (n, k, k)) * scale
    a = (a - a.transpose(0, 2, 1)) / 2
    return 0.5 + a / 2


def bt_preferences(reward):
    return 1.0 / (1.0 + np.exp(-(reward[:, :, None] - reward[:, None, :])))


def rock_paper_scissors(n):
    cyc = np.array([[0.5, 1.0, 0.0], [0.0, 0.5, 1.0], [1.0, 0.0, 0.5]])
    return np.broadcast_to(cyc, (n, 3, 3)).copy()


def pair_weights(mask):
    w = (mask[:, :, None] & mask[:, None, :]).astype(float)
    idx = np.arange(mask.shape[1])
    w[:, idx, idx] = 0.0
    return w


# ---------------------------------------------------------------------------------------------
# RLHF optimum and DPO
# ---------------------------------------------------------------------------------------------


def test_kl_regularized_optimum_maximizes_the_objective():
    rng = np.random.default_rng(0)
    log_ref = normalize_log_probs(rng.normal(size=(50, 5)))
    reward = rng.normal(size=(50, 5))
    beta = 0.3
    opt = kl_regularized_optimum(log_ref, reward, beta)
    np.testing.assert_allclose(np.exp(opt).sum(1), 1.0)

    def objective(log_pi):
        return (np.exp(log_pi) * reward).sum(1) - beta * kl_divergence(log_pi, log_ref)

    best = objective(opt)
    for _ in range(20):  # any perturbation is worse, for every prompt
        other = normalize_log_probs(opt + rng.normal(scale=0.3, size=opt.shape))
        assert np.all(objective(other) <= best + 1e-12)
    # closed form value: beta log Z
    log_z = np.log((np.exp(log_ref) * np.exp(reward / beta)).sum(1))
    np.testing.assert_allclose(best, beta * log_z, rtol=1e-10)


@pytest.mark.parametrize("beta", [0.1, 1.0, 3.0])
def test_dpo_optimum_equals_rlhf_optimum_on_bradley_terry_preferences(beta):
    rng = np.random.default_rng(1)
    n, k = 300, 5
    mask = np.ones((n, k), bool)
    mask[: n // 2, 4] = False  # prompts with fewer candidates
    log_ref = normalize_log_probs(rng.normal(size=(n, k)), mask)
    reward = rng.normal(size=(n, k))
    wins = bt_preferences(reward) * pair_weights(mask)  # expected wins, one comparison per ordered pair
    dpo = fit_direct_preference(log_ref, wins, beta)
    rlhf = kl_regularized_optimum(log_ref, reward, beta)
    np.testing.assert_allclose(np.exp(dpo), np.exp(rlhf), atol=2e-5)
    assert np.all(np.exp(dpo)[~mask] == 0)


def test_ipo_optimum_matches_closed_form():
    """IPO (Azar et al. Prop. 3): with all pairs weighted mu_i mu_j, pi ∝ pi_ref exp(P(y > mu) / tau)."""
    rng = np.random.default_rng(2)
    n, k, tau = 100, 4, 0.5
    log_ref = normalize_log_probs(rng.normal(size=(n, k)))
    mu = np.exp(log_ref)
    pref = random_preferences(rng, n, k)
    wins = mu[:, :, None] * mu[:, None, :] * pref
    ipo = fit_direct_preference(log_ref, wins, tau, loss="ipo")
    expected = normalize_log_probs(log_ref + np.einsum("pij,pj->pi", pref, mu) / tau)
    np.testing.assert_allclose(np.exp(ipo), np.exp(expected), atol=1e-6)


def test_bradley_terry_rewards_recover_differences():
    rng = np.random.default_rng(3)
    reward = rng.normal(size=(40, 6))
    mask = np.ones(reward.shape, bool)
    fitted = bradley_terry_rewards(bt_preferences(reward) * pair_weights(mask), mask)
    centred = reward - reward.mean(1, keepdims=True)
    np.testing.assert_allclose(fitted, centred, atol=1e-4)


def test_rejects_non_positive_beta_and_bad_wins():
    log_ref = normalize_log_probs(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="beta"):
        fit_direct_preference(log_ref, np.zeros((2, 3, 3)), beta=0.0)
    with pytest.raises(ValueError, match="beta"):
        kl_regularized_optimum(log_ref, np.zeros((2, 3)), beta=-1)
    with pytest.raises(ValueError, match="shape"):
        fit_direct_preference(log_ref, np.zeros((2, 3)), beta=1.0)
    with pytest.raises(ValueError, match=">= 0"):
        fit_direct_preference(log_ref, -np.ones((2, 3, 3)), beta=1.0)
    with pytest.raises(ValueError, match="loss"):
        fit_direct_preference(log_ref, np.zeros((2, 3, 3)), beta=1.0, loss="hinge")


# ---------------------------------------------------------------------------------------------
# Nash-MD
# ---------------------------------------------------------------------------------------------


def independent_equilibrium(log_mu, pref, tau):
    """Per prompt, scipy's root finder on the logit fixed point z = log mu + P softmax(z) / tau."""
    out = np.empty_like(log_mu)
    for p in range(len(log_mu)):
        def f(z, p=p):
            s = np.exp(z - np.logaddexp.reduce(z))
            return z - log_mu[p] - pref[p] @ s / tau
        sol = root(f, log_mu[p].copy(), method="hybr", tol=1e-13)
        assert np.abs(f(sol.x)).max() < 1e-11, sol.message
        out[p] = sol.x - np.logaddexp.reduce(sol.x)
    return out


@pytest.mark.parametrize("tau", [0.2, 1.0])
def test_regularized_equilibrium_matches_independent_solver_and_has_zero_exploitability(tau):
    rng = np.random.default_rng(4)
    n, k = 30, 5
    log_mu = normalize_log_probs(rng.normal(size=(n, k)))
    pref = random_preferences(rng, n, k)
    eq = regularized_nash_equilibrium(log_mu, pref, tau)
    np.testing.assert_allclose(np.exp(eq), np.exp(independent_equilibrium(log_mu, pref, tau)), atol=1e-10)
    # exploitability of the regularized game: best response value minus equilibrium value = 0
    pi = np.exp(eq)
    payoff = np.einsum("pij,pj->pi", pref, pi)
    best = tau * np.log((np.exp(log_mu) * np.exp(payoff / tau)).sum(1))
    value = (pi * payoff).sum(1) - tau * kl_divergence(eq, log_mu)
    np.testing.assert_allclose(best, value, atol=1e-12)
    np.testing.assert_allclose((pi * payoff).sum(1), 0.5, atol=1e-12)  # symmetric game: value 1/2


@pytest.mark.parametrize("tau", [0.1, 0.5, 2.0])
def test_nash_md_theorem_1_bound_on_random_intransitive_games(tau):
    rng = np.random.default_rng(5)
    n, k = 500, 6
    mask = np.ones((n, k), bool)
    mask[::3, 5] = False
    log_mu = normalize_log_probs(rng.normal(size=(n, k)), mask)
    pref = random_preferences(rng, n, k)
    pref[::2] = rock_paper_scissors_padded(n, k)[::2]
    eq = regularized_nash_equilibrium(log_mu, pref, tau)
    _, path = nash_md(log_mu, pref, tau, 400, return_path=True)
    for t in (1, 2, 5, 10, 50, 100, 400):
        kl = kl_divergence(eq, path[t])
        assert np.all(kl <= 8.0 / (tau**2 * (t + 1))), (t, kl.max())
    # and it actually converges (the bound is loose): last iterate within 1e-4
    assert kl_divergence(eq, path[-1]).max() < 1e-4


def rock_paper_scissors_padded(n, k):
    """Rock-paper-scissors on the first three candidates, the others strictly dominated."""
    pref = np.full((n, k, k), 0.5)
    pref[:, :3, :3] = rock_paper_scissors(n)
    pref[:, :3, 3:] = 0.8
    pref[:, 3:, :3] = 0.2
    return pref


def test_rock_paper_scissors_nash_differs_from_what_any_reward_model_reaches():
    """With a cyclic preference, BT rewards are all equal, so RLHF / DPO return the reference;
    Nash-MD reaches the regularized equilibrium, which beats the reference."""
    n, tau = 4, 0.2
    log_mu = normalize_log_probs(np.log(np.array([[0.6, 0.3, 0.1]] * n)))
    pref = rock_paper_scissors(n)
    mask = np.ones((n, 3), bool)
    wins = pref * pair_weights(mask)
    dpo = fit_direct_preference(log_mu, wins, beta=tau)
    np.testing.assert_allclose(np.exp(dpo), np.exp(log_mu), atol=1e-6)  # DPO cannot move
    np.testing.assert_allclose(bradley_terry_rewards(wins, mask), 0.0, atol=1e-6)
    eq = regularized_nash_equilibrium(log_mu, pref, tau)
    last = nash_md(log_mu, pref, tau, 2000)
    assert kl_divergence(eq, dpo).min() > 0.05
    assert kl_divergence(eq, last).max() < 8 / (tau**2 * 2001)
    assert np.all(win_rate(last, log_mu, pref) > 0.55)
    # no policy beats the equilibrium in the unregularized sense by much less than the reference does
    assert np.all(win_rate(eq, dpo, pref) > 0.5)


def test_nash_md_is_vectorized_over_thousands_of_prompts():
    rng = np.random.default_rng(6)
    n, k = 4000, 6
    log_mu = normalize_log_probs(rng.normal(size=(n, k)))
    pref = random_preferences(rng, n, k)
    start = time.perf_counter()
    out = nash_md(log_mu, pref, 0.5, 20)
    elapsed = time.perf_counter() - start
    # the same answer as running prompt by prompt
    for p in rng.choice(n, 5, replace=False):
        np.testing.assert_allclose(out[p], nash_md(log_mu[p:p + 1], pref[p:p + 1], 0.5, 20)[0], atol=1e-12)
    print(f"nash_md: {n} prompts x 20 iterations in {elapsed:.3f}s")


def test_nash_md_rejects_bad_input():
    log_mu = normalize_log_probs(np.zeros((2, 3)))
    pref = np.full((2, 3, 3), 0.5)
    with pytest.raises(ValueError, match="tau"):
        nash_md(log_mu, pref, 0.0, 10)
    with pytest.raises(ValueError, match="tau"):
        regularized_nash_equilibrium(log_mu, pref, -1.0)
    bad = pref.copy()
    bad[0, 0, 1] = 0.9  # P + P^T != 1
    with pytest.raises(ValueError, match="P\\(y > y'\\)"):
        nash_md(log_mu, bad, 1.0, 10)
    with pytest.raises(ValueError, match="shape"):
        nash_md(log_mu, pref[:, :2, :2], 1.0, 10)
    with pytest.raises(ValueError, match="n_iterations"):
        nash_md(log_mu, pref, 1.0, -1)


# ---------------------------------------------------------------------------------------------
# Best-of-n
# ---------------------------------------------------------------------------------------------


def test_best_of_n_distribution_matches_monte_carlo():
    rng = np.random.default_rng(7)
    log_ref = normalize_log_probs(np.log(np.array([[0.5, 0.2, 0.2, 0.1]])))
    reward = np.array([[0.0, 2.0, 1.0, 3.0]])
    exact = np.exp(best_of_n_distribution(log_ref, reward, 3))[0]
    draws = rng.choice(4, size=(200_000, 3), p=np.exp(log_ref[0]))
    best = draws[np.arange(len(draws)), np.argmax(reward[0][draws], axis=1)]
    empirical = np.bincount(best, minlength=4) / len(best)
    np.testing.assert_allclose(exact, empirical, atol=4e-3)
    np.testing.assert_allclose(np.exp(best_of_n_distribution(log_ref, reward, 1)), np.exp(log_ref))
    # KL(BoN || ref) <= log n - (n - 1) / n (Beirami et al. 2024)
    assert kl_divergence(np.log(exact)[None], log_ref)[0] <= np.log(3) - 2 / 3 + 1e-12


# ---------------------------------------------------------------------------------------------
# From comparisons to policies, end to end on simulated labels with known truth
# ---------------------------------------------------------------------------------------------


class TableReward:
    """A reward model from a known table: reward(prompt, response)."""

    def __init__(self, table: dict[tuple[str, str], float]):
        self.table = table

    def reward(self, prompts, responses):
        return np.array([self.table[(p, r)] for p, r in zip(prompts, responses)])


class MatrixPreference:
    """A pairwise preference model from a known P(a > b) table."""

    def __init__(self, table: dict[tuple[str, str, str], float]):
        self.table = table

    def proba(self, prompts, responses_a, responses_b):
        return np.array([self.table[(p, a, b)] for p, a, b in zip(prompts, responses_a, responses_b)])


def simulate_comparisons(rng, n_prompts=60, k=4, n_labels=400, cyclic_fraction=0.5):
    """Labels from simulated annotators with a known preference per prompt: BT on a hidden reward
    for some prompts, a rock-paper-scissors cycle (plus a dominated option) for the others."""
    rows, truth, true_reward = [], {}, {}
    for p in range(n_prompts):
        prompt = f"prompt {p}"
        responses = [f"p{p} response {i}" for i in range(k)]
        if p < cyclic_fraction * n_prompts:
            pref = rock_paper_scissors_padded(1, k)[0] * 0.8 + 0.1
        else:
            r = rng.normal(scale=1.5, size=k)
            pref = bt_preferences(r[None])[0]
            for i in range(k):
                true_reward[(prompt, responses[i])] = r[i]
        for i in range(k):
            for j in range(k):
                truth[(prompt, responses[i], responses[j])] = pref[i, j]
        for _ in range(n_labels // n_prompts):
            i, j = rng.choice(k, 2, replace=False)
            label = "a" if rng.random() < pref[i, j] else "b"
            rows.append((f"q{p}", prompt, f"p{p}r{i}", responses[i], f"p{p}r{j}", responses[j], label))
    frame = pl.DataFrame(rows, schema=["prompt_id", "prompt", "response_a_id", "response_a", "response_b_id", "response_b", "label"], orient="row")
    return frame, MatrixPreference(truth), true_reward


def test_end_to_end_every_stage_beats_the_reference_under_the_true_preference():
    """Simulated labels -> fitted BT reward / empirical preference -> RLHF, DPO, Nash-MD, BoN;
    each improves the true win rate over the reference (tabular; the store-backed simulator is
    exercised by the CLI test when present)."""
    rng = np.random.default_rng(8)
    frame, true_pref, _ = simulate_comparisons(rng, n_labels=3000)
    table = TabularPreferences.from_comparisons(frame)
    assert table.n_prompts == 60 and table.mask.sum() == 240
    fitted_reward = bradley_terry_rewards(table.wins, table.mask, l2=1e-2)
    fitted_pref = table.empirical_preference(prior=1.0)
    policies = {
        "rlhf": TabularRLHF(beta=0.5).fit(table, fitted_reward),
        "dpo": TabularDPO(beta=0.5, l2=1e-2).fit(table),
        "nash_md": TabularNashMD(tau=0.5, n_iterations=300).fit(table, fitted_pref),
        "best_of_4": TabularBestOfN(n=4).fit(table, fitted_reward),
    }
    gains = {}
    for name, policy in policies.items():
        report = policy.evaluate(true_pref)
        assert set(report.columns) == {"prompt_id", "win_rate", "kl_to_reference"}
        gains[name] = report["win_rate"].mean() - 0.5
        assert gains[name] > 0.03, (name, gains[name])
        assert (report["kl_to_reference"] >= 0).all()
    print("true win-rate gain over the reference:", {k: round(v, 3) for k, v in gains.items()})
    frame_out = policies["dpo"].policy_frame()
    assert frame_out.columns == ["prompt_id", "response_id", "probability", "reference_probability"]
    np.testing.assert_allclose(frame_out.group_by("prompt_id").agg(pl.col("probability").sum())["probability"], 1.0)


def test_reward_and_preference_tables_from_models():
    rng = np.random.default_rng(9)
    frame, true_pref, true_reward = simulate_comparisons(rng, n_prompts=10, n_labels=500, cyclic_fraction=0.0)
    table = TabularPreferences.from_comparisons(frame)
    reward = table.reward_table(TableReward(true_reward))
    pref = table.preference_table(true_pref)
    # the preference model's P equals sigma(r_i - r_j) of the reward table, cell by cell
    np.testing.assert_allclose(pref, bt_preferences(reward), atol=1e-12)
    rlhf = TabularRLHF(beta=1.0).fit(table, TableReward(true_reward))
    dpo = TabularDPO(beta=1.0).fit(table, wins=pref * pair_weights(table.mask))
    np.testing.assert_allclose(np.exp(rlhf.log_probs_), np.exp(dpo.log_probs_), atol=2e-5)
    report = rlhf.evaluate(true_pref, reward=TableReward(true_reward))
    assert (report["reward_gain"] > 0).all()


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(10)
    frame, true_pref, _ = simulate_comparisons(rng, n_prompts=6, n_labels=120)
    table = TabularPreferences.from_comparisons(frame)
    model = TabularNashMD(tau=0.3, n_iterations=50).fit(table, table.empirical_preference())
    path = model.save(tmp_path / "nash.npz")
    loaded = TabularNashMD.load(path)
    np.testing.assert_array_equal(loaded.log_probs_, model.log_probs_)
    assert loaded.get_params() == {"tau": 0.3, "n_iterations": 50}
    assert loaded.policy_frame().equals(model.policy_frame())
    with pytest.raises(ValueError, match="TabularNashMD"):
        TabularDPO.load(path)
    with pytest.raises(RuntimeError, match="not fitted"):
        TabularDPO().policy_frame()


def test_from_comparisons_bad_input():
    base = {"prompt_id": ["p1", "p1", "p2"], "prompt": ["x", "x", "y"], "response_a": ["a", "a", "c"],
            "response_b": ["b", "b", "d"], "label": ["a", "tie", "both_bad"]}
    with pytest.raises(ValueError, match="no usable pair.*p2"):
        TabularPreferences.from_comparisons(pl.DataFrame(base))
    table = TabularPreferences.from_comparisons(pl.DataFrame(base), drop_prompts_without_pairs=True)
    assert table.dropped_prompts == ["p2"] and table.n_prompts == 1
    np.testing.assert_allclose(table.wins[0], [[0, 1.5], [0.5, 0]])  # a won once, tied once
    with pytest.raises(ValueError, match="empty"):
        TabularPreferences.from_comparisons(pl.DataFrame(base).head(0))
    with pytest.raises(ValueError, match="missing columns"):
        TabularPreferences.from_comparisons(pl.DataFrame(base).drop("label"))
    with pytest.raises(ValueError, match="unknown labels"):
        TabularPreferences.from_comparisons(pl.DataFrame({**base, "label": ["a", "x", "b"]}))
    with pytest.raises(ValueError, match="shape"):
        table.reward_table(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="tau"):
        TabularNashMD(tau=0).fit(table, table.empirical_preference())
    # a pandas frame works too
    assert TabularPreferences.from_comparisons(pl.DataFrame(base).to_pandas(), drop_prompts_without_pairs=True).n_prompts == 1
