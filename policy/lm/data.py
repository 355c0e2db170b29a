"""From a comparisons table to token tensors: preference pairs, SFT examples, prompts.

Sequences are ``prompt + completion + eos``; the prompt keeps its last ``max_prompt_length`` tokens
and the whole sequence its first ``max_length``. A completion mask marks the tokens that are
scored (completion and eos). Batches are right-padded to the longest sequence in the batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl
import torch

from ..tabular import _as_frame


def padding_id(tokenizer) -> int:
    """The token that pads batches: the tokenizer's pad token, else its end-of-sequence token."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def preference_pairs(data: Any, keep_ties: bool = False) -> pl.DataFrame:
    """One row per decided comparison: ``prompt, chosen, rejected, label_prob`` where ``label_prob``
    is the probability the label gives ``chosen > rejected`` (1, or 1/2 for a kept tie)."""
    frame = _as_frame(data)
    missing = [c for c in ("prompt", "response_a", "response_b", "label") if c not in frame.columns]
    if missing:
        raise ValueError(f"comparisons are missing columns {missing}")
    labels = ["a", "b", "tie"] if keep_ties else ["a", "b"]
    frame = frame.filter(pl.col("label").is_in(labels))
    a_wins = pl.col("label") != "b"
    pairs = frame.select(
        pl.col("prompt_id") if "prompt_id" in frame.columns else pl.lit(None, pl.String).alias("prompt_id"),
        "prompt",
        pl.when(a_wins).then("response_a").otherwise("response_b").alias("chosen"),
        pl.when(a_wins).then("response_b").otherwise("response_a").alias("rejected"),
        pl.when(pl.col("label") == "tie").then(0.5).otherwise(1.0).alias("label_prob"),
    )
    if pairs.height == 0:
        raise ValueError("no decided pair (label a or b) in the comparisons: nothing to train on")
    return pairs


def sft_examples(data: Any) -> pl.DataFrame:
    """``prompt, response``: the chosen response of every decided pair."""
    pairs = preference_pairs(data)
    return pairs.select("prompt", pl.col("chosen").alias("response"))


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    return tokenizer(texts, add_special_tokens=False)["input_ids"]


@dataclass
class TokenizedCompletions:
    """Prompt and completion token ids, one row per example (completion includes eos)."""

    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]

    def __len__(self) -> int:
        return len(self.prompt_ids)


def tokenize_completions(tokenizer, prompts: list[str], completions: list[str], max_length: int,
                         max_prompt_length: int) -> TokenizedCompletions:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no eos token")
    prompt_ids = [ids[-max_prompt_length:] for ids in _encode(tokenizer, prompts)]
    completion_ids = []
    for p, c in zip(prompt_ids, _encode(tokenizer, completions)):
        completion_ids.append((c + [tokenizer.eos_token_id])[: max_length - len(p)])
    return TokenizedCompletions(prompt_ids, completion_ids)


def pad_completions(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int,
                    device: torch.device | None = None) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids, attention_mask, completion_mask`` and each row's prompt length."""
    lengths = [len(p) + len(c) for p, c in zip(prompt_ids, completion_ids)]
    width = max(lengths)
    input_ids = np.full((len(lengths), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(lengths), width), dtype=np.int64)
    completion = np.zeros((len(lengths), width), dtype=np.int64)
    for row, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[row, : len(p)] = p
        input_ids[row, len(p): len(p) + len(c)] = c
        attention[row, : len(p) + len(c)] = 1
        completion[row, len(p): len(p) + len(c)] = 1
    out = {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "completion_mask": torch.from_numpy(completion),
        "prompt_lengths": torch.tensor([len(p) for p in prompt_ids]),
    }
    return {k: v.to(device) for k, v in out.items()} if device is not None else out


class PairDataset(torch.utils.data.Dataset):
    """Tokenized preference pairs (and, once computed, their reference log-probabilities)."""

    def __init__(self, tokenizer, pairs: pl.DataFrame, max_length: int, max_prompt_length: int):
        prompts = pairs["prompt"].to_list()
        chosen = tokenize_completions(tokenizer, prompts, pairs["chosen"].to_list(), max_length, max_prompt_length)
        rejected = tokenize_completions(tokenizer, prompts, pairs["rejected"].to_list(), max_length, max_prompt_length)
        keep = [i for i in range(len(chosen)) if chosen.completion_ids[i] and rejected.completion_ids[i]]
        if not keep:
            raise ValueError(f"every pair's prompt fills max_length={max_length}: nothing left to score")
        self.dropped = len(chosen) - len(keep)
        self.prompt_ids = [chosen.prompt_ids[i] for i in keep]
        self.chosen_ids = [chosen.completion_ids[i] for i in keep]
        self.rejected_ids = [rejected.completion_ids[i] for i in keep]
        self.label_prob = pairs["label_prob"].to_numpy()[keep].astype(np.float32)
        self.teacher_prob = np.full(len(keep), np.nan, dtype=np.float32)
        self.reference_chosen: np.ndarray | None = None
        self.reference_rejected: np.ndarray | None = None
        self.pad_id = padding_id(tokenizer)
        self.rows = pairs[keep]

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def __getitem__(self, i: int) -> int:
        return i

    def content_hash(self) -> str:
        """A hash of the token ids: changes with the data, the tokenizer or the length limits."""
        h = hashlib.sha256()
        for p, c, r in zip(self.prompt_ids, self.chosen_ids, self.rejected_ids):
            h.update(np.asarray(p, np.int64).tobytes() + b"|" + np.asarray(c, np.int64).tobytes() + b"|"
                     + np.asarray(r, np.int64).tobytes() + b";")
        return h.hexdigest()

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        """Chosen rows first, then rejected rows: one forward pass scores both."""
        prompts = [self.prompt_ids[i] for i in indices]
        batch = pad_completions(prompts + prompts, [self.chosen_ids[i] for i in indices]
                                + [self.rejected_ids[i] for i in indices], self.pad_id)
        batch["indices"] = torch.tensor(indices, dtype=torch.long)
        batch["label_prob"] = torch.from_numpy(self.label_prob[indices])
        batch["teacher_prob"] = torch.from_numpy(self.teacher_prob[indices])
        if self.reference_chosen is not None:
            batch["reference_chosen"] = torch.from_numpy(self.reference_chosen[indices])
            batch["reference_rejected"] = torch.from_numpy(self.reference_rejected[indices])
        return batch


class CompletionDataset(torch.utils.data.Dataset):
    """Tokenized (prompt, response) examples for SFT."""

    def __init__(self, tokenizer, examples: pl.DataFrame, max_length: int, max_prompt_length: int):
        tok = tokenize_completions(tokenizer, examples["prompt"].to_list(), examples["response"].to_list(),
                                   max_length, max_prompt_length)
        keep = [i for i in range(len(tok)) if tok.completion_ids[i]]
        if not keep:
            raise ValueError(f"every prompt fills max_length={max_length}: nothing left to train on")
        self.prompt_ids = [tok.prompt_ids[i] for i in keep]
        self.completion_ids = [tok.completion_ids[i] for i in keep]
        self.pad_id = padding_id(tokenizer)

    def __len__(self) -> int:
        return len(self.prompt_ids)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict[str, torch.Tensor]:
        return pad_completions([self.prompt_ids[i] for i in indices], [self.completion_ids[i] for i in indices],
                               self.pad_id)


class PromptDataset(torch.utils.data.Dataset):
    """Distinct prompts (text and token ids) for the online stages."""

    def __init__(self, tokenizer, prompts: list[str], max_prompt_length: int):
        if not prompts:
            raise ValueError("no prompts")
        self.prompts = prompts
        self.prompt_ids = [ids[-max_prompt_length:] or [tokenizer.bos_token_id or tokenizer.eos_token_id]
                           for ids in _encode(tokenizer, prompts)]

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, indices: list[int]) -> dict[str, Any]:
        return {"indices": torch.tensor(indices)}
