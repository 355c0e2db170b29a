"""Shared fixtures for the rm.choice tests: simulated data with known truth and LLMFAO."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "llmfao_crowd"


def load_llmfao() -> pl.DataFrame:
    """LLMFAO crowd votes as a comparisons table (model_x is always shown on the left)."""
    path = DATA / "crowd-comparisons.csv"
    if not path.exists():
        pytest.skip(f"LLMFAO data not found at {path} (needs ../shared/data next to the repo)")
    raw = pl.read_csv(path)
    return raw.select(
        pl.col("left").alias("model_a"),
        pl.col("right").alias("model_b"),
        pl.col("winner").replace_strict({"left": "a", "right": "b", "tie": "tie"}).alias("label"),
        pl.lit("a").alias("shown_left"),
        pl.col("worker").cast(pl.String).alias("annotator_id"),
        pl.col("id").alias("pair_id"),
    )


@pytest.fixture(scope="session")
def llmfao() -> pl.DataFrame:
    return load_llmfao()


def simulate(n_items=20, n=4000, *, seed=0, link="logit", ties=None, tie_param=0.0,
             position=0.0, reliabilities=None, scale=1.0, covariate_coef=None):
    """Simulate comparisons with known truth; returns (frame, truth dict)."""
    from scipy.stats import norm

    rng = np.random.default_rng(seed)
    s = rng.normal(scale=scale, size=n_items)
    s -= s.mean()
    a = rng.integers(0, n_items, n)
    b = (a + rng.integers(1, n_items, n)) % n_items
    side = rng.choice([1.0, -1.0], size=n)
    d = s[a] - s[b] + position * side
    cols = {}
    if covariate_coef is not None:
        x = rng.normal(size=(n, len(covariate_coef)))
        d = d + x @ np.asarray(covariate_coef)
        for t in range(len(covariate_coef)):
            cols[f"x{t}"] = x[:, t]
    annot = None
    if reliabilities is not None:
        annot = rng.integers(0, len(reliabilities), n)
        d = d * np.asarray(reliabilities)[annot]
    F = (lambda x: 1 / (1 + np.exp(-x))) if link == "logit" else norm.cdf
    u = rng.random(n)
    if ties == "davidson":
        nu = np.exp(tie_param)
        z = np.exp(d / 2) + np.exp(-d / 2) + nu
        pw, pt = np.exp(d / 2) / z, nu / z
        label = np.where(u < pw, "a", np.where(u < pw + pt, "tie", "b"))
    elif ties == "rao-kupper":
        pw = F(d - tie_param)
        pl_ = F(-d - tie_param)
        label = np.where(u < pw, "a", np.where(u < 1 - pl_, "tie", "b"))
    else:
        label = np.where(u < F(d), "a", "b")
    frame = pl.DataFrame({
        "model_a": [f"item{i:03d}" for i in a],
        "model_b": [f"item{i:03d}" for i in b],
        "label": label,
        "shown_left": np.where(side > 0, "a", "b"),
        "annotator_id": [f"ann{k:02d}" for k in annot] if annot is not None else ["ann00"] * n,
        **cols,
    })
    truth = {"scores": dict(zip([f"item{i:03d}" for i in range(n_items)], s)), "s": s}
    return frame, truth
