"""Shared helpers of the rm tests: simulated pairs with a known reward, a fake version."""
from __future__ import annotations


import numpy as np
import polars as pl

GOOD = ["thanks", "careful", "helpful", "clear", "kind", "accurate", "safe", "polite"]
BAD = ["rude", "wrong", "harmful", "sloppy", "insult", "unsafe", "lazy", "vague"]
NEUTRAL = ["the", "a", "answer", "about", "this", "question", "is", "here"]


def simulated_pairs(n: int, seed: int = 0, tie_rate: float = 0.0, scale: float = 1.5):
    """Pairs of bag-of-word responses with a known reward: #good - #bad words (x scale).

    Returns (frame, true_reward) where true_reward maps a response text to its reward.
    """
    rng = np.random.default_rng(seed)
    rows, truth = [], {}
    for i in range(n):
        texts = []
        for _ in range(2):
            k_good, k_bad = rng.integers(0, 4, size=2)
            words = list(rng.choice(GOOD, k_good)) + list(rng.choice(BAD, k_bad)) + list(rng.choice(NEUTRAL, 3))
            rng.shuffle(words)
            text = " ".join(words) + f" n{i}"
            truth[text] = scale * (k_good - k_bad)
            texts.append(text)
        a, b = texts
        d = truth[a] - truth[b]
        if tie_rate and rng.random() < tie_rate * np.exp(-abs(d)):
            label = "tie"
        else:
            label = "a" if rng.random() < 1 / (1 + np.exp(-d)) else "b"
        rows.append({"comparison_id": f"c{i}", "prompt_id": f"p{i % 7}", "prompt": f"question {i % 7}",
                     "response_a": a, "response_b": b, "label": label, "strength": None,
                     "category": ["x", "y"][i % 2], "annotator_id": "sim"})
    return pl.DataFrame(rows), truth


class FakeVersion:
    """Anything with .to_polars() and .hash is a version for the models."""

    def __init__(self, frame: pl.DataFrame, hash: str = "v" * 64):
        self._frame = frame
        self.hash = hash
        self.name = "fake"

    def to_polars(self):
        return self._frame


