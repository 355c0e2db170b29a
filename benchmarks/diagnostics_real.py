"""Diagnostics on real crowd data: agreement figures and the least reliable workers.

    python benchmarks/diagnostics_real.py

Reads LLMFAO (124 crowd workers, 8,931 votes) and PandaLM (3 annotators x 999 items) from
``<repo>/../shared/data`` with polars, and prints, side by side with peers on the same data:
- agreement (ours) and Krippendorff's alpha from the ``krippendorff`` package;
- worker reliability (ours: one-coin Dawid-Skene on pairs with an out-of-fold Bradley-Terry prior)
  and the worker skills of crowd-kit's ``NoisyBradleyTerry``, with their rank correlation;
- on a simulation with known truth, how well each ranks spammers and adversaries (ROC AUC).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / ".." / "shared" / "data"


def load_llmfao() -> pl.DataFrame:
    raw = pl.read_csv(DATA / "llmfao_crowd" / "crowd-comparisons.csv")
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
    items = json.loads((DATA / "pandalm_testset_v1" / "testset-v1.json").read_text())
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


def noisy_bt_skills(frame: pl.DataFrame) -> tuple[pl.DataFrame, float]:
    """crowd-kit's NoisyBradleyTerry worker skills (decisive labels only)."""
    from crowdkit.aggregation import NoisyBradleyTerry

    d = frame.filter(pl.col("label").is_in(["a", "b"]))
    data = d.select(
        pl.col("annotator_id").alias("worker"), pl.col("response_a_id").alias("left"), pl.col("response_b_id").alias("right"),
        pl.when(pl.col("label") == "a").then(pl.col("response_a_id")).otherwise(pl.col("response_b_id")).alias("label"),
    ).to_pandas()
    import warnings

    t = time.perf_counter()
    with warnings.catch_warnings(), np.errstate(all="ignore"):  # it overflows on separable data
        warnings.simplefilter("ignore", RuntimeWarning)
        m = NoisyBradleyTerry(n_iter=100, random_state=0).fit(data)
    dt = time.perf_counter() - t
    skills = m.skills_
    return pl.DataFrame({"annotator_id": [str(i) for i in skills.index], "noisy_bt_skill": skills.to_numpy().astype(float)}), dt


def report(name: str, frame: pl.DataFrame, show: int = 10) -> None:
    import krippendorff
    from scipy.stats import spearmanr

    from workbench.diagnostics import noise
    from workbench.diagnostics.reliability import PairDawidSkene

    print(f"\n=== {name}: {frame.height:,} labels, {frame['annotator_id'].n_unique()} annotators ===")
    t = time.perf_counter()
    ag = noise.agreement(frame).row(0, named=True)
    t_ag = time.perf_counter() - t
    counts = noise.unit_counts(frame)
    t = time.perf_counter()
    ref_alpha = krippendorff.alpha(value_counts=counts, level_of_measurement="nominal")
    t_ref = time.perf_counter() - t
    print(f"agreement over {ag['n_units']:,} pairs with >= 2 labels ({ag['mean_raters_per_unit']:.2f} labels each):")
    print(f"  observed agreement {ag['observed_agreement']:.3f}  Fleiss' kappa {ag['fleiss_kappa']:.3f}  "
          f"Krippendorff's alpha {ag['krippendorff_alpha']:.4f} (krippendorff package {ref_alpha:.4f})  "
          f"mean Cohen's kappa {ag['mean_cohen_kappa']:.3f} over {ag['n_annotator_pairs']} annotator pairs")
    print(f"  time: ours (all agreement figures) {t_ag * 1000:.1f} ms; krippendorff package (alpha only, from counts) {t_ref * 1000:.1f} ms")
    t = time.perf_counter()
    fitted = PairDawidSkene().fit(frame)
    t_fit = time.perf_counter() - t
    table = noise.annotator_table(frame, fitted=fitted)
    left = noise.left_side_overall(frame).row(0, named=True)
    print(f"estimated flip rate {fitted.flip_rate_:.3f}; left-side rate {left['left_rate']:.3f} (p = {left['p_value']:.2g}); "
          f"cyclic triads {noise.intransitivity(frame)['n_cyclic'].sum()} of {noise.intransitivity(frame)['n_triads'].sum()}")
    skills, t_nbt = noisy_bt_skills(frame)
    j = table.join(skills, on="annotator_id", how="left")
    ok = j.filter(pl.col("reliability").is_not_null() & pl.col("noisy_bt_skill").is_not_null() & (pl.col("n_decisive") >= 10))
    rho = spearmanr(ok["reliability"], ok["noisy_bt_skill"]).statistic if ok.height >= 5 else float("nan")
    print(f"reliability model: ours {t_fit:.2f} s, crowd-kit NoisyBradleyTerry {t_nbt:.2f} s (ratio {t_nbt / t_fit:.1f}x); "
          f"Spearman(ours, NoisyBT skill) over {ok.height} annotators with >= 10 decisive labels: {rho:.3f}")
    print(f"least reliable {min(show, j.height)} annotators:")
    cols = ["annotator_id", "n_labels", "reliability", "ci_low", "ci_high", "left_rate", "noisy_bt_skill", "flags"]
    with pl.Config(tbl_rows=show, tbl_cols=-1, tbl_width_chars=160, tbl_hide_dataframe_shape=True, float_precision=3):
        print(j.filter(pl.col("n_decisive") >= 10).select(cols).head(show))


def simulated_check() -> None:
    """Side by side on known truth: who ranks spammers and adversaries lowest?"""
    from sklearn.metrics import roc_auc_score

    from workbench.diagnostics.reliability import PairDawidSkene
    from workbench.simulate import SimulationConfig, simulate

    print("\n=== simulation with known truth: 100 annotators, 5% spammers + 5% adversaries, 5% flips ===")
    for k in (1, 3):
        sim = simulate(SimulationConfig(n_prompts=300, responses_per_prompt=5, n_pairs=12_000 // k, labels_per_pair=k, n_annotators=100,
                                        spammer_share=0.05, adversarial_share=0.05, flip_rate=0.05, temperature_spread=0.3, seed=1))
        c = sim.comparisons()
        t = time.perf_counter()
        ours = PairDawidSkene().fit(c).reliability_
        t_ours = time.perf_counter() - t
        skills, t_nbt = noisy_bt_skills(c)
        j = ours.join(skills, on="annotator_id").join(sim.truth_annotators.select("annotator_id", "kind"), on="annotator_id")
        bad = j["kind"].is_in(["spammer", "adversarial"]).to_numpy()
        auc_ours = roc_auc_score(bad, -j["reliability"].to_numpy())
        auc_nbt = roc_auc_score(bad, -j["noisy_bt_skill"].to_numpy())
        print(f"  {k} label(s) per pair, {c.height:,} labels: ROC AUC ours {auc_ours:.3f} ({t_ours:.2f} s), "
              f"NoisyBradleyTerry skill {auc_nbt:.3f} ({t_nbt:.2f} s); true flip rate {sim.true_flip_rate:.3f}")


def main() -> int:
    if not DATA.exists():
        print(f"{DATA} not found: the real data lives in ../shared/data next to the repository; nothing to do")
        return 0
    import importlib

    importlib.import_module("workbench.diagnostics.noise")  # import cost outside the timings
    report("LLMFAO crowd comparisons", load_llmfao())
    report("PandaLM test set v1", load_pandalm(), show=3)
    simulated_check()
    return 0


if __name__ == "__main__":
    sys.exit(main())
