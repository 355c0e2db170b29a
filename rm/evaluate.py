"""Evaluation of reward / preference models on a version: accuracy, log loss, calibration.

`evaluate_preferences(model, data)` returns a `PreferenceEvaluation` whose tables are polars
frames: `summary` (one row of metrics), `reliability` (calibration bins), `by_category`
(accuracy per prompt category) and `majority` (agreement with the annotator majority where
several annotators labelled the same pair). `plot_reliability(path)` writes a PNG.

Conventions: the model's p = P(response_a > response_b). Ties and both_bad rows are left out of
accuracy, log loss and calibration (they are counted in the summary). A prediction of exactly
0.5 counts as half right. ECE is the expected calibration error of P(a > b) over `n_bins`
equal-width bins: sum_b (n_b / n) |mean p_b - frequency of "a" in b|, computed over both
orientations of every pair ((p, y) and (1 - p, 1 - y)) so that it does not depend on which
response a data set happens to put on side a (HH-RLHF imports put every chosen response on a).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from rm.pairs import comparisons_frame, version_hash


def expected_calibration_error(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> float:
    """ECE of probabilities `p` for binary outcomes `y` over equal-width bins."""
    table = reliability_table(p, y, n_bins)
    n = max(int(table["count"].sum()), 1)
    return float((table["count"] / n * (table["mean_predicted"] - table["observed_frequency"]).abs()).sum())


def reliability_table(p: np.ndarray, y: np.ndarray, n_bins: int = 10) -> pl.DataFrame:
    p = np.asarray(p, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    bins = np.clip((p * n_bins).astype(int), 0, n_bins - 1)
    rows = []
    for b in range(n_bins):
        sel = bins == b
        if sel.any():
            rows.append({"bin": b, "lower": b / n_bins, "upper": (b + 1) / n_bins, "count": int(sel.sum()),
                         "mean_predicted": float(p[sel].mean()), "observed_frequency": float(y[sel].mean())})
    schema = {"bin": pl.Int64, "lower": pl.Float64, "upper": pl.Float64, "count": pl.Int64,
              "mean_predicted": pl.Float64, "observed_frequency": pl.Float64}
    return pl.DataFrame(rows, schema=schema)


def _predict(model: Any, frame: pl.DataFrame) -> np.ndarray:
    prompts = frame["prompt"].fill_null("").to_list()
    a, b = frame["response_a"].to_list(), frame["response_b"].to_list()
    if hasattr(model, "proba"):
        return np.asarray(model.proba(prompts, a, b), dtype=np.float64)
    if hasattr(model, "reward"):
        d = np.asarray(model.reward(prompts, a)) - np.asarray(model.reward(prompts, b))
        return 0.5 * (1.0 + np.tanh(0.5 * d))
    raise TypeError(f"{type(model).__name__} has neither proba(...) nor reward(...)")


@dataclass
class PreferenceEvaluation:
    summary: pl.DataFrame
    reliability: pl.DataFrame
    by_category: pl.DataFrame
    majority: pl.DataFrame
    predictions: pl.DataFrame

    def metrics(self) -> dict[str, Any]:
        """The summary row as a plain dict (for run records)."""
        return self.summary.row(0, named=True)

    def plot_reliability(self, path: str | Path, title: str | None = None) -> Path:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        m = self.metrics()
        fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
        ax.plot([0, 1], [0, 1], "--", color="grey", lw=1, label="perfect calibration")
        t = self.reliability
        if t.height:
            ax.plot(t["mean_predicted"], t["observed_frequency"], "o-", label="model")
            for x, yv, n in zip(t["mean_predicted"], t["observed_frequency"], t["count"]):
                ax.annotate(str(n), (x, yv), textcoords="offset points", xytext=(3, -10), fontsize=7)
        ax.set_xlabel("predicted P(a > b)")
        ax.set_ylabel("observed frequency of a > b")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title(title or f"accuracy {m['accuracy']:.3f}, ECE {m['ece']:.3f}")
        ax.legend(loc="upper left", fontsize=8)
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return path


def evaluate_preferences(model: Any, data: Any, n_bins: int = 10, probabilities: np.ndarray | None = None) -> PreferenceEvaluation:
    """Evaluate a reward or preference model (or given `probabilities`) on a version / frame."""
    frame = comparisons_frame(data)
    if frame.height == 0:
        raise ValueError("nothing to evaluate: the data has no rows")
    labels = frame["label"].cast(pl.Utf8).to_numpy()
    decided = np.isin(labels, ["a", "b"])
    p_all = np.full(frame.height, np.nan)
    if probabilities is not None:
        p_all = np.asarray(probabilities, dtype=np.float64)
        if p_all.shape != (frame.height,):
            raise ValueError(f"probabilities has shape {p_all.shape}; expected ({frame.height},)")
    elif decided.any():
        p_all[decided] = _predict(model, frame.filter(pl.Series(decided)))
    if not decided.any():
        raise ValueError("nothing to evaluate: no row is labelled 'a' or 'b'")
    p = p_all[decided]
    y = (labels[decided] == "a").astype(np.float64)
    correct = np.where(p == 0.5, 0.5, ((p > 0.5) == (y == 1)).astype(float))
    eps = 1e-12
    pc = np.clip(p, eps, 1 - eps)
    log_loss = float(-(y * np.log(pc) + (1 - y) * np.log(1 - pc)).mean())
    summary = {
        "n_rows": frame.height,
        "n_evaluated": int(decided.sum()),
        "n_ties": int((labels == "tie").sum()),
        "n_both_bad": int((labels == "both_bad").sum()),
        "accuracy": float(correct.mean()),
        "log_loss": log_loss,
        "brier": float(((p - y) ** 2).mean()),
        "ece": expected_calibration_error(np.r_[p, 1 - p], np.r_[y, 1 - y], n_bins),
        "version_hash": version_hash(data),
    }
    predictions = pl.DataFrame({"row": np.arange(frame.height), "label": labels, "p_a": p_all})
    category = frame["category"] if "category" in frame.columns else pl.Series("category", [None] * frame.height, dtype=pl.String)
    scored = pl.DataFrame({"category": category.filter(pl.Series(decided)), "correct": correct, "p": p, "y": y})
    by_category = (
        scored.group_by("category")
        .agg(pl.len().alias("count"), pl.col("correct").mean().alias("accuracy"))
        .sort("category", nulls_last=True)
    )
    majority = _majority_agreement(frame, p_all)
    if majority.height:
        summary["majority_agreement"] = float((majority["model_agrees"].cast(pl.Float64)).mean())
        summary["n_multi_annotator_pairs"] = majority.height
    else:
        summary["majority_agreement"] = None
        summary["n_multi_annotator_pairs"] = 0
    return PreferenceEvaluation(
        summary=pl.DataFrame([summary]),
        reliability=reliability_table(np.r_[p, 1 - p], np.r_[y, 1 - y], n_bins),
        by_category=by_category,
        majority=majority,
        predictions=predictions,
    )


def _majority_agreement(frame: pl.DataFrame, p_all: np.ndarray) -> pl.DataFrame:
    """Per pair labelled by >= 2 annotators: the majority label (a or b, in the orientation of the
    pair's first row; ties in the vote left out) and whether the model's mean prediction agrees."""
    if "annotator_id" not in frame.columns:
        return pl.DataFrame()
    a_key = frame["response_a_id"] if "response_a_id" in frame.columns else frame["response_a"]
    b_key = frame["response_b_id"] if "response_b_id" in frame.columns else frame["response_b"]
    prompt_key = frame["prompt_id"] if "prompt_id" in frame.columns else frame["prompt"]
    labels = frame["label"].cast(pl.Utf8).to_list()
    groups: dict[tuple, list] = {}
    for i, (pk, ak, bk, lab, ann) in enumerate(zip(prompt_key, a_key, b_key, labels, frame["annotator_id"])):
        if lab not in ("a", "b"):
            continue
        key = (pk, *sorted([str(ak), str(bk)]))
        first = str(ak) == key[1]  # row orientation vs canonical orientation
        vote_first = (lab == "a") == first
        p_first = p_all[i] if first else 1.0 - p_all[i]
        groups.setdefault(key, []).append((ann, vote_first, p_first))
    rows = []
    for key, votes in groups.items():
        if len({v[0] for v in votes}) < 2:
            continue
        n_first = sum(v[1] for v in votes)
        n = len(votes)
        if 2 * n_first == n:
            continue  # split vote: no majority
        majority_first = 2 * n_first > n
        p = float(np.nanmean([v[2] for v in votes]))
        rows.append({"prompt_key": str(key[0]), "n_votes": n, "majority_share": max(n_first, n - n_first) / n,
                     "p_first": p, "model_agrees": (p > 0.5) == majority_first})
    return pl.DataFrame(rows) if rows else pl.DataFrame()
