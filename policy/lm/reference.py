"""Reference log-probabilities, computed once and cached on disk.

The cache key is the version hash (when the data came from a store version), a hash of the
token ids (so another tokenizer or other length limits never reuse a stale entry) and a
fingerprint of the reference model's weights and config.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from safetensors.numpy import load_file, save_file

from .data import PairDataset
from .logprobs import completion_log_probs


def model_fingerprint(model: torch.nn.Module) -> str:
    """sha256 of the model's config and every parameter and buffer (name, dtype, shape, bytes)."""
    h = hashlib.sha256()
    config = getattr(model, "config", None)
    if config is not None:
        h.update(config.to_json_string(use_diff=False).encode())
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def cache_key(version_hash: str | None, dataset: PairDataset, reference_fingerprint: str) -> str:
    parts = json.dumps([version_hash, dataset.content_hash(), reference_fingerprint])
    return hashlib.sha256(parts.encode()).hexdigest()[:32]


@torch.no_grad()
def compute_reference_log_probs(reference: torch.nn.Module, dataset: PairDataset, batch_size: int,
                                device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """log pi_ref(chosen | prompt) and log pi_ref(rejected | prompt) for every pair, in order."""
    was_training = reference.training
    reference.eval()
    chosen, rejected = [], []
    for start in range(0, len(dataset), batch_size):
        idx = list(range(start, min(start + batch_size, len(dataset))))
        batch = {k: v.to(device) for k, v in dataset.collate(idx).items()}
        logps = completion_log_probs(reference, batch).float().cpu().numpy()
        chosen.append(logps[: len(idx)])
        rejected.append(logps[len(idx):])
    reference.train(was_training)
    return np.concatenate(chosen), np.concatenate(rejected)


def attach_reference_log_probs(dataset: PairDataset, reference: torch.nn.Module, cache_dir: str | Path | None,
                               version_hash: str | None, batch_size: int, accelerator=None) -> dict[str, object]:
    """Fill ``dataset.reference_chosen/rejected`` from the cache or compute and store them.

    Under several processes the main process computes and writes first; the others read.
    Returns ``{"key", "path", "cached"}``.
    """
    fingerprint = model_fingerprint(reference)
    key = cache_key(version_hash, dataset, fingerprint)
    path = Path(cache_dir) / f"reference-logps-{key}.safetensors" if cache_dir is not None else None
    device = accelerator.device if accelerator is not None else next(reference.parameters()).device

    def load_or_compute() -> bool:
        if path is not None and path.is_file():
            data = load_file(str(path))
            if len(data["chosen"]) == len(dataset):
                dataset.reference_chosen, dataset.reference_rejected = data["chosen"], data["rejected"]
                return True
        reference.to(device)
        chosen, rejected = compute_reference_log_probs(reference, dataset, batch_size, device)
        dataset.reference_chosen, dataset.reference_rejected = chosen.astype(np.float32), rejected.astype(np.float32)
        if path is not None and (accelerator is None or accelerator.is_main_process):
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"chosen": dataset.reference_chosen, "rejected": dataset.reference_rejected}, str(tmp),
                      metadata={"version_hash": str(version_hash), "reference": fingerprint})
            tmp.replace(path)  # atomic: a crash never leaves a half-written cache entry
        return False

    if accelerator is not None:
        with accelerator.main_process_first():
            cached = load_or_compute()
    else:
        cached = load_or_compute()
    return {"key": key, "path": str(path) if path else None, "cached": cached}
