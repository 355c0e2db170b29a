"""Estimator contract: inputs, outputs, errors, persistence, bootstrap, solvers, Plackett-Luce."""

import numpy as np
import polars as pl
import pytest

from rm.choice import (AnnotatorBradleyTerry, BradleyTerry, Davidson, NoFiniteMLEError,
                       NotFittedError, PlackettLuce, RaoKupper, style_features)
from rm.choice import solvers
from rm.choice.bootstrap import poisson_counts
from rm.choice.data import aggregate
from rm.choice.outcomes import make_outcome

from .conftest import simulate


class FakeVersion:
    """Anything with ``to_polars()`` and ``hash`` is accepted like a workbench Version."""

    def __init__(self, frame, hash="abc123"):
        self._frame, self.hash, self.name = frame, hash, "v1"

    def to_polars(self):
        return self._frame


@pytest.fixture(scope="module")
def frame():
    return simulate(12, 2000, seed=11, ties="davidson", tie_param=0.2)[0]


def test_version_pandas_and_polars_inputs_agree(frame):
    a = BradleyTerry().fit(FakeVersion(frame))
    b = BradleyTerry().fit(frame.to_pandas())
    c = BradleyTerry().fit(frame)
    assert a.fitted_on_ == "abc123" and c.fitted_on_ is None
    assert a.log_likelihood_ == b.log_likelihood_ == c.log_likelihood_
    assert a.scores_.equals(b.scores_)


def test_scores_frame_columns_and_counts(frame):
    m = Davidson().fit(frame)
    s = m.scores_
    for col in ("rank", "item", "score", "std_error", "ci_low", "ci_high", "elo", "comparisons",
                "wins", "losses", "ties", "both_bad"):
        assert col in s.columns
    assert s["rank"].to_list() == list(range(1, 13))
    assert s["score"].is_sorted(descending=True)
    assert int(s["comparisons"].sum()) == 2 * frame.height
    assert int(s["wins"].sum()) == int((frame["label"] != "tie").sum())
    assert s["score"].sum() == pytest.approx(0.0, abs=1e-9)  # centred without a prior
    np.testing.assert_allclose(s["elo"].to_numpy(), 1000 + 400 / np.log(10) * s["score"].to_numpy())


def test_predict_proba(frame):
    m = RaoKupper(position_effect=True).fit(frame)
    p = m.predict_proba("item000", "item001")
    assert p.shape == (3,) and p.sum() == pytest.approx(1.0)
    many = m.predict_proba(["item000", "item002"], ["item001", "item003"], shown_left=["a", "b"])
    assert many.shape == (2, 3)
    np.testing.assert_allclose(many.sum(axis=1), 1.0)
    # swapping the items swaps win and loss
    q = m.predict_proba("item001", "item000")
    np.testing.assert_allclose(q[::-1], p, atol=1e-12)
    with pytest.raises(ValueError, match="unknown item"):
        m.predict_proba("nope", "item000")


def test_both_bad_options():
    frame, _ = simulate(8, 1500, seed=3, ties="davidson", tie_param=0.3)
    rng = np.random.default_rng(0)
    lab = frame["label"].to_numpy().copy()
    lab[(lab == "tie") & (rng.random(len(lab)) < 0.3)] = "both_bad"
    frame = frame.with_columns(pl.Series("label", lab))
    as_tie = Davidson(both_bad="tie").fit(frame)
    separate = Davidson(both_bad="separate").fit(frame)
    dropped = Davidson(both_bad="drop").fit(frame)
    np.testing.assert_allclose(as_tie.params_, separate.params_)
    share = (lab == "both_bad").sum() / np.isin(lab, ["tie", "both_bad"]).sum()
    assert separate.tie_params_["both_bad_share"] == pytest.approx(share)
    assert separate.log_likelihood_ < as_tie.log_likelihood_
    assert dropped.n_comparisons_ == frame.height
    p = separate.predict_proba("item000", "item001")
    assert p.shape == (4,) and p.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="needs a tie model"):
        BradleyTerry(both_bad="separate").fit(frame)


def test_save_load_roundtrip(tmp_path, frame):
    m = AnnotatorBradleyTerry(ties="davidson", position_effect=True).fit(FakeVersion(frame, "h1"))
    path = m.save(tmp_path / "sub" / "model.npz")
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".tmp")]
    back = BradleyTerry.load(path)
    assert type(back) is AnnotatorBradleyTerry
    assert back.fitted_on_ == "h1"
    assert back.get_params() == m.get_params()
    assert back.scores_.equals(m.scores_)
    assert back.log_likelihood_ == m.log_likelihood_
    np.testing.assert_allclose(back.predict_proba(["item000"], ["item005"]),
                               m.predict_proba(["item000"], ["item005"]))
    assert back.log_likelihood(frame) == pytest.approx(m.log_likelihood_, rel=1e-12)


def test_load_rejects_garbage(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a saved choice model"):
        BradleyTerry.load(bad)
    np.savez(tmp_path / "y.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="not a saved choice model"):
        BradleyTerry.load(tmp_path / "y.npz")


def test_unfitted_model_errors():
    with pytest.raises(NotFittedError):
        BradleyTerry().predict_proba("a", "b")
    with pytest.raises(NotFittedError):
        BradleyTerry().save("/tmp/never.npz")


@pytest.mark.parametrize("bad,match", [
    ({"label": ["a", "x"]}, "labels must be one of"),
    ({"label": ["a", None]}, "labels must be one of"),
    ({"model_a": ["p", None]}, "null item"),
    ({"model_b": ["p", "q"], "model_a": ["p", "r"]}, "compared with itself"),
])
def test_bad_rows_are_named(bad, match):
    base = {"model_a": ["p", "q"], "model_b": ["q", "r"], "label": ["a", "b"]}
    base.update(bad)
    with pytest.raises(ValueError, match=match):
        BradleyTerry(l2=1.0).fit(pl.DataFrame(base))


def test_empty_and_missing_columns():
    empty = pl.DataFrame(schema={"model_a": pl.String, "model_b": pl.String, "label": pl.String})
    with pytest.raises(ValueError, match="empty"):
        BradleyTerry().fit(empty)
    with pytest.raises(ValueError, match="missing column"):
        BradleyTerry().fit(pl.DataFrame({"x": [1]}))
    with pytest.raises(TypeError, match="Version"):
        BradleyTerry().fit([1, 2, 3])
    with pytest.raises(ValueError, match="ties must be"):
        BradleyTerry(ties="third").fit(pl.DataFrame({"model_a": ["p"], "model_b": ["q"], "label": ["a"]}))


def test_disconnected_graph_names_components_and_prior_fits():
    df = pl.DataFrame({
        "model_a": ["a1", "a2", "a1", "b1", "b2", "b1"],
        "model_b": ["a2", "a1", "a3", "b2", "b1", "b3"],
        "label": ["a", "a", "b", "a", "a", "tie"],
    })
    with pytest.raises(NoFiniteMLEError, match=r"disconnected: 2 components.*a1.*b1"):
        BradleyTerry().fit(df)
    m = BradleyTerry(l2=1.0).fit(df)
    assert np.isfinite(m.scores_["score"].to_numpy()).all()


def test_item_that_never_loses_is_named():
    df = pl.DataFrame({
        "model_a": ["champ", "champ", "x", "y"],
        "model_b": ["x", "y", "y", "x"],
        "label": ["a", "a", "a", "a"],
    })
    with pytest.raises(NoFiniteMLEError, match="never lose: champ"):
        BradleyTerry().fit(df)
    m = BradleyTerry(l2=0.5).fit(df)
    assert m.scores_["item"][0] == "champ"


def test_tie_model_without_ties_is_an_error():
    frame, _ = simulate(5, 300, seed=1)
    with pytest.raises(NoFiniteMLEError, match="no ties"):
        Davidson().fit(frame)


def test_anchor_and_elo(frame):
    m = BradleyTerry(anchor="item003", anchor_score=0.0, elo_base=1200).fit(frame)
    row = m.scores_.filter(pl.col("item") == "item003").row(0, named=True)
    assert row["score"] == 0.0 and row["elo"] == 1200 and row["std_error"] == 0.0
    plain = BradleyTerry().fit(frame)
    a = m.scores_.sort("item")["score"].to_numpy()
    b = plain.scores_.sort("item")["score"].to_numpy()
    np.testing.assert_allclose(a - a.mean(), b, atol=1e-9)
    with pytest.raises(ValueError, match="anchor item"):
        BradleyTerry(anchor="missing").fit(frame)


def test_sparse_solver_equals_dense():
    frame, _ = simulate(300, 6000, seed=8, ties="davidson", tie_param=0.1, position=0.2)
    dense = Davidson(position_effect=True, l2=0.3).fit(frame)
    sparse = Davidson(position_effect=True, l2=0.3, solver="sparse").fit(frame)
    assert sparse.solver_ == "newton-cg"
    assert sparse.log_likelihood_ == pytest.approx(dense.log_likelihood_, rel=1e-10)
    np.testing.assert_allclose(sparse.params_, dense.params_, atol=1e-6)
    # conditional standard errors are a lower bound of the Fisher ones
    se_d = dense.scores_.sort("item")["std_error"].to_numpy()
    se_s = sparse.scores_.sort("item")["std_error"].to_numpy()
    assert np.all(se_s <= se_d + 1e-12)


def test_poisson_counts_are_poisson():
    rng = np.random.default_rng(0)
    counts = np.array([0.0, 1.0, 3.0, 40.0, 2.5])
    draws = poisson_counts(counts, 20000, rng)
    assert np.all(draws[0] == 0)
    np.testing.assert_allclose(draws.mean(axis=1), counts, rtol=0.03, atol=0.02)
    np.testing.assert_allclose(draws.var(axis=1), counts, rtol=0.06, atol=0.02)
    # exact pmf at lambda=1: P(0)=P(1)=e^-1
    assert np.mean(draws[1] == 0) == pytest.approx(np.exp(-1), abs=0.01)


def test_batched_bootstrap_rounds_equal_full_refits():
    frame, _ = simulate(10, 1500, seed=9, ties="davidson", tie_param=0.2, position=0.3)
    pairs, _ = aggregate(frame, shown_left="shown_left")
    outcome = make_outcome("logit", "davidson")
    counts = (pairs.wins, pairs.losses, pairs.ties)
    obj = solvers.Objective(pairs.first, pairs.second, counts, outcome, K=pairs.n_items,
                            Z=pairs.design(), reference=0)
    fit = solvers.newton_dense(obj)
    free = obj.free_mask()
    H = obj.dense_hessian(fit.phi)[np.ix_(free, free)]
    factor = solvers.cholesky(H)

    def solve(G):
        out = np.zeros_like(G)
        out[free] = solvers.cho_solve(factor, G[free])
        return out

    rng = np.random.default_rng(1)
    boot = tuple(poisson_counts(c, 5, rng) for c in counts)
    phi, ok = solvers.chord_batch(obj, fit.phi, boot, solve, tol=1e-10)
    assert ok.all()
    for b in range(5):
        one = solvers.Objective(pairs.first, pairs.second, tuple(c[:, b] for c in boot), outcome,
                                K=pairs.n_items, Z=pairs.design(), reference=0)
        np.testing.assert_allclose(phi[:, b], solvers.newton_dense(one).phi, atol=1e-8)


def test_bootstrap_adds_intervals(frame):
    m = Davidson().fit(frame).bootstrap(60, seed=0)
    s = m.scores_
    assert {"bootstrap_std_error", "bootstrap_ci_low", "bootstrap_ci_high"} <= set(s.columns)
    assert m.bootstrap_samples_.shape == (60, 12)
    ratio = s["bootstrap_std_error"].to_numpy() / s["std_error"].to_numpy()
    assert 0.7 < np.median(ratio) < 1.3  # bootstrap and Fisher errors agree
    again = Davidson().fit(frame).bootstrap(60, seed=0)
    np.testing.assert_array_equal(again.bootstrap_samples_, m.bootstrap_samples_)


def test_held_out_loglik_and_score(frame):
    train, test = frame[:1500], frame[1500:]
    m = Davidson().fit(train)
    ll = m.log_likelihood(test)
    assert ll < 0 and m.score(test) == pytest.approx(ll / test.height)
    p = m.predict_proba(test["model_a"].to_list(), test["model_b"].to_list())
    lab = test["label"].to_numpy()
    direct = np.log(np.where(lab == "a", p[:, 0], np.where(lab == "tie", p[:, 1], p[:, 2]))).sum()
    assert ll == pytest.approx(direct, rel=1e-10)


def test_numeric_item_ids():
    frame, _ = simulate(6, 600, seed=2)
    num = frame.with_columns(pl.col("model_a").str.slice(4).cast(pl.Int64),
                             pl.col("model_b").str.slice(4).cast(pl.Int64))
    m = BradleyTerry().fit(num)
    assert m.scores_["item"].dtype == pl.Int64
    assert m.predict_proba(0, 1).shape == (3,)


def test_style_features():
    df = pl.DataFrame({"response_a": ["# Title\n- x\n- y\n**bold**", "short"],
                       "response_b": ["plain text here", "a much longer answer"]})
    out = style_features(df)
    assert out["style_headers"].to_list() == [1.0, 0.0]
    assert out["style_lists"][0] == 1.0 and out["style_bold"][0] == 1.0
    assert -1 <= out["style_length"][1] < 0


def test_plackett_luce_on_pairs_equals_bradley_terry():
    frame, _ = simulate(10, 1500, seed=4)
    bt = BradleyTerry().fit(frame)
    rankings = frame.select(
        pl.when(pl.col("label") == "a").then(pl.concat_list("model_a", "model_b"))
        .otherwise(pl.concat_list("model_b", "model_a")).alias("ranking"))
    plm = PlackettLuce().fit(rankings)
    assert plm.log_likelihood_ == pytest.approx(bt.log_likelihood_, rel=1e-10)
    np.testing.assert_allclose(plm.scores_.sort("item")["std_error"].to_numpy(),
                               bt.scores_.sort("item")["std_error"].to_numpy(), rtol=1e-6)


def test_plackett_luce_recovers_scores_from_partial_rankings():
    rng = np.random.default_rng(0)
    K = 15
    s = rng.normal(size=K)
    rows, offered = [], []
    for _ in range(2500):
        C = rng.choice(K, 5, replace=False)
        order = C[np.argsort(-(s[C] + rng.gumbel(size=5)))]
        rows.append([f"i{x:02d}" for x in order[: rng.integers(1, 5)]])
        offered.append([f"i{x:02d}" for x in C])
    data = pl.DataFrame({"ranking": rows, "offered": offered})
    m = PlackettLuce().fit(data, choice_set="offered")
    est = m.scores_.sort("item")
    true = s - s.mean()
    assert np.corrcoef(est["score"].to_numpy(), true)[0, 1] > 0.97
    cover = np.mean((est["ci_low"].to_numpy() <= true) & (true <= est["ci_high"].to_numpy()))
    assert cover >= 0.8
    cg = PlackettLuce(dense_limit=0).fit(data, choice_set="offered")
    assert cg.log_likelihood_ == pytest.approx(m.log_likelihood_, rel=1e-9)
    p = m.predict_proba(["i00", "i01", "i02"])
    assert p.sum() == pytest.approx(1.0)


def test_plackett_luce_bad_input():
    with pytest.raises(ValueError, match="twice"):
        PlackettLuce().fit(pl.DataFrame({"ranking": [["a", "a"]]}))
    with pytest.raises(ValueError, match="at least two"):
        PlackettLuce().fit(pl.DataFrame({"ranking": [["a"]]}))
    with pytest.raises(ValueError, match="list of items"):
        PlackettLuce().fit(pl.DataFrame({"ranking": ["a"]}))
    with pytest.raises(NoFiniteMLEError, match="never ranked below"):
        PlackettLuce().fit(pl.DataFrame({"ranking": [["a", "b"], ["a", "c"], ["b", "c"]]}))


def test_predict_comparisons_matches_log_likelihood(frame):
    m = AnnotatorBradleyTerry(ties="rao-kupper", position_effect=True).fit(frame)
    probs = m.predict_comparisons(frame)
    assert probs.columns == ["p_a", "p_tie", "p_b"] and probs.height == frame.height
    lab = frame["label"].to_numpy()
    p = probs.to_numpy()
    picked = np.where(lab == "a", p[:, 0], np.where(lab == "tie", p[:, 1], p[:, 2]))
    assert np.log(picked).sum() == pytest.approx(m.log_likelihood_, rel=1e-10)


def test_one_step_bootstrap_is_close_to_exact(frame):
    exact = Davidson().fit(frame).bootstrap(40, seed=3)
    quick = Davidson().fit(frame).bootstrap(40, seed=3, method="one-step")
    se = exact.scores_.sort("item")["std_error"].to_numpy()  # samples are in item order
    gap = np.abs(exact.bootstrap_samples_ - quick.bootstrap_samples_)
    # the one-step error is second order: a small fraction of a standard error
    assert np.median(gap) < 0.1 * np.median(se) and np.all(gap.max(axis=0) < se)
    assert np.any(gap > 0)
    np.testing.assert_allclose(quick.scores_["bootstrap_std_error"].to_numpy(),
                               exact.scores_["bootstrap_std_error"].to_numpy(), rtol=0.1)
    with pytest.raises(ValueError, match="method"):
        exact.bootstrap(5, method="jackknife")


def test_plackett_luce_save_load(tmp_path):
    data = pl.DataFrame({"ranking": [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "c", "b"]]})
    m = PlackettLuce().fit(FakeVersion(data, "hpl"))
    back = PlackettLuce.load(m.save(tmp_path / "pl.npz"))
    assert back.fitted_on_ == "hpl" and back.scores_.equals(m.scores_)
    np.testing.assert_allclose(back.predict_proba(["a", "b"]), m.predict_proba(["a", "b"]))


def test_sparse_bootstrap_equals_dense_bootstrap():
    frame, _ = simulate(40, 3000, seed=12, position=0.2)
    dense = BradleyTerry(position_effect=True, l2=0.5).fit(frame).bootstrap(8, seed=5)
    sparse = BradleyTerry(position_effect=True, l2=0.5, solver="sparse").fit(frame).bootstrap(8, seed=5)
    np.testing.assert_allclose(sparse.bootstrap_samples_, dense.bootstrap_samples_, atol=1e-5)


def test_save_into_an_unwritable_place_fails_cleanly(tmp_path, frame):
    m = BradleyTerry().fit(frame)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError):
        m.save(blocker / "model.npz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_sparse_solver_without_prior_pins_a_reference():
    frame, _ = simulate(60, 6000, seed=13, ties="rao-kupper", tie_param=0.4)
    dense = RaoKupper().fit(frame)
    sparse = RaoKupper(solver="sparse").fit(frame)
    assert sparse.log_likelihood_ == pytest.approx(dense.log_likelihood_, rel=1e-10)
    np.testing.assert_allclose(sparse.scores_.sort("item")["score"].to_numpy(),
                               dense.scores_.sort("item")["score"].to_numpy(), atol=1e-6)


def test_all_zero_covariate_is_rejected():
    frame, _ = simulate(6, 400, seed=1, covariate_coef=[0.5])
    with pytest.raises(ValueError, match="zero in every comparison"):
        BradleyTerry(covariates=["x0", "z"]).fit(frame.with_columns(pl.lit(0.0).alias("z")))
    with pytest.raises(ValueError, match="finite"):
        BradleyTerry(covariates=["x0"]).fit(frame.with_columns(pl.lit(float("nan")).alias("x0")))
