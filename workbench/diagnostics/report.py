"""The diagnostics report: "can I trust this version of my labels, and what is missing from it?"

>>> from workbench.diagnostics import build_report
>>> report = build_report(store.version("v1"), "out/diag-v1", store=store)   # records a run
>>> print(report.summary())            # worst findings first
>>> report.findings                    # polars: severity, area, finding
>>> report.metrics                     # what metrics.json holds
>>> report.html_path                   # report.html (self-contained: plots embedded as PNG data)

``build_report`` accepts a ``Version``, a version name (with ``store``), or a comparisons frame
(polars or pandas; no run is recorded without a store and a version). It writes into
``out_dir``: ``report.html``, ``metrics.json``, ``plots/*.png`` and ``tables/*.csv``.
All text that comes from the data is escaped in the HTML, and the page carries a
Content-Security-Policy that allows no script and no remote resource.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import html
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ._data import code
from .coverage import CoverageDiagnostics, analyze_coverage
from .noise import NoiseDiagnostics, _p_model_a, analyze_noise


@dataclass
class DiagnosticsConfig:
    """Settings of a diagnostics report (loads from YAML with :meth:`from_yaml`)."""

    target_mix: dict[str, float] | None = None  # category -> share of prompts wanted
    min_comparisons: int = 3  # responses with fewer labels are "under-compared"
    min_shared: int = 5  # Cohen's kappa only for annotator pairs sharing this many units
    alpha: float = 0.01  # significance level of the bias tests
    suspect_threshold: float = 0.5  # a label is suspect above this flip posterior
    max_table_rows: int = 50  # rows of each table shown in the HTML
    max_suspects_written: int = 10_000  # rows of tables/suspect_labels.csv
    embedding_threshold: float | None = None  # cosine distance; None: the labelled data's own 95th percentile

    def __post_init__(self) -> None:
        if self.target_mix is not None:
            if not isinstance(self.target_mix, dict) or not self.target_mix or any(
                    not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0 for v in self.target_mix.values()) or sum(self.target_mix.values()) <= 0:
                raise ValueError(f"target_mix must map categories to non-negative shares with a positive sum, got {self.target_mix!r}")
        for name in ("min_comparisons", "min_shared", "max_table_rows", "max_suspects_written"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {v!r}")
        for name in ("alpha", "suspect_threshold"):
            v = getattr(self, name)
            if not isinstance(v, (int, float)) or not 0 < v < 1:
                raise ValueError(f"{name} must be in (0, 1), got {v!r}")

    @classmethod
    def from_yaml(cls, path_or_text: str | os.PathLike) -> "DiagnosticsConfig":
        import yaml

        p = Path(path_or_text)
        text = p.read_text() if ("\n" not in str(path_or_text) and p.exists()) else str(path_or_text)
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError("a diagnostics config is a mapping of field names to values")
        known = {f.name for f in dataclasses.fields(cls)}
        if set(data) - known:
            raise ValueError(f"diagnostics config: unknown fields {sorted(set(data) - known)}; known: {sorted(known)}")
        return cls(**data)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class Report:
    """What :func:`build_report` produced."""

    out_dir: Path
    html_path: Path
    metrics_path: Path
    metrics: dict
    findings: pl.DataFrame  # severity (0-100), area, finding; worst first
    noise: NoiseDiagnostics
    coverage: CoverageDiagnostics
    plots: dict[str, Path]
    tables: dict[str, Path]
    timings: dict[str, float]
    run_id: str | None = None
    version_name: str | None = None
    version_hash: str | None = None

    def summary(self, n: int = 8) -> str:
        """A few lines for a terminal: the version, the size, and the worst findings first."""
        m = self.metrics
        head = f"diagnostics of {self.version_name or 'a comparisons table'}"
        if self.version_hash:
            head += f" ({self.version_hash[:12]})"
        lines = [head + f": {m['size']['labels']:,} labels, {m['size']['annotators']:,} annotators, "
                 f"{m['size']['prompts']:,} prompts, {m['size']['responses']:,} responses"]
        for row in self.findings.head(n).iter_rows(named=True):
            lines.append(f"  [{_level(row['severity'])}] {row['area']}: {row['finding']}")
        if self.findings.height > n:
            lines.append(f"  ... {self.findings.height - n} more findings in the report")
        lines.append(f"report: {self.html_path}")
        return "\n".join(lines)


def _level(severity: float) -> str:
    return "high" if severity >= 75 else "medium" if severity >= 45 else "low" if severity > 0 else "ok"


def _num(x: Any) -> Any:
    """JSON-safe scalars: numpy to Python, nan/inf to None."""
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (np.floating, float)):
        x = float(x)
        return x if math.isfinite(x) else None
    if isinstance(x, (np.bool_,)):
        return bool(x)
    if isinstance(x, dict):
        return {str(k): _num(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_num(v) for v in x]
    return x


def _ids(series: pl.Series, k: int = 5) -> str:
    vals = series.head(k).to_list()
    more = f" and {series.len() - k} more" if series.len() > k else ""
    return ", ".join(str(v) for v in vals) + more


def _findings(noise: NoiseDiagnostics, cov: CoverageDiagnostics, cfg: DiagnosticsConfig, metrics: dict) -> pl.DataFrame:
    out: list[tuple[float, str, str]] = []
    a = noise.annotators
    flagged = a.filter(pl.col("flags").is_not_null())

    annotator_findings = [  # (priority, flag, what it says of the flagged annotators)
        (95, "adversarial", "answer against the consensus (reliability interval below 0.5)"),
        (90, "random", "look like random clicking (reliability interval reaches 0.5)"),
        (80, "fails gold", "get gold pairs right well under 70% of the time (95% bound)"),
        (75, "too fast", "label much faster than the rest (robust z < -3.5)"),
        (70, "left-side", f"favour one display side (binomial test, BH-adjusted p < {cfg.alpha})"),
        (65, "inconsistent", "answer repeated pairs inconsistently (consistency bound below 70%)"),
        (60, "length bias", "prefer longer or shorter responses beyond the consensus"),
    ]
    for priority, flag, what in annotator_findings:
        hit = flagged.filter(pl.col("flags").str.contains(flag, literal=True))
        if hit.height:
            out.append((priority, "annotators", f"{hit.height} annotator(s) {what}: {_ids(hit['annotator_id'])}"))
    ls = noise.left_side.row(0, named=True)
    if ls["biased"]:
        out.append((85, "labels", f"labels favour the {'left' if ls['left_rate'] > 0.5 else 'right'} side: {ls['left_rate']:.1%} of {ls['n_sided']:,} decisive labels (p = {ls['p_value']:.2g})"))
    fr = noise.flip_rate
    n_sus = metrics["noise"]["suspect_labels"]
    if fr > 0.02:
        out.append((min(90.0, 300 * fr), "labels", f"an estimated {fr:.1%} of decisive labels contradict the consensus order; {n_sus:,} labels are more likely flipped than not"))
    ag = noise.agreement.row(0, named=True)
    alpha_k = ag["krippendorff_alpha"]
    if alpha_k is not None and np.isfinite(alpha_k):
        if alpha_k < 0.4:
            out.append((70, "agreement", f"low agreement on pairs labelled several times: Krippendorff's alpha {alpha_k:.2f} ({ag['n_units']:,} pairs)"))
        elif alpha_k < 0.667:
            out.append((45, "agreement", f"moderate agreement: Krippendorff's alpha {alpha_k:.2f} (below 0.667, the usual floor for tentative conclusions)"))
    cyc = noise.cyclic_share
    if np.isfinite(cyc) and cyc > 0.05:
        out.append((55 if cyc > 0.1 else 35, "labels", f"{cyc:.1%} of fully compared response triads are cyclic (x > y > z > x); random labels give 25%"))
    if cov.model_components is not None and cov.model_components.height > 1:
        out.append((85, "coverage", f"generators fall into {cov.model_components.height} groups never compared with each other (sizes {', '.join(str(x) for x in cov.model_components['n_nodes'].head(6).to_list())})"))
    split = cov.prompts.filter(pl.col("n_components") > 1)
    if split.height:
        out.append((65, "coverage", f"{split.height} prompt(s) have responses in separate groups never compared with each other"))
    under = cov.degrees.filter(pl.col("under_compared"))
    if under.height:
        share = under.height / max(1, cov.degrees.height)
        out.append((55 if share > 0.2 else 30, "coverage", f"{under.height:,} responses ({share:.0%}) have fewer than {cfg.min_comparisons} labels"))
    gaps = cov.response_components.filter(pl.col("n_nodes") >= 3)["spectral_gap"]
    if gaps.len() and float(gaps.median()) < 0.2:
        out.append((40, "coverage", f"weakly connected comparison graphs: median spectral gap {float(gaps.median()):.2f} (scores poorly identified)"))
    if np.isfinite(cov.category_p_value) and cov.category_p_value < cfg.alpha:
        worst = cov.categories.filter(pl.col("gap").is_not_null()).sort("gap").head(3)
        detail = ", ".join(f"{r['category']} {r['share']:.0%} vs {r['target_share']:.0%}" for r in worst.iter_rows(named=True))
        out.append((60, "coverage", f"prompt mix is off target (chi-square p = {cov.category_p_value:.2g}); most short: {detail}"))
    outside = cov.categories.filter(pl.col("target_share") == 0)
    if outside.height and float(outside["share"].sum()) > 0.05:
        out.append((50, "coverage", f"{float(outside['share'].sum()):.0%} of prompts are in categories outside the target mix: {_ids(outside['category'])}"))
    sr = {r["band"]: r["share"] for r in cov.score_range.iter_rows(named=True)}
    if sr.get("near boundary", 0) > 0.5:
        out.append((40, "coverage", f"{sr['near boundary']:.0%} of pairs are near coin flips for the fitted model"))
    if sr.get("easy", 0) > 0.8:
        out.append((40, "coverage", f"{sr['easy']:.0%} of pairs are easy for the fitted model (little new information per label)"))
    if cov.embedding_summary and cov.embedding_summary["uncovered_share"] > 0.1:
        e = cov.embedding_summary
        out.append((70 if e["uncovered_share"] > 0.25 else 50, "coverage", f"{e['uncovered_share']:.0%} of new samples are farther than {e['threshold']:.2f} (cosine) from every labelled response"))
    if not out:
        out.append((0.0, "summary", "no problems found"))
    return pl.DataFrame(out, schema={"severity": pl.Float64, "area": pl.String, "finding": pl.String}, orient="row").sort("severity", descending=True, maintain_order=True)


# ---------------------------------------------------------------------- plots
def _safe_label(s: Any, n: int = 28) -> str:
    s = str(s)
    s = s if len(s) <= n else s[: n - 1] + "…"
    return s.replace("$", r"\$")


def _plots(noise: NoiseDiagnostics, cov: CoverageDiagnostics, folder: Path) -> dict[str, Path]:
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, Path] = {}

    def save(fig: Any, name: str, title: str) -> None:
        fig.suptitle(title)
        fig.tight_layout()
        p = folder / f"{name}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        out[name] = p

    a = noise.annotators.filter(pl.col("reliability").is_not_null()).sort("reliability")
    if a.height:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        r = a["reliability"].to_numpy()
        if a.height <= 300:
            x = np.arange(a.height)
            ax.errorbar(x, r, yerr=[r - a["ci_low"].to_numpy(), a["ci_high"].to_numpy() - r], fmt="o", ms=3, lw=0.8)
            if a.height <= 40:  # few enough to name each annotator on the axis
                ax.set_xticks(x, [str(v)[:16] for v in a["annotator_id"].to_list()], rotation=60, ha="right", fontsize=7)
            else:
                ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
            ax.set_xlabel("annotators, least reliable first" + ("" if a.height <= 40 else " (rank)"))
        else:
            ax.hist(r, bins=50)
            ax.set_xlabel("reliability")
        ax.axhline(0.5, color="red", lw=0.8, ls="--")
        ax.set_ylabel("reliability (P(label agrees with truth))" if a.height <= 300 else "annotators")
        save(fig, "reliability", "Annotator reliability with 95% intervals (red: random clicking)")
    sided = noise.annotators.filter(pl.col("n_sided") > 0)
    if sided.height:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        n = sided["n_sided"].to_numpy()
        ax.scatter(n, sided["left_rate"].to_numpy(), s=8, alpha=0.6)
        grid = np.linspace(max(1, n.min()), n.max() + 1, 200)
        ax.plot(grid, 0.5 + 2.576 * 0.5 / np.sqrt(grid), color="red", lw=0.8)
        ax.plot(grid, 0.5 - 2.576 * 0.5 / np.sqrt(grid), color="red", lw=0.8)
        ax.set_xscale("log")
        ax.set_xlabel("decisive labels with a known side")
        ax.set_ylabel("share choosing the left")
        save(fig, "left_side", "Left-side rate per annotator (red: 99% band of an unbiased annotator)")
    d = noise.annotators["median_duration_ms"].drop_nulls().drop_nans()
    if d.len():
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.hist(np.log10(np.maximum(d.to_numpy(), 1)), bins=40)
        ax.set_xlabel("log10 median milliseconds per label")
        ax.set_ylabel("annotators")
        save(fig, "durations", "Time per label")
    if noise.suspects.height:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        ax.hist(noise.suspects["flip_posterior"].to_numpy(), bins=50)
        ax.set_yscale("log")
        ax.set_xlabel("P(label contradicts the true order)")
        ax.set_ylabel("labels")
        save(fig, "flip_posteriors", f"Suspect labels (estimated flip rate {noise.flip_rate:.1%})")
    if cov.degrees.height:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        deg = cov.degrees["n_comparisons"].to_numpy()
        ax.hist(deg, bins=min(60, max(5, int(deg.max()))))
        ax.set_yscale("log")
        ax.set_xlabel("labels per response")
        ax.set_ylabel("responses")
        save(fig, "degrees", "Degree distribution of the comparison graph")
    mm = cov.models
    if mm.height:
        top = (pl.concat([mm.select(pl.col("model_1").alias("m"), "n_labels"), mm.select(pl.col("model_2").alias("m"), "n_labels")])
               .group_by("m").agg(pl.col("n_labels").sum()).sort("n_labels", "m", descending=[True, False]).head(30)["m"].to_list())
        if len(top) >= 2:
            k = {m: i for i, m in enumerate(top)}
            mat = np.full((len(top), len(top)), np.nan)
            for r in mm.filter(pl.col("model_1").is_in(top) & pl.col("model_2").is_in(top)).iter_rows(named=True):
                if r["n_decisive"]:
                    mat[k[r["model_1"]], k[r["model_2"]]] = r["win_rate_1"]
                    mat[k[r["model_2"]], k[r["model_1"]]] = 1 - r["win_rate_1"]
            fig, ax = plt.subplots(figsize=(7, 6))
            cmap = plt.get_cmap("RdBu").with_extremes(bad="#cccccc")
            im = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, vmin=0, vmax=1)
            labels = [_safe_label(m) for m in top]
            ax.set_xticks(range(len(top)), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(len(top)), labels, fontsize=6)
            fig.colorbar(im, ax=ax, label="row's win rate (grey: never compared)")
            save(fig, "model_matrix", "Generators against each other")
    cats = cov.categories
    if cats.height:
        fig, ax = plt.subplots(figsize=(7, 3.5))
        x = np.arange(cats.height)
        ax.bar(x - 0.2, cats["share"].fill_null(0).to_numpy(), 0.4, label="share of prompts")
        if cats["target_share"].null_count() < cats.height:
            ax.bar(x + 0.2, cats["target_share"].fill_null(0).to_numpy(), 0.4, label="target")
        ax.set_xticks(x, [_safe_label(c, 16) for c in cats["category"].to_list()], rotation=45, ha="right", fontsize=7)
        ax.legend()
        save(fig, "categories", "Prompts per category")
    sr = cov.score_range
    if sr.height:
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.bar(sr["band"].to_list(), sr["share"].to_numpy())
        ax.set_ylabel("share of pairs")
        save(fig, "score_range", "Pairs by the fitted model's margin")
    gaps = cov.response_components.filter(pl.col("n_nodes") >= 2)["spectral_gap"]
    if gaps.len():
        fig, ax = plt.subplots(figsize=(7, 3))
        ax.hist(gaps.to_numpy(), bins=40)
        ax.set_xlabel("spectral gap (normalized Laplacian)")
        ax.set_ylabel("components")
        save(fig, "spectral_gaps", "How well each comparison graph identifies scores")
    return out


# ---------------------------------------------------------------------- html
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
table{border-collapse:collapse;font-size:12px;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:2px 6px;text-align:left;
max-width:320px;overflow-wrap:anywhere}th{background:#f3f3f3}.high{color:#b00020;font-weight:bold}.medium{color:#b26a00}
.low{color:#555}.ok{color:#1b7f3a}img{max-width:100%;border:1px solid #eee;margin:0.5em 0}code{font-size:12px}"""


def _fmt(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float):
        if not math.isfinite(v):
            return ""
        return f"{v:.4g}"
    s = str(v)
    return s if len(s) <= 200 else s[:199] + "…"


def _table(frame: pl.DataFrame | None, max_rows: int) -> str:
    if frame is None or frame.height == 0:
        return "<p><em>nothing to show</em></p>"
    cols = frame.columns
    rows = ["<tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in cols) + "</tr>"]
    for r in frame.head(max_rows).iter_rows():
        rows.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>")
    more = f"<p>{frame.height - max_rows:,} more rows in the CSV table.</p>" if frame.height > max_rows else ""
    return "<table>" + "".join(rows) + "</table>" + more


def _html(report: Report, cfg: DiagnosticsConfig) -> str:
    m = report.metrics
    esc = html.escape
    title = f"Diagnostics: {report.version_name or 'comparisons table'}"
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'>",
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{esc(title)}</h1>",
        f"<p>version hash <code>{esc(report.version_hash or '-')}</code> &middot; {m['size']['labels']:,} labels &middot; "
        f"{m['size']['annotators']:,} annotators &middot; {m['size']['prompts']:,} prompts &middot; {m['size']['responses']:,} responses"
        f" &middot; generated {esc(m['generated_at'])}" + (f" &middot; run <code>{esc(report.run_id)}</code>" if report.run_id else "") + "</p>",
        "<h2>Findings, worst first</h2><ul>",
    ]
    for r in report.findings.iter_rows(named=True):
        lvl = _level(r["severity"])
        parts.append(f"<li><span class='{lvl}'>[{lvl}]</span> <b>{esc(r['area'])}</b>: {esc(r['finding'])}</li>")
    parts.append("</ul>")

    def img(name: str) -> str:
        p = report.plots.get(name)
        if not p:
            return ""
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        return f"<img alt='{esc(name)}' src='data:image/png;base64,{data}'>"

    n, c = report.noise, report.coverage
    k = cfg.max_table_rows
    parts += [
        "<h2>Agreement</h2>", _table(n.agreement, k),
        "<p>Units are unordered pairs labelled by at least two annotators (each annotator's first label). Krippendorff's alpha and Fleiss' kappa: 1 is perfect, 0 chance.</p>",
        "<h3>Annotator pairs (Cohen's kappa), lowest first</h3>", _table(n.annotator_pairs.sort("kappa", nulls_last=True), k),
        "<h2>Annotators, least reliable first</h2>", img("reliability"),
        "<p>Reliability: one-coin Dawid-Skene on pairs with an out-of-fold Bradley-Terry prior; the probability that the annotator's label agrees with the true order (0.5: random, below: inverted).</p>",
        _table(n.annotators.select([col for col in n.annotators.columns if col in (
            "annotator_id", "n_labels", "reliability", "ci_low", "ci_high", "gold_accuracy", "n_gold", "self_consistency", "n_repeats",
            "left_rate", "left_p_adjusted", "longer_chosen_rate", "length_z", "median_duration_ms", "duration_z", "flags")]), k),
        img("left_side"), img("durations"),
        "<h2>Suspect labels</h2>",
        f"<p>Estimated flip rate: <b>{n.flip_rate:.2%}</b> of decisive labels. Labels ranked by the posterior probability that they contradict the true order "
        "(the pair's out-of-fold prior and its other labels, weighted by reliability).</p>",
        img("flip_posteriors"), _table(n.suspects.drop([col for col in ("prompt_id",) if col in n.suspects.columns]), k),
        "<h2>Intransitivity</h2>",
        f"<p>Share of cyclic triads: <b>{_fmt(n.cyclic_share)}</b> (random labels: 0.25).</p>", _table(n.intransitivity, k),
        "<h2>Comparison graph</h2>", img("degrees"), img("spectral_gaps"),
        "<h3>Generators</h3>", _table(c.model_components, k) if c.model_components is not None else "<p><em>no generator names</em></p>",
        img("model_matrix"), _table(c.models, k),
        "<h3>Response components (per prompt)</h3>", _table(c.response_components, k),
        "<h3>Under-compared responses</h3>", _table(c.degrees.filter(pl.col("under_compared")), k),
        "<h3>Prompts</h3>", _table(c.prompts, k),
        "<h2>Categories</h2>", img("categories"), _table(c.categories, k),
        f"<p>Chi-square p-value against the target mix: {_fmt(c.category_p_value)}</p>",
        "<h2>Score range</h2>", img("score_range"), _table(c.score_range, k),
    ]
    if c.embedding_summary:
        parts += ["<h2>Embedding coverage of new samples</h2>",
                  _table(pl.DataFrame([c.embedding_summary]), k), _table(c.embedding.sort("distance", descending=True) if c.embedding is not None else None, k)]
    parts += ["<h2>Timings (seconds)</h2>", _table(pl.DataFrame({"step": list(report.timings), "seconds": list(report.timings.values())}), 100),
              "</body></html>"]
    return "\n".join(parts)


# ---------------------------------------------------------------------- entry point
def build_report(
    data: Any,
    out_dir: str | os.PathLike,
    *,
    store: Any = None,
    config: DiagnosticsConfig | dict | None = None,
    model: Any = None,
    new_samples: Any = None,
    labelled_embeddings: Any = None,
    record_run: bool = True,
    name: str | None = None,
    plots: bool = True,
    progress: bool = False,
) -> Report:
    """Diagnose a version (or a comparisons frame) and write the report into ``out_dir``.

    ``data``: a ``Version``, a version name or hash (needs ``store``), or a comparisons frame.
    ``store``: with a version, records a ``diagnostics`` run (config, metrics, artifact path).
    ``model``: an optional fitted model with ``predict_proba`` (see
    :func:`workbench.diagnostics.reliability.predict_pair_proba`) used as the pair prior and
    for the score range, instead of the out-of-fold Bradley-Terry fit.
    ``new_samples``: texts (or an embedding array, with ``labelled_embeddings``) to check
    embedding coverage for. ``progress``: a progress bar on stderr (the CLI shows one).
    Returns a :class:`Report`.
    """
    t_start = time.perf_counter()
    cfg = config if isinstance(config, DiagnosticsConfig) else DiagnosticsConfig(**(config or {}))
    if isinstance(data, str):
        if store is None:
            raise ValueError("a version name needs a store (build_report(name, out_dir, store=store))")
        data = store.version(data)
    version = data if (hasattr(data, "hash") and hasattr(data, "to_polars")) else None
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder")
    run = None
    if store is not None and version is not None and record_run:
        run = store.start_run("diagnostics", version, cfg, name=name)
    from tqdm.auto import tqdm

    bar = tqdm(total=5, desc="diagnostics", unit="step", disable=not progress, leave=False)
    try:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        bar.set_postfix_str("reading")
        c = code(data)
        bar.update()
        bar.set_postfix_str("label noise")
        timings["read and code"] = time.perf_counter() - t
        noise = analyze_noise(c, model=model, alpha=cfg.alpha, min_shared=cfg.min_shared)
        timings.update({f"noise: {k}": v for k, v in noise.timings.items() if k != "code"})
        bar.update()
        bar.set_postfix_str("coverage")
        p_a = _p_model_a(c, noise.model)
        if model is None and getattr(noise.model, "score_array_", None) is not None:
            p_a = noise.model.predict_proba(c)  # the all-data fit covers ties too
        cov = analyze_coverage(c, p_a=p_a, model=model, target_mix=cfg.target_mix, min_comparisons=cfg.min_comparisons,
                               new_samples=new_samples, labelled_embeddings=labelled_embeddings, embedding_threshold=cfg.embedding_threshold)
        timings.update({f"coverage: {k}": v for k, v in cov.timings.items() if k != "code"})
        n_suspect = int((noise.suspects["flip_posterior"] > cfg.suspect_threshold).sum())
        ag = noise.agreement.row(0, named=True)
        ls = noise.left_side.row(0, named=True)
        gaps = cov.response_components.filter(pl.col("n_nodes") >= 2)["spectral_gap"]
        sr = {r["band"]: r["share"] for r in cov.score_range.iter_rows(named=True)}
        metrics: dict[str, Any] = {
            "generated_at": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "version": {"name": getattr(version, "name", None), "hash": getattr(version, "hash", None)},
            "size": {"labels": c.n, "annotators": len(c.annotators), "prompts": len(c.prompts), "responses": len(c.items),
                     "pairs": c.n_pairs, "decisive_labels": int((c.label < 2).sum())},
            "agreement": {k: ag[k] for k in ("n_units", "observed_agreement", "fleiss_kappa", "krippendorff_alpha", "mean_cohen_kappa", "n_annotator_pairs")},
            "noise": {
                "flip_rate": noise.flip_rate, "suspect_labels": n_suspect,
                "left_rate": ls["left_rate"], "left_p_value": ls["p_value"], "left_biased": ls["biased"],
                "cyclic_triad_share": noise.cyclic_share, "triads": int(noise.intransitivity["n_triads"].sum()) if noise.intransitivity.height else 0,
                "flagged_annotators": int(noise.annotators["flags"].is_not_null().sum()),
                "longer_chosen_rate": _longer_chosen_rate(c),
                "median_reliability": noise.annotators["reliability"].median(),
            },
            "coverage": {
                "response_components": cov.response_components.height,
                "model_components": cov.model_components.height if cov.model_components is not None else None,
                "prompts_with_split_responses": int((cov.prompts["n_components"] > 1).sum()),
                "under_compared_responses": int(cov.degrees["under_compared"].sum()),
                "spectral_gap_median": float(gaps.median()) if gaps.len() else None,
                "spectral_gap_min": float(gaps.min()) if gaps.len() else None,
                "category_p_value": cov.category_p_value,
                "score_range": sr,
                "embedding": cov.embedding_summary,
            },
        }
        bar.update()
        bar.set_postfix_str("plots")
        findings = _findings(noise, cov, cfg, metrics)
        metrics["findings"] = findings.to_dicts()
        out.mkdir(parents=True, exist_ok=True)
        t = time.perf_counter()
        plot_paths = _plots(noise, cov, out / "plots") if plots else {}
        timings["plots"] = time.perf_counter() - t
        bar.update()
        bar.set_postfix_str("tables and html")
        t = time.perf_counter()
        tables = _write_tables(noise, cov, out / "tables", cfg)
        timings["tables"] = time.perf_counter() - t
        report = Report(out_dir=out, html_path=out / "report.html", metrics_path=out / "metrics.json", metrics=metrics, findings=findings,
                        noise=noise, coverage=cov, plots=plot_paths, tables=tables, timings=timings,
                        run_id=run.run_id if run else None, version_name=getattr(version, "name", None), version_hash=getattr(version, "hash", None))
        t = time.perf_counter()
        report.html_path.write_text(_html(report, cfg), encoding="utf-8")
        timings["html"] = time.perf_counter() - t
        timings["total"] = time.perf_counter() - t_start
        metrics["timings_s"] = dict(timings)
        metrics = _num(metrics)
        report.metrics = metrics
        report.metrics_path.write_text(json.dumps(metrics, indent=2, allow_nan=False), encoding="utf-8")
        bar.update()
    except BaseException as exc:
        if run is not None:
            run.fail(f"{type(exc).__name__}: {exc}")
        raise
    finally:
        bar.close()
    if run is not None:
        run.finish(metrics={k: metrics[k] for k in ("size", "agreement", "noise", "coverage")}, artifact_path=str(out.resolve()))
    return report


def _longer_chosen_rate(c: Any) -> float:
    """Share of decisive labels (between responses of different lengths) that chose the longer one."""
    d = (c.label < 2) & (c.len_a != c.len_b) & (c.len_a > 0) & (c.len_b > 0)
    if not d.any():
        return float("nan")
    return float(((c.len_a > c.len_b) == (c.label == 0))[d].mean())


def _write_tables(noise: NoiseDiagnostics, cov: CoverageDiagnostics, folder: Path, cfg: DiagnosticsConfig) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    frames = {
        "annotators": noise.annotators, "annotator_pairs": noise.annotator_pairs, "agreement": noise.agreement,
        "suspect_labels": noise.suspects.head(cfg.max_suspects_written), "intransitivity": noise.intransitivity,
        "response_components": cov.response_components, "model_components": cov.model_components, "degrees": cov.degrees,
        "categories": cov.categories, "prompts": cov.prompts, "models": cov.models, "score_range": cov.score_range, "embedding": cov.embedding,
    }
    out = {}
    for k, f in frames.items():
        if f is None:
            continue
        p = folder / f"{k}.csv"
        f.write_csv(p)
        out[k] = p
    return out


