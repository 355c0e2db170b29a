"""The one training loop every language-model stage shares.

An algorithm supplies two methods: ``rollout(model, batch) -> list of minibatches`` (offline
algorithms return ``[batch]``; PPO samples, scores and returns several epochs of minibatches) and
``loss(model, minibatch) -> (loss, metrics)``. The loop does the rest with ``accelerate``: device
placement, gradient accumulation, mixed precision, gradient clipping, a linear warm-up, logging,
evaluation, checkpoints and resume, and it runs unchanged under ``accelerate launch``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import set_seed
from tqdm.auto import tqdm

from ..config import TrainingConfig


class Algorithm(Protocol):
    def rollout(self, model, batch: dict[str, Any]) -> list[dict[str, Any]]: ...

    def loss(self, model, minibatch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]: ...


class EpochPermutationSampler(torch.utils.data.Sampler):
    """A fresh permutation each epoch from ``seed + epoch``: the same order on every process and
    after a resume."""

    def __init__(self, n: int, seed: int, shuffle: bool = True):
        self.n, self.seed, self.shuffle, self.epoch = n, seed, shuffle, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.n))
        return iter(np.random.default_rng(self.seed + self.epoch).permutation(self.n).tolist())

    def __len__(self) -> int:
        return self.n


def make_accelerator(config: TrainingConfig) -> Accelerator:
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise ValueError("mixed_precision 'fp16' needs a GPU; use 'bf16' or 'no' on CPU")
    # split_batches: ``batch_size`` is the global batch, cut across processes, so a run under
    # ``accelerate launch --num_processes N`` takes the same optimizer steps as one process.
    return Accelerator(mixed_precision=config.mixed_precision,
                       gradient_accumulation_steps=config.gradient_accumulation_steps,
                       dataloader_config=DataLoaderConfiguration(split_batches=True))


def move_to(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _latest_checkpoint(output_dir: Path) -> Path | None:
    found = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def train(
    model: torch.nn.Module,
    algorithm: Algorithm,
    dataset: torch.utils.data.Dataset,
    config: TrainingConfig,
    accelerator: Accelerator | None = None,
    eval_dataset: torch.utils.data.Dataset | None = None,
    resume: bool | str | Path = False,
    description: str = "train",
) -> tuple[torch.nn.Module, pl.DataFrame]:
    """Train ``model`` with ``algorithm`` on ``dataset``; return the (unwrapped) model and a
    history frame (one row per logged optimizer step). ``resume=True`` continues from the latest
    checkpoint in ``config.output_dir`` (a path picks one)."""
    accelerator = accelerator or make_accelerator(config)
    set_seed(config.seed)
    output_dir = Path(config.output_dir)
    collate = dataset.collate
    sampler = EpochPermutationSampler(len(dataset), config.seed)
    loader = torch.utils.data.DataLoader(dataset, batch_size=config.batch_size, sampler=sampler, collate_fn=collate)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    warmup = config.warmup_steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / (warmup + 1)) if warmup else 1.0)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    eval_loader = None
    if eval_dataset is not None and len(eval_dataset):
        eval_loader = accelerator.prepare(torch.utils.data.DataLoader(
            eval_dataset, batch_size=config.batch_size, sampler=EpochPermutationSampler(len(eval_dataset), 0, False),
            collate_fn=eval_dataset.collate))

    batches_per_epoch = len(loader)
    steps_per_epoch = max(1, math.ceil(batches_per_epoch / config.gradient_accumulation_steps))
    total_steps = config.max_steps or config.num_epochs * steps_per_epoch
    step, start_epoch, skip_batches = 0, 0, 0
    history: list[dict[str, Any]] = []
    if resume:
        checkpoint = Path(resume) if not isinstance(resume, bool) else _latest_checkpoint(output_dir)
        if checkpoint is None:
            raise FileNotFoundError(f"no checkpoint to resume from in {output_dir}")
        accelerator.load_state(str(checkpoint))
        state = json.loads((checkpoint / "loop_state.json").read_text())
        step, start_epoch, skip_batches = state["step"], state["epoch"], state["batches_done"]
        history = state["history"]

    progress = tqdm(total=total_steps, initial=step, desc=description,
                    disable=not (config.progress and accelerator.is_main_process))
    running: dict[str, list[float]] = {}
    model.train()
    epoch = start_epoch
    done = step >= total_steps
    while not done:
        sampler.set_epoch(epoch)
        epoch_loader = accelerator.skip_first_batches(loader, skip_batches) if skip_batches else loader
        batches_done = skip_batches
        skip_batches = 0
        for batch in epoch_loader:
            batches_done += 1
            for minibatch in algorithm.rollout(model, batch):
                with accelerator.accumulate(model):
                    loss, metrics = algorithm.loss(model, minibatch)
                    accelerator.backward(loss)
                    if accelerator.sync_gradients:
                        grad_norm = accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
                        metrics = {**metrics, "grad_norm": grad_norm}
                    optimizer.step()
                    scheduler.step()
                    optimizer.zero_grad(set_to_none=True)
                for name, value in {"loss": loss, **metrics}.items():
                    value = torch.as_tensor(value, dtype=torch.float32, device=accelerator.device).detach().mean()
                    running.setdefault(name, []).append(value)
                if not accelerator.sync_gradients:
                    continue
                step += 1
                progress.update(1)
                if step % config.log_every == 0 or step == total_steps:
                    row = {"step": step, "epoch": epoch, "learning_rate": scheduler.get_last_lr()[0]}
                    for name, values in running.items():
                        row[name] = accelerator.reduce(torch.stack(values).mean(), reduction="mean").item()
                    running = {}
                    history.append(row)
                    progress.set_postfix(loss=f"{row['loss']:.4f}")
                if eval_loader is not None and config.eval_every and step % config.eval_every == 0:
                    history.append({"step": step, "epoch": epoch, **evaluate(model, algorithm, eval_loader, accelerator)})
                    model.train()
                if config.checkpoint_every and step % config.checkpoint_every == 0:
                    _save_checkpoint(accelerator, output_dir / f"checkpoint-{step}", step, epoch, batches_done, history)
                if step >= total_steps:
                    done = True
                    break
            if done:
                break
        epoch += 1
    progress.close()
    if eval_loader is not None:
        history.append({"step": step, "epoch": epoch, **evaluate(model, algorithm, eval_loader, accelerator)})
    accelerator.wait_for_everyone()
    return accelerator.unwrap_model(model), pl.DataFrame(history, infer_schema_length=None)


@torch.no_grad()
def evaluate(model, algorithm: Algorithm, loader, accelerator: Accelerator) -> dict[str, float]:
    """Mean of the algorithm's loss and metrics over a held-out loader, prefixed ``eval_``."""
    model.eval()
    sums: dict[str, list[torch.Tensor]] = {}
    for batch in loader:
        for minibatch in algorithm.rollout(model, batch):
            loss, metrics = algorithm.loss(model, minibatch)
            for name, value in {"loss": loss, **metrics}.items():
                sums.setdefault(name, []).append(torch.as_tensor(value, dtype=torch.float32, device=accelerator.device).mean())
    return {f"eval_{k}": accelerator.reduce(torch.stack(v).mean(), reduction="mean").item() for k, v in sums.items()}


def _save_checkpoint(accelerator: Accelerator, path: Path, step: int, epoch: int, batches_done: int,
                     history: list[dict[str, Any]]) -> None:
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        (path / "loop_state.json").write_text(json.dumps(
            {"step": step, "epoch": epoch, "batches_done": batches_done, "history": history}))
    accelerator.wait_for_everyone()
