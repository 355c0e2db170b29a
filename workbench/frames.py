"""The one table shape: comparisons, and the input frame every importer produces.

``COMPARISONS_SCHEMA`` is how a version reads (DESIGN.md's stable column names plus the prompt's
conversation, its category and the generator of each response). ``INPUT_SCHEMA`` is what the
importers hand to :meth:`workbench.store.Store.add_comparisons`: texts instead of ids, one row per
label, and the ``line`` of the source file each row came from so that an error can name it.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from .schema import LABELS, SOURCES

MESSAGE = pl.Struct({"role": pl.String, "content": pl.String})
MESSAGES = pl.List(MESSAGE)

COMPARISONS_SCHEMA: dict[str, pl.DataType] = {
    "comparison_id": pl.String,
    "prompt_id": pl.String,
    "prompt": pl.String,
    "prompt_messages": MESSAGES,
    "category": pl.String,
    "response_a_id": pl.String,
    "response_a": pl.String,
    "model_a": pl.String,
    "response_b_id": pl.String,
    "response_b": pl.String,
    "model_b": pl.String,
    "label": pl.String,
    "strength": pl.Float64,
    "annotator_id": pl.String,
    "shown_left": pl.String,
    "source": pl.String,
    "gold": pl.Boolean,
    "rationale": pl.String,
    "duration_ms": pl.Int64,
    "created_at": pl.Datetime("us", "UTC"),
}
COLUMNS = list(COMPARISONS_SCHEMA)

INPUT_SCHEMA: dict[str, pl.DataType] = {
    "line": pl.Int64,
    "prompt": pl.String,
    "prompt_messages": pl.String,  # JSON list of {role, content}, or null for a text prompt
    "category": pl.String,
    "response_a": pl.String,
    "model_a": pl.String,
    "response_b": pl.String,
    "model_b": pl.String,
    "label": pl.String,
    "strength": pl.Float64,
    "annotator_id": pl.String,
    "shown_left": pl.String,
    "source": pl.String,
    "gold": pl.Boolean,
    "rationale": pl.String,
    "duration_ms": pl.Int64,
    "created_at": pl.Datetime("us", "UTC"),
    "client_token": pl.String,
}

# Longest text the store accepts in one field (a guard against runaway or hostile input).
MAX_TEXT_CHARS = 1_000_000
MAX_NAME_CHARS = 200


def empty_comparisons() -> pl.DataFrame:
    return pl.DataFrame(schema=COMPARISONS_SCHEMA)


def as_comparisons(obj: Any) -> pl.DataFrame:
    """A comparisons table from a ``Version``, a polars or pandas frame, or a ``datasets.Dataset``.

    Model code calls this first, so every fit accepts any of them.
    """
    if hasattr(obj, "to_polars") and hasattr(obj, "hash"):
        return obj.to_polars()
    if isinstance(obj, pl.DataFrame):
        return obj
    if isinstance(obj, pl.LazyFrame):
        return obj.collect()
    try:
        import pandas as pd

        if isinstance(obj, pd.DataFrame):
            return pl.from_pandas(obj)
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    if hasattr(obj, "to_arrow") or type(obj).__name__ == "Dataset":
        return pl.from_arrow(obj.data.table if hasattr(obj, "data") else obj.to_arrow())
    raise TypeError(
        f"expected a workbench Version, a polars/pandas frame or a datasets.Dataset, got {type(obj).__name__}"
    )


def version_hash_of(obj: Any) -> str | None:
    """The content hash of a ``Version``; ``None`` for a plain frame."""
    return getattr(obj, "hash", None)


def to_input_frame(columns: dict[str, Any], n: int | None = None) -> pl.DataFrame:
    """Build an input frame from columns (lists or series), filling absent ones with nulls."""
    if n is None:
        n = len(next(iter(columns.values()))) if columns else 0
    data = {}
    for name, dtype in INPUT_SCHEMA.items():
        if name in columns and columns[name] is not None:
            data[name] = pl.Series(name, columns[name], dtype=dtype, strict=False)
        else:
            data[name] = pl.Series(name, [None] * n, dtype=dtype)
    frame = pl.DataFrame(data)
    if frame["line"].null_count() == n and n:
        frame = frame.with_columns(pl.int_range(1, n + 1, dtype=pl.Int64).alias("line"))
    return frame


class InvalidRows(ValueError):
    """Rows of an input that cannot be stored; ``rejects`` holds line, field and reason."""

    def __init__(self, path: str, rejects: pl.DataFrame):
        self.path = path
        self.rejects = rejects
        first = rejects.row(0, named=True)
        more = f" (and {rejects.height - 1} more bad rows)" if rejects.height > 1 else ""
        super().__init__(
            f"{path}: line {first['line']}: field {first['field']!r}: {first['reason']}{more}; "
            "nothing was written (use skip_invalid=True / --skip-invalid to write the valid rows "
            "and keep the rejects in a file)"
        )


def _blank(c: pl.Expr) -> pl.Expr:
    """Empty or only whitespace: no non-whitespace character (``\\S`` is Unicode-aware, as
    ``str.strip_chars`` is; this stops at the first such character and copies no text)."""
    return ~c.str.contains(r"\S")


def _text_problems(col: str, required: bool) -> list[tuple[pl.Expr, str]]:
    c = pl.col(col)
    checks = [
        (c.is_not_null() & (c.str.len_chars() > MAX_TEXT_CHARS), f"longer than {MAX_TEXT_CHARS:,} characters"),
        (c.is_not_null() & c.str.contains("\x00", literal=True), "contains a NUL character"),
    ]
    if required:
        checks.insert(0, (c.is_null() | _blank(c), "empty text"))
    return checks


def find_invalid(frame: pl.DataFrame, *, allow_empty_responses: bool = False) -> pl.DataFrame:
    """Vectorized checks of an input frame; returns rejects ``(line, field, reason)``.

    ``allow_empty_responses`` accepts empty (or blank) response texts, but not missing ones: some
    data sets (LLMFAO, PandaLM) hold empty model outputs that annotators really judged.
    """  # fix(importers): allow_empty_responses, needed for LLMFAO (1,208 votes) and PandaLM (54 items)
    has_messages = pl.col("prompt_messages").is_not_null()
    checks: list[tuple[str, pl.Expr, str]] = []
    checks.append(
        (
            "prompt",
            ~has_messages & (pl.col("prompt").is_null() | _blank(pl.col("prompt"))),
            "empty text",
        )
    )
    for col in ("prompt", "prompt_messages"):
        for expr, why in _text_problems(col, required=False):
            checks.append((col, expr, why))
    for col in ("response_a", "response_b"):
        if allow_empty_responses:
            checks.append((col, pl.col(col).is_null(), "missing text"))
        for expr, why in _text_problems(col, required=not allow_empty_responses):
            checks.append((col, expr, why))
    for col in ("model_a", "model_b", "annotator_id", "category"):
        checks.append(
            (col, pl.col(col).is_not_null() & (pl.col(col).str.len_chars() > MAX_NAME_CHARS), f"longer than {MAX_NAME_CHARS} characters")
        )
    checks += [
        ("label", pl.col("label").is_null(), "missing label"),
        (
            "label",
            pl.col("label").is_not_null() & ~pl.col("label").is_in(list(LABELS)),
            f"unknown label (expected one of {', '.join(LABELS)})",
        ),
        (
            "response_b",
            (pl.col("response_a") == pl.col("response_b"))
            & (pl.col("model_a").fill_null("") == pl.col("model_b").fill_null("")),
            "response_a and response_b are the same response",
        ),
        ("strength", pl.col("strength").is_not_null() & ~(pl.col("strength").is_finite() & (pl.col("strength") >= 0)), "strength must be a finite number >= 0"),
        ("shown_left", pl.col("shown_left").is_not_null() & ~pl.col("shown_left").is_in(["a", "b"]), "shown_left must be 'a' or 'b'"),
        ("source", pl.col("source").is_not_null() & ~pl.col("source").is_in(list(SOURCES)), f"unknown source (expected one of {', '.join(SOURCES)})"),
        ("duration_ms", pl.col("duration_ms").is_not_null() & (pl.col("duration_ms") < 0), "duration_ms must be >= 0"),
        ("client_token", pl.col("client_token").is_not_null() & (pl.col("client_token").str.len_chars() > MAX_NAME_CHARS), f"longer than {MAX_NAME_CHARS} characters"),
    ]
    # One pass: per row, the index of the first check it fails (checks are in priority order).
    first_failed = pl.when(checks[0][1].fill_null(False)).then(pl.lit(0, dtype=pl.Int32))
    for i, (_, expr, _) in enumerate(checks[1:], start=1):
        first_failed = first_failed.when(expr.fill_null(False)).then(pl.lit(i, dtype=pl.Int32))
    bad = (
        frame.select("line", first_failed.otherwise(pl.lit(None, dtype=pl.Int32)).alias("_check"))
        .filter(pl.col("_check").is_not_null())
    )
    if bad.height == 0:
        return pl.DataFrame(schema={"line": pl.Int64, "field": pl.String, "reason": pl.String})
    fields = pl.Series([field for field, _, _ in checks], dtype=pl.String)
    reasons = pl.Series([reason for _, _, reason in checks], dtype=pl.String)
    return (
        bad.select(
            "line",
            pl.col("_check").replace_strict(list(range(len(checks))), fields, return_dtype=pl.String).alias("field"),
            pl.col("_check").replace_strict(list(range(len(checks))), reasons, return_dtype=pl.String).alias("reason"),
        )
        .unique(subset=["line"], keep="first", maintain_order=True)
        .sort("line")
    )
