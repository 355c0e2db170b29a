"""What policy stages need from a fitted model: two small protocols, nothing more.

Any object with these methods works (``rm``'s models, a table in a test, a remote judge).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class RewardModel(Protocol):
    def reward(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        """One scalar reward per (prompt, response)."""
        ...


@runtime_checkable
class PreferenceModel(Protocol):
    def proba(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> np.ndarray:
        """P(response_a > response_b | prompt), one per row."""
        ...


class BradleyTerryPreference:
    """The pairwise preference ``sigma(r(a) - r(b))`` induced by a reward model."""

    def __init__(self, reward_model: RewardModel, scale: float = 1.0):
        self.reward_model = reward_model
        self.scale = scale

    def proba(self, prompts: list[str], responses_a: list[str], responses_b: list[str]) -> np.ndarray:
        ra = np.asarray(self.reward_model.reward(prompts, responses_a), dtype=np.float64)
        rb = np.asarray(self.reward_model.reward(prompts, responses_b), dtype=np.float64)
        return 1.0 / (1.0 + np.exp(-self.scale * (ra - rb)))
