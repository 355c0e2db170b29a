"""Label noise: agreement, annotator reliability, side and length bias, speed, suspect labels,
intransitivity. Every function takes a ``Version`` or a comparisons frame and returns polars frames.

A *unit* of agreement is an unordered pair of responses: a pair shown as (x, y) and as (y, x) is
one unit, and labels are read in the pair's own orientation (``first``/``second`` response,
``tie``, ``both_bad``). When an annotator labelled a pair more than once, agreement uses their
first label and :func:`self_consistency` the repeats.

>>> from workbench.diagnostics import noise
>>> noise.agreement(version)              # Fleiss' kappa, Krippendorff's alpha, ...
>>> noise.annotator_table(version)        # reliability with an interval, gold accuracy, biases
>>> noise.suspect_labels(version)         # labels the out-of-fold model contradicts, ranked
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import polars as pl

from ._data import Coded, Timings, code
from .reliability import PairDawidSkene

__all__ = [
    "agreement", "cohen_kappa_pairs", "fleiss_kappa", "krippendorff_alpha_nominal", "unit_counts",
    "gold_accuracy", "self_consistency", "left_side_bias", "left_side_overall", "length_bias",
    "duration_outliers", "suspect_labels", "intransitivity", "annotator_table", "analyze_noise",
    "NoiseDiagnostics", "benjamini_hochberg",
]


# ---------------------------------------------------------------------- agreement
def _first_labels(c: Coded) -> np.ndarray:
    """Row indices of each annotator's first label on each pair."""
    key = c.pair * len(c.annotators) + c.annotator
    order = np.lexsort((c.order, key))
    k = key[order]
    first = np.ones(k.size, dtype=bool)
    first[1:] = k[1:] != k[:-1]
    return order[first]


def unit_counts(data: Any) -> np.ndarray:
    """Units x categories counts (first/second/tie/both_bad) for pairs with at least two annotators."""
    c = code(data)
    rows = _first_labels(c)
    counts = np.zeros((c.n_pairs, 4))
    np.add.at(counts, (c.pair[rows], c.canon[rows]), 1)
    return counts[counts.sum(axis=1) >= 2]


def krippendorff_alpha_nominal(counts: np.ndarray) -> float:
    """Krippendorff's alpha for nominal data from a units x categories count matrix.

    Krippendorff (2011), "Computing Krippendorff's alpha-reliability": the coincidence matrix
    ``o_ck = sum_u n_uc (n_uk - [c = k]) / (m_u - 1)`` and ``alpha = 1 - (n - 1) sum_{c != k} o_ck
    / sum_{c != k} n_c n_k``. Units with fewer than two values are left out.
    """
    counts = np.asarray(counts, dtype=float)
    m = counts.sum(axis=1)
    counts, m = counts[m >= 2], m[m >= 2]
    if counts.shape[0] == 0:
        return float("nan")
    w = 1.0 / (m - 1)
    o = (counts * w[:, None]).T @ counts - np.diag((counts * w[:, None]).sum(axis=0))
    n_c = o.sum(axis=1)
    n = n_c.sum()
    d_o = o.sum() - np.trace(o)
    d_e = n_c.sum() ** 2 - (n_c ** 2).sum()
    if d_e <= 0:
        return float("nan")
    return float(1.0 - (n - 1) * d_o / d_e)


def fleiss_kappa(counts: np.ndarray) -> float:
    """Fleiss' kappa (Fleiss 1971) from a units x categories count matrix.

    With a varying number of raters per unit, each unit's agreement is ``sum_c n_c (n_c - 1) /
    (n (n - 1))`` and category shares are pooled over all ratings (the usual generalization; it
    equals Fleiss' formula when every unit has the same number of raters).
    """
    counts = np.asarray(counts, dtype=float)
    n = counts.sum(axis=1)
    counts, n = counts[n >= 2], n[n >= 2]
    if counts.shape[0] == 0:
        return float("nan")
    p_i = (counts * (counts - 1)).sum(axis=1) / (n * (n - 1))
    p_bar = p_i.mean()
    p_c = counts.sum(axis=0) / n.sum()
    p_e = float((p_c ** 2).sum())
    if p_e >= 1:
        return float("nan")
    return float((p_bar - p_e) / (1 - p_e))


def cohen_kappa_pairs(data: Any, min_shared: int = 5) -> pl.DataFrame:
    """Cohen's kappa for every pair of annotators who labelled at least ``min_shared`` units in common.

    Columns: annotator_1, annotator_2, n_shared, observed_agreement, kappa.
    """
    c = code(data)
    rows = _first_labels(c)
    f = pl.DataFrame({"unit": c.pair[rows], "ann": c.annotator[rows], "lab": c.canon[rows].astype(np.int8)})
    multi = f.group_by("unit").len().filter(pl.col("len") >= 2).select("unit")
    f = f.join(multi, on="unit")
    j = f.join(f, on="unit", suffix="_2").filter(pl.col("ann") < pl.col("ann_2"))
    schema = {"annotator_1": pl.String, "annotator_2": pl.String, "n_shared": pl.UInt32, "observed_agreement": pl.Float64, "kappa": pl.Float64}
    if j.height == 0:
        return pl.DataFrame(schema=schema)
    aggs = [pl.len().alias("n_shared"), (pl.col("lab") == pl.col("lab_2")).mean().alias("po")]
    for k in range(4):
        aggs += [(pl.col("lab") == k).mean().alias(f"p1_{k}"), (pl.col("lab_2") == k).mean().alias(f"p2_{k}")]
    g = j.group_by("ann", "ann_2").agg(aggs).filter(pl.col("n_shared") >= min_shared)
    pe = sum(pl.col(f"p1_{k}") * pl.col(f"p2_{k}") for k in range(4))
    g = g.with_columns(pe.alias("pe")).with_columns(
        pl.when(pl.col("pe") < 1).then((pl.col("po") - pl.col("pe")) / (1 - pl.col("pe"))).otherwise(None).alias("kappa"))
    names = c.annotators
    return g.select(
        pl.col("ann").map_batches(lambda s: names.gather(s.to_numpy()), return_dtype=pl.String).alias("annotator_1"),
        pl.col("ann_2").map_batches(lambda s: names.gather(s.to_numpy()), return_dtype=pl.String).alias("annotator_2"),
        pl.col("n_shared").cast(pl.UInt32), pl.col("po").alias("observed_agreement"), "kappa",
    ).sort("n_shared", "annotator_1", "annotator_2", descending=[True, False, False])


def agreement(data: Any, cohen: pl.DataFrame | None = None) -> pl.DataFrame:
    """One row: units (pairs with >= 2 annotators), their labels, raters per unit, observed
    agreement, Fleiss' kappa, Krippendorff's alpha (nominal), mean pairwise Cohen's kappa."""
    c = code(data)
    counts = unit_counts(c)
    n = counts.sum(axis=1)
    po = float(((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean()) if counts.shape[0] else float("nan")
    if cohen is None:
        cohen = cohen_kappa_pairs(c)
    mean_cohen = float(cohen["kappa"].drop_nulls().mean()) if cohen.height and cohen["kappa"].drop_nulls().len() else float("nan")
    return pl.DataFrame({
        "n_units": [counts.shape[0]], "n_labels": [int(n.sum())], "mean_raters_per_unit": [float(n.mean()) if n.size else float("nan")],
        "observed_agreement": [po], "fleiss_kappa": [fleiss_kappa(counts)], "krippendorff_alpha": [krippendorff_alpha_nominal(counts)],
        "mean_cohen_kappa": [mean_cohen], "n_annotator_pairs": [cohen.height],
    })


# ---------------------------------------------------------------------- per annotator
def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (nan stays nan)."""
    p = np.asarray(p, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(~np.isnan(p))
    if ok.size == 0:
        return out
    order = ok[np.argsort(p[ok])]
    ranked = p[order] * ok.size / np.arange(1, ok.size + 1)
    out[order] = np.minimum(1.0, np.minimum.accumulate(ranked[::-1])[::-1])
    return out


def _binom_two_sided(k: np.ndarray, n: np.ndarray, p: float = 0.5) -> np.ndarray:
    """Two-sided exact binomial p-values, vectorized (as scipy.stats.binomtest for p = 0.5)."""
    from scipy.stats import binom

    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    if p != 0.5:  # pragma: no cover - only the symmetric case is used
        raise ValueError("only p = 0.5")
    lo = np.minimum(k, n - k)
    out = np.minimum(1.0, 2 * binom.cdf(lo, n, 0.5))
    out = np.where(k == n - k, 1.0, out)
    return np.where(n > 0, out, np.nan)


def left_side_bias(data: Any, alpha: float = 0.01) -> pl.DataFrame:
    """Per annotator: decisive labels with a known display side, share that picked the left one,
    exact binomial p-value against 1/2, Benjamini-Hochberg adjusted, and ``biased`` (adjusted p < alpha)."""
    c = code(data)
    ok = (c.label < 2) & (c.shown_left_a >= 0)
    left_chosen = ((c.label == 0) & (c.shown_left_a == 1)) | ((c.label == 1) & (c.shown_left_a == 0))
    J = len(c.annotators)
    n = np.bincount(c.annotator[ok], minlength=J)
    k = np.bincount(c.annotator[ok], left_chosen[ok].astype(float), J)
    p = _binom_two_sided(k, n)
    adj = benjamini_hochberg(p)
    return pl.DataFrame({
        "annotator_id": c.annotators, "n_sided": n, "left_rate": np.where(n > 0, k / np.maximum(n, 1), np.nan),
        "left_p_value": p, "left_p_adjusted": adj, "left_biased": np.nan_to_num(adj, nan=1.0) < alpha,
    })


def left_side_overall(data: Any, alpha: float = 0.01) -> pl.DataFrame:
    """One row: all decisive labels with a known side, left rate, exact binomial p-value, ``biased``."""
    from scipy.stats import binomtest

    c = code(data)
    ok = (c.label < 2) & (c.shown_left_a >= 0)
    left_chosen = ((c.label == 0) & (c.shown_left_a == 1)) | ((c.label == 1) & (c.shown_left_a == 0))
    n, k = int(ok.sum()), int(left_chosen[ok].sum())
    p = binomtest(k, n, 0.5).pvalue if n else float("nan")
    return pl.DataFrame({"n_sided": [n], "left_rate": [k / n if n else float("nan")], "p_value": [p], "biased": [bool(n and p < alpha)]})


def length_bias(data: Any, p_model: np.ndarray | None = None, z_threshold: float = 4.0) -> pl.DataFrame:
    """Per annotator: share of decisive labels that chose the longer response, and a score test
    of a length effect beyond the consensus (``length_z``).

    For label ``i`` with ``x_i = log(len_a / len_b)`` and the consensus probability ``p_i`` that
    a is preferred (``p_model``: :func:`annotator_table` passes the probability of the label
    given the pair's out-of-fold prior and its *other* labels; 1/2 without one), the score
    statistic of a logistic length coefficient at zero is ``z = sum (y_i - p_i) x_i /
    sqrt(sum p_i (1 - p_i) x_i^2)``; ``length_coef`` is the one-step estimate ``sum (y - p) x / sum p (1 - p) x^2``.
    """
    c = code(data)
    J = len(c.annotators)
    d = (c.label < 2) & (c.len_a > 0) & (c.len_b > 0) & (c.len_a != c.len_b)
    x = np.log(np.maximum(c.len_a, 1) / np.maximum(c.len_b, 1))
    y = (c.label == 0).astype(float)
    p = np.full(c.n, 0.5) if p_model is None else np.nan_to_num(np.asarray(p_model, dtype=float), nan=0.5)
    j = c.annotator[d]
    longer = ((x > 0) == (y > 0.5))[d].astype(float)
    n = np.bincount(j, minlength=J)
    u = np.bincount(j, ((y - p) * x)[d], J)
    v = np.bincount(j, (p * (1 - p) * x * x)[d], J)
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(v > 0, u / np.sqrt(v), np.nan)
        coef = np.where(v > 0, u / v, np.nan)
    return pl.DataFrame({
        "annotator_id": c.annotators, "n_length": n,
        "longer_chosen_rate": np.where(n > 0, np.bincount(j, longer, J) / np.maximum(n, 1), np.nan),
        "length_coef": coef, "length_z": z, "length_biased": np.abs(np.nan_to_num(z)) > z_threshold,
    })


def duration_outliers(data: Any, z_threshold: float = 3.5, fast_ms: float = 3000.0) -> pl.DataFrame:
    """Per annotator: median time per label, a robust z-score of its log across annotators
    (median and MAD), share of labels faster than ``fast_ms``, and ``too_fast`` (z below -threshold)."""
    c = code(data)
    J = len(c.annotators)
    ok = ~np.isnan(c.duration_ms)
    f = pl.DataFrame({"j": c.annotator[ok], "ms": c.duration_ms[ok]})
    g = f.group_by("j").agg(pl.col("ms").median().alias("median_ms"), (pl.col("ms") < fast_ms).mean().alias("fast_share"), pl.len().alias("n_timed"))
    med = np.full(J, np.nan)
    fast = np.full(J, np.nan)
    n_t = np.zeros(J, dtype=np.int64)
    idx = g["j"].to_numpy()
    med[idx], fast[idx], n_t[idx] = g["median_ms"].to_numpy(), g["fast_share"].to_numpy(), g["n_timed"].to_numpy()
    lm = np.log(np.maximum(med, 1.0))
    center = np.nanmedian(lm) if np.isfinite(lm).any() else np.nan
    mad = 1.4826 * np.nanmedian(np.abs(lm - center)) if np.isfinite(lm).any() else np.nan
    z = (lm - center) / mad if mad and np.isfinite(mad) and mad > 0 else np.full(J, np.nan)
    return pl.DataFrame({
        "annotator_id": c.annotators, "n_timed": n_t, "median_duration_ms": med, "duration_z": z,
        "fast_share": fast, "too_fast": np.nan_to_num(z, nan=0.0) < -z_threshold,
    })


def gold_accuracy(data: Any, reference: pl.DataFrame | None = None) -> pl.DataFrame:
    """Per annotator: accuracy on pairs with a gold answer.

    The gold answer of a pair is ``reference`` (columns response_a_id, response_b_id, label) when
    given, else the majority of the labels flagged ``gold`` on that pair by *other* annotators
    (so an annotator's own gold-flagged labels never grade themselves). Columns: annotator_id,
    n_gold, gold_correct, gold_accuracy.
    """
    c = code(data)
    J = len(c.annotators)
    if reference is not None:
        missing = {"response_a_id", "response_b_id", "label"} - set(reference.columns)
        if missing:
            raise ValueError(f"gold reference needs columns response_a_id, response_b_id, label; missing {sorted(missing)}")
        # response codes follow the sorted ids, so a pair's "first" response is the smaller id
        key = pl.DataFrame({"f": c.items.gather(c.pair_first), "s": c.items.gather(c.pair_second), "pair": np.arange(c.n_pairs)})
        swap = pl.col("response_a_id") > pl.col("response_b_id")
        rf = reference.select(
            pl.min_horizontal("response_a_id", "response_b_id").alias("f"), pl.max_horizontal("response_a_id", "response_b_id").alias("s"),
            pl.when(swap & (pl.col("label") == "a")).then(pl.lit("b")).when(swap & (pl.col("label") == "b")).then(pl.lit("a"))
            .otherwise(pl.col("label")).replace_strict({"a": 0, "b": 1, "tie": 2, "both_bad": 3}, return_dtype=pl.Int64).alias("canon"),
        )
        m = rf.join(key, on=["f", "s"], how="inner")
        gold_counts = np.zeros((c.n_pairs, 4))
        np.add.at(gold_counts, (m["pair"].to_numpy(), m["canon"].to_numpy()), 1)
        graded = np.ones(c.n, dtype=bool)
        own = np.zeros((c.n, 4))
    else:
        g = c.gold
        gold_counts = np.zeros((c.n_pairs, 4))
        np.add.at(gold_counts, (c.pair[g], c.canon[g]), 1)
        # leave the annotator's own gold labels on that pair out
        key = c.pair * J + c.annotator
        own_frame = pl.DataFrame({"key": key[g], "canon": c.canon[g]}).group_by("key", "canon").len()
        own = np.zeros((c.n, 4))
        if own_frame.height:
            lut = pl.DataFrame({"key": key, "row": np.arange(c.n)}).join(own_frame, on="key")
            own[lut["row"].to_numpy(), lut["canon"].to_numpy()] = lut["len"].to_numpy()
        graded = ~g
    counts = gold_counts[c.pair] - own
    best = counts.argmax(axis=1)
    top = counts.max(axis=1)
    unique_top = (counts == top[:, None]).sum(axis=1) == 1
    has = graded & (top > 0) & unique_top
    correct = has & (best == c.canon)
    n = np.bincount(c.annotator[has], minlength=J)
    k = np.bincount(c.annotator[has], correct[has].astype(float), J)
    return pl.DataFrame({"annotator_id": c.annotators, "n_gold": n, "gold_correct": k.astype(np.int64),
                         "gold_accuracy": np.where(n > 0, k / np.maximum(n, 1), np.nan)})


def self_consistency(data: Any) -> pl.DataFrame:
    """Per annotator: how often a repeated pair got the same answer again (in the pair's own
    orientation, so a repeat with the sides swapped counts as consistent when it names the same
    response). Columns: annotator_id, n_repeats, n_swapped_repeats, self_consistency."""
    c = code(data)
    J = len(c.annotators)
    key = c.pair * J + c.annotator
    order = np.lexsort((c.order, key))
    k = key[order]
    same_as_prev = np.zeros(c.n, dtype=bool)
    same_as_prev[1:] = k[1:] == k[:-1]
    # compare each repeat with the first label of its group
    first_idx = np.maximum.accumulate(np.where(~same_as_prev, np.arange(c.n), 0))
    rep = order[same_as_prev]
    ref = order[first_idx[same_as_prev]]
    agree = c.canon[rep] == c.canon[ref]
    swapped = (c.shown_left_a[rep] >= 0) & (c.shown_left_a[ref] >= 0) & ((c.item_a[rep] == c.item_a[ref]) != (c.shown_left_a[rep] == c.shown_left_a[ref]))
    n = np.bincount(c.annotator[rep], minlength=J)
    return pl.DataFrame({
        "annotator_id": c.annotators, "n_repeats": n, "n_swapped_repeats": np.bincount(c.annotator[rep], swapped.astype(float), J).astype(np.int64),
        "self_consistency": np.where(n > 0, np.bincount(c.annotator[rep], agree.astype(float), J) / np.maximum(n, 1), np.nan),
    })


# ---------------------------------------------------------------------- model based
def suspect_labels(data: Any, model: Any = None, fitted: PairDawidSkene | None = None, threshold: float = 0.5) -> pl.DataFrame:
    """Decisive labels ranked by the probability that they contradict the true order.

    The out-of-fold prior of each pair (a Bradley-Terry fit without that pair, or the caller's
    ``model``) and the pair's other labels, weighted by their annotators' reliability, give
    ``flip_posterior``; ``p_model`` is the prior probability of the label as given. Columns:
    rank, comparison_id, annotator_id, prompt_id, response_a_id, response_b_id, label,
    p_model, flip_posterior, suspect (posterior > threshold). The mean flip posterior is the
    estimated flip rate (``fitted.flip_rate_``).
    """
    c = code(data)
    fitted = fitted or PairDawidSkene().fit(c, model=model)
    lab = fitted.labels_
    rows = lab["row"].to_numpy()
    cols = [col for col in ("comparison_id", "prompt_id", "response_a_id", "response_b_id", "label") if col in c.frame.columns]
    out = pl.concat([c.frame[rows.tolist()].select(cols), lab.select("annotator_id", "p_model", "flip_posterior")], how="horizontal")
    out = out.with_columns((pl.col("flip_posterior") > threshold).alias("suspect")).sort("flip_posterior", descending=True)
    return out.with_row_index("rank", offset=1)


def intransitivity(data: Any, max_two_paths: int = 20_000_000, seed: int = 0) -> pl.DataFrame:
    """Per prompt: triads of its responses whose three pairs all have a decisive majority, and the
    share of them that are cyclic (x > y > z > x). Random orientations give 1/4.

    Columns: prompt_id, n_triads, n_cyclic, cyclic_share. When counting every triad would take
    more than ``max_two_paths`` two-paths, a random subset of prompts within that budget is
    counted (a prompt larger than the budget alone is left out).
    """
    c = code(data)
    d = c.label < 2
    net = np.bincount(c.pair[d], np.where(c.canon[d] == 0, 1.0, -1.0), c.n_pairs)
    has = np.flatnonzero(net != 0)
    schema = {"prompt_id": pl.String, "n_triads": pl.UInt32, "n_cyclic": pl.UInt32, "cyclic_share": pl.Float64}
    if has.size < 3:
        return pl.DataFrame(schema=schema)
    prompt_of_item = np.zeros(len(c.items), dtype=np.int64)
    prompt_of_item[c.item_a] = c.prompt
    e = pl.DataFrame({"u": c.pair_first[has], "v": c.pair_second[has], "d": np.sign(net[has]).astype(np.int8)})
    deg = np.bincount(np.concatenate([e["u"].to_numpy(), e["v"].to_numpy()]), minlength=len(c.items))
    work = np.bincount(prompt_of_item, deg.astype(float) ** 2, len(c.prompts))
    if work.sum() > max_two_paths:
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(c.prompts))
        take = order[np.cumsum(work[order]) <= max_two_paths]
        keep = np.zeros(len(c.prompts), dtype=bool)
        keep[take] = True
        e = e.filter(pl.Series(keep[prompt_of_item[e["u"].to_numpy()]]))
        if e.height == 0:
            return pl.DataFrame(schema=schema)
    two = e.join(e.rename({"u": "v", "v": "w", "d": "d2"}), on="v")  # u < v < w
    tri = two.join(e.rename({"v": "w", "d": "d3"}), on=["u", "w"])
    cyclic = (pl.col("d") == pl.col("d2")) & (pl.col("d3") == -pl.col("d"))
    if tri.height == 0:
        return pl.DataFrame(schema=schema)
    g = tri.with_columns(pl.Series("p", prompt_of_item[tri["u"].to_numpy()])).group_by("p").agg(
        pl.len().cast(pl.UInt32).alias("n_triads"), cyclic.sum().cast(pl.UInt32).alias("n_cyclic"))
    return g.select(
        pl.col("p").map_batches(lambda s: c.prompts.gather(s.to_numpy()), return_dtype=pl.String).alias("prompt_id"),
        "n_triads", "n_cyclic", (pl.col("n_cyclic") / pl.col("n_triads")).alias("cyclic_share"),
    ).sort("cyclic_share", "n_triads", descending=True)


def annotator_table(data: Any, model: Any = None, fitted: PairDawidSkene | None = None, alpha: float = 0.01) -> pl.DataFrame:
    """Everything per annotator in one frame, least reliable first: labels, reliability with its
    interval, gold accuracy, self-consistency, left-side rate and test, length bias, speed, flags."""
    c = code(data)
    fitted = fitted or PairDawidSkene().fit(c, model=model)
    n_labels = pl.DataFrame({"annotator_id": c.annotators, "n_labels": np.bincount(c.annotator, minlength=len(c.annotators))})
    p_consensus = _p_model_a(c, fitted, "p_consensus")
    parts = [fitted.reliability_, gold_accuracy(c), self_consistency(c), left_side_bias(c, alpha), length_bias(c, p_consensus), duration_outliers(c)]
    out = n_labels
    for p in parts:
        out = out.join(p, on="annotator_id", how="left", maintain_order="left")
    from scipy.stats import beta as beta_dist

    def upper(k: str, n: str) -> np.ndarray:  # 97.5% Beta(1, 1)-posterior bound of a rate
        kk, nn = out[k].fill_null(0).to_numpy().astype(float), out[n].fill_null(0).to_numpy().astype(float)
        return np.where(nn > 0, beta_dist.ppf(0.975, kk + 1, nn - kk + 1), np.nan)

    out = out.with_columns((pl.col("self_consistency").fill_null(0) * pl.col("n_repeats")).round().alias("_sc_k"))
    out = out.with_columns(pl.Series("_gold_hi", upper("gold_correct", "n_gold")), pl.Series("_sc_hi", upper("_sc_k", "n_repeats"))).drop("_sc_k")
    flags = []
    for expr, name in [
        (pl.col("ci_high") < 0.5, "adversarial"),
        ((pl.col("ci_high") < 0.7) & (pl.col("ci_low") <= 0.5) & (pl.col("ci_high") >= 0.5), "random"),
        (pl.col("left_biased"), "left-side bias"),
        (pl.col("length_biased"), "length bias"),
        (pl.col("too_fast"), "too fast"),
        ((pl.col("_gold_hi") < 0.7) & (pl.col("n_gold") >= 10), "fails gold"),
        ((pl.col("_sc_hi") < 0.7) & (pl.col("n_repeats") >= 10), "inconsistent"),
    ]:
        flags.append(pl.when(expr.fill_null(False)).then(pl.lit(name)).otherwise(None))
    out = out.with_columns(pl.concat_str(flags, separator=", ", ignore_nulls=True).alias("flags"))
    out = out.with_columns(pl.when(pl.col("flags") == "").then(None).otherwise(pl.col("flags")).alias("flags")).drop("_gold_hi", "_sc_hi")
    return out.sort("reliability", nulls_last=True)


def _p_model_a(c: Coded, fitted: PairDawidSkene, column: str = "p_model") -> np.ndarray:
    """Per row: the probability that response a is preferred, from the out-of-fold prior
    (``p_model``) or the consensus of the pair's other labels (``p_consensus``); nan for
    non-decisive rows."""
    p = np.full(c.n, np.nan)
    lab = fitted.labels_
    rows = lab["row"].to_numpy()
    pm = lab[column].to_numpy()
    says_a = c.label[rows] == 0
    p[rows] = np.where(says_a, pm, 1 - pm)
    return p


# ---------------------------------------------------------------------- everything
@dataclass
class NoiseDiagnostics:
    """All noise diagnostics of one table (see :func:`analyze_noise`)."""

    agreement: pl.DataFrame
    annotator_pairs: pl.DataFrame
    annotators: pl.DataFrame
    left_side: pl.DataFrame
    suspects: pl.DataFrame
    flip_rate: float
    intransitivity: pl.DataFrame
    model: PairDawidSkene
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def cyclic_share(self) -> float:
        t = self.intransitivity
        return float(t["n_cyclic"].sum() / t["n_triads"].sum()) if t.height and t["n_triads"].sum() else float("nan")


def analyze_noise(data: Any, model: Any = None, alpha: float = 0.01, min_shared: int = 5) -> NoiseDiagnostics:
    """Run every noise diagnostic once (the data is coded and the model fitted once)."""
    timed = Timings()

    c = timed("code", code, data)
    fitted = timed("reliability model", lambda: PairDawidSkene().fit(c, model=model))
    cohen = timed("cohen kappa", cohen_kappa_pairs, c, min_shared)
    agr = timed("agreement", agreement, c, cohen)
    ann = timed("annotator table", annotator_table, c, model, fitted, alpha)
    left = timed("left side", left_side_overall, c, alpha)
    sus = timed("suspect labels", suspect_labels, c, model, fitted)
    intr = timed("intransitivity", intransitivity, c)
    return NoiseDiagnostics(agreement=agr, annotator_pairs=cohen, annotators=ann, left_side=left, suspects=sus,
                            flip_rate=fitted.flip_rate_, intransitivity=intr, model=fitted, timings=dict(timed))

