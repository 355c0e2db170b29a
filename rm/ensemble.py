"""Ensembles of reward / preference models over seeds or bootstrap resamples.

`RewardEnsemble(template, n_members=5, resample="bootstrap")` fits copies of `template` (any
estimator of this package: `FeatureRewardModel`, `NeuralRewardModel`, `CrossEncoderPreference`)
with seeds `seed + k` and, for "bootstrap", on pairs resampled with replacement. The feature
model's fit is deterministic, so its ensembles should use "bootstrap".

- `reward` / `reward_std` / `reward_members`: mean, spread (std over members), all members;
- `proba` / `proba_std` / `proba_members`: the same for P(a > b) (reward members through
  sigmoid(r(a) - r(b)));
- `reward_frame` / `proba_frame`: polars frames with mean and std, for active pair selection and
  noise diagnostics.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rm.pairs import comparisons_frame, version_hash

METADATA_FILE = "workbench_ensemble.json"


def member_with_seed(template: Any, seed: int) -> Any:
    """An unfitted copy of `template` with its seed set to `seed`."""
    params = template.get_params(deep=False)
    if "config" in params and hasattr(params["config"], "seed"):
        config = replace(params["config"], seed=seed)
        if config.output_dir:
            config = replace(config, output_dir=str(Path(config.output_dir) / f"member-{seed}"))
        return type(template)(config)
    if "seed" in params:
        return type(template)(**{**params, "seed": seed})
    raise TypeError(f"{type(template).__name__} has no seed parameter to vary")


def load_single_model(path: Path):
    """A feature, neural or cross-encoder model saved by `rm` (its kind read from the folder's
    ``workbench_reward_model.json``): ensemble members and `rm.cli.load_model` both load this way."""
    meta_file = path / "workbench_reward_model.json"
    if not meta_file.exists():
        raise FileNotFoundError(f"{path} holds no model saved by the workbench (no workbench_reward_model.json)")
    kind = json.loads(meta_file.read_text()).get("kind")
    if kind == "feature_reward_model":
        from rm.features import FeatureRewardModel

        return FeatureRewardModel.load(path)
    if kind == "neural_reward_model":
        from rm.neural import NeuralRewardModel

        return NeuralRewardModel.load(path)
    if kind == "cross_encoder_preference":
        from rm.preference import CrossEncoderPreference

        return CrossEncoderPreference.load(path)
    raise ValueError(f"{path}: unknown model kind {kind!r}")


class RewardEnsemble:
    def __init__(self, template: Any, n_members: int = 5, resample: str = "bootstrap", seed: int = 0):
        if n_members < 2:
            raise ValueError("an ensemble needs at least 2 members")
        if resample not in ("bootstrap", "seed"):
            raise ValueError("resample must be 'bootstrap' or 'seed'")
        self.template = template
        self.n_members = n_members
        self.resample = resample
        self.seed = seed

    def fit(self, data: Any) -> "RewardEnsemble":
        frame = comparisons_frame(data)
        self.members_ = []
        for k in range(self.n_members):
            member = member_with_seed(self.template, self.seed + k)
            part = frame
            if self.resample == "bootstrap":
                idx = np.random.default_rng(self.seed + 10_000 + k).integers(0, frame.height, frame.height)
                part = frame[idx]
            self.members_.append(member.fit(part))
        self.version_hash_ = version_hash(data)
        return self

    def _check(self):
        if not hasattr(self, "members_"):
            raise RuntimeError("RewardEnsemble is not fitted; call fit(data) or load(path) first")

    # rewards
    def reward_members(self, prompts, responses) -> np.ndarray:
        self._check()
        if not all(hasattr(m, "reward") and type(m).__name__ != "CrossEncoderPreference" for m in self.members_):
            raise TypeError("the members are pairwise preference models; they give no reward")
        return np.stack([m.reward(list(prompts), list(responses)) for m in self.members_])

    def reward(self, prompts, responses) -> np.ndarray:
        return self.reward_members(prompts, responses).mean(axis=0)

    def reward_std(self, prompts, responses) -> np.ndarray:
        return self.reward_members(prompts, responses).std(axis=0, ddof=1)

    def reward_frame(self, prompts, responses) -> pl.DataFrame:
        r = self.reward_members(prompts, responses)
        return pl.DataFrame({"reward_mean": r.mean(axis=0), "reward_std": r.std(axis=0, ddof=1)})

    # preference probabilities
    def proba_members(self, prompts, responses_a, responses_b) -> np.ndarray:
        from rm.preference import RewardPreference

        self._check()
        rows = []
        for m in self.members_:
            model = m if type(m).__name__ == "CrossEncoderPreference" else RewardPreference(m)
            rows.append(model.proba(list(prompts), list(responses_a), list(responses_b)))
        return np.stack(rows)

    def proba(self, prompts, responses_a, responses_b) -> np.ndarray:
        return self.proba_members(prompts, responses_a, responses_b).mean(axis=0)

    def proba_std(self, prompts, responses_a, responses_b) -> np.ndarray:
        return self.proba_members(prompts, responses_a, responses_b).std(axis=0, ddof=1)

    def proba_frame(self, prompts, responses_a, responses_b) -> pl.DataFrame:
        p = self.proba_members(prompts, responses_a, responses_b)
        return pl.DataFrame({"proba_mean": p.mean(axis=0), "proba_std": p.std(axis=0, ddof=1)})

    # persistence
    def save(self, path: str | Path) -> Path:
        self._check()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        for k, m in enumerate(self.members_):
            m.save(path / f"member-{k}")
        (path / METADATA_FILE).write_text(json.dumps({
            "kind": "reward_ensemble", "n_members": self.n_members, "resample": self.resample,
            "seed": self.seed, "version_hash": self.version_hash_,
        }, indent=2))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "RewardEnsemble":
        path = Path(path)
        meta_file = path / METADATA_FILE
        if not meta_file.exists():
            raise FileNotFoundError(f"{path} is not a saved ensemble (no {METADATA_FILE})")
        meta = json.loads(meta_file.read_text())
        members = [load_single_model(path / f"member-{k}") for k in range(meta["n_members"])]
        self = cls(members[0], n_members=meta["n_members"], resample=meta["resample"], seed=meta["seed"])
        self.members_ = members
        self.version_hash_ = meta["version_hash"]
        return self
