"""The fast paths of rm.choice equal the plain computations they replace.

Aggregation by one sort (vs ``np.unique``), the dense strong-connectivity check (vs scipy's
``connected_components``), the plain logit Bradley-Terry derivatives from item strengths (vs
the general outcome-model path), single-precision Newton steps (vs double), standard errors
from the triangular inverse (vs the full inverse), the sparse Hessian built from the row
weights (vs the dense Hessian), and the batched bootstrap of plain Bradley-Terry on compact
counts (vs independent full refits of every round).
"""

import os

import numpy as np
import polars as pl
import pytest
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from rm.choice import BradleyTerry, NoFiniteMLEError, solvers
from rm.choice.bootstrap import poisson_counts
from rm.choice.data import _strongly_connected_dense, aggregate, count_cells
from rm.choice.outcomes import make_outcome

from .conftest import simulate


def _reference_outcomes(labels):
    table = {"a": 0, "b": 1, "tie": 2, "both_bad": 3}
    return np.array([table[x] for x in labels], dtype=np.int8)


def test_outcome_codes_from_string_views_equal_string_comparisons():
    from rm.choice.data import _view_words, outcome_codes

    rng = np.random.default_rng(30)
    labels = rng.choice(["a", "b"], 10_000).tolist()
    frame = pl.DataFrame({"label": labels})
    assert _view_words(frame["label"]) is not None  # the in-place path is taken
    np.testing.assert_array_equal(outcome_codes(frame, "label"), _reference_outcomes(labels))
    # a slice (an offset into the views), several chunks, other labels, categoricals
    sliced = frame.slice(123, 4000)
    np.testing.assert_array_equal(outcome_codes(sliced, "label"),
                                  _reference_outcomes(labels[123:4123]))
    chunked = pl.concat([frame.head(10), frame.tail(20)], rechunk=False)
    np.testing.assert_array_equal(outcome_codes(chunked, "label"),
                                  _reference_outcomes(labels[:10] + labels[-20:]))
    mixed = labels[:50] + ["tie", "both_bad"] * 5
    for col in (pl.Series("label", mixed), pl.Series("label", mixed, dtype=pl.Categorical)):
        np.testing.assert_array_equal(outcome_codes(pl.DataFrame({"label": col}), "label"),
                                      _reference_outcomes(mixed))
    # near misses of "a" and "b" are errors, whichever path reads them
    for bad in ("A", "c", "ab", "a ", "é", "b" * 20, ""):
        with pytest.raises(ValueError, match="labels must be one of"):
            outcome_codes(pl.DataFrame({"label": labels[:5] + [bad]}), "label")
    with pytest.raises(ValueError, match="labels must be one of"):
        outcome_codes(pl.DataFrame({"label": labels[:5] + [None]}), "label")


@pytest.mark.parametrize("gaps", [False, True])
def test_integer_ids_equal_their_names(gaps):
    # ids 0..K-1 all used, or with unused ids (and one id seen only as the second item): the
    # codes are checked on the aggregated rows, not on the comparisons
    rng = np.random.default_rng(31)
    K, n = 60, 20_000
    ids = np.arange(K) * (3 if gaps else 1)
    a = rng.integers(0, K, n)
    b = (a + rng.integers(1, K, n)) % K
    if gaps:  # the lowest id only in column b
        zero = a == 0
        a[zero], b[zero] = b[zero], 0
    win = rng.random(n) < 0.5
    label = np.where(win, "a", "b")
    by_id = BradleyTerry().fit(pl.DataFrame({"model_a": ids[a], "model_b": ids[b],
                                             "label": label}))
    by_name = BradleyTerry().fit(pl.DataFrame({"model_a": [f"m{i:04d}" for i in ids[a]],
                                               "model_b": [f"m{i:04d}" for i in ids[b]],
                                               "label": label}))
    used = np.unique(np.concatenate([ids[a], ids[b]]))
    assert by_id.items_ == used.tolist()
    assert by_id.log_likelihood_ == pytest.approx(by_name.log_likelihood_, rel=1e-12)
    np.testing.assert_allclose(by_id.scores_["score"].to_numpy(),
                               by_name.scores_["score"].to_numpy(), atol=1e-9)
    assert by_id.scores_["item"].dtype == pl.Int64


def _random_rows(rng, K, n, n_out=4):
    a = rng.integers(0, K, n)
    b = (a + rng.integers(1, K, n)) % K
    return np.minimum(a, b) * K + np.maximum(a, b), rng.integers(0, n_out, n)


@pytest.mark.parametrize("n_out", [4, 2, 1])
@pytest.mark.parametrize("K,n", [(5, 1), (7, 300), (50, 5000), (3000, 20000)])
def test_count_cells_equals_unique_and_bincount(K, n, n_out):
    rng = np.random.default_rng(K)
    key, outcome = _random_rows(rng, K, n, n_out)
    ukey, counts = count_cells(key.copy(), outcome.copy())
    ref_key, inv = np.unique(key, return_inverse=True)
    ref = np.zeros((len(ref_key), 4))
    np.add.at(ref, (inv, outcome), 1.0)
    np.testing.assert_array_equal(ukey, ref_key)
    np.testing.assert_array_equal(counts, ref.T)
    assert counts.flags["C_CONTIGUOUS"] and counts.sum() == n


def test_count_cells_32_bit_keys_and_small_outcomes():
    rng = np.random.default_rng(11)
    key, outcome = _random_rows(rng, 300, 5000, 2)
    ukey, counts = count_cells(key.astype(np.int32), outcome.astype(np.int8))  # as aggregate() makes them
    ref_key, ref_counts = count_cells(key.copy(), outcome.copy())
    np.testing.assert_array_equal(ukey, ref_key)
    np.testing.assert_array_equal(counts, ref_counts)


def test_count_cells_empty():
    ukey, counts = count_cells(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    assert ukey.shape == (0,) and counts.shape == (4, 0)


def test_aggregate_counts_every_comparison_once():
    frame, _ = simulate(40, 3000, seed=3, ties="davidson", tie_param=0.3)
    pairs, _ = aggregate(frame)
    items = pairs.items.to_list()
    got = {}
    for f, s, w, lo, t in zip(pairs.first, pairs.second, pairs.wins, pairs.losses, pairs.ties):
        got[(items[f], items[s])] = (w, lo, t)
    ref = {}
    for a, b, lab in frame.select("model_a", "model_b", "label").iter_rows():
        key, flip = ((a, b), False) if a < b else ((b, a), True)
        w, lo, t = ref.get(key, (0, 0, 0))
        if lab == "tie":
            t += 1
        elif (lab == "a") != flip:
            w += 1
        else:
            lo += 1
        ref[key] = (w, lo, t)
    assert got == ref


@pytest.mark.parametrize("seed", range(6))
def test_dense_strong_connectivity_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    K = int(rng.integers(2, 40))
    n = int(rng.integers(1, 3 * K))
    a = rng.integers(0, K, n)
    b = (a + rng.integers(1, K, n)) % K
    first, second = np.minimum(a, b), np.maximum(a, b)
    first_beat = (rng.random(n) < 0.7).astype(float)
    second_beat = (rng.random(n) < 0.7).astype(float)
    src = np.concatenate([first[first_beat > 0], second[second_beat > 0]])
    dst = np.concatenate([second[first_beat > 0], first[second_beat > 0]])
    graph = coo_matrix((np.ones(len(src)), (src, dst)), shape=(K, K)).tocsr()
    expected = connected_components(graph, directed=True, connection="strong")[0] == 1
    assert _strongly_connected_dense(first, second, first_beat, second_beat, K) == expected
    order = np.lexsort((second, first))  # sorted, possibly with repeated pairs
    assert _strongly_connected_dense(first[order], second[order], first_beat[order],
                                     second_beat[order], K) == expected


def test_item_that_never_loses_is_still_reported():
    frame = pl.DataFrame({"model_a": ["x", "x", "y", "z"], "model_b": ["y", "z", "z", "y"],
                          "label": ["a", "a", "a", "a"]})
    with pytest.raises(NoFiniteMLEError, match="never lose: x"):
        BradleyTerry().fit(frame)


def _objectives(frame, ties, l2=0.0):
    pairs, _ = aggregate(frame)
    outcome = make_outcome("logit", ties)
    counts = (pairs.wins, pairs.losses, pairs.ties)
    kw = dict(K=pairs.n_items, l2=l2, reference=None if l2 else 0)
    fast = solvers.Objective(pairs.first, pairs.second, counts, outcome, **kw)
    slow = solvers.Objective(pairs.first, pairs.second, counts, outcome, **kw)
    slow._plain = False  # the general outcome-model path
    return fast, slow


@pytest.mark.parametrize("ties,l2", [("half", 0.0), ("drop", 0.5)])
def test_plain_logit_derivatives_equal_general_path(ties, l2):
    frame, _ = simulate(30, 3000, seed=4, ties="davidson", tie_param=0.2)
    fast, slow = _objectives(frame, ties, l2)
    assert fast._plain and fast._first_runs is not None
    phi = np.random.default_rng(0).normal(size=fast.layout.size)
    a, b = fast.derivatives(phi), slow.derivatives(phi)
    assert a["value"] == pytest.approx(b["value"], rel=1e-12)
    for key in ("g", "diag_s", "cw"):
        np.testing.assert_allclose(a[key], b[key], rtol=1e-10, atol=1e-10)
    assert fast.value(phi) == pytest.approx(slow.value(phi), rel=1e-12)
    assert fast.loglik(phi) == pytest.approx(slow.loglik(phi), rel=1e-12)
    # unsorted rows take the bincount path and give the same
    order = np.random.default_rng(1).permutation(fast.R)
    shuffled = solvers.Objective(fast.first[order], fast.second[order],
                                 tuple(c[order] for c in fast.counts), fast.outcome,
                                 K=fast.layout.K, l2=l2, reference=fast.reference)
    assert shuffled._first_runs is None
    np.testing.assert_allclose(shuffled.derivatives(phi)["g"], a["g"], rtol=1e-10, atol=1e-10)


def test_plain_logit_falls_back_when_scores_span_too_much():
    frame, _ = simulate(10, 500, seed=5)
    fast, slow = _objectives(frame, "half")
    phi = np.zeros(fast.layout.size)
    phi[1] = 700.0  # exp(700) overflows the strengths: the general path is used
    assert fast._plain_pieces(phi) is None
    assert fast.value(phi) == pytest.approx(slow.value(phi), rel=1e-12)


def test_single_precision_newton_equals_double(monkeypatch):
    frame, _ = simulate(60, 8000, seed=6)
    fast, _ = _objectives(frame, "half")
    calls = {"pcg": 0, "factor": 0}
    pcg, damped = solvers._dense_pcg, solvers._solve_damped

    def count(name, fn):
        def wrapped(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(solvers, "_dense_pcg", count("pcg", pcg))
    monkeypatch.setattr(solvers, "_solve_damped", count("factor", damped))
    monkeypatch.setattr(solvers, "SINGLE_PRECISION_STEPS", 1)  # 60 items: force the fast steps
    single = solvers.newton_dense(fast)
    assert calls["pcg"] == single.iterations and calls["factor"] == 0  # every step by PCG
    monkeypatch.setattr(solvers, "SINGLE_PRECISION_STEPS", 10**9)
    double = solvers.newton_dense(fast)
    assert calls["factor"] == double.iterations  # every step by a float64 factorization
    assert single.converged and double.converged
    assert single.value == pytest.approx(double.value, rel=1e-13)
    np.testing.assert_allclose(single.phi, double.phi, atol=1e-7)


def test_dense_pcg_step_equals_the_direct_solve_or_declines():
    rng = np.random.default_rng(17)
    # a well-mixed comparison graph's Hessian: a weighted Laplacian, one item pinned
    K = 300
    W = rng.uniform(0.1, 0.25, (K, K)) * rng.poisson(3.0, (K, K))
    W = np.triu(W, 1) + np.triu(W, 1).T
    H = np.diag(W.sum(axis=1)) - W
    H[0, :] = H[:, 0] = 0.0
    H[0, 0] = 1.0
    rhs = rng.normal(size=K)
    rhs[0] = 0.0
    step = solvers._dense_pcg(np.tril(H), rhs)
    assert step is not None
    np.testing.assert_allclose(step, np.linalg.solve(H, rhs), rtol=1e-5, atol=1e-7)
    assert solvers._dense_pcg(np.tril(H), np.zeros(K)) is not None  # a zero gradient: no step
    # a chain of comparisons is ill conditioned: more products than a factorization is worth
    chain = np.zeros((K, K))
    idx = np.arange(K - 1)
    chain[idx, idx + 1] = chain[idx + 1, idx] = -1.0
    chain[np.arange(K), np.arange(K)] = -chain.sum(axis=1) + 1e-3
    assert solvers._dense_pcg(np.tril(chain), rhs) is None
    # not positive definite (a negative curvature, a zero or negative diagonal): declined
    indefinite = H.copy()
    indefinite[5, 5] = -1.0
    assert solvers._dense_pcg(np.tril(indefinite), rhs) is None
    assert solvers._dense_pcg(np.tril(H - 2.0 * np.eye(K) * H.diagonal().max()), rhs) is None
    assert solvers._dense_pcg(np.tril(H), np.full(K, np.nan)) is None


def test_newton_on_a_chain_falls_back_to_the_factorization(monkeypatch):
    # 500 items compared only with their neighbours: PCG declines, the factorization solves
    rng = np.random.default_rng(18)
    K, n = 500, 40_000
    a = rng.integers(0, K - 1, n)
    s = np.linspace(-2, 2, K)
    win = rng.random(n) < 1 / (1 + np.exp(-(s[a] - s[a + 1])))
    frame = pl.DataFrame({"model_a": a, "model_b": a + 1, "label": np.where(win, "a", "b")})
    declined = []
    pcg = solvers._dense_pcg
    monkeypatch.setattr(solvers, "_dense_pcg", lambda H, rhs, **kw: declined.append(
        pcg(H, rhs, **kw) is None) or pcg(H, rhs, **kw))
    model = BradleyTerry(ties="drop").fit(frame)
    assert declined and all(declined)
    reference = BradleyTerry(ties="drop", solver="sparse").fit(frame)
    np.testing.assert_allclose(model.scores_["score"].to_numpy(),
                               reference.scores_["score"].to_numpy(), atol=1e-6)


def test_refined_single_precision_solve_is_accurate():
    rng = np.random.default_rng(7)
    A = rng.normal(size=(300, 300))
    H = A @ A.T + 300 * np.eye(300)
    rhs = rng.normal(size=300)
    x, factor = solvers._solve_damped(np.tril(H), rhs, single=True)
    assert factor is None
    np.testing.assert_allclose(x, np.linalg.solve(H, rhs), rtol=1e-9, atol=1e-12)


def test_inverse_diagonal_and_standard_errors_equal_full_inverse():
    rng = np.random.default_rng(8)
    A = rng.normal(size=(50, 50))
    H = A @ A.T + 50 * np.eye(50)
    factor = solvers.cholesky(np.tril(H))
    inv = np.linalg.inv(H)
    np.testing.assert_allclose(solvers.inverse_diagonal(factor), np.diag(inv), rtol=1e-10)
    np.testing.assert_allclose(solvers.cho_inverse(factor), inv, rtol=1e-9, atol=1e-13)
    # the estimator's standard errors: centred scores' covariance from the full inverse
    frame, _ = simulate(15, 2000, seed=9)
    for params in ({}, {"anchor": "item003"}, {"l2": 0.5}, {"l2": 0.5, "anchor": "item003"}):
        model = BradleyTerry(**params).fit(frame)
        cov = model.covariance_
        K = model.n_items_
        if "anchor" in params:
            a = model.items_.index("item003")
            var = np.diag(cov) + cov[a, a] - 2 * cov[:, a]
        elif params.get("l2"):
            var = np.diag(cov)
        else:
            C = np.eye(K) - 1.0 / K  # centring
            var = np.diag(C @ cov @ C)
        se = model.scores_.sort("item")["std_error"].to_numpy()
        order = np.argsort(model.items_)
        np.testing.assert_allclose(se, np.sqrt(np.maximum(var, 0))[order], rtol=1e-8, atol=1e-12)


def test_sparse_hessian_equals_dense_hessian():
    frame, _ = simulate(40, 3000, seed=10, position=0.3)
    for position_effect in (False, True):
        pairs, _ = aggregate(frame, shown_left="shown_left" if position_effect else None)
        obj = solvers.Objective(pairs.first, pairs.second, (pairs.wins, pairs.losses, pairs.ties),
                                make_outcome("logit", "half"), K=pairs.n_items,
                                Z=pairs.design(), l2=0.3)
        phi = np.random.default_rng(0).normal(size=obj.layout.size) * 0.5
        H = solvers.SparseHessian(obj, obj.derivatives(phi, "sparse"))
        dense = obj.dense_hessian(phi)
        v = np.random.default_rng(1).normal(size=(obj.layout.size, 3))
        np.testing.assert_allclose(H.matvec(v), dense @ v, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(H.matvec(v[:, 0]), dense @ v[:, 0], rtol=1e-10, atol=1e-10)


@pytest.fixture(params=["compiled", "numpy"])
def passes(request, monkeypatch):
    """PlainRounds' passes by the compiled loops (rm.choice.kernels) or by numpy."""
    from rm.choice import kernels

    if request.param == "compiled" and not kernels.NUMBA:
        pytest.fail("numba is a dependency: the compiled passes must be there")
    monkeypatch.setattr(solvers, "COMPILED", request.param == "compiled")
    return request.param


@pytest.mark.parametrize("ties,l2,striped", [("half", 0.0, True), ("drop", 0.0, True),
                                             ("half", 1.0, True), ("half", 0.0, False)])
def test_compact_bootstrap_rounds_equal_full_refits(ties, l2, striped, passes):
    frame, _ = simulate(25, 4000, seed=12, ties="davidson", tie_param=0.3)
    model = BradleyTerry(ties=ties, l2=l2).fit(frame)
    obj, pairs = model._obj, model._pairs
    rng = np.random.default_rng(2)
    B = 6
    # striped: drawn with the rows in PlainRounds' order, as the estimator does
    order = solvers.PlainRounds.row_order(pairs.n_rows) if striped else np.arange(pairs.n_rows)
    assert np.array_equal(np.sort(order), np.arange(pairs.n_rows))
    striped_draws = [poisson_counts(c[order], B, rng, np.uint8)
                     for c in (pairs.wins, pairs.losses, pairs.ties)]
    rounds = model._compact_rounds(obj, model._counts(pairs, *striped_draws, 0.0),
                                   order if striped else None)
    assert isinstance(rounds, solvers.PlainRounds)
    draws = []  # the same draws with the rows in the data's order, for the refits
    for d in striped_draws:
        back = np.empty_like(d)
        back[order] = d
        draws.append(back)
    free = obj.free_mask()

    def solve(G):
        out = solvers.cho_solve(model._factor, np.where(free[:, None], G, 0.0))
        out[~free] = 0.0
        return out

    refits = []
    for b in range(B):
        counts = tuple(d[:, b].astype(float) for d in draws)
        one = solvers.Objective(pairs.first, pairs.second, counts, obj.outcome, K=obj.layout.K,
                                l2=l2, reference=obj.reference)
        refits.append(solvers.newton_dense(one).phi)
    refits = np.column_stack(refits)
    # the estimator's defaults (single-precision rows, scores to 1e-6), then double precision
    # to a tighter tolerance: the batched chord iteration converges to the refits' optimum
    for single, tol in ((True, 1e-6), (False, 1e-9)):
        rounds.single = single
        rounds._base = None  # a fresh start (the base point is kept per precision)
        phi, ok = solvers.chord_batch(obj, model.params_, rounds, solve, tol=tol,
                                      ftol=model.tol, fscale=model.objective_)
        assert ok.all()
        np.testing.assert_allclose(phi, refits, atol=tol)


def test_plain_bootstrap_through_the_estimator():
    frame, _ = simulate(20, 6000, seed=13)
    model = BradleyTerry().fit(frame)
    model.bootstrap(50, seed=1)
    assert model.bootstrap_failed_ == 0 and model.bootstrap_samples_.shape == (50, 20)
    ratio = model.scores_["bootstrap_std_error"].to_numpy() / model.scores_["std_error"].to_numpy()
    assert 0.7 < np.median(ratio) < 1.3
    again = BradleyTerry().fit(frame).bootstrap(50, seed=1)
    np.testing.assert_array_equal(again.bootstrap_samples_, model.bootstrap_samples_)
    # batches of rounds (max_cells) give the same rounds as one batch
    small = BradleyTerry().fit(frame).bootstrap(50, seed=1, max_cells=model.n_pairs_ * 7)
    assert small.bootstrap_samples_.shape == (50, 20)


def test_poisson_counts_compact_dtype_and_large_means():
    rng = np.random.default_rng(3)
    counts = np.array([0, 1, 2, 5, 32, 33, 1000.0])
    draws = poisson_counts(counts, 4000, rng, np.uint32)
    assert draws.dtype == np.uint32 and np.all(draws[0] == 0)
    np.testing.assert_allclose(draws.mean(axis=1), counts, rtol=0.03, atol=0.03)
    np.testing.assert_allclose(draws.var(axis=1), counts, rtol=0.1, atol=0.03)
    small = poisson_counts(counts[:5], 3000, rng, np.uint8)
    assert small.dtype == np.uint8 and small.max() < 256


@pytest.mark.parametrize("lam", [1, 2, 7, 32])
def test_poisson_counts_follow_the_exact_pmf(lam):
    from scipy.stats import chisquare, poisson

    rng = np.random.default_rng(lam)
    draws = poisson_counts(np.full(200, float(lam)), 2000, rng, np.uint8).ravel()
    top = int(poisson.ppf(1 - 1e-4, lam))
    observed = np.bincount(np.minimum(draws, top), minlength=top + 1)
    expected = poisson.pmf(np.arange(top + 1), lam)
    expected[-1] = poisson.sf(top - 1, lam)
    # 400k draws: a wrong table entry or a biased second byte moves a cell by many sigmas
    assert chisquare(observed, expected * len(draws)).pvalue > 1e-4


def test_plain_rounds_gradient_is_the_same_in_any_row_order(passes):
    frame, _ = simulate(80, 30_000, seed=19)
    model = BradleyTerry().fit(frame)
    obj, pairs = model._obj, model._pairs
    rng = np.random.default_rng(4)
    B = 9
    draws = [poisson_counts(c, B, rng, np.uint8) for c in (pairs.wins, pairs.losses, pairs.ties)]
    order = solvers.PlainRounds.row_order(pairs.n_rows)
    assert not np.array_equal(order, np.arange(pairs.n_rows))  # interleaved
    for R in (0, 1, 63, 64, 65, 1000):  # stripe j: the rows j, j + 64, ... in order
        np.testing.assert_array_equal(solvers.PlainRounds.row_order(R),
                                      np.argsort(np.arange(R) % solvers.STRIPES, kind="stable"))
    plain = model._compact_rounds(obj, model._counts(pairs, *draws, 0.0))
    # without ties: totals in one byte a cell, whether the means bound the draws or a scan does
    drop = BradleyTerry(ties="drop").fit(frame)
    for max_mean in (None, float(max(pairs.wins.max(), pairs.losses.max()))):
        rounds = drop._compact_rounds(drop._obj, drop._counts(drop._pairs, *draws[:2], 0.0, 0.0),
                                      max_mean=max_mean)
        assert rounds.totals.dtype == np.uint8
        np.testing.assert_array_equal(rounds.totals, draws[0].astype(int) + draws[1])
    striped = model._compact_rounds(obj, model._counts(pairs, *(d[order] for d in draws), 0.0),
                                    order)
    x = model.params_[:, None] + 0.05 * rng.normal(size=(obj.layout.size, B))
    x[~obj.free_mask()] = model.params_[~obj.free_mask()][:, None]
    for rounds in (plain, striped):
        rounds.single = False
    np.testing.assert_allclose(striped.gradient(x), plain.gradient(x), rtol=1e-10, atol=1e-9)
    # from a base point (the warm start), in single precision: ~1e-5 of the double one
    for rounds in (plain, striped):
        rounds.single = True
        rounds.gradient(model.params_[:, None])  # the base point
    reference = plain.gradient(x)
    plain.single = False
    exact = plain.gradient(x)
    np.testing.assert_allclose(striped.gradient(x), exact, atol=2e-5)
    np.testing.assert_allclose(reference, exact, atol=2e-5)
    # a few rounds alone (the last steps of a batch): their columns of the full gradient
    cols = np.array([1, 4, 8])
    few = striped.gradient(x[:, cols], cols=cols)
    assert few.shape == (obj.layout.size, 3)
    np.testing.assert_allclose(few, striped.gradient(x)[:, cols], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_chord_rounds_stop_within_the_tolerance_of_refits(seed, passes):
    # small problems (a few hundred comparisons an item) contract least: the stopping rule's
    # hardest case; the refits are polished with three exact Newton steps
    frame, _ = simulate(25 + 4 * seed, 3000 + 400 * seed, seed=100 + seed, ties="davidson",
                        tie_param=0.3)
    model = BradleyTerry(ties=("half", "drop")[seed % 2], l2=(0.0, 1.0)[seed % 3 == 2]).fit(frame)
    obj, pairs = model._obj, model._pairs
    rng = np.random.default_rng(seed)
    B = 6
    order = solvers.PlainRounds.row_order(pairs.n_rows)
    striped = [poisson_counts(c[order], B, rng, np.uint8)
               for c in (pairs.wins, pairs.losses, pairs.ties)]
    rounds = model._compact_rounds(obj, model._counts(pairs, *striped, 0.0), order)
    factor = model._hessian_factor()
    free = obj.free_mask()

    def solve(G):
        out = solvers.cho_solve(factor, np.where(free[:, None], G, 0.0))
        out[~free] = 0.0
        return out

    phi, ok = solvers.chord_batch(obj, model.params_, rounds, solve, tol=1e-6, ftol=model.tol,
                                  fscale=model.objective_)
    assert ok.all()
    for b in range(B):
        counts = []
        for d in striped:
            back = np.empty(pairs.n_rows)
            back[order] = d[:, b]
            counts.append(back)
        one = solvers.Objective(pairs.first, pairs.second, model._counts(pairs, *counts, 0.0),
                                obj.outcome, K=obj.layout.K, l2=model.l2,
                                reference=obj.reference)
        ref = solvers.newton_dense(one).phi
        for _ in range(3):
            H = one.dense_hessian(ref)[np.ix_(free, free)]
            ref[free] -= np.linalg.solve(H, one.derivatives(ref, "none")["g"][free])
        assert np.max(np.abs(phi[:, b] - ref)) < 1e-6


# ---------------------------------------------------------------- threads and deferred work
@pytest.mark.parametrize("n_parts", [2, 3, 7])
def test_row_parts_pieces_equal_one_part(n_parts):
    frame, _ = simulate(30, 5000, seed=21, ties="davidson", tie_param=0.2)
    fast, slow = _objectives(frame, "half")
    phi = fast.initial() + np.random.default_rng(0).normal(0, 0.3, fast.layout.size)
    one = fast._plain_pieces(phi)
    fast._parts = fast._row_parts(n_parts)
    assert len(fast._parts) == n_parts
    # the parts cover every row once, each first item in one part only
    assert [p[0] for p in fast._parts][0] == 0 and fast._parts[-1][1] == fast.R
    assert all(a[1] == b[0] for a, b in zip(fast._parts, fast._parts[1:]))
    items = np.concatenate([p[3] for p in fast._parts])
    assert len(items) == len(np.unique(items))
    many = fast._plain_pieces(phi)
    assert many["value"] == pytest.approx(one["value"], rel=1e-13)
    np.testing.assert_allclose(many["g"], one["g"], rtol=1e-11, atol=1e-9)
    np.testing.assert_allclose(many["diag_s"], one["diag_s"], rtol=1e-12)
    np.testing.assert_array_equal(many["cw"], one["cw"])
    # and both equal the general outcome-model path
    ref = slow.derivatives(phi)
    np.testing.assert_allclose(many["g"], ref["g"], rtol=1e-9, atol=1e-8)


def test_threaded_sparse_hessian_matvec_equals_dense(monkeypatch):
    monkeypatch.setattr(solvers, "PARALLEL_ROWS", 1)
    frame, _ = simulate(40, 3000, seed=22)
    fast, _ = _objectives(frame, "half", l2=0.5)
    phi = fast.initial()
    H = solvers.SparseHessian(fast, fast.derivatives(phi, "sparse"))
    dense = fast.dense_hessian(phi)
    v = np.random.default_rng(2).normal(size=(fast.layout.size, 4))
    np.testing.assert_allclose(H.matvec(v), dense @ v, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(H.matvec(v[:, 1]), dense @ v[:, 1], rtol=1e-10, atol=1e-10)


def test_parallel_map_keeps_order_and_raises():
    assert solvers.parallel_map(lambda x: x * x, range(7)) == [x * x for x in range(7)]
    assert solvers.parallel_map(lambda x: x, []) == []

    def boom(x):
        if x == 3:
            raise ValueError("part 3 failed")
        return x

    with pytest.raises(ValueError, match="part 3 failed"):
        solvers.parallel_map(boom, range(5))


@pytest.mark.parametrize("method", ["exact", "one-step"])
def test_bootstrap_parts_on_threads_equal_serial(monkeypatch, method):
    # the general path (Davidson ties: per-thread work buffers) and the compact plain path
    for model in (BradleyTerry(ties="davidson"), BradleyTerry()):
        frame, _ = simulate(15, 3000, seed=23, ties="davidson", tie_param=0.3)
        threaded = type(model)(**model.get_params()).fit(frame).bootstrap(30, seed=4, method=method)
        monkeypatch.setattr(solvers, "parallel_map", lambda fn, items, **kw: [fn(x) for x in items])
        serial = type(model)(**model.get_params()).fit(frame).bootstrap(30, seed=4, method=method)
        monkeypatch.undo()
        np.testing.assert_array_equal(threaded.bootstrap_samples_, serial.bootstrap_samples_)
        assert threaded.bootstrap_samples_.shape == (30, 15)


def test_idle_cpus_is_a_cpu_count():
    assert 0 <= solvers.idle_cpus() <= (os.cpu_count() or 1)


def test_standard_errors_are_computed_on_first_read():
    frame, _ = simulate(12, 2000, seed=24)
    model = BradleyTerry(position_effect=False).fit(frame)
    deferred = ("scores_", "coef_", "annotators_", "tie_params_", "std_error_method_")
    assert not any(name in model.__dict__ for name in deferred)  # fit stopped at the scores
    eager = BradleyTerry().fit(frame)
    table = eager.scores_  # the first read computes them
    assert all(name in eager.__dict__ for name in deferred)
    assert table["std_error"].is_finite().all() and eager.std_error_method_ == "fisher"
    np.testing.assert_array_equal(model.scores_["std_error"].to_numpy(), table["std_error"].to_numpy())
    # a refit drops the old tables: they describe the new data
    other, _ = simulate(12, 500, seed=25)
    eager.fit(other)
    assert "scores_" not in eager.__dict__
    assert eager.scores_["comparisons"].sum() == 2 * other.height
    # bootstrap without reading scores_ first, and an unfitted model has no scores_
    fresh = BradleyTerry().fit(frame).bootstrap(10, seed=0)
    assert "bootstrap_std_error" in fresh.scores_.columns
    assert not hasattr(BradleyTerry(), "scores_")


def test_parallel_map_nested_runs_inline(monkeypatch):
    # a call from inside the pool (bootstrap parts whose solves use threaded matvecs) must not
    # wait for the pool's busy threads
    out = solvers.parallel_map(lambda x: solvers.parallel_map(lambda y: x * 10 + y, range(3)),
                               range(4))
    assert out == [[x * 10 + y for y in range(3)] for x in range(4)]
    monkeypatch.setattr(solvers, "PARALLEL_ROWS", 1)
    frame, _ = simulate(20, 2000, seed=26)
    sparse = BradleyTerry(l2=0.5, solver="sparse").fit(frame).bootstrap(6, seed=1)
    dense = BradleyTerry(l2=0.5).fit(frame).bootstrap(6, seed=1)
    np.testing.assert_allclose(sparse.bootstrap_samples_, dense.bootstrap_samples_, atol=1e-5)


def test_poisson_plan_gives_the_same_draws():
    from rm.choice.bootstrap import poisson_plan

    counts = np.array([0, 1, 3, 1, 40, 2.5, 0, 7, 32, 33], dtype=float)
    plain = poisson_counts(counts, 9, np.random.default_rng(5), np.uint32)
    planned = poisson_counts(counts, 9, np.random.default_rng(5), np.uint32, poisson_plan(counts))
    np.testing.assert_array_equal(plain, planned)
    assert np.all(planned[[0, 6]] == 0)


def test_bootstrap_before_the_standard_errors_shares_their_factor(monkeypatch):
    frame, _ = simulate(14, 2500, seed=27)
    first = BradleyTerry().fit(frame)
    first.scores_  # standard errors first, then the bootstrap joins its columns
    first.bootstrap(20, seed=3)
    calls = []
    real = solvers.cholesky
    later = BradleyTerry().fit(frame)
    monkeypatch.setattr(solvers, "cholesky", lambda H: calls.append(1) or real(H))
    later.bootstrap(20, seed=3)  # the bootstrap factors the Hessian at the optimum
    assert "scores_" not in later.__dict__ and len(calls) == 1
    table = later.scores_  # the standard errors reuse that factor and join the bootstrap columns
    assert len(calls) == 1
    assert table.columns == first.scores_.columns
    for col in ("score", "std_error", "bootstrap_std_error", "bootstrap_ci_low"):
        np.testing.assert_allclose(table[col].to_numpy(), first.scores_[col].to_numpy(), rtol=1e-12)
    # a refit forgets bootstrap columns that were never joined
    again = BradleyTerry().fit(frame).bootstrap(5, seed=1).fit(frame)
    assert "bootstrap_std_error" not in again.scores_.columns


def _gradient_by_definition(rounds, x, cols=None):
    """sum_c (n_c p_c - w_c)(e_first - e_second) / scale + l2 s, in double precision with
    np.add.at: the definition, independent of both passes."""
    obj = rounds.obj
    K = obj.layout.K
    s = x[:K]
    cols = np.arange(rounds.B) if cols is None else np.asarray(cols)
    n = rounds.totals[:, cols].astype(float)
    w = rounds.wins[:, cols].astype(float)
    p = 1.0 / (1.0 + np.exp(s[rounds.second] - s[rounds.first]))
    v = n * p - w
    g = np.zeros((K, len(cols)))
    np.add.at(g, rounds.first, v)
    np.add.at(g, rounds.second, -v)
    full = np.zeros((obj.layout.size, len(cols)))
    full[:K] = g / rounds.scale + obj.l2 * s
    return full


@pytest.mark.parametrize("ties,wide", [("drop", False), ("half", False), ("half", True)])
def test_compiled_passes_equal_the_definition_and_numpy(monkeypatch, ties, wide):
    from rm.choice import kernels

    frame, _ = simulate(60, 20_000, seed=21, ties="davidson", tie_param=0.3)
    model = BradleyTerry(ties=ties, l2=0.5).fit(frame)
    obj, pairs = model._obj, model._pairs
    rng = np.random.default_rng(5)
    B = 7
    order = solvers.PlainRounds.row_order(pairs.n_rows)
    draws = [poisson_counts(c[order], B, rng, np.uint8) for c in (pairs.wins, pairs.losses, pairs.ties)]
    if wide:  # counts over 255: two-byte cells
        draws = [d.astype(np.uint16) * 40 for d in draws]
    rounds = model._compact_rounds(obj, model._counts(pairs, *(draws if ties == "half" else draws[:2] + [0.0]), 0.0), order)
    assert rounds.totals.dtype == {(False, "drop"): np.uint8, (False, "half"): np.uint16, (True, "half"): np.uint32}[wide, ties]
    assert kernels.NUMBA and rounds._compiled()
    called = {"numpy": 0}
    numpy_sums = solvers.PlainRounds._numpy_sums

    def spy(self, *a, **k):
        called["numpy"] += 1
        return numpy_sums(self, *a, **k)

    monkeypatch.setattr(solvers.PlainRounds, "_numpy_sums", spy)
    x = model.params_[:, None] + 0.05 * rng.normal(size=(obj.layout.size, B))
    x[~obj.free_mask()] = model.params_[~obj.free_mask()][:, None]
    cols = np.array([0, 3, 6])
    results = {}
    for compiled in (True, False):
        monkeypatch.setattr(solvers, "COMPILED", compiled)
        before = called["numpy"]
        out = {}
        for single in (False, True):
            rounds.single, rounds._base = single, None
            out[single, "no base"] = rounds.gradient(x)
            out[single, "no base, cols"] = rounds.gradient(x[:, cols], cols=cols)
            out[single, "shared"] = rounds.gradient(model.params_[:, None])  # sets the base point
            out[single, "from base"] = rounds.gradient(x)
            out[single, "from base, cols"] = rounds.gradient(x[:, cols], cols=cols)
        assert (called["numpy"] > before) == (not compiled)  # the path taken is the one asked for
        results[compiled] = out
    reference = {"no base": _gradient_by_definition(rounds, x), "from base": _gradient_by_definition(rounds, x),
                 "no base, cols": _gradient_by_definition(rounds, x[:, cols], cols),
                 "from base, cols": _gradient_by_definition(rounds, x[:, cols], cols)}
    reference["shared"] = _gradient_by_definition(rounds, np.repeat(model.params_[:, None], B, axis=1))
    scale = np.abs(reference["no base"]).max()
    for (single, kind), got in results[True].items():
        atol = (2e-6 if single else 1e-9) * max(scale, 1.0)
        np.testing.assert_allclose(got, reference[kind], rtol=0, atol=atol, err_msg=f"{kind}, single={single}")
        np.testing.assert_allclose(got, results[False][single, kind], rtol=0, atol=2 * atol + 2e-5 * single)
