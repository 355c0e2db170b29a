"""Held-out accuracy of the reward models on HH-RLHF harmless-base (test file, 2,312 pairs).

Fixed, seeded 80/20 split by prompt (seed 0). Rows with an empty response are removed first
(reported). Models:
  - feature reward model, hashing TF-IDF, C chosen by 3-fold CV on the training split;
  - feature reward model, all-MiniLM-L6-v2 embeddings, C chosen the same way;
  - fine-tuned MiniLM reward model (AutoModelForSequenceClassification, Bradley-Terry), CPU.

    python benchmarks/rm_hh_rlhf_eval.py [--skip-neural] [--neural-pairs N] [--epochs E]
        [--max-length L] [--batch-size B] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--skip-neural", action="store_true")
    parser.add_argument("--skip-features", action="store_true")
    parser.add_argument("--neural-pairs", type=int, default=None, help="train the neural model on the first N training pairs")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "hh_rlhf"))
    args = parser.parse_args(argv)

    import polars as pl

    from rm._hh_rlhf import hh_rlhf_data_dir, load_hh_rlhf
    from rm.evaluate import evaluate_preferences
    from rm.pairs import train_test_split

    if not hh_rlhf_data_dir().exists():
        print(f"HH-RLHF data not found at {hh_rlhf_data_dir()}; nothing to do")
        return 1
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    frame = load_hh_rlhf()
    nonempty = (pl.col("response_a").str.strip_chars() != "") & (pl.col("response_b").str.strip_chars() != "")
    n_all = frame.height
    frame = frame.filter(nonempty)
    train, test = train_test_split(frame, test_fraction=0.2, seed=0)
    print(f"HH-RLHF harmless-base test: {n_all} rows, {n_all - frame.height} with an empty response removed; "
          f"split 80/20 (seed 0): {train.height} train / {test.height} held-out pairs")
    results = []

    def report(name, model, settings, seconds):
        ev = evaluate_preferences(model, test)
        m = ev.metrics()
        ev.plot_reliability(out / f"reliability_{name}.png", title=f"{name}: acc {m['accuracy']:.3f}, ECE {m['ece']:.3f}")
        row = {"model": name, "heldout_accuracy": m["accuracy"], "log_loss": m["log_loss"], "ece": m["ece"],
               "fit_seconds": round(seconds, 1), "settings": json.dumps(settings)}
        results.append(row)
        print(f"{name:28s} held-out accuracy {m['accuracy']:.4f}  log loss {m['log_loss']:.4f}  "
              f"ECE {m['ece']:.4f}  ({seconds:.0f} s)  {settings}")

    if not args.skip_features:
        from rm.features import FeatureRewardModel

        for encoder, Cs in (("tfidf", (1.0, 3.0, 10.0, 30.0)), ("minilm", (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 1e-1))):
            t = time.perf_counter()
            model = FeatureRewardModel(encoder=encoder, C="cv", Cs=Cs, interaction=False,
                                       cache_dir=str(out / "embedding_cache")).fit(train)
            report(f"feature-{encoder}", model, {"C": model.C_, "Cs": list(Cs), "features": "e(y), log length"},
                   time.perf_counter() - t)

    if not args.skip_neural:
        from rm.neural import NeuralRewardModel

        neural_train = train.head(args.neural_pairs) if args.neural_pairs else train
        settings = {"backbone": "all-MiniLM-L6-v2", "pairs": neural_train.height, "epochs": args.epochs,
                    "max_length": args.max_length, "batch_size": args.batch_size, "lr": args.learning_rate,
                    "precision": "fp32", "device": "cpu"}
        t = time.perf_counter()
        model = NeuralRewardModel(max_length=args.max_length, batch_size=args.batch_size, epochs=args.epochs,
                                  learning_rate=args.learning_rate, eval_fraction=0.0,
                                  output_dir=str(out / "neural_minilm")).fit(neural_train)
        settings["truncated_sequences"] = model.truncation_["n_truncated"]
        report("neural-minilm", model, settings, time.perf_counter() - t)

    table = pl.DataFrame(results)
    table.write_csv(out / "heldout_accuracy.csv")
    print(table.select("model", "heldout_accuracy", "log_loss", "ece", "fit_seconds"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
