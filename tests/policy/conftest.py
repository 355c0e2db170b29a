from __future__ import annotations

import numpy as np
import polars as pl
import pytest

torch = pytest.importorskip("torch")

WORDS = ["good", "bad", "great", "awful", "nice", "poor", "fine", "meh"]
POSITIVE = {"good", "great", "nice", "fine"}


def make_comparisons(n_prompts: int = 12, seed: int = 0) -> pl.DataFrame:
    """Tiny text comparisons with a known truth: responses with more positive words win."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        prompt = f"say something {p}:"
        for _ in range(3):
            a = " ".join(rng.choice(WORDS, 3))
            b = " ".join(rng.choice(WORDS, 3))
            ra, rb = positive_count(a), positive_count(b)
            label = "a" if ra > rb else "b" if rb > ra else "tie"
            rows.append((f"p{p}", prompt, a, b, label))
    return pl.DataFrame(rows, schema=["prompt_id", "prompt", "response_a", "response_b", "label"], orient="row")


def positive_count(text: str) -> int:
    return sum(w in POSITIVE for w in text.split())


class PositiveWordReward:
    """A reward model from a known rule: the number of positive words."""

    def reward(self, prompts, responses):
        return np.array([positive_count(r) for r in responses], dtype=float)


class PositiveWordPreference:
    """Bradley-Terry preference on the positive-word count."""

    def proba(self, prompts, responses_a, responses_b):
        ra = PositiveWordReward().reward(prompts, responses_a)
        rb = PositiveWordReward().reward(prompts, responses_b)
        return 1 / (1 + np.exp(-(ra - rb)))


@pytest.fixture(scope="session")
def comparisons() -> pl.DataFrame:
    return make_comparisons()


@pytest.fixture(scope="session")
def tokenizer(comparisons):
    from policy.lm.tiny import train_tokenizer

    texts = comparisons["prompt"].to_list() + comparisons["response_a"].to_list() + comparisons["response_b"].to_list()
    return train_tokenizer(texts, vocab_size=300)


@pytest.fixture()
def tiny_model(tokenizer):
    from policy.lm.tiny import tiny_causal_lm

    return tiny_causal_lm(tokenizer, hidden_size=32, n_layers=2, max_positions=64, seed=0)
