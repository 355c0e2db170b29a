"""The full diagnostics report on 1M labels from 10,000 annotators: time of each diagnostic, peak memory.

    python benchmarks/diagnostics.py                      # 1,000,000 labels, 10,000 annotators
    python benchmarks/diagnostics.py --labels 200000      # smaller

The labels come from the simulator (50% more prompts than pairs / 3 labels a pair, 4 responses a
prompt, 5% spammers, 5% adversaries, 5% flips, 10% repeats, 5% gold). The target: the whole
report (every diagnostic, plots, HTML, tables, metrics) in under 30 s and under 4 GB. Peers on
the same data, side by side: Krippendorff's alpha from the ``krippendorff`` package, and
crowd-kit's NoisyBradleyTerry worker skills (on a subset: it is much slower).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


class PeakRSS:
    """Sample the process's resident memory in a thread (polars and numpy allocate outside Python)."""

    def __init__(self, every: float = 0.05):
        import psutil

        self.proc = psutil.Process(os.getpid())
        self.every = every
        self.peak = self.proc.memory_info().rss
        self._stop = threading.Event()

    def __enter__(self) -> "PeakRSS":
        self.start = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.every)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--labels", type=int, default=1_000_000)
    ap.add_argument("--annotators", type=int, default=10_000)
    ap.add_argument("--peer-labels", type=int, default=20_000, help="labels for the crowd-kit peer (0: skip)")
    ap.add_argument("--out", default=None, help="report folder (default: a temporary one)")
    args = ap.parse_args()

    from workbench.diagnostics import build_report
    from workbench.simulate import SimulationConfig, simulate

    k = 3
    n_pairs = int(round(args.labels / k / (1 + 0.1) / (1 + 0.05 / k)))
    cfg = SimulationConfig(
        n_prompts=max(1, n_pairs // 3), responses_per_prompt=4, n_pairs=n_pairs, labels_per_pair=k, n_annotators=args.annotators,
        spammer_share=0.05, adversarial_share=0.05, flip_rate=0.05, repeat_rate=0.1, gold_rate=0.05, temperature_spread=0.3, seed=0,
    )
    t = time.perf_counter()
    sim = simulate(cfg)
    frame = sim.comparisons()
    print(f"simulated {frame.height:,} labels from {args.annotators:,} annotators, {frame['prompt_id'].n_unique():,} prompts, "
          f"{sim.candidates.height:,} responses in {time.perf_counter() - t:.1f} s")
    truth_annotators, truth_labels = sim.truth_annotators, sim.truth_labels
    del sim

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="wb-diag-bench-"))
    with PeakRSS() as mem:
        t = time.perf_counter()
        rep = build_report(frame, out)
        total = time.perf_counter() - t
    print(f"\nfull report: {total:.1f} s (target < 30 s); peak resident memory {mem.peak / 2**30:.2f} GiB "
          f"(at start {mem.start / 2**30:.2f} GiB; target < 4 GiB); written to {out}")
    print("time of each step (s):")
    for name, secs in sorted(rep.timings.items(), key=lambda kv: -kv[1]):
        if name != "total":
            print(f"  {secs:7.2f}  {name}")
    m = rep.metrics
    print(f"\nfigures: Krippendorff's alpha {m['agreement']['krippendorff_alpha']:.3f}, Fleiss' kappa {m['agreement']['fleiss_kappa']:.3f}, "
          f"estimated flip rate {m['noise']['flip_rate']:.3f}, flagged annotators {m['noise']['flagged_annotators']:,}")
    print(rep.summary(n=6))

    # scored against the simulator's truth
    import polars as pl
    from sklearn.metrics import roc_auc_score

    a = rep.noise.annotators.join(truth_annotators.select("annotator_id", "kind"), on="annotator_id").filter(pl.col("kind") != "gold")
    bad = a["kind"].is_in(["spammer", "adversarial"]).to_numpy()
    rel = a["reliability"].to_numpy()
    sus = rep.noise.suspects.join(truth_labels.select("comparison_id", "correct"), on="comparison_id")
    print(f"against the truth: reliability ranks spammers/adversaries below honest annotators with ROC AUC "
          f"{roc_auc_score(bad, -rel):.4f} (worst honest {rel[~bad].min():.3f}, best spammer/adversary {rel[bad].max():.3f}); "
          f"flip posteriors find wrong labels with ROC AUC {roc_auc_score(~sus['correct'].to_numpy(), sus['flip_posterior'].to_numpy()):.4f}; "
          f"estimated flip rate {rep.noise.flip_rate:.4f} vs true share of decisive labels against the true order {1 - sus['correct'].mean():.4f}")

    # peers on the same data
    import krippendorff

    from workbench.diagnostics import noise

    counts = noise.unit_counts(rep.noise.model.coded_)
    t = time.perf_counter()
    ours = noise.krippendorff_alpha_nominal(counts)
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = krippendorff.alpha(value_counts=counts, level_of_measurement="nominal")
    t_ref = time.perf_counter() - t
    print(f"\nKrippendorff's alpha from {counts.shape[0]:,} unit counts: ours {ours:.6f} in {t_ours * 1000:.1f} ms, "
          f"krippendorff package {ref:.6f} in {t_ref * 1000:.1f} ms (ratio {t_ref / max(t_ours, 1e-9):.1f}x)")
    if args.peer_labels:
        import warnings

        import polars as pl
        from crowdkit.aggregation import NoisyBradleyTerry

        from workbench.diagnostics.reliability import PairDawidSkene

        sub = frame.head(args.peer_labels)
        t = time.perf_counter()
        PairDawidSkene().fit(sub)
        t_ours = time.perf_counter() - t
        d = sub.filter(pl.col("label").is_in(["a", "b"])).select(
            pl.col("annotator_id").alias("worker"), pl.col("response_a_id").alias("left"), pl.col("response_b_id").alias("right"),
            pl.when(pl.col("label") == "a").then(pl.col("response_a_id")).otherwise(pl.col("response_b_id")).alias("label")).to_pandas()
        t = time.perf_counter()
        with warnings.catch_warnings(), np.errstate(all="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)
            NoisyBradleyTerry(n_iter=100, random_state=0).fit(d)
        t_nbt = time.perf_counter() - t
        print(f"reliability model on the first {sub.height:,} labels: ours (Dawid-Skene on pairs + out-of-fold BT) {t_ours:.2f} s, "
              f"crowd-kit NoisyBradleyTerry {t_nbt:.2f} s (ratio {t_nbt / t_ours:.1f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
