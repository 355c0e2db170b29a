"""Fixtures for the diagnostics tests: simulations with known truth, and the real crowd data."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from workbench.simulate import SimulationConfig, simulate

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


def load_llmfao() -> pl.DataFrame:
    """LLMFAO crowd votes as a comparisons table (a response = one model's answer to one prompt)."""
    path = DATA / "llmfao_crowd" / "crowd-comparisons.csv"
    if not path.exists():
        pytest.skip(f"LLMFAO data not found at {path} (needs ../shared/data next to the repo)")
    raw = pl.read_csv(path)
    return raw.select(
        pl.col("id").cast(pl.String).alias("comparison_id"),
        pl.col("prompt").cast(pl.String).alias("prompt_id"),
        (pl.col("prompt").cast(pl.String) + ":" + pl.col("model_x").cast(pl.String)).alias("response_a_id"),
        pl.col("left").alias("model_a"),
        (pl.col("prompt").cast(pl.String) + ":" + pl.col("model_y").cast(pl.String)).alias("response_b_id"),
        pl.col("right").alias("model_b"),
        pl.col("winner").replace_strict({"left": "a", "right": "b", "tie": "tie"}).alias("label"),
        pl.col("worker").cast(pl.String).alias("annotator_id"),
        pl.lit("a").alias("shown_left"),
    )


def load_pandalm() -> pl.DataFrame:
    """PandaLM test set: three annotators per item (0 tie, 1 response1, 2 response2)."""
    path = DATA / "pandalm_testset_v1" / "testset-v1.json"
    if not path.exists():
        pytest.skip(f"PandaLM data not found at {path} (needs ../shared/data next to the repo)")
    items = json.loads(path.read_text())
    rows = []
    for it in items:
        ma, _, mb = it["cmp_key"].partition("_")
        for k in ("annotator1", "annotator2", "annotator3"):
            rows.append({
                "comparison_id": f"{it['idx']}:{k}", "prompt_id": str(it["idx"]), "response_a_id": f"{it['idx']}:1", "model_a": ma,
                "response_b_id": f"{it['idx']}:2", "model_b": mb, "label": {"0": "tie", "1": "a", "2": "b"}[str(it[k])],
                "annotator_id": k, "response_a": it["response1"], "response_b": it["response2"],
            })
    return pl.DataFrame(rows)


@pytest.fixture(scope="session")
def mixed_sim():
    """A pool with spammers, adversaries, repeats and gold pairs (the general-purpose simulation)."""
    return simulate(SimulationConfig(
        n_prompts=150, responses_per_prompt=5, n_pairs=2500, labels_per_pair=3, n_annotators=60,
        spammer_share=0.05, adversarial_share=0.05, flip_rate=0.05, temperature_spread=0.3,
        repeat_rate=0.1, gold_rate=0.1, seed=11,
    ))


@pytest.fixture(scope="session")
def mixed_diagnostics(mixed_sim):
    from workbench.diagnostics.noise import analyze_noise

    return analyze_noise(mixed_sim.comparisons())


@pytest.fixture(scope="session")
def llmfao_table():
    return load_llmfao()


@pytest.fixture(scope="session")
def pandalm_table():
    return load_pandalm()
