"""DPO throughput: policy.lm.DPO against TRL's DPOTrainer, side by side in one process.

Same tiny model (same initial weights), same pairs, batch size, lengths, learning rate and number
of steps; both with reference log-probs precomputed (that pass is not timed). Prints steps/s,
peak memory (CUDA: max allocated; CPU: peak RSS growth sampled during training), the loss curve
summary and the ratio. Pairs come from HH-RLHF (``../shared/data``) when present, else synthetic.

    python benchmarks/dpo.py [--steps 40] [--batch-size 8] [--max-length 64] [--hidden 64]
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import polars as pl
import psutil
import torch

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hh_rlhf_harmless_base_test" / "test.jsonl.gz"


def load_pairs(n: int, seed: int = 0) -> pl.DataFrame:
    if DATA.is_file():
        rows = []
        with gzip.open(DATA, "rt", encoding="utf-8") as f:
            for line in f:
                r = json.loads(line)
                cut = r["chosen"].rfind("\n\nAssistant:") + len("\n\nAssistant:")
                if r["rejected"][:cut] != r["chosen"][:cut]:
                    continue
                prompt = r["chosen"][:cut][-120:]
                rows.append((prompt, r["chosen"][cut:][:120], r["rejected"][cut:][:120]))
                if len(rows) == n:
                    break
        source = "hh-rlhf harmless-base (truncated to 120 chars)"
    else:
        rng = np.random.default_rng(seed)
        words = "good bad great awful nice poor fine meh yes no maybe".split()
        rows = [(f"Question {i}:", " " + " ".join(rng.choice(words, 6)), " " + " ".join(rng.choice(words, 6))) for i in range(n)]
        source = "synthetic"
    frame = pl.DataFrame(rows, schema=["prompt", "chosen", "rejected"], orient="row")
    print(f"pairs: {frame.height} from {source}")
    return frame


class PeakMemory:
    """Peak memory growth during a block: CUDA max allocated, or sampled process RSS on CPU."""

    def __init__(self, device: str):
        self.device, self.peak, self._stop = device, 0, threading.Event()

    def __enter__(self):
        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.proc = psutil.Process(os.getpid())
            self.base = self.proc.memory_info().rss
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss - self.base)
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device == "cuda":
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self._stop.set()
            self.thread.join()


def run_ours(model, tokenizer, pairs, args, device, out):
    from policy.config import DPOConfig
    from policy.lm.data import PairDataset
    from policy.lm.loop import make_accelerator, train
    from policy.lm.reference import attach_reference_log_probs
    from policy.lm.stages import DirectPreferenceOptimization, _disable_dropout, _frozen_copy

    cfg = DPOConfig(output_dir=out, max_steps=args.steps, batch_size=args.batch_size, learning_rate=args.lr, beta=0.1,
                    max_length=args.max_length, max_prompt_length=args.max_length - 1, progress=False, log_every=1,
                    mixed_precision="bf16" if device == "cuda" and args.bf16 else "no")
    with_labels = pairs.with_columns(pl.lit(1.0).alias("label_prob"))
    dataset = PairDataset(tokenizer, with_labels, cfg.max_length, cfg.max_prompt_length)
    _disable_dropout(model)
    accelerator = make_accelerator(cfg)
    attach_reference_log_probs(dataset, _frozen_copy(model), None, None, 32, accelerator)
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        _, history = train(model, DirectPreferenceOptimization(0.1, "sigmoid"), dataset, cfg, accelerator=accelerator)
        if device == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
    return {"steps_per_s": args.steps / elapsed, "peak_mb": mem.peak / 2**20, "losses": history["loss"].to_numpy()}


def run_trl(model, tokenizer, pairs, args, device, out):
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class Timer(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            if device == "cuda":
                torch.cuda.synchronize()
            self.elapsed = time.perf_counter() - self.start

    config = DPOConfig(output_dir=out, max_steps=args.steps, per_device_train_batch_size=args.batch_size,
                       learning_rate=args.lr, beta=0.1, max_length=args.max_length, precompute_ref_log_probs=True,
                       logging_steps=1, report_to=[], save_strategy="no", disable_dropout=True, lr_scheduler_type="constant",
                       bf16=device == "cuda" and args.bf16, use_cpu=device == "cpu", dataloader_num_workers=0, seed=0,
                       max_grad_norm=1.0, weight_decay=0.0, disable_tqdm=True)
    timer = Timer()
    trainer = DPOTrainer(model=model, args=config, train_dataset=Dataset.from_polars(pairs), processing_class=tokenizer,
                         callbacks=[timer])
    from transformers.trainer_callback import PrinterCallback

    trainer.remove_callback(PrinterCallback)  # its per-step prints would be timed too
    with PeakMemory(device) as mem:
        trainer.train()
    losses = np.array([h["loss"] for h in trainer.state.log_history if "loss" in h])
    return {"steps_per_s": args.steps / timer.elapsed, "peak_mb": mem.peak / 2**20, "losses": losses}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--pairs", type=int, default=320)
    parser.add_argument("--lr", type=float, default=5e-4)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--repeats", type=int, default=1, help="alternate the two this many times; report the best")
    args = parser.parse_args()

    from policy.lm.tiny import tiny_causal_lm, train_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    pairs = load_pairs(args.pairs)
    tokenizer = train_tokenizer(pairs["prompt"].to_list() + pairs["chosen"].to_list() + pairs["rejected"].to_list(), 1000)
    base = tiny_causal_lm(tokenizer, hidden_size=args.hidden, n_layers=args.layers, n_heads=4,
                          max_positions=max(128, args.max_length), seed=0)
    print(f"device={device} torch={torch.__version__} threads={torch.get_num_threads()} model: hidden={args.hidden} "
          f"layers={args.layers} vocab={len(tokenizer)} | batch={args.batch_size} max_length={args.max_length} steps={args.steps}")
    results: dict[str, list[dict]] = {"ours": [], "trl": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.repeats):
            for name, fn in (("trl", run_trl), ("ours", run_ours)):
                torch.manual_seed(0)
                model = copy.deepcopy(base).to(device)
                results[name].append(fn(model, tokenizer, pairs, args, device, f"{tmp}/{name}{r}"))
    best = {k: max(v, key=lambda x: x["steps_per_s"]) for k, v in results.items()}
    rows = []
    for name, res in best.items():
        losses = res["losses"]
        rows.append({"trainer": name, "steps_per_s": round(res["steps_per_s"], 2), "peak_mem_mb": round(res["peak_mb"], 1),
                     "loss_first": round(float(losses[0]), 4), "loss_last10_mean": round(float(losses[-10:].mean()), 4)})
    frame = pl.DataFrame(rows)
    with pl.Config(tbl_hide_dataframe_shape=True, tbl_width_chars=140):
        print(frame)
    ratio = best["ours"]["steps_per_s"] / best["trl"]["steps_per_s"]
    diff = abs(float(best["ours"]["losses"][-10:].mean() - best["trl"]["losses"][-10:].mean()))
    print(f"throughput ratio ours/TRL: {ratio:.2f}x | |last-10 mean loss difference|: {diff:.4f}")


if __name__ == "__main__":
    main()
