"""5-fold held-out log-likelihood of rm.choice models on the LLMFAO crowd votes.

LLMFAO (dustalov/llmfao, CC BY 4.0): 8,931 crowd votes on 2,139 pairs of 59 models' outputs,
124 workers, 39% ties; ``model_x`` was always shown on the left.  Votes are split into 5 folds
(shuffled, seed 0).  Two held-out scores per model, as mean log-likelihood per vote:

* ``ll_3way``: of the observed outcome among (a, tie, b) - only models with a tie parameter
  assign ties a probability;
* ``ll_decisive``: of the winner on the non-tie votes, ``P(a) / (P(a) + P(b))``, comparable
  across every model (plain Bradley-Terry included);

plus the accuracy of the more likely winner on decisive votes.  Reads
``<repo>/../shared/data/llmfao_crowd/crowd-comparisons.csv``.

    python benchmarks/choice_llmfao_cv.py [--folds 5] [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rm.choice import AnnotatorBradleyTerry, BradleyTerry, Davidson, RaoKupper, Thurstone  # noqa: E402

DATA = ROOT / ".." / "shared" / "data" / "llmfao_crowd" / "crowd-comparisons.csv"

MODELS = {
    "Bradley-Terry (ties = half win)": lambda: BradleyTerry(ties="half"),
    "Bradley-Terry (ties dropped)": lambda: BradleyTerry(ties="drop"),
    "Thurstone (ties = half win)": lambda: Thurstone(ties="half"),
    "Davidson": lambda: Davidson(),
    "Rao-Kupper": lambda: RaoKupper(),
    "Rao-Kupper probit (Glenn-David)": lambda: RaoKupper(link="probit"),
    "Bradley-Terry + position": lambda: BradleyTerry(ties="half", position_effect=True),
    "Davidson + position": lambda: Davidson(position_effect=True),
    "Rao-Kupper + position": lambda: RaoKupper(position_effect=True),
    "Annotator BT (ties = half win)": lambda: AnnotatorBradleyTerry(ties="half"),
    "Annotator Davidson": lambda: AnnotatorBradleyTerry(ties="davidson"),
    "Annotator Rao-Kupper": lambda: AnnotatorBradleyTerry(ties="rao-kupper"),
    "Annotator Rao-Kupper + position": lambda: AnnotatorBradleyTerry(ties="rao-kupper", position_effect=True),
}

TIE_MODELS = ("davidson", "rao-kupper")


def load() -> pl.DataFrame:
    raw = pl.read_csv(DATA)
    return raw.select(
        pl.col("left").alias("model_a"),
        pl.col("right").alias("model_b"),
        pl.col("winner").replace_strict({"left": "a", "right": "b", "tie": "tie"}).alias("label"),
        pl.lit("a").alias("shown_left"),
        pl.col("worker").cast(pl.String).alias("annotator_id"),
    )


def cross_validate(frame: pl.DataFrame, folds: int, seed: int) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    fold_of = rng.permutation(np.arange(frame.height) % folds)
    rows = []
    for name, make in MODELS.items():
        ll3, lld, acc, n3, nd = 0.0, 0.0, 0.0, 0, 0
        t0 = time.perf_counter()
        for k in range(folds):
            train = frame.filter(pl.Series(fold_of != k))
            test = frame.filter(pl.Series(fold_of == k))
            # a model seen only in the held-out fold cannot be scored: drop those votes
            seen = set(train["model_a"]) | set(train["model_b"])
            test = test.filter(pl.col("model_a").is_in(list(seen)) & pl.col("model_b").is_in(list(seen)))
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                model = make().fit(train)
            p = model.predict_comparisons(test).to_numpy()
            lab = test["label"].to_numpy()
            decisive = lab != "tie"
            pa, pb = p[decisive, 0], p[decisive, 2]
            win = np.where(lab[decisive] == "a", pa, pb) / (pa + pb)
            lld += float(np.sum(np.log(win)))
            acc += float(np.sum(win > 0.5))
            nd += int(decisive.sum())
            if model.ties in TIE_MODELS:
                picked = np.where(lab == "a", p[:, 0], np.where(lab == "tie", p[:, 1], p[:, 2]))
                ll3 += float(np.sum(np.log(picked)))
                n3 += len(lab)
        rows.append({
            "model": name,
            "ll_3way": ll3 / n3 if n3 else None,
            "ll_decisive": lld / nd,
            "accuracy_decisive": acc / nd,
            "seconds": time.perf_counter() - t0,
        })
    return pl.DataFrame(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not DATA.exists():
        print(f"LLMFAO data not found at {DATA}; nothing to do")
        return 1
    frame = load()
    print(f"LLMFAO: {frame.height} votes, {frame['annotator_id'].n_unique()} workers, "
          f"{(frame['label'] == 'tie').mean():.1%} ties; {args.folds}-fold CV, seed {args.seed}")
    table = cross_validate(frame, args.folds, args.seed)
    with pl.Config(tbl_rows=-1, tbl_width_chars=140, float_precision=4, fmt_str_lengths=40,
                   tbl_hide_dataframe_shape=True):
        print(table)
    print("ll_* are mean held-out log-likelihoods per vote (higher is better); a uniform guess "
          f"scores {np.log(1 / 3):.4f} (3-way) and {np.log(1 / 2):.4f} (decisive).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
