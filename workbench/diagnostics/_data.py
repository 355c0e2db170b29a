"""The comparisons table coded as integer arrays, once, for every diagnostic.

Every diagnostic reads the same codes: responses (items), annotators, prompts, the unordered pair
each label is about (so a pair shown as (x, y) and as (y, x) is one unit), and the label in that
pair's canonical orientation.
"""

from __future__ import annotations

import time

from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from ..frames import as_comparisons

LABEL_CODES = {"a": 0, "b": 1, "tie": 2, "both_bad": 3}
CANONICAL_NAMES = ("first", "second", "tie", "both_bad")
REQUIRED = ("response_a_id", "response_b_id", "label", "annotator_id")


def dense_codes(*columns: pl.Series) -> tuple[list[np.ndarray], pl.Series]:
    """Integer codes (0..m-1) shared by several string columns, and the values they stand for."""
    sizes = [len(c) for c in columns]
    allv = pl.concat([c.cast(pl.String).rename("v") for c in columns])
    uniq = allv.unique().sort()
    codes = allv.to_frame().join(uniq.to_frame().with_row_index("code"), on="v", how="left", maintain_order="left")["code"].to_numpy().astype(np.int64)
    out, start = [], 0
    for s in sizes:
        out.append(codes[start:start + s])
        start += s
    return out, uniq


@dataclass
class Coded:
    """A comparisons table as arrays (one entry per label)."""

    frame: pl.DataFrame
    n: int
    item_a: np.ndarray
    item_b: np.ndarray
    items: pl.Series  # response ids
    annotator: np.ndarray
    annotators: pl.Series
    prompt: np.ndarray
    prompts: pl.Series
    label: np.ndarray  # 0 a, 1 b, 2 tie, 3 both_bad
    pair: np.ndarray  # unordered pair code
    n_pairs: int
    pair_first: np.ndarray  # per pair: the item that is "first" (smaller code)
    pair_second: np.ndarray
    canon: np.ndarray  # label in the pair's orientation: 0 first, 1 second, 2 tie, 3 both_bad
    shown_left_a: np.ndarray  # 1 a was on the left, 0 b was, -1 unknown
    gold: np.ndarray
    duration_ms: np.ndarray  # float, nan when unknown
    len_a: np.ndarray  # characters
    len_b: np.ndarray
    order: np.ndarray  # position of each label in time (0 = earliest)

    @property
    def decisive(self) -> np.ndarray:
        return self.label < 2

    @property
    def y(self) -> np.ndarray:
        """1.0 when a was preferred, 0.0 when b, nan otherwise."""
        return np.where(self.label == 0, 1.0, np.where(self.label == 1, 0.0, np.nan))


def code(data: Any) -> Coded:
    """Code a Version or a comparisons frame (polars or pandas)."""
    if isinstance(data, Coded):
        return data
    frame = as_comparisons(data)
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise ValueError(f"a comparisons table needs columns {list(REQUIRED)}; missing {missing}")
    if frame.height == 0:
        raise ValueError("no comparisons to diagnose (the table is empty)")
    bad = frame.filter(~pl.col("label").is_in(list(LABEL_CODES)) | pl.col("label").is_null())
    if bad.height:
        raise ValueError(f"{bad.height} rows have a label outside {sorted(LABEL_CODES)} (first: {bad['label'][0]!r})")
    if frame.select((pl.col("response_a_id") == pl.col("response_b_id")).any()).item():
        raise ValueError("some comparisons compare a response with itself (response_a_id == response_b_id)")
    for c in ("response_a_id", "response_b_id", "annotator_id"):
        if frame[c].null_count():
            raise ValueError(f"column {c!r} has missing values")
    n = frame.height
    (ia, ib), items = dense_codes(frame["response_a_id"], frame["response_b_id"])
    (ann,), annotators = dense_codes(frame["annotator_id"])
    if "prompt_id" in frame.columns and frame["prompt_id"].null_count() < n:
        (pr,), prompts = dense_codes(frame["prompt_id"].fill_null("(none)"))
    else:
        pr, prompts = np.zeros(n, dtype=np.int64), pl.Series("v", ["(none)"])
    label = frame["label"].replace_strict(LABEL_CODES, return_dtype=pl.Int8).to_numpy().astype(np.int8)
    lo, hi = np.minimum(ia, ib), np.maximum(ia, ib)
    key = lo * (len(items) + 1) + hi
    uniq, pair = np.unique(key, return_inverse=True)
    pair_first, pair_second = uniq // (len(items) + 1), uniq % (len(items) + 1)
    swapped = ia > ib
    canon = label.copy()
    canon[swapped & (label == 0)] = 1
    canon[swapped & (label == 1)] = 0

    def col(name: str, default: Any, dtype: Any = None) -> pl.Series:
        if name in frame.columns:
            return frame[name]
        return pl.Series(name, [default] * n, dtype=dtype)

    sl = col("shown_left", None, pl.String)
    shown_left_a = np.where(sl.to_numpy() == "a", 1, np.where(sl.to_numpy() == "b", 0, -1)).astype(np.int8)
    gold = col("gold", False, pl.Boolean).fill_null(False).to_numpy().astype(bool)
    duration = col("duration_ms", None, pl.Int64).cast(pl.Float64).fill_null(float("nan")).to_numpy()
    len_a = col("response_a", "", pl.String).str.len_chars().fill_null(0).to_numpy().astype(np.float64)
    len_b = col("response_b", "", pl.String).str.len_chars().fill_null(0).to_numpy().astype(np.float64)
    if "created_at" in frame.columns and frame["created_at"].null_count() < n:
        order = np.argsort(np.argsort(frame["created_at"].to_physical().fill_null(0).to_numpy(), kind="stable"), kind="stable")
    else:
        order = np.arange(n)
    return Coded(
        frame=frame, n=n, item_a=ia, item_b=ib, items=items, annotator=ann, annotators=annotators, prompt=pr, prompts=prompts,
        label=label, pair=pair.astype(np.int64), n_pairs=len(uniq), pair_first=pair_first, pair_second=pair_second, canon=canon,
        shown_left_a=shown_left_a, gold=gold, duration_ms=duration, len_a=len_a, len_b=len_b, order=order,
    )


class Timings(dict):
    """Seconds per named step of a diagnostics run: ``timings(name, fn, *args)`` runs ``fn`` and
    records how long it took."""

    def __call__(self, name: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = fn(*args, **kwargs)
        self[name] = time.perf_counter() - start
        return out
