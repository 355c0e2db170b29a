"""Pairwise preference models: P(y > y' | x).

- `RewardPreference(reward_model)`: sigmoid(r(x, y) - r(x, y')) from any reward model
  (Bradley-Terry); transitive by construction.
- `CrossEncoderPreference`: a sequence classifier reads the whole pair, s(x, y, y'), and

      P(y > y' | x) = sigmoid(s(x, y, y') - s(x, y', y))

  which is antisymmetric by construction (P(y > y') = 1 - P(y' > y) exactly) and, unlike a
  reward, can express intransitive preferences (a > b > c > a). It is trained with the neural
  reward model's loop and loss: the "chosen" sequence is (x, winner, loser), the "rejected" one
  (x, loser, winner), so the Bradley-Terry loss on their scores is the log-loss of P above.

Every preference model has `proba(prompts, responses_a, responses_b) -> np.ndarray` = P(a > b).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from rm.neural import NeuralRewardModel, PairEncoder, TruncationCounts
from rm.pairs import check_texts


def _sigmoid(z):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(z, dtype=np.float64)))


class RewardPreference:
    """P(a > b) = sigmoid((r(a) - r(b)) / temperature) from a reward model."""

    def __init__(self, reward_model, temperature: float = 1.0):
        if not hasattr(reward_model, "reward"):
            raise TypeError(f"{type(reward_model).__name__} has no reward(prompts, responses) method")
        if temperature <= 0:
            raise ValueError("temperature must be positive")
        self.reward_model = reward_model
        self.temperature = temperature

    @property
    def version_hash_(self):
        return getattr(self.reward_model, "version_hash_", None)

    def proba(self, prompts, responses_a, responses_b) -> np.ndarray:
        prompts = list(prompts)
        r_a = self.reward_model.reward(prompts, list(responses_a))
        r_b = self.reward_model.reward(prompts, list(responses_b))
        return _sigmoid((r_a - r_b) / self.temperature)

    def predict_proba(self, data: Any) -> np.ndarray:
        from rm.pairs import proba_on_frame

        return proba_on_frame(self, data)


class TripleEncoder(PairEncoder):
    """Tokenizes (prompt, first, second) as [prompt | first SEP second] with the truncation rule:
    the prompt keeps its last tokens, each response its first; the responses together keep at
    least half the budget and share it evenly (an unused share goes to the other)."""

    def __init__(self, tokenizer, max_length: int):
        super().__init__(tokenizer, max_length)
        sep_text = tokenizer.sep_token if tokenizer.sep_token else "\n\nSecond response:\n"
        self.sep_ids = self.backend.encode(sep_text, add_special_tokens=False).ids
        self.budget -= len(self.sep_ids)
        if self.budget < 6:
            raise ValueError(f"max_length {max_length} leaves no room for a prompt and two responses")

    @staticmethod
    def keep_lengths3(lp: int, la: int, lb: int, budget: int) -> tuple[int, int, int]:
        if lp + la + lb <= budget:
            return lp, la, lb
        resp = min(la + lb, max(budget - lp, budget // 2))
        ka = min(la, max(resp // 2, resp - lb))
        kb = min(lb, resp - ka)
        return min(lp, budget - ka - kb), ka, kb

    def encode3(self, prompts, firsts, seconds):
        from tokenizers import Encoding

        counts = TruncationCounts(n_sequences=len(prompts))
        p_encs = self.backend.encode_batch(list(prompts), add_special_tokens=False)
        a_encs = self.backend.encode_batch(list(firsts), add_special_tokens=False)
        b_encs = self.backend.encode_batch(list(seconds), add_special_tokens=False)
        sep = self.backend.encode(self.backend.decode(self.sep_ids, skip_special_tokens=False), add_special_tokens=False)
        ids, types = [], []
        for p, a, b in zip(p_encs, a_encs, b_encs):
            lp, la, lb = len(p.ids), len(a.ids), len(b.ids)
            kp, ka, kb = self.keep_lengths3(lp, la, lb, self.budget)
            if (kp, ka, kb) != (lp, la, lb):
                counts.n_truncated += 1
                counts.n_prompt_truncated += kp < lp
                counts.n_response_truncated += (ka < la) or (kb < lb)
                counts.tokens_removed += (lp - kp) + (la - ka) + (lb - kb)
                p.truncate(kp, direction="left")
                a.truncate(ka, direction="right")
                b.truncate(kb, direction="right")
            i, t = self._finish(p, Encoding.merge([a, sep, b]))
            ids.append(i)
            types.append(t)
        return ids, types, counts


class CrossEncoderPreference(NeuralRewardModel):
    """Antisymmetric cross-encoder preference model (see the module docstring).

    Same constructor, config, training loop, checkpoints, `accelerate launch` support and
    save format as `NeuralRewardModel`; `proba` instead of `reward`.
    """

    kind = "cross_encoder_preference"

    def _pair_encoder(self, tokenizer) -> TripleEncoder:
        return TripleEncoder(tokenizer, self.config.max_length)

    def _encode_side(self, prompts, responses, others):
        """The cross-encoder reads (prompt, response, the other response)."""
        return self.encoder_.encode3(prompts, responses, others)

    def reward(self, prompts, responses):
        raise TypeError(
            "a cross-encoder preference model scores pairs, not single responses; use proba(prompts, a, b)"
        )

    def pair_scores(self, prompts, responses_a, responses_b) -> np.ndarray:
        """s(x, a, b) - s(x, b, a): the log-odds of a over b."""
        self._check_fitted()
        prompts, a, b = list(prompts), list(responses_a), list(responses_b)
        if not (len(prompts) == len(a) == len(b)):
            raise ValueError("prompts, responses_a and responses_b must have the same length")
        check_texts(a, "response_a")
        check_texts(b, "response_b")
        ids_ab, types_ab, counts = self.encoder_.encode3(prompts, a, b)
        ids_ba, types_ba, counts_ba = self.encoder_.encode3(prompts, b, a)
        counts.add(counts_ba)
        self.last_truncation_ = counts.as_dict()
        device = next(self.model_.parameters()).device
        scores = self._rewards_from_ids(self.model_, ids_ab + ids_ba, types_ab + types_ba, device)
        n = len(prompts)
        return scores[:n] - scores[n:]

    def proba(self, prompts, responses_a, responses_b) -> np.ndarray:
        return _sigmoid(self.pair_scores(prompts, responses_a, responses_b))

    @classmethod
    def load(cls, path: str | Path) -> "CrossEncoderPreference":
        return super().load.__func__(cls, path)
