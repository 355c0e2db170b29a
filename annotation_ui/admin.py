"""The admin view's data: progress, agreement, gold accuracy, side bias, versions, leaderboard, export.

An :class:`AdminView` is only handed out by :meth:`AnnotationService.admin`, which checks the
admin role; every method returns a polars frame, a path, or a matplotlib figure.
"""

from __future__ import annotations

import datetime as dt
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from workbench import assign

from workbench.diagnostics import noise

if TYPE_CHECKING:
    from .service import AnnotationService

EXPORT_FORMATS = ("trl", "trl-conversational", "parquet", "jsonl")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def agreement_table(comparisons: Any, min_shared: int = 5) -> pl.DataFrame:
    """Agreement on pairs labelled by several annotators, as the admin view shows it.

    ``metric, value, items, annotators`` for the mean pairwise Cohen's kappa (annotator pairs
    sharing at least ``min_shared`` pairs), Fleiss' kappa and Krippendorff's alpha (nominal), all
    from :mod:`workbench.diagnostics.noise`: a pair shown either way round is one unit, read in its
    own orientation, and each annotator's first label on it counts (repeats measure
    self-consistency instead).
    """
    schema = {"metric": pl.String, "value": pl.Float64, "items": pl.Int64, "annotators": pl.Int64}
    names = ["cohen_kappa_mean", "fleiss_kappa", "krippendorff_alpha"]
    if comparisons is not None and not isinstance(comparisons, pl.DataFrame):
        comparisons = pl.from_pandas(comparisons)
    if comparisons is None or comparisons.height == 0:
        return pl.DataFrame({"metric": names, "value": [float("nan")] * 3, "items": [0] * 3, "annotators": [0] * 3}, schema=schema)
    cohen = noise.cohen_kappa_pairs(comparisons, min_shared=min_shared)
    overall = noise.agreement(comparisons, cohen=cohen)
    units = int(overall["n_units"][0])
    n_raters = _annotators_on_shared_pairs(comparisons)
    cohen_annotators = pl.concat([cohen["annotator_1"], cohen["annotator_2"]]).n_unique() if cohen.height else 0
    return pl.DataFrame({
        "metric": names,
        "value": [float(overall["mean_cohen_kappa"][0]), float(overall["fleiss_kappa"][0]), float(overall["krippendorff_alpha"][0])],
        "items": [int(cohen["n_shared"].sum()) if cohen.height else 0, units, units],
        "annotators": [cohen_annotators, n_raters, n_raters],
    }, schema=schema)


def _annotators_on_shared_pairs(comparisons: pl.DataFrame) -> int:
    """How many annotators labelled at least one pair that another annotator labelled too."""
    f = comparisons
    unit = pl.concat_str([pl.min_horizontal("response_a_id", "response_b_id"), pl.max_horizontal("response_a_id", "response_b_id")], separator="|")
    f = f.select(unit.alias("unit"), "annotator_id").unique()
    shared = f.group_by("unit").len().filter(pl.col("len") >= 2).select("unit")
    return f.join(shared, on="unit", how="semi")["annotator_id"].n_unique()


class AdminView:
    def __init__(self, store: Any, service: "AnnotationService"):
        self.store, self.service = store, service

    # ------------------------------------------------------------------ progress
    def progress_by_annotator(self) -> pl.DataFrame:
        """Per annotator: labels (live, today), skips, live leases, gold accuracy, left-side rate, self-consistency."""
        ann = self.store.annotators().select("annotator_id", "role", "active")
        live = self.store.live()
        now = time.time()
        midnight = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
        if live.height:
            per = live.group_by("annotator_id").agg(
                pl.len().alias("labels"),
                (pl.col("created_at") >= midnight).sum().alias("labels_today"),
                pl.col("duration_ms").median().alias("median_ms"),
            )
            left = (noise.left_side_bias(live).filter(pl.col("n_sided") > 0)
                    .select("annotator_id", "left_rate", pl.col("n_sided").alias("decisive"), "left_p_adjusted", "left_biased"))
            gold = (noise.gold_accuracy(live, reference=assign.gold_reference(self.store)).filter(pl.col("n_gold") > 0)
                    .select("annotator_id", "n_gold", "gold_accuracy"))
            rep = (noise.self_consistency(live).filter(pl.col("n_repeats") > 0)
                   .select("annotator_id", "n_repeats", pl.col("self_consistency").alias("consistency")))
        else:
            per = pl.DataFrame(schema={"annotator_id": pl.String, "labels": pl.UInt32, "labels_today": pl.UInt32, "median_ms": pl.Float64})
            left = pl.DataFrame(schema={"annotator_id": pl.String, "left_rate": pl.Float64, "decisive": pl.Int64, "left_p_adjusted": pl.Float64, "left_biased": pl.Boolean})
            gold = pl.DataFrame(schema={"annotator_id": pl.String, "n_gold": pl.Int64, "gold_accuracy": pl.Float64})
            rep = pl.DataFrame(schema={"annotator_id": pl.String, "n_repeats": pl.Int64, "consistency": pl.Float64})
        a = assign.assignments_frame(self.store)
        leases = a.group_by("annotator_id").agg(
            (pl.col("status") == "skipped").sum().alias("skipped"),
            ((pl.col("status") == "leased") & (pl.col("expires_at") >= now)).sum().alias("leased_now"),
        ) if a.height else pl.DataFrame(schema={"annotator_id": pl.String, "skipped": pl.UInt32, "leased_now": pl.UInt32})
        out = ann
        for f in (per, left, leases, gold, rep):
            out = out.join(f, on="annotator_id", how="left")
        return out.with_columns(pl.col("labels", "labels_today", "skipped", "leased_now").fill_null(0)).sort("labels", descending=True)

    def progress_by_category(self) -> pl.DataFrame:
        """Per prompt category: pairs in the pool, pairs labelled at least once, labels."""
        p = assign.pool(self.store)
        prompts = self.store.prompts().select("prompt_id", pl.col("category").fill_null("(none)"))
        if p.height == 0:
            return pl.DataFrame(schema={"category": pl.String, "pairs": pl.UInt32, "pairs_labelled": pl.UInt32, "labels": pl.Int64, "coverage": pl.Float64})
        p = p.with_columns(pl.col("n_labels").cast(pl.Int64), pl.col("n_prior").cast(pl.Int64)).join(prompts, on="prompt_id", how="left")
        return (
            p.group_by("category")
            .agg(pl.len().alias("pairs"), ((pl.col("n_labels") + pl.col("n_prior")) > 0).sum().alias("pairs_labelled"),
                 (pl.col("n_labels") + pl.col("n_prior")).sum().alias("labels"))
            .with_columns((pl.col("pairs_labelled") / pl.col("pairs")).alias("coverage"))
            .sort("category")
        )

    def agreement(self, min_shared: int = 5) -> pl.DataFrame:
        return agreement_table(self.store.live(), min_shared=min_shared)

    # ------------------------------------------------------------------ versions
    def versions(self) -> pl.DataFrame:
        return self.store.versions()

    def create_version(self, name: Any, description: Any = None) -> Any:
        from .service import BadRequest

        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise BadRequest("a version name is 1-128 letters, digits, '_', '.' or '-', starting with a letter or digit")
        if description is not None and (not isinstance(description, str) or len(description) > 2000):
            raise BadRequest("a description is a text of at most 2,000 characters")
        try:
            return self.store.snapshot(name, description=description or None)
        except Exception as exc:  # a reused name, an empty store...
            raise BadRequest(str(exc)) from exc

    def leaderboard(self, version: Any, item: str = "model") -> pl.DataFrame:
        """Fit a Bradley-Terry model (``rm.choice``) on a version: items ranked with 95% CIs."""
        from .service import BadRequest

        try:
            from rm.choice import BradleyTerry
        except ImportError as exc:  # rm is optional for the UI
            raise BadRequest(f"fitting needs the rm package (rm.choice): {exc}") from exc
        if item not in ("model",):
            raise BadRequest("the leaderboard ranks models")
        v = self._version(version)
        frame = v.to_polars().filter(pl.col("model_a").is_not_null() & pl.col("model_b").is_not_null())
        if frame.height == 0:
            raise BadRequest(f"version {v.name} has no comparisons between named models")
        try:
            model = BradleyTerry(l2=1e-3).fit(frame, item_a="model_a", item_b="model_b")
        except Exception as exc:
            raise BadRequest(f"the Bradley-Terry fit failed on version {v.name}: {exc}") from exc
        self.service.scorer = assign.item_score_scorer(model.scores_)
        self.store.record_run("choice", v, {"model": "BradleyTerry", "l2": 1e-3, "item": "model", "from": "annotation_ui"},
                              metrics={"n_items": model.scores_.height}, name=f"leaderboard-{v.name}")
        return model.scores_

    def _version(self, ref: Any) -> Any:
        from .service import BadRequest

        if not isinstance(ref, str) or not ref or len(ref) > 200:
            raise BadRequest("choose a version")
        try:
            return self.store.version(ref)
        except LookupError as exc:
            raise BadRequest(str(exc)) from exc

    def diagnostics(self, version: Any) -> Any:
        """The diagnostics report of ``workbench diagnose`` on a version (records a run).

        Written under the store's files folder, ``reports/<version>-<hash>``; returns the
        :class:`workbench.diagnostics.report.Report` (its ``html_path`` is self-contained, with
        every text from the data escaped).
        """
        from workbench.diagnostics import build_report

        from .service import BadRequest

        v = self._version(version)
        if v.n_comparisons == 0:
            raise BadRequest(f"version {v.name} has no comparisons to diagnose")
        out = Path(self.store.files_dir) / "reports" / f"{v.name}-{v.hash[:12]}"
        return build_report(v, out, store=self.store)

    def export(self, version: Any, fmt: Any, out_dir: str | Path) -> Path:
        from .service import BadRequest

        if fmt not in EXPORT_FORMATS:
            raise BadRequest(f"format must be one of {', '.join(EXPORT_FORMATS)}")
        v = self._version(version)
        suffix = ".parquet" if fmt == "parquet" else ".jsonl"
        out = Path(out_dir) / f"{v.name}-{fmt}{suffix}"
        out.parent.mkdir(parents=True, exist_ok=True)
        return v.export(out, fmt)

    # ------------------------------------------------------------------ plots
    def progress_figure(self) -> Any:
        """Labels per annotator and each one's left-side rate (0.5 = no side bias)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        p = self.progress_by_annotator().filter(pl.col("labels") > 0).head(30)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, max(3.0, 0.3 * p.height + 1.5)))
        names = p["annotator_id"].to_list()[::-1]
        ax1.barh(names, p["labels"].to_list()[::-1], color="#4C72B0")
        ax1.set_xlabel("live labels")
        ax1.set_title("labels per annotator")
        rates = [x if x is not None else float("nan") for x in p["left_rate"].to_list()[::-1]]
        ax2.barh(names, rates, color="#DD8452")
        ax2.axvline(0.5, color="k", lw=1, ls="--")
        ax2.set_xlim(0, 1)
        ax2.set_xlabel("share of decisive labels choosing the left response")
        ax2.set_title("left-side rate")
        fig.tight_layout()
        return fig

    @staticmethod
    def leaderboard_figure(scores: pl.DataFrame) -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        s = scores.sort("score")
        fig, ax = plt.subplots(figsize=(8, max(2.5, 0.35 * s.height + 1.2)))
        y = list(range(s.height))
        lo = (s["score"] - s["ci_low"]).to_list()
        hi = (s["ci_high"] - s["score"]).to_list()
        ax.errorbar(s["score"].to_list(), y, xerr=[lo, hi], fmt="o", color="#4C72B0", capsize=3)
        ax.set_yticks(y, [str(x) for x in s["item"].to_list()])
        ax.set_xlabel("Bradley-Terry score (95% CI)")
        ax.set_title("leaderboard")
        fig.tight_layout()
        return fig
