import argparse

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import log_loss

from rm.ensemble import RewardEnsemble
from rm.evaluate import evaluate_preferences, expected_calibration_error
from rm.features import FeatureRewardModel
from rm.preference import RewardPreference
from rm_test_data import simulated_pairs


def test_metrics_against_sklearn_and_hand_computed_ece(tmp_path):
    frame = pl.DataFrame({"prompt": ["q"] * 4, "response_a": list("abcd"), "response_b": list("efgh"),
                          "label": ["a", "b", "a", "tie"], "category": ["x", "x", "y", "y"]})
    p = np.array([0.9, 0.8, 0.6, 0.5])
    ev = evaluate_preferences(None, frame, probabilities=p)
    m = ev.metrics()
    assert m["accuracy"] == pytest.approx(2 / 3) and m["n_ties"] == 1
    assert m["log_loss"] == pytest.approx(log_loss([1, 0, 1], [0.9, 0.8, 0.6]))
    assert expected_calibration_error(np.array([0.9, 0.9, 0.1]), np.array([1, 0, 0]), n_bins=10) == pytest.approx(
        (2 / 3) * abs(0.9 - 0.5) + (1 / 3) * 0.1)
    assert ev.by_category.filter(pl.col("category") == "x")["accuracy"][0] == pytest.approx(0.5)
    assert ev.plot_reliability(tmp_path / "rel.png").stat().st_size > 1000


def test_majority_agreement():
    frame = pl.DataFrame({"prompt_id": ["p"] * 3 + ["q"], "prompt": ["p"] * 3 + ["q"],
                          "response_a": ["x", "y", "x", "u"], "response_b": ["y", "x", "y", "v"],
                          "label": ["a", "b", "b", "a"], "annotator_id": ["1", "2", "3", "1"]})
    ev = evaluate_preferences(None, frame, probabilities=np.array([0.8, 0.2, 0.8, 0.5]))
    assert ev.majority.height == 1 and ev.metrics()["majority_agreement"] == 1.0


def test_reward_preference_and_ensemble(tmp_path):
    frame, _ = simulated_pairs(200, seed=9)
    rm = FeatureRewardModel(n_features=2**10, C=3.0).fit(frame)
    pref = RewardPreference(rm)
    args = (frame["prompt"].to_list(), frame["response_a"].to_list(), frame["response_b"].to_list())
    p = pref.proba(*args)
    np.testing.assert_allclose(p + pref.proba(args[0], args[2], args[1]), 1.0)
    ens = RewardEnsemble(FeatureRewardModel(n_features=2**10, C=3.0), n_members=3, resample="bootstrap").fit(frame)
    assert ens.proba_members(*args).shape == (3, 200)
    assert (ens.proba_std(*args) > 0).any()
    rf = ens.reward_frame(args[0], args[1])
    assert rf.columns == ["reward_mean", "reward_std"]
    ens.save(tmp_path / "ens")
    np.testing.assert_allclose(RewardEnsemble.load(tmp_path / "ens").proba(*args), ens.proba(*args))


def test_cross_encoder_is_antisymmetric(tiny_model_dir):
    from rm.preference import CrossEncoderPreference

    frame, _ = simulated_pairs(24, seed=10)
    m = CrossEncoderPreference(model=str(tiny_model_dir), max_length=48, batch_size=8, epochs=1,
                               progress=False, eval_fraction=0.0).fit(frame)
    args = (frame["prompt"].to_list(), frame["response_a"].to_list(), frame["response_b"].to_list())
    np.testing.assert_allclose(m.proba(*args) + m.proba(args[0], args[2], args[1]), 1.0, atol=1e-9)
    with pytest.raises(TypeError, match="proba"):
        m.reward(args[0], args[1])


def test_cli_train_and_eval_feature(tmp_path, capsys):
    from rm import cli

    frame, _ = simulated_pairs(80, seed=11)
    data = tmp_path / "pairs.parquet"
    frame.write_parquet(data)
    parser = argparse.ArgumentParser()
    parser.add_argument("--db")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["rm", "train", "feature", "--data", str(data), "--output", str(tmp_path / "m")])
    assert args.func(args) == 0
    args = parser.parse_args(["rm", "eval", str(tmp_path / "m"), "--data", str(data), "--plot", str(tmp_path / "r.png")])
    assert args.func(args) == 0
    assert "accuracy" in capsys.readouterr().out and (tmp_path / "r.png").exists()
    with pytest.raises(FileNotFoundError):
        args = parser.parse_args(["rm", "eval", str(tmp_path), "--data", str(data)])
        args.func(args)
