"""Log-probabilities of completions under a causal LM, computing logits only where they are scored."""

from __future__ import annotations

import torch


def selective_log_softmax(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``log_softmax(logits).gather(-1, index)`` without keeping the full log-softmax tensor."""
    logits = logits.float()
    return torch.gather(logits, -1, index.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def completion_token_log_probs(model, batch: dict[str, torch.Tensor], return_hidden: bool = False):
    """Per-token log pi(token | prefix) for the completion tokens of a right-padded batch.

    Only the last ``T - min(prompt_length) + 1`` positions get logits (``logits_to_keep``), so a
    long shared prompt costs no vocabulary projection. Returns ``(log_probs, mask)`` of shape
    (B, K) aligned so that ``log_probs[:, j]`` scores ``input_ids[:, T - K + j]``; with
    ``return_hidden`` also the last hidden states at the positions that predict them.
    """
    input_ids, attention_mask, completion_mask = batch["input_ids"], batch["attention_mask"], batch["completion_mask"]
    width = input_ids.shape[1]
    if "score_from" in batch:  # fixed by the caller so minibatches of one rollout stay aligned
        first = int(batch["score_from"])
    else:
        first = int(batch["prompt_lengths"].min()) if "prompt_lengths" in batch else 1
    first = max(first, 1)
    keep = width - first + 1
    outputs = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep, use_cache=False,
                    output_hidden_states=return_hidden)
    logits = outputs.logits[:, :-1]  # predicts positions first .. T-1
    targets = input_ids[:, first:]
    mask = completion_mask[:, first:].to(logits.dtype if logits.is_floating_point() else torch.float32)
    log_probs = selective_log_softmax(logits, targets) * mask
    if return_hidden:
        hidden = outputs.hidden_states[-1][:, first - 1: width - 1]
        return log_probs, mask.float(), hidden
    return log_probs, mask.float()


def completion_log_probs(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sum of the completion's token log-probabilities, one per row: log pi(y | x)."""
    log_probs, _ = completion_token_log_probs(model, batch)
    return log_probs.sum(-1)
