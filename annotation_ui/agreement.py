"""Inter-annotator agreement on pairs labelled by several annotators.

Labels are put in one orientation per pair (a label given with the responses in the other order
is mirrored, ``a`` <-> ``b``), each annotator's latest label per pair counts once, and pairs with
labels from at least two annotators are the overlap. Three standard statistics, nominal scale
over the four outcomes:

* Cohen's kappa (Cohen 1960) for each pair of annotators with enough shared pairs, and their
  mean (Light's kappa);
* Fleiss' kappa (Fleiss 1971), with a varying number of raters per item
  (``P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1))``);
* Krippendorff's alpha, nominal (Krippendorff 2011, via the coincidence matrix), which allows
  missing ratings.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import polars as pl

CATEGORIES = ("a", "b", "tie", "both_bad")


def overlap_table(comparisons: pl.DataFrame) -> pl.DataFrame:
    """One row per (pair, annotator): ``item, annotator_id, label`` in the pair's own orientation."""
    if comparisons.height == 0:
        return pl.DataFrame(schema={"item": pl.String, "annotator_id": pl.String, "label": pl.String})
    f = comparisons.select("prompt_id", "response_a_id", "response_b_id", "label", "annotator_id", "created_at")
    swapped = pl.col("response_a_id") > pl.col("response_b_id")
    f = f.with_columns(
        pl.concat_str([pl.col("prompt_id"), pl.min_horizontal("response_a_id", "response_b_id"), pl.max_horizontal("response_a_id", "response_b_id")], separator="|").alias("item"),
        pl.when(swapped & (pl.col("label") == "a")).then(pl.lit("b"))
        .when(swapped & (pl.col("label") == "b")).then(pl.lit("a"))
        .otherwise(pl.col("label")).alias("label"),
    )
    f = f.sort("created_at").group_by(["item", "annotator_id"], maintain_order=True).agg(pl.col("label").last())
    multi = f.group_by("item").agg(pl.col("annotator_id").n_unique().alias("n")).filter(pl.col("n") >= 2)
    return f.join(multi.select("item"), on="item", how="semi").sort("item", "annotator_id")


def _counts(table: pl.DataFrame) -> np.ndarray:
    """Items x categories matrix of how many annotators gave each outcome."""
    items = table["item"].unique(maintain_order=True).to_list()
    index = {k: i for i, k in enumerate(items)}
    out = np.zeros((len(items), len(CATEGORIES)))
    cat = {c: j for j, c in enumerate(CATEGORIES)}
    for item, label in table.select("item", "label").iter_rows():
        out[index[item], cat[label]] += 1
    return out


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa from an items x categories count matrix (items with >= 2 ratings)."""
    counts = np.asarray(counts, dtype=float)
    n_i = counts.sum(axis=1)
    counts, n_i = counts[n_i >= 2], n_i[n_i >= 2]
    if len(n_i) == 0:
        return float("nan")
    p_i = ((counts**2).sum(axis=1) - n_i) / (n_i * (n_i - 1))
    p_bar = p_i.mean()
    p_j = counts.sum(axis=0) / n_i.sum()
    p_e = float((p_j**2).sum())
    return float("nan") if p_e >= 1 else float((p_bar - p_e) / (1 - p_e))


def krippendorff_alpha_nominal(counts: np.ndarray) -> float:
    """Krippendorff's alpha (nominal) from an items x categories count matrix."""
    counts = np.asarray(counts, dtype=float)
    m_u = counts.sum(axis=1)
    counts, m_u = counts[m_u >= 2], m_u[m_u >= 2]
    if len(m_u) == 0:
        return float("nan")
    # coincidence matrix o_ck = sum_u n_uc (n_uk - [c == k]) / (m_u - 1)
    o = np.einsum("uc,uk->ck", counts / (m_u - 1)[:, None], counts) - np.diag((counts / (m_u - 1)[:, None]).sum(axis=0))
    n_c = o.sum(axis=1)
    n = n_c.sum()
    d_o = n - np.trace(o)
    d_e = (n * n - (n_c**2).sum()) / (n - 1)
    return float("nan") if d_e == 0 else float(1 - d_o / d_e)


def cohen_kappa(x: list[str], y: list[str]) -> float:
    """Cohen's kappa of two annotators' labels on the same items."""
    if len(x) != len(y) or not x:
        raise ValueError("Cohen's kappa needs two equally long, non-empty label lists")
    cat = {c: j for j, c in enumerate(CATEGORIES)}
    m = np.zeros((len(CATEGORIES), len(CATEGORIES)))
    for a, b in zip(x, y):
        m[cat[a], cat[b]] += 1
    n = m.sum()
    p_o = np.trace(m) / n
    p_e = float((m.sum(axis=0) * m.sum(axis=1)).sum() / (n * n))
    return float("nan") if p_e >= 1 else float((p_o - p_e) / (1 - p_e))


def pairwise_cohen(table: pl.DataFrame, min_shared: int = 5) -> pl.DataFrame:
    """Cohen's kappa for each pair of annotators sharing at least ``min_shared`` items."""
    rows = []
    by = {a: dict(zip(g["item"].to_list(), g["label"].to_list())) for (a,), g in table.group_by(["annotator_id"])}
    for a1, a2 in itertools.combinations(sorted(by), 2):
        shared = sorted(set(by[a1]) & set(by[a2]))
        if len(shared) >= min_shared:
            rows.append((a1, a2, len(shared), cohen_kappa([by[a1][i] for i in shared], [by[a2][i] for i in shared])))
    return pl.DataFrame(rows, schema={"annotator_1": pl.String, "annotator_2": pl.String, "shared": pl.Int64, "kappa": pl.Float64}, orient="row")


def agreement(comparisons: Any, min_shared: int = 5) -> pl.DataFrame:
    """``metric, value, items, annotators`` for Cohen (mean pairwise), Fleiss and Krippendorff."""
    table = overlap_table(comparisons)
    counts = _counts(table) if table.height else np.zeros((0, len(CATEGORIES)))
    pw = pairwise_cohen(table, min_shared) if table.height else pairwise_cohen(pl.DataFrame(schema={"item": pl.String, "annotator_id": pl.String, "label": pl.String}))
    n_items, n_ann = counts.shape[0], table["annotator_id"].n_unique() if table.height else 0
    mean_cohen = float(pw["kappa"].mean()) if pw.height else float("nan")
    return pl.DataFrame({
        "metric": ["cohen_kappa_mean", "fleiss_kappa", "krippendorff_alpha"],
        "value": [mean_cohen, fleiss_kappa(counts), krippendorff_alpha_nominal(counts)],
        "items": [int(pw["shared"].sum()) if pw.height else 0, n_items, n_items],
        "annotators": [pw.select(pl.concat([pl.col("annotator_1"), pl.col("annotator_2")]).n_unique()).item() if pw.height else 0, n_ann, n_ann],
    })
