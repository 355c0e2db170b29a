"""Ensembles whose members are fine-tuned networks: neural reward models over seeds and bootstrap
resamples, and cross-encoder preference models (tiny BERT, random weights, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from rm.ensemble import RewardEnsemble
from rm.neural import NeuralRewardModel
from rm.preference import CrossEncoderPreference, RewardPreference
from rm_test_data import simulated_pairs

COMMON = dict(max_length=48, batch_size=8, epochs=1, learning_rate=2e-3, progress=False, eval_fraction=0.0)


def test_neural_members_over_seeds_save_load_and_spread(tiny_model_dir, tmp_path):
    frame, truth = simulated_pairs(48, seed=11, scale=3.0)
    template = NeuralRewardModel(model=str(tiny_model_dir), output_dir=str(tmp_path / "members"), **COMMON)
    ensemble = RewardEnsemble(template, n_members=2, resample="seed", seed=5).fit(frame)
    members = ensemble.members_
    assert [m.config.seed for m in members] == [5, 6]
    # each member trained in its own folder, none overwrote another
    assert {m.config.output_dir for m in members} == {str(tmp_path / "members" / "member-5"),
                                                      str(tmp_path / "members" / "member-6")}
    texts = list(truth)[:30]
    prompts = ["question 1"] * len(texts)
    per_member = ensemble.reward_members(prompts, texts)
    assert per_member.shape == (2, len(texts))
    np.testing.assert_allclose(per_member[0], members[0].reward(prompts, texts), rtol=1e-6)
    assert not np.allclose(per_member[0], per_member[1])  # different seeds, different models
    np.testing.assert_allclose(ensemble.reward(prompts, texts), per_member.mean(0), rtol=1e-6)
    np.testing.assert_allclose(ensemble.reward_std(prompts, texts), per_member.std(0, ddof=1), rtol=1e-6)
    # P(a > b) of a reward member is sigmoid(r(a) - r(b)); the ensemble averages the members
    a, b = texts[:15], texts[15:]
    manual = np.mean([RewardPreference(m).proba(prompts[:15], a, b) for m in members], axis=0)
    np.testing.assert_allclose(ensemble.proba(prompts[:15], a, b), manual, rtol=1e-6)
    saved = ensemble.save(tmp_path / "ensemble")
    assert json.loads((saved / "workbench_ensemble.json").read_text())["n_members"] == 2
    loaded = RewardEnsemble.load(saved)
    np.testing.assert_allclose(loaded.reward_members(prompts, texts), per_member, rtol=1e-5, atol=1e-6)


def test_bootstrap_members_see_different_resamples(tiny_model_dir):
    frame, _ = simulated_pairs(40, seed=12)
    template = NeuralRewardModel(model=str(tiny_model_dir), **COMMON)
    bootstrap = RewardEnsemble(template, n_members=2, resample="bootstrap", seed=0).fit(frame)
    seeds_only = RewardEnsemble(template, n_members=2, resample="seed", seed=0).fit(frame)
    # a bootstrap resample has as many rows as the data; duplicates are kept as separate pairs
    assert all(m.counts_["n_pairs"] == frame.height for m in bootstrap.members_)
    prompts, texts = frame["prompt"].to_list(), frame["response_a"].to_list()
    # same seed, same data: the same model; same seed, resampled data: another model
    again = NeuralRewardModel(model=str(tiny_model_dir), seed=0, **COMMON).fit(frame)
    np.testing.assert_allclose(seeds_only.members_[0].reward(prompts, texts), again.reward(prompts, texts), atol=1e-5)
    assert np.abs(bootstrap.members_[0].reward(prompts, texts) - again.reward(prompts, texts)).max() > 1e-3


def test_cross_encoder_members_give_antisymmetric_probabilities_and_no_reward(tiny_model_dir, tmp_path):
    frame, _ = simulated_pairs(32, seed=13)
    template = CrossEncoderPreference(model=str(tiny_model_dir), **COMMON)
    ensemble = RewardEnsemble(template, n_members=2, resample="seed").fit(frame)
    args = (frame["prompt"].to_list(), frame["response_a"].to_list(), frame["response_b"].to_list())
    forward = ensemble.proba_members(*args)
    backward = ensemble.proba_members(args[0], args[2], args[1])
    np.testing.assert_allclose(forward + backward, 1.0, atol=1e-6)
    assert (ensemble.proba_std(*args) > 0).any()
    frame_out = ensemble.proba_frame(*args)
    assert frame_out.columns == ["proba_mean", "proba_std"] and frame_out.height == frame.height
    with pytest.raises(TypeError, match="no reward"):
        ensemble.reward(args[0], args[1])
    loaded = RewardEnsemble.load(ensemble.save(tmp_path / "cross"))
    np.testing.assert_allclose(loaded.proba(*args), ensemble.proba(*args), atol=1e-6)
