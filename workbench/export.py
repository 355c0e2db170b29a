"""Export a version: the TRL preference format, Parquet, JSONL, or a ``datasets`` folder.

TRL's preference format has ``prompt``, ``chosen`` and ``rejected`` columns; the standard form
holds texts, the conversational form holds lists of ``{role, content}`` messages. A label of
``b`` becomes chosen = response b. Ties carry no preference: they are dropped, or kept (with
``ties="keep"``) as rows with ``tie = true`` in the order a, b. "Both bad" rows are dropped.
``margin`` carries the label strength where one was given (TRL's RewardTrainer reads it).
``comparison_id`` and ``annotator_id`` ride along, so an exported file can be traced back to the
version's rows (and :mod:`workbench.importers` reads ``annotator_id``, ``margin`` and ``tie`` back).

The TRL formats go to ``.jsonl``, ``.parquet`` or (any other path) a ``datasets`` folder; the
``parquet``, ``jsonl`` and ``datasets`` formats write the whole comparisons table. Every export
accepts a :class:`~workbench.versions.Version` (its file is checked against its hash first) or a
comparisons frame (polars, pandas, ``datasets``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

if TYPE_CHECKING:
    from .versions import Version

FORMATS = ("trl", "trl-conversational", "parquet", "jsonl", "datasets")


def trl_frame(comparisons: pl.DataFrame, *, conversational: bool = False, ties: str = "drop") -> pl.DataFrame:
    """The TRL preference rows of a comparisons table."""
    if ties not in ("drop", "keep"):
        raise ValueError("ties must be 'drop' or 'keep'")
    keep = ["a", "b"] + (["tie"] if ties == "keep" else [])
    f = comparisons.filter(pl.col("label").is_in(keep))
    a_wins = pl.col("label") != "b"
    chosen = pl.when(a_wins).then(pl.col("response_a")).otherwise(pl.col("response_b"))
    rejected = pl.when(a_wins).then(pl.col("response_b")).otherwise(pl.col("response_a"))
    cols: list[Any] = []
    if conversational:
        def turn(e: pl.Expr) -> pl.Expr:
            return pl.concat_list(pl.struct(pl.lit("assistant").alias("role"), e.alias("content")))

        cols += [pl.col("prompt_messages").alias("prompt"), turn(chosen).alias("chosen"), turn(rejected).alias("rejected")]
    else:
        cols += [pl.col("prompt"), chosen.alias("chosen"), rejected.alias("rejected")]
    cols += [pl.col("strength").alias("margin"), pl.col("comparison_id"), pl.col("annotator_id")]
    if ties == "keep":
        cols.append((pl.col("label") == "tie").alias("tie"))
    out = f.select(cols)
    if out["margin"].null_count() == out.height:
        out = out.drop("margin")
    return out


def export_version(version: "Version | Any", path: str | os.PathLike, format: str = "trl", *, ties: str = "drop") -> Path:
    """Write a version (or a comparisons frame) as ``format`` to ``path``; returns the path."""
    from .frames import as_comparisons

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; expected one of {', '.join(FORMATS)}")
    if ties not in ("drop", "keep"):
        raise ValueError("ties must be 'drop' or 'keep'")
    frame = as_comparisons(version)
    path = Path(path)
    if format.startswith("trl"):
        frame = trl_frame(frame, conversational=format == "trl-conversational", ties=ties)
        kind = "jsonl" if path.suffix == ".jsonl" else "parquet" if path.suffix == ".parquet" else "datasets"
    else:
        kind = format
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "parquet":
        frame.write_parquet(path)
    elif kind == "jsonl":
        frame.with_columns(
            [pl.col(c).dt.strftime("%Y-%m-%dT%H:%M:%S%.6fZ") for c, t in frame.schema.items() if isinstance(t, pl.Datetime)]
        ).write_ndjson(path)
    else:
        import datasets

        datasets.Dataset(frame.to_arrow()).save_to_disk(str(path))
    return path
