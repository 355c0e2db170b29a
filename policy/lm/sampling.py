"""Sampling completions, optionally from the geometric mixture of two models (Nash-MD).

Prompts are left-padded with explicit position ids and a KV cache; sampling stops at eos or
``max_new_tokens``. Returned completions are token lists (ending with eos when one was drawn);
every log-probability used for training is recomputed by a right-padded forward pass, so the
sampler never has to agree with the scorer on padding.
"""

from __future__ import annotations

import torch


def _step_log_probs(logits: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.log_softmax(logits, dim=-1)


@torch.no_grad()
def sample_completions(model, prompt_ids: list[list[int]], max_new_tokens: int, eos_id: int, pad_id: int,
                       temperature: float = 1.0, top_k: int = 0, mixture_model=None, mixture_coef: float = 0.0,
                       generator: torch.Generator | None = None) -> list[list[int]]:
    """Sample one completion per prompt from ``model``, or, with ``mixture_model``, from the
    token-level geometric mixture ``pi^(1 - c) * pi_mix^c`` (normalized per token), as in Nash-MD."""
    device = next(model.parameters()).device
    n, width = len(prompt_ids), max(len(p) for p in prompt_ids)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long, device=device)
    attention = torch.zeros((n, width), dtype=torch.long, device=device)
    for row, ids in enumerate(prompt_ids):
        input_ids[row, width - len(ids):] = torch.tensor(ids, device=device)
        attention[row, width - len(ids):] = 1
    models = [model] + ([mixture_model] if mixture_model is not None else [])
    states = [m.training for m in models]
    for m in models:
        m.eval()
    caches = [None] * len(models)
    position = (attention.cumsum(-1) - 1).clamp(min=0)
    step_input = input_ids
    finished = torch.zeros(n, dtype=torch.bool, device=device)
    out = torch.full((n, max_new_tokens), pad_id, dtype=torch.long, device=device)
    for t in range(max_new_tokens):
        log_probs = []
        for i, m in enumerate(models):
            result = m(input_ids=step_input, attention_mask=attention, position_ids=position,
                       past_key_values=caches[i], use_cache=True)
            caches[i] = result.past_key_values
            log_probs.append(_step_log_probs(result.logits[:, -1], temperature, top_k))
        mixed = log_probs[0] if len(log_probs) == 1 else (1 - mixture_coef) * log_probs[0] + mixture_coef * log_probs[1]
        probs = torch.softmax(mixed, dim=-1)
        token = torch.multinomial(probs, 1, generator=generator).squeeze(-1)
        token = torch.where(finished, torch.full_like(token, pad_id), token)
        out[:, t] = token
        finished |= token == eos_id
        if finished.all():
            out = out[:, : t + 1]
            break
        step_input = token[:, None]
        attention = torch.cat([attention, (~finished | (token == eos_id)).long()[:, None]], dim=1)
        position = position[:, -1:] + 1
    for m, state in zip(models, states):
        m.train(state)
    completions = []
    for row in out.tolist():
        if eos_id in row:
            row = row[: row.index(eos_id) + 1]
        else:
            row = [tok for tok in row]  # no eos within max_new_tokens
        completions.append(row)
    return completions


def decode_completions(tokenizer, completions: list[list[int]]) -> list[str]:
    return tokenizer.batch_decode(completions, skip_special_tokens=True)
