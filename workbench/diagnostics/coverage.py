"""Coverage: what the labels reach and what is missing.

- the comparison graph (nodes: responses, or generators with ``node="model"``): connected
  components, degrees, items with too few comparisons, and the spectral gap of each component
  (the algebraic connectivity of its normalized Laplacian: near 0, scores are poorly identified);
- prompts per category against a target mix; responses per prompt; generators compared with
  each other;
- score range: the share of pairs near the decision boundary vs. easy ones, by a fitted model;
- embedding coverage: for new (policy) samples, the share whose nearest labelled neighbour is
  farther than a threshold.

Every function takes a ``Version`` or a comparisons frame and returns polars frames.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import polars as pl
import scipy.sparse as sp
from scipy.sparse.csgraph import connected_components

from ._data import Timings, code, dense_codes

__all__ = [
    "comparison_graph", "graph_components", "spectral_gap", "degree_table", "category_mix",
    "responses_per_prompt", "model_matrix", "score_range", "embedding_coverage", "analyze_coverage",
    "CoverageDiagnostics", "ComparisonGraph",
]

DENSE_LIMIT = 400  # components up to this size get a dense eigen-solve (batched by size)


@dataclass
class ComparisonGraph:
    """An undirected weighted graph: ``weights`` counts labels between two nodes."""

    nodes: pl.Series
    adjacency: sp.csr_matrix
    node_kind: str

    @property
    def n_nodes(self) -> int:
        return self.adjacency.shape[0]


def comparison_graph(data: Any, node: str = "response") -> ComparisonGraph:
    """The comparison graph of a table: ``node="response"`` (responses, within prompts) or
    ``"model"`` (generators, across prompts; rows without both models are left out)."""
    c = code(data)
    if node == "response":
        u, v, names = c.item_a, c.item_b, c.items
    elif node == "model":
        f = c.frame
        if "model_a" not in f.columns or "model_b" not in f.columns:
            raise ValueError("a model graph needs model_a and model_b columns")
        ok = f["model_a"].is_not_null() & f["model_b"].is_not_null()
        f = f.filter(ok)
        if f.height == 0:
            raise ValueError("no comparisons name both generators (model_a, model_b)")
        (u, v), names = dense_codes(f["model_a"], f["model_b"])
        keep = u != v
        u, v = u[keep], v[keep]
    else:
        raise ValueError(f"node must be 'response' or 'model', got {node!r}")
    n = len(names)
    w = sp.coo_matrix((np.ones(u.size), (u, v)), shape=(n, n)).tocsr()
    w = (w + w.T).tocsr()
    w.sum_duplicates()
    return ComparisonGraph(nodes=names, adjacency=w, node_kind=node)


def graph_components(g: ComparisonGraph, with_gap: bool = True) -> pl.DataFrame:
    """One row per connected component: component, n_nodes, n_edges (distinct pairs), n_labels,
    spectral_gap (normalized-Laplacian algebraic connectivity; 0 for a single node), largest first."""
    n_comp, lab = connected_components(g.adjacency, directed=False)
    a = g.adjacency.tocoo()
    upper = a.row < a.col
    sizes = np.bincount(lab, minlength=n_comp)
    edges = np.bincount(lab[a.row[upper]], minlength=n_comp)
    labels = np.bincount(lab[a.row[upper]], a.data[upper], minlength=n_comp)
    gaps = _component_gaps(g.adjacency, lab, n_comp, sizes) if with_gap else np.full(n_comp, np.nan)
    return pl.DataFrame({
        "component": np.arange(n_comp), "n_nodes": sizes, "n_edges": edges, "n_labels": labels.astype(np.int64), "spectral_gap": gaps,
    }).sort("n_nodes", "component", descending=[True, False])


def spectral_gap(adjacency: sp.spmatrix) -> float:
    """Algebraic connectivity (second smallest eigenvalue) of the normalized Laplacian
    ``I - D^-1/2 W D^-1/2`` of a connected graph; a sparse eigensolver above ``DENSE_LIMIT`` nodes."""
    w = sp.csr_matrix(adjacency, dtype=float)
    n = w.shape[0]
    if n < 2:
        return 0.0
    deg = np.asarray(w.sum(axis=1)).ravel()
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
    s = sp.diags(inv) @ w @ sp.diags(inv)
    if n <= DENSE_LIMIT:
        ev = np.linalg.eigvalsh(np.eye(n) - s.toarray())
        return float(max(ev[1], 0.0))
    from scipy.sparse.linalg import eigsh

    # the two largest eigenvalues of I + S are 2 - lambda_1 (= 2) and 2 - lambda_2
    m = sp.identity(n) + s
    try:
        vals = eigsh(m, k=2, which="LA", tol=1e-8, maxiter=max(5000, 20 * n), return_eigenvectors=False)
    except Exception:  # ArpackNoConvergence: fall back to LOBPCG
        from scipy.sparse.linalg import lobpcg

        rng = np.random.default_rng(0)
        x = rng.normal(size=(n, 2))
        x[:, 0] = np.sqrt(deg)
        vals, _ = lobpcg(m, x, largest=True, maxiter=500, tol=1e-6)
    return float(max(0.0, 2.0 - np.sort(vals)[0]))


def _component_gaps(w: sp.csr_matrix, lab: np.ndarray, n_comp: int, sizes: np.ndarray) -> np.ndarray:
    """Spectral gaps of all components: small ones batched by size through a dense eigen-solve."""
    gaps = np.zeros(n_comp)
    order = np.argsort(lab, kind="stable")
    starts = np.concatenate([[0], np.cumsum(sizes)])
    deg = np.asarray(w.sum(axis=1)).ravel()
    inv = np.where(deg > 0, 1 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
    s_all = (sp.diags(inv) @ w @ sp.diags(inv)).tocsr()
    pos = np.empty(w.shape[0], dtype=np.int64)
    for comp in range(n_comp):
        pos[order[starts[comp]:starts[comp + 1]]] = np.arange(sizes[comp])
    coo = s_all.tocoo()
    for size in np.unique(sizes):
        if size < 2:
            continue
        comps = np.flatnonzero(sizes == size)
        if size > DENSE_LIMIT:
            for comp in comps:
                idx = order[starts[comp]:starts[comp + 1]]
                gaps[comp] = spectral_gap(w[idx][:, idx])
            continue
        for chunk in np.array_split(comps, max(1, int(comps.size * size * size // 20_000_000) + 1)):
            slot = np.full(n_comp, -1)
            slot[chunk] = np.arange(chunk.size)
            keep = slot[lab[coo.row]] >= 0
            mats = np.zeros((chunk.size, size, size))
            mats[slot[lab[coo.row[keep]]], pos[coo.row[keep]], pos[coo.col[keep]]] = coo.data[keep]
            lap = np.eye(size)[None] - mats
            ev = np.linalg.eigvalsh(lap)
            gaps[chunk] = np.maximum(ev[:, 1], 0.0)
    return gaps


def degree_table(g: ComparisonGraph, min_comparisons: int = 3) -> pl.DataFrame:
    """Per node: n_comparisons (labels), n_neighbours (distinct opponents), under_compared."""
    a = g.adjacency
    labels = np.asarray(a.sum(axis=1)).ravel()
    neighbours = np.diff(a.indptr)
    return pl.DataFrame({
        "node": g.nodes, "n_comparisons": labels.astype(np.int64), "n_neighbours": neighbours.astype(np.int64),
        "under_compared": labels < min_comparisons,
    }).sort("n_comparisons", "node")


def category_mix(data: Any, target: dict[str, float] | None = None) -> pl.DataFrame:
    """Prompts and labels per category against a target mix (shares, normalized), with the gap
    ``share - target_share``. Without a target, the columns of the target are null."""
    c = code(data)
    f = c.frame
    cat = f["category"].fill_null("(none)") if "category" in f.columns else pl.Series(["(none)"] * c.n)
    t = pl.DataFrame({"category": cat, "prompt": c.prompt}).group_by("category").agg(
        pl.col("prompt").n_unique().alias("n_prompts"), pl.len().alias("n_labels"))
    if target:
        bad = {k: v for k, v in target.items() if not isinstance(v, (int, float)) or v < 0 or not np.isfinite(v)}
        if bad or sum(target.values()) <= 0:
            raise ValueError(f"a target mix maps categories to non-negative shares with a positive sum; got {target}")
        tot = float(sum(target.values()))
        tgt = pl.DataFrame({"category": list(target), "target_share": [v / tot for v in target.values()]})
        t = t.join(tgt, on="category", how="full", coalesce=True)
    else:
        t = t.with_columns(pl.lit(None, dtype=pl.Float64).alias("target_share"))
    t = t.with_columns(pl.col("n_prompts").fill_null(0), pl.col("n_labels").fill_null(0))
    if target:
        t = t.with_columns(pl.col("target_share").fill_null(0.0))  # a category outside the target mix is wanted at 0%
    t = t.with_columns((pl.col("n_prompts") / pl.col("n_prompts").sum()).alias("share"))
    t = t.with_columns((pl.col("share") - pl.col("target_share")).alias("gap"),
                       (pl.col("target_share") * pl.col("n_prompts").sum()).alias("target_prompts"))
    return t.select("category", "n_prompts", "n_labels", "share", "target_share", "gap", "target_prompts").sort("n_prompts", "category", descending=[True, False])


def category_mix_test(mix: pl.DataFrame) -> float:
    """Chi-square p-value of the prompt counts against the target mix (nan without a target)."""
    from scipy.stats import chisquare

    m = mix.filter(pl.col("target_share").is_not_null() & (pl.col("target_share") > 0))
    if m.height < 2:
        return float("nan")
    obs = m["n_prompts"].to_numpy().astype(float)
    exp = m["target_share"].to_numpy() / m["target_share"].sum() * obs.sum()
    if obs.sum() == 0:
        return float("nan")
    return float(chisquare(obs, exp).pvalue)


def responses_per_prompt(data: Any) -> pl.DataFrame:
    """Per prompt: distinct responses compared, distinct pairs, labels, and components of its
    response graph (more than 1: its responses cannot all be put on one scale)."""
    c = code(data)
    n_items = len(c.items)
    prompt_of_item = np.zeros(n_items, dtype=np.int64)
    prompt_of_item[c.item_a] = c.prompt
    prompt_of_item[c.item_b] = c.prompt
    w = sp.coo_matrix((np.ones(c.n), (c.item_a, c.item_b)), shape=(n_items, n_items)).tocsr()
    _, lab = connected_components(w, directed=False)
    comps = pl.DataFrame({"p": prompt_of_item, "comp": lab}).group_by("p").agg(pl.col("comp").n_unique().alias("n_components"))
    pairs = pl.DataFrame({"p": c.prompt, "pair": c.pair}).group_by("p").agg(pl.col("pair").n_unique().alias("n_pairs"), pl.len().alias("n_labels"))
    resp = pl.DataFrame({"p": prompt_of_item}).group_by("p").len().rename({"len": "n_responses"})
    out = resp.join(pairs, on="p").join(comps, on="p")
    return out.select(
        pl.col("p").map_batches(lambda s: c.prompts.gather(s.to_numpy()), return_dtype=pl.String).alias("prompt_id"),
        "n_responses", "n_pairs", "n_labels", "n_components",
        (pl.col("n_pairs") / (pl.col("n_responses") * (pl.col("n_responses") - 1) / 2)).alias("pair_coverage"),
    ).sort("n_labels", "prompt_id")


def model_matrix(data: Any) -> pl.DataFrame:
    """Generators against each other (long form): model_1, model_2, n_labels, n_decisive,
    wins_1 (labels preferring model_1's response), win_rate_1. Each unordered pair once."""
    c = code(data)
    f = c.frame
    if "model_a" not in f.columns or "model_b" not in f.columns:
        return pl.DataFrame(schema={"model_1": pl.String, "model_2": pl.String, "n_labels": pl.UInt32, "n_decisive": pl.UInt32, "wins_1": pl.Float64, "win_rate_1": pl.Float64})
    t = f.select("model_a", "model_b", "label").filter(pl.col("model_a").is_not_null() & pl.col("model_b").is_not_null())
    swap = pl.col("model_a") > pl.col("model_b")
    t = t.with_columns(
        pl.when(swap).then(pl.col("model_b")).otherwise(pl.col("model_a")).alias("model_1"),
        pl.when(swap).then(pl.col("model_a")).otherwise(pl.col("model_b")).alias("model_2"),
        (pl.when(swap).then(pl.col("label") == "b").otherwise(pl.col("label") == "a")).alias("win_1"),
        pl.col("label").is_in(["a", "b"]).alias("decisive"),
    )
    g = t.group_by("model_1", "model_2").agg(
        pl.len().cast(pl.UInt32).alias("n_labels"), pl.col("decisive").sum().cast(pl.UInt32).alias("n_decisive"),
        pl.col("win_1").sum().cast(pl.Float64).alias("wins_1"))
    return g.with_columns((pl.col("wins_1") / pl.col("n_decisive")).alias("win_rate_1")).sort("n_labels", "model_1", "model_2", descending=[True, False, False])


def score_range(data: Any, p_a: np.ndarray | None = None, model: Any = None, near: float = 0.1, easy: float = 0.4) -> pl.DataFrame:
    """Pairs by how hard a fitted model finds them: ``near`` boundary (|P(a) - 1/2| <= near),
    ``easy`` (|P(a) - 1/2| >= easy) and in between. ``p_a`` per row (e.g. the out-of-fold
    prior), or ``model`` (duck-typed ``predict_proba``), or a Bradley-Terry fit here.
    Columns: band, n_pairs, share."""
    c = code(data)
    if p_a is None:
        if model is not None:
            from .reliability import predict_pair_proba

            p_a = predict_pair_proba(model, c.frame)
        else:
            from .reliability import PairDawidSkene

            p_a = PairDawidSkene().fit(c).predict_proba(c)
    p_a = np.asarray(p_a, dtype=float)
    if p_a.shape != (c.n,):
        raise ValueError(f"p_a must have one probability per row ({c.n}), got shape {p_a.shape}")
    # one value per pair: the mean over its rows in the pair's orientation
    first = c.item_a == c.pair_first[c.pair]
    pf = np.where(first, p_a, 1 - p_a)
    ok = ~np.isnan(pf)
    s = np.bincount(c.pair[ok], pf[ok], c.n_pairs)
    k = np.bincount(c.pair[ok], minlength=c.n_pairs)
    margin = np.abs(s[k > 0] / k[k > 0] - 0.5)
    bands = np.where(margin <= near, "near boundary", np.where(margin >= easy, "easy", "middle"))
    out = pl.DataFrame({"band": bands}).group_by("band").len().rename({"len": "n_pairs"})
    out = pl.DataFrame({"band": ["near boundary", "middle", "easy"]}).join(out, on="band", how="left").with_columns(pl.col("n_pairs").fill_null(0))
    return out.with_columns((pl.col("n_pairs") / max(1, int(margin.size))).alias("share"))


def _tfidf(texts_fit: Sequence[str], texts_other: Sequence[str], n_features: int = 2 ** 18) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    from sklearn.feature_extraction.text import HashingVectorizer, TfidfTransformer

    hv = HashingVectorizer(n_features=n_features, alternate_sign=False, norm=None, ngram_range=(1, 2))
    x = hv.transform(texts_fit)
    tf = TfidfTransformer().fit(x)
    return tf.transform(x).tocsr(), tf.transform(hv.transform(texts_other)).tocsr()


def _normalize_rows(x: Any) -> Any:
    if sp.issparse(x):
        n = np.sqrt(np.asarray(x.multiply(x).sum(axis=1)).ravel())
        return (sp.diags(1 / np.maximum(n, 1e-12)) @ x).tocsr()
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def _nearest(new: Any, labelled: Any, exclude: np.ndarray | None = None, chunk: int = 256, skip_identical: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Cosine distance to, and index of, each new row's nearest labelled row (rows normalized
    here; ``exclude[i]`` is a labelled index new row ``i`` may not match, for leave-one-out)."""
    a, b = _normalize_rows(new), _normalize_rows(labelled)
    bt = b.T.tocsr() if sp.issparse(b) else b.T
    dist = np.empty(a.shape[0])
    idx = np.empty(a.shape[0], dtype=np.int64)
    for s in range(0, a.shape[0], chunk):
        sim = a[s:s + chunk] @ bt
        sim = sim.toarray() if sp.issparse(sim) else np.asarray(sim)
        rows = np.arange(sim.shape[0])
        if exclude is not None:
            sim[rows, exclude[s:s + chunk]] = -np.inf
        if skip_identical:  # duplicates of a sample are not its neighbours
            sim[sim >= 1 - 1e-6] = -np.inf
        j = sim.argmax(axis=1)
        idx[s:s + chunk] = j
        dist[s:s + chunk] = 1 - sim[rows, j]
    return np.where(np.isfinite(dist), np.clip(dist, 0.0, 2.0), np.inf), idx


def embedding_coverage(labelled: Any, new: Any, threshold: float | None = None, quantile: float = 0.95,
                       max_reference: int = 2000, seed: int = 0) -> tuple[pl.DataFrame, dict[str, float]]:
    """For each new sample, the cosine distance to its nearest labelled neighbour and whether it
    is farther than ``threshold`` (``uncovered``).

    ``labelled``/``new`` are 2-d arrays of embeddings, or lists of texts (then a hashing TF-IDF,
    fitted on the labelled texts, embeds both). Without ``threshold``, it is the ``quantile`` of
    the labelled samples' own nearest-neighbour distances (leave-one-out, on up to
    ``max_reference`` of them, duplicates left out): a new sample is uncovered when it is farther from the labels
    than almost every labelled sample is from another. Returns the per-sample frame (index,
    nearest_labelled, distance, uncovered) and a summary (threshold, uncovered_share, ...).
    """
    texts = not (hasattr(labelled, "shape") and getattr(labelled, "ndim", 1) == 2)
    if texts:
        labelled, new = list(labelled), list(new)
        if not labelled or not new:
            raise ValueError("embedding coverage needs at least one labelled and one new sample")
        if not all(isinstance(t, str) for t in labelled + new):
            raise ValueError("texts must be strings (or pass 2-d embedding arrays)")
        lab_x, new_x = _tfidf(labelled, new)
    else:
        lab_x = labelled if sp.issparse(labelled) else np.asarray(labelled, dtype=np.float32)
        new_x = new if sp.issparse(new) else np.asarray(new, dtype=np.float32)
        if new_x.ndim != 2 or new_x.shape[1] != lab_x.shape[1]:
            raise ValueError(f"embeddings must be 2-d with the same width; got {lab_x.shape} and {getattr(new_x, 'shape', None)}")
        if lab_x.shape[0] == 0 or new_x.shape[0] == 0:
            raise ValueError("embedding coverage needs at least one labelled and one new sample")
        if not sp.issparse(lab_x) and not (np.isfinite(lab_x).all() and np.isfinite(new_x).all()):
            raise ValueError("embeddings contain nan or inf")
    n_lab = lab_x.shape[0]
    if threshold is None:
        if n_lab < 2:
            raise ValueError("a threshold is needed when there is only one labelled sample")
        rng = np.random.default_rng(seed)
        ref = rng.choice(n_lab, size=min(max_reference, n_lab), replace=False)
        # leave-one-out: the nearest *other* (distinct) labelled sample
        d_ref, _ = _nearest(lab_x[ref], lab_x, exclude=ref, skip_identical=True)
        d_ref = d_ref[np.isfinite(d_ref)]
        if d_ref.size == 0:
            raise ValueError("all labelled samples are identical; pass a threshold")
        threshold = float(np.quantile(d_ref, quantile))
    dist, idx = _nearest(new_x, lab_x)
    unc = dist > threshold
    frame = pl.DataFrame({"index": np.arange(dist.size), "nearest_labelled": idx, "distance": dist, "uncovered": unc})
    summary = {"threshold": float(threshold), "n_new": int(dist.size), "n_labelled": int(n_lab),
               "uncovered_share": float(unc.mean()), "median_distance": float(np.median(dist))}
    return frame, summary


@dataclass
class CoverageDiagnostics:
    """All coverage diagnostics of one table (see :func:`analyze_coverage`)."""

    response_components: pl.DataFrame
    model_components: pl.DataFrame | None
    degrees: pl.DataFrame
    categories: pl.DataFrame
    category_p_value: float
    prompts: pl.DataFrame
    models: pl.DataFrame
    score_range: pl.DataFrame
    embedding: pl.DataFrame | None = None
    embedding_summary: dict | None = None
    timings: dict[str, float] = field(default_factory=dict)


def analyze_coverage(data: Any, p_a: np.ndarray | None = None, model: Any = None, target_mix: dict[str, float] | None = None,
                     min_comparisons: int = 3, new_samples: Any = None, labelled_embeddings: Any = None,
                     embedding_threshold: float | None = None) -> CoverageDiagnostics:
    """Run every coverage diagnostic once. ``new_samples``: texts or an embedding array (then
    ``labelled_embeddings`` gives one row per distinct labelled response, in the order of
    ``comparison_graph(data).nodes``); texts are compared with the labelled prompt + response texts."""
    timed = Timings()

    c = timed("code", code, data)
    g = timed("response graph", comparison_graph, c, "response")
    comps = timed("components and spectral gaps", graph_components, g)
    mg = None
    if "model_a" in c.frame.columns and c.frame["model_a"].null_count() < c.n:
        try:
            mgraph = timed("model graph", comparison_graph, c, "model")
            mg = timed("model components", graph_components, mgraph)
        except ValueError:
            mg = None
    deg = timed("degrees", degree_table, g, min_comparisons)
    cats = timed("category mix", category_mix, c, target_mix)
    pr = timed("responses per prompt", responses_per_prompt, c)
    mm = timed("model matrix", model_matrix, c)
    sr = timed("score range", score_range, c, p_a, model)
    emb, emb_sum = None, None
    if new_samples is not None:
        if labelled_embeddings is not None:
            emb, emb_sum = timed("embedding coverage", embedding_coverage, labelled_embeddings, new_samples, embedding_threshold)
        else:
            f = c.frame
            lab = pl.concat([f.select(pl.col("prompt").fill_null(""), pl.col("response_a").alias("r"), pl.col("response_a_id").alias("id")),
                             f.select(pl.col("prompt").fill_null(""), pl.col("response_b").alias("r"), pl.col("response_b_id").alias("id"))]).unique("id")
            texts = (lab["prompt"] + "\n" + lab["r"].fill_null("")).to_list()
            emb, emb_sum = timed("embedding coverage", embedding_coverage, texts, list(new_samples), embedding_threshold)
    return CoverageDiagnostics(
        response_components=comps, model_components=mg, degrees=deg, categories=cats, category_p_value=category_mix_test(cats),
        prompts=pr, models=mm, score_range=sr, embedding=emb, embedding_summary=emb_sum, timings=dict(timed),
    )



